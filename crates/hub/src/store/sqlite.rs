//! The embedded SQLite backend: one file in WAL mode, one connection behind
//! a mutex (SQLite has a single writer anyway), every request one
//! `BEGIN IMMEDIATE` transaction run on the blocking pool. The store's
//! logic is shared with PostgreSQL (`super::engine`); this file opens the
//! database, migrates it, binds values and classifies SQLite's errors.

use super::engine::{Backend, Changes, Conn, SqlStore};
use super::sql::Dialect;
use super::StoreError;
use crate::changes::ChangeFeed;
use crate::values::{now_timestamp, SqlValue};
use rusqlite::types::{ToSqlOutput, Value as RValue, ValueRef};
use rusqlite::{Connection, ErrorCode, ToSql, Transaction};
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

/// One SQLite connection, shared by every request.
pub struct SqliteBackend {
    pub(crate) conn: Arc<Mutex<Connection>>,
}

/// The store on SQLite.
pub type SqliteStore = SqlStore<SqliteBackend>;

impl SqlStore<SqliteBackend> {
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
        Ok(SqlStore::new(
            SqliteBackend {
                conn: Arc::new(Mutex::new(conn)),
            },
            feed,
        ))
    }
}

impl Backend for SqliteBackend {
    async fn transaction<T, F>(&self, f: F) -> Result<(T, Changes), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn, &mut Changes) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| classify(e, "transaction"))?;
            let mut changes = Changes::default();
            let out = f(&mut SqliteConn { tx: &tx }, &mut changes)?;
            tx.commit().map_err(|e| classify(e, "commit"))?;
            Ok((out, changes))
        })
        .await
        .map_err(|e| StoreError::backend("transaction", format!("storage task failed: {e}")))?
    }
}

/// [`Conn`] over one open SQLite transaction.
struct SqliteConn<'a, 'c> {
    tx: &'a Transaction<'c>,
}

impl Conn for SqliteConn<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue], table: &str) -> Result<u64, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(sql)
            .map_err(|e| classify(e, table))?;
        stmt.execute(rusqlite::params_from_iter(params.iter().map(Bind)))
            .map(|n| n as u64)
            .map_err(|e| classify(e, table))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        table: &str,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(sql)
            .map_err(|e| classify(e, table))?;
        let width = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params.iter().map(Bind)), |r| {
                (0..width)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => SqlValue::Null,
                            ValueRef::Integer(n) => SqlValue::Int(n),
                            ValueRef::Real(f) => SqlValue::Text(f.to_string()),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                            }
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| classify(e, table))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| classify(e, table))?;
        Ok(rows)
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

/// Classifies a SQLite error as the store's error, naming constraints as
/// PostgreSQL would.
fn classify(e: rusqlite::Error, table: &str) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        let msg = msg.clone().unwrap_or_default();
        if f.code == ErrorCode::ConstraintViolation {
            let cols = msg
                .split_once(": ")
                .map(|(_, c)| c.to_string())
                .unwrap_or_default();
            return match f.extended_code {
                // SQLITE_CONSTRAINT_UNIQUE / SQLITE_CONSTRAINT_PRIMARYKEY
                2067 | 1555 => StoreError::UniqueViolation {
                    constraint: constraint_name(table, &cols),
                    columns: strip_table(&cols),
                },
                787 => StoreError::ForeignKeyViolation {
                    table: table.to_string(),
                },
                1299 => StoreError::NotNullViolation { column: cols },
                275 => StoreError::CheckViolation {
                    table: table.to_string(),
                },
                _ => StoreError::backend(table, msg),
            };
        }
        if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) {
            return StoreError::Busy;
        }
    }
    StoreError::backend(table, e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use crate::store::Store;

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
        let conn = store.backend.conn.lock().unwrap();
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
        // Names only; tests/schema_agreement.rs checks types, nullability,
        // defaults and CHECK values on both backends.
        let store = SqliteStore::open_in_memory(ChangeFeed::default()).unwrap();
        let conn = store.backend.conn.lock().unwrap();
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
