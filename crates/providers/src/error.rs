//! Errors of the provider layer.

use thiserror::Error;

/// Exact message when Claude cannot resume (§3 item 8).
pub const ERR_CLAUDE_NO_RESUME: &str =
    "Claude CLI does not support session continuation (--resume)";
/// Exact message for a JSON model run without a schema (§9).
pub const ERR_MODEL_RUN_REQUIRES_SCHEMA: &str = "Claude JSON model run requires a schema";
/// Exact message when no structured payload is found in model-run output (§9).
pub const ERR_MODEL_RUN_MISSING_PAYLOAD: &str = "Claude output missing structured JSON payload";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// `--resume` requested but the detected CLI lacks it.
    #[error("Claude CLI does not support session continuation (--resume)")]
    ResumeUnsupported,
    /// The provider has no continuation at all (Codex, Gemini).
    #[error("Subagent provider does not support continuation")]
    ContinuationUnsupported,
    #[error("Claude JSON model run requires a schema")]
    ModelRunRequiresSchema,
    #[error("Claude output missing structured JSON payload")]
    MissingStructuredPayload,
    /// A restricted Gemini run needs `--sandbox`, and no sandbox is available.
    #[error("Gemini restricted runs need a sandbox (docker or podman on PATH, or GEMINI_SANDBOX set) and none is available on this machine; install one, or enable full control for this subagent")]
    SandboxUnavailable,
    #[error("Unsupported subagent type: {0}")]
    UnsupportedSubagentType(String),
    #[error("Unsupported provider for model runs: {0}")]
    UnsupportedModelRunProvider(String),
    /// Spawning or waiting on a probe failed (message is the OS error).
    #[error("{0}")]
    Spawn(String),
    #[error("{command} timed out after {timeout_ms} ms")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("{command} exited with {status}: {stderr}")]
    ExitStatus {
        command: String,
        status: String,
        stderr: String,
    },
}
