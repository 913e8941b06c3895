//! Auth (GoTrue) subset: session storage, single-flight refresh, `GET /user`.
//! Everything here works on a [`Transport`]; `Client` exposes it.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::jwt;
use crate::transport::{error_chain, header_value, Transport};

/// An auth session (what GoTrue returns from `/token`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// Expiry of `access_token`, unix seconds.
    pub expires_at: i64,
    /// Usually `"bearer"`.
    pub token_type: String,
    /// The GoTrue user object, when known.
    #[serde(default)]
    pub user: Option<Value>,
}

impl Session {
    /// Seconds until `access_token` expires (negative when expired).
    pub fn expires_in(&self) -> i64 {
        self.expires_at - now_secs()
    }

    /// True if the access token's expiry has passed.
    pub fn is_expired(&self) -> bool {
        self.expires_at <= now_secs()
    }
}

/// Callback invoked with every new session (refresh, `set_session`).
pub type SessionCallback = Box<dyn Fn(&Session) + Send + Sync>;

type SharedCallback = Arc<dyn Fn(&Session) + Send + Sync>;

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) struct AuthState {
    session: StdMutex<Option<Session>>,
    /// Serialises refreshes (one in flight at most; concurrent callers wait
    /// and then see the rotated session).
    refresh_lock: tokio::sync::Mutex<()>,
    listeners: StdMutex<Vec<SharedCallback>>,
    /// Current bearer for realtime: session access token, or the anon key.
    token_tx: watch::Sender<String>,
    /// (refresh token, when, error) of the last failed refresh.
    last_failure: StdMutex<Option<(String, Instant, Error)>>,
    anon_key: String,
}

impl AuthState {
    pub(crate) fn new(anon_key: &str) -> Self {
        let (token_tx, _) = watch::channel(anon_key.to_string());
        AuthState {
            session: StdMutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            listeners: StdMutex::new(Vec::new()),
            token_tx,
            last_failure: StdMutex::new(None),
            anon_key: anon_key.to_string(),
        }
    }

    pub(crate) fn snapshot(&self) -> Option<Session> {
        lock(&self.session).clone()
    }

    pub(crate) fn token_watch(&self) -> watch::Receiver<String> {
        self.token_tx.subscribe()
    }

    pub(crate) fn store(&self, s: Option<Session>) {
        let token = s
            .as_ref()
            .map(|s| s.access_token.clone())
            .unwrap_or_else(|| self.anon_key.clone());
        *lock(&self.session) = s;
        self.token_tx.send_if_modified(|cur| {
            if *cur != token {
                *cur = token;
                true
            } else {
                false
            }
        });
    }

    fn notify(&self, s: &Session) {
        let listeners: Vec<_> = lock(&self.listeners).clone();
        for l in listeners {
            l(s);
        }
    }

    /// Under the refresh lock: if `pred(current session)` holds, refresh it
    /// (rotating the refresh token), store it, run the callbacks, and return
    /// the new session; otherwise return the current session unchanged.
    pub(crate) async fn refresh_if(
        &self,
        transport: &Transport,
        pred: impl Fn(&Session) -> bool,
    ) -> Result<Session> {
        let _guard = self.refresh_lock.lock().await;
        let cur = self.snapshot().ok_or_else(Error::session_missing)?;
        if !pred(&cur) {
            return Ok(cur);
        }
        let cooldown = transport.opts.refresh_failure_cooldown;
        if let Some((rt, at, err)) = lock(&self.last_failure).as_ref() {
            if *rt == cur.refresh_token && at.elapsed() < cooldown {
                tracing::debug!("refresh skipped: the same refresh token failed recently");
                return Err(err.clone());
            }
        }
        match refresh_with_retry(transport, &cur.refresh_token).await {
            Ok(new) => {
                *lock(&self.last_failure) = None;
                self.store(Some(new.clone()));
                self.notify(&new);
                tracing::info!(expires_at = new.expires_at, "auth session refreshed");
                Ok(new)
            }
            Err(e) => {
                *lock(&self.last_failure) =
                    Some((cur.refresh_token.clone(), Instant::now(), e.clone()));
                let retryable = matches!(
                    e,
                    Error::Auth {
                        retryable: true,
                        ..
                    }
                );
                if !retryable && cur.is_expired() {
                    tracing::warn!(error = %e, "refresh failed and the access token has expired; dropping the session");
                    self.store(None);
                } else {
                    tracing::warn!(error = %e, "auth refresh failed");
                }
                Err(e)
            }
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn auth_headers(inner: &Transport, bearer: &str, with_body: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("apikey", header_value(&inner.anon_key));
    h.insert(AUTHORIZATION, header_value(&format!("Bearer {bearer}")));
    h.insert("x-client-info", header_value(&inner.opts.client_info));
    h.insert("x-supabase-api-version", header_value("2024-01-01"));
    if with_body {
        h.insert(CONTENT_TYPE, header_value("application/json;charset=UTF-8"));
    }
    h
}

/// Map a GoTrue error response like auth-js `handleError`.
pub(crate) fn parse_auth_error(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let retryable_status = matches!(status, 500..=504 | 520..=530);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some(v) = parsed.filter(|v| v.is_object()) else {
        let text = String::from_utf8_lossy(body).trim().to_string();
        return Error::Auth {
            status,
            code: None,
            message: if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text
            },
            retryable: retryable_status,
        };
    };
    let api_version_ok = headers
        .get("x-supabase-api-version")
        .and_then(|h| h.to_str().ok())
        .map(|d| d.trim() >= "2024-01-01")
        .unwrap_or(false);
    let code = if api_version_ok && v.get("code").map(Value::is_string).unwrap_or(false) {
        v["code"].as_str().map(str::to_string)
    } else {
        v.get("error_code")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let message = ["msg", "message", "error_description", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    Error::Auth {
        status,
        code,
        message,
        retryable: retryable_status,
    }
}

/// Parse a `/token` success body into a session (auth-js `_sessionResponse`).
pub(crate) fn parse_session(v: &Value) -> Result<Session> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let expires_in = v
        .get("expires_in")
        .and_then(|e| e.as_f64())
        .filter(|e| *e > 0.0);
    let (Some(access), Some(refresh), Some(expires_in)) =
        (s("access_token"), s("refresh_token"), expires_in)
    else {
        return Err(Error::session_missing());
    };
    let expires_at = v
        .get("expires_at")
        .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)))
        .unwrap_or_else(|| now_secs() + expires_in.round() as i64);
    Ok(Session {
        access_token: access.to_string(),
        refresh_token: refresh.to_string(),
        expires_at,
        token_type: s("token_type").unwrap_or("bearer").to_string(),
        user: v.get("user").filter(|u| !u.is_null()).cloned(),
    })
}

/// One `POST /auth/v1/token?grant_type=refresh_token`.
async fn refresh_once(inner: &Transport, refresh_token: &str) -> Result<Session> {
    let url = format!("{}/auth/v1/token?grant_type=refresh_token", inner.base);
    let body = json!({ "refresh_token": refresh_token }).to_string();
    let resp = inner
        .http
        .post(url)
        .headers(auth_headers(inner, &inner.anon_key, true))
        .body(body)
        .send()
        .await
        .map_err(|e| Error::Auth {
            status: 0,
            code: None,
            message: format!("network error refreshing the session: {}", error_chain(&e)),
            retryable: true,
        })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|e| Error::Auth {
        status: 0,
        code: None,
        message: format!("network error reading the refresh response: {e}"),
        retryable: true,
    })?;
    if !(200..300).contains(&status) {
        return Err(parse_auth_error(status, &headers, &bytes));
    }
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::decode("the refresh response", e))?;
    parse_session(&v)
}

/// Refresh with auth-js retry: retry only retryable errors, backoff
/// 200 ms · 2^(n-1), stop when the next wait would exceed the budget.
async fn refresh_with_retry(inner: &Transport, refresh_token: &str) -> Result<Session> {
    let start = Instant::now();
    let budget = inner.opts.refresh_retry_budget;
    let mut attempt: u32 = 0;
    loop {
        match refresh_once(inner, refresh_token).await {
            Ok(s) => return Ok(s),
            Err(
                e @ Error::Auth {
                    retryable: true, ..
                },
            ) => {
                attempt += 1;
                let wait = Duration::from_millis(200) * (1u32 << (attempt - 1).min(16));
                if start.elapsed() + wait > budget {
                    return Err(e);
                }
                tracing::debug!(error = %e, ?wait, "retrying refresh");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl AuthState {
    /// Register a callback that receives every new session.
    pub(crate) fn add_listener(&self, cb: SessionCallback) {
        lock(&self.listeners).push(Arc::from(cb));
    }

    /// supabase-js `auth.setSession`: refresh an expired access token,
    /// else validate it with `GET /auth/v1/user`; store the session and
    /// run the callbacks.
    pub(crate) async fn set_session(
        &self,
        transport: &Transport,
        access_token: &str,
        refresh_token: &str,
    ) -> Result<Session> {
        if access_token.is_empty() || refresh_token.is_empty() {
            return Err(Error::session_missing());
        }
        let exp = jwt::decode_exp(access_token)?;
        let _guard = self.refresh_lock.lock().await;
        let session = match exp {
            Some(exp) if exp <= now_secs() => refresh_with_retry(transport, refresh_token).await?,
            _ => {
                let user = fetch_user(transport, access_token).await?;
                Session {
                    access_token: access_token.to_string(),
                    refresh_token: refresh_token.to_string(),
                    expires_at: exp.unwrap_or_else(|| now_secs() + 3600),
                    token_type: "bearer".into(),
                    user: Some(user),
                }
            }
        };
        *lock(&self.last_failure) = None;
        self.store(Some(session.clone()));
        self.notify(&session);
        Ok(session)
    }

    /// Refresh now; concurrent callers share one refresh (whoever waits
    /// behind an in-flight refresh gets its result instead of refreshing
    /// again).
    pub(crate) async fn refresh(&self, transport: &Transport) -> Result<Session> {
        let seen = self
            .snapshot()
            .ok_or_else(Error::session_missing)?
            .refresh_token;
        self.refresh_if(transport, |s| s.refresh_token == seen)
            .await
    }

    /// The bearer for the next request: the session access token (refreshed
    /// inline first if it expires within `refresh_margin`), else the anon
    /// key. Returns `(token, is_session_token)`. If the refresh fails and the
    /// stored token has already expired, the refresh error is returned
    /// (rather than silently downgrading to the anon role).
    pub(crate) async fn bearer_token(&self, transport: &Transport) -> Result<(String, bool)> {
        let Some(cur) = self.snapshot() else {
            return Ok((transport.anon_key.clone(), false));
        };
        let margin = transport.opts.refresh_margin.as_secs() as i64;
        if cur.expires_in() >= margin {
            return Ok((cur.access_token, true));
        }
        match self
            .refresh_if(transport, |s| s.expires_in() < margin)
            .await
        {
            Ok(s) => Ok((s.access_token, true)),
            Err(e) if !cur.is_expired() => {
                tracing::debug!(error = %e, "using the still-valid access token after a failed refresh");
                Ok((cur.access_token, true))
            }
            Err(e) => Err(e),
        }
    }
}

/// `GET /auth/v1/user` with `token`.
pub(crate) async fn fetch_user(transport: &Transport, token: &str) -> Result<Value> {
    let url = format!("{}/auth/v1/user", transport.base);
    let resp = transport
        .http
        .get(url)
        .headers(auth_headers(transport, token, false))
        .send()
        .await
        .map_err(|e| Error::Auth {
            status: 0,
            code: None,
            message: format!("network error fetching the user: {}", error_chain(&e)),
            retryable: true,
        })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::transport("GET /auth/v1/user", e))?;
    if !(200..300).contains(&status) {
        return Err(parse_auth_error(status, &headers, &bytes));
    }
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::decode("the user response", e))?;
    Ok(match v.get("user") {
        Some(u) if u.is_object() && v.get("id").is_none() => u.clone(),
        _ => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_2024_error_shape_only_with_header() {
        let body = br#"{"code":"refresh_token_not_found","message":"Invalid Refresh Token: Refresh Token Not Found"}"#;
        let mut h = HeaderMap::new();
        h.insert("x-supabase-api-version", header_value("2024-01-01"));
        let e = parse_auth_error(400, &h, body);
        assert_eq!(e.code(), Some("refresh_token_not_found"));
        assert_eq!(
            e.message(),
            "Invalid Refresh Token: Refresh Token Not Found"
        );
        assert!(!matches!(
            e,
            Error::Auth {
                retryable: true,
                ..
            }
        ));
        // without the header, `code` is ignored and `error_code` is used
        let e = parse_auth_error(400, &HeaderMap::new(), body);
        assert_eq!(e.code(), None);
        let legacy = br#"{"code":400,"error_code":"bad_jwt","msg":"invalid JWT"}"#;
        let e = parse_auth_error(400, &HeaderMap::new(), legacy);
        assert_eq!(e.code(), Some("bad_jwt"));
        assert_eq!(e.message(), "invalid JWT");
        let e = parse_auth_error(503, &HeaderMap::new(), b"upstream down");
        assert!(matches!(
            e,
            Error::Auth {
                retryable: true,
                status: 503,
                ..
            }
        ));
    }

    #[test]
    fn session_requires_truthy_fields() {
        let ok = json!({"access_token":"a","refresh_token":"r","expires_in":3600,"expires_at":1767225600,"token_type":"bearer","user":{"id":"u"}});
        let s = parse_session(&ok).unwrap();
        assert_eq!(s.expires_at, 1767225600);
        assert_eq!(s.user.unwrap()["id"], "u");
        let no_at = json!({"access_token":"a","refresh_token":"r","expires_in":100});
        let s = parse_session(&no_at).unwrap();
        assert!((s.expires_in() - 100).abs() <= 1);
        let zero = json!({"access_token":"a","refresh_token":"r","expires_in":0});
        assert_eq!(
            parse_session(&zero).unwrap_err().code(),
            Some("session_missing")
        );
    }
}
