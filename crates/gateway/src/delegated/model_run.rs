//! `model_run` (control-plane §8.2, providers.md §9): one provider call with
//! a run plan, a 110 s default timeout, schema or text output; stopped at
//! shutdown.

use std::time::Duration;

use panorama_protocol::jobs::{HandlerOutcome, ModelRunPayload, OutputFormat};
use panorama_protocol::rows::GatewayJobRow;
use panorama_protocol::subagent::provider_failure_message;
use panorama_providers::argv::{build_model_run_plan, display_command};
use panorama_providers::delivery::deliver_prompt;
use panorama_providers::output::{extract_model_run_output, extract_model_run_text};
use serde_json::{json, Value};

use super::process::{run_process, ProcessSpec, MAX_CAPTURE_BYTES, PROCESS_KILL_GRACE};
use super::workdir::WorkDir;
use crate::runtime::Gateway;

fn last_json_object(stdout: &str) -> Option<Value> {
    stdout.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l.trim())
            .ok()
            .filter(Value::is_object)
    })
}

pub async fn handle(gw: &Gateway, job: &GatewayJobRow) -> HandlerOutcome {
    let payload = match ModelRunPayload::parse(&job.payload) {
        Ok(p) => p,
        Err(e) => return HandlerOutcome::from_payload_error(&e),
    };
    let provider = payload.provider;
    let (command, flags) = super::get().providers.command_and_flags(provider);
    let wd = match WorkDir::create(
        &gw.paths.work_dir,
        "model-runs",
        &[("job id", job.id.as_str())],
    ) {
        Ok(wd) => wd,
        Err(e) => return HandlerOutcome::failure_message(e.to_string()),
    };
    let active = &super::get().active;
    let (stop, pgid_slot) = active.register_model_run(&job.id);
    let outcome = async {
        let plan = match build_model_run_plan(&payload, &command, wd.path.clone(), &flags) {
            Ok(p) => p,
            Err(e) => return HandlerOutcome::failure_message(e.to_string()),
        };
        if let Err(e) = wd.write_files(&plan.files) {
            return HandlerOutcome::failure_message(e.to_string());
        }
        let overrides: Vec<(String, Option<String>)> = plan
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        // A prompt too large for argv goes on stdin; what cannot is the
        // job's fault, so the provider's health is left alone.
        let delivery = match deliver_prompt(provider, &plan.args) {
            Ok(d) => d,
            Err(e) => return HandlerOutcome::failure_message(e.to_string()),
        };
        let spec = ProcessSpec {
            command: plan.command.clone(),
            args: delivery.args,
            stdin: delivery.stdin,
            cwd: plan.cwd.clone(),
            env: crate::child_env::child_env_from_process(Some(gw.paths.tmp_dir.as_path()), &overrides),
            timeout: Duration::from_millis(plan.timeout_ms),
            stop_grace: PROCESS_KILL_GRACE,
        };
        let shown = display_command(&plan);
        let slot = pgid_slot.clone();
        let r = run_process(
            &spec,
            stop,
            &mut move |pid| *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid as i32),
            &mut |_| {},
        )
        .await;
        if r.stopped {
            // Shutdown (runtime.md §4.8 step 5): reported like a residual job.
            let reason = super::get()
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
            let message = provider_failure_message(provider, Some(&detail));
            if !r.input_too_large {
                super::providers::record_run_outcome(gw, provider, false, Some(&detail), "model_run", &job.id, None).await;
            }
            return HandlerOutcome::failure(
                json!({"message": message, "exit_code": r.exit_code, "stderr": r.stderr, "stdout": r.stdout,
                       "command": shown, "error_summary": detail}),
                message,
            );
        }
        let output = match payload.output_format {
            OutputFormat::Json => match extract_model_run_output(provider, &r.stdout) {
                Ok(v) => v,
                Err(e) => {
                    let message = e.to_string();
                    super::providers::record_run_outcome(gw, provider, false, Some(&message), "model_run", &job.id, None).await;
                    return HandlerOutcome::failure(
                        json!({"message": message, "stdout": r.stdout, "stderr": r.stderr, "command": shown}),
                        message,
                    );
                }
            },
            OutputFormat::Text => json!(extract_model_run_text(&r.stdout)),
        };
        super::providers::record_run_outcome(gw, provider, true, None, "model_run", &job.id, None).await;
        let last = last_json_object(&r.stdout);
        let usage = last.as_ref().and_then(|v| v.get("usage").or_else(|| v.get("stats")).cloned());
        let model = last
            .as_ref()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
            .or_else(|| payload.model_flag().map(str::to_string));
        HandlerOutcome::success(json!({
            "output": output, "raw": r.stdout, "usage": usage, "model": model,
            "duration_ms": r.duration_ms, "exit_code": r.exit_code,
            "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
            "command": shown,
        }))
    }
    .await;
    active.remove_model_run(&job.id);
    wd.cleanup();
    outcome
}
