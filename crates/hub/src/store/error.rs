//! What can go wrong in the store, independent of the backend and of HTTP.
//!
//! Each backend classifies its engine's failures into these variants
//! (SQLite extended result codes, PostgreSQL SQLSTATEs); the HTTP layer
//! (`crate::error`) maps them to PostgREST's `{code, message}` and status,
//! so both backends answer a duplicate key, a missing reference or a busy
//! database with the same 23505, 23503 or 503 on the wire.
//!
//! Nothing here knows HTTP: a [`Refusal`] names its SQLSTATE (or
//! PostgREST code), and the HTTP layer picks the status.

/// A refusal decided inside a transaction by rules rather than by the
/// database: a filter naming an unknown column, the job transition guard,
/// an RPC's decision, an invalid pairing code. It rolls the transaction
/// back and reaches the client as PostgREST would report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// A SQLSTATE (`42501`, `P0001`, …) or a PostgREST code (`PGRST100`).
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    /// The HTTP status the refusing rule chose, when it is not the one its
    /// `code` implies (a 401 rather than 403 `42501` for a caller without
    /// credentials); `None` leaves it to the code.
    pub status: Option<u16>,
}

impl Refusal {
    pub fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
            status: None,
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> Refusal {
        self.details = Some(details.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Refusal {
        self.hint = Some(hint.into());
        self
    }

    /// 42703: no such column.
    pub fn unknown_column(table: &str, column: &str) -> Refusal {
        Refusal::new("42703", format!("column {table}.{column} does not exist"))
    }

    /// PGRST100: the query string could not be parsed.
    pub fn parse(message: impl Into<String>, details: impl Into<String>) -> Refusal {
        Refusal::new("PGRST100", message).details(details)
    }
}

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
    /// A refusal raised inside a transaction by rules (see [`Refusal`]):
    /// it travels through the store unchanged and rolls the transaction
    /// back.
    #[error(transparent)]
    Rejected(#[from] Refusal),
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
