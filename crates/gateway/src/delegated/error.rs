//! Errors of the delegated-run layer.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DelegatedError {
    /// A work-dir segment (job id, subagent id, run id, provider id) is unusable.
    #[error("{label} {problem}")]
    InvalidSegment {
        label: &'static str,
        problem: &'static str,
    },
    #[error("could not prepare work dir {path}: {source}")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Run plan file {path} must stay within work directory")]
    UnsafePlanFile { path: String },
    #[error("could not write run plan file {path}: {source}")]
    PlanFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {message}")]
    Hub {
        context: &'static str,
        message: String,
    },
}
