//! What can go wrong in the store, independent of the backend and of HTTP.
//!
//! Each backend classifies its engine's failures into these variants
//! (SQLite extended result codes, PostgreSQL SQLSTATEs); the HTTP layer
//! (`crate::error`) maps them to PostgREST's `{code, message}` and status,
//! so both backends answer a duplicate key, a missing reference or a busy
//! database with the same 23505, 23503 or 503 on the wire.

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint or primary key would be violated.
    #[error("duplicate key value violates unique constraint \"{constraint}\"")]
    UniqueViolation {
        /// PostgreSQL's constraint name (SQLite's columns are translated).
        constraint: String,
        /// The key's columns, as `a, b`.
        columns: String,
    },
    #[error("insert or update on table \"{table}\" violates foreign key constraint")]
    ForeignKeyViolation { table: String },
    #[error("null value violates not-null constraint ({column})")]
    NotNullViolation { column: String },
    #[error("new row for relation \"{table}\" violates check constraint")]
    CheckViolation { table: String },
    /// Another writer holds the database (SQLite's busy timeout ran out,
    /// a PostgreSQL deadlock or serialization failure): retrying may work.
    #[error("the database is busy; retry the request")]
    Busy,
    /// The database cannot be reached (connection refused or lost).
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// `.single()` was asked for and `0` or several rows resulted; the
    /// transaction was rolled back.
    #[error("expected exactly one row, {0} resulted")]
    NotSingle(usize),
    /// A request-level refusal raised inside a transaction by the caller's
    /// own code (a filter naming an unknown column, the job transition
    /// guard, an RPC's decision): it travels through the store unchanged
    /// and rolls the transaction back.
    #[error(transparent)]
    Rejected(#[from] ApiError),
    /// Anything else the engine reported; the message names the table.
    #[error("storage error on {table}: {message}")]
    Backend { table: String, message: String },
}

impl StoreError {
    pub fn backend(table: &str, message: impl Into<String>) -> StoreError {
        StoreError::Backend {
            table: table.to_string(),
            message: message.into(),
        }
    }
}
