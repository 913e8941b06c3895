//! Row changes committed by the store, fanned out to realtime subscribers.
//!
//! The store publishes one [`RowChange`] per inserted, updated or deleted row
//! *after* its transaction commits; the realtime server filters them per
//! subscription and per subscriber's authorization.

use serde_json::{Map, Value};
use std::sync::Arc;
use tokio::sync::broadcast;

pub type Row = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    /// The realtime wire name (`INSERT`, `UPDATE`, `DELETE`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RowChange {
    pub table: &'static str,
    pub kind: ChangeKind,
    /// The new row (the deleted row for `Delete`).
    pub record: Row,
    /// The row before an update or delete.
    pub old_record: Option<Row>,
    /// ISO-8601 commit time.
    pub commit_timestamp: String,
}

/// Sender side of the change feed. Cloning is cheap.
#[derive(Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Arc<RowChange>>,
}

impl ChangeFeed {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        ChangeFeed { tx }
    }

    /// Publishes a committed change. Having no subscriber is not an error.
    pub fn publish(&self, change: RowChange) {
        let _ = self.tx.send(Arc::new(change));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RowChange>> {
        self.tx.subscribe()
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed::new(4096)
    }
}
