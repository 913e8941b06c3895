//! Error type shared by every part of the client.

use serde_json::Value;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a Supabase-compatible backend.
///
/// The type is `Clone` (all payloads are owned strings / JSON) so a cached
/// refresh failure can be handed to several callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// PostgREST answered with its `{code, message, details, hint}` error body
    /// (or the client synthesised one, e.g. `PGRST116` from `maybe_single`).
    #[error(
        "PostgREST error (HTTP {status}, code {code}): {message}{}",
        fmt_details(details, hint)
    )]
    Postgrest {
        status: u16,
        code: String,
        message: String,
        details: Option<String>,
        hint: Option<String>,
    },
    /// A non-2xx HTTP answer that is not a PostgREST error body: an edge
    /// function error, a gateway error without `code`, a non-JSON body…
    /// `message` is the body's `error`/`message` string (or the raw text);
    /// `body` is the parsed JSON body when there was one.
    #[error("{context} returned HTTP {status}: {message}")]
    Http {
        context: String,
        status: u16,
        message: String,
        body: Option<Value>,
    },
    /// No HTTP response at all (connect/reset/timeout/TLS/WebSocket failure).
    #[error("network error during {context}: {message}")]
    Transport { context: String, message: String },
    /// GoTrue (auth) error, or a local auth problem (no session, bad JWT).
    /// `status` is 0 for local / network problems. `retryable` follows
    /// auth-js (`AuthRetryableFetchError`: no response, 5xx, 52x).
    #[error("auth error{}: {message}{}", fmt_status(*status), fmt_code(code))]
    Auth {
        status: u16,
        code: Option<String>,
        message: String,
        retryable: bool,
    },
    /// A response (or frame) could not be decoded into what was expected.
    #[error("could not decode {context}: {message}")]
    Decode { context: String, message: String },
    /// The caller misused the API (e.g. update without a body).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

fn fmt_details(details: &Option<String>, hint: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(d) = details.as_deref().filter(|d| !d.is_empty()) {
        s.push_str(" (details: ");
        s.push_str(d);
        s.push(')');
    }
    if let Some(h) = hint.as_deref().filter(|h| !h.is_empty()) {
        s.push_str(" (hint: ");
        s.push_str(h);
        s.push(')');
    }
    s
}

fn fmt_status(status: u16) -> String {
    if status == 0 {
        String::new()
    } else {
        format!(" (HTTP {status})")
    }
}

fn fmt_code(code: &Option<String>) -> String {
    match code {
        Some(c) => format!(" [code {c}]"),
        None => String::new(),
    }
}

impl Error {
    /// PostgreSQL `23505` unique_violation (PostgREST answers HTTP 409).
    pub fn is_unique_violation(&self) -> bool {
        self.code() == Some("23505")
    }

    /// The error code: PostgREST/SQLSTATE code, or the GoTrue error code.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Postgrest { code, .. } => Some(code.as_str()),
            Error::Auth { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// HTTP status when the server answered (0 for synthesised auth errors).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Postgrest { status, .. } | Error::Http { status, .. } => Some(*status),
            Error::Auth { status, .. } if *status != 0 => Some(*status),
            _ => None,
        }
    }

    /// The human-readable message part (what the gateway logs as `message`).
    pub fn message(&self) -> &str {
        match self {
            Error::Postgrest { message, .. }
            | Error::Http { message, .. }
            | Error::Transport { message, .. }
            | Error::Auth { message, .. }
            | Error::Decode { message, .. }
            | Error::InvalidRequest(message) => message,
        }
    }

    /// True for network failures and auth errors flagged retryable.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }

    pub(crate) fn transport(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Transport {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn decode(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Decode {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn session_missing() -> Self {
        Error::Auth {
            status: 0,
            code: Some("session_missing".into()),
            message: "Auth session missing!".into(),
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_violation_is_detected() {
        let e = Error::Postgrest {
            status: 409,
            code: "23505".into(),
            message: "duplicate key value violates unique constraint \"todos_pkey\"".into(),
            details: Some("Key (id)=(1) already exists.".into()),
            hint: None,
        };
        assert!(e.is_unique_violation());
        assert_eq!(e.status(), Some(409));
        let text = e.to_string();
        assert!(text.contains("23505"), "{text}");
        assert!(text.contains("already exists"), "{text}");
        let other = Error::Http {
            context: "edge function `x`".into(),
            status: 409,
            message: "conflict".into(),
            body: None,
        };
        assert!(!other.is_unique_violation());
        assert_eq!(
            other.to_string(),
            "edge function `x` returned HTTP 409: conflict"
        );
    }
}
