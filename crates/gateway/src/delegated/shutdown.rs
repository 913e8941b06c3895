//! Shutdown of delegated work (runtime.md §4.8 steps 5 and 7,
//! control-plane §10.8.6).

use panorama_protocol::cancel::{build_requested_cancel_metadata, CancelScope, CancelSupport};
use panorama_protocol::status::RunEventType;
use serde_json::{json, Value};

use super::events::RunIds;
use super::out_of_band::push_out_of_band;
use super::process::kill_group;
use crate::job_context::JobContext;
use crate::port::{writes, StatusGuard};
use crate::timestamp::now_iso;

/// Step 5: cancel every active subagent run (SIGTERM, SIGKILL after 5 s)
/// and stop every model run (2 s grace).
pub fn request_termination(gw: &JobContext, reason: &str) {
    gw.delegated.active.shutdown(reason);
}

/// Whether delegated runs are still active (the shutdown wait includes them).
pub fn active_runs(gw: &JobContext) -> usize {
    gw.delegated.active.run_count()
}

/// Step 7, for one residual job (its task was aborted): kill what is left
/// of its agent's process group and, for a live subagent run, cancel the
/// run and the subagent in the database and emit the shutdown events.
pub async fn finalize_residual(gw: &JobContext, job_id: &str, reason: &str) {
    let active = &gw.delegated.active;
    if let Some(pgid) = active.pgid_for_job(job_id) {
        kill_group(pgid);
    }
    active.remove_model_run(job_id);
    let Some(run) = active.run_for_job(job_id) else {
        return;
    };
    active.remove(&run.run_id);
    run.sink.flush();
    let now = now_iso();
    let envelope = writes::error_output(reason);
    // Shutdown does not wait for a hub that does not answer: `{}` when a
    // row cannot be read (its writes merge over what they find).
    let current = gw
        .control
        .run(&run.run_id)
        .await
        .ok()
        .flatten()
        .map_or_else(|| json!({}), |r| r.metadata);
    let mut metadata = build_requested_cancel_metadata(
        &current,
        Some(&run.run_id),
        reason,
        &now,
        Some(CancelSupport::Gateway),
        Some(CancelScope::Gateway),
    );
    metadata.insert("cancel_state".into(), json!("acknowledged"));
    metadata.insert("cancelled".into(), json!(true));
    metadata.insert("last_run_at".into(), json!(now));
    let updated = gw
        .control
        .update_run_if_running(
            &run.run_id,
            json!({"status": "cancelled", "output": envelope, "error": reason, "completed_at": now, "metadata": metadata}),
        )
        .await;
    let sub_meta = json!({
        "cancel_run_id": run.run_id, "cancel_requested_at": now, "cancel_reason": reason,
        "cancel_state": "acknowledged", "cancel_support": "gateway", "cancellation_scope": "gateway",
        "cancelled": true, "last_run_at": now,
    });
    let existing = gw.control.subagent(&run.subagent_id).await.ok().flatten();
    let mut merged = existing
        .and_then(|s| s.metadata.as_object().cloned())
        .unwrap_or_default();
    if let Value::Object(m) = sub_meta {
        merged.extend(m);
    }
    if let Err(e) = gw
        .control
        .update_subagent(
            &run.subagent_id,
            StatusGuard::Running,
            json!({"status": "cancelled", "output": envelope, "error": reason, "completed_at": now, "metadata": merged}),
        )
        .await
    {
        tracing::error!(error = %e, subagentId = %run.subagent_id, "Failed to cancel subagent at shutdown");
    }
    let matched = matches!(updated, Ok(true));
    if matched {
        let ids: RunIds = run.sink.ids().clone();
        let payload = json!({"reason": reason, "source": "gateway_shutdown", "cancellation_scope": "gateway"});
        // The run's own counter (its sink is registered): never a hub read.
        if let Err(e) = push_out_of_band(
            gw,
            &ids,
            vec![
                (RunEventType::CancellationAcknowledged, payload.clone()),
                (RunEventType::RunCancelled, payload),
            ],
        )
        .await
        {
            tracing::error!(error = %e, runId = %ids.run_id, "Failed to queue the shutdown events of a cancelled run");
        }
    }
}
