//! Realtime's change dispatcher: one task per hub receives the store's
//! [`ChangeFeed`](crate::changes::ChangeFeed) once and hands each committed
//! change only to the sockets whose bindings can match it.
//!
//! Why: with one feed receiver per socket, every change (10,000 gateways
//! heartbeat ≈ 333 `team_gateways` UPDATEs a second) woke every socket task,
//! the feed's ring overflowed and sockets skipped job INSERTs (BENCHMARKS.md,
//! P6). Here the cost of a change follows the sockets it can concern:
//!
//! * bindings with a plain `col=eq.value` condition are found by an exact
//!   lookup on (change kind, table, column, value of the row);
//! * bindings on a table without such a condition sit in a per-(kind,
//!   table) list, and bindings on every table (`table: "*"`) in a per-kind
//!   list; both are checked per change;
//! * a channel whose principal is a gateway is also found by gateway id,
//!   for `team_gateways` changes of that gateway that revoke it (delete,
//!   `revoked_at` set, moved to another team). Heartbeats, the bulk of
//!   `team_gateways` UPDATEs, wake no socket without a binding on the table.
//!
//! The index is a superset filter: the socket task still tests each
//! binding ([`super::filter::Binding::matches`]) and the select policy
//! ([`crate::policy::row_visible`]) before it sends anything, exactly as
//! before, so the wire behaviour does not change.
//!
//! Each socket gets a bounded queue ([`QUEUE_CAPACITY`]). The dispatcher
//! never waits for a socket: when a queue is full the change is dropped for
//! that socket only, counted, and the socket is told (see
//! [`Subscription::take_lost`]); the WARN about it is written at most once
//! per socket per [`WARN_EVERY`].

use super::filter::{row_value, Binding, EventKind};
use crate::changes::{ChangeKind, RowChange};
use crate::schema;
use crate::values::SqlValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Default bound of the matching changes one socket may have waiting
/// (`RealtimeOptions::queue_capacity`). A gateway sees a few changes a
/// minute, but a listener bound to a whole table sees every row of a bulk
/// insert at once (the bench inserts 500 jobs and follows ~1,500 changes):
/// the bound must absorb such bursts, and costs nothing while the queue is
/// empty (Tokio's bounded channel allocates in small blocks as it fills).
/// A socket this far behind has stopped reading (its sends then time out
/// and close it) or is bound to far more than it can take.
pub const QUEUE_CAPACITY: usize = 16_384;

/// How often, at most, one socket's dropped changes are logged.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// A column value as an index key (`NULL` never equals anything, so it is
/// never a key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Key {
    fn of(v: SqlValue) -> Option<Key> {
        match v {
            SqlValue::Null => None,
            SqlValue::Bool(b) => Some(Key::Bool(b)),
            SqlValue::Int(n) => Some(Key::Int(n)),
            SqlValue::Text(s) => Some(Key::Text(s)),
        }
    }
}

/// What a socket wants to be woken for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A `postgres_changes` binding: its table (`None`: every table), its
    /// event, and its equality condition if it has one.
    Binding {
        table: Option<&'static str>,
        event: EventKind,
        eq: Option<(String, Key)>,
    },
    /// Changes that revoke this gateway (`id`, acting for `team`): its
    /// row deleted, `revoked_at` set, or `team_id` changed.
    Gateway { id: String, team: String },
}

impl Route {
    pub fn of_binding(b: &Binding) -> Route {
        Route::Binding {
            table: b.table.map(|t| t.name),
            event: b.event,
            eq: b
                .eq_condition()
                .and_then(|(col, v)| Some((col.to_string(), Key::of(v)?))),
        }
    }
}

/// One entry of a socket's queue.
#[derive(Debug)]
pub enum Item {
    Change(Arc<RowChange>),
    /// Nothing to deliver: look at [`Subscription::take_lost`] (sent when
    /// the dispatcher itself fell behind the feed).
    Lost,
}

fn kind_index(kind: ChangeKind) -> usize {
    match kind {
        ChangeKind::Insert => 0,
        ChangeKind::Update => 1,
        ChangeKind::Delete => 2,
    }
}

fn kinds_of(event: EventKind) -> &'static [usize] {
    match event {
        EventKind::All => &[0, 1, 2],
        EventKind::Insert => &[0],
        EventKind::Update => &[1],
        EventKind::Delete => &[2],
    }
}

type SubId = u64;

/// Removes one `id` from a list (a socket may be listed once per route).
fn remove_one(list: &mut Vec<SubId>, id: SubId) {
    if let Some(i) = list.iter().position(|&x| x == id) {
        list.swap_remove(i);
    }
}

#[derive(Default)]
struct Lists {
    any_table: Vec<SubId>,
    by_table: HashMap<&'static str, Vec<SubId>>,
    by_eq: HashMap<&'static str, HashMap<String, HashMap<Key, Vec<SubId>>>>,
}

struct Sub {
    tx: mpsc::Sender<Item>,
    lost: Arc<AtomicU64>,
    label: String,
    routes: Vec<Route>,
    unwarned: u64,
    last_warn: Option<Instant>,
}

#[derive(Default)]
struct Index {
    next_id: SubId,
    subs: HashMap<SubId, Sub>,
    kinds: [Lists; 3],
    /// Gateway id → (socket, team the socket's channel acts for).
    gateways: HashMap<String, Vec<(SubId, String)>>,
    /// When the dispatcher's own lag was last logged.
    last_lag_warn: Option<Instant>,
}

impl Index {
    fn add(&mut self, id: SubId, route: &Route) {
        match route {
            Route::Gateway { id: g, team } => self
                .gateways
                .entry(g.clone())
                .or_default()
                .push((id, team.clone())),
            Route::Binding { table, event, eq } => {
                for &k in kinds_of(*event) {
                    let lists = &mut self.kinds[k];
                    match (table, eq) {
                        (None, _) => lists.any_table.push(id),
                        (Some(t), None) => lists.by_table.entry(t).or_default().push(id),
                        (Some(t), Some((col, key))) => lists
                            .by_eq
                            .entry(t)
                            .or_default()
                            .entry(col.clone())
                            .or_default()
                            .entry(key.clone())
                            .or_default()
                            .push(id),
                    }
                }
            }
        }
    }

    /// Undoes one [`Index::add`], dropping emptied entries (no leak).
    fn remove(&mut self, id: SubId, route: &Route) {
        match route {
            Route::Gateway { id: g, team } => {
                if let Some(list) = self.gateways.get_mut(g) {
                    if let Some(i) = list.iter().position(|(x, t)| *x == id && t == team) {
                        list.swap_remove(i);
                    }
                    if list.is_empty() {
                        self.gateways.remove(g);
                    }
                }
            }
            Route::Binding { table, event, eq } => {
                for &k in kinds_of(*event) {
                    let lists = &mut self.kinds[k];
                    match (table, eq) {
                        (None, _) => remove_one(&mut lists.any_table, id),
                        (Some(t), None) => {
                            if let Some(list) = lists.by_table.get_mut(t) {
                                remove_one(list, id);
                                if list.is_empty() {
                                    lists.by_table.remove(t);
                                }
                            }
                        }
                        (Some(t), Some((col, key))) => {
                            let Some(cols) = lists.by_eq.get_mut(t) else {
                                continue;
                            };
                            if let Some(keys) = cols.get_mut(col) {
                                if let Some(list) = keys.get_mut(key) {
                                    remove_one(list, id);
                                    if list.is_empty() {
                                        keys.remove(key);
                                    }
                                }
                                if keys.is_empty() {
                                    cols.remove(col);
                                }
                            }
                            if cols.is_empty() {
                                lists.by_eq.remove(t);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The sockets `change` may concern, each once.
    fn targets(&self, change: &RowChange, out: &mut Vec<SubId>) {
        out.clear();
        let lists = &self.kinds[kind_index(change.kind)];
        out.extend_from_slice(&lists.any_table);
        if let Some(list) = lists.by_table.get(change.table) {
            out.extend_from_slice(list);
        }
        if let (Some(cols), Some(table)) =
            (lists.by_eq.get(change.table), schema::table(change.table))
        {
            for (col, keys) in cols {
                let key = row_value(table, col, &change.record).and_then(Key::of);
                if let Some(list) = key.and_then(|k| keys.get(&k)) {
                    out.extend_from_slice(list);
                }
            }
        }
        if change.table == schema::TEAM_GATEWAYS.name {
            let row = &change.record;
            if let Some(list) = row
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| self.gateways.get(id))
            {
                // The same test as the socket's revocation check.
                let gone = change.kind == ChangeKind::Delete
                    || !row.get("revoked_at").is_none_or(Value::is_null);
                let team = row.get("team_id").and_then(Value::as_str);
                out.extend(
                    list.iter()
                        .filter(|(_, t)| gone || team != Some(t.as_str()))
                        .map(|(s, _)| *s),
                );
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Queues `item` for one socket without waiting; a full queue drops it
    /// for that socket only.
    fn offer(&mut self, id: SubId, item: Item, stats: &Stats) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        // Counted before the send so that a socket never holds a change the
        // count does not include yet (tests compare it exactly).
        stats.queued.fetch_add(1, Ordering::Relaxed);
        match sub.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                sub.lost.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                sub.unwarned += 1;
                let now = Instant::now();
                if sub.last_warn.is_none_or(|t| now - t >= WARN_EVERY) {
                    tracing::warn!(
                        socket = %sub.label,
                        dropped = sub.unwarned,
                        "realtime socket is not keeping up: {} changes for it were dropped; its channels get phx_error so that the client rejoins and reconciles (logged at most once a minute per socket)",
                        sub.unwarned
                    );
                    sub.unwarned = 0;
                    sub.last_warn = Some(now);
                }
            }
            // The socket task is ending; dropping its Subscription
            // unregisters it.
            Err(TrySendError::Closed(_)) => {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    queued: AtomicU64,
    dropped: AtomicU64,
}

/// Handle on a hub's dispatcher. Cloning is cheap.
#[derive(Clone)]
pub struct Dispatcher {
    index: Arc<Mutex<Index>>,
    stats: Arc<Stats>,
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // The index is consistent between statements that can panic, so a
    // poisoned lock is still usable.
    index.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// Starts the dispatcher task on the current Tokio runtime; it ends
    /// when the feed closes.
    pub fn start(feed: broadcast::Receiver<Arc<RowChange>>) -> Dispatcher {
        let d = Dispatcher {
            index: Arc::new(Mutex::new(Index::default())),
            stats: Arc::new(Stats::default()),
        };
        tokio::spawn(run(d.index.clone(), d.stats.clone(), feed));
        d
    }

    /// Registers a socket. Changes published after this returns reach its
    /// queue if a route can match them.
    pub fn register(&self, routes: Vec<Route>, label: String, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let lost = Arc::new(AtomicU64::new(0));
        let mut ix = lock(&self.index);
        let id = ix.next_id;
        ix.next_id += 1;
        for r in &routes {
            ix.add(id, r);
        }
        ix.subs.insert(
            id,
            Sub {
                tx,
                lost: lost.clone(),
                label,
                routes,
                unwarned: 0,
                last_warn: None,
            },
        );
        drop(ix);
        Subscription {
            id,
            rx,
            lost,
            dispatcher: self.clone(),
        }
    }

    /// Registered sockets (a leak check for tests and diagnostics).
    pub fn subscriptions(&self) -> usize {
        lock(&self.index).subs.len()
    }

    /// Index entries across all lists: zero once every socket is gone.
    pub fn index_entries(&self) -> usize {
        let ix = lock(&self.index);
        let lists: usize = ix
            .kinds
            .iter()
            .map(|l| {
                l.any_table.len()
                    + l.by_table.values().map(Vec::len).sum::<usize>()
                    + l.by_eq
                        .values()
                        .flat_map(|c| c.values())
                        .flat_map(|k| k.values())
                        .map(Vec::len)
                        .sum::<usize>()
            })
            .sum();
        lists + ix.gateways.values().map(Vec::len).sum::<usize>()
    }

    /// Changes waiting in socket queues right now (all sockets).
    pub fn queued_now(&self) -> usize {
        lock(&self.index)
            .subs
            .values()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum()
    }

    /// Changes queued to sockets, and changes dropped because a socket's
    /// queue was full, since the hub started.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.queued.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

async fn run(
    index: Arc<Mutex<Index>>,
    stats: Arc<Stats>,
    mut feed: broadcast::Receiver<Arc<RowChange>>,
) {
    let mut targets = Vec::new();
    loop {
        match feed.recv().await {
            Ok(change) => {
                let mut ix = lock(&index);
                ix.targets(&change, &mut targets);
                for &id in &targets {
                    ix.offer(id, Item::Change(change.clone()), &stats);
                }
            }
            Err(RecvError::Lagged(skipped)) => {
                // The dispatcher itself fell behind: any socket may have
                // missed a change, so every one is told, like a full queue.
                let mut ix = lock(&index);
                let now = Instant::now();
                if ix.last_lag_warn.is_none_or(|t| now - t >= WARN_EVERY) {
                    tracing::warn!(
                        skipped,
                        "the realtime dispatcher fell behind the change feed; {skipped} changes were not routed and every subscribed socket is told to rejoin"
                    );
                    ix.last_lag_warn = Some(now);
                }
                stats.dropped.fetch_add(skipped, Ordering::Relaxed);
                for sub in ix.subs.values() {
                    sub.lost.fetch_add(skipped, Ordering::Relaxed);
                    let _ = sub.tx.try_send(Item::Lost);
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// A socket's registration: its queue of matching changes. Dropping it
/// unregisters the socket.
pub struct Subscription {
    id: SubId,
    rx: mpsc::Receiver<Item>,
    lost: Arc<AtomicU64>,
    dispatcher: Dispatcher,
}

impl Subscription {
    /// Replaces the socket's routes (after a join, leave or token change).
    pub fn set_routes(&mut self, routes: Vec<Route>) {
        let mut ix = lock(&self.dispatcher.index);
        let Some(old) = ix
            .subs
            .get_mut(&self.id)
            .map(|s| std::mem::take(&mut s.routes))
        else {
            return;
        };
        if old == routes {
            if let Some(s) = ix.subs.get_mut(&self.id) {
                s.routes = old;
            }
            return;
        }
        for r in &old {
            ix.remove(self.id, r);
        }
        for r in &routes {
            ix.add(self.id, r);
        }
        if let Some(s) = ix.subs.get_mut(&self.id) {
            s.routes = routes;
        }
    }

    /// The next queued item. The sender lives in the index as long as this
    /// subscription does, so the queue never closes under us.
    pub async fn recv(&mut self) -> Item {
        match self.rx.recv().await {
            Some(item) => item,
            None => std::future::pending().await,
        }
    }

    /// Changes dropped for this socket since the last call.
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut ix = lock(&self.dispatcher.index);
        if let Some(sub) = ix.subs.remove(&self.id) {
            for r in &sub.routes {
                ix.remove(self.id, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(table: &'static str, kind: ChangeKind, record: Value) -> Arc<RowChange> {
        Arc::new(RowChange {
            table,
            kind,
            record: record.as_object().unwrap().clone(),
            old_record: None,
            commit_timestamp: "2025-01-01T00:00:00Z".into(),
        })
    }

    fn binding(entry: Value) -> Route {
        Route::of_binding(&Binding::parse(&entry, 1).unwrap())
    }

    fn targets(ix: &Index, c: &RowChange) -> Vec<SubId> {
        let mut out = Vec::new();
        ix.targets(c, &mut out);
        out
    }

    #[test]
    fn routes_by_kind_table_eq_value_and_gateway() {
        let team_a = "00000000-0000-4000-8000-00000000000a";
        let team_b = "00000000-0000-4000-8000-00000000000b";
        let mut ix = Index::default();
        let eq_a = binding(
            json!({"event": "INSERT", "schema": "public", "table": "gateway_jobs", "filter": format!("team_id=eq.{team_a}")}),
        );
        let all_jobs = binding(json!({"event": "*", "schema": "public", "table": "gateway_jobs"}));
        let every = binding(json!({"event": "DELETE", "schema": "public"}));
        let neq = binding(
            json!({"event": "INSERT", "schema": "public", "table": "gateway_jobs", "filter": format!("team_id=neq.{team_a}")}),
        );
        assert!(
            matches!(&eq_a, Route::Binding { eq: Some((c, Key::Text(_))), .. } if c == "team_id")
        );
        assert!(matches!(&neq, Route::Binding { eq: None, .. }));
        ix.add(1, &eq_a);
        ix.add(2, &all_jobs);
        ix.add(3, &every);
        ix.add(4, &neq);
        let g1 = Route::Gateway {
            id: "g1".into(),
            team: team_a.into(),
        };
        ix.add(5, &g1);
        ix.add(6, &eq_a);
        ix.add(6, &all_jobs);

        let ins_a = change(
            "gateway_jobs",
            ChangeKind::Insert,
            json!({"id": "j", "team_id": team_a}),
        );
        assert_eq!(targets(&ix, &ins_a), vec![1, 2, 4, 6]);
        let ins_b = change(
            "gateway_jobs",
            ChangeKind::Insert,
            json!({"id": "j", "team_id": team_b}),
        );
        assert_eq!(targets(&ix, &ins_b), vec![2, 4, 6]);
        let upd_a = change(
            "gateway_jobs",
            ChangeKind::Update,
            json!({"id": "j", "team_id": team_a}),
        );
        assert_eq!(targets(&ix, &upd_a), vec![2, 6]);
        let del_gw = change("team_gateways", ChangeKind::Delete, json!({"id": "g1"}));
        assert_eq!(targets(&ix, &del_gw), vec![3, 5]);
        // A heartbeat of g1 wakes nobody; revoking or moving it wakes its
        // socket.
        let gw = |extra: Value| {
            let mut r =
                json!({"id": "g1", "team_id": team_a, "revoked_at": null, "last_seen_at": "now"});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            change("team_gateways", ChangeKind::Update, r)
        };
        assert!(targets(&ix, &gw(json!({}))).is_empty());
        assert_eq!(
            targets(&ix, &gw(json!({"revoked_at": "2025-01-01T00:00:00Z"}))),
            vec![5]
        );
        assert_eq!(targets(&ix, &gw(json!({"team_id": team_b}))), vec![5]);
        let other = change("team_gateways", ChangeKind::Delete, json!({"id": "g2"}));
        assert_eq!(targets(&ix, &other), vec![3]);

        for (id, r) in [
            (1, &eq_a),
            (2, &all_jobs),
            (3, &every),
            (4, &neq),
            (5, &g1),
            (6, &eq_a),
            (6, &all_jobs),
        ] {
            ix.remove(id, r);
        }
        assert!(ix.gateways.is_empty());
        for l in &ix.kinds {
            assert!(l.any_table.is_empty() && l.by_table.is_empty() && l.by_eq.is_empty());
        }
    }

    #[test]
    fn keys_are_values_of_the_column_type() {
        // `run_sequence=eq.07` casts to 7 and must find a row holding 7; a
        // UUID filter in upper case must find the stored lower-case UUID.
        let mut ix = Index::default();
        let int = binding(
            json!({"event": "UPDATE", "schema": "public", "table": "subagent_runs", "filter": "run_sequence=eq.07"}),
        );
        let uuid = binding(
            json!({"event": "UPDATE", "schema": "public", "table": "subagent_runs", "filter": "team_id=eq.00000000-0000-4000-8000-0000000000AB"}),
        );
        ix.add(1, &int);
        ix.add(2, &uuid);
        let c = change(
            "subagent_runs",
            ChangeKind::Update,
            json!({"id": "r", "run_sequence": 7, "team_id": "00000000-0000-4000-8000-0000000000ab"}),
        );
        assert_eq!(targets(&ix, &c), vec![1, 2]);
        let other = change(
            "subagent_runs",
            ChangeKind::Update,
            json!({"id": "r", "run_sequence": 70, "team_id": null}),
        );
        assert!(targets(&ix, &other).is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_for_that_socket_only_and_says_so() {
        let (tx, rx) = broadcast::channel(16);
        let d = Dispatcher::start(rx);
        let all = || {
            vec![binding(
                json!({"event": "INSERT", "schema": "public", "table": "teams"}),
            )]
        };
        const CAP: usize = 64;
        let mut slow = d.register(all(), "slow".into(), CAP);
        let mut fast = d.register(all(), "fast".into(), CAP);
        let n = CAP + 10;
        for i in 0..n {
            tx.send(change(
                "teams",
                ChangeKind::Insert,
                json!({"id": i.to_string()}),
            ))
            .unwrap();
            // The fast socket keeps up.
            match tokio::time::timeout(Duration::from_secs(5), fast.recv()).await {
                Ok(Item::Change(c)) => assert_eq!(c.record["id"], json!(i.to_string())),
                other => panic!("fast socket: {other:?}"),
            }
        }
        assert_eq!(fast.take_lost(), 0);
        assert_eq!(slow.take_lost(), 10);
        assert_eq!(d.counts().1, 10);
        let mut got = 0;
        while let Ok(Item::Change(_)) =
            tokio::time::timeout(Duration::from_millis(50), slow.recv()).await
        {
            got += 1;
        }
        assert_eq!(got, CAP);
        assert_eq!(d.subscriptions(), 2);
        drop(slow);
        drop(fast);
        assert_eq!((d.subscriptions(), d.index_entries()), (0, 0));
    }
}
