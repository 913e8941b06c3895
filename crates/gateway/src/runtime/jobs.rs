//! Claim → process → complete (runtime.md §4.4, control-plane.md §3.2.2–
//! §3.2.4, §8.0). Completions go through the durable outbox, and every
//! claim is recorded in the claim ledger until its completion is queued.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use panorama_protocol::job::Job;
use panorama_protocol::jobs::{
    complete_job, handler_threw, idempotency_duplicate, residual_shutdown_completion, JobCompletion,
};
use panorama_protocol::rows::{decode_gateway_job_row, GatewayJobRow};
use panorama_protocol::status::{JobStatus, JobType};
use serde_json::{json, Value};

use super::diagnostic;
use super::gateway::{Gateway, State};
use crate::port::writes;
use crate::recovery::ClaimedJob;
use crate::timestamp::now_iso;

/// Message for job types this build knows but does not run yet.
pub fn not_supported_yet_message(job_type: &JobType) -> String {
    format!(
        "Job type {} is not supported by this gateway yet; update panorama-gateway to a version that supports it.",
        job_type.as_str()
    )
}

/// Completion for a known job type whose handler is not built yet.
pub fn not_supported_yet(job_type: &JobType) -> JobCompletion {
    let message = not_supported_yet_message(job_type);
    JobCompletion {
        status: JobStatus::Failed,
        result: Some(json!({ "message": message, "job_type": job_type.as_str() })),
        error: Some(message),
        run_subagent_failure_fallback: false,
    }
}

/// First pause before re-sending a claim whose answer was lost.
const CLAIM_RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest pause between claim attempts while the hub is unreachable.
const CLAIM_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `row` carries the claim this process sent with `started_at`.
fn claimed_by_us(gw: &Gateway, row: &Value, started_at: &str) -> bool {
    let ms = |v: Option<&str>| {
        v.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    };
    row.get("status").and_then(Value::as_str) == Some("running")
        && row.get("gateway_id").and_then(Value::as_str) == Some(gw.gateway_id.as_str())
        && ms(Some(started_at)).is_some()
        && ms(row.get("started_at").and_then(Value::as_str)) == ms(Some(started_at))
}

/// Conditional claim (§3.2.2). `Ok(None)`: not ours any more (0 rows).
///
/// A claim that got no answer (hub down or restarting) is retried with a
/// capped backoff until the hub answers or the gateway shuts down: the job
/// was handed out once by the queue and is not offered again, and the
/// first attempt may have been applied without its answer arriving. Every
/// attempt carries the same `started_at`, so after such an attempt a
/// 0-row answer is checked against the row: `running` for this gateway
/// with our `started_at` means the lost answer was our own claim.
async fn claim(gw: &Gateway, job: &GatewayJobRow) -> Result<Option<GatewayJobRow>, String> {
    let started_at = now_iso();
    let mut delay = CLAIM_RETRY_BASE;
    let mut unanswered = false;
    loop {
        let attempt = async {
            let row = gw.control.claim_job(&job.id, &started_at).await?;
            if row.is_some() || !unanswered {
                return Ok(row);
            }
            let row = gw.control.job(&job.id).await?;
            Ok(row.filter(|r| claimed_by_us(gw, r, &started_at)))
        };
        let row: Option<Value> = match attempt.await {
            Ok(row) => row,
            Err(e) if crate::control_plane::is_unanswered(&e) && gw.cancel_reason().is_none() => {
                tracing::warn!(error = %e, jobId = %job.id, delay_ms = delay.as_millis() as u64, "Gateway job claim got no answer; retrying");
                unanswered = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = gw.cancelled() => return Err(e.to_string()),
                }
                delay = (delay * 2).min(CLAIM_RETRY_MAX);
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        return match row.as_ref() {
            None => Ok(None),
            // Use the updated row; fall back to ours if it does not decode.
            Some(row) => Ok(Some(decode_gateway_job_row(row).unwrap_or_else(|_| {
                let mut claimed = job.clone();
                claimed.status = JobStatus::Running;
                claimed
            }))),
        };
    }
}

/// §3.2.4: another job with the same key and attempt already running or
/// completed → cancel this one. Query errors are logged and ignored.
async fn idempotency_conflict(gw: &Gateway, job: &GatewayJobRow) -> Option<JobCompletion> {
    let key = job.idempotency_key.as_deref().filter(|k| !k.is_empty())?;
    let attempt = job.attempt_or_default();
    match gw.control.has_idempotency_twin(job).await {
        Ok(true) => Some(idempotency_duplicate(key, attempt)),
        Ok(false) => None,
        Err(e) => {
            tracing::error!(error = %e, jobId = %job.id, "Failed to check gateway job idempotency");
            None
        }
    }
}

fn payload_str<'a>(payload: &'a Value, key: &str) -> Option<&'a str> {
    payload.get(key).and_then(Value::as_str)
}

/// Provider of a `subagent_run`, inferred from `subagent_type`.
fn subagent_provider(subagent_type: Option<&str>) -> Option<&'static str> {
    let t = subagent_type?.to_ascii_lowercase();
    if t.contains("claude") {
        Some("claude_code")
    } else if t.contains("codex") {
        Some("codex")
    } else if t.contains("gemini") {
        Some("gemini")
    } else {
        None
    }
}

fn log_processing(job: &GatewayJobRow) {
    let p = &job.payload;
    let subagent_type = payload_str(p, "subagent_type");
    let provider = match job.job_type {
        JobType::ModelRun => payload_str(p, "provider"),
        JobType::SubagentRun => subagent_provider(subagent_type),
        _ => None,
    };
    tracing::info!(
        jobId = %job.id,
        jobType = %job.job_type.as_str(),
        jobKind = %job.job_type.job_kind(),
        provider,
        model = payload_str(p, "model"),
        subagentType = subagent_type,
        shellAction = payload_str(p, "action"),
        "Processing gateway job"
    );
}

/// Run the handler for a claimed job. Every job type is decided here.
/// Runs one claimed job: its payload decoded once into a [`Job`], then the
/// handler of its type. A payload that does not decode completes the job
/// with the spec's message for it, without running anything.
async fn dispatch(gw: &Gateway, row: &GatewayJobRow) -> JobCompletion {
    // `terminal_open` / `terminal_close` (issue 15) are an extension
    // outside the protocol's job types: served unless the operator turned
    // the stream off, then refused as unsupported like any unknown type.
    if let JobType::Unknown(t) = &row.job_type {
        if super::shell_glue::is_terminal_job(t) && gw.shell_sessions.terminals().enabled {
            return super::shell_glue::handle(gw, row, None).await;
        }
    }
    let job = match Job::decode(&row.job_type, &row.payload) {
        Ok(job) => job,
        Err(undecodable) => return undecodable.completion(),
    };
    let job_type = job.job_type();
    match &job {
        Job::Diagnostic => {
            match diagnostic::handle(Some(gw.paths.tmp_dir.as_path()), gw.cancelled()).await {
                Some(outcome) => complete_job(&job_type, outcome),
                None => residual_shutdown_completion(&gw.cancel_reason().unwrap_or_default()),
            }
        }
        Job::ShellSession(_) | Job::ShellExec(_) => {
            super::shell_glue::handle(gw, row, Some(&job)).await
        }
        Job::ModelRun(payload) => complete_job(
            &job_type,
            crate::delegated::model_run::handle(gw, &row.id, payload).await,
        ),
        Job::SubagentRun(payload) => {
            crate::delegated::subagent_run::run_job(gw, &row.id, payload).await
        }
        Job::SubagentCancel(payload) => complete_job(
            &job_type,
            crate::delegated::cancel::handle(gw, payload).await,
        ),
    }
}

pub fn complete(gw: &Gateway, job_id: &str, completion: &JobCompletion) {
    if !gw.lock().finalized.insert(job_id.to_string()) {
        return;
    }
    match gw
        .outbox
        .push(writes::job_completion(job_id, completion, &now_iso()))
    {
        Ok(_) => {
            if let Err(e) = gw.ledger.release(job_id) {
                tracing::error!(error = %e, jobId = %job_id, "Failed to release gateway job claim");
            }
        }
        // The claim stays in the ledger; startup recovery finalizes it.
        Err(e) => {
            tracing::error!(error = %e, jobId = %job_id, "Failed to update gateway job result")
        }
    }
}

/// Offer a job (runtime.md §4.2 "Enqueue").
pub fn enqueue(gw: &Arc<Gateway>, job: GatewayJobRow) {
    let mut st = gw.lock();
    if st.shutting_down || !job.is_targeted_at(&gw.gateway_id) {
        return;
    }
    if job.job_type.bypasses_queue() {
        if st.queue.mark_seen(&job.id) {
            spawn_job(gw, &mut st, job, None);
        }
        return;
    }
    if !st.accepting {
        return;
    }
    if st.queue.enqueue(job) {
        pump(gw, &mut st);
    }
}

/// Start as many queued jobs as the concurrency allows.
fn pump(gw: &Arc<Gateway>, st: &mut State) {
    if !st.accepting {
        return;
    }
    for taken in st.queue.take_available(gw.concurrency) {
        spawn_job(gw, st, taken.job, taken.reserved_subagent_id);
    }
}

fn spawn_job(gw: &Arc<Gateway>, st: &mut State, job: GatewayJobRow, reserved: Option<String>) {
    let task_gw = Arc::clone(gw);
    let id = job.id.clone();
    let task_id = id.clone();
    // The task's epilogue takes the state lock, which we hold until the
    // handle is registered, so it cannot remove the entry before it exists.
    let handle = tokio::spawn(async move {
        process_job(&task_gw, job).await;
        job_finished(&task_gw, &task_id, reserved.as_deref());
    });
    st.active.insert(id, handle.abort_handle());
}

fn job_finished(gw: &Arc<Gateway>, job_id: &str, reserved: Option<&str>) {
    let mut st = gw.lock();
    st.active.remove(job_id);
    st.queue.mark_done(job_id, reserved);
    pump(gw, &mut st);
}

/// The whole life of one job in this process.
pub async fn process_job(gw: &Arc<Gateway>, job: GatewayJobRow) {
    if !job.is_targeted_at(&gw.gateway_id) {
        return;
    }
    let claimed = match claim(gw, &job).await {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, jobId = %job.id, "Failed to claim gateway job");
            return;
        }
    };
    let record = ClaimedJob {
        job_id: claimed.id.clone(),
        job_type: claimed.job_type.as_str().to_string(),
        payload: claimed.payload.clone(),
        claimed_at: now_iso(),
        pid: std::process::id(),
    };
    if let Err(e) = gw.ledger.record(&record) {
        tracing::error!(error = %e, jobId = %claimed.id, "Failed to record gateway job claim");
    }
    let started = std::time::Instant::now();
    crate::output::job_taken(&claimed.id, claimed.job_type.as_str());
    let completion = match idempotency_conflict(gw, &claimed).await {
        Some(duplicate) => duplicate,
        None => {
            log_processing(&claimed);
            // Boxed: the handlers' futures are large, and inline they made
            // the spawned job task large too, so every spawn (before the
            // claim PATCH) copied it; boxed, that cost moves after the claim.
            match AssertUnwindSafe(Box::pin(dispatch(gw, &claimed)))
                .catch_unwind()
                .await
            {
                Ok(completion) => completion,
                Err(panic) => {
                    let message = crate::error::panic_message(panic.as_ref());
                    tracing::error!(jobId = %claimed.id, error = %message, "Gateway job processing failed");
                    handler_threw(&claimed.job_type, &message)
                }
            }
        }
    };
    if gw.delegated.providers.take_health_changed() {
        super::heartbeat::after_provider_health_change(gw).await;
    }
    complete(gw, &claimed.id, &completion);
    crate::metrics::job_ended(claimed.job_type.as_str(), completion.status.as_str());
    crate::output::job_ended(
        &claimed.id,
        claimed.job_type.as_str(),
        completion.status.as_str(),
        completion.error.as_deref(),
        started.elapsed(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_not_built_yet_fails_saying_so() {
        let c = not_supported_yet(&JobType::ModelRun);
        assert_eq!(c.status, JobStatus::Failed);
        assert_eq!(
            c.error.as_deref(),
            Some("Job type model_run is not supported by this gateway yet; update panorama-gateway to a version that supports it.")
        );
        assert_eq!(c.result.unwrap()["job_type"], "model_run");
    }

    #[test]
    fn provider_inference() {
        assert_eq!(
            subagent_provider(Some("claude_code_gateway")),
            Some("claude_code")
        );
        assert_eq!(subagent_provider(Some("codex_gateway")), Some("codex"));
        assert_eq!(subagent_provider(Some("other")), None);
        assert_eq!(subagent_provider(None), None);
    }
}
