//! Library error type. Every variant carries a user-facing message (what
//! happened) and, where useful, details (why, and what to do).

use std::path::PathBuf;

/// The user-facing error of the gateway, the Rust form of the Node
/// `GatewayCliError(message, details?)` (runtime.md §1.5).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An error whose message and details are shown to the user as-is.
    #[error("{message}")]
    Cli {
        message: String,
        details: Option<String>,
    },
    /// An I/O error on a specific path.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A step that needs the network client, which this build does not have yet.
    #[error("{what} is not available in this build yet")]
    NotAvailable { what: &'static str },
}

impl GatewayError {
    /// A `GatewayCliError` with a message and optional details.
    pub fn cli(message: impl Into<String>, details: impl Into<Option<String>>) -> Self {
        GatewayError::Cli {
            message: message.into(),
            details: details.into(),
        }
    }

    /// An I/O error while doing `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GatewayError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The details row shown (verbose-only, as in the Node gateway) under the message.
    pub fn details(&self) -> Option<String> {
        match self {
            GatewayError::Cli { details, .. } => details.clone(),
            GatewayError::Io { .. } => Some(
                "Check that the path exists, is owned by this user and is writable.".to_string(),
            ),
            GatewayError::NotAvailable { .. } => Some(
                "This build of panorama-gateway has no network client yet; use a full release build."
                    .to_string(),
            ),
        }
    }
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// The text of a caught panic (`panic!` with a message or a format string),
/// for the job's error and the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "handler panicked".to_string())
}
