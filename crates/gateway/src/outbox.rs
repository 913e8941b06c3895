//! Durable, ordered delivery of every write that reports an outcome.
//! (Skeleton; completed in a follow-up commit.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One write the gateway must get to the hub.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum OutboxWrite {
    /// PATCH /rest/v1/<table>?<col>=<op.value>&… with `patch`. Conditional updates
    /// (e.g. status=eq.running) make replays harmless: 0 rows matched is "delivered".
    Update {
        table: String,
        filters: Vec<(String, String)>,
        patch: serde_json::Value,
    },
    /// POST /rest/v1/<table>; rows is an object or an array (a batch, inserted atomically).
    /// With `duplicate_is_delivered`, a 23505 unique violation counts as already delivered.
    Insert {
        table: String,
        rows: serde_json::Value,
        duplicate_is_delivered: bool,
    },
    /// POST /functions/v1/<name>.
    Function {
        name: String,
        body: serde_json::Value,
    },
}

/// Errors of the outbox and the claim ledger.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox I/O error on {path}: {source}; check that the directory exists, is owned by this user and the disk is not full")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Inner {
    _dir: PathBuf,
}

/// Durable outbox (see module docs).
#[derive(Clone)]
pub struct Outbox {
    _inner: Arc<Inner>,
}

impl Outbox {
    /// Opens (creating owner-only 0700/0600) the outbox in `dir` and reloads undelivered entries.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Outbox {
            _inner: Arc::new(Inner {
                _dir: dir.to_path_buf(),
            }),
        })
    }
    /// Appends `write`, fsyncs, and only then returns its sequence number.
    pub fn push(&self, _write: OutboxWrite) -> Result<u64, OutboxError> {
        Ok(0)
    }
    /// Spawns the delivery task.
    pub fn start(&self, _client: panorama_supabase::Client) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
    /// Wakes the delivery task now (push also does).
    pub fn notify(&self) {}
    /// Waits until every entry pushed before the call is delivered, or `timeout` passes.
    pub async fn flush(&self, _timeout: Duration) -> bool {
        true
    }
    /// Entries not yet delivered.
    pub fn pending(&self) -> usize {
        0
    }
    /// Entries moved to the dead-letter file.
    pub fn dead_letters(&self) -> usize {
        0
    }
}
