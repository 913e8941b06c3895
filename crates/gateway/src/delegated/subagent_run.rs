//! `subagent_run` (control-plane §8.3, §10): pre-checks, run identity, run
//! row, live events, attempts with retries, terminal persistence through the
//! outbox, and the job-failure fallback (§10.10).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use panorama_protocol::accepted::{
    changed_before_start, check_accepted_subagent, run_generation, verify_accepted_run,
    AcceptedRunRead, RunGeneration, MSG_SUBAGENT_CHANGED,
};
use panorama_protocol::cancel::{cancel_adapter_for, Runner};
use panorama_protocol::full_control::{
    resolve_full_control, FullControlLayers, FullControlWording,
};
use panorama_protocol::jobs::{
    complete_job, handler_threw, is_canonical_uuid, resolve_run_id, HandlerOutcome, JobCompletion,
    SubagentRunPayload,
};
use panorama_protocol::rows::SubagentRow;
use panorama_protocol::shell_gate::{
    check_subagent_run_gateway_state, ControlState, SubagentRunGate, MSG_CONTROL_STATE_UNAVAILABLE,
};
use panorama_protocol::status::{JobType, RunEventType, SubagentRunStatus};
use panorama_protocol::subagent::{provider_failure_message, SUBAGENT_SCHEMA_VERSION};
use panorama_providers::argv::{
    build_subagent_plan, display_command, full_control_support, RunPlan,
};
use panorama_providers::collector::{StreamJsonCollector, MAX_STREAM_EVENTS};
use panorama_providers::config::{RunContext, RunOutputFormat, SubagentConfig};
use panorama_providers::delivery::{deliver_prompt, Delivery};
use panorama_providers::normalize::{normalizer_for, NormalizedEvent, StreamNormalizer};
use panorama_providers::output::{claude_stream_output, parse_plan_output, AdapterOutput};
use panorama_providers::registry::spec;
use panorama_providers::retry::{
    attempt_started_payload, retry_scheduled_payload, should_retry, AttemptOutcome, RetryConfig,
};
use panorama_providers::ProviderId;
use serde_json::{json, Map, Value};

use super::accepted_run::{accepted_run, closed_upstream, start_accepted_run};
use super::active::{CancelInfo, RunControl};
use super::agent_process::{spec_for_plan, AgentIo, AgentLauncher, ChildProcess};
use super::events::{EventSink, RunIds};
use super::out_of_band::push_out_of_band;
use super::process::{ProcessResult, CANCEL_KILL_GRACE};
use super::workdir::WorkDir;
use crate::control_plane::retry_unanswered;
use crate::job_context::JobContext;
use crate::outbox::OutboxWrite;
use crate::port::writes::{self, error_output as error_envelope, TerminalRows};
use crate::port::{NewRun, PortError, StatusGuard};
use crate::timestamp::{now_iso, now_ms};

/// Marker of a failed `--resume` in Claude's output.
pub const RESUME_NOT_FOUND: &str = "No conversation found";
/// Cap of the raw stderr kept in run metadata.
const METADATA_STDERR_CHARS: usize = 200_000;

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The whole job: handler, then the job-failure fallback when it applies.
pub async fn run_job(gw: &JobContext, job_id: &str, payload: &SubagentRunPayload) -> JobCompletion {
    run_job_with(gw, &ChildProcess, job_id, payload).await
}

/// [`run_job`] with the agent started by `agent` (tests script it).
pub async fn run_job_with(
    gw: &JobContext,
    agent: &dyn AgentLauncher,
    job_id: &str,
    payload: &SubagentRunPayload,
) -> JobCompletion {
    let completion = match AssertUnwindSafe(handle(gw, agent, job_id, payload))
        .catch_unwind()
        .await
    {
        Ok(outcome) => complete_job(&JobType::SubagentRun, outcome),
        Err(panic) => {
            let message = crate::error::panic_message(panic.as_ref());
            tracing::error!(jobId = %job_id, error = %message, "Gateway job processing failed");
            handler_threw(&JobType::SubagentRun, &message)
        }
    };
    if completion.run_subagent_failure_fallback {
        let error = completion
            .error
            .clone()
            .unwrap_or_else(|| "Gateway job failed".into());
        fail_subagent_run(gw, &payload.subagent_id, &error).await;
    }
    completion
}

/// §10.10 `failSubagentRun`. Acts only on a subagent that is `running`
/// (an idle subagent is never marked failed).
pub async fn fail_subagent_run(gw: &JobContext, sid: &str, error: &str) {
    // Reads are retried while the hub does not answer: giving up here would
    // leave the run and the subagent `running` with nobody to finish them.
    let (sub, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagents", || {
        gw.control.subagent(sid)
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
    if !sub.status.is_running() {
        return;
    }
    let now = now_iso();
    let mut metadata = obj(&sub.metadata);
    metadata.extend(obj(&json!({
        "schema_version": SUBAGENT_SCHEMA_VERSION, "runner": "gateway",
        "subagent_type": sub.subagent_type, "last_run_at": now, "gateway_error": error,
    })));
    let patch = json!({"status": "failed", "error": error, "output": error_envelope(error),
                       "completed_at": now, "metadata": metadata});
    // Our own queued writes for this run go first, so its status is current.
    gw.outbox.flush(Duration::from_secs(2)).await;
    let (run, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagent_runs", || {
        gw.control.newest_running_run(sid)
    })
    .await;
    if let Err(e) = &run {
        tracing::error!(error = %e, subagentId = %sid, "Failed to load the running run after gateway error");
    }
    if let Ok(Some(run)) = run {
        // The terminal event first, then the row (GUARANTEES: terminal
        // state after the run's last event). Its sequence comes from the
        // run's counter, or from the hub once it answers: never a guess.
        if let Some(gateway_id) = sub.gateway_id.as_deref() {
            let ids = RunIds {
                run_id: run.id.clone(),
                subagent_id: sid.to_string(),
                team_id: team_of(gw, &sub),
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
                tracing::error!(error = %e, runId = %run.id, "Failed to queue the run_failed event of a failed job");
            }
        }
        push(gw, writes::run_update_if_running(&run.id, patch.clone()));
    }
    push(
        gw,
        writes::subagent_update(sid, StatusGuard::Running, patch),
    );
}

/// The subagent's team (the gateway's when the row has none).
pub(super) fn team_of(gw: &JobContext, sub: &SubagentRow) -> String {
    if sub.team_id.is_empty() {
        gw.team_id.clone()
    } else {
        sub.team_id.clone()
    }
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

fn push(gw: &JobContext, write: OutboxWrite) {
    let what = write.describe();
    if let Err(e) = gw.outbox.push(write) {
        tracing::error!(error = %e, write = %what, "Failed to queue subagent state update");
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

/// The next run sequence of a seed run: the control plane's allocator, else
/// the highest sequence + 1 (1 for a first run).
async fn allocate_sequence(gw: &JobContext, sid: &str) -> i64 {
    match gw.control.allocate_run_sequence(sid).await {
        Ok(Some(n)) => return n,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "allocate_subagent_run_sequence failed; using max + 1")
        }
    }
    gw.control
        .highest_run_sequence(sid)
        .await
        .ok()
        .flatten()
        .map_or(1, |n| n + 1)
}

/// Everything a run's finalization needs.
struct RunCtx<'a> {
    gw: &'a JobContext,
    agent: &'a dyn AgentLauncher,
    generation: RunGeneration,
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
    /// The final attempt's `resource_usage` (contain::ResourceUsage).
    resource_usage: Value,
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
        if !t.resource_usage.is_null() {
            term.insert("resource_usage".into(), t.resource_usage.clone());
        }
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

    /// Terminal row updates of this run and its subagent (both `running`)
    /// through the outbox, after the events. The subagent's metadata takes
    /// `sub_metadata` when given, else the run's terminal keys.
    fn persist_terminal(
        &self,
        (status, output, error): (&str, &Value, Option<&str>),
        run_metadata: &Map<String, Value>,
        sub_metadata: Option<&Map<String, Value>>,
    ) {
        let mut sub_meta = self.sub_metadata.clone();
        sub_meta.extend(sub_metadata.unwrap_or(run_metadata).clone());
        let rows = TerminalRows {
            subagent_id: &self.sid,
            run_id: &self.run_id,
            status,
            output,
            error,
            completed_at: &now_iso(),
            run_metadata,
            sub_metadata: &sub_meta,
            subagent_guard: StatusGuard::Running,
        };
        fsyncing(|| {
            self.sink.flush();
            for write in writes::terminal(self.generation, &rows) {
                push(self.gw, write);
            }
        });
    }

    /// Later generation: the run's status on the control plane right before
    /// its terminal write. `None` while it is still `running` (or when the
    /// control plane cannot say: then the conditional terminal write decides).
    async fn closed_upstream(&self) -> Option<String> {
        if self.generation != RunGeneration::Accepted {
            return None;
        }
        closed_upstream(self.gw, &self.run_id).await
    }

    /// The control plane ended the run while the agent ran: its rows are
    /// left as the control plane wrote them, and the event log is closed.
    fn stand_down(&self, upstream: &str) -> HandlerOutcome {
        tracing::info!(runId = %self.run_id, status = upstream, "Accepted run was ended by the control plane; not overwriting it");
        if upstream == "cancelled" {
            let reason = "Subagent run was cancelled by the control plane";
            self.sink.emit(
                RunEventType::RunCancelled,
                json!({"reason": reason, "source": "control_plane", "duration_ms": self.duration_ms()}),
            );
            self.sink.flush();
            return HandlerOutcome::success(json!({
                "subagent_id": self.sid, "status": "cancelled", "output": error_envelope(reason), "error": reason,
            }));
        }
        let message = format!("Accepted subagent run is {upstream}");
        self.sink.flush();
        HandlerOutcome::cancelled_skip(
            json!({"message": "Accepted subagent run is no longer active", "subagent_id": self.sid,
                   "run_id": self.run_id, "run_status": upstream}),
            message,
        )
    }

    /// §10.8.3: a failure after `run_started` (denial, plan error).
    async fn pre_execution_failure(
        &self,
        message: &str,
        overrides: Map<String, Value>,
    ) -> HandlerOutcome {
        if let Some(upstream) = self.closed_upstream().await {
            return self.stand_down(&upstream);
        }
        let mut metadata = self.start_metadata.clone();
        metadata.extend(overrides.clone());
        metadata.insert("last_run_at".into(), json!(now_iso()));
        let envelope = error_envelope(message);
        self.persist_terminal(
            ("failed", &envelope, Some(message)),
            &metadata,
            Some(&overrides),
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
    async fn finish_cancelled(&self, cancel: &CancelInfo, t: &Terminal) -> HandlerOutcome {
        if let Some(upstream) = self.closed_upstream().await {
            return self.stand_down(&upstream);
        }
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
        let end = ("cancelled", &envelope, Some(cancel.reason.as_str()));
        self.persist_terminal(end, &metadata, None);
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
    gw: &JobContext,
    agent: &dyn AgentLauncher,
    provider: ProviderId,
    plan: &RunPlan,
    delivery: Delivery,
    run: &Arc<RunControl>,
) -> Attempt {
    let mut spec = spec_for_plan(plan, &gw.paths.tmp_dir, CANCEL_KILL_GRACE);
    spec.args = delivery.args;
    spec.stdin = delivery.stdin;
    let streaming = is_stream(provider, plan);
    let mut state = StreamState::new(normalizer_for(provider), run.sink.clone());
    let run_for_spawn = Arc::clone(run);
    let io = AgentIo {
        stop: run.stop_receiver(),
        on_spawn: &mut move |pid| run_for_spawn.set_pgid(Some(pid as i32)),
        on_stdout: &mut |chunk| {
            if streaming {
                state.feed(chunk)
            }
        },
    };
    let process = agent.run(&spec, io).await;
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
        parse_plan_output(plan, &process.stdout)
    };
    Attempt {
        process,
        adapter,
        collector_truncated,
        stream_events_truncated: state.dropped_lines > 0,
    }
}

/// The handler proper. Row 1 (the payload names a subagent) was checked
/// when the job was decoded.
pub async fn handle(
    gw: &JobContext,
    agent: &dyn AgentLauncher,
    job_id: &str,
    payload: &SubagentRunPayload,
) -> HandlerOutcome {
    let sid = payload.subagent_id.clone();
    // Row 2: the row, read once and typed.
    let sub = match gw.control.subagent(&sid).await {
        Ok(Some(s)) => s,
        Err(PortError::Decode { message, .. }) => {
            return HandlerOutcome::cancelled_skip(
                json!({"message": "Subagent not found", "subagent_id": sid}),
                format!("The subagent row could not be read: {message}"),
            )
        }
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
    let assigned = sub.gateway_id.as_deref();
    if assigned != Some(gw.gateway_id.as_str()) {
        return HandlerOutcome::cancelled_skip(
            json!({"message": "Subagent is assigned to a different gateway", "subagent_id": sid,
                   "assigned_gateway_id": assigned, "gateway_id": gw.gateway_id}),
            "Subagent is assigned to a different gateway",
        );
    }
    // Which generation: did the control plane accept this run already?
    let payload_run_id = payload
        .run_id
        .as_deref()
        .map(str::trim)
        .filter(|id| is_canonical_uuid(id))
        .map(str::to_string);
    let accepted_read = match &payload_run_id {
        Some(run_id) => Some(accepted_run(gw, run_id).await),
        None => None,
    };
    let generation = run_generation(
        payload_run_id.as_deref(),
        &sub,
        matches!(accepted_read, Some(AcceptedRunRead::Found(_))),
    );
    if generation == RunGeneration::Accepted {
        // Rows 3a–3b.
        if let Err(outcome) =
            check_accepted_subagent(&sub, payload_run_id.as_deref().unwrap_or_default())
        {
            return outcome;
        }
    }
    tracing::info!(subagentId = %sid, generation = ?generation, "Subagent run job");
    // Row 4.
    let subagent_type = sub.subagent_type.clone();
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
    let input = sub.input.clone().unwrap_or(Value::Null);
    let Some(prompt) = prompt_of(&input) else {
        return HandlerOutcome::failure(
            json!({"message": "Missing prompt in subagent input", "subagent_id": sid}),
            "Missing prompt in subagent input",
        );
    };
    // Rows 6–7.
    let install = crate::config::install_full_control(&gw.paths.config_path);
    let control = gw
        .control
        .gateway_row(ControlState::SEED_SELECT)
        .await
        .ok()
        .and_then(|row| ControlState::from_row(row.as_ref()));
    let Some(control) = control else {
        return HandlerOutcome::failure_message(MSG_CONTROL_STATE_UNAVAILABLE);
    };
    if let Err(message) =
        check_subagent_run_gateway_state(Some(&control), now_ms(), SubagentRunGate::Seed)
    {
        return HandlerOutcome::failure_message(message);
    }
    // Row 8.
    let raw_config = sub.config.clone();
    let config = SubagentConfig::from_value(&raw_config);
    let (command, flags) = gw.delegated.providers.command_and_flags(provider);
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
    let sub_metadata = obj(&sub.metadata);
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
    let run_sequence = match (generation, &accepted_read) {
        (RunGeneration::Accepted, Some(read)) => {
            match verify_accepted_run(&sid, &run_id, sequence_of(&input), &prompt, read) {
                Ok(n) => n,
                // A cancel recorded for this still-running run is applied
                // even when the job would not pass the start checks: the
                // run never starts either way, and this way it ends.
                Err(outcome) => match read {
                    AcceptedRunRead::Found(run)
                        if sub_metadata.get("cancel_run_id").and_then(Value::as_str)
                            == Some(run_id.as_str())
                            && run.subagent_id == sid
                            && run.status == Some(SubagentRunStatus::Running) =>
                    {
                        run.run_sequence.unwrap_or_default()
                    }
                    _ => return outcome,
                },
            }
        }
        _ => match sequence_of(&input) {
            Some(n) => n,
            None => allocate_sequence(gw, &sid).await,
        },
    };
    let team_id = team_of(gw, &sub);
    let mut start_metadata = obj(&json!({
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
    let active = &gw.delegated.active;

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
            generation,
            &ids,
            run_sequence,
            &prompt,
            start_metadata,
            sub_metadata,
            &reason,
        )
        .await;
    }

    if generation == RunGeneration::Accepted {
        // §10.4 "later" step 3: mark the accepted run started, only if it is
        // still this subagent's running run.
        let current = match &accepted_read {
            Some(AcceptedRunRead::Found(run)) => obj(&run.metadata),
            _ => Map::new(),
        };
        match start_accepted_run(gw, &sid, &run_id, current, &start_metadata).await {
            // The run's metadata from here on: the control plane's keys
            // with ours over them (the direct terminal writes replace it).
            Ok(merged) => start_metadata = merged,
            Err(outcome) => return outcome,
        }
    } else if let Err(outcome) =
        insert_seed_run(gw, &ids, run_sequence, &prompt, &start_metadata).await
    {
        return outcome;
    }
    run_accepted_or_inserted(
        gw,
        job_id,
        RunCtx {
            gw,
            agent,
            generation,
            sid: sid.clone(),
            run_id: run_id.clone(),
            provider,
            start_metadata,
            sub_metadata,
            sink: gw.delegated.sequences.sink(&gw.outbox, &ids, 0),
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
    .await
}

/// §10.4 seed steps 2–3: the run row.
async fn insert_seed_run(
    gw: &JobContext,
    ids: &RunIds,
    run_sequence: i64,
    prompt: &str,
    start_metadata: &Map<String, Value>,
) -> Result<(), HandlerOutcome> {
    let (sid, run_id) = (&ids.subagent_id, &ids.run_id);
    let now = now_iso();
    let row = new_run(ids, run_sequence, prompt, &now, start_metadata.clone());
    let (mut inserted, unanswered) =
        retry_unanswered(&gw.shutdown, "POST /rest/v1/subagent_runs", || {
            gw.control.insert_run(&row)
        })
        .await;
    // An unanswered earlier attempt that was applied: the conflicting row is
    // our own run (same id, subagent, gateway and started_at), so go on.
    if unanswered && inserted.as_ref().is_err_and(|e| e.is_unique_violation()) {
        let ms = |v: Option<&str>| {
            v.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())
        };
        if let Ok(Some(existing)) = gw.control.run(run_id).await {
            if existing.subagent_id == *sid
                && existing.gateway_id.as_deref() == Some(gw.gateway_id.as_str())
                && existing.status == Some(SubagentRunStatus::Running)
                && ms(existing.started_at.as_deref()) == ms(Some(now.as_str()))
            {
                inserted = Ok(());
            }
        }
    }
    if let Err(e) = inserted {
        if e.is_unique_violation() {
            match gw.control.newest_running_run(sid).await {
                Err(_) => {
                    return Err(HandlerOutcome::failure(
                        json!({"message": "Failed to resolve conflicting subagent run after insert conflict", "subagent_id": sid, "run_id": run_id}),
                        "Failed to resolve conflicting subagent run after insert conflict",
                    ))
                }
                Ok(Some(r)) if r.id != *run_id => {
                    return Err(HandlerOutcome::cancelled_skip(
                        json!({"message": "Skipped duplicate subagent job because another run is already active",
                               "subagent_id": sid, "run_id": run_id, "active_run_id": r.id}),
                        "Another subagent run is already active",
                    ))
                }
                Ok(_) => {}
            }
        }
        return Err(HandlerOutcome::failure(
            json!({"message": "Failed to create subagent run", "subagent_id": sid}),
            e.to_string(),
        ));
    }
    Ok(())
}

/// The seed's run row, `running` from `started_at`.
fn new_run(
    ids: &RunIds,
    run_sequence: i64,
    prompt: &str,
    started_at: &str,
    metadata: Map<String, Value>,
) -> NewRun {
    NewRun {
        id: ids.run_id.clone(),
        subagent_id: ids.subagent_id.clone(),
        team_id: ids.team_id.clone(),
        gateway_id: ids.gateway_id.clone(),
        run_sequence,
        status: "running".into(),
        prompt: prompt.to_string(),
        started_at: started_at.to_string(),
        completed_at: None,
        output: None,
        error: None,
        metadata,
    }
}

/// §10.4 step 4 onwards: register the run locally (consumes a late pending
/// cancel), run it, and unregister it.
async fn run_accepted_or_inserted(
    gw: &JobContext,
    job_id: &str,
    ctx: RunCtx<'_>,
    r: Registered,
) -> HandlerOutcome {
    let active = &gw.delegated.active;
    let run_id = ctx.run_id.clone();
    // The run's counter: shared with out-of-band writers, and after any
    // event a cancel job already wrote for this run id.
    let run = active.register(&run_id, &ctx.sid, job_id, ctx.sink.clone());
    let outcome = run_registered(gw, job_id, &run, ctx, r).await;
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
    gw: &JobContext,
    job_id: &str,
    run: &Arc<RunControl>,
    mut ctx: RunCtx<'_>,
    r: Registered,
) -> HandlerOutcome {
    // Step 5: mark the subagent running.
    let mut sub_meta = ctx.sub_metadata.clone();
    sub_meta.insert("current_run_id".into(), json!(ctx.run_id));
    sub_meta.insert("current_run_sequence".into(), json!(r.run_sequence));
    let started_at = now_iso();
    let guard = match ctx.generation {
        RunGeneration::Seed => StatusGuard::Any,
        // §10.4 "later" step 4: a compare-and-set on `status=running`.
        RunGeneration::Accepted => StatusGuard::Running,
    };
    let (marked, _) = retry_unanswered(&gw.shutdown, "PATCH /rest/v1/subagents", || {
        gw.control.update_subagent(
            &ctx.sid,
            guard.clone(),
            json!({"status": "running", "started_at": started_at, "metadata": sub_meta}),
        )
    })
    .await;
    if ctx.generation == RunGeneration::Accepted && matches!(marked, Ok(false)) {
        return changed_before_start(MSG_SUBAGENT_CHANGED, &ctx.sid, &ctx.run_id);
    }
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
            writes::run_update_if_running(
                &ctx.run_id,
                json!({"status": "failed", "output": error_envelope(message), "error": message,
                       "completed_at": now_iso(), "metadata": metadata}),
            ),
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
        return ctx.pre_execution_failure(&message, overrides).await;
    }
    // One stable cwd per subagent, not per run (runtime.md §2.1 says
    // `<subagent_id>/<run_id>`): Claude Code and Gemini CLI file their saved
    // sessions under the working directory, so `--resume` of the previous
    // run only finds the conversation from the same path. Runs of one
    // subagent never overlap; the dir is still removed after each run.
    let wd = match WorkDir::create(
        &gw.paths.work_dir,
        "subagents",
        &[
            ("subagent id", ctx.sid.as_str()),
            (
                "session dir",
                panorama_providers::config::SUBAGENT_SESSION_DIR,
            ),
        ],
    ) {
        Ok(wd) => wd,
        Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()).await,
    };
    let outcome = attempts(gw, job_id, run, &ctx, &r, &wd).await;
    wd.cleanup();
    outcome
}

async fn attempts(
    gw: &JobContext,
    job_id: &str,
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
        ..RunContext::with_host_facts()
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
            Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()).await,
        };
        if let Err(e) = wd.write_files(&plan.files) {
            return ctx.pre_execution_failure(&e.to_string(), Map::new()).await;
        }
        // A prompt too large for argv goes on stdin; what cannot is the
        // job's input error, so the provider's health is left alone.
        let delivery = match deliver_prompt(provider, &plan.args) {
            Ok(d) => d,
            Err(e) => return ctx.pre_execution_failure(&e.to_string(), Map::new()).await,
        };
        ctx.sink.emit(
            RunEventType::RunProgress,
            attempt_started_payload(attempt, max_attempts),
        );
        let a = run_attempt(gw, ctx.agent, provider, &plan, delivery, run).await;
        terminal.command = Some(display_command(&plan));
        terminal.exit_code = a.process.exit_code;
        terminal.timed_out = a.process.timed_out;
        terminal.stdout_truncated = a.process.stdout_truncated || a.collector_truncated;
        terminal.stderr_truncated = a.process.stderr_truncated;
        terminal.stream_events_truncated = a.stream_events_truncated;
        terminal.output_format = Some(plan.output_format.as_str());
        // A cancelled run stopped before its result: no parse error to report.
        terminal.parse_error = a
            .adapter
            .parse_error
            .clone()
            .filter(|_| run.cancelled().is_none());
        terminal.stderr = a.process.stderr.clone();
        terminal.adapter_metadata = a.adapter.metadata.clone();
        terminal.resource_usage = a
            .process
            .resource_usage
            .as_ref()
            .map_or(Value::Null, |u| u.to_value());
        if let Some(cancel) = run.cancelled() {
            return ctx.finish_cancelled(&cancel, &terminal).await;
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
                return ctx.finish_cancelled(&cancel, &terminal).await;
            }
            attempt += 1;
            terminal.retry_count = attempt - 1;
            continue;
        }
        terminal.retry_count = attempt - 1;
        let detail = error_text.clone();
        // A job stopped at its resource limit, or one whose input was too
        // large, says nothing about the provider.
        if a.process.limit_hit.is_none() && !a.process.input_too_large {
            super::run_outcome::record_run_outcome(
                gw,
                provider,
                ok,
                detail.as_deref(),
                "subagent_run",
                job_id,
                Some(&ctx.run_id),
            );
        }
        if let Some(upstream) = ctx.closed_upstream().await {
            return ctx.stand_down(&upstream);
        }
        let failure = (!ok).then(|| match a.process.limit_hit {
            Some(hit) => hit.message(),
            None => provider_failure_message(provider, detail.as_deref()),
        });
        let (event, payload) = match &failure {
            None => (
                RunEventType::RunCompleted,
                json!({"duration_ms": ctx.duration_ms(), "parse_error": terminal.parse_error, "retry_count": terminal.retry_count}),
            ),
            Some(message) => (
                RunEventType::RunFailed,
                json!({"reason": message, "duration_ms": ctx.duration_ms(), "parse_error": terminal.parse_error}),
            ),
        };
        // The outcome is decided: a cancel that came in since the process
        // ended (the await above can take a while) still wins; one that
        // comes later finds no active run and, with the terminal event
        // sequenced under the same lock, loses the race cleanly.
        if let Some(cancel) = gw.delegated.active.settle(run, || {
            ctx.sink.emit(event, payload);
        }) {
            return ctx.finish_cancelled(&cancel, &terminal).await;
        }
        let Some(message) = failure else {
            let output = serde_json::to_value(&a.adapter.output).unwrap_or(Value::Null);
            let metadata = ctx.terminal_metadata(&terminal, None);
            ctx.persist_terminal(("completed", &output, None), &metadata, None);
            return HandlerOutcome::success(json!({
                "subagent_id": ctx.sid, "status": "completed", "output": output, "error": null,
                "resource_usage": terminal.resource_usage,
            }));
        };
        let metadata = ctx.terminal_metadata(&terminal, None);
        let envelope = error_envelope(&message);
        ctx.persist_terminal(("failed", &envelope, Some(&message)), &metadata, None);
        // Terminal state is persisted: the job-failure fallback has nothing to do.
        return HandlerOutcome {
            skip_subagent_failure: true,
            ..HandlerOutcome::failure(
                json!({"subagent_id": ctx.sid, "status": "failed", "output": null, "error": message, "resource_usage": terminal.resource_usage}),
                message.clone(),
            )
        };
    }
}

/// §10.8.4, plus the fix of §17.6: the `subagents` row also moves to
/// `cancelled`. Seed: the run row is inserted already cancelled (or, when it
/// exists, cancelled in place). Accepted: the run exists; its events go
/// first, then the finalize function (§10.4 "later" step 2).
#[allow(clippy::too_many_arguments)]
async fn cancelled_before_start(
    gw: &JobContext,
    generation: RunGeneration,
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
    let row_existed = match generation {
        RunGeneration::Accepted => true,
        RunGeneration::Seed => {
            let row = NewRun {
                status: "cancelled".into(),
                completed_at: Some(now.clone()),
                output: Some(envelope.clone()),
                error: Some(reason.to_string()),
                ..new_run(ids, run_sequence, prompt, &now, metadata.clone())
            };
            let inserted = gw.control.insert_run(&row).await;
            let row_existed = inserted.is_err();
            if let Err(e) = inserted {
                // The run row may already exist (accepted upstream): cancel it in place.
                let updated = e.is_unique_violation()
                    && gw
                        .control
                        .update_run_if_running(
                            &ids.run_id,
                            json!({"status": "cancelled", "completed_at": now, "output": envelope, "error": reason, "metadata": metadata}),
                        )
                        .await
                        .unwrap_or(false);
                if !updated {
                    return HandlerOutcome::failure(
                        json!({"message": "Failed to record cancelled run", "subagent_id": ids.subagent_id}),
                        e.to_string(),
                    );
                }
            }
            row_existed
        }
    };
    let mut sub_meta = sub_metadata;
    sub_meta.extend(obj(&json!({
        "cancel_run_id": null, "cancel_requested_at": null, "cancel_reason": reason,
        "cancel_state": "acknowledged", "cancel_support": "gateway", "cancellation_scope": "gateway",
        "cancelled": true, "last_run_at": now, "current_run_id": ids.run_id, "current_run_sequence": run_sequence,
    })));
    let rows = TerminalRows {
        subagent_id: &ids.subagent_id,
        run_id: &ids.run_id,
        status: "cancelled",
        output: &envelope,
        error: Some(reason),
        completed_at: &now,
        run_metadata: &metadata,
        sub_metadata: &sub_meta,
        subagent_guard: StatusGuard::NotTerminal,
    };
    let mut writes = writes::terminal(generation, &rows);
    if generation == RunGeneration::Seed {
        // The run row was written above; only the subagent's update is left.
        writes.remove(0);
        for write in writes.drain(..) {
            push(gw, write);
        }
    }
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
        gw.delegated.sequences.push_from(&gw.outbox, ids, 0, events);
    }
    // Accepted: the terminal write after the run's last event.
    for write in writes {
        push(gw, write);
    }
    HandlerOutcome::success(json!({
        "subagent_id": ids.subagent_id, "status": "cancelled", "output": envelope, "error": reason,
    }))
}

#[cfg(test)]
#[path = "subagent_run_tests.rs"]
mod tests;
