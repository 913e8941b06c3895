//! The hub's relational schema (control-plane spec §16.3), described once as
//! data. The REST layer uses it to validate column names and to cast filter
//! values, so that SQLite and PostgreSQL answer bad input identically;
//! `schema_sql.rs` prints the row-level-security script from it. Each
//! backend's tables come from its own versioned migrations (history, never
//! rewritten); `tests/schema_agreement.rs` migrates both and fails on any
//! drift from this description.

/// Column types the API distinguishes. They decide how a filter value or a
/// body value is cast, and how a stored value is turned back into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Uuid,
    Text,
    Int,
    Bool,
    Json,
    Timestamp,
}

impl ColType {
    /// The PostgreSQL type name, used in error messages.
    pub fn pg_name(self) -> &'static str {
        match self {
            ColType::Uuid => "uuid",
            ColType::Text => "text",
            ColType::Int => "integer",
            ColType::Bool => "boolean",
            ColType::Json => "jsonb",
            ColType::Timestamp => "timestamp with time zone",
        }
    }
}

/// What an INSERT puts in a column the body leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColDefault {
    /// NULL (or a not-null violation when the column is required).
    None,
    /// A fresh random UUID (`gen_random_uuid()`).
    NewUuid,
    /// The statement time (`now()`).
    Now,
    /// A constant, written as JSON text.
    Json(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
    pub default: ColDefault,
    /// `CHECK (col IN (...))` values, when the column is an enumeration.
    pub allowed: Option<&'static [&'static str]>,
    /// Write-only (a secret value): stored, never read back through the
    /// generic store, so no REST answer, realtime message or change-feed
    /// record can carry it, and refused in filters, orders and `select`.
    pub write_only: bool,
}

#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub primary_key: &'static str,
    /// Whether the row carries an `updated_at` maintained on every update.
    pub touch_updated_at: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns a read returns, in order (every column but the
    /// write-only ones).
    pub fn readable_columns(&self) -> impl Iterator<Item = &'static Column> + '_ {
        self.columns.iter().filter(|c| !c.write_only)
    }
}

const fn col(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
        default: ColDefault::None,
        allowed: None,
        write_only: false,
    }
}
const fn req(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
        default: ColDefault::None,
        allowed: None,
        write_only: false,
    }
}
const fn def(name: &'static str, ty: ColType, default: ColDefault) -> Column {
    Column {
        name,
        ty,
        nullable: false,
        default,
        allowed: None,
        write_only: false,
    }
}
const fn choice(
    name: &'static str,
    default: &'static str,
    allowed: &'static [&'static str],
) -> Column {
    Column {
        name,
        ty: ColType::Text,
        nullable: false,
        default: ColDefault::Json(default),
        allowed: Some(allowed),
        write_only: false,
    }
}
/// A required write-only column (see [`Column::write_only`]).
const fn secret(name: &'static str) -> Column {
    Column {
        name,
        ty: ColType::Text,
        nullable: false,
        default: ColDefault::None,
        allowed: None,
        write_only: true,
    }
}

use ColDefault::{NewUuid, Now};
use ColType::*;

pub const GATEWAY_STATUSES: &[&str] = &["pending", "ready", "offline", "error"];
pub const JOB_STATUSES: &[&str] = &["queued", "running", "completed", "failed", "cancelled"];
pub const SUBAGENT_STATUSES: &[&str] = &[
    "idle",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
];
pub const RUN_STATUSES: &[&str] = &[
    "pending_admission",
    "waiting_budget",
    "running",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
];
pub const RUN_EVENT_TYPES: &[&str] = &[
    "message",
    "system",
    "tool_call",
    "tool_result",
    "run_started",
    "run_progress",
    "cancellation_requested",
    "cancellation_acknowledged",
    "run_completed",
    "run_failed",
    "run_cancelled",
];
pub const EVENT_LEVELS: &[&str] = &["debug", "info", "warn", "error"];

pub static TEAMS: Table = Table {
    name: "teams",
    primary_key: "id",
    touch_updated_at: false,
    columns: &[
        def("id", Uuid, NewUuid),
        def("name", Text, ColDefault::Json("\"\"")),
        def("created_at", Timestamp, Now),
    ],
};

pub static TEAM_GATEWAYS: Table = Table {
    name: "team_gateways",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("team_id", Uuid),
        col("device_name", Text),
        choice("status", "\"pending\"", GATEWAY_STATUSES),
        def("capabilities", Json, ColDefault::Json("{}")),
        def("full_control_enabled", Bool, ColDefault::Json("false")),
        col("last_seen_at", Timestamp),
        col("ready_at", Timestamp),
        col("vm_id", Uuid),
        col("auth_user_id", Uuid),
        col("revoked_at", Timestamp),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

pub static GATEWAY_PAIRING_CODES: Table = Table {
    name: "gateway_pairing_codes",
    primary_key: "code",
    touch_updated_at: false,
    columns: &[
        req("code", Text),
        req("team_id", Uuid),
        col("created_by", Uuid),
        def("created_at", Timestamp, Now),
        req("expires_at", Timestamp),
        col("used_at", Timestamp),
        col("used_gateway_id", Uuid),
    ],
};

pub static GATEWAY_JOBS: Table = Table {
    name: "gateway_jobs",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("team_id", Uuid),
        col("gateway_id", Uuid),
        def("job_type", Text, ColDefault::Json("\"diagnostic\"")),
        choice("status", "\"queued\"", JOB_STATUSES),
        def("payload", Json, ColDefault::Json("{}")),
        col("result", Json),
        col("error", Text),
        col("debug", Json),
        col("requested_via", Text),
        col("requested_by_user_id", Uuid),
        col("requested_by_agent_id", Uuid),
        col("idempotency_key", Text),
        def("attempt", Int, ColDefault::Json("1")),
        col("retry_of_job_id", Uuid),
        def("created_at", Timestamp, Now),
        col("started_at", Timestamp),
        col("completed_at", Timestamp),
        def("updated_at", Timestamp, Now),
    ],
};

pub static GATEWAY_EVENTS: Table = Table {
    name: "gateway_events",
    primary_key: "id",
    touch_updated_at: false,
    columns: &[
        def("id", Uuid, NewUuid),
        req("gateway_id", Uuid),
        req("team_id", Uuid),
        col("provider", Text),
        choice("level", "\"info\"", EVENT_LEVELS),
        col("code", Text),
        req("message", Text),
        def("details", Json, ColDefault::Json("{}")),
        def("created_at", Timestamp, Now),
    ],
};

pub static SUBAGENTS: Table = Table {
    name: "subagents",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        req("id", Uuid),
        req("team_id", Uuid),
        col("gateway_id", Uuid),
        col("owner_agent_id", Uuid),
        col("created_by", Uuid),
        req("subagent_type", Text),
        choice("status", "\"idle\"", SUBAGENT_STATUSES),
        def("config", Json, ColDefault::Json("{}")),
        col("input", Json),
        def("metadata", Json, ColDefault::Json("{}")),
        col("output", Json),
        col("error", Text),
        col("started_at", Timestamp),
        col("completed_at", Timestamp),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

pub static SUBAGENT_RUNS: Table = Table {
    name: "subagent_runs",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("subagent_id", Uuid),
        req("team_id", Uuid),
        col("gateway_id", Uuid),
        req("run_sequence", Int),
        choice("status", "\"running\"", RUN_STATUSES),
        col("prompt", Text),
        col("output", Json),
        col("error", Text),
        def("metadata", Json, ColDefault::Json("{}")),
        col("started_at", Timestamp),
        col("completed_at", Timestamp),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

pub static SUBAGENT_RUN_EVENTS: Table = Table {
    name: "subagent_run_events",
    primary_key: "id",
    touch_updated_at: false,
    columns: &[
        def("id", Uuid, NewUuid),
        req("run_id", Uuid),
        req("subagent_id", Uuid),
        req("team_id", Uuid),
        col("gateway_id", Uuid),
        req("sequence", Int),
        Column {
            name: "event_type",
            ty: Text,
            nullable: false,
            default: ColDefault::None,
            allowed: Some(RUN_EVENT_TYPES),
            write_only: false,
        },
        def("payload", Json, ColDefault::Json("{}")),
        def("created_at", Timestamp, Now),
    ],
};

pub static TEAM_RESOURCES: Table = Table {
    name: "team_resources",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("team_id", Uuid),
        req("resource_type", Text),
        def("resource_id", Text, ColDefault::Json("\"\"")),
        def("title", Text, ColDefault::Json("\"\"")),
        choice("scope", "\"team\"", &["team", "agent"]),
        col("owner_agent_id", Uuid),
        def("max_access_level", Text, ColDefault::Json("\"editor\"")),
        col("metadata", Json),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

/// Per-team secrets for `shell_exec.secret_env` (spec §8.6, §15.1). The
/// value is write-only for everyone: the service key and a team's owners
/// and admins may set, rename or delete a secret and list names (members
/// list names only, viewers nothing; see `policy.rs`); the value leaves
/// the hub only through `resolve_secret_placeholders_for_job`, to the
/// gateway running the job. Gateways have no grant on the table at all.
pub static TEAM_SECRETS: Table = Table {
    name: "team_secrets",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("team_id", Uuid),
        req("name", Text),
        secret("value"),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

pub static TEAM_MEMBERS: Table = Table {
    name: "team_members",
    primary_key: "id",
    touch_updated_at: true,
    columns: &[
        def("id", Uuid, NewUuid),
        req("team_id", Uuid),
        req("user_id", Uuid),
        def("email", Text, ColDefault::Json("\"\"")),
        choice("role", "\"member\"", crate::people::ALL_ROLES),
        def("created_at", Timestamp, Now),
        def("updated_at", Timestamp, Now),
    ],
};

/// Every table the REST API exposes, in dependency order (a table comes
/// after the tables its foreign keys point to).
pub static TABLES: &[&Table] = &[
    &TEAMS,
    &TEAM_GATEWAYS,
    &GATEWAY_PAIRING_CODES,
    &GATEWAY_JOBS,
    &GATEWAY_EVENTS,
    &SUBAGENTS,
    &SUBAGENT_RUNS,
    &SUBAGENT_RUN_EVENTS,
    &TEAM_RESOURCES,
    &TEAM_SECRETS,
    &TEAM_MEMBERS,
];

pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_its_primary_key_column() {
        for t in TABLES {
            assert!(t.column(t.primary_key).is_some(), "{}", t.name);
            if t.touch_updated_at {
                assert!(t.column("updated_at").is_some(), "{}", t.name);
            }
        }
    }

    #[test]
    fn run_event_types_are_the_eleven_of_the_spec() {
        assert_eq!(RUN_EVENT_TYPES.len(), 11);
    }
}
