//! The writes that report an outcome, as the outbox delivers them. Each is
//! conditional or keyed, so a replay (or a row the control plane already
//! moved on) changes nothing: the outbox's at-least-once delivery relies on
//! it.

use panorama_protocol::accepted::RunGeneration;
use panorama_protocol::jobs::JobCompletion;
use serde_json::{json, Map, Value};

use super::StatusGuard;
use crate::outbox::OutboxWrite;

/// The edge function of the later generation's terminal write (§5.3).
pub const FINALIZE_FUNCTION: &str = "finalize-gateway-subagent-run";
/// The run events table.
pub const EVENTS_TABLE: &str = "subagent_run_events";

/// The output envelope of a failed or cancelled run (`{schema_version,
/// content, content_type, errors}`), as rows store it.
pub fn error_output(message: &str) -> Value {
    serde_json::to_value(panorama_protocol::subagent::OutputEnvelope::error(message))
        .unwrap_or(Value::Null)
}

/// The PostgREST filter a guard stands for.
pub(crate) fn status_filter(guard: &StatusGuard) -> Option<String> {
    match guard {
        StatusGuard::Any => None,
        StatusGuard::Running => Some("eq.running".into()),
        StatusGuard::NotTerminal => Some("not.in.(completed,failed,cancelled)".into()),
        StatusGuard::Status(status) => Some(format!("eq.{status}")),
    }
}

/// `PATCH <table>?id=eq.<id>[&status=<guard>]` with `patch`.
fn update(table: &str, id: &str, guard: &StatusGuard, patch: Value) -> OutboxWrite {
    let mut filters = vec![("id".to_string(), format!("eq.{id}"))];
    if let Some(filter) = status_filter(guard) {
        filters.push(("status".to_string(), filter));
    }
    OutboxWrite::Update {
        table: table.to_string(),
        filters,
        patch,
    }
}

/// A job's completion (§3.2.3), only while it is `running`: a replay or a
/// server-side cancel is harmless.
pub fn job_completion(job_id: &str, completion: &JobCompletion, completed_at: &str) -> OutboxWrite {
    job_update_if_running(job_id, completion.update_body(completed_at))
}

/// `patch` on a job still `running`.
pub fn job_update_if_running(job_id: &str, patch: Value) -> OutboxWrite {
    update("gateway_jobs", job_id, &StatusGuard::Running, patch)
}

/// `patch` on a run still `running`: how every terminal write of a run is
/// guarded.
pub fn run_update_if_running(run_id: &str, patch: Value) -> OutboxWrite {
    update("subagent_runs", run_id, &StatusGuard::Running, patch)
}

/// `patch` on a subagent, where `guard` allows.
pub fn subagent_update(subagent_id: &str, guard: StatusGuard, patch: Value) -> OutboxWrite {
    update("subagents", subagent_id, &guard, patch)
}

/// Run event rows with fixed `(run_id, sequence)` keys, inserted as one
/// batch: a replay is a duplicate, which counts as delivered.
pub fn run_events(rows: Value) -> OutboxWrite {
    OutboxWrite::Insert {
        table: EVENTS_TABLE.to_string(),
        rows,
        duplicate_is_delivered: true,
    }
}

/// A `gateway_events` row (no client-side key: at least once).
pub fn gateway_event(row: Value) -> OutboxWrite {
    OutboxWrite::Insert {
        table: "gateway_events".to_string(),
        rows: row,
        duplicate_is_delivered: false,
    }
}

/// The terminal state of one run, as both generations write it.
pub struct TerminalRows<'a> {
    pub subagent_id: &'a str,
    pub run_id: &'a str,
    pub status: &'a str,
    pub output: &'a Value,
    pub error: Option<&'a str>,
    pub completed_at: &'a str,
    pub run_metadata: &'a Map<String, Value>,
    pub sub_metadata: &'a Map<String, Value>,
    /// Which subagent rows the subagent's update may touch (`running`, or
    /// "not yet terminal" for a run cancelled before it started).
    pub subagent_guard: StatusGuard,
}

/// The outbox writes that put a run and its subagent in their terminal
/// state. Seed: two updates, each conditional (a replay, or a run someone
/// else already ended, matches 0 rows). Accepted: the finalize function,
/// with those same two updates as its fallback where the control plane has
/// no such function (404).
pub fn terminal(generation: RunGeneration, t: &TerminalRows<'_>) -> Vec<OutboxWrite> {
    let row = |metadata: &Map<String, Value>| {
        json!({"status": t.status, "output": t.output, "error": t.error,
               "completed_at": t.completed_at, "metadata": metadata})
    };
    let direct = vec![
        run_update_if_running(t.run_id, row(t.run_metadata)),
        subagent_update(t.subagent_id, t.subagent_guard.clone(), row(t.sub_metadata)),
    ];
    match generation {
        RunGeneration::Seed => direct,
        RunGeneration::Accepted => {
            let completed = t.status == "completed";
            vec![OutboxWrite::FunctionOrFallback {
                name: FINALIZE_FUNCTION.into(),
                body: json!({
                    "subagent_id": t.subagent_id,
                    "run_id": t.run_id,
                    "final_status": t.status,
                    "output": if completed { t.output.clone() } else { Value::Null },
                    "failure_output": if completed { Value::Null } else { t.output.clone() },
                    "final_error": t.error,
                    "completed_at": t.completed_at,
                    "stderr": t.run_metadata.get("stderr").cloned().unwrap_or(Value::Null),
                    "metadata_patch": t.run_metadata,
                }),
                fallback: direct,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use panorama_protocol::jobs::JobCompletion;
    use panorama_protocol::status::JobStatus;

    use super::*;

    fn rows<'a>(
        status: &'a str,
        output: &'a Value,
        error: Option<&'a str>,
        run_meta: &'a Map<String, Value>,
        sub_meta: &'a Map<String, Value>,
    ) -> TerminalRows<'a> {
        TerminalRows {
            subagent_id: "s1",
            run_id: "r1",
            status,
            output,
            error,
            completed_at: "2026-01-01T00:00:00.000Z",
            run_metadata: run_meta,
            sub_metadata: sub_meta,
            subagent_guard: StatusGuard::Running,
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn filters(write: &OutboxWrite) -> Vec<(String, String)> {
        match write {
            OutboxWrite::Update { filters, .. } => filters.clone(),
            other => panic!("not an update: {other:?}"),
        }
    }

    #[test]
    fn guards_become_status_filters() {
        let id = ("id".to_string(), "eq.s1".to_string());
        let status = |f: &str| ("status".to_string(), f.to_string());
        let patch = || json!({});
        assert_eq!(
            filters(&subagent_update("s1", StatusGuard::Running, patch())),
            vec![id.clone(), status("eq.running")]
        );
        assert_eq!(
            filters(&subagent_update("s1", StatusGuard::NotTerminal, patch())),
            vec![id.clone(), status("not.in.(completed,failed,cancelled)")]
        );
        assert_eq!(
            filters(&subagent_update(
                "s1",
                StatusGuard::Status("idle".into()),
                patch()
            )),
            vec![id.clone(), status("eq.idle")]
        );
        assert_eq!(
            filters(&subagent_update("s1", StatusGuard::Any, patch())),
            vec![id]
        );
    }

    #[test]
    fn a_job_completion_is_conditional_on_running() {
        let c = JobCompletion {
            status: JobStatus::Failed,
            result: Some(json!({"message": "m"})),
            error: Some("m".into()),
            run_subagent_failure_fallback: false,
        };
        let write = job_completion("j1", &c, "2025-01-01T00:00:00.000Z");
        let OutboxWrite::Update { table, patch, .. } = &write else {
            panic!("expected an update");
        };
        assert_eq!(table, "gateway_jobs");
        assert_eq!(
            filters(&write),
            vec![
                ("id".to_string(), "eq.j1".to_string()),
                ("status".to_string(), "eq.running".to_string())
            ]
        );
        assert_eq!(patch["status"], "failed");
        assert_eq!(patch["completed_at"], "2025-01-01T00:00:00.000Z");
    }

    #[test]
    fn seed_terminal_state_is_two_conditional_updates() {
        let (run_meta, sub_meta) = (
            meta(json!({"exit_code": 0})),
            meta(json!({"session_id": "x"})),
        );
        let output = json!({"schema_version": 1, "content": "hi", "content_type": "markdown"});
        let writes = terminal(
            RunGeneration::Seed,
            &rows("completed", &output, None, &run_meta, &sub_meta),
        );
        assert_eq!(
            writes,
            vec![
                run_update_if_running(
                    "r1",
                    json!({"status": "completed", "output": output, "error": null,
                           "completed_at": "2026-01-01T00:00:00.000Z", "metadata": run_meta})
                ),
                subagent_update(
                    "s1",
                    StatusGuard::Running,
                    json!({"status": "completed", "output": output, "error": null,
                           "completed_at": "2026-01-01T00:00:00.000Z", "metadata": sub_meta})
                ),
            ]
        );
    }

    #[test]
    fn accepted_terminal_state_goes_through_finalize_with_the_seed_writes_as_fallback() {
        let run_meta = meta(json!({"exit_code": 1, "stderr": "boom"}));
        let sub_meta = meta(json!({}));
        let envelope = json!({"schema_version": 1, "content": "Claude failed"});
        let t = rows(
            "failed",
            &envelope,
            Some("Claude failed"),
            &run_meta,
            &sub_meta,
        );
        let seed = terminal(RunGeneration::Seed, &t);
        let writes = terminal(RunGeneration::Accepted, &t);
        let [OutboxWrite::FunctionOrFallback {
            name,
            body,
            fallback,
        }] = writes.as_slice()
        else {
            panic!("one finalize write: {writes:?}")
        };
        assert_eq!(name, FINALIZE_FUNCTION);
        assert_eq!(fallback, &seed);
        // §5.3: `output` only for completed runs, the envelope as
        // `failure_output` otherwise.
        assert_eq!(
            body,
            &json!({
                "subagent_id": "s1", "run_id": "r1", "final_status": "failed",
                "output": null, "failure_output": envelope, "final_error": "Claude failed",
                "completed_at": "2026-01-01T00:00:00.000Z", "stderr": "boom",
                "metadata_patch": run_meta,
            })
        );
    }
}
