//! The failure side of a shell job: `{ok:false, result, error}`.

use panorama_protocol::jobs::{HandlerOutcome, PayloadError};
use serde_json::{json, Value};

/// A failed shell job: `error` becomes `gateway_jobs.error`, `result` the
/// job's `result` (always an object with `message`). The job ends `failed`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct ShellJobError {
    pub error: String,
    pub result: Value,
}

impl ShellJobError {
    /// `{message}` with the same text as the error.
    pub fn message(message: impl Into<String>) -> Self {
        let message = message.into();
        ShellJobError {
            result: json!({ "message": message }),
            error: message,
        }
    }

    /// `{message, ...extra}`; `extra` must be an object (other values are
    /// ignored).
    pub fn with_fields(message: impl Into<String>, extra: Value) -> Self {
        let message = message.into();
        let mut result = serde_json::Map::new();
        result.insert("message".into(), json!(message));
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                result.entry(k).or_insert(v);
            }
        }
        ShellJobError {
            error: message,
            result: Value::Object(result),
        }
    }

    /// A payload error: its result message and its (possibly different) job
    /// error.
    pub fn from_payload(e: &PayloadError) -> Self {
        ShellJobError {
            error: e.job_error.to_string(),
            result: e.result(),
        }
    }

    /// Adds a field to the result unless it is already there.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        if let Value::Object(map) = &mut self.result {
            map.entry(key.to_string()).or_insert(value);
        }
        self
    }

    /// The `result.message` text.
    pub fn result_message(&self) -> &str {
        self.result
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or(&self.error)
    }

    pub fn into_outcome(self) -> HandlerOutcome {
        HandlerOutcome::failure(self.result, self.error)
    }
}

/// Maps a shell handler's return value onto the common job envelope.
pub fn shell_outcome(result: Result<Value, ShellJobError>) -> HandlerOutcome {
    match result {
        Ok(value) => HandlerOutcome::success(value),
        Err(e) => e.into_outcome(),
    }
}
