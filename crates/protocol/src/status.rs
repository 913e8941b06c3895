//! Status vocabularies shared by the gateway and the hub.
//!
//! Closed sets (guarded by `CHECK` constraints in the schema) are plain enums.
//! Open sets, where the spec says "anything else is …", keep the raw value so
//! that nothing read from the wire is lost.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Implements `as_str`, `Display` and `parse` for a closed, snake_case enum.
macro_rules! wire_enum {
    ($name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in spec order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// Exact-match parse of the wire spelling (no trimming, no case folding).
            pub fn parse(raw: &str) -> Option<Self> {
                match raw {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_enum;

/// `team_gateways.status`, also the heartbeat `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayStatus {
    Pending,
    Ready,
    Offline,
    Error,
}
wire_enum!(GatewayStatus { Pending => "pending", Ready => "ready", Offline => "offline", Error => "error" });

/// `gateway_jobs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}
wire_enum!(JobStatus {
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobStatus {
    /// A terminal job is never touched again by the gateway.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The status values the gateway may write when completing a job.
    pub fn is_completion(self) -> bool {
        self.is_terminal()
    }
}

/// `subagents.status`. Known values plus whatever else the control plane wrote
/// (the cancel logic treats every unknown value as "not running").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SubagentStatus {
    Idle,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Any other value, kept as normalized (trimmed, lowercased) text.
    Other(String),
}

impl SubagentStatus {
    /// The value used when the status is empty or not a string (§9.3).
    pub const UNKNOWN: &'static str = "unknown";

    /// Normalizes a raw status the way the cancel resolver does: trimmed,
    /// lowercased, and `unknown` when empty.
    pub fn normalize(raw: &str) -> Self {
        let normalized = raw.trim().to_lowercase();
        match normalized.as_str() {
            "idle" => SubagentStatus::Idle,
            "queued" => SubagentStatus::Queued,
            "running" => SubagentStatus::Running,
            "completed" => SubagentStatus::Completed,
            "failed" => SubagentStatus::Failed,
            "cancelled" => SubagentStatus::Cancelled,
            "" => SubagentStatus::Other(Self::UNKNOWN.to_string()),
            _ => SubagentStatus::Other(normalized),
        }
    }

    /// Normalizes a JSON value: non-strings become `unknown`.
    pub fn from_json(value: Option<&serde_json::Value>) -> Self {
        match value.and_then(|v| v.as_str()) {
            Some(raw) => Self::normalize(raw),
            None => SubagentStatus::Other(Self::UNKNOWN.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            SubagentStatus::Idle => "idle",
            SubagentStatus::Queued => "queued",
            SubagentStatus::Running => "running",
            SubagentStatus::Completed => "completed",
            SubagentStatus::Failed => "failed",
            SubagentStatus::Cancelled => "cancelled",
            SubagentStatus::Other(raw) => raw,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SubagentStatus::Completed | SubagentStatus::Failed | SubagentStatus::Cancelled
        )
    }

    pub fn is_running(&self) -> bool {
        matches!(self, SubagentStatus::Running)
    }
}

impl From<String> for SubagentStatus {
    fn from(raw: String) -> Self {
        SubagentStatus::normalize(&raw)
    }
}

impl From<SubagentStatus> for String {
    fn from(status: SubagentStatus) -> Self {
        status.as_str().to_string()
    }
}

impl fmt::Display for SubagentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `subagent_runs.status`. The gateway writes only `running` and the three
/// terminal values; the others belong to later server-side admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubagentRunStatus {
    PendingAdmission,
    WaitingBudget,
    Running,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
}
wire_enum!(SubagentRunStatus {
    PendingAdmission => "pending_admission",
    WaitingBudget => "waiting_budget",
    Running => "running",
    Cancelling => "cancelling",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl SubagentRunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SubagentRunStatus::Completed | SubagentRunStatus::Failed | SubagentRunStatus::Cancelled
        )
    }

    /// Whether the gateway itself ever writes this status.
    pub fn is_gateway_writable(self) -> bool {
        matches!(self, SubagentRunStatus::Running) || self.is_terminal()
    }
}

/// `subagent_run_events.event_type`: a fixed set of 11 (§10.7, §16.3).
/// Deserializing coerces unknown values to `system`, as the gateway does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "String")]
pub enum RunEventType {
    Message,
    System,
    ToolCall,
    ToolResult,
    RunStarted,
    RunProgress,
    CancellationRequested,
    CancellationAcknowledged,
    RunCompleted,
    RunFailed,
    RunCancelled,
}
wire_enum!(RunEventType {
    Message => "message",
    System => "system",
    ToolCall => "tool_call",
    ToolResult => "tool_result",
    RunStarted => "run_started",
    RunProgress => "run_progress",
    CancellationRequested => "cancellation_requested",
    CancellationAcknowledged => "cancellation_acknowledged",
    RunCompleted => "run_completed",
    RunFailed => "run_failed",
    RunCancelled => "run_cancelled",
});

impl RunEventType {
    /// Trims and lowercases; anything outside the set becomes `system`.
    pub fn coerce(raw: &str) -> Self {
        Self::parse(&raw.trim().to_lowercase()).unwrap_or(RunEventType::System)
    }

    /// Events after which the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunEventType::RunCompleted | RunEventType::RunFailed | RunEventType::RunCancelled
        )
    }
}

impl From<String> for RunEventType {
    fn from(raw: String) -> Self {
        RunEventType::coerce(&raw)
    }
}

/// `gateway_events.level`. The gateway itself only emits `warn` and `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    Debug,
    Info,
    Warn,
    Error,
}
wire_enum!(EventLevel { Debug => "debug", Info => "info", Warn => "warn", Error => "error" });

/// `gateway_jobs.job_type`. Unknown names are kept so the gateway can report
/// `Unsupported job type: <type>` with the exact raw name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum JobType {
    Diagnostic,
    ModelRun,
    SubagentRun,
    SubagentCancel,
    /// Seed only; replaced by `shell_exec` later.
    ShellSession,
    /// Later only.
    ShellExec,
    Unknown(String),
}

impl JobType {
    /// Exact match: job types are not normalized.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "diagnostic" => JobType::Diagnostic,
            "model_run" => JobType::ModelRun,
            "subagent_run" => JobType::SubagentRun,
            "subagent_cancel" => JobType::SubagentCancel,
            "shell_session" => JobType::ShellSession,
            "shell_exec" => JobType::ShellExec,
            other => JobType::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobType::Diagnostic => "diagnostic",
            JobType::ModelRun => "model_run",
            JobType::SubagentRun => "subagent_run",
            JobType::SubagentCancel => "subagent_cancel",
            JobType::ShellSession => "shell_session",
            JobType::ShellExec => "shell_exec",
            JobType::Unknown(raw) => raw,
        }
    }

    /// `jobKind` in the `Processing gateway job` log line (§8.0).
    pub fn job_kind(&self) -> &str {
        match self {
            JobType::ModelRun => "cycle",
            JobType::SubagentRun => "subagent",
            other => other.as_str(),
        }
    }

    /// Cancel jobs skip the queue and the concurrency limit (§7.2).
    pub fn bypasses_queue(&self) -> bool {
        matches!(self, JobType::SubagentCancel)
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, JobType::Unknown(_))
    }
}

impl From<String> for JobType {
    fn from(raw: String) -> Self {
        JobType::parse(&raw)
    }
}

impl From<JobType> for String {
    fn from(job_type: JobType) -> Self {
        job_type.as_str().to_string()
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateway_status_round_trips_snake_case() {
        for status in GatewayStatus::ALL {
            let wire = serde_json::to_value(status).unwrap();
            assert_eq!(wire, json!(status.as_str()));
            assert_eq!(
                serde_json::from_value::<GatewayStatus>(wire).unwrap(),
                *status
            );
        }
        assert_eq!(GatewayStatus::parse("Ready"), None);
    }

    #[test]
    fn job_status_terminality() {
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Completed.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
        assert!(JobStatus::Cancelled.is_terminal());
        assert_eq!(JobStatus::ALL.len(), 5);
        assert_eq!(
            serde_json::to_value(JobStatus::Cancelled).unwrap(),
            json!("cancelled")
        );
        assert!(serde_json::from_value::<JobStatus>(json!("done")).is_err());
    }

    #[test]
    fn subagent_status_normalizes_and_keeps_unknown_values() {
        assert_eq!(
            SubagentStatus::normalize("  RUNNING "),
            SubagentStatus::Running
        );
        assert_eq!(
            SubagentStatus::normalize(""),
            SubagentStatus::Other("unknown".into())
        );
        assert_eq!(
            SubagentStatus::normalize("Paused"),
            SubagentStatus::Other("paused".into())
        );
        assert_eq!(
            SubagentStatus::from_json(Some(&json!(3))).as_str(),
            "unknown"
        );
        assert_eq!(SubagentStatus::from_json(None).as_str(), "unknown");
        assert!(SubagentStatus::Failed.is_terminal());
        assert!(!SubagentStatus::Idle.is_terminal());
        let parsed: SubagentStatus = serde_json::from_value(json!("waiting")).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), json!("waiting"));
    }

    #[test]
    fn subagent_run_status_terminality_and_writability() {
        assert!(SubagentRunStatus::Cancelled.is_terminal());
        assert!(!SubagentRunStatus::Cancelling.is_terminal());
        assert!(SubagentRunStatus::Running.is_gateway_writable());
        assert!(!SubagentRunStatus::WaitingBudget.is_gateway_writable());
        assert_eq!(
            serde_json::to_value(SubagentRunStatus::PendingAdmission).unwrap(),
            json!("pending_admission")
        );
    }

    #[test]
    fn run_event_types_are_the_eleven_of_the_spec_and_unknown_coerces_to_system() {
        let wire: Vec<&str> = RunEventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            wire,
            [
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
                "run_cancelled"
            ]
        );
        assert_eq!(RunEventType::coerce(" Tool_Call "), RunEventType::ToolCall);
        assert_eq!(RunEventType::coerce("thinking"), RunEventType::System);
        let parsed: RunEventType = serde_json::from_value(json!("bogus")).unwrap();
        assert_eq!(parsed, RunEventType::System);
        assert!(RunEventType::RunCancelled.is_terminal());
    }

    #[test]
    fn event_levels_wire_names() {
        let wire: Vec<&str> = EventLevel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(wire, ["debug", "info", "warn", "error"]);
    }

    #[test]
    fn job_type_keeps_unknown_raw_name() {
        assert_eq!(JobType::parse("shell_exec"), JobType::ShellExec);
        let unknown: JobType = serde_json::from_value(json!("Model_Run")).unwrap();
        assert_eq!(unknown, JobType::Unknown("Model_Run".into()));
        assert_eq!(serde_json::to_value(&unknown).unwrap(), json!("Model_Run"));
        assert!(!unknown.is_known());
        assert_eq!(JobType::ModelRun.job_kind(), "cycle");
        assert_eq!(JobType::SubagentRun.job_kind(), "subagent");
        assert_eq!(JobType::ShellSession.job_kind(), "shell_session");
        assert!(JobType::SubagentCancel.bypasses_queue());
        assert!(!JobType::SubagentRun.bypasses_queue());
    }
}
