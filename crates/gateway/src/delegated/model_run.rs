//! `model_run` (control-plane §8.2, providers.md §9): one provider call with
//! a run plan, a 110 s default timeout, schema or text output; stopped at
//! shutdown.

use panorama_protocol::jobs::{HandlerOutcome, ModelRunPayload, OutputFormat};
use panorama_protocol::subagent::provider_failure_message;
use panorama_providers::argv::{build_model_run_plan, display_command};
use panorama_providers::delivery::deliver_prompt;
use panorama_providers::output::{
    extract_model_run_answer_and_raw, extract_model_run_text, model_run_result_shape,
    MODEL_RUN_GENERATION,
};
use serde_json::{json, Value};

use super::agent_process::spec_for_plan;
use super::process::{run_process, MAX_CAPTURE_BYTES, PROCESS_KILL_GRACE};
use super::workdir::WorkDir;
use crate::job_context::JobContext;
use crate::job_debug;

fn last_json_object(stdout: &str) -> Option<Value> {
    stdout.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l.trim())
            .ok()
            .filter(Value::is_object)
    })
}

/// The job `job_id`, its payload decoded at claim.
pub async fn handle(gw: &JobContext, job_id: &str, payload: &ModelRunPayload) -> HandlerOutcome {
    let provider = payload.provider;
    let (command, flags) = gw.delegated.providers.command_and_flags(provider);
    let wd = match WorkDir::create(&gw.paths.work_dir, "model-runs", &[("job id", job_id)]) {
        Ok(wd) => wd,
        Err(e) => return HandlerOutcome::failure_message(e.to_string()),
    };
    let active = &gw.delegated.active;
    let (stop, pgid_slot) = active.register_model_run(job_id);
    let outcome = async {
        let plan = match build_model_run_plan(payload, &command, wd.path.clone(), &flags) {
            Ok(p) => p,
            Err(e) => return HandlerOutcome::failure_message(e.to_string()),
        };
        if let Err(e) = wd.write_files(&plan.files) {
            return HandlerOutcome::failure_message(e.to_string());
        }
        // A prompt too large for argv goes on stdin; what cannot is the
        // job's fault, so the provider's health is left alone.
        let delivery = match deliver_prompt(provider, &plan.args) {
            Ok(d) => d,
            Err(e) => return HandlerOutcome::failure_message(e.to_string()),
        };
        let mut spec = spec_for_plan(&plan, &gw.paths.tmp_dir, PROCESS_KILL_GRACE);
        spec.args = delivery.args;
        spec.stdin = delivery.stdin;
        let shown = display_command(&plan);
        // gateway_jobs.debug (§3.2.5): before launch, then after exit.
        let launch = job_debug::launch_debug(payload, &plan, &wd.path, provider.as_str());
        job_debug::write(&*gw.control, job_id, &launch).await;
        let slot = pgid_slot.clone();
        let r = run_process(
            &spec,
            stop,
            &mut move |pid| *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid as i32),
            &mut |_| {},
        )
        .await;
        let facts = job_debug::ExitFacts {
            stdout: &r.stdout,
            stderr: &r.stderr,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
            error_summary: r.failure_detail(plan.timeout_ms),
        };
        job_debug::write(&*gw.control, job_id, &job_debug::exit_debug(&launch, &facts)).await;
        if r.stopped {
            // Shutdown (runtime.md §4.8 step 5): reported like a residual job.
            let reason = gw.delegated
                .active
                .shutdown_reason()
                .unwrap_or_else(|| "Gateway shutting down".to_string());
            return HandlerOutcome {
                job_status: Some(panorama_protocol::status::JobStatus::Cancelled),
                ..HandlerOutcome::failure(json!({"message": reason, "cancelled": true}), reason)
            };
        }
        if r.stdout_truncated {
            let message = format!("Gateway model stdout exceeded the {MAX_CAPTURE_BYTES}-byte output limit");
            return HandlerOutcome::failure(
                json!({"message": message, "error_code": "GATEWAY_MODEL_OUTPUT_LIMIT", "boundary": "stdout", "output_limit_bytes": MAX_CAPTURE_BYTES}),
                message,
            );
        }
        if let Some(detail) = r.failure_detail(plan.timeout_ms) {
            // A job stopped at its resource limit, or one whose input was too
            // large, says nothing about the provider.
            let message = match r.limit_hit {
                Some(hit) => hit.message(),
                None => {
                    if !r.input_too_large {
                        super::run_outcome::record_run_outcome(gw, provider, false, Some(&detail), "model_run", job_id, None);
                    }
                    provider_failure_message(provider, Some(&detail))
                }
            };
            return HandlerOutcome::failure(
                json!({"message": message, "exit_code": r.exit_code, "stderr": r.stderr, "stdout": r.stdout,
                       "command": shown, "error_summary": detail, "resource_usage": r.resource_usage.as_ref().map(|u| u.to_value())}),
                message,
            );
        }
        let (output, provider_raw) = match payload.output_format {
            OutputFormat::Json => match extract_model_run_answer_and_raw(provider, &r.stdout, super::agent_process::read_answer_file(&plan).as_deref()) {
                Ok(answer) => answer,
                Err(e) => {
                    let message = e.to_string();
                    super::run_outcome::record_run_outcome(gw, provider, false, Some(&message), "model_run", job_id, None);
                    return HandlerOutcome::failure(
                        json!({"message": message, "stdout": r.stdout, "stderr": r.stderr, "command": shown}),
                        message,
                    );
                }
            },
            OutputFormat::Text => (json!(extract_model_run_text(&r.stdout)), None),
        };
        super::run_outcome::record_run_outcome(gw, provider, true, None, "model_run", job_id, None);
        let last = last_json_object(&r.stdout);
        let usage = last.as_ref().and_then(|v| v.get("usage").or_else(|| v.get("stats")).cloned());
        let model = last
            .as_ref()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
            .or_else(|| payload.model_flag().map(str::to_string));
        // No job tells its generation: the shape 2.32 writes (PROTOCOL.md).
        let (output, raw) = model_run_result_shape(MODEL_RUN_GENERATION, output, provider_raw, &r.stdout);
        HandlerOutcome::success(json!({
            "output": output, "raw": raw, "usage": usage, "model": model,
            "duration_ms": r.duration_ms, "exit_code": r.exit_code,
            "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
            "command": shown, "resource_usage": r.resource_usage.as_ref().map(|u| u.to_value()),
        }))
    }
    .await;
    active.remove_model_run(job_id);
    wd.cleanup();
    outcome
}
