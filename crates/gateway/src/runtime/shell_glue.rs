//! Runtime glue for the shell jobs (runtime.md §5, §4.9; control-plane
//! §8.5, §8.6): the [`ShellControlState`] backed by the gateway's hub
//! client and `gateway.json`, the process-wide [`ShellSessions`], and the
//! dispatch of `shell_session` / `shell_exec` jobs.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use panorama_protocol::job::Job;
use panorama_protocol::jobs::{
    complete_job, residual_shutdown_completion, unsupported_job_type, JobCompletion,
};
use panorama_protocol::rows::{GatewayJobRow, TeamResourceRow};
use panorama_protocol::status::JobType;
use panorama_supabase::Client;
use serde_json::Value;

use super::gateway::Gateway;
use crate::paths::GatewayPaths;
use crate::port::{ControlPlane, PortError};
use crate::shell::{
    handle_shell_exec_job, handle_shell_session_job, shell_outcome, GateInputs, ShellContext,
    ShellControlState, ShellIdentity, ShellSessions, ShellSessionsConfig,
};
use crate::timestamp::now_ms;

/// Columns of the `team_gateways` control state (§4.9, later §13.4).
pub const GATEWAY_CONTROL_COLUMNS: &str =
    "full_control_enabled,status,last_seen_at,capabilities,vm_id";
/// Columns of the `team_resources` row (§5.3).
pub const RESOURCE_COLUMNS: &str = "id,team_id,resource_type,max_access_level,metadata";

/// The one session manager of this process: children get the gateway's
/// tmp dir as `TMPDIR`.
pub fn new_sessions(paths: &GatewayPaths) -> Arc<ShellSessions> {
    Arc::new(ShellSessions::new(ShellSessionsConfig {
        tmp_dir: Some(paths.tmp_dir.clone()),
        ..Default::default()
    }))
}

/// Running shell sessions: they block an upgrade restart (§4.7 drain).
pub fn running_shell_sessions(gw: &Gateway) -> usize {
    gw.shell_sessions.running_count()
}

/// Shutdown step 8: close every session and wait for their process trees.
pub async fn close_all_sessions(gw: &Gateway) {
    let running = gw.shell_sessions.running_count();
    if running > 0 {
        tracing::info!(running, "Closing shell sessions");
    }
    gw.shell_sessions.close_all().await;
}

/// [`ShellControlState`] over the control-plane port; every call reads
/// fresh state.
pub struct HubShellControl {
    pub control: Arc<dyn ControlPlane>,
    /// The session's client, for the terminal stream's channel.
    pub client: Client,
    pub gateway_id: String,
    pub config_path: PathBuf,
    /// `server − local` clock offset measured by the heartbeat.
    pub clock_offset_ms: i64,
    /// The shutdown's stop request for running jobs (§4.8 step 7).
    pub stop: tokio::sync::watch::Receiver<Option<String>>,
}

impl HubShellControl {
    pub fn new(gw: &Gateway) -> Self {
        HubShellControl {
            control: Arc::clone(&gw.control),
            client: gw.client.clone(),
            gateway_id: gw.gateway_id.clone(),
            config_path: gw.paths.config_path.clone(),
            clock_offset_ms: gw.clock.offset_ms(),
            stop: gw.shutdown.subscribe(),
        }
    }
}

#[async_trait]
impl ShellControlState for HubShellControl {
    async fn job_cancelled(&self, job_id: &str) -> bool {
        match self.control.job(job_id).await {
            Ok(Some(row)) => row.get("status").and_then(Value::as_str) == Some("cancelled"),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, jobId = %job_id, "Failed to re-read gateway job status");
                false
            }
        }
    }

    async fn load_gate_inputs(&self) -> GateInputs {
        let install = crate::config::install_full_control(&self.config_path);
        let row = match self.control.gateway_row(GATEWAY_CONTROL_COLUMNS).await {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(error = %e, gatewayId = %self.gateway_id, "Failed to load gateway control state");
                None
            }
        };
        GateInputs::from_gateway_row(install, row.as_ref())
    }

    async fn load_resource(&self, resource_id: &str) -> Result<Option<TeamResourceRow>, String> {
        let decoded = match self
            .control
            .team_resource(resource_id, RESOURCE_COLUMNS)
            .await
        {
            Ok(None) => return Ok(None),
            Ok(Some(row)) => serde_json::from_value::<TeamResourceRow>(without_nulls(row))
                .map(Some)
                .map_err(|e| format!("invalid team_resources row: {e}")),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &decoded {
            tracing::error!(error = %e, resourceId = %resource_id, "Failed to load remote shell resource for gateway validation");
        }
        decoded
    }

    fn freshness_now_ms(&self) -> Option<i64> {
        Some(now_ms() + self.clock_offset_ms)
    }

    fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        Some(self.stop.clone())
    }

    async fn terminal_channel(
        &self,
        topic: &str,
    ) -> Result<panorama_supabase::broadcast::BroadcastOptions, String> {
        let token = self
            .client
            .access_token()
            .await
            .map_err(|e| format!("no gateway token for the terminal channel: {e}"))?;
        Ok(panorama_supabase::broadcast::BroadcastOptions {
            url: self.client.url().to_string(),
            apikey: self.client.anon_key().to_string(),
            access_token: Some(token),
            topic: topic.to_string(),
            private: true,
        })
    }

    async fn resolve_secret_placeholders(&self, job_id: &str) -> Result<Value, String> {
        let answer = self.control.resolve_secret_placeholders(job_id).await;
        answer.map_err(|e| {
            // The error never carries a value (the hub sends none in
            // errors); it names the function when the control plane lacks it.
            let text = match &e {
                PortError::Postgrest { status: 404, .. } => format!(
                    "this control plane does not offer resolve_secret_placeholders_for_job ({e})"
                ),
                _ => e.to_string(),
            };
            tracing::error!(jobId = %job_id, error = %text, "Failed to resolve team secrets for shell exec job");
            text
        })
    }
}

/// A SQL `null` reads like an absent column (serde defaults apply).
fn without_nulls(row: Value) -> Value {
    match row {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// A full-control change on the host since the last heartbeat refresh
/// (`panorama-gateway full-control enable` while running): rebuild the
/// capabilities and heartbeat now, so `services.machine_control` (which the
/// `shell_exec` gate reads from `team_gateways.capabilities`) is current
/// instead of up to 30 s stale.
pub async fn sync_install_flag(gw: &Gateway) {
    let on_disk = crate::config::install_full_control(&gw.paths.config_path);
    if on_disk != gw.lock().full_control_enabled {
        super::heartbeat::refresh(gw).await;
    }
}

/// `terminal_open` / `terminal_close` (issue 15): not in the protocol's
/// job types; dispatched here with the shell jobs.
pub fn is_terminal_job(job_type: &str) -> bool {
    job_type == panorama_protocol::terminal::JOB_TERMINAL_OPEN
        || job_type == panorama_protocol::terminal::JOB_TERMINAL_CLOSE
}

/// Runs a `shell_session`, `shell_exec` (`decoded`: its typed job) or
/// terminal job (`decoded`: `None`) and maps its outcome.
pub async fn handle(gw: &Gateway, job: &GatewayJobRow, decoded: Option<&Job>) -> JobCompletion {
    sync_install_flag(gw).await;
    let ctx = ShellContext {
        sessions: Arc::clone(&gw.shell_sessions),
        control: Arc::new(HubShellControl::new(gw)),
        job_id: job.id.clone(),
        identity: ShellIdentity {
            team_id: gw.team_id.clone(),
            gateway_id: gw.gateway_id.clone(),
        },
    };
    let result = match (decoded, &job.job_type) {
        (Some(Job::ShellExec(exec)), _) => handle_shell_exec_job(&ctx, exec).await,
        (_, JobType::Unknown(t)) if is_terminal_job(t) => {
            crate::shell::handle_terminal_job(&ctx, t, &job.payload).await
        }
        (Some(Job::ShellSession(session)), _) => handle_shell_session_job(&ctx, session).await,
        // Not a shell job: nothing here runs it.
        _ => return unsupported_job_type(&job.job_type),
    };
    // A command stopped by the shutdown (its tree terminated) is a
    // residual job: cancelled, like the other job kinds (§4.8 step 7).
    if let (Err(e), Some(reason)) = (&result, gw.cancel_reason()) {
        if e.result.get("cancelled") == Some(&Value::Bool(true)) && e.error == reason {
            return residual_shutdown_completion(&reason);
        }
    }
    complete_job(&job.job_type, shell_outcome(result))
}
