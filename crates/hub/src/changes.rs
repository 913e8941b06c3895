//! Row changes committed by the store, fanned out to realtime subscribers.
//!
//! The store publishes one [`RowChange`] per inserted, updated or deleted row
//! *after* its transaction commits. One dispatcher task per hub
//! (`crate::realtime::dispatch`, started by `AppState::dispatcher`) receives them and routes each only to the
//! realtime sockets whose subscriptions can match; those filter it per
//! binding and per subscriber's authorization.
//!
//! The feed also keeps the [`ActiveCache`] current: a published change that
//! ends a gateway's activity, and every [`Invalidation`] the store reports
//! (sessions ended outside any row the feed carries), reach the cache
//! synchronously, before the write that made them returns.

use crate::active_cache::{ActiveCache, Invalidation};
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
    /// "Is this principal active?" answers, invalidated by what passes here.
    active: Arc<ActiveCache>,
}

impl ChangeFeed {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        ChangeFeed {
            tx,
            active: Arc::new(ActiveCache::default()),
        }
    }

    /// Publishes a committed change. Having no subscriber is not an error.
    pub fn publish(&self, change: RowChange) {
        for inv in invalidations_of(&change) {
            self.active.invalidate(&inv);
        }
        let _ = self.tx.send(Arc::new(change));
    }

    /// Applies a committed revocation that is not a row change.
    pub fn invalidate(&self, inv: &Invalidation) {
        self.active.invalidate(inv);
    }

    /// The cache this feed keeps current.
    pub fn active_cache(&self) -> &ActiveCache {
        &self.active
    }

    /// Changes published but not yet taken by every receiver.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RowChange>> {
        self.tx.subscribe()
    }
}

/// What a committed row change ends: a gateway revoked, moved to another
/// team or deleted; a team deleted (its gateways go with it by cascade,
/// which the feed does not carry row by row). Heartbeats and every other
/// change end nothing.
pub fn invalidations_of(change: &RowChange) -> Vec<Invalidation> {
    let id_of = |row: &Row| row.get("id").and_then(Value::as_str).map(str::to_string);
    match (change.table, change.kind) {
        ("team_gateways", ChangeKind::Delete) => id_of(&change.record)
            .map(Invalidation::Gateway)
            .into_iter()
            .collect(),
        ("team_gateways", ChangeKind::Update) => {
            let new = &change.record;
            let revoked = !new.get("revoked_at").is_none_or(Value::is_null);
            let changed = |col: &str| {
                change
                    .old_record
                    .as_ref()
                    .is_none_or(|old| old.get(col) != new.get(col))
            };
            if revoked || changed("team_id") || changed("id") {
                let mut out: Vec<Invalidation> =
                    id_of(new).map(Invalidation::Gateway).into_iter().collect();
                if let Some(old) = change.old_record.as_ref().and_then(id_of) {
                    if out.iter().all(|i| *i != Invalidation::Gateway(old.clone())) {
                        out.push(Invalidation::Gateway(old));
                    }
                }
                out
            } else {
                Vec::new()
            }
        }
        ("teams", ChangeKind::Delete) => id_of(&change.record)
            .map(Invalidation::Team)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        // Only the dispatcher reads the ring, and it does little per
        // change; the slack absorbs bursts such as large bulk inserts.
        ChangeFeed::new(8192)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(table: &'static str, kind: ChangeKind, new: Value, old: Option<Value>) -> RowChange {
        RowChange {
            table,
            kind,
            record: new.as_object().unwrap().clone(),
            old_record: old.map(|o| o.as_object().unwrap().clone()),
            commit_timestamp: String::new(),
        }
    }

    #[test]
    fn only_changes_that_end_activity_invalidate() {
        let live = json!({"id": "g", "team_id": "t", "revoked_at": null, "last_seen_at": "a"});
        let heartbeat = json!({"id": "g", "team_id": "t", "revoked_at": null, "last_seen_at": "b"});
        let revoked = json!({"id": "g", "team_id": "t", "revoked_at": "2026-01-01T00:00:00Z"});
        let moved = json!({"id": "g", "team_id": "t2", "revoked_at": null});
        let gw = |id: &str| vec![Invalidation::Gateway(id.into())];
        let cases = [
            (
                change(
                    "team_gateways",
                    ChangeKind::Update,
                    heartbeat.clone(),
                    Some(live.clone()),
                ),
                vec![],
            ),
            (
                change(
                    "team_gateways",
                    ChangeKind::Update,
                    revoked.clone(),
                    Some(live.clone()),
                ),
                gw("g"),
            ),
            (
                change(
                    "team_gateways",
                    ChangeKind::Update,
                    moved,
                    Some(live.clone()),
                ),
                gw("g"),
            ),
            // No old row to compare with: assume the worst.
            (
                change("team_gateways", ChangeKind::Update, heartbeat, None),
                gw("g"),
            ),
            (
                change(
                    "team_gateways",
                    ChangeKind::Delete,
                    live.clone(),
                    Some(live.clone()),
                ),
                gw("g"),
            ),
            (
                change("team_gateways", ChangeKind::Insert, live.clone(), None),
                vec![],
            ),
            (
                change("teams", ChangeKind::Delete, json!({"id": "t"}), None),
                vec![Invalidation::Team("t".into())],
            ),
            (
                change("teams", ChangeKind::Update, json!({"id": "t"}), None),
                vec![],
            ),
            (
                change("gateway_jobs", ChangeKind::Delete, json!({"id": "j"}), None),
                vec![],
            ),
        ];
        for (c, expected) in cases {
            assert_eq!(invalidations_of(&c), expected, "{c:?}");
        }
    }

    #[test]
    fn publishing_a_revocation_empties_the_cache_before_it_returns() {
        use crate::active_cache::{Lookup, Subject};
        use std::time::Instant;
        let feed = ChangeFeed::new(4);
        let s = Subject::Gateway {
            gateway_id: "g".into(),
            team_id: "t".into(),
            session_id: "s".into(),
        };
        let now = Instant::now();
        let Lookup::Unknown(tk) = feed.active_cache().lookup(&s, now) else {
            panic!("empty cache")
        };
        feed.active_cache().remember(s.clone(), tk, now);
        assert!(matches!(
            feed.active_cache().lookup(&s, now),
            Lookup::Active
        ));
        feed.publish(change(
            "team_gateways",
            ChangeKind::Update,
            json!({"id": "g", "team_id": "t", "revoked_at": "2026-01-01T00:00:00Z"}),
            Some(json!({"id": "g", "team_id": "t", "revoked_at": null})),
        ));
        assert!(matches!(
            feed.active_cache().lookup(&s, now),
            Lookup::Unknown(_)
        ));
    }
}
