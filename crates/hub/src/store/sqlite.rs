//! The embedded SQLite backend: one file in WAL mode, one connection behind
//! a mutex (SQLite has a single writer anyway), every request one
//! transaction run on the blocking pool.

use super::sql::{order_clause, quote_ident, where_clause, Dialect, Params};
use super::{
    hash_token, Conflict, DeleteRequest, InsertRequest, PairingGrant, RefreshError, RefreshGrant,
    SelectRequest, SelectResult, Store, TxFn, TxOps, UpdateRequest,
};
use crate::changes::{ChangeFeed, ChangeKind, Row, RowChange};
use crate::error::ApiError;
use crate::schema::{self, Column, Table};
use crate::values::{format_timestamp, now_timestamp, parse_timestamp, to_json, SqlValue};
use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Value as RValue, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, ToSql, Transaction};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Schema migrations, applied in order; each runs once.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE teams (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL DEFAULT '',
  created_at  TEXT NOT NULL
);
CREATE TABLE team_gateways (
  id                    TEXT PRIMARY KEY,
  team_id               TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  device_name           TEXT,
  status                TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','ready','offline','error')),
  capabilities          TEXT NOT NULL DEFAULT '{}',
  full_control_enabled  INTEGER NOT NULL DEFAULT 0,
  last_seen_at          TEXT,
  ready_at              TEXT,
  vm_id                 TEXT,
  auth_user_id          TEXT UNIQUE,
  revoked_at            TEXT,
  created_at            TEXT NOT NULL,
  updated_at            TEXT NOT NULL
);
CREATE INDEX team_gateways_team_idx ON team_gateways (team_id);
CREATE TABLE gateway_pairing_codes (
  code             TEXT PRIMARY KEY,
  team_id          TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  created_by       TEXT,
  created_at       TEXT NOT NULL,
  expires_at       TEXT NOT NULL,
  used_at          TEXT,
  used_gateway_id  TEXT REFERENCES team_gateways(id) ON DELETE SET NULL
);
CREATE TABLE gateway_jobs (
  id                     TEXT PRIMARY KEY,
  team_id                TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id             TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  job_type               TEXT NOT NULL DEFAULT 'diagnostic',
  status                 TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued','running','completed','failed','cancelled')),
  payload                TEXT NOT NULL DEFAULT '{}',
  result                 TEXT,
  error                  TEXT,
  debug                  TEXT,
  requested_via          TEXT,
  requested_by_user_id   TEXT,
  requested_by_agent_id  TEXT,
  idempotency_key        TEXT,
  attempt                INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 0),
  retry_of_job_id        TEXT REFERENCES gateway_jobs(id) ON DELETE SET NULL,
  created_at             TEXT NOT NULL,
  started_at             TEXT,
  completed_at           TEXT,
  updated_at             TEXT NOT NULL
);
CREATE INDEX gateway_jobs_ingress_idx ON gateway_jobs (gateway_id, status, created_at) WHERE status = 'queued';
CREATE INDEX gateway_jobs_team_idx ON gateway_jobs (team_id, created_at);
CREATE INDEX gateway_jobs_idem_idx ON gateway_jobs (team_id, idempotency_key, attempt) WHERE idempotency_key IS NOT NULL;
CREATE TABLE gateway_events (
  id          TEXT PRIMARY KEY,
  gateway_id  TEXT NOT NULL REFERENCES team_gateways(id) ON DELETE CASCADE,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  provider    TEXT,
  level       TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('debug','info','warn','error')),
  code        TEXT,
  message     TEXT NOT NULL,
  details     TEXT NOT NULL DEFAULT '{}',
  created_at  TEXT NOT NULL
);
CREATE INDEX gateway_events_gateway_idx ON gateway_events (gateway_id, created_at DESC);
CREATE TABLE subagents (
  id              TEXT PRIMARY KEY,
  team_id         TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id      TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  owner_agent_id  TEXT,
  created_by      TEXT,
  subagent_type   TEXT NOT NULL,
  status          TEXT NOT NULL DEFAULT 'idle' CHECK (status IN ('idle','queued','running','completed','failed','cancelled')),
  config          TEXT NOT NULL DEFAULT '{}',
  input           TEXT,
  metadata        TEXT NOT NULL DEFAULT '{}',
  output          TEXT,
  error           TEXT,
  started_at      TEXT,
  completed_at    TEXT,
  created_at      TEXT NOT NULL,
  updated_at      TEXT NOT NULL
);
CREATE INDEX subagents_gateway_idx ON subagents (gateway_id);
CREATE TABLE subagent_runs (
  id            TEXT PRIMARY KEY,
  subagent_id   TEXT NOT NULL REFERENCES subagents(id) ON DELETE CASCADE,
  team_id       TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id    TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  run_sequence  INTEGER NOT NULL CHECK (run_sequence >= 1),
  status        TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('pending_admission','waiting_budget','running','cancelling','completed','failed','cancelled')),
  prompt        TEXT,
  output        TEXT,
  error         TEXT,
  metadata      TEXT NOT NULL DEFAULT '{}',
  started_at    TEXT,
  completed_at  TEXT,
  created_at    TEXT NOT NULL,
  updated_at    TEXT NOT NULL,
  CONSTRAINT subagent_runs_sequence_uniq UNIQUE (subagent_id, run_sequence)
);
CREATE UNIQUE INDEX subagent_runs_one_running ON subagent_runs (subagent_id) WHERE status = 'running';
CREATE TABLE subagent_run_events (
  id           TEXT PRIMARY KEY,
  run_id       TEXT NOT NULL REFERENCES subagent_runs(id) ON DELETE CASCADE,
  subagent_id  TEXT NOT NULL REFERENCES subagents(id) ON DELETE CASCADE,
  team_id      TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id   TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  sequence     INTEGER NOT NULL CHECK (sequence >= 0),
  event_type   TEXT NOT NULL CHECK (event_type IN ('message','system','tool_call','tool_result','run_started','run_progress','cancellation_requested','cancellation_acknowledged','run_completed','run_failed','run_cancelled')),
  payload      TEXT NOT NULL DEFAULT '{}',
  created_at   TEXT NOT NULL,
  CONSTRAINT subagent_run_events_sequence_uniq UNIQUE (run_id, sequence)
);
CREATE TABLE team_resources (
  id                TEXT PRIMARY KEY,
  team_id           TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  resource_type     TEXT NOT NULL,
  resource_id       TEXT NOT NULL DEFAULT '',
  title             TEXT NOT NULL DEFAULT '',
  scope             TEXT NOT NULL DEFAULT 'team' CHECK (scope IN ('team','agent')),
  owner_agent_id    TEXT,
  max_access_level  TEXT NOT NULL DEFAULT 'editor',
  metadata          TEXT,
  created_at        TEXT NOT NULL,
  updated_at        TEXT NOT NULL
);
CREATE INDEX team_resources_team_type_idx ON team_resources (team_id, resource_type);
CREATE TABLE subagent_run_sequence_counters (
  subagent_id    TEXT PRIMARY KEY REFERENCES subagents(id) ON DELETE CASCADE,
  last_sequence  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE auth_users (
  id          TEXT PRIMARY KEY,
  gateway_id  TEXT NOT NULL REFERENCES team_gateways(id) ON DELETE CASCADE,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL
);
CREATE TABLE auth_sessions (
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES auth_users(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE TABLE auth_refresh_tokens (
  token_hash  TEXT PRIMARY KEY,
  session_id  TEXT NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
  parent_hash TEXT,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX auth_refresh_tokens_session_idx ON auth_refresh_tokens (session_id);
"#,
    r#"
CREATE TABLE team_secrets (
  id          TEXT PRIMARY KEY,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
  value       TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  CONSTRAINT team_secrets_team_name_uniq UNIQUE (team_id, name)
);
"#,
    // Version 3: people (issue 13) — accounts, their sessions, team membership and invitations.
    r#"
CREATE TABLE user_accounts (
  id               TEXT PRIMARY KEY,
  email            TEXT NOT NULL UNIQUE,
  password_hash    TEXT NOT NULL,
  user_metadata    TEXT NOT NULL DEFAULT '{}',
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  last_sign_in_at  TEXT
);
CREATE TABLE user_sessions (
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES user_accounts(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX user_sessions_user_idx ON user_sessions (user_id);
CREATE TABLE user_refresh_tokens (
  token_hash  TEXT PRIMARY KEY,
  session_id  TEXT NOT NULL REFERENCES user_sessions(id) ON DELETE CASCADE,
  parent_hash TEXT,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX user_refresh_tokens_session_idx ON user_refresh_tokens (session_id);
CREATE TABLE team_members (
  id          TEXT PRIMARY KEY,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  user_id     TEXT NOT NULL REFERENCES user_accounts(id) ON DELETE CASCADE,
  email       TEXT NOT NULL DEFAULT '',
  role        TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner','admin','member','viewer')),
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  CONSTRAINT team_members_team_user_uniq UNIQUE (team_id, user_id)
);
CREATE INDEX team_members_user_idx ON team_members (user_id, team_id);
CREATE TABLE team_invitations (
  id           TEXT PRIMARY KEY,
  team_id      TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  email        TEXT NOT NULL,
  role         TEXT NOT NULL CHECK (role IN ('owner','admin','member','viewer')),
  code_hash    TEXT NOT NULL UNIQUE,
  created_by   TEXT,
  created_at   TEXT NOT NULL,
  expires_at   TEXT NOT NULL,
  accepted_at  TEXT,
  accepted_by  TEXT
);
"#,
];

/// `chmod 600` the database file and its WAL companions that exist.
fn secure_db_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let owner_only = || std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(path, owner_only())?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let companion = std::path::PathBuf::from(companion);
        if companion.exists() {
            std::fs::set_permissions(&companion, owner_only())?;
        }
    }
    Ok(())
}

mod people;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the hub database {path}: {source}. Check that the directory exists and is writable, or pass --db PATH")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot migrate the hub database: {0}")]
    Migrate(rusqlite::Error),
    #[error("cannot make the hub database {path} owner-only (0600): {source}. Check that this user owns it")]
    Permissions {
        path: String,
        source: std::io::Error,
    },
}

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    feed: ChangeFeed,
}

impl SqliteStore {
    pub fn open(path: &Path, feed: ChangeFeed) -> Result<SqliteStore, OpenError> {
        let conn = Connection::open(path).map_err(|source| OpenError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // Owner-only before WAL mode creates its files: SQLite gives the
        // -wal and -shm files the database file's mode. The database holds
        // team secrets and token hashes, wherever --db puts it.
        secure_db_files(path).map_err(|e| OpenError::Permissions {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::init(conn, feed)
    }

    pub fn open_in_memory(feed: ChangeFeed) -> Result<SqliteStore, OpenError> {
        let conn = Connection::open_in_memory().map_err(|source| OpenError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::init(conn, feed)
    }

    fn init(mut conn: Connection, feed: ChangeFeed) -> Result<SqliteStore, OpenError> {
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA case_sensitive_like = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(OpenError::Migrate)?;
        migrate(&mut conn).map_err(OpenError::Migrate)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            feed,
        })
    }

    /// Runs `f` in one IMMEDIATE transaction on the blocking pool; commits
    /// when it returns Ok, then publishes the changes it collected.
    async fn tx<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut Vec<RowChange>) -> Result<T, ApiError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let (out, changes) = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| map_err(e, "transaction"))?;
            let mut changes = Vec::new();
            let out = f(&tx, &mut changes)?;
            tx.commit().map_err(|e| map_err(e, "commit"))?;
            Ok::<_, ApiError>((out, changes))
        })
        .await
        .map_err(|e| ApiError::internal(format!("storage task failed: {e}")))??;
        for c in changes {
            self.feed.publish(c);
        }
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS hub_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")?;
    let applied: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM hub_migrations",
        [],
        |r| r.get(0),
    )?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO hub_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![version, now_timestamp()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

struct Bind<'a>(&'a SqlValue);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            SqlValue::Null => ToSqlOutput::Owned(RValue::Null),
            SqlValue::Bool(b) => ToSqlOutput::Owned(RValue::Integer(*b as i64)),
            SqlValue::Int(n) => ToSqlOutput::Owned(RValue::Integer(*n)),
            SqlValue::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn binds(values: &[SqlValue]) -> Vec<Bind<'_>> {
    values.iter().map(Bind).collect()
}

/// Maps a SQLite error to the PostgreSQL error PostgREST would return.
fn map_err(e: rusqlite::Error, table: &str) -> ApiError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        let msg = msg.clone().unwrap_or_default();
        if f.code == ErrorCode::ConstraintViolation {
            let cols = msg
                .split_once(": ")
                .map(|(_, c)| c.to_string())
                .unwrap_or_default();
            return match f.extended_code {
                // SQLITE_CONSTRAINT_UNIQUE / SQLITE_CONSTRAINT_PRIMARYKEY
                2067 | 1555 => ApiError::pg(
                    "23505",
                    format!(
                        "duplicate key value violates unique constraint \"{}\"",
                        constraint_name(table, &cols)
                    ),
                )
                .details(format!("Key ({}) already exists.", strip_table(&cols))),
                787 => ApiError::pg(
                    "23503",
                    format!(
                        "insert or update on table \"{table}\" violates foreign key constraint"
                    ),
                )
                .details("A referenced row (team, gateway, subagent or run) does not exist."),
                1299 => ApiError::pg(
                    "23502",
                    format!("null value violates not-null constraint ({cols})"),
                ),
                275 => ApiError::pg(
                    "23514",
                    format!("new row for relation \"{table}\" violates check constraint"),
                ),
                _ => ApiError::pg("23000", msg),
            };
        }
        if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) {
            return ApiError::new(503, "53300", "the database is busy; retry the request")
                .hint("Another process holds the hub database; retry in a moment.");
        }
    }
    ApiError::internal(format!("storage error on {table}: {e}"))
}

fn strip_table(cols: &str) -> String {
    cols.split(", ")
        .map(|c| c.rsplit('.').next().unwrap_or(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PostgreSQL constraint name for the columns SQLite reports.
fn constraint_name(table: &str, cols: &str) -> String {
    match strip_table(cols).as_str() {
        "subagent_id, run_sequence" => "subagent_runs_sequence_uniq".into(),
        "run_id, sequence" => "subagent_run_events_sequence_uniq".into(),
        "team_id, name" => "team_secrets_team_name_uniq".into(),
        "subagent_id" if table == "subagent_runs" => "subagent_runs_one_running".into(),
        "id" | "code" => format!("{table}_pkey"),
        other => format!("{table}_{}_key", other.replace(", ", "_")),
    }
}

/// The columns every generic read returns: never a write-only one.
fn column_list(table: &Table) -> String {
    table
        .readable_columns()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_row(table: &Table, r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let mut row = Row::new();
    for (i, col) in table.readable_columns().enumerate() {
        let v = match r.get_ref(i)? {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(n) => SqlValue::Int(n),
            ValueRef::Real(f) => SqlValue::Text(f.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                SqlValue::Text(String::from_utf8_lossy(t).into_owned())
            }
        };
        row.insert(col.name.to_string(), to_json(col, v));
    }
    Ok(row)
}

fn query_rows(
    tx: &Transaction<'_>,
    table: &Table,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<Row>, ApiError> {
    let mut stmt = tx.prepare_cached(sql).map_err(|e| map_err(e, table.name))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(binds(params)), |r| {
            read_row(table, r)
        })
        .map_err(|e| map_err(e, table.name))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| map_err(e, table.name))?;
    Ok(rows)
}

fn select_where(
    tx: &Transaction<'_>,
    table: &Table,
    filters: &[crate::postgrest::Filter],
) -> Result<Vec<Row>, ApiError> {
    let mut p = Params::new(Dialect::Sqlite);
    let w = where_clause(table, filters, &mut p)?;
    let sql = format!(
        "SELECT {} FROM {} WHERE {w} ORDER BY rowid",
        column_list(table),
        quote_ident(table.name)
    );
    query_rows(tx, table, &sql, &p.values)
}

fn select_by_pks(
    tx: &Transaction<'_>,
    table: &Table,
    pks: &[String],
) -> Result<Vec<Row>, ApiError> {
    let mut out = Vec::with_capacity(pks.len());
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        column_list(table),
        quote_ident(table.name),
        quote_ident(table.primary_key)
    );
    for pk in pks {
        out.extend(query_rows(tx, table, &sql, &[SqlValue::Text(pk.clone())])?);
    }
    Ok(out)
}

fn pk_of(table: &Table, row: &Row) -> String {
    row.get(table.primary_key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn change(
    table: &'static Table,
    kind: ChangeKind,
    record: Row,
    old_record: Option<Row>,
) -> RowChange {
    RowChange {
        table: table.name,
        kind,
        record,
        old_record,
        commit_timestamp: now_timestamp(),
    }
}

/// Inserts one row (no conflict handling) and returns it as stored.
fn insert_row(
    tx: &Transaction<'_>,
    table: &'static Table,
    values: &[(&'static Column, SqlValue)],
    changes: &mut Vec<RowChange>,
) -> Result<Row, ApiError> {
    let mut p = Params::new(Dialect::Sqlite);
    let cols = values
        .iter()
        .map(|(c, _)| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let phs = values
        .iter()
        .map(|(_, v)| p.push(v.clone()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {} ({cols}) VALUES ({phs})",
        quote_ident(table.name)
    );
    tx.execute(&sql, rusqlite::params_from_iter(binds(&p.values)))
        .map_err(|e| map_err(e, table.name))?;
    let pk = values
        .iter()
        .find(|(c, _)| c.name == table.primary_key)
        .and_then(|(_, v)| match v {
            SqlValue::Text(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let new = select_by_pks(tx, table, &[pk])?.remove(0);
    changes.push(change(table, ChangeKind::Insert, new.clone(), None));
    Ok(new)
}

/// Updates the rows `filters` match, each checked by `guard` first;
/// returns them as stored.
fn update_rows(
    tx: &Transaction<'_>,
    table: &'static Table,
    filters: &[crate::postgrest::Filter],
    set: &[(&'static Column, SqlValue)],
    guard: Option<&super::UpdateGuard>,
    expect_single: bool,
    changes: &mut Vec<RowChange>,
) -> Result<Vec<Row>, ApiError> {
    let old_rows = select_where(tx, table, filters)?;
    if old_rows.is_empty() || set.is_empty() {
        if expect_single && old_rows.len() != 1 {
            return Err(ApiError::not_single(old_rows.len()));
        }
        return Ok(old_rows);
    }
    if let Some(guard) = guard {
        for old in &old_rows {
            let mut new = old.clone();
            for (col, v) in set {
                new.insert(col.name.to_string(), to_json(col, v.clone()));
            }
            guard(old, &new)?;
        }
    }
    let pks: Vec<String> = old_rows.iter().map(|r| pk_of(table, r)).collect();
    let mut p = Params::new(Dialect::Sqlite);
    let sets = set
        .iter()
        .map(|(c, v)| format!("{} = {}", quote_ident(c.name), p.push(v.clone())))
        .collect::<Vec<_>>()
        .join(", ");
    let first_pk = p.values.len() + 1;
    let sql = format!(
        "UPDATE {} SET {sets} WHERE {} = {}",
        quote_ident(table.name),
        quote_ident(table.primary_key),
        Dialect::Sqlite.placeholder(first_pk)
    );
    let mut stmt = tx
        .prepare_cached(&sql)
        .map_err(|e| map_err(e, table.name))?;
    for pk in &pks {
        let mut values = p.values.clone();
        values.push(SqlValue::Text(pk.clone()));
        stmt.execute(rusqlite::params_from_iter(binds(&values)))
            .map_err(|e| map_err(e, table.name))?;
    }
    drop(stmt);
    let new_rows = select_by_pks(tx, table, &pks)?;
    if expect_single && new_rows.len() != 1 {
        return Err(ApiError::not_single(new_rows.len()));
    }
    for (new, old) in new_rows.iter().zip(old_rows) {
        changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
    }
    Ok(new_rows)
}

/// `allocate_subagent_run_sequence` inside a transaction: max(existing,
/// counter) + 1, remembered in the counter.
fn allocate_sequence(tx: &Transaction<'_>, subagent_id: &str) -> Result<i64, ApiError> {
    let max: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(run_sequence), 0) FROM subagent_runs WHERE subagent_id = ?1",
            [subagent_id],
            |r| r.get(0),
        )
        .map_err(|e| map_err(e, "subagent_runs"))?;
    tx.query_row(
        "INSERT INTO subagent_run_sequence_counters AS c (subagent_id, last_sequence) VALUES (?1, ?2 + 1) \
         ON CONFLICT (subagent_id) DO UPDATE SET last_sequence = MAX(c.last_sequence, ?2) + 1 \
         RETURNING last_sequence",
        rusqlite::params![subagent_id, max],
        |r| r.get(0),
    )
    .map_err(|e| map_err(e, "subagent_run_sequence_counters"))
}

/// [`TxOps`] over one open SQLite transaction; its row changes are
/// published when the transaction commits.
struct SqliteTx<'a, 'c> {
    tx: &'a Transaction<'c>,
    changes: &'a mut Vec<RowChange>,
}

impl TxOps for SqliteTx<'_, '_> {
    fn select(
        &mut self,
        table: &'static Table,
        filters: &[crate::postgrest::Filter],
    ) -> Result<Vec<Row>, ApiError> {
        select_where(self.tx, table, filters)
    }

    fn insert(
        &mut self,
        table: &'static Table,
        values: &[(&'static Column, SqlValue)],
    ) -> Result<Row, ApiError> {
        insert_row(self.tx, table, values, self.changes)
    }

    fn update(
        &mut self,
        table: &'static Table,
        filters: &[crate::postgrest::Filter],
        set: &[(&'static Column, SqlValue)],
    ) -> Result<Vec<Row>, ApiError> {
        update_rows(self.tx, table, filters, set, None, false, self.changes)
    }

    fn allocate_run_sequence(&mut self, subagent_id: &str) -> Result<i64, ApiError> {
        allocate_sequence(self.tx, subagent_id)
    }

    fn secret_values(
        &mut self,
        team_id: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, ApiError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name, value FROM team_secrets WHERE team_id = ?1 AND name = ?2")
            .map_err(|e| map_err(e, "team_secrets"))?;
        let mut out = Vec::new();
        for name in names {
            let found = stmt
                .query_row(rusqlite::params![team_id, name], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(|e| map_err(e, "team_secrets"))?;
            out.extend(found);
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn select(&self, req: SelectRequest) -> Result<SelectResult, ApiError> {
        self.tx(move |tx, _| {
            let table = req.table;
            let mut p = Params::new(Dialect::Sqlite);
            let w = where_clause(table, &req.filters, &mut p)?;
            let order = order_clause(table, &req.order)?;
            let total = if req.count {
                let sql = format!("SELECT COUNT(*) FROM {} WHERE {w}", quote_ident(table.name));
                let n: i64 = tx
                    .query_row(&sql, rusqlite::params_from_iter(binds(&p.values)), |r| {
                        r.get(0)
                    })
                    .map_err(|e| map_err(e, table.name))?;
                Some(n as u64)
            } else {
                None
            };
            let mut sql = format!(
                "SELECT {} FROM {} WHERE {w}{order}",
                column_list(table),
                quote_ident(table.name)
            );
            let limit = req.limit.map(|l| l as i64).unwrap_or(-1);
            sql.push_str(&format!(
                " LIMIT {limit} OFFSET {}",
                req.offset.unwrap_or(0)
            ));
            let rows = query_rows(tx, table, &sql, &p.values)?;
            Ok(SelectResult { rows, total })
        })
        .await
    }

    async fn insert(&self, req: InsertRequest) -> Result<Vec<Row>, ApiError> {
        self.tx(move |tx, changes| {
            let table = req.table;
            let mut out = Vec::new();
            for values in &req.rows {
                let conflict_cols = match &req.conflict {
                    Conflict::Fail => None,
                    Conflict::Merge { on: c, .. } | Conflict::Ignore(c) => Some(c),
                };
                let existing = match conflict_cols {
                    Some(cols) => {
                        let filters = cols
                            .iter()
                            .map(|c| {
                                let v = values
                                    .iter()
                                    .find(|(col, _)| col.name == c)
                                    .map(|(_, v)| v.clone())
                                    .ok_or_else(|| ApiError::unknown_column(table.name, c))?;
                                Ok((c.clone(), v))
                            })
                            .collect::<Result<Vec<_>, ApiError>>()?;
                        let mut p = Params::new(Dialect::Sqlite);
                        let w = filters
                            .iter()
                            .map(|(c, v)| format!("{} = {}", quote_ident(c), p.push(v.clone())))
                            .collect::<Vec<_>>()
                            .join(" AND ");
                        let sql = format!(
                            "SELECT {} FROM {} WHERE {w}",
                            column_list(table),
                            quote_ident(table.name)
                        );
                        query_rows(tx, table, &sql, &p.values)?.into_iter().next()
                    }
                    None => None,
                };
                match (existing, &req.conflict) {
                    (Some(_), Conflict::Ignore(_)) => continue,
                    (Some(old), Conflict::Merge { set, .. }) => {
                        // Merge: the values the request named overwrite the
                        // row; the primary key and creation time stay, and
                        // so does every column the request left out.
                        let mut p = Params::new(Dialect::Sqlite);
                        let sets = values
                            .iter()
                            .filter(|(c, _)| c.name != table.primary_key && c.name != "created_at")
                            .filter(|(c, _)| set.iter().any(|s| s == c.name))
                            .map(|(c, v)| {
                                format!("{} = {}", quote_ident(c.name), p.push(v.clone()))
                            })
                            .collect::<Vec<_>>()
                            .join(", ");
                        let pk = pk_of(table, &old);
                        if sets.is_empty() {
                            // Nothing but the key was sent: PostgreSQL's
                            // `DO UPDATE` of no column returns the row as is.
                            out.push(old);
                            continue;
                        }
                        let ph = p.push(SqlValue::Text(pk.clone()));
                        let sql = format!(
                            "UPDATE {} SET {sets} WHERE {} = {ph}",
                            quote_ident(table.name),
                            quote_ident(table.primary_key)
                        );
                        tx.execute(&sql, rusqlite::params_from_iter(binds(&p.values)))
                            .map_err(|e| map_err(e, table.name))?;
                        let new = select_by_pks(tx, table, &[pk])?.remove(0);
                        changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
                        out.push(new);
                    }
                    _ => out.push(insert_row(tx, table, values, changes)?),
                }
            }
            if req.expect_single && out.len() != 1 {
                return Err(ApiError::not_single(out.len()));
            }
            Ok(out)
        })
        .await
    }

    async fn update(&self, req: UpdateRequest) -> Result<Vec<Row>, ApiError> {
        self.tx(move |tx, changes| {
            update_rows(
                tx,
                req.table,
                &req.filters,
                &req.set,
                req.guard.as_ref(),
                req.expect_single,
                changes,
            )
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<Vec<Row>, ApiError> {
        self.tx(move |tx, changes| {
            let table = req.table;
            let rows = select_where(tx, table, &req.filters)?;
            if req.expect_single && rows.len() != 1 {
                return Err(ApiError::not_single(rows.len()));
            }
            let sql = format!(
                "DELETE FROM {} WHERE {} = ?1",
                quote_ident(table.name),
                quote_ident(table.primary_key)
            );
            for row in &rows {
                tx.execute(&sql, [pk_of(table, row)])
                    .map_err(|e| map_err(e, table.name))?;
                changes.push(change(
                    table,
                    ChangeKind::Delete,
                    row.clone(),
                    Some(row.clone()),
                ));
            }
            Ok(rows)
        })
        .await
    }

    async fn allocate_run_sequence(&self, subagent_id: &str) -> Result<i64, ApiError> {
        let subagent_id = subagent_id.to_string();
        self.tx(move |tx, _| allocate_sequence(tx, &subagent_id))
            .await
    }

    async fn atomic(&self, f: TxFn) -> Result<Value, ApiError> {
        self.tx(move |tx, changes| f(&mut SqliteTx { tx, changes }))
            .await
    }

    async fn pair_gateway(
        &self,
        code: &str,
        device_name: Option<&str>,
        refresh_token_hash: &str,
    ) -> Result<PairingGrant, ApiError> {
        let code = code.trim().to_string();
        let device_name = device_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let refresh_token_hash = refresh_token_hash.to_string();
        self.tx(move |tx, changes| {
            let found: Option<(String, String, String, Option<String>)> = tx
                .query_row(
                    "SELECT code, team_id, expires_at, used_at FROM gateway_pairing_codes WHERE upper(code) = upper(?1)",
                    [&code],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(|e| map_err(e, "gateway_pairing_codes"))?;
            let now = now_timestamp();
            let valid = found.as_ref().filter(|(_, _, expires, used)| {
                used.is_none() && parse_timestamp(expires).is_some_and(|e| e > chrono::Utc::now())
            });
            let Some((stored_code, team_id, _, _)) = valid.cloned() else {
                return Err(ApiError::pg("P0001", "Invalid or expired pairing code"));
            };
            let gateway_id = uuid::Uuid::new_v4().to_string();
            let user_id = uuid::Uuid::new_v4().to_string();
            let session_id = uuid::Uuid::new_v4().to_string();
            let map = |e| map_err(e, "team_gateways");
            tx.execute(
                "INSERT INTO team_gateways (id, team_id, device_name, status, capabilities, full_control_enabled, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, 'pending', '{}', 0, ?4, ?4)",
                rusqlite::params![gateway_id, team_id, device_name, now],
            )
            .map_err(map)?;
            tx.execute(
                "UPDATE gateway_pairing_codes SET used_at = ?1, used_gateway_id = ?2 WHERE code = ?3",
                rusqlite::params![now, gateway_id, stored_code],
            )
            .map_err(map)?;
            tx.execute(
                "INSERT INTO auth_users (id, gateway_id, team_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![user_id, gateway_id, team_id, now],
            )
            .map_err(map)?;
            tx.execute(
                "UPDATE team_gateways SET auth_user_id = ?1 WHERE id = ?2",
                rusqlite::params![user_id, gateway_id],
            )
            .map_err(map)?;
            tx.execute(
                "INSERT INTO auth_sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![session_id, user_id, now],
            )
            .map_err(map)?;
            tx.execute(
                "INSERT INTO auth_refresh_tokens (token_hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![refresh_token_hash, session_id, now],
            )
            .map_err(map)?;
            let row = select_by_pks(tx, &schema::TEAM_GATEWAYS, std::slice::from_ref(&gateway_id))?.remove(0);
            changes.push(change(&schema::TEAM_GATEWAYS, ChangeKind::Insert, row, None));
            Ok(PairingGrant {
                gateway_id,
                team_id,
                user_id,
                session_id,
            })
        })
        .await
    }

    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<RefreshGrant, RefreshError> {
        let old_hash = old_hash.to_string();
        let new_hash = new_hash.to_string();
        let outcome = self
            .tx(move |tx, _| {
                rotate_in_family(tx, &GATEWAY_TOKENS, &old_hash, &new_hash, reuse_interval_secs, |tx, session_id| {
                    let identity: Option<(String, String, String, Option<String>, Option<String>)> = tx
                        .query_row(
                            "SELECT u.id, u.gateway_id, u.team_id, s.revoked_at, g.revoked_at FROM auth_sessions s \
                             JOIN auth_users u ON u.id = s.user_id JOIN team_gateways g ON g.id = u.gateway_id \
                             WHERE s.id = ?1",
                            [session_id],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                        )
                        .optional()
                        .map_err(|e| map_err(e, "auth_sessions"))?;
                    Ok(match identity {
                        Some((user_id, gateway_id, team_id, None, None)) => Some(RefreshGrant {
                            user_id,
                            session_id: session_id.to_string(),
                            gateway_id,
                            team_id,
                        }),
                        _ => None,
                    })
                })
            })
            .await;
        match outcome {
            Ok(r) => r,
            Err(_) => Err(RefreshError::SessionGone),
        }
    }

    async fn session_active(&self, session_id: &str) -> Result<bool, ApiError> {
        let session_id = session_id.to_string();
        self.tx(move |tx, _| {
            tx.query_row(
                "SELECT COUNT(*) FROM auth_sessions s JOIN auth_users u ON u.id = s.user_id \
                 JOIN team_gateways g ON g.id = u.gateway_id \
                 WHERE s.id = ?1 AND s.revoked_at IS NULL AND g.revoked_at IS NULL",
                [&session_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| map_err(e, "auth_sessions"))
        })
        .await
    }

    async fn gateway_active(&self, gateway_id: &str, team_id: &str) -> Result<bool, ApiError> {
        let (gateway_id, team_id) = (gateway_id.to_string(), team_id.to_string());
        self.tx(move |tx, _| {
            tx.query_row(
                "SELECT COUNT(*) FROM team_gateways WHERE id = ?1 AND team_id = ?2 AND revoked_at IS NULL",
                [&gateway_id, &team_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| map_err(e, "team_gateways"))
        })
        .await
    }

    async fn record_heartbeat(
        &self,
        gateway_id: &str,
        team_id: &str,
        status: &str,
        capabilities: &Value,
        device_name: Option<&str>,
    ) -> Result<(), ApiError> {
        if !schema::GATEWAY_STATUSES.contains(&status) {
            return Err(ApiError::pg("22023", format!("invalid status {status}")));
        }
        if !capabilities.is_object() {
            return Err(ApiError::pg("22023", "capabilities must be an object"));
        }
        let (gateway_id, team_id, status) = (
            gateway_id.to_string(),
            team_id.to_string(),
            status.to_string(),
        );
        let capabilities = capabilities.to_string();
        let device_name = device_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        self.tx(move |tx, changes| {
            let table = &schema::TEAM_GATEWAYS;
            let filters = vec![
                crate::postgrest::Filter::eq("id", &gateway_id),
                crate::postgrest::Filter::eq("team_id", &team_id),
                crate::postgrest::Filter::Cond {
                    column: "revoked_at".into(),
                    op: crate::postgrest::Op::Is,
                    operand: crate::postgrest::Operand::Is(crate::postgrest::IsValue::Null),
                },
            ];
            let Some(old) = select_where(tx, table, &filters)?.into_iter().next() else {
                return Err(ApiError::pg("42501", "gateway not found or revoked"));
            };
            let now = now_timestamp();
            let was_ready = old.get("status").and_then(Value::as_str) == Some("ready")
                && !old.get("ready_at").is_none_or(Value::is_null);
            let ready_at = if status == "ready" && !was_ready {
                Some(now.clone())
            } else {
                old.get("ready_at").and_then(Value::as_str).map(str::to_string)
            };
            tx.execute(
                "UPDATE team_gateways SET status = ?1, capabilities = ?2, device_name = COALESCE(?3, device_name), \
                 last_seen_at = ?4, ready_at = ?5, updated_at = ?4 WHERE id = ?6",
                rusqlite::params![status, capabilities, device_name, now, ready_at, gateway_id],
            )
            .map_err(|e| map_err(e, table.name))?;
            let new = select_by_pks(tx, table, std::slice::from_ref(&gateway_id))?.remove(0);
            changes.push(change(table, ChangeKind::Update, new, Some(old)));
            Ok(())
        })
        .await
    }
}

/// The tables of one kind of session: its refresh tokens and the sessions
/// they belong to.
struct TokenFamily {
    tokens: &'static str,
    sessions: &'static str,
}

const GATEWAY_TOKENS: TokenFamily = TokenFamily {
    tokens: "auth_refresh_tokens",
    sessions: "auth_sessions",
};

/// Refresh-token rotation with reuse detection, shared by gateway and user
/// sessions: `old_hash` is revoked and `new_hash` becomes the session's
/// active token. `identity` answers who the session stands for, or `None`
/// when the session (or what it belongs to) is gone. A token revoked more
/// than `reuse_interval_secs` ago is a replay: the whole session is
/// revoked.
fn rotate_in_family<T>(
    tx: &Transaction<'_>,
    family: &TokenFamily,
    old_hash: &str,
    new_hash: &str,
    reuse_interval_secs: i64,
    identity: impl FnOnce(&Transaction<'_>, &str) -> Result<Option<T>, ApiError>,
) -> Result<Result<T, RefreshError>, ApiError> {
    let map = |e| map_err(e, family.tokens);
    let found: Option<(String, Option<String>)> = tx
        .query_row(
            &format!(
                "SELECT session_id, revoked_at FROM {} WHERE token_hash = ?1",
                family.tokens
            ),
            [old_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map)?;
    let Some((session_id, revoked_at)) = found else {
        return Ok(Err(RefreshError::NotFound));
    };
    let Some(who) = identity(tx, &session_id)? else {
        return Ok(Err(RefreshError::SessionGone));
    };
    let now = chrono::Utc::now();
    if let Some(revoked) = revoked_at {
        let within_grace = parse_timestamp(&revoked)
            .is_some_and(|t| (now - t).num_seconds() < reuse_interval_secs);
        if !within_grace {
            // Reuse of an old token: treat the family as stolen.
            tx.execute(
                &format!(
                    "UPDATE {} SET revoked_at = ?1 WHERE id = ?2",
                    family.sessions
                ),
                rusqlite::params![format_timestamp(now), session_id],
            )
            .map_err(map)?;
            return Ok(Err(RefreshError::AlreadyUsed));
        }
    }
    let now_s = format_timestamp(now);
    tx.execute(
        &format!(
            "UPDATE {} SET revoked_at = ?1 WHERE session_id = ?2 AND revoked_at IS NULL",
            family.tokens
        ),
        rusqlite::params![now_s, session_id],
    )
    .map_err(map)?;
    tx.execute(
        &format!(
            "INSERT INTO {} (token_hash, session_id, parent_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            family.tokens
        ),
        rusqlite::params![new_hash, session_id, old_hash, now_s],
    )
    .map_err(map)?;
    Ok(Ok(who))
}

/// Hashes a refresh token for storage (re-exported for the auth endpoints).
pub fn refresh_hash(token: &str) -> String {
    hash_token(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn database_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&path, ChangeFeed::new(16)).unwrap();
        store
            .atomic(Box::new(|tx| {
                tx.allocate_run_sequence("x").map(serde_json::Value::from)
            }))
            .await
            .unwrap_err(); // no such subagent: the write still opened the WAL
        for p in [
            path.clone(),
            dir.path().join("hub.db-wal"),
            dir.path().join("hub.db-shm"),
        ] {
            if let Ok(meta) = std::fs::metadata(&p) {
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", p.display());
            }
        }
        assert!(dir.path().join("hub.db-wal").exists(), "WAL mode");
    }

    /// A database written before people existed (migrations 1 and 2: the
    /// team secrets) upgrades to the people tables in place, rows kept.
    #[test]
    fn a_version_2_database_upgrades_to_people() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE hub_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)").unwrap();
            let tx = conn.transaction().unwrap();
            for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
                tx.execute_batch(sql).unwrap();
                tx.execute(
                    "INSERT INTO hub_migrations (version, applied_at) VALUES (?1, 'then')",
                    [i as i64 + 1],
                )
                .unwrap();
            }
            tx.execute_batch(
                "INSERT INTO teams (id, name, created_at) VALUES ('t', 'old', 'x');
                 INSERT INTO team_secrets (id, team_id, name, value, created_at, updated_at) VALUES ('s', 't', 'TOKEN', 'v', 'x', 'x');",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path, ChangeFeed::new(16)).unwrap();
        let conn = store.conn.lock().unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM hub_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
        let kept: String = conn
            .query_row("SELECT value FROM team_secrets WHERE id = 's'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, "v");
        let members: i64 = conn
            .query_row("SELECT count(*) FROM team_members", [], |r| r.get(0))
            .unwrap();
        assert_eq!(members, 0);
    }

    #[test]
    fn migrated_columns_match_the_schema_description() {
        let store = SqliteStore::open_in_memory(ChangeFeed::default()).unwrap();
        let conn = store.conn.lock().unwrap();
        for table in schema::TABLES {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({})", table.name))
                .unwrap();
            let names: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let expected: Vec<String> = table.columns.iter().map(|c| c.name.to_string()).collect();
            assert_eq!(names, expected, "{}", table.name);
        }
    }
}
