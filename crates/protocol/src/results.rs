//! Job result shapes the spec pins down: `diagnostic` (§8.1),
//! `subagent_cancel` (§9.5), `shell_session` (§8.5) and `shell_exec` (§8.6).

use serde::{Deserialize, Serialize};

use crate::cancel::{CancelOutcome, CancelResolution, CancelState, CancelSupport};
use crate::status::wire_enum;

// ---------------------------------------------------------------- diagnostic

pub const DIAGNOSTIC_TIMEOUT_MS: u64 = 10_000;
pub const MSG_CLAUDE_CHECK_FAILED: &str = "Claude CLI check failed";

/// `<claude> --version` result. Success has `version` (omitted when stdout is
/// blank); failure has `error` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticResult {
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DiagnosticResult {
    pub fn success(command: String, stdout: String, stderr: String, duration_ms: u64) -> Self {
        let version = Some(stdout.trim().to_string()).filter(|v| !v.is_empty());
        DiagnosticResult {
            command,
            stdout,
            stderr,
            exit_code: Some(0),
            duration_ms,
            version,
            error: None,
        }
    }

    /// `error` is the exec error message; an empty one becomes
    /// [`MSG_CLAUDE_CHECK_FAILED`], which is also the job error.
    pub fn failure(
        command: String,
        stdout: String,
        stderr: String,
        exit_code: Option<i32>,
        duration_ms: u64,
        error: Option<String>,
    ) -> Self {
        let error = error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| MSG_CLAUDE_CHECK_FAILED.to_string());
        DiagnosticResult {
            command,
            stdout,
            stderr,
            exit_code,
            duration_ms,
            version: None,
            error: Some(error),
        }
    }
}

// ---------------------------------------------------------------- cancel

pub const MSG_CANCEL_FORWARDED: &str = "Cancel requested and forwarded to gateway.";
pub const MSG_CANCEL_WORKER_WILL_STOP: &str =
    "Cancel requested. Worker will stop the run on its next cancellation check.";
pub const MSG_CANCEL_SUBAGENT_NOT_FOUND: &str = "Subagent not found; no active run to cancel.";
pub const MSG_CANCEL_OTHER_GATEWAY: &str =
    "Subagent is assigned to another gateway; skipping stale cancel request.";

/// The `ok:true` result of a `subagent_cancel` job. `active_run_id` appears
/// (as `null`) only in the "rejected by the resolver" shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJobResult {
    pub subagent_id: String,
    pub run_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_nullable"
    )]
    pub active_run_id: Option<Option<String>>,
    pub cancelled_active_run: bool,
    pub reason: String,
    pub cancel_result: CancelOutcome,
    pub cancel_state: CancelState,
    pub cancel_supported: bool,
    pub status: String,
    pub message: String,
}

/// Distinguishes an absent key (`None`) from an explicit `null` (`Some(None)`).
mod present_nullable {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Option<String>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .as_ref()
            .and_then(Option::as_ref)
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(deserializer).map(Some)
    }
}

/// The message of an accepted cancel, by the adapter's `support`.
pub fn accepted_cancel_message(support: Option<CancelSupport>) -> &'static str {
    if support == Some(CancelSupport::Gateway) {
        MSG_CANCEL_FORWARDED
    } else {
        MSG_CANCEL_WORKER_WILL_STOP
    }
}

impl CancelJobResult {
    fn stale(
        subagent_id: &str,
        requested_run_id: Option<&str>,
        reason: &str,
        status: &str,
        message: &str,
    ) -> Self {
        CancelJobResult {
            subagent_id: subagent_id.into(),
            run_id: requested_run_id.map(str::to_string),
            active_run_id: None,
            cancelled_active_run: false,
            reason: reason.into(),
            cancel_result: CancelOutcome::NoActiveRun,
            cancel_state: CancelState::None,
            cancel_supported: false,
            status: status.into(),
            message: message.into(),
        }
    }

    /// The subagent row does not exist.
    pub fn not_found(subagent_id: &str, requested_run_id: Option<&str>, reason: &str) -> Self {
        Self::stale(
            subagent_id,
            requested_run_id,
            reason,
            "not_found",
            MSG_CANCEL_SUBAGENT_NOT_FOUND,
        )
    }

    /// The subagent belongs to another gateway (`status` is hard-coded `running`).
    pub fn other_gateway(subagent_id: &str, requested_run_id: Option<&str>, reason: &str) -> Self {
        Self::stale(
            subagent_id,
            requested_run_id,
            reason,
            "running",
            MSG_CANCEL_OTHER_GATEWAY,
        )
    }

    fn from_resolution(
        subagent_id: &str,
        reason: &str,
        cancel_supported: bool,
        resolution: &CancelResolution,
    ) -> Self {
        CancelJobResult {
            subagent_id: subagent_id.into(),
            run_id: resolution.resolved_run_id.clone(),
            active_run_id: None,
            cancelled_active_run: false,
            reason: reason.into(),
            cancel_result: resolution.cancel_result,
            cancel_state: resolution.cancel_state,
            cancel_supported,
            status: resolution.status.as_str().to_string(),
            message: resolution.message.clone(),
        }
    }

    /// The resolver did not accept the request.
    pub fn rejected(
        subagent_id: &str,
        reason: &str,
        cancel_supported: bool,
        resolution: &CancelResolution,
    ) -> Self {
        CancelJobResult {
            active_run_id: Some(resolution.resolved_run_id.clone()),
            ..Self::from_resolution(subagent_id, reason, cancel_supported, resolution)
        }
    }

    /// The subagent CAS matched no row; the re-resolution is echoed (even an
    /// `accepted` one, although nothing was persisted — spec surprise §9.5).
    pub fn after_race(
        subagent_id: &str,
        reason: &str,
        cancel_supported: bool,
        resolution: &CancelResolution,
    ) -> Self {
        Self::from_resolution(subagent_id, reason, cancel_supported, resolution)
    }

    /// The request was persisted and signalled.
    pub fn accepted(
        subagent_id: &str,
        reason: &str,
        resolution: &CancelResolution,
        active_process: bool,
        support: Option<CancelSupport>,
    ) -> Self {
        CancelJobResult {
            cancelled_active_run: active_process,
            cancel_supported: true,
            message: accepted_cancel_message(support).to_string(),
            ..Self::from_resolution(subagent_id, reason, true, resolution)
        }
    }
}

// ---------------------------------------------------------------- shell_session

pub const MAX_ACTIVE_SHELL_SESSIONS: usize = 64;
pub const DEFAULT_SHELL_COLUMNS: u32 = 120;
pub const DEFAULT_SHELL_ROWS: u32 = 40;
pub const MSG_SHELL_JOB_CANCELLED: &str =
    "Gateway shell session job was cancelled before execution";
pub const MSG_SHELL_EXEC_JOB_CANCELLED: &str =
    "Gateway remote shell exec job was cancelled before execution";

/// Status of an in-memory shell session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellSessionState {
    Running,
    Exited,
    Closed,
    Failed,
}
wire_enum!(ShellSessionState { Running => "running", Exited => "exited", Closed => "closed", Failed => "failed" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellStream {
    Stdout,
    Stderr,
    System,
}
wire_enum!(ShellStream { Stdout => "stdout", Stderr => "stderr", System => "system" });

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSessionEvent {
    pub sequence: u64,
    pub stream: ShellStream,
    pub data: String,
    pub timestamp: String,
}

/// The session summary embedded in most `shell_session` results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSessionSummary {
    pub session_id: String,
    pub resource_id: String,
    pub status: ShellSessionState,
    pub shell: String,
    pub shell_args: Vec<String>,
    pub cwd: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub latest_sequence: u64,
}

/// `{message, ...summary}` — the `status` and `close` results, and failures
/// on an existing session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSummaryResult {
    pub message: String,
    #[serde(flatten)]
    pub summary: ShellSessionSummary,
}

impl ShellSummaryResult {
    pub fn status(summary: ShellSessionSummary) -> Self {
        ShellSummaryResult {
            message: "Shell session status".into(),
            summary,
        }
    }

    pub fn closed(summary: ShellSessionSummary) -> Self {
        ShellSummaryResult {
            message: "Shell session closed".into(),
            summary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellOpenResult {
    pub message: String,
    #[serde(flatten)]
    pub summary: ShellSessionSummary,
    pub default_columns: u32,
    pub default_rows: u32,
}

impl ShellOpenResult {
    pub fn new(summary: ShellSessionSummary) -> Self {
        ShellOpenResult {
            message: "Shell session opened".into(),
            summary,
            default_columns: DEFAULT_SHELL_COLUMNS,
            default_rows: DEFAULT_SHELL_ROWS,
        }
    }
}

/// `read` result. `latest_sequence` comes from the summary (the reference sets
/// it twice to the same value; one key avoids a duplicate in the JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellReadResult {
    pub message: String,
    #[serde(flatten)]
    pub summary: ShellSessionSummary,
    pub since_sequence: i64,
    pub max_events: i64,
    pub has_more: bool,
    pub events: Vec<ShellSessionEvent>,
}

impl ShellReadResult {
    pub fn new(
        summary: ShellSessionSummary,
        since_sequence: i64,
        max_events: i64,
        has_more: bool,
        events: Vec<ShellSessionEvent>,
    ) -> Self {
        ShellReadResult {
            message: "Shell session output".into(),
            summary,
            since_sequence,
            max_events,
            has_more,
            events,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellWriteResult {
    pub message: String,
    #[serde(flatten)]
    pub summary: ShellSessionSummary,
    pub bytes_written: u64,
    pub append_newline: bool,
}

impl ShellWriteResult {
    pub fn new(summary: ShellSessionSummary, bytes_written: u64, append_newline: bool) -> Self {
        ShellWriteResult {
            message: "Shell session input sent".into(),
            summary,
            bytes_written,
            append_newline,
        }
    }
}

// ---------------------------------------------------------------- shell_exec

/// `message` of a `shell_exec` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellExecMessage {
    #[serde(rename = "Remote shell command completed")]
    Completed,
    #[serde(rename = "Remote shell command timed out")]
    TimedOut,
    #[serde(rename = "Remote shell command failed to start")]
    FailedToStart,
    #[serde(rename = "Remote shell command completed with a non-zero exit status")]
    NonZeroExit,
}

impl ShellExecMessage {
    /// Spawn failure first, then timeout, then the exit status.
    pub fn classify(failed_to_start: bool, timed_out: bool, exit_code: Option<i32>) -> Self {
        if failed_to_start {
            ShellExecMessage::FailedToStart
        } else if timed_out {
            ShellExecMessage::TimedOut
        } else if exit_code == Some(0) {
            ShellExecMessage::Completed
        } else {
            ShellExecMessage::NonZeroExit
        }
    }
}

/// The `ok:true` result of a `shell_exec` job (even when the command failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellExecResult {
    pub message: ShellExecMessage,
    pub resource_id: String,
    pub command: String,
    pub shell: String,
    pub exec_user: Option<String>,
    pub workload_id: Option<String>,
    pub cgroup: Option<String>,
    pub cgroup_termination_error: Option<String>,
    pub process_tree_contained: bool,
    pub cwd: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub success: bool,
    pub readiness_evidence: Option<serde_json::Value>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub output_truncated: bool,
    pub error: Option<String>,
    /// What the command cost the machine (gateway containment; an extra
    /// key of this implementation, absent where not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_usage: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::{resolve_cancel_request, CancelRequest};
    use serde_json::{json, Value};

    #[test]
    fn diagnostic_result_shapes() {
        let ok = DiagnosticResult::success(
            "/usr/local/bin/claude --version".into(),
            "2.0.14 (Claude Code)\n".into(),
            String::new(),
            412,
        );
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"command": "/usr/local/bin/claude --version", "stdout": "2.0.14 (Claude Code)\n", "stderr": "",
                   "exit_code": 0, "duration_ms": 412, "version": "2.0.14 (Claude Code)"})
        );
        let blank = DiagnosticResult::success("c".into(), "  \n".into(), String::new(), 1);
        assert!(serde_json::to_value(&blank)
            .unwrap()
            .get("version")
            .is_none());
        let failed =
            DiagnosticResult::failure("c".into(), String::new(), "boom".into(), None, 3, None);
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"command": "c", "stdout": "", "stderr": "boom", "exit_code": null, "duration_ms": 3,
                   "error": "Claude CLI check failed"})
        );
    }

    fn resolution(status: &str, active: Option<&str>) -> CancelResolution {
        resolve_cancel_request(CancelRequest {
            subagent_status: Some(status),
            requested_run_id: None,
            active_run_id: active,
            cancel_supported: true,
        })
    }

    #[test]
    fn cancel_result_not_found_and_other_gateway() {
        let nf = CancelJobResult::not_found("s1", Some("r1"), "Cancelled");
        assert_eq!(
            serde_json::to_value(&nf).unwrap(),
            json!({"subagent_id": "s1", "run_id": "r1", "cancelled_active_run": false, "reason": "Cancelled",
                   "cancel_result": "no_active_run", "cancel_state": "none", "cancel_supported": false,
                   "status": "not_found", "message": "Subagent not found; no active run to cancel."})
        );
        let other =
            serde_json::to_value(CancelJobResult::other_gateway("s1", None, "Stop")).unwrap();
        assert_eq!(other["status"], "running");
        assert_eq!(other["run_id"], Value::Null);
        assert_eq!(
            other["message"],
            "Subagent is assigned to another gateway; skipping stale cancel request."
        );
        assert!(other.get("active_run_id").is_none());
    }

    #[test]
    fn cancel_result_rejected_has_null_active_run_id_and_race_has_none() {
        let r = resolution("completed", None);
        let rejected =
            serde_json::to_value(CancelJobResult::rejected("s1", "Cancelled", true, &r)).unwrap();
        assert_eq!(
            rejected,
            json!({"subagent_id": "s1", "run_id": null, "active_run_id": null, "cancelled_active_run": false,
                   "reason": "Cancelled", "cancel_result": "already_terminal", "cancel_state": "none",
                   "cancel_supported": true, "status": "completed",
                   "message": "Subagent run is already terminal (status: completed)."})
        );
        let back: CancelJobResult = serde_json::from_value(rejected).unwrap();
        assert_eq!(back.active_run_id, Some(None));
        let race =
            serde_json::to_value(CancelJobResult::after_race("s1", "Cancelled", true, &r)).unwrap();
        assert!(race.get("active_run_id").is_none());
        let back: CancelJobResult = serde_json::from_value(race).unwrap();
        assert_eq!(back.active_run_id, None);
    }

    #[test]
    fn cancel_result_accepted_message_depends_on_support() {
        let r = resolution("running", Some("run-1"));
        let gw = CancelJobResult::accepted("s1", "Stop", &r, true, Some(CancelSupport::Gateway));
        assert_eq!(
            serde_json::to_value(&gw).unwrap(),
            json!({"subagent_id": "s1", "run_id": "run-1", "cancelled_active_run": true, "reason": "Stop",
                   "cancel_result": "accepted", "cancel_state": "requested", "cancel_supported": true,
                   "status": "running", "message": "Cancel requested and forwarded to gateway."})
        );
        let local = CancelJobResult::accepted(
            "s1",
            "Stop",
            &r,
            false,
            Some(CancelSupport::BestEffortLocal),
        );
        assert_eq!(local.message, MSG_CANCEL_WORKER_WILL_STOP);
        assert_eq!(accepted_cancel_message(None), MSG_CANCEL_WORKER_WILL_STOP);
    }

    fn summary() -> ShellSessionSummary {
        ShellSessionSummary {
            session_id: "s".into(),
            resource_id: "r".into(),
            status: ShellSessionState::Running,
            shell: "/bin/zsh".into(),
            shell_args: vec![],
            cwd: None,
            created_at: "t0".into(),
            updated_at: "t1".into(),
            exit_code: None,
            error: None,
            latest_sequence: 12,
        }
    }

    #[test]
    fn shell_session_result_shapes() {
        let open = serde_json::to_value(ShellOpenResult::new(summary())).unwrap();
        assert_eq!(
            open,
            json!({"message": "Shell session opened", "session_id": "s", "resource_id": "r", "status": "running",
                   "shell": "/bin/zsh", "shell_args": [], "cwd": null, "created_at": "t0", "updated_at": "t1",
                   "exit_code": null, "error": null, "latest_sequence": 12,
                   "default_columns": 120, "default_rows": 40})
        );
        let event = ShellSessionEvent {
            sequence: 3,
            stream: ShellStream::Stdout,
            data: "hi".into(),
            timestamp: "t".into(),
        };
        let read =
            serde_json::to_string(&ShellReadResult::new(summary(), 2, 200, false, vec![event]))
                .unwrap();
        assert_eq!(read.matches("\"latest_sequence\"").count(), 1);
        let read: Value = serde_json::from_str(&read).unwrap();
        assert_eq!(
            read["events"],
            json!([{"sequence": 3, "stream": "stdout", "data": "hi", "timestamp": "t"}])
        );
        assert_eq!(read["message"], "Shell session output");
        let write = serde_json::to_value(ShellWriteResult::new(summary(), 3, true)).unwrap();
        assert_eq!(
            (write["message"].as_str(), write["bytes_written"].as_u64()),
            (Some("Shell session input sent"), Some(3))
        );
        assert_eq!(
            serde_json::to_value(ShellSummaryResult::status(summary())).unwrap()["message"],
            "Shell session status"
        );
        assert_eq!(
            serde_json::to_value(ShellSummaryResult::closed(summary())).unwrap()["message"],
            "Shell session closed"
        );
    }

    #[test]
    fn shell_exec_message_rows() {
        let rows = [
            (
                (true, true, None),
                ShellExecMessage::FailedToStart,
                "Remote shell command failed to start",
            ),
            (
                (false, true, None),
                ShellExecMessage::TimedOut,
                "Remote shell command timed out",
            ),
            (
                (false, false, Some(0)),
                ShellExecMessage::Completed,
                "Remote shell command completed",
            ),
            (
                (false, false, Some(2)),
                ShellExecMessage::NonZeroExit,
                "Remote shell command completed with a non-zero exit status",
            ),
            (
                (false, false, None),
                ShellExecMessage::NonZeroExit,
                "Remote shell command completed with a non-zero exit status",
            ),
        ];
        for ((start, timeout, code), message, text) in rows {
            let m = ShellExecMessage::classify(start, timeout, code);
            assert_eq!(m, message);
            assert_eq!(serde_json::to_value(m).unwrap(), json!(text));
        }
    }
}
