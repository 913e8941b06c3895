//! Storage behind one trait, with two backends: embedded SQLite (the
//! default, [`sqlite::SqliteStore`]) and PostgreSQL ([`postgres::PgStore`],
//! for several hub replicas on one database). The REST layer hands the
//! store already-authorized, already-cast requests; the store compiles
//! them to SQL ([`sql`]), runs each request in one transaction
//! ([`engine`], shared by both backends), and publishes committed row
//! changes to the [`crate::changes::ChangeFeed`]. Failures are
//! [`StoreError`]s; the HTTP layer maps them to PostgREST's codes.

pub mod engine;
pub mod error;
pub mod postgres;
pub mod sql;
pub mod sqlite;

pub use error::{Refusal, StoreError};

use crate::changes::Row;
use crate::postgrest::{Filter, Order};
use crate::schema::{Column, Table};
use crate::values::SqlValue;
use async_trait::async_trait;
use std::sync::Arc;

pub struct SelectRequest {
    pub table: &'static Table,
    pub filters: Vec<Filter>,
    pub order: Vec<Order>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    /// Also count every matching row (`Prefer: count=exact`).
    pub count: bool,
}

pub struct SelectResult {
    pub rows: Vec<Row>,
    pub total: Option<u64>,
}

pub enum Conflict {
    /// Plain insert: a duplicate key is a 23505.
    Fail,
    /// Upsert: update the existing row (`resolution=merge-duplicates`) on
    /// the `on` columns. Only the `set` columns (those the request named)
    /// are overwritten, as PostgreSQL's `ON CONFLICT DO UPDATE SET c =
    /// EXCLUDED.c` for the payload's columns: an omitted column keeps its
    /// value rather than falling back to its default.
    Merge { on: Vec<String>, set: Vec<String> },
    /// Upsert: keep the existing row (`resolution=ignore-duplicates`).
    Ignore(Vec<String>),
}

pub struct InsertRequest {
    pub table: &'static Table,
    pub rows: Vec<Vec<(&'static Column, SqlValue)>>,
    pub conflict: Conflict,
    /// Roll back unless exactly one row results (`.single()`).
    pub expect_single: bool,
}

/// Checks each (old, new) row pair of an update inside its transaction; an
/// error rolls the whole statement back (the job transition guard, RLS
/// `with check`).
pub type UpdateGuard = Arc<dyn Fn(&Row, &Row) -> Result<(), Refusal> + Send + Sync>;

pub struct UpdateRequest {
    pub table: &'static Table,
    pub filters: Vec<Filter>,
    pub set: Vec<(&'static Column, SqlValue)>,
    pub guard: Option<UpdateGuard>,
    pub expect_single: bool,
}

pub struct DeleteRequest {
    pub table: &'static Table,
    pub filters: Vec<Filter>,
    pub expect_single: bool,
}

/// The identity minted when a pairing code is redeemed.
#[derive(Debug, Clone)]
pub struct PairingGrant {
    pub gateway_id: String,
    pub team_id: String,
    pub user_id: String,
    pub session_id: String,
}

/// The identity behind a refresh token that was just rotated.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub user_id: String,
    pub session_id: String,
    pub gateway_id: String,
    pub team_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("Invalid Refresh Token: Refresh Token Not Found")]
    NotFound,
    #[error("Invalid Refresh Token: Already Used")]
    AlreadyUsed,
    #[error("Invalid Refresh Token: No Valid Session Found")]
    SessionGone,
}

impl RefreshError {
    pub fn code(&self) -> &'static str {
        match self {
            RefreshError::NotFound => "refresh_token_not_found",
            RefreshError::AlreadyUsed => "refresh_token_already_used",
            RefreshError::SessionGone => "session_not_found",
        }
    }
}

/// The error written on jobs, runs and subagents of a lost gateway.
pub const LOST_GATEWAY_MESSAGE: &str = "gateway lost: no heartbeat from its gateway within the lost-gateway timeout while the job was running; the hub failed it";

/// `source` of the `run_failed` event the sweep appends.
pub const LOST_GATEWAY_EVENT_SOURCE: &str = "hub_lost_gateway_sweep";

/// Default seconds during which a just-rotated refresh token may still be
/// used once more (a client that lost the response), as GoTrue allows.
pub const REFRESH_REUSE_INTERVAL_SECS: i64 = 10;

/// A person's account as the auth endpoints need it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub user_metadata: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
    pub last_sign_in_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error("User already registered")]
    EmailTaken,
    #[error("Invitation code is invalid, expired, already used, or for another email")]
    InvalidInvitation,
    #[error("User not found")]
    UserNotFound,
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Which sessions a logout ends (GoTrue's `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// This session only.
    Local,
    /// Every session of the user.
    Global,
    /// Every session of the user but this one.
    Others,
}

/// An invitation to be stored (the code itself is never stored).
pub struct NewInvitation<'a> {
    pub team_id: &'a str,
    pub email: &'a str,
    pub role: crate::people::Role,
    pub code_hash: &'a str,
    pub expires_at: &'a str,
    pub created_by: Option<&'a str>,
}

/// People, their sessions and team membership (issue 13).
#[async_trait]
pub trait PeopleStore: Send + Sync {
    /// Creates an account; with `invitation_hash`, also accepts that
    /// invitation in the same transaction (an invalid one creates nothing).
    async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
        user_metadata: &serde_json::Value,
        invitation_hash: Option<&str>,
    ) -> Result<UserRecord, PeopleError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn update_user(
        &self,
        id: &str,
        email: Option<&str>,
        password_hash: Option<&str>,
        user_metadata: Option<&serde_json::Value>,
    ) -> Result<UserRecord, PeopleError>;
    /// Starts a session whose first refresh token has `refresh_hash`;
    /// returns the session id.
    async fn start_user_session(
        &self,
        user_id: &str,
        refresh_hash: &str,
    ) -> Result<String, StoreError>;
    /// As [`Store::rotate_refresh_token`], for people; returns (user, session).
    async fn rotate_user_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<(String, String), RefreshError>;
    async fn user_session_active(&self, session_id: &str) -> Result<bool, StoreError>;
    async fn end_user_sessions(
        &self,
        user_id: &str,
        session_id: &str,
        scope: LogoutScope,
    ) -> Result<(), StoreError>;
    async fn create_invitation(&self, inv: NewInvitation<'_>) -> Result<(), StoreError>;
    /// Redeems an invitation for `user_id` (whose email must be the
    /// invited one); returns the new `team_members` row.
    async fn accept_invitation(
        &self,
        code_hash: &str,
        user_id: &str,
    ) -> Result<crate::changes::Row, PeopleError>;
    async fn member_role(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::people::Role>, StoreError>;
}

/// Reads and writes inside one store transaction, for operations that must
/// change several rows at once or not at all (run acceptance and
/// finalization) and for the one read of secret values. Rows are read and
/// written exactly as through the REST layer (write-only columns are never
/// read back), with no policy: callers authorize first.
pub trait TxOps {
    fn select(&mut self, table: &'static Table, filters: &[Filter])
        -> Result<Vec<Row>, StoreError>;
    fn insert(
        &mut self,
        table: &'static Table,
        values: &[(&'static Column, SqlValue)],
    ) -> Result<Row, StoreError>;
    fn update(
        &mut self,
        table: &'static Table,
        filters: &[Filter],
        set: &[(&'static Column, SqlValue)],
    ) -> Result<Vec<Row>, StoreError>;
    /// As [`Store::allocate_run_sequence`], inside the transaction.
    fn allocate_run_sequence(&mut self, subagent_id: &str) -> Result<i64, StoreError>;
    /// `(name, value)` of the team's secrets among `names` (missing names
    /// are left out). The only read of `team_secrets.value`.
    fn secret_values(
        &mut self,
        team_id: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, StoreError>;
}

/// A unit of work for [`Store::atomic`]: committed when it returns `Ok`,
/// rolled back (nothing changed, nothing published) on `Err`.
pub type TxFn =
    Box<dyn FnOnce(&mut dyn TxOps) -> Result<serde_json::Value, StoreError> + Send + 'static>;

#[async_trait]
pub trait Store: PeopleStore + Send + Sync + 'static {
    /// Runs `f` in one transaction (see [`TxFn`]).
    async fn atomic(&self, f: TxFn) -> Result<serde_json::Value, StoreError>;

    async fn select(&self, req: SelectRequest) -> Result<SelectResult, StoreError>;
    async fn insert(&self, req: InsertRequest) -> Result<Vec<Row>, StoreError>;
    async fn update(&self, req: UpdateRequest) -> Result<Vec<Row>, StoreError>;
    async fn delete(&self, req: DeleteRequest) -> Result<Vec<Row>, StoreError>;

    /// `allocate_subagent_run_sequence` (spec §16.6): strictly increasing per
    /// subagent, never colliding with an existing run.
    async fn allocate_run_sequence(&self, subagent_id: &str) -> Result<i64, StoreError>;

    /// Redeems a pairing code and creates the gateway, its auth identity and
    /// its first session with `refresh_token_hash`, atomically (§16.9).
    async fn pair_gateway(
        &self,
        code: &str,
        device_name: Option<&str>,
        refresh_token_hash: &str,
    ) -> Result<PairingGrant, StoreError>;

    /// Rotates a refresh token: `old_hash` is revoked and `new_hash` becomes
    /// the session's active token. Reuse outside the grace interval revokes
    /// the whole session.
    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<RefreshGrant, RefreshError>;

    /// Whether a session exists and is not revoked.
    async fn session_active(&self, session_id: &str) -> Result<bool, StoreError>;

    /// Whether the gateway row exists, belongs to the team and is not
    /// revoked (`current_gateway_is_active()`), and the token's session was
    /// not revoked (refresh-token reuse ends a stolen family's access
    /// tokens too; a session the hub never stored is not refused).
    async fn gateway_active(
        &self,
        gateway_id: &str,
        team_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError>;

    /// The lost-gateway sweep (spec §16.10 "stale jobs"): jobs left
    /// `running` on a gateway whose last heartbeat is older than
    /// `stale_before` (or that never sent one) are failed with
    /// [`LOST_GATEWAY_MESSAGE`]; their running runs get a `run_failed`
    /// event and a failed row, and their subagents are released. At most
    /// `limit` jobs per call, each in this one transaction; on PostgreSQL a
    /// job another replica is sweeping is skipped (`SKIP LOCKED`). Returns
    /// the ids of the jobs swept.
    async fn sweep_lost_gateways(
        &self,
        stale_before: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Gateway jobs by status (`/metrics`), in status order.
    async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// `gateway_record_heartbeat` (§16.7).
    async fn record_heartbeat(
        &self,
        gateway_id: &str,
        team_id: &str,
        status: &str,
        capabilities: &serde_json::Value,
        device_name: Option<&str>,
    ) -> Result<(), StoreError>;
}

pub type SharedStore = Arc<dyn Store>;

/// Which database the hub keeps its state in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// One SQLite file (the default: one hub on one box).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://…`): one or several hub replicas.
    Postgres(String),
}

impl Database {
    /// `--database`: a `postgres://` or `postgresql://` URL, or
    /// `sqlite:PATH` / a plain path for SQLite.
    pub fn parse(value: &str) -> Result<Database, String> {
        let v = value.trim();
        if v.starts_with("postgres://") || v.starts_with("postgresql://") {
            return Ok(Database::Postgres(v.to_string()));
        }
        let path = v
            .strip_prefix("sqlite://")
            .or_else(|| v.strip_prefix("sqlite:"))
            .unwrap_or(v);
        if path.is_empty() || v.contains("://") && !v.starts_with("sqlite:") {
            return Err(format!(
                "{value:?} is not a database the hub knows: pass postgres://USER:PASSWORD@HOST:PORT/DATABASE or a SQLite file path"
            ));
        }
        Ok(Database::Sqlite(path.into()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Sqlite(#[from] sqlite::OpenError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgOpenError),
}

/// Opens (and migrates) the database.
pub async fn open(
    db: &Database,
    feed: crate::changes::ChangeFeed,
) -> Result<SharedStore, OpenError> {
    Ok(match db {
        Database::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path, feed)?),
        Database::Postgres(url) => Arc::new(postgres::PgStore::connect(url, feed).await?),
    })
}

/// Hash under which a refresh token is stored (tokens are never stored in
/// clear).
pub fn hash_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::Database;

    #[test]
    fn database_urls_pick_the_backend() {
        assert_eq!(
            Database::parse("postgres://u:p@127.0.0.1:5432/hub"),
            Ok(Database::Postgres(
                "postgres://u:p@127.0.0.1:5432/hub".into()
            ))
        );
        assert_eq!(
            Database::parse("sqlite:/var/lib/hub.db"),
            Ok(Database::Sqlite("/var/lib/hub.db".into()))
        );
        assert_eq!(
            Database::parse("hub.db"),
            Ok(Database::Sqlite("hub.db".into()))
        );
        assert!(Database::parse("mysql://x/y")
            .unwrap_err()
            .contains("postgres://"));
        assert!(Database::parse(" ").is_err());
    }
}
