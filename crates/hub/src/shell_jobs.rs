//! Shell jobs for one gateway, queued over the REST API with the service
//! key and waited for: the submit-and-wait every `panorama-hub shell …`
//! path shares (`shell_session`, `shell_exec`, `terminal_*`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::client::HubClient;

/// How long one job may take before attach gives up on it.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a queued job's row is polled.
const JOB_POLL: Duration = Duration::from_millis(50);
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{job_type} {action} job failed: {message}")]
    JobFailed {
        job_type: String,
        action: String,
        message: String,
    },
    #[error(
        "{job_type} {action} job {id} did not finish within {secs} s; is the gateway running?"
    )]
    JobTimeout {
        job_type: String,
        action: String,
        id: String,
        secs: u64,
    },
    #[error("no gateway {0}: list them with `panorama-hub gateways list`")]
    NoGateway(String),
}

/// Queues shell jobs for one gateway and waits for their results.
pub struct ShellJobs<'a> {
    pub client: &'a HubClient,
    pub team_id: String,
    pub gateway_id: String,
    pub resource_id: String,
    pub timeout: Duration,
}

impl ShellJobs<'_> {
    /// Queues one `shell_session` action and waits until the job is
    /// terminal. `Ok` is the result of a completed job; a failed or
    /// cancelled job is an error.
    pub async fn call(&self, action: &str, mut payload: Value) -> Result<Value> {
        if let Value::Object(map) = &mut payload {
            map.insert("action".into(), json!(action));
        }
        self.run_job("shell_session", action, payload).await
    }

    /// Queues one `shell_exec` job. A command that fails still completes
    /// the job (its result says how it ended); a refusal is an error.
    pub async fn exec(
        &self,
        command: &str,
        timeout_ms: u64,
        secret_env: &serde_json::Map<String, Value>,
    ) -> Result<Value> {
        let mut payload = json!({"command": command, "timeout_ms": timeout_ms});
        if !secret_env.is_empty() {
            payload["secret_env"] = Value::Object(secret_env.clone());
        }
        // The job's own timeout plus room for queueing and reporting.
        let wait = self
            .timeout
            .max(Duration::from_millis(timeout_ms) + Duration::from_secs(30));
        self.run_job_for("shell_exec", "exec", payload, wait).await
    }

    /// Queues one job of any type on the resource and waits for its
    /// result (a failed or cancelled job is an error).
    pub async fn job(&self, job_type: &str, action: &str, payload: Value) -> Result<Value> {
        self.run_job(job_type, action, payload).await
    }

    async fn run_job(&self, job_type: &str, action: &str, payload: Value) -> Result<Value> {
        self.run_job_for(job_type, action, payload, self.timeout)
            .await
    }

    async fn run_job_for(
        &self,
        job_type: &str,
        action: &str,
        mut payload: Value,
        timeout: Duration,
    ) -> Result<Value> {
        if let Value::Object(map) = &mut payload {
            map.insert("resource_id".into(), json!(self.resource_id));
        }
        let job = self
            .client
            .insert(
                "gateway_jobs",
                &json!({"team_id": self.team_id, "gateway_id": self.gateway_id,
                    "job_type": job_type, "status": "queued", "payload": payload,
                    "requested_via": "panorama-hub-cli"}),
            )
            .await
            .with_context(|| format!("queueing a {job_type} {action} job"))?;
        let id = job
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the hub returned a job without an id: {job}"))?
            .to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self
                .client
                .select(
                    "gateway_jobs",
                    &[
                        ("id", format!("eq.{id}")),
                        ("select", "status,result,error".into()),
                    ],
                )
                .await?;
            let row = rows.into_iter().next().unwrap_or(Value::Null);
            match row.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(row.get("result").cloned().unwrap_or(Value::Null)),
                Some("failed") | Some("cancelled") => {
                    let message = row
                        .get("error")
                        .and_then(Value::as_str)
                        .or_else(|| row.pointer("/result/message").and_then(Value::as_str))
                        .unwrap_or("unknown error")
                        .to_string();
                    return Err(AttachError::JobFailed {
                        job_type: job_type.into(),
                        action: action.into(),
                        message,
                    }
                    .into());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AttachError::JobTimeout {
                    job_type: job_type.into(),
                    action: action.into(),
                    id,
                    secs: timeout.as_secs(),
                }
                .into());
            }
            tokio::time::sleep(JOB_POLL).await;
        }
    }
}

/// The `remote_shell` resource bound to `gateway_id`: `wanted` when given,
/// else the only one there is.
async fn pick_resource(
    client: &HubClient,
    team_id: &str,
    gateway_id: &str,
    wanted: Option<&str>,
) -> Result<String> {
    if let Some(r) = wanted {
        return Ok(r.to_string());
    }
    let rows = client
        .select(
            "team_resources",
            &[
                ("team_id", format!("eq.{team_id}")),
                ("resource_type", "eq.remote_shell".into()),
                ("select", "id,metadata".into()),
            ],
        )
        .await
        .context("looking up the gateway's remote_shell resources")?;
    let ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.pointer("/metadata/gateway_id").and_then(Value::as_str) == Some(gateway_id))
        .filter_map(|r| r.get("id").and_then(Value::as_str))
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("gateway {gateway_id} has no remote_shell resource: create one with `panorama-hub resource create --team {team_id} --gateway {gateway_id} --machine-control`"),
        many => bail!("gateway {gateway_id} has {} remote_shell resources ({}); pick one with --resource", many.len(), many.join(", ")),
    }
}

/// The gateway's row (team and capabilities), or a clear error.
async fn gateway_row(client: &HubClient, gateway: &str) -> Result<Value> {
    Ok(client
        .select(
            "team_gateways",
            &[
                ("id", format!("eq.{gateway}")),
                ("select", "id,team_id,capabilities".into()),
            ],
        )
        .await
        .context("looking up the gateway")?
        .into_iter()
        .next()
        .ok_or_else(|| AttachError::NoGateway(gateway.to_string()))?)
}

impl<'a> ShellJobs<'a> {
    /// Jobs for `gateway` (its row looked up, with its team and
    /// capabilities), on no resource yet; returns the row too.
    pub async fn for_gateway(
        client: &'a HubClient,
        gateway: &str,
    ) -> Result<(ShellJobs<'a>, Value)> {
        let row = gateway_row(client, gateway).await?;
        let jobs = ShellJobs {
            client,
            team_id: row["team_id"].as_str().unwrap_or_default().to_string(),
            gateway_id: gateway.to_string(),
            resource_id: String::new(),
            timeout: JOB_TIMEOUT,
        };
        Ok((jobs, row))
    }

    /// The same jobs on the `remote_shell` resource `wanted`, else the
    /// gateway's only one.
    pub async fn on_resource(mut self, wanted: Option<&str>) -> Result<ShellJobs<'a>> {
        self.resource_id =
            pick_resource(self.client, &self.team_id, &self.gateway_id, wanted).await?;
        Ok(self)
    }
}
