//! `subagent_run` (control-plane §8.3, §10): pre-checks, run identity, run
//! row, live events, attempts with retries, terminal persistence through the
//! outbox, and the job-failure fallback (§10.10).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use panorama_protocol::cancel::{cancel_adapter_for, Runner};
use panorama_protocol::full_control::{
    resolve_full_control, FullControlLayers, FullControlWording,
};
use panorama_protocol::jobs::{
    complete_job, handler_threw, resolve_run_id, HandlerOutcome, JobCompletion, SubagentRunPayload,
};
use panorama_protocol::rows::GatewayJobRow;
use panorama_protocol::shell_gate::{
    check_subagent_run_gateway_state, ControlState, SubagentRunGate, MSG_CONTROL_STATE_UNAVAILABLE,
};
use panorama_protocol::status::RunEventType;
use panorama_protocol::subagent::{
    provider_failure_message, OutputEnvelope, SUBAGENT_SCHEMA_VERSION,
};
use panorama_providers::argv::{
    build_subagent_plan, display_command, full_control_support, RunPlan,
};
use panorama_providers::collector::{StreamJsonCollector, MAX_STREAM_EVENTS};
use panorama_providers::config::{RunContext, RunOutputFormat, SubagentConfig};
use panorama_providers::delivery::{deliver_prompt, Delivery};
use panorama_providers::normalize::{normalizer_for, NormalizedEvent, StreamNormalizer};
use panorama_providers::output::{claude_stream_output, parse_subagent_output, AdapterOutput};
use panorama_providers::registry::spec;
use panorama_providers::retry::{
    attempt_started_payload, retry_scheduled_payload, should_retry, AttemptOutcome, RetryConfig,
};
use panorama_providers::ProviderId;
use serde_json::{json, Map, Value};

use super::active::{CancelInfo, RunControl};
use super::events::{push_out_of_band, EventSink, RunIds};
use super::process::{run_process, ProcessResult, ProcessSpec, CANCEL_KILL_GRACE};
use super::workdir::WorkDir;
use crate::outbox::OutboxWrite;
use crate::runtime::{now_iso, now_ms, Gateway};

/// Marker of a failed `--resume` in Claude's output.
pub const RESUME_NOT_FOUND: &str = "No conversation found";
/// Cap of the raw stderr kept in run metadata.
const METADATA_STDERR_CHARS: usize = 200_000;

fn envelope_value(e: &OutputEnvelope) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

fn error_envelope(message: &str) -> Value {
    envelope_value(&OutputEnvelope::error(message))
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The whole job: handler, then the job-failure fallback when it applies.
pub async fn run_job(gw: &Gateway, job: &GatewayJobRow) -> JobCompletion {
    let completion = match AssertUnwindSafe(handle(gw, job)).catch_unwind().await {
        Ok(outcome) => complete_job(&job.job_type, outcome),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "handler panicked".to_string());
            tracing::error!(jobId = %job.id, error = %message, "Gateway job processing failed");
            handler_threw(&job.job_type, &message)
        }
    };
    if completion.run_subagent_failure_fallback {
        let error = completion
            .error
            .clone()
            .unwrap_or_else(|| "Gateway job failed".into());
        fail_subagent_run(gw, &job.payload, &error).await;
    }
    completion
}

/// §10.10 `failSubagentRun`. Acts only on a subagent that is `running`
/// (an idle subagent is never marked failed).
pub async fn fail_subagent_run(gw: &Gateway, payload: &Value, error: &str) {
    let Ok(parsed) = SubagentRunPayload::parse(payload) else {
        return;
    };
    let sid = parsed.subagent_id;
    // Reads are retried while the hub does not answer: giving up here would
    // leave the run and the subagent `running` with nobody to finish them.
    let (sub, _) = retry_unanswered(gw, "GET /rest/v1/subagents", || {
        gw.client
            .from("subagents")
            .select("id,team_id,gateway_id,subagent_type,status,metadata")
            .eq("id", sid.as_str())
            .maybe_single()
    })
    .await;
    let sub = match sub {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, subagentId = %sid, "Failed to load subagent after gateway error");
            return;
        }
    };
    if sub.get("status").and_then(Value::as_str) != Some("running") {
        return;
    }
    let now = now_iso();
    let mut metadata = obj(&sub["metadata"]);
    metadata.extend(obj(&json!({
        "schema_version": SUBAGENT_SCHEMA_VERSION, "runner": "gateway",
        "subagent_type": sub["subagent_type"], "last_run_at": now, "gateway_error": error,
    })));
    let envelope = error_envelope(error);
    // Our own queued writes for this run go first, so its status is current.
    gw.outbox.flush(Duration::from_secs(2)).await;
    let (run, _) = retry_unanswered(gw, "GET /rest/v1/subagent_runs", || {
        newest_running_run(&gw.client, &sid, "id")
    })
    .await;
    if let Err(e) = &run {
        tracing::error!(error = %e, subagentId = %sid, "Failed to load the running run after gateway error");
    }
    if let Ok(Some(run)) = run {
        let run_id = run["id"].as_str().unwrap_or_default().to_string();
        // The terminal event first, then the row (GUARANTEES: terminal
        // state after the run's last event). Its sequence comes from the
        // run's counter, or from the hub once it answers: never a guess.
        if let Some(gateway_id) = sub["gateway_id"].as_str() {
            let ids = RunIds {
                run_id: run_id.clone(),
                subagent_id: sid.clone(),
                team_id: sub["team_id"].as_str().unwrap_or(&gw.team_id).to_string(),
                gateway_id: gateway_id.to_string(),
            };
            if let Err(e) = push_out_of_band(
                gw,
                &ids,
                vec![(
                    RunEventType::RunFailed,
                    json!({"reason": error, "source": "gateway_job_failure"}),
                )],
            )
            .await
            {
                tracing::error!(error = %e, runId = %run_id, "Failed to queue the run_failed event of a failed job");
            }
        }
        push(
            gw,
            OutboxWrite::Update {
                table: "subagent_runs".into(),
                filters: vec![
                    ("id".into(), format!("eq.{run_id}")),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": "failed", "error": error, "output": envelope, "completed_at": now, "metadata": metadata}),
            },
        );
    }
    push(
        gw,
        OutboxWrite::Update {
            table: "subagents".into(),
            filters: vec![
                ("id".into(), format!("eq.{sid}")),
                ("status".into(), "eq.running".into()),
            ],
            patch: json!({"status": "failed", "error": error, "output": envelope, "completed_at": now, "metadata": metadata}),
        },
    );
}

/// Runs `f`, which does several fsync'd outbox pushes in a row, without
/// holding up this worker's other tasks. A push wakes the outbox's delivery
/// task into this worker's LIFO slot, which no other worker may take, so
/// back-to-back synchronous pushes kept the first write from being sent
/// until the last fsync was done (perf trace: ~12 ms between the agent's
/// exit and the first terminal write on a busy disk). `block_in_place`
/// hands the worker's queue to another thread first.
fn fsyncing<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The subagent's newest `running` run (`columns` of it), if any.
pub(super) async fn newest_running_run(
    client: &panorama_supabase::Client,
    sid: &str,
    columns: &str,
) -> Result<Option<Value>, panorama_supabase::Error> {
    client
        .from("subagent_runs")
        .select(columns)
        .eq("subagent_id", sid)
        .eq("status", "running")
        .order("run_sequence", false, None)
        .limit(1)
        .maybe_single()
        .await
}

fn push(gw: &Gateway, write: OutboxWrite) {
    let what = write.describe();
    if let Err(e) = gw.outbox.push(write) {
        tracing::error!(error = %e, write = %what, "Failed to queue subagent state update");
    }
}

/// Runs a hub request (a write, or a read) again while the hub gives no
/// answer (transport error, 5xx, 408, 429), with a capped backoff, until it
/// answers or the gateway asks its jobs to stop: a blip of the hub must not
/// fail a run that has not started yet, nor a cancel. Returns the last result and whether an earlier attempt went
/// unanswered (it may have been applied).
pub(super) async fn retry_unanswered<T, Fut>(
    gw: &Gateway,
    what: &str,
    mut op: impl FnMut() -> Fut,
) -> (Result<T, panorama_supabase::Error>, bool)
where
    Fut: std::future::Future<Output = Result<T, panorama_supabase::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut unanswered = false;
    loop {
        match op().await {
            Err(e)
                if crate::runtime::jobs::claim_error_is_transient(&e)
                    && gw.cancel_reason().is_none() =>
            {
                tracing::warn!(error = %e, request = what, delay_ms = delay.as_millis() as u64, "Hub request got no answer; retrying");
                unanswered = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = gw.cancelled() => return (Err(e), unanswered),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            result => return (result, unanswered),
        }
    }
}

fn prompt_of(input: &Value) -> Option<String> {
    ["prompt", "query", "task"].iter().find_map(|k| {
        input
            .get(*k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

fn sequence_of(input: &Value) -> Option<i64> {
    ["run_sequence", "runSequence"]
        .iter()
        .find_map(|k| match input.get(*k)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        })
}

async fn allocate_sequence(gw: &Gateway, sid: &str) -> i64 {
    match gw
        .client
        .rpc(
            "allocate_subagent_run_sequence",
            json!({"p_subagent_id": sid}),
        )
        .await
    {
        Ok(v) => {
            let n = v
                .as_i64()
                .or_else(|| v.as_array().and_then(|a| a.first()).and_then(Value::as_i64))
                .or_else(|| {
                    v.get("allocate_subagent_run_sequence")
                        .and_then(Value::as_i64)
                });
            if let Some(n) = n {
                return n;
            }
            tracing::warn!(response = %v, "Unexpected allocate_subagent_run_sequence response");
        }
        Err(e) => {
            tracing::warn!(error = %e, "allocate_subagent_run_sequence failed; using max + 1")
        }
    }
    gw.client
        .from("subagent_runs")
        .select("run_sequence")
        .eq("subagent_id", sid)
        .order("run_sequence", false, None)
        .limit(1)
        .maybe_single()
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get("run_sequence").and_then(Value::as_i64))
        .map_or(1, |n| n + 1)
}

/// Everything a run's finalization needs.
struct RunCtx<'a> {
    gw: &'a Gateway,
    sid: String,
    run_id: String,
    provider: ProviderId,
    start_metadata: Map<String, Value>,
    sub_metadata: Map<String, Value>,
    sink: EventSink,
    started: Instant,
}

/// Facts of the final attempt for the terminal metadata.
#[derive(Default)]
struct Terminal {
    command: Option<String>,
    exit_code: Option<i32>,
    timed_out: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
    stream_events_truncated: bool,
    output_format: Option<&'static str>,
    parse_error: Option<String>,
    retry_count: u32,
    retry_reasons: Vec<&'static str>,
    retry_max_attempts: u32,
    stderr: String,
    adapter_metadata: Map<String, Value>,
}

impl RunCtx<'_> {
    fn duration_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn terminal_metadata(&self, t: &Terminal, cancel: Option<&CancelInfo>) -> Map<String, Value> {
        let mut m = self.start_metadata.clone();
        m.extend(t.adapter_metadata.clone());
        let mut term = obj(&json!({
            "schema_version": SUBAGENT_SCHEMA_VERSION,
            "runner": "gateway",
            "last_run_at": now_iso(),
            "command": t.command,
            "exit_code": t.exit_code,
            "duration_ms": self.duration_ms(),
            "timed_out": t.timed_out,
            "stdout_truncated": t.stdout_truncated,
            "stderr_truncated": t.stderr_truncated,
            "stream_events_truncated": t.stream_events_truncated,
            "output_format": t.output_format,
            "parse_error": t.parse_error,
            "retry_count": t.retry_count,
            "retry_reasons": t.retry_reasons,
            "retry_max_attempts": t.retry_max_attempts,
            "cancel_run_id": null,
            "cancel_requested_at": null,
            "cancel_reason": cancel.map(|c| c.reason.clone()),
            "cancelled": cancel.is_some(),
            "cancel_state": if cancel.is_some() { "acknowledged" } else { "none" },
            "cancel_support": cancel.map(|_| "gateway"),
            "cancellation_scope": cancel.map(|_| "gateway"),
            "full_control_denied_reason": null,
        }));
        if !t.stderr.trim().is_empty() {
            term.insert(
                "stderr".into(),
                json!(t
                    .stderr
                    .chars()
                    .take(METADATA_STDERR_CHARS)
                    .collect::<String>()),
            );
        }
        m.extend(term);
        m
    }

    /// Terminal row updates through the outbox (after the events).
    fn persist_terminal(
        &self,
        status: &str,
        output: &Value,
        error: Option<&str>,
        metadata: &Map<String, Value>,
    ) {
        fsyncing(|| self.persist_terminal_now(status, output, error, metadata));
    }

    fn persist_terminal_now(
        &self,
        status: &str,
        output: &Value,
        error: Option<&str>,
        metadata: &Map<String, Value>,
    ) {
        self.sink.flush();
        let now = now_iso();
        push(
            self.gw,
            OutboxWrite::Update {
                table: "subagent_runs".into(),
                filters: vec![
                    ("id".into(), format!("eq.{}", self.run_id)),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": status, "output": output, "error": error, "completed_at": now, "metadata": metadata}),
            },
        );
        let mut sub_meta = self.sub_metadata.clone();
        sub_meta.extend(metadata.clone());
        push(
            self.gw,
            OutboxWrite::Update {
                table: "subagents".into(),
                filters: vec![
                    ("id".into(), format!("eq.{}", self.sid)),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": status, "output": output, "error": error, "completed_at": now, "metadata": sub_meta}),
            },
        );
    }

    /// §10.8.3: a failure after `run_started` (denial, plan error).
    fn pre_execution_failure(
        &self,
        message: &str,
        overrides: Map<String, Value>,
    ) -> HandlerOutcome {
        let mut metadata = self.start_metadata.clone();
        metadata.extend(overrides.clone());
        metadata.insert("last_run_at".into(), json!(now_iso()));
        self.sink.flush();
        let now = now_iso();
        let envelope = error_envelope(message);
        push(
            self.gw,
            OutboxWrite::Update {
                table: "subagent_runs".into(),
                filters: vec![
                    ("id".into(), format!("eq.{}", self.run_id)),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": "failed", "output": envelope, "error": message, "completed_at": now, "metadata": metadata}),
            },
        );
        let mut sub_meta = self.sub_metadata.clone();
        sub_meta.extend(overrides);
        push(
            self.gw,
            OutboxWrite::Update {
                table: "subagents".into(),
                filters: vec![
                    ("id".into(), format!("eq.{}", self.sid)),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": "failed", "output": envelope, "error": message, "completed_at": now, "metadata": sub_meta}),
            },
        );
        self.sink.emit(
            RunEventType::RunFailed,
            json!({"reason": message, "source": "gateway", "stage": "pre_execution"}),
        );
        self.sink.flush();
        HandlerOutcome {
            skip_subagent_failure: true,
            ..HandlerOutcome::failure(
                json!({"message": message, "subagent_id": self.sid}),
                message,
            )
        }
    }

    /// §10.8.5 / §10.8.6 (within the grace).
    fn finish_cancelled(&self, cancel: &CancelInfo, t: &Terminal) -> HandlerOutcome {
        let source = cancel.source.event_source();
        self.sink.emit(
            RunEventType::CancellationAcknowledged,
            json!({"reason": cancel.reason, "source": source, "cancellation_scope": "gateway"}),
        );
        self.sink.emit(
            RunEventType::RunCancelled,
            json!({"reason": cancel.reason, "source": source, "cancellation_scope": "gateway", "duration_ms": self.duration_ms()}),
        );
        let envelope = error_envelope(&cancel.reason);
        let metadata = self.terminal_metadata(t, Some(cancel));
        self.persist_terminal("cancelled", &envelope, Some(&cancel.reason), &metadata);
        HandlerOutcome::success(json!({
            "subagent_id": self.sid, "status": "cancelled", "output": envelope, "error": cancel.reason,
        }))
    }
}

/// A stream-format stdout: lines → collector → normalizer → live events.
///
/// The spec keeps the LAST 2,000 stream entries (runtime §3.4, providers §7:
/// "oldest dropped"). Rows cannot be taken back once they are live, so the
/// first `MAX_STREAM_EVENTS` lines are emitted as they arrive (a run under
/// the cap is fully live), and past the cap the newest `MAX_STREAM_EVENTS`
/// lines are held in `tail` (the oldest of them dropped) and emitted when
/// the stream ends: the final lines of a long run — its answer — are never
/// lost, and stored stream rows stay bounded (2 × the cap).
struct StreamState {
    collector: StreamJsonCollector,
    normalizer: Box<dyn StreamNormalizer + Send>,
    sink: EventSink,
    lines: usize,
    /// Normalized events of the lines past the cap, one entry per line.
    tail: std::collections::VecDeque<Vec<NormalizedEvent>>,
    dropped_lines: u64,
}

impl StreamState {
    fn new(normalizer: Box<dyn StreamNormalizer + Send>, sink: EventSink) -> StreamState {
        StreamState {
            collector: StreamJsonCollector::default(),
            normalizer,
            sink,
            lines: 0,
            tail: std::collections::VecDeque::new(),
            dropped_lines: 0,
        }
    }

    fn line(&mut self, raw: &str) {
        let events = self.normalizer.push_line(raw);
        self.lines += 1;
        if self.lines <= MAX_STREAM_EVENTS {
            self.emit(events);
            return;
        }
        self.tail.push_back(events);
        if self.tail.len() > MAX_STREAM_EVENTS {
            self.tail.pop_front();
            self.dropped_lines += 1;
        }
    }

    fn emit(&mut self, events: Vec<NormalizedEvent>) {
        for ev in events {
            if let NormalizedEvent::Run {
                event_type,
                payload,
            } = ev
            {
                self.sink.emit(event_type, payload);
            }
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        for entry in self.collector.append(chunk) {
            self.line(&entry.raw);
        }
    }

    /// Flushes the tail; returns whether any collector limit was hit.
    fn finish(&mut self) -> bool {
        let collector = std::mem::take(&mut self.collector);
        let (result, last) = collector.finalize();
        for entry in last {
            self.line(&entry.raw);
        }
        while let Some(events) = self.tail.pop_front() {
            self.emit(events);
        }
        let tail = self.normalizer.finish();
        self.emit(tail);
        if self.dropped_lines > 0 {
            self.sink.emit(
                RunEventType::System,
                json!({"kind": "stream_truncated", "message": format!("Stream event limit reached; {} earlier lines were not stored as events.", self.dropped_lines), "max_events": MAX_STREAM_EVENTS, "dropped_lines": self.dropped_lines}),
            );
        }
        result.any_truncated()
    }
}

fn is_stream(provider: ProviderId, plan: &RunPlan) -> bool {
    plan.output_format == RunOutputFormat::StreamJson
        || (provider == ProviderId::Codex
            && plan.output_format != RunOutputFormat::Text
            && plan.args.iter().any(|a| a == "--json"))
}

struct Attempt {
    process: ProcessResult,
    adapter: AdapterOutput,
    collector_truncated: bool,
    stream_events_truncated: bool,
}

async fn run_attempt(
    gw: &Gateway,
    provider: ProviderId,
    plan: &RunPlan,
    delivery: Delivery,
    run: &Arc<RunControl>,
) -> Attempt {
    let overrides: Vec<(String, Option<String>)> = plan
        .env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Some(v.replace("{WORKDIR}", &plan.cwd.to_string_lossy())),
            )
        })
        .collect();
    let spec = ProcessSpec {
        command: plan.command.clone(),
        args: delivery.args,
        stdin: delivery.stdin,
        cwd: plan.cwd.clone(),
        env: crate::child_env::child_env_from_process(Some(gw.paths.tmp_dir.as_path()), &overrides),
        timeout: Duration::from_millis(plan.timeout_ms),
        stop_grace: CANCEL_KILL_GRACE,
    };
    let streaming = is_stream(provider, plan);
    let mut state = StreamState::new(normalizer_for(provider), run.sink.clone());
    let run_for_spawn = Arc::clone(run);
    let process = run_process(
        &spec,
        run.stop_receiver(),
        &mut move |pid| run_for_spawn.set_pgid(Some(pid as i32)),
        &mut |chunk| {
            if streaming {
                state.feed(chunk)
            }
        },
    )
    .await;
    let mut collector_truncated = false;
    if streaming {
        collector_truncated = state.finish();
    }
    // No flush here: every way out of an attempt (terminal, cancel, retry
    // wait) flushes or leaves it to the 50 ms flusher, so the stream's last
    // rows and the terminal event share one outbox entry — one delivery and
    // one ack (three fsyncs) fewer between agent exit and the terminal row.
    let adapter = if streaming && provider == ProviderId::ClaudeCode {
        claude_stream_output(state.normalizer.summary())
    } else {
        parse_subagent_output(provider, plan.output_format, &process.stdout)
    };
    Attempt {
        process,
        adapter,
        collector_truncated,
        stream_events_truncated: state.dropped_lines > 0,
    }
}

/// The handler proper.
pub async fn handle(gw: &Gateway, job: &GatewayJobRow) -> HandlerOutcome {
    // Row 1.
    let payload = match SubagentRunPayload::parse(&job.payload) {
        Ok(p) => p,
        Err(e) => return HandlerOutcome::from_payload_error(&e),
    };
    let sid = payload.subagent_id.clone();
    // Row 2.
    let sub = match gw
        .client
        .from("subagents")
        .select("*")
        .eq("id", sid.as_str())
        .maybe_single()
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            return HandlerOutcome::cancelled_skip(
                json!({"message": "Subagent not found", "subagent_id": sid}),
                "Subagent not found",
            )
        }
        Err(e) => {
            return HandlerOutcome::cancelled_skip(
                json!({"message": "Subagent not found", "subagent_id": sid}),
                e.to_string(),
            )
        }
    };
    // Row 3.
    let assigned = sub.get("gateway_id").and_then(Value::as_str);
    if assigned != Some(gw.gateway_id.as_str()) {
        return HandlerOutcome::cancelled_skip(
            json!({"message": "Subagent is assigned to a different gateway", "subagent_id": sid,
                   "assigned_gateway_id": assigned, "gateway_id": gw.gateway_id}),
            "Subagent is assigned to a different gateway",
        );
    }
    // Row 4.
    let subagent_type = sub
        .get("subagent_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let adapter = cancel_adapter_for(&subagent_type);
    let provider = (adapter.runner == Some(Runner::Gateway))
        .then_some(adapter.adapter_id)
        .flatten()
        .and_then(ProviderId::parse);
    let Some(provider) = provider else {
        return HandlerOutcome::failure(
            json!({"message": "Unsupported subagent type", "subagent_type": subagent_type}),
            format!("Unsupported subagent type: {subagent_type}"),
        );
    };
    // Row 5.
    let input = sub.get("input").cloned().unwrap_or(Value::Null);
    let Some(prompt) = prompt_of(&input) else {
        return HandlerOutcome::failure(
            json!({"message": "Missing prompt in subagent input", "subagent_id": sid}),
            "Missing prompt in subagent input",
        );
    };
    // Rows 6–7.
    let install =
        crate::config::GatewayConfig::load(&gw.paths.config_path).map(|c| c.full_control_enabled);
    let control = gw
        .client
        .from("team_gateways")
        .select(ControlState::SEED_SELECT)
        .eq("id", gw.gateway_id.as_str())
        .maybe_single()
        .await
        .ok()
        .and_then(|row| ControlState::from_row(row.as_ref()));
    let (install, control) = match (install, control) {
        (Ok(i), Some(c)) => (i, c),
        _ => return HandlerOutcome::failure_message(MSG_CONTROL_STATE_UNAVAILABLE),
    };
    if let Err(message) =
        check_subagent_run_gateway_state(Some(&control), now_ms(), SubagentRunGate::Seed)
    {
        return HandlerOutcome::failure_message(message);
    }
    // Row 8.
    let raw_config = sub.get("config").cloned().unwrap_or_else(|| json!({}));
    let config = SubagentConfig::from_value(&raw_config);
    let (command, flags) = super::get().providers.command_and_flags(provider);
    let decision = resolve_full_control(
        &FullControlLayers {
            requested: config.full_control_requested,
            install_enabled: install,
            team_enabled: control.full_control_enabled,
            provider: full_control_support(provider, &flags),
        },
        FullControlWording::Seed,
    );
    tracing::info!(subagentId = %sid, requested = decision.requested, effective = decision.effective, "Resolved subagent full-control state");
    // Row 9.
    let sub_metadata = obj(sub.get("metadata").unwrap_or(&Value::Null));
    let previous_session = sub_metadata
        .get("session_id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if previous_session.is_some() && !spec(provider).supports_continuation {
        return HandlerOutcome::failure(
            json!({"message": "Subagent does not support continuation", "subagent_id": sid}),
            "Subagent provider does not support continuation",
        );
    }
    // §10.3.
    let run_id = resolve_run_id(
        payload.run_id.as_deref(),
        input.get("run_id").and_then(Value::as_str),
    )
    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let run_sequence = match sequence_of(&input) {
        Some(n) => n,
        None => allocate_sequence(gw, &sid).await,
    };
    let team_id = sub
        .get("team_id")
        .and_then(Value::as_str)
        .unwrap_or(&gw.team_id)
        .to_string();
    let start_metadata = obj(&json!({
        "schema_version": SUBAGENT_SCHEMA_VERSION, "runner": "gateway", "adapter_id": provider.as_str(),
        "subagent_type": subagent_type, "run_id": run_id, "run_sequence": run_sequence,
        "cancel_state": "none", "full_control_requested": decision.requested,
        "full_control_effective": decision.effective, "full_control_denied_reason": decision.denied_reason,
    }));
    let ids = RunIds {
        run_id: run_id.clone(),
        subagent_id: sid.clone(),
        team_id: team_id.clone(),
        gateway_id: gw.gateway_id.clone(),
    };
    let active = &super::get().active;

    // §9.6 step 1: pre-start cancel.
    let metadata_cancel = (sub_metadata.get("cancel_run_id").and_then(Value::as_str)
        == Some(run_id.as_str()))
    .then(|| {
        sub_metadata
            .get("cancel_reason")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("Cancelled")
            .to_string()
    });
    if let Some(reason) = metadata_cancel.or_else(|| active.take_pending(&run_id, &sid)) {
        return cancelled_before_start(
            gw,
            &ids,
            run_sequence,
            &prompt,
            start_metadata,
            sub_metadata,
            &reason,
        )
        .await;
    }

    // §10.4 step 2–3: the run row.
    let now = now_iso();
    let (mut inserted, unanswered) = retry_unanswered(gw, "POST /rest/v1/subagent_runs", || {
        gw.client
            .from("subagent_runs")
            .insert(json!({
                "id": run_id, "subagent_id": sid, "team_id": team_id, "gateway_id": gw.gateway_id,
                "run_sequence": run_sequence, "status": "running", "prompt": prompt, "started_at": now,
                "metadata": start_metadata,
            }))
            .select("id")
            .execute()
    })
    .await;
    // An unanswered earlier attempt that was applied: the conflicting row is
    // our own run (same id, subagent, gateway and started_at), so go on.
    if unanswered && inserted.as_ref().is_err_and(|e| e.is_unique_violation()) {
        let existing = gw
            .client
            .from("subagent_runs")
            .select("id,subagent_id,gateway_id,status,started_at")
            .eq("id", run_id.as_str())
            .maybe_single()
            .await;
        let ms = |v: Option<&str>| {
            v.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())
        };
        if let Ok(Some(row)) = existing {
            if row["subagent_id"].as_str() == Some(sid.as_str())
                && row["gateway_id"].as_str() == Some(gw.gateway_id.as_str())
                && row["status"] == "running"
                && ms(row["started_at"].as_str()) == ms(Some(now.as_str()))
            {
                inserted = Ok(vec![row]);
            }
        }
    }
    if let Err(e) = inserted {
        if e.is_unique_violation() {
            let active_run = newest_running_run(&gw.client, &sid, "id").await;
            match active_run {
                Err(_) => {
                    return HandlerOutcome::failure(
                        json!({"message": "Failed to resolve conflicting subagent run after insert conflict", "subagent_id": sid, "run_id": run_id}),
                        "Failed to resolve conflicting subagent run after insert conflict",
                    )
                }
                Ok(Some(r)) if r["id"].as_str() != Some(run_id.as_str()) => {
                    return HandlerOutcome::cancelled_skip(
                        json!({"message": "Skipped duplicate subagent job because another run is already active",
                               "subagent_id": sid, "run_id": run_id, "active_run_id": r["id"]}),
                        "Another subagent run is already active",
                    )
                }
                Ok(_) => {}
            }
        }
        return HandlerOutcome::failure(
            json!({"message": "Failed to create subagent run", "subagent_id": sid}),
            e.to_string(),
        );
    }

    // Step 4: register locally (consumes a late pending cancel).
    // The run's counter: shared with out-of-band writers, and after any
    // event a cancel job already wrote for this run id.
    let sink = super::get().sequences.sink(&gw.outbox, &ids, 0);
    let run = active.register(&run_id, &sid, &job.id, sink.clone());
    let outcome = run_registered(
        gw,
        job,
        &run,
        RunCtx {
            gw,
            sid: sid.clone(),
            run_id: run_id.clone(),
            provider,
            start_metadata,
            sub_metadata,
            sink,
            started: Instant::now(),
        },
        Registered {
            subagent_type,
            run_sequence,
            prompt,
            config,
            command,
            flags,
            decision,
            previous_session,
        },
    )
    .await;
    active.remove(&run_id);
    outcome
}

struct Registered {
    subagent_type: String,
    run_sequence: i64,
    prompt: String,
    config: SubagentConfig,
    command: String,
    flags: panorama_providers::flags::SupportedFlags,
    decision: panorama_protocol::full_control::FullControlDecision,
    previous_session: Option<String>,
}

async fn run_registered(
    gw: &Gateway,
    job: &GatewayJobRow,
    run: &Arc<RunControl>,
    mut ctx: RunCtx<'_>,
    r: Registered,
) -> HandlerOutcome {
    // Step 5: mark the subagent running.
    let mut sub_meta = ctx.sub_metadata.clone();
    sub_meta.insert("current_run_id".into(), json!(ctx.run_id));
    sub_meta.insert("current_run_sequence".into(), json!(r.run_sequence));
    let started_at = now_iso();
    let (marked, _) = retry_unanswered(gw, "PATCH /rest/v1/subagents", || {
        gw.client
            .from("subagents")
            .update(json!({"status": "running", "started_at": started_at, "metadata": sub_meta}))
            .eq("id", ctx.sid.as_str())
            .execute()
    })
    .await;
    if let Err(e) = marked {
        tracing::error!(error = %e, subagentId = %ctx.sid, "Failed to mark subagent as running");
        // The run row we created must not stay `running` (the job-failure
        // fallback only acts on a running subagent): fail it, with its
        // terminal event.
        let message = "Failed to mark subagent as running";
        ctx.sink.emit(
            RunEventType::RunFailed,
            json!({"reason": message, "source": "gateway_job_failure"}),
        );
        ctx.sink.flush();
        let mut metadata = ctx.start_metadata.clone();
        metadata.insert("last_run_at".into(), json!(now_iso()));
        metadata.insert("gateway_error".into(), json!(message));
        push(
            gw,
            OutboxWrite::Update {
                table: "subagent_runs".into(),
                filters: vec![
                    ("id".into(), format!("eq.{}", ctx.run_id)),
                    ("status".into(), "eq.running".into()),
                ],
                patch: json!({"status": "failed", "output": error_envelope(message), "error": message,
                              "completed_at": now_iso(), "metadata": metadata}),
            },
        );
        return HandlerOutcome::failure(
            json!({"message": "Failed to mark subagent as running", "subagent_id": ctx.sid, "run_id": ctx.run_id}),
            "Failed to mark subagent as running",
        );
    }
    ctx.sub_metadata = sub_meta;
    // Step 6.
    ctx.sink.emit(
        RunEventType::RunStarted,
        json!({"runner": "gateway", "adapter_id": ctx.provider.as_str(), "subagent_type": r.subagent_type,
               "run_id": ctx.run_id, "run_sequence": r.run_sequence}),
    );
    if r.decision.is_denied() {
        let message = r.decision.denial_message(FullControlWording::Seed);
        let overrides = obj(
            &json!({"full_control_requested": true, "full_control_effective": false, "full_control_denied_reason": message}),
        );
        return ctx.pre_execution_failure(&message, overrides);
    }
    let wd = match WorkDir::create(
        &gw.paths.work_dir,
        "subagents",
        &[
            ("subagent id", ctx.sid.as_str()),
            ("run id", ctx.run_id.as_str()),
        ],
    ) {
        Ok(wd) => wd,
        Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()),
    };
    let outcome = attempts(gw, job, run, &ctx, &r, &wd).await;
    wd.cleanup();
    outcome
}

async fn attempts(
    gw: &Gateway,
    job: &GatewayJobRow,
    run: &Arc<RunControl>,
    ctx: &RunCtx<'_>,
    r: &Registered,
    wd: &WorkDir,
) -> HandlerOutcome {
    let provider = ctx.provider;
    let mut config = r.config.clone();
    let mut run_context = RunContext {
        command: r.command.clone(),
        prompt: r.prompt.clone(),
        full_control: r.decision.effective,
        previous_session_id: r.previous_session.clone(),
        work_dir: wd.path.clone(),
    };
    let retry = RetryConfig::from_config(&config.raw);
    let max_attempts = retry.max_attempts.max(1);
    let mut terminal = Terminal {
        retry_max_attempts: max_attempts,
        ..Terminal::default()
    };
    let mut attempt: u32 = 1;
    let mut resume_fallback_used = false;
    loop {
        let plan = match build_subagent_plan(provider, &config, &run_context, &r.flags) {
            Ok(p) => p,
            Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()),
        };
        if let Err(e) = wd.write_files(&plan.files) {
            return ctx.pre_execution_failure(&e.to_string(), Map::new());
        }
        // A prompt too large for argv goes on stdin; what cannot is the
        // job's input error, so the provider's health is left alone.
        let delivery = match deliver_prompt(provider, &plan.args) {
            Ok(d) => d,
            Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()),
        };
        ctx.sink.emit(
            RunEventType::RunProgress,
            attempt_started_payload(attempt, max_attempts),
        );
        let a = run_attempt(gw, provider, &plan, delivery, run).await;
        terminal.command = Some(display_command(&plan));
        terminal.exit_code = a.process.exit_code;
        terminal.timed_out = a.process.timed_out;
        terminal.stdout_truncated = a.process.stdout_truncated || a.collector_truncated;
        terminal.stderr_truncated = a.process.stderr_truncated;
        terminal.stream_events_truncated = a.stream_events_truncated;
        terminal.output_format = Some(plan.output_format.as_str());
        terminal.parse_error = a.adapter.parse_error.clone();
        terminal.stderr = a.process.stderr.clone();
        terminal.adapter_metadata = a.adapter.metadata.clone();
        if let Some(cancel) = run.cancelled() {
            return ctx.finish_cancelled(&cancel, &terminal);
        }
        let process_error = a.process.failure_detail(plan.timeout_ms);
        let json_parse_failed =
            plan.output_format == RunOutputFormat::Json && a.adapter.parse_error.is_some();
        let parts: Vec<String> = [
            process_error.clone(),
            a.adapter.provider_error.clone(),
            json_parse_failed
                .then(|| a.adapter.parse_error.clone())
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let ok = parts.is_empty();
        let error_text = (!ok).then(|| parts.join(": "));
        // A resume of a conversation the CLI no longer has: start fresh, once.
        let resumed = provider == ProviderId::ClaudeCode
            && (config.resume_session_id.is_some() || run_context.previous_session_id.is_some());
        if !ok
            && resumed
            && !resume_fallback_used
            && format!("{}\n{}", a.process.stderr, a.process.stdout).contains(RESUME_NOT_FOUND)
        {
            resume_fallback_used = true;
            let session = config
                .resume_session_id
                .clone()
                .or(run_context.previous_session_id.clone());
            ctx.sink.emit(
                RunEventType::System,
                json!({"kind": "resume_fallback", "source": "gateway", "session_id": session,
                       "message": format!("Could not resume session {}: the provider has no such conversation. Starting a fresh session.", session.as_deref().unwrap_or(""))}),
            );
            config.resume_session_id = None;
            run_context.previous_session_id = None;
            continue;
        }
        let retry_decision = should_retry(
            &retry,
            attempt,
            plan.output_format,
            &AttemptOutcome {
                ok,
                timed_out: a.process.timed_out,
                parse_error: a.adapter.parse_error.as_deref(),
                error: error_text.as_deref(),
                stderr: &a.process.stderr,
                cancelled: false,
            },
        );
        if let Some((reason, base_delay)) = retry_decision {
            let jitter = 0.7 + 0.6 * ((uuid::Uuid::new_v4().as_u128() % 10_000) as f64 / 10_000.0);
            let delay_ms = (base_delay as f64 * jitter).round() as u64;
            ctx.sink.emit(
                RunEventType::RunProgress,
                retry_scheduled_payload(attempt, max_attempts, reason, delay_ms),
            );
            terminal.retry_reasons.push(reason.as_str());
            let mut stop = run.stop_receiver();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = stop.wait_for(|v| v.is_some()) => {}
            }
            if let Some(cancel) = run.cancelled() {
                return ctx.finish_cancelled(&cancel, &terminal);
            }
            attempt += 1;
            terminal.retry_count = attempt - 1;
            continue;
        }
        terminal.retry_count = attempt - 1;
        let detail = error_text.clone();
        if !a.process.input_too_large {
            super::providers::record_run_outcome(
                gw,
                provider,
                ok,
                detail.as_deref(),
                "subagent_run",
                &job.id,
                Some(&ctx.run_id),
            )
            .await;
        }
        if ok {
            ctx.sink.emit(
                RunEventType::RunCompleted,
                json!({"duration_ms": ctx.duration_ms(), "parse_error": terminal.parse_error, "retry_count": terminal.retry_count}),
            );
            let output = serde_json::to_value(&a.adapter.output).unwrap_or(Value::Null);
            let metadata = ctx.terminal_metadata(&terminal, None);
            ctx.persist_terminal("completed", &output, None, &metadata);
            return HandlerOutcome::success(json!({
                "subagent_id": ctx.sid, "status": "completed", "output": output, "error": null,
            }));
        }
        let message = provider_failure_message(provider, detail.as_deref());
        ctx.sink.emit(
            RunEventType::RunFailed,
            json!({"reason": message, "duration_ms": ctx.duration_ms(), "parse_error": terminal.parse_error}),
        );
        let metadata = ctx.terminal_metadata(&terminal, None);
        ctx.persist_terminal(
            "failed",
            &error_envelope(&message),
            Some(&message),
            &metadata,
        );
        // Terminal state is persisted: the job-failure fallback has nothing to do.
        return HandlerOutcome {
            skip_subagent_failure: true,
            ..HandlerOutcome::failure(
                json!({"subagent_id": ctx.sid, "status": "failed", "output": null, "error": message}),
                message.clone(),
            )
        };
    }
}

/// §10.8.4, plus the fix of §17.6: the `subagents` row also moves to `cancelled`.
async fn cancelled_before_start(
    gw: &Gateway,
    ids: &RunIds,
    run_sequence: i64,
    prompt: &str,
    start_metadata: Map<String, Value>,
    sub_metadata: Map<String, Value>,
    reason: &str,
) -> HandlerOutcome {
    let now = now_iso();
    let envelope = error_envelope(reason);
    let mut metadata = start_metadata;
    metadata.extend(obj(&json!({
        "cancel_reason": reason, "cancel_support": "gateway", "cancel_state": "acknowledged",
        "cancellation_scope": "gateway", "cancelled": true, "last_run_at": now,
    })));
    let inserted = gw
        .client
        .from("subagent_runs")
        .insert(json!({
            "id": ids.run_id, "subagent_id": ids.subagent_id, "team_id": ids.team_id, "gateway_id": ids.gateway_id,
            "run_sequence": run_sequence, "status": "cancelled", "prompt": prompt, "started_at": now,
            "completed_at": now, "output": envelope, "error": reason, "metadata": metadata,
        }))
        .execute()
        .await;
    let row_existed = inserted.is_err();
    if let Err(e) = inserted {
        // The run row may already exist (accepted upstream): cancel it in place.
        let updated = if e.is_unique_violation() {
            gw.client
                .from("subagent_runs")
                .update(json!({"status": "cancelled", "completed_at": now, "output": envelope, "error": reason, "metadata": metadata}))
                .eq("id", ids.run_id.as_str())
                .eq("status", "running")
                .select("id")
                .execute()
                .await
                .ok()
                .filter(|rows| !rows.is_empty())
        } else {
            None
        };
        if updated.is_none() {
            return HandlerOutcome::failure(
                json!({"message": "Failed to record cancelled run", "subagent_id": ids.subagent_id}),
                e.to_string(),
            );
        }
    }
    let mut sub_meta = sub_metadata;
    sub_meta.extend(obj(&json!({
        "cancel_run_id": null, "cancel_requested_at": null, "cancel_reason": reason,
        "cancel_state": "acknowledged", "cancel_support": "gateway", "cancellation_scope": "gateway",
        "cancelled": true, "last_run_at": now, "current_run_id": ids.run_id, "current_run_sequence": run_sequence,
    })));
    push(
        gw,
        OutboxWrite::Update {
            table: "subagents".into(),
            filters: vec![
                ("id".into(), format!("eq.{}", ids.subagent_id)),
                (
                    "status".into(),
                    "not.in.(completed,failed,cancelled)".into(),
                ),
            ],
            patch: json!({"status": "cancelled", "output": envelope, "error": reason, "completed_at": now, "metadata": sub_meta}),
        },
    );
    let events = vec![
        (
            RunEventType::CancellationRequested,
            json!({"reason": reason, "source": "pending_cancel", "stage": "before_start"}),
        ),
        (
            RunEventType::CancellationAcknowledged,
            json!({"reason": reason, "source": "gateway", "cancellation_scope": "gateway"}),
        ),
        (
            RunEventType::RunCancelled,
            json!({"reason": reason, "source": "gateway", "cancellation_scope": "gateway"}),
        ),
    ];
    if row_existed {
        // The run existed upstream and may have events (e.g. the cancel
        // job's): after them, from this process's counter or the hub's.
        if let Err(e) = push_out_of_band(gw, ids, events).await {
            tracing::error!(error = %e, runId = %ids.run_id, "Failed to queue the events of a run cancelled before start");
        }
    } else {
        // We just created the run row: it has no events but ours.
        super::get().sequences.push_from(&gw.outbox, ids, 0, events);
    }
    HandlerOutcome::success(json!({
        "subagent_id": ids.subagent_id, "status": "cancelled", "output": envelope, "error": reason,
    }))
}
