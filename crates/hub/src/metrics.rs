//! `GET /metrics`: the hub's Prometheus text exposition (format 0.0.4).
//!
//! - `panorama_hub_http_requests_total{route,method,status}` and
//!   `panorama_hub_http_request_duration_seconds{route}`: every request, by
//!   its route pattern (`/rest/v1/:table`, not the concrete path, so the
//!   label set stays small);
//! - `panorama_hub_jobs{status}`: gateway jobs by status, counted in the
//!   database at scrape time (a read-only connection, so scrapes never wait
//!   on the writer);
//! - `panorama_hub_realtime_sockets`, `…_realtime_subscriptions`,
//!   `…_realtime_queued_changes` (changes waiting in socket queues),
//!   `…_change_feed_backlog`, `…_realtime_changes_{queued,dropped}_total`;
//! - `panorama_hub_store_operation_duration_seconds{operation}`: store
//!   latency, measured by [`TimedStore`] around every store call;
//! - `panorama_hub_lost_gateway_jobs_failed_total`: jobs this process's
//!   lost-gateway sweeper failed (with replicas, each counts its own).
//!
//! Who may read it: the service key only (bearer or `apikey`), like the
//! rest of the control plane's own API. The hub's one port is the one
//! gateways reach, often from other machines, and the numbers describe
//! every team's activity, so an open endpoint would leak it. Prometheus
//! sends the key with `authorization: {credentials: <service key>}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::State;
use crate::auth::Principal;
use crate::changes::Row;

use crate::store::{
    DeleteRequest, InsertRequest, LogoutScope, NewInvitation, PairingGrant, PeopleError,
    PeopleStore, RefreshError, RefreshGrant, SelectRequest, SelectResult, SharedStore, Store,
    StoreError, UpdateRequest, UserRecord,
};

/// Latency buckets in seconds (SQLite calls and HTTP requests alike).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Default)]
struct Registry {
    requests: BTreeMap<(String, String, u16), u64>,
    request_seconds: BTreeMap<String, Histogram>,
    store_seconds: BTreeMap<&'static str, Histogram>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static SOCKETS: AtomicI64 = AtomicI64::new(0);
static LOST_GATEWAY_JOBS: AtomicU64 = AtomicU64::new(0);
static DB_PATH: OnceLock<PathBuf> = OnceLock::new();

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Where `panorama_hub_jobs` is counted (set once by `server::bind`).
pub fn set_db_path(path: PathBuf) {
    let _ = DB_PATH.set(path);
}

/// Counts jobs the lost-gateway sweeper of this process failed.
pub fn lost_gateway_jobs_failed(n: usize) {
    LOST_GATEWAY_JOBS.fetch_add(n as u64, Ordering::Relaxed);
}

/// Counts an open realtime socket until dropped.
pub struct SocketGuard(());

pub fn socket_opened() -> SocketGuard {
    SOCKETS.fetch_add(1, Ordering::Relaxed);
    SocketGuard(())
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        SOCKETS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: count and time every request by route pattern.
pub async fn track_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| route_label(p.as_str()));
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let secs = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let mut reg = registry();
    *reg.requests
        .entry((route.clone(), method, status))
        .or_default() += 1;
    reg.request_seconds.entry(route).or_default().observe(secs);
    response
}

/// A route pattern as a label: `/rest/v1/{table}` → `/rest/v1/:table`
/// (braces inside label values trip simpler exposition parsers).
fn route_label(pattern: &str) -> String {
    pattern.replace('{', ":").replace('}', "")
}

/// A label value in the exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn count_jobs() -> Result<Vec<(String, i64)>, String> {
    let path = DB_PATH.get().ok_or("no database path")?;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT status, COUNT(*) FROM gateway_jobs GROUP BY status ORDER BY status")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Everything the hub knows right now, as exposition text.
pub struct Snapshot {
    pub jobs: Result<Vec<(String, i64)>, String>,
    pub subscriptions: usize,
    pub queued_now: usize,
    pub feed_backlog: usize,
    pub changes_queued: u64,
    pub changes_dropped: u64,
    pub active_cache: crate::active_cache::CacheStats,
}

/// Render the exposition text (pure apart from reading the registry).
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    let reg = registry();
    out.push_str("# HELP panorama_hub_http_requests_total HTTP requests by route pattern, method and status.\n# TYPE panorama_hub_http_requests_total counter\n");
    for ((route, method, status), n) in &reg.requests {
        let _ = writeln!(
            out,
            "panorama_hub_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
            label(route),
            label(method)
        );
    }
    out.push_str("# HELP panorama_hub_http_request_duration_seconds Time to answer a request, by route pattern.\n# TYPE panorama_hub_http_request_duration_seconds histogram\n");
    for (route, h) in &reg.request_seconds {
        h.render(
            &mut out,
            "panorama_hub_http_request_duration_seconds",
            &format!("route=\"{}\"", label(route)),
        );
    }
    out.push_str("# HELP panorama_hub_store_operation_duration_seconds Store (SQLite) call latency by operation.\n# TYPE panorama_hub_store_operation_duration_seconds histogram\n");
    for (op, h) in &reg.store_seconds {
        h.render(
            &mut out,
            "panorama_hub_store_operation_duration_seconds",
            &format!("operation=\"{op}\""),
        );
    }
    drop(reg);
    out.push_str(
        "# HELP panorama_hub_jobs Gateway jobs by status.\n# TYPE panorama_hub_jobs gauge\n",
    );
    match &snap.jobs {
        Ok(rows) => {
            for (status, n) in rows {
                let _ = writeln!(out, "panorama_hub_jobs{{status=\"{}\"}} {n}", label(status));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not count jobs"),
    }
    let cache = &snap.active_cache;
    let gauges: [(&str, &str, &str, String); 12] = [
        (
            "panorama_hub_realtime_sockets",
            "gauge",
            "Open realtime WebSocket connections.",
            SOCKETS.load(Ordering::Relaxed).to_string(),
        ),
        (
            "panorama_hub_realtime_subscriptions",
            "gauge",
            "Sockets registered with the change dispatcher.",
            snap.subscriptions.to_string(),
        ),
        (
            "panorama_hub_realtime_queued_changes",
            "gauge",
            "Changes waiting in socket queues right now.",
            snap.queued_now.to_string(),
        ),
        (
            "panorama_hub_change_feed_backlog",
            "gauge",
            "Changes waiting in the change feed for the dispatcher.",
            snap.feed_backlog.to_string(),
        ),
        (
            "panorama_hub_realtime_changes_queued_total",
            "counter",
            "Changes queued to sockets since start.",
            snap.changes_queued.to_string(),
        ),
        (
            "panorama_hub_realtime_changes_dropped_total",
            "counter",
            "Changes dropped because a socket's queue was full.",
            snap.changes_dropped.to_string(),
        ),
        (
            "panorama_hub_active_cache_entries",
            "gauge",
            "Cached \"this gateway / session is active\" answers.",
            cache.entries.to_string(),
        ),
        (
            "panorama_hub_active_cache_hits_total",
            "counter",
            "Revocation checks answered from the active cache.",
            cache.hits.to_string(),
        ),
        (
            "panorama_hub_active_cache_misses_total",
            "counter",
            "Revocation checks that asked the database.",
            cache.misses.to_string(),
        ),
        (
            "panorama_hub_active_cache_trusted",
            "gauge",
            "1 while the change feed is in sync and cached answers are served.",
            u8::from(cache.trusted).to_string(),
        ),
        (
            "panorama_hub_active_cache_feed_losses_total",
            "counter",
            "Times the database change listener lost its connection (the cache was dropped).",
            cache.feed_losses.to_string(),
        ),
        (
            "panorama_hub_lost_gateway_jobs_failed_total",
            "counter",
            "Jobs this process's lost-gateway sweeper failed (gateway without heartbeat).",
            LOST_GATEWAY_JOBS.load(Ordering::Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    out
}

/// `GET /metrics` (service key only; see the module docs).
pub async fn endpoint(state: State, headers: HeaderMap) -> Response {
    // A bare `Authorization: Bearer <service key>` is enough (what
    // Prometheus sends); the Supabase-style `apikey` header works too.
    let bearer = crate::app::bearer(&headers).map(str::to_string);
    match crate::app::principal(&state, &headers, bearer.as_deref()) {
        Ok(Principal::Service) => {}
        Ok(_) => {
            return (
                StatusCode::FORBIDDEN,
                "metrics need the service key (authorization: Bearer <service key>)\n",
            )
                .into_response()
        }
        Err(resp) => return resp,
    }
    let dispatcher = state.dispatcher();
    let (changes_queued, changes_dropped) = dispatcher.counts();
    // SQLite: a read-only connection of its own, so scrapes never wait on
    // the writer; PostgreSQL: the store's pool.
    let jobs = if DB_PATH.get().is_some() {
        tokio::task::spawn_blocking(count_jobs)
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    } else {
        state.store.job_counts().await.map_err(|e| e.to_string())
    };
    let snap = Snapshot {
        jobs,
        subscriptions: dispatcher.subscriptions(),
        queued_now: dispatcher.queued_now(),
        feed_backlog: state.feed.backlog(),
        changes_queued,
        changes_dropped,
        active_cache: state.feed.active_cache().stats(Instant::now()),
    };
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        render(&snap),
    )
        .into_response()
}

/// A [`Store`] that times every call into `panorama_hub_store_operation_duration_seconds`.
pub struct TimedStore {
    inner: SharedStore,
}

impl TimedStore {
    pub fn wrap(inner: SharedStore) -> SharedStore {
        Arc::new(TimedStore { inner })
    }
}

async fn timed<T>(op: &'static str, fut: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = fut.await;
    registry()
        .store_seconds
        .entry(op)
        .or_default()
        .observe(started.elapsed().as_secs_f64());
    out
}

#[async_trait]
impl Store for TimedStore {
    async fn atomic(&self, f: crate::store::TxFn) -> Result<serde_json::Value, StoreError> {
        timed("atomic", self.inner.atomic(f)).await
    }
    async fn select(&self, req: SelectRequest) -> Result<SelectResult, StoreError> {
        timed("select", self.inner.select(req)).await
    }
    async fn insert(&self, req: InsertRequest) -> Result<Vec<Row>, StoreError> {
        timed("insert", self.inner.insert(req)).await
    }
    async fn update(&self, req: UpdateRequest) -> Result<Vec<Row>, StoreError> {
        timed("update", self.inner.update(req)).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<Vec<Row>, StoreError> {
        timed("delete", self.inner.delete(req)).await
    }
    async fn sweep_lost_gateways(
        &self,
        stale_before: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        timed(
            "sweep_lost_gateways",
            self.inner.sweep_lost_gateways(stale_before, limit),
        )
        .await
    }
    async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        timed("job_counts", self.inner.job_counts()).await
    }
    async fn allocate_run_sequence(&self, subagent_id: &str) -> Result<i64, StoreError> {
        timed(
            "allocate_run_sequence",
            self.inner.allocate_run_sequence(subagent_id),
        )
        .await
    }
    async fn pair_gateway(
        &self,
        code: &str,
        device_name: Option<&str>,
        refresh_token_hash: &str,
    ) -> Result<PairingGrant, StoreError> {
        timed(
            "pair_gateway",
            self.inner
                .pair_gateway(code, device_name, refresh_token_hash),
        )
        .await
    }
    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<RefreshGrant, RefreshError> {
        timed(
            "rotate_refresh_token",
            self.inner
                .rotate_refresh_token(old_hash, new_hash, reuse_interval_secs),
        )
        .await
    }
    async fn session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        timed("session_active", self.inner.session_active(session_id)).await
    }
    async fn gateway_active(
        &self,
        gateway_id: &str,
        team_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        timed(
            "gateway_active",
            self.inner.gateway_active(gateway_id, team_id, session_id),
        )
        .await
    }
    async fn record_heartbeat(
        &self,
        gateway_id: &str,
        team_id: &str,
        status: &str,
        capabilities: &serde_json::Value,
        device_name: Option<&str>,
    ) -> Result<(), StoreError> {
        timed(
            "record_heartbeat",
            self.inner
                .record_heartbeat(gateway_id, team_id, status, capabilities, device_name),
        )
        .await
    }
}

/// People's store calls are timed like the rest (sign-in checks the
/// password hash outside the store, so these stay cheap lookups).
#[async_trait]
impl PeopleStore for TimedStore {
    async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
        user_metadata: &serde_json::Value,
        invitation_hash: Option<&str>,
    ) -> Result<UserRecord, PeopleError> {
        timed(
            "create_user",
            self.inner
                .create_user(email, password_hash, user_metadata, invitation_hash),
        )
        .await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        timed("user_by_email", self.inner.user_by_email(email)).await
    }
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        timed("user_by_id", self.inner.user_by_id(id)).await
    }
    async fn update_user(
        &self,
        id: &str,
        email: Option<&str>,
        password_hash: Option<&str>,
        user_metadata: Option<&serde_json::Value>,
    ) -> Result<UserRecord, PeopleError> {
        timed(
            "update_user",
            self.inner
                .update_user(id, email, password_hash, user_metadata),
        )
        .await
    }
    async fn start_user_session(
        &self,
        user_id: &str,
        refresh_hash: &str,
    ) -> Result<String, StoreError> {
        timed(
            "start_user_session",
            self.inner.start_user_session(user_id, refresh_hash),
        )
        .await
    }
    async fn rotate_user_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<(String, String), RefreshError> {
        timed(
            "rotate_user_refresh_token",
            self.inner
                .rotate_user_refresh_token(old_hash, new_hash, reuse_interval_secs),
        )
        .await
    }
    async fn user_session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        timed(
            "user_session_active",
            self.inner.user_session_active(session_id),
        )
        .await
    }
    async fn end_user_sessions(
        &self,
        user_id: &str,
        session_id: &str,
        scope: LogoutScope,
    ) -> Result<(), StoreError> {
        timed(
            "end_user_sessions",
            self.inner.end_user_sessions(user_id, session_id, scope),
        )
        .await
    }
    async fn create_invitation(&self, inv: NewInvitation<'_>) -> Result<(), StoreError> {
        timed("create_invitation", self.inner.create_invitation(inv)).await
    }
    async fn accept_invitation(&self, code_hash: &str, user_id: &str) -> Result<Row, PeopleError> {
        timed(
            "accept_invitation",
            self.inner.accept_invitation(code_hash, user_id),
        )
        .await
    }
    async fn member_role(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::people::Role>, StoreError> {
        timed("member_role", self.inner.member_role(team_id, user_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        let mut out = String::new();
        h.render(&mut out, "x", "op=\"a\"");
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.0025\"} 0\n"));
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.005\"} 1\n"));
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.25\"} 2\n"));
        assert!(out.contains("x_bucket{op=\"a\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_count{op=\"a\"} 2\n"));
    }

    #[test]
    fn route_patterns_become_colon_labels() {
        assert_eq!(route_label("/rest/v1/{table}"), "/rest/v1/:table");
        assert_eq!(route_label("/health"), "/health");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
