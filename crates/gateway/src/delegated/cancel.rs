//! `subagent_cancel` (control-plane §8.4, §9.5). Unlike the reference, an
//! `accepted` answer is only ever given after the cancel was persisted and
//! signalled: a lost subagent CAS is re-resolved and retried.
//!
//! A hub outage does not fail a cancel: every read and write here is run
//! again while the hub gives no answer (transport error, 5xx, 408, 429),
//! with a capped backoff, until it answers; they are all idempotent (reads,
//! and updates that set the same values; a CAS whose earlier, unanswered
//! attempt was applied matches again while the subagent is still running).
//! Only the gateway's stop (shutdown step 7) or a permanent refusal ends the
//! retries, and the job then fails saying what was not recorded.

use panorama_protocol::cancel::{
    build_requested_cancel_metadata, cancel_adapter_for, cancel_supported, resolve_cancel_request,
    CancelOutcome, CancelRequest, CancelResolution, CancelState,
};
use panorama_protocol::jobs::{HandlerOutcome, SubagentCancelPayload};
use panorama_protocol::results::CancelJobResult;
use panorama_protocol::rows::SubagentRunRow;
use panorama_protocol::status::{RunEventType, SubagentStatus};
use serde_json::{json, Value};

use super::active::CancelSignal;
use super::events::RunIds;
use super::out_of_band::push_out_of_band;
use crate::control_plane::retry_unanswered;
use crate::job_context::JobContext;
use crate::port::{PortError, StatusGuard};
use crate::timestamp::now_iso;

/// CAS attempts before giving up on a subagent whose state keeps changing.
const MAX_CAS_ATTEMPTS: usize = 3;
pub const MSG_CANCEL_STATE_CHANGED: &str =
    "Subagent state changed while the cancel was being recorded; send the cancel again.";

fn result(r: CancelJobResult) -> HandlerOutcome {
    HandlerOutcome::success(serde_json::to_value(r).unwrap_or(Value::Null))
}

fn fail(message: &str, subagent_id: &str, error: String) -> HandlerOutcome {
    HandlerOutcome::failure(
        json!({"message": message, "subagent_id": subagent_id}),
        error,
    )
}

/// `op` until the hub answers (see the module docs).
async fn answered<T, Fut>(gw: &JobContext, what: &str, op: impl FnMut() -> Fut) -> Result<T, String>
where
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    retry_unanswered(&gw.shutdown, what, op)
        .await
        .0
        .map_err(|e| e.to_string())
}

/// The cancel lost a race with the run's own end (or the rows kept
/// changing): rejected, nothing recorded.
fn lost_race(status: SubagentStatus) -> CancelResolution {
    CancelResolution {
        accepted: false,
        cancel_result: CancelOutcome::Rejected,
        cancel_state: CancelState::None,
        resolved_run_id: None,
        message: MSG_CANCEL_STATE_CHANGED.to_string(),
        status,
    }
}

/// The newest `running` run of a subagent whose status is `status`; none
/// (without asking the hub) unless the subagent is `running`.
async fn running_run_of(
    gw: &JobContext,
    sid: &str,
    status: &SubagentStatus,
) -> Result<Option<SubagentRunRow>, String> {
    if status.is_running() {
        answered(gw, "GET /rest/v1/subagent_runs", || {
            gw.control.newest_running_run(sid)
        })
        .await
    } else {
        Ok(None)
    }
}

/// A `subagent_cancel` job, its payload decoded at claim.
pub async fn handle(gw: &JobContext, payload: &SubagentCancelPayload) -> HandlerOutcome {
    let sid = payload.subagent_id.as_str();
    let reason = payload.reason.as_str();
    let requested = payload.run_id.as_deref();
    let sub = answered(gw, "GET /rest/v1/subagents", || gw.control.subagent(sid)).await;
    let sub = match sub {
        Ok(Some(s)) => s,
        Ok(None) => return result(CancelJobResult::not_found(sid, requested, reason)),
        Err(e) => return fail("Failed to load subagent for cancellation", sid, e),
    };
    let assigned = sub.gateway_id.as_deref();
    if assigned != Some(gw.gateway_id.as_str()) {
        return result(CancelJobResult::other_gateway(sid, requested, reason));
    }
    let adapter = cancel_adapter_for(&sub.subagent_type);
    let supported = cancel_supported(&adapter, assigned);
    let team_id = super::subagent_run::team_of(gw, &sub);
    let mut status = sub.status.clone();
    let mut sub_metadata = sub.metadata.clone();
    let mut run = match running_run_of(gw, sid, &status).await {
        Ok(r) => r,
        Err(e) => {
            return fail(
                "Failed to resolve active subagent run for cancellation",
                sid,
                e,
            )
        }
    };
    let mut first_pass = true;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let resolution = resolve_cancel_request(CancelRequest {
            subagent_status: Some(status.as_str()),
            requested_run_id: requested,
            active_run_id: run.as_ref().map(|r| r.id.as_str()),
            cancel_supported: supported,
        });
        if !resolution.accepted {
            return result(if first_pass {
                CancelJobResult::rejected(sid, reason, supported, &resolution)
            } else {
                CancelJobResult::after_race(sid, reason, supported, &resolution)
            });
        }
        first_pass = false;
        let Some(run_id) = resolution.resolved_run_id.clone() else {
            return fail(
                "Cancel accepted without an active run_id",
                sid,
                "Cancel accepted without an active run_id".into(),
            );
        };
        let now = now_iso();
        // The requested-cancel keys, over the subagent's and then the run's metadata.
        let cancel_metadata = |base: &Value| {
            build_requested_cancel_metadata(
                base,
                Some(&run_id),
                reason,
                &now,
                adapter.support,
                adapter.scope,
            )
        };
        let metadata = cancel_metadata(&sub_metadata);
        let updated = answered(gw, "PATCH /rest/v1/subagents", || {
            gw.control
                .update_subagent(sid, StatusGuard::Running, json!({"metadata": metadata}))
        })
        .await;
        let matched = match updated {
            Ok(matched) => matched,
            Err(e) => return fail("Failed to persist subagent cancellation metadata", sid, e),
        };
        if !matched {
            // Race: refresh and resolve again.
            let refreshed =
                answered(gw, "GET /rest/v1/subagents", || gw.control.subagent(sid)).await;
            match refreshed {
                Ok(Some(row)) => {
                    status = row.status;
                    sub_metadata = row.metadata;
                }
                Ok(None) => {
                    status = SubagentStatus::from_json(None);
                    sub_metadata = json!({});
                }
                Err(e) => {
                    return fail(
                        "Failed to refresh subagent status after cancel race",
                        sid,
                        e,
                    )
                }
            }
            run = match running_run_of(gw, sid, &status).await {
                Ok(r) => r,
                Err(e) => {
                    return fail(
                        "Failed to refresh active subagent run after cancel race",
                        sid,
                        e,
                    )
                }
            };
            continue;
        }
        let run_metadata = cancel_metadata(run.as_ref().map_or(&json!({}), |r| &r.metadata));
        let run_updated = answered(gw, "PATCH /rest/v1/subagent_runs", || {
            gw.control
                .update_run_if_running(&run_id, json!({"metadata": run_metadata}))
        })
        .await;
        if let Err(e) = run_updated {
            return fail("Failed to persist run cancellation metadata", sid, e);
        }
        let signal = gw.delegated.active.request_cancel(sid, Some(&run_id), reason, |local| {
            local.sink.emit(
                RunEventType::CancellationRequested,
                json!({"reason": reason, "source": "gateway_cancel_job", "active_process": true, "cancel_state": "requested"}),
            );
            local.sink.flush();
        });
        let active_process = signal == CancelSignal::Active;
        if !active_process {
            let ids = RunIds {
                run_id: run_id.clone(),
                subagent_id: sid.to_string(),
                team_id: team_id.clone(),
                gateway_id: gw.gateway_id.clone(),
            };
            // Sequenced after every event of the run (see
            // `push_out_of_band`); not written at a guessed sequence.
            let queued = push_out_of_band(
                gw,
                &ids,
                vec![(
                    RunEventType::CancellationRequested,
                    json!({"reason": reason, "source": "gateway_cancel_job", "active_process": false, "cancel_state": "requested"}),
                )],
            )
            .await;
            match queued {
                Err(e) => {
                    return fail(
                        "Cancel was recorded in the subagent and run metadata, but its cancellation_requested event could not be written",
                        sid,
                        e,
                    )
                }
                // The run ended here (its terminal event is sequenced)
                // after the rows above were read as running: the cancel
                // lost the race, and no event may follow the terminal one.
                Ok(None) => {
                    let resolution = lost_race(SubagentStatus::Running);
                    return result(CancelJobResult::after_race(
                        sid, reason, supported, &resolution,
                    ));
                }
                Ok(Some(_)) => {}
            }
        }
        return result(CancelJobResult::accepted(
            sid,
            reason,
            &resolution,
            active_process,
            adapter.support,
        ));
    }
    let resolution = lost_race(status);
    result(CancelJobResult::after_race(
        sid,
        reason,
        supported,
        &resolution,
    ))
}
