//! `panorama-hub login`: a person's session for the operator CLI, so that a
//! laptop needs no service key. The session (hub URL, anon key, access and
//! refresh tokens) lives owner-only (0600) in the user's config directory;
//! CLI commands use it when no service key is configured, refreshing it
//! (and saving the rotated refresh token first) when it is about to expire.

use crate::config::{self, ConfigError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Refresh this long before the access token expires.
const REFRESH_MARGIN_SECS: i64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSession {
    pub url: String,
    pub anon_key: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: i64,
}

impl StoredSession {
    /// Whether the access token must be refreshed before use at `now`.
    pub fn needs_refresh(&self, now: i64) -> bool {
        self.expires_at - REFRESH_MARGIN_SECS <= now
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot determine a config directory (no HOME?); set PANORAMA_HUB_SESSION_FILE")]
    NoConfigDir,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path} is not a valid session file ({source}); run `panorama-hub login` again")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot reach the hub at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the hub refused the sign-in ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// `$PANORAMA_HUB_SESSION_FILE`, else `<config dir>/panorama-hub/session.json`.
pub fn session_path() -> Result<PathBuf, LoginError> {
    if let Some(p) = std::env::var_os("PANORAMA_HUB_SESSION_FILE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    dirs::config_dir()
        .map(|d| d.join("panorama-hub").join("session.json"))
        .ok_or(LoginError::NoConfigDir)
}

pub fn load() -> Result<Option<StoredSession>, LoginError> {
    let path = session_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }
            .into())
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| LoginError::Parse {
            path: path.display().to_string(),
            source,
        })
}

pub fn save(session: &StoredSession) -> Result<PathBuf, LoginError> {
    let path = session_path()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        config::prepare_dir(dir)?;
    }
    let text = serde_json::to_string_pretty(session).expect("a session serializes");
    config::write_private_file(&path, text.as_bytes())?;
    Ok(path)
}

/// Removes the stored session; whether there was one.
pub fn forget() -> Result<bool, LoginError> {
    let path = session_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ConfigError::Write {
            path: path.display().to_string(),
            source,
        }
        .into()),
    }
}

/// `POST /auth/v1/token?grant_type=...`: the GoTrue session, or the
/// hub's message.
async fn token_request(
    url: &str,
    anon_key: &str,
    grant: &str,
    body: Value,
) -> Result<Value, LoginError> {
    let res = reqwest::Client::new()
        .post(format!("{url}/auth/v1/token?grant_type={grant}"))
        .header("apikey", anon_key)
        .json(&body)
        .send()
        .await
        .map_err(|source| LoginError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status != 200 {
        let message = body["message"]
            .as_str()
            .or(body["msg"].as_str())
            .unwrap_or("no message")
            .to_string();
        return Err(LoginError::Refused { status, message });
    }
    Ok(body)
}

fn stored(
    url: &str,
    anon_key: &str,
    email: &str,
    body: &Value,
) -> Result<StoredSession, LoginError> {
    let field = |k: &str| body[k].as_str().map(str::to_string);
    match (
        field("access_token"),
        field("refresh_token"),
        body["expires_at"].as_i64(),
    ) {
        (Some(access_token), Some(refresh_token), Some(expires_at)) => Ok(StoredSession {
            url: url.trim_end_matches('/').to_string(),
            anon_key: anon_key.to_string(),
            email: email.to_string(),
            access_token,
            refresh_token,
            expires_at,
        }),
        _ => Err(LoginError::Refused {
            status: 200,
            message: format!("the hub's answer is not a session: {body}"),
        }),
    }
}

/// Signs in with a password and returns the session to store.
pub async fn sign_in(
    url: &str,
    anon_key: &str,
    email: &str,
    password: &str,
) -> Result<StoredSession, LoginError> {
    let url = url.trim_end_matches('/');
    let body = token_request(
        url,
        anon_key,
        "password",
        json!({"email": email, "password": password}),
    )
    .await?;
    stored(url, anon_key, email, &body)
}

/// The stored session, refreshed (and saved) when it is about to expire.
pub async fn current(mut session: StoredSession) -> Result<StoredSession, LoginError> {
    if !session.needs_refresh(chrono::Utc::now().timestamp()) {
        return Ok(session);
    }
    let body = token_request(
        &session.url,
        &session.anon_key,
        "refresh_token",
        json!({"refresh_token": session.refresh_token}),
    )
    .await?;
    session = stored(&session.url, &session.anon_key, &session.email, &body)?;
    // The old refresh token is spent: keep the new one before anything else.
    save(&session)?;
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_refreshed_shortly_before_it_expires() {
        let s = StoredSession {
            url: "http://h".into(),
            anon_key: "a".into(),
            email: "e".into(),
            access_token: "t".into(),
            refresh_token: "r".into(),
            expires_at: 1000,
        };
        assert!(!s.needs_refresh(900));
        assert!(s.needs_refresh(940));
        assert!(s.needs_refresh(2000));
    }
}
