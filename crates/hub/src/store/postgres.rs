//! The PostgreSQL backend: a pool of connections (`r2d2`), each request
//! one READ COMMITTED transaction on the blocking pool, row locks where a
//! read decides a write (see `super::engine`). Several hub processes can
//! share one database: every rule that must hold across them (one
//! redemption of a pairing code, one rotation of a refresh token, one
//! claim of a job, increasing run sequences) is enforced by PostgreSQL
//! inside the request's transaction.
//!
//! The driver is the synchronous `postgres` crate (a thin blocking face of
//! `tokio-postgres`): the store's logic is synchronous code that runs
//! inside one transaction on the blocking pool, exactly as on SQLite, so
//! both backends share it line for line. sqlx would have made that logic
//! async, its compile-time query checking needs a database at build time,
//! and the hub's queries are built at run time from the schema anyway.

use super::engine::{Backend, Changes, Conn, SqlStore};
use super::sql::Dialect;
use super::StoreError;
use crate::active_cache::{Invalidation, LISTENER_PING};
use crate::changes::ChangeFeed;
use crate::changes::{ChangeKind, RowChange};
use crate::values::SqlValue;
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{NoTls, Statement};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Versioned migrations, applied in order, each once (`hub_migrations`).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_control_plane",
        include_str!("../../migrations/postgres/0001_control_plane.sql"),
    ),
    (
        "0002_team_secrets",
        include_str!("../../migrations/postgres/0002_team_secrets.sql"),
    ),
    (
        "0003_people",
        include_str!("../../migrations/postgres/0003_people.sql"),
    ),
    (
        "0004_change_feed",
        include_str!("../../migrations/postgres/0004_change_feed.sql"),
    ),
];

/// Serializes migrations of concurrently starting replicas.
const MIGRATION_LOCK: i64 = 0x7061_6e6f_7261_6d61; // "panorama"

#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("invalid database URL: {0}. Expected postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    Url(postgres::Error),
    #[error("cannot connect to PostgreSQL at {target}: {message}. Check that the server runs, the URL's host, port, user and password, and that the database exists")]
    Connect { target: String, message: String },
    #[error("cannot migrate the PostgreSQL database: {0}")]
    Migrate(postgres::Error),
}

/// One pooled connection and the statements it has prepared.
pub struct PgConnection {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
}

/// Prepared statements kept per connection; the hub's queries take a few
/// hundred shapes, so the cache is simply emptied when it fills.
const STATEMENT_CACHE: usize = 1024;

struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed()
    }
}

pub struct PgBackend {
    pool: r2d2::Pool<Manager>,
    /// This process's id in the change feed: its own changes come back
    /// through LISTEN too, and are skipped (they were published locally).
    origin: String,
    /// Tells the listener thread to stop when the store goes away.
    stop: Arc<AtomicBool>,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The store on PostgreSQL.
pub type PgStore = SqlStore<PgBackend>;

/// Where a URL points, without its password (for messages).
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default())
}

impl SqlStore<PgBackend> {
    /// Connects (blocking: call from the blocking pool or before the
    /// runtime serves), migrates, and returns the store.
    pub fn connect_blocking(url: &str, feed: ChangeFeed) -> Result<PgStore, PgOpenError> {
        let mut config: postgres::Config = url.parse().map_err(PgOpenError::Url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("panorama-hub");
        }
        let target = describe(&config);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            // Testing each checkout is a round trip per transaction (and a
            // request takes several): a connection the server closed fails
            // at BEGIN instead, before anything ran, and `transaction`
            // starts again on a fresh one.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(15))
            .build(Manager {
                config: config.clone(),
            })
            .map_err(|e| PgOpenError::Connect {
                target: target.clone(),
                message: e.to_string(),
            })?;
        {
            let mut conn = pool.get().map_err(|e| PgOpenError::Connect {
                target,
                message: e.to_string(),
            })?;
            migrate(&mut conn.client).map_err(PgOpenError::Migrate)?;
        }
        let origin = uuid::Uuid::new_v4().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        // Other replicas write too: the active cache may serve answers only
        // while the listener below confirms it is in sync.
        feed.active_cache().fed_by_listener();
        {
            let (origin, stop, feed) = (origin.clone(), stop.clone(), feed.clone());
            std::thread::Builder::new()
                .name("pg-change-feed".into())
                .spawn(move || listen(config, origin, feed, stop))
                .map_err(|e| PgOpenError::Connect {
                    target: "the change listener".into(),
                    message: format!("cannot start its thread: {e}"),
                })?;
        }
        Ok(SqlStore::new(PgBackend { pool, origin, stop }, feed))
    }

    pub async fn connect(url: &str, feed: ChangeFeed) -> Result<PgStore, PgOpenError> {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || Self::connect_blocking(&url, feed))
            .await
            .unwrap_or_else(|e| {
                Err(PgOpenError::Connect {
                    target: "PostgreSQL".into(),
                    message: format!("the connecting task failed: {e}"),
                })
            })
    }
}

/// Applies the migrations not yet applied; returns how many ran. Replicas
/// starting together queue on an advisory lock.
pub fn migrate(client: &mut postgres::Client) -> Result<usize, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hub_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )?;
    let applied: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM hub_migrations", &[])?
        .get(0);
    let mut ran = 0;
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO hub_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&version, name, &crate::values::now_timestamp()],
        )?;
        ran += 1;
    }
    tx.commit()?;
    Ok(ran)
}

impl Backend for PgBackend {
    async fn transaction<T, F>(&self, f: F) -> Result<(T, Changes), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn, &mut Changes) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let origin = self.origin.clone();
        tokio::task::spawn_blocking(move || {
            let mut pooled = pool
                .get()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // (Held until the end: the transaction borrows it.)
            let mut fresh = None;
            let (statements, mut tx) = match begin(&mut pooled) {
                Ok(begun) => begun,
                // Not a refusal by the database: the connection is gone
                // (the server restarted, a proxy cut it). Nothing ran; the
                // pool drops it, and a fresh one is tried once.
                Err(e) if e.as_db_error().is_none() => {
                    let next = fresh.insert(
                        pool.get()
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                    );
                    begin(next).map_err(|e| classify(e, "transaction"))?
                }
                Err(e) => return Err(classify(e, "transaction")),
            };
            let mut changes = Changes::default();
            let out = f(
                &mut PgConn {
                    tx: &mut tx,
                    statements,
                },
                &mut changes,
            )?;
            if !changes.is_empty() {
                announce(&mut tx, &origin, &changes).map_err(|e| classify(e, "hub_changes"))?;
            }
            tx.commit().map_err(|e| classify(e, "commit"))?;
            Ok((out, changes))
        })
        .await
        .map_err(|e| StoreError::backend("transaction", format!("storage task failed: {e}")))?
    }
}

/// Starts a transaction on a pooled connection; hands back its statement
/// cache beside it.
fn begin(
    pooled: &mut PgConnection,
) -> Result<(&mut HashMap<String, Statement>, postgres::Transaction<'_>), postgres::Error> {
    let PgConnection { client, statements } = pooled;
    Ok((statements, client.transaction()?))
}

/// The NOTIFY channel of the change feed between replicas.
const CHANNEL: &str = "panorama_hub_changes";
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_NOTIFY: usize = 7900;

fn change_json(c: &RowChange) -> Value {
    json!({
        "t": c.table,
        "k": c.kind.as_str(),
        "r": c.record,
        "old": c.old_record,
        "ts": c.commit_timestamp,
    })
}

/// A change of the feed, moved out of its parsed JSON (a heartbeat's
/// change carries the gateway row twice, capabilities and all: every
/// replica receives every change, so copies add up).
fn change_from_json(mut v: Value) -> Option<RowChange> {
    let table = crate::schema::table(v["t"].as_str()?)?;
    let kind = match v["k"].as_str()? {
        "INSERT" => ChangeKind::Insert,
        "UPDATE" => ChangeKind::Update,
        "DELETE" => ChangeKind::Delete,
        _ => return None,
    };
    let Value::Object(record) = v["r"].take() else {
        return None;
    };
    let old_record = match v["old"].take() {
        Value::Object(old) => Some(old),
        _ => None,
    };
    Some(RowChange {
        table: table.name,
        kind,
        record,
        old_record,
        commit_timestamp: v["ts"].as_str().unwrap_or_default().to_string(),
    })
}

/// The start of every notification `origin` sends (see [`announce`]).
fn origin_prefix(origin: &str) -> String {
    format!("{{\"o\":\"{origin}\"")
}

/// Announces a transaction's changes (rows, and revocations for the other
/// replicas' active caches) to the other replicas, inside the transaction:
/// PostgreSQL delivers the NOTIFY only if it commits, and in commit order.
fn announce(
    tx: &mut postgres::Transaction<'_>,
    origin: &str,
    changes: &Changes,
) -> Result<(), postgres::Error> {
    let body = json!({
        "c": changes.rows.iter().map(change_json).collect::<Vec<_>>(),
        "inv": changes.revoked,
    })
    .to_string();
    let payload = if body.len() + origin.len() + 16 <= MAX_NOTIFY {
        format!("{},{}", origin_prefix(origin), &body[1..])
    } else {
        let id: i64 = tx
            .query_one(
                "INSERT INTO hub_changes (body) VALUES ($1) RETURNING id",
                &[&body],
            )?
            .get(0);
        format!("{},\"ref\":{id}}}", origin_prefix(origin))
    };
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
    Ok(())
}

/// The change feed's listener: one connection doing LISTEN, publishing
/// other replicas' changes to this process's feed, reconnecting when the
/// connection drops (changes announced meanwhile are missed; the gateways'
/// reconcile finds their jobs), pruning old stored batches.
///
/// It also keeps the active cache honest (`crate::active_cache`): every
/// [`LISTENER_PING`] it NOTIFYs its own sync channel; notifications arrive
/// in commit order, so when ping *n* comes back every change committed
/// before it was sent has been applied, and the cache may serve answers
/// for a lease from that instant. Losing the connection drops the cache
/// until the first ping after reconnecting.
fn listen(config: postgres::Config, origin: String, feed: ChangeFeed, stop: Arc<AtomicBool>) {
    let mut config = config;
    config.application_name(LISTENER_APPLICATION);
    let sync_channel = format!("panorama_hub_sync_{}", origin.replace('-', ""));
    let mut backoff = Duration::from_millis(100);
    let mut last_prune = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut client = match config.connect(NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "change feed: cannot connect to PostgreSQL; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {sync_channel}")) {
            tracing::warn!(error = %e, "change feed: LISTEN failed; retrying");
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        let mut pings = PingLedger::default();
        let outcome = serve_notifications(
            &mut client,
            &origin,
            &feed,
            &stop,
            &sync_channel,
            &mut pings,
            &mut last_prune,
        );
        // Whatever ended the connection, changes may now be missed.
        feed.active_cache().feed_lost();
        if let Err(e) = outcome {
            let error = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            tracing::warn!(%error, "change feed: the listening connection failed; cached revocation answers dropped; reconnecting");
        }
    }
}

/// `application_name` of the listening connection (operators can find it
/// in `pg_stat_activity`).
pub const LISTENER_APPLICATION: &str = "panorama-hub-listener";

/// Pings sent and not yet back: sequence number → instant sent.
#[derive(Default)]
struct PingLedger {
    next: u64,
    sent: std::collections::VecDeque<(u64, Instant)>,
    last_sent: Option<Instant>,
}

impl PingLedger {
    fn due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= LISTENER_PING)
    }

    fn send(&mut self, now: Instant) -> u64 {
        self.next += 1;
        self.sent.push_back((self.next, now));
        // A ping lost for good (it cannot be, short of a bug) must not grow
        // the ledger without bound.
        if self.sent.len() > 64 {
            self.sent.pop_front();
        }
        self.last_sent = Some(now);
        self.next
    }

    /// Ping `seq` came back: the instant it was sent, if it was ours.
    fn returned(&mut self, seq: u64) -> Option<Instant> {
        let mut at = None;
        while let Some(&(n, t)) = self.sent.front() {
            if n > seq {
                break;
            }
            self.sent.pop_front();
            if n == seq {
                at = Some(t);
            }
        }
        at
    }
}

/// Reads notifications until the connection fails or the store stops.
fn serve_notifications(
    client: &mut postgres::Client,
    origin: &str,
    feed: &ChangeFeed,
    stop: &AtomicBool,
    sync_channel: &str,
    pings: &mut PingLedger,
    last_prune: &mut Instant,
) -> Result<(), postgres::Error> {
    while !stop.load(Ordering::Relaxed) && !client.is_closed() {
        let now = Instant::now();
        if pings.due(now) {
            let seq = pings.send(now);
            client.execute(
                "SELECT pg_notify($1, $2)",
                &[&sync_channel, &seq.to_string()],
            )?;
        }
        let wait = pings
            .last_sent
            .map_or(LISTENER_PING, |t| {
                (t + LISTENER_PING).saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        let mut notes_in: Vec<(bool, String)> = Vec::new();
        {
            let mut notes = client.notifications();
            // Wait for one notification (or until the next ping is due),
            // then take whatever else already arrived, in order.
            let first = notes.timeout_iter(wait).next();
            if let Some(n) = first? {
                notes_in.push((n.channel() == sync_channel, n.payload().to_string()));
                let mut pending = notes.iter();
                while let Some(n) = pending.next()? {
                    notes_in.push((n.channel() == sync_channel, n.payload().to_string()));
                    if notes_in.len() >= 256 {
                        break;
                    }
                }
            }
        }
        for (is_ping, payload) in notes_in {
            if is_ping {
                if let Some(sent) = payload.parse().ok().and_then(|n| pings.returned(n)) {
                    feed.active_cache().feed_synced(sent);
                }
            } else {
                publish_payload(client, origin, feed, &payload);
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            *last_prune = Instant::now();
            let _ = client.execute(
                "DELETE FROM hub_changes WHERE created_at < now() - interval '10 minutes'",
                &[],
            );
        }
    }
    Ok(())
}

fn publish_payload(client: &mut postgres::Client, origin: &str, feed: &ChangeFeed, payload: &str) {
    // This replica's own changes come back too; they were published
    // locally. Told apart by their first bytes, before any parsing.
    if payload.starts_with(&origin_prefix(origin)) {
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        tracing::warn!("change feed: a notification that is not JSON was ignored");
        return;
    };
    if v["o"].as_str() == Some(origin) {
        return;
    }
    let mut body = match v["ref"].as_i64() {
        Some(id) => {
            let stored = client
                .query_opt("SELECT body FROM hub_changes WHERE id = $1", &[&id])
                .ok()
                .flatten()
                .and_then(|r| serde_json::from_str::<Value>(&r.get::<_, String>(0)).ok());
            match stored {
                Some(b) => b,
                None => {
                    tracing::warn!(
                        id,
                        "change feed: a stored change batch is gone; its changes are skipped"
                    );
                    return;
                }
            }
        }
        None => v,
    };
    for inv in body["inv"].as_array().into_iter().flatten() {
        match serde_json::from_value::<Invalidation>(inv.clone()) {
            Ok(inv) => feed.invalidate(&inv),
            // Unknown means a newer replica's kind: forget everything
            // rather than miss a revocation.
            Err(_) => {
                tracing::warn!(
                    "change feed: a revocation of an unknown kind; the active cache is emptied"
                );
                feed.active_cache().clear();
            }
        }
    }
    let Value::Array(changes) = body["c"].take() else {
        tracing::warn!("change feed: a notification without changes was ignored");
        return;
    };
    for c in changes {
        match change_from_json(c) {
            Some(change) => feed.publish(change),
            None => tracing::warn!("change feed: a change of an unknown shape was ignored"),
        }
    }
}

struct PgConn<'a, 'c> {
    tx: &'a mut postgres::Transaction<'c>,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgConn<'_, '_> {
    fn statement(&mut self, sql: &str, table: &str) -> Result<Statement, StoreError> {
        let sql = pg_placeholders(sql);
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let stmt = self.tx.prepare(&sql).map_err(|e| classify(e, table))?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

impl Conn for PgConn<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue], table: &str) -> Result<u64, StoreError> {
        let stmt = self.statement(sql, table)?;
        let binds: Vec<Bind> = params.iter().map(Bind).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
        self.tx
            .execute(&stmt, &refs)
            .map_err(|e| classify(e, table))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        table: &str,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let stmt = self.statement(sql, table)?;
        let binds: Vec<Bind> = params.iter().map(Bind).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
        let rows = self
            .tx
            .query(&stmt, &refs)
            .map_err(|e| classify(e, table))?;
        rows.iter()
            .map(|r| (0..r.len()).map(|i| read_value(r, i)).collect())
            .collect::<Result<_, _>>()
            .map_err(|e| classify(e, table))
    }
}

fn read_value(row: &postgres::Row, i: usize) -> Result<SqlValue, postgres::Error> {
    let ty = row.columns()[i].type_().clone();
    let v = match ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(SqlValue::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|n| SqlValue::Int(n.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|n| SqlValue::Int(n.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(SqlValue::Int),
        _ => row.try_get::<_, Option<String>>(i)?.map(SqlValue::Text),
    };
    Ok(v.unwrap_or(SqlValue::Null))
}

/// `?1` → `$1` outside quoted literals (the engine writes SQLite's style).
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                quoted = !quoted;
                out.push(ch);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(ch),
        }
    }
    out
}

/// Binds a [`SqlValue`] to whatever type PostgreSQL inferred for the
/// parameter (the hub casts values by column type before they get here).
#[derive(Debug)]
struct Bind<'a>(&'a SqlValue);

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self.0, ty) {
            (SqlValue::Null, _) => Ok(IsNull::Yes),
            (SqlValue::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (SqlValue::Int(n), &Type::BOOL) => (*n != 0).to_sql(ty, out),
            (SqlValue::Bool(b), _) => int_to_sql(i64::from(*b), ty, out),
            (SqlValue::Int(n), _) => int_to_sql(*n, ty, out),
            (SqlValue::Text(s), &Type::BOOL) => s.parse::<bool>()?.to_sql(ty, out),
            (SqlValue::Text(s), &Type::INT2 | &Type::INT4 | &Type::INT8) => {
                int_to_sql(s.parse()?, ty, out)
            }
            (SqlValue::Text(s), _) => s.as_str().to_sql(&Type::TEXT, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn int_to_sql(
    n: i64,
    ty: &Type,
    out: &mut BytesMut,
) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    match *ty {
        Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
        Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
        Type::INT8 => n.to_sql(ty, out),
        _ => n.to_string().as_str().to_sql(&Type::TEXT, out),
    }
}

/// Classifies a PostgreSQL error as the store's error.
fn classify(e: postgres::Error, table: &str) -> StoreError {
    let Some(db) = e.as_db_error() else {
        if e.is_closed() {
            return StoreError::Unavailable(e.to_string());
        }
        return StoreError::backend(table, e.to_string());
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        let columns = db
            .detail()
            .and_then(|d| d.strip_prefix("Key ("))
            .and_then(|d| d.split_once(")="))
            .map(|(cols, _)| cols.to_string())
            .unwrap_or_default();
        StoreError::UniqueViolation {
            constraint: db.constraint().unwrap_or_default().to_string(),
            columns,
        }
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        StoreError::ForeignKeyViolation {
            table: db.table().unwrap_or(table).to_string(),
        }
    } else if *code == SqlState::NOT_NULL_VIOLATION {
        StoreError::NotNullViolation {
            column: db.column().unwrap_or_default().to_string(),
        }
    } else if *code == SqlState::CHECK_VIOLATION {
        StoreError::CheckViolation {
            table: db.table().unwrap_or(table).to_string(),
        }
    } else if [
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::LOCK_NOT_AVAILABLE,
    ]
    .contains(code)
    {
        StoreError::Busy
    } else if code.code().starts_with("08") || code.code().starts_with("57P") {
        StoreError::Unavailable(db.message().to_string())
    } else {
        StoreError::backend(table, format!("{} ({})", db.message(), code.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_changes_round_trip_and_carry_their_origin() {
        let mut record = serde_json::Map::new();
        record.insert("id".into(), json!("g1"));
        record.insert("capabilities".into(), json!({"providers": ["claude"]}));
        let change = RowChange {
            table: "team_gateways",
            kind: ChangeKind::Update,
            record: record.clone(),
            old_record: Some(record.clone()),
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
        };
        let body = json!({"c": [change_json(&change)]}).to_string();
        let payload = format!("{},{}", origin_prefix("o-1"), &body[1..]);
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["o"], "o-1");
        assert!(payload.starts_with(&origin_prefix("o-1")));
        assert!(!payload.starts_with(&origin_prefix("o-2")));
        let back = change_from_json(v["c"][0].clone()).unwrap();
        assert_eq!(back.table, "team_gateways");
        assert_eq!(back.kind, ChangeKind::Update);
        assert_eq!(back.record, record);
        assert_eq!(back.old_record, Some(record));
        assert_eq!(back.commit_timestamp, "2026-01-01T00:00:00.000Z");
        let stored: Value =
            serde_json::from_str(&format!("{},\"ref\":42}}", origin_prefix("o-1"))).unwrap();
        assert_eq!(
            (stored["o"].as_str(), stored["ref"].as_i64()),
            (Some("o-1"), Some(42))
        );
        assert!(change_from_json(json!({"t": "team_gateways", "k": "UPDATE"})).is_none());
    }

    #[test]
    fn placeholders_are_rewritten_outside_literals() {
        assert_eq!(
            pg_placeholders("UPDATE t SET a = ?1, b = '?2' WHERE c = ?12"),
            "UPDATE t SET a = $1, b = '?2' WHERE c = $12"
        );
        assert_eq!(pg_placeholders("a ? b"), "a ? b");
    }
}
