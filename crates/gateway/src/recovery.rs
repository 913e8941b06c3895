//! Crash recovery of jobs an earlier process of this gateway claimed.
//! (Skeleton; completed in a follow-up commit.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::outbox::{Outbox, OutboxError};

/// Owner-only ledger of claimed jobs.
#[derive(Clone)]
pub struct ClaimLedger {
    _dir: Arc<PathBuf>,
}

/// A job this gateway claimed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimedJob {
    pub job_id: String,
    pub job_type: String,
    pub payload: serde_json::Value,
    pub claimed_at: String,
    pub pid: u32,
}

impl ClaimLedger {
    /// Opens (creating) the ledger directory.
    pub fn open(dir: &Path) -> Result<ClaimLedger, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(ClaimLedger {
            _dir: Arc::new(dir.to_path_buf()),
        })
    }
    /// Recorded (fsync'd) right after a successful claim, before the job runs.
    pub fn record(&self, _job: &ClaimedJob) -> Result<(), OutboxError> {
        Ok(())
    }
    /// Removed once the job's completion is pushed to the outbox.
    pub fn release(&self, _job_id: &str) -> Result<(), OutboxError> {
        Ok(())
    }
    /// Claims recorded and not released.
    pub fn outstanding(&self) -> Vec<ClaimedJob> {
        Vec::new()
    }
}

/// What [`recover_interrupted_jobs`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    pub recovered_jobs: Vec<String>,
    pub already_terminal: Vec<String>,
}

/// Finalizes jobs interrupted by a crash (see module docs).
pub async fn recover_interrupted_jobs(
    _client: &panorama_supabase::Client,
    _outbox: &Outbox,
    _ledger: &ClaimLedger,
    _gateway_id: &str,
    _team_id: &str,
) -> Result<RecoveryReport, OutboxError> {
    Ok(RecoveryReport::default())
}
