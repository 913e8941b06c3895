//! Row changes committed by the store, fanned out to realtime subscribers.
//!
//! The store publishes one [`RowChange`] per inserted, updated or deleted row
//! *after* its transaction commits. One dispatcher task per feed
//! ([`crate::realtime::dispatch`]) receives them and routes each only to the
//! realtime sockets whose subscriptions can match; those filter it per
//! binding and per subscriber's authorization.

use crate::realtime::dispatch::Dispatcher;
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};
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
    /// Started on first use, from inside the runtime that serves sockets
    /// (the feed itself may be built before there is one).
    dispatcher: Arc<OnceLock<Dispatcher>>,
}

impl ChangeFeed {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        ChangeFeed {
            tx,
            dispatcher: Arc::new(OnceLock::new()),
        }
    }

    /// Publishes a committed change. Having no subscriber is not an error.
    pub fn publish(&self, change: RowChange) {
        let _ = self.tx.send(Arc::new(change));
    }

    /// Changes published but not yet taken by every receiver.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RowChange>> {
        self.tx.subscribe()
    }

    /// The feed's one realtime dispatcher, started (on the current Tokio
    /// runtime) the first time it is asked for.
    pub fn dispatcher(&self) -> &Dispatcher {
        self.dispatcher
            .get_or_init(|| Dispatcher::start(self.tx.subscribe()))
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        // Only the dispatcher reads the ring, and it does little per
        // change; the slack absorbs bursts such as large bulk inserts.
        ChangeFeed::new(8192)
    }
}
