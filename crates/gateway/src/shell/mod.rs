//! Shell jobs: `shell_session` (runtime.md §5, control-plane §8.5) on real
//! pseudo-terminals, and `shell_exec` (§5.7, §8.6).
//!
//! The runtime owns one [`ShellSessions`] for the process lifetime and, per
//! job, builds a [`ShellContext`] with a [`ShellControlState`] backed by its
//! hub client, then calls [`handle_shell_session_job`] or
//! [`handle_shell_exec_job`] and maps the result with [`shell_outcome`].
//! Shutdown calls [`ShellSessions::close_all`]; an upgrade restart waits for
//! [`ShellSessions::running_count`] to reach 0.

pub mod buffer;
pub mod error;
pub mod exec;
pub mod gate;
pub mod session;
pub mod spawn;
pub mod terminal;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use panorama_protocol::jobs::{
    ShellExecJob, ShellSessionAction, ShellSessionJob, MSG_INVALID_SHELL_ACTION,
};
use panorama_protocol::remote_shell::ShellAccess;
use panorama_protocol::results::{MSG_SHELL_EXEC_JOB_CANCELLED, MSG_SHELL_JOB_CANCELLED};
use panorama_protocol::rows::TeamResourceRow;
use serde_json::{json, Value};

pub use error::{shell_outcome, ShellJobError};
pub use gate::{
    check_machine_control, check_resource, check_shell_gate, GateInputs, ShellGateKind,
    ShellIdentity,
};
pub use session::{Session, ShellSessions};
pub use spawn::{Clock, ShellSessionsConfig};

pub use panorama_protocol::secrets::MSG_SECRETS_OUTSIDE_VM;

/// What the shell handlers need from the control plane. The runtime
/// implements it with its hub client; every call is made fresh per job.
#[async_trait]
pub trait ShellControlState: Send + Sync {
    /// Re-reads `gateway_jobs.status` (§3.2.6): `true` only when it is now
    /// `cancelled` (a failed read counts as not cancelled).
    async fn job_cancelled(&self, job_id: &str) -> bool;

    /// Re-reads the install flag from `gateway.json` and loads the
    /// `team_gateways` control state (`full_control_enabled, status,
    /// last_seen_at, capabilities, vm_id`, by id and team). A failed load or
    /// a missing row is `control_state: None`; the implementation logs
    /// `Failed to load gateway control state`. See
    /// [`GateInputs::from_gateway_row`].
    async fn load_gate_inputs(&self) -> GateInputs;

    /// Loads the `team_resources` row (`id, team_id, resource_type,
    /// max_access_level, metadata`) by id and team: `Ok(None)` when there is
    /// no row, `Err(detail)` when the load failed (logged by the
    /// implementation as `Failed to load remote shell resource for gateway
    /// validation`).
    async fn load_resource(&self, resource_id: &str) -> Result<Option<TeamResourceRow>, String>;

    /// "Now" (ms since the epoch) for the heartbeat-freshness rule, on the
    /// server's clock when the implementation knows it (control-plane §17
    /// item 14). `None` (the default) uses the sessions' clock.
    fn freshness_now_ms(&self) -> Option<i64> {
        None
    }

    /// Carries a reason once running `shell_exec` commands must stop (the
    /// gateway's shutdown); their whole trees are then terminated. `None`
    /// (the default): never.
    fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        None
    }

    /// `resolve_secret_placeholders_for_job(p_job_id)` (§4.2): the RPC's
    /// answer, or why it failed. The error text must never carry a secret
    /// value. The default: a control plane that offers no secrets.
    async fn resolve_secret_placeholders(&self, _job_id: &str) -> Result<Value, String> {
        Err("this control plane does not resolve team secrets".into())
    }

    /// How to join the terminal stream `topic` as this gateway (the hub's
    /// realtime URL, its API key and the gateway's current JWT). The
    /// default: this control plane offers no terminal stream.
    async fn terminal_channel(
        &self,
        _topic: &str,
    ) -> Result<panorama_supabase::broadcast::BroadcastOptions, String> {
        Err("this control plane offers no terminal stream".into())
    }
}

/// Everything a shell job needs. Build one per job; `sessions` is shared.
#[derive(Clone)]
pub struct ShellContext {
    pub sessions: Arc<ShellSessions>,
    pub control: Arc<dyn ShellControlState>,
    /// The job being processed (for the cancelled re-read).
    pub job_id: String,
    /// `config.teamId` / `config.gatewayId`.
    pub identity: ShellIdentity,
}

/// A `shell_session` action: the five of the spec plus `resize`.
pub use panorama_protocol::jobs::ShellJobAction as SessionAction;

/// How every shell job starts: refused as cancelled (`cancelled_message`)
/// when the job was cancelled since it was claimed, then the machine-control
/// gate (§4.9). Returns the gate inputs for the resource check.
async fn gate_preamble(
    ctx: &ShellContext,
    kind: ShellGateKind,
    cancelled_message: &str,
) -> Result<GateInputs, ShellJobError> {
    if ctx.control.job_cancelled(&ctx.job_id).await {
        return Err(ShellJobError::with_fields(
            cancelled_message,
            json!({ "cancelled": true }),
        ));
    }
    let inputs = ctx.control.load_gate_inputs().await;
    let now_ms = ctx
        .control
        .freshness_now_ms()
        .unwrap_or_else(|| ctx.sessions.now_ms());
    check_machine_control(kind, &inputs, now_ms).map_err(ShellJobError::message)?;
    Ok(inputs)
}

async fn validate_resource(
    ctx: &ShellContext,
    kind: ShellGateKind,
    inputs: &GateInputs,
    resource_id: &str,
    access: ShellAccess,
) -> Result<(), String> {
    let row = ctx.control.load_resource(resource_id).await;
    check_resource(
        kind,
        &ctx.identity,
        inputs,
        row.as_ref().map(Option::as_ref).map_err(String::as_str),
        access,
    )
}

/// A `shell_session` job (runtime.md §5.2–§5.5), its payload parsed at
/// claim. `Ok` is the `completed` result; `Err` a `failed` job (see
/// [`shell_outcome`]).
pub async fn handle_shell_session_job(
    ctx: &ShellContext,
    job: &ShellSessionJob,
) -> Result<Value, ShellJobError> {
    let sessions = &ctx.sessions;
    // 1. Purge.
    sessions.purge_expired();
    // 2–3. Cancelled since it was claimed? Machine control.
    let inputs = gate_preamble(ctx, ShellGateKind::Session, MSG_SHELL_JOB_CANCELLED).await?;
    // 4–5. Action, resource id.
    let action = job
        .action
        .ok_or_else(|| ShellJobError::message(MSG_INVALID_SHELL_ACTION))?;
    let resource_id = job
        .resource_id
        .clone()
        .map_err(|e| ShellJobError::from_payload(&e))?;

    if action == SessionAction::Spec(ShellSessionAction::Open) {
        validate_resource(
            ctx,
            ShellGateKind::Session,
            &inputs,
            &resource_id,
            ShellAccess::Write,
        )
        .await
        .map_err(|m| ShellJobError::with_fields(m, json!({ "resource_id": resource_id })))?;
        return sessions.open(&ctx.identity, &resource_id, &job.open).await;
    }

    let session_id = job
        .session_id
        .clone()
        .map_err(|e| ShellJobError::from_payload(&e))?;
    let session = sessions.lookup(&ctx.identity, &resource_id, &session_id)?;
    if let Err(message) = validate_resource(
        ctx,
        ShellGateKind::Session,
        &inputs,
        &resource_id,
        action.required_access(),
    )
    .await
    {
        sessions.revoke(&session, &message);
        return Err(ShellJobError::with_fields(
            message,
            serde_json::to_value(session.summary()).unwrap_or(Value::Null),
        ));
    }
    match action {
        SessionAction::Spec(ShellSessionAction::Status) => Ok(sessions.status(&session)),
        SessionAction::Spec(ShellSessionAction::Read) => Ok(sessions.read(&session, job.read)),
        SessionAction::Spec(ShellSessionAction::Write) => {
            sessions.write(&session, &job.write).await
        }
        SessionAction::Spec(ShellSessionAction::Close) => Ok(sessions.close(&session)),
        SessionAction::Resize => sessions.resize(&session, job.resize),
        SessionAction::Spec(other) => Err(ShellJobError::message(format!(
            "Unsupported shell session action: {other}"
        ))),
    }
}

/// A `shell_exec` job (runtime.md §5.7, control-plane §8.6), its payload
/// parsed at claim. The job completes (`Ok`) even when the command fails;
/// `Err` is a refusal.
pub async fn handle_shell_exec_job(
    ctx: &ShellContext,
    job: &ShellExecJob,
) -> Result<Value, ShellJobError> {
    let inputs = gate_preamble(ctx, ShellGateKind::Exec, MSG_SHELL_EXEC_JOB_CANCELLED).await?;
    let resource_id = job
        .resource_id
        .clone()
        .map_err(|e| ShellJobError::from_payload(&e))?;
    validate_resource(
        ctx,
        ShellGateKind::Exec,
        &inputs,
        &resource_id,
        ShellAccess::Write,
    )
    .await
    .map_err(|m| ShellJobError::with_fields(m, json!({ "resource_id": resource_id })))?;
    let parsed = job
        .request
        .as_ref()
        .map_err(|e| ShellJobError::from_payload(e).with("resource_id", json!(resource_id)))?;
    let secrets = exec::resolve_secret_env(ctx, parsed)
        .await
        .map_err(|m| ShellJobError::with_fields(m, json!({ "resource_id": resource_id })))?;
    let config = ctx.sessions.config();
    let overrides: Vec<(String, Option<String>)> = secrets
        .iter()
        .map(|s| (s.env_name.clone(), Some(s.value.clone())))
        .collect();
    let env = config.child_env(&overrides);
    let timeout_ms = parsed.timeout_ms.max(1) as u64;
    let run = exec::run_command_until(
        &exec::exec_shell(),
        &parsed.command,
        &env,
        Duration::from_millis(timeout_ms),
        config.kill_grace,
        ctx.control.stop_signal(),
    )
    .await;
    let stopped = run.stopped.clone();
    let result = run
        .redacted(&secrets)
        .into_result(&resource_id, &parsed.command);
    if let Some(reason) = stopped {
        // Stopped by the shutdown: a residual job (`cancelled: true`).
        return Err(ShellJobError::with_fields(
            reason,
            json!({ "cancelled": true, "stdout": result.stdout, "stderr": result.stderr }),
        ));
    }
    Ok(serde_json::to_value(result).unwrap_or(Value::Null))
}

/// A `terminal_open` or `terminal_close` job (issue 15). `terminal_open`
/// is gated like `shell_session open` (machine control, a remote_shell
/// resource of this gateway with write access) and completes once the
/// stream is ready; `terminal_close` ends a session of this gateway.
pub async fn handle_terminal_job(
    ctx: &ShellContext,
    job_type: &str,
    payload: &Value,
) -> Result<Value, ShellJobError> {
    use panorama_protocol::terminal::{topic, OpenPayload, JOB_TERMINAL_CLOSE};
    let terminals = ctx.sessions.terminals();
    if job_type == JOB_TERMINAL_CLOSE {
        let session_id = payload
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ShellJobError::message("Invalid terminal_close payload: session_id is required")
            })?;
        let closed = terminals
            .close(session_id, "closed by a terminal_close job")
            .await;
        return Ok(json!({ "session_id": session_id, "closed": closed }));
    }
    let inputs = gate_preamble(ctx, ShellGateKind::Session, MSG_SHELL_JOB_CANCELLED).await?;
    let parsed = OpenPayload::parse(payload).map_err(ShellJobError::message)?;
    let resource = ctx.control.load_resource(&parsed.resource_id).await;
    check_resource(
        ShellGateKind::Session,
        &ctx.identity,
        &inputs,
        resource
            .as_ref()
            .map(Option::as_ref)
            .map_err(String::as_str),
        ShellAccess::Write,
    )
    .map_err(|m| ShellJobError::with_fields(m, json!({ "resource_id": parsed.resource_id })))?;
    let metadata = resource.ok().flatten().and_then(|r| r.metadata);
    let cwd = terminal::start_dir(parsed.cwd.as_deref(), metadata.as_ref(), dirs_home());
    let topic = topic(&ctx.job_id);
    let channel = ctx
        .control
        .terminal_channel(&topic)
        .await
        .map_err(|e| ShellJobError::message(format!("Failed to open terminal: {e}")))?;
    terminals
        .open(&ctx.job_id, &parsed, cwd, ctx.sessions.config(), channel)
        .await
        .map_err(ShellJobError::message)
}

/// `$HOME` of the gateway's user.
fn dirs_home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
}
