//! [`ControlPlane`] over the control plane's wire (`panorama-supabase`:
//! PostgREST, RPC). The only place the gateway spells a PostgREST query.

use async_trait::async_trait;
use panorama_protocol::rows::{GatewayJobRow, SubagentRow, SubagentRunRow};
use panorama_supabase::Client;
use serde_json::{json, Map, Value};

use super::{ControlPlane, LastEvent, NewRun, PortError, StatusGuard};

const GATEWAY_JOBS: &str = "gateway_jobs";
const SUBAGENTS: &str = "subagents";
const SUBAGENT_RUNS: &str = "subagent_runs";
const RUN_EVENTS: &str = "subagent_run_events";
const RUNNING: &str = "running";
/// The heartbeat's edge function (control-plane §5.2).
pub const HEARTBEAT_FUNCTION: &str = "gateway-heartbeat";

/// This gateway's requests, as the paired gateway (its session in `client`).
pub struct HubControlPlane {
    pub client: Client,
    pub gateway_id: String,
    pub team_id: String,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, row: Value) -> Result<T, PortError> {
    serde_json::from_value(row).map_err(|e| PortError::Decode {
        context: format!("the {what} row"),
        message: format!("{e}; fix the row's column values"),
    })
}

fn decode_opt<T: serde::de::DeserializeOwned>(
    what: &str,
    row: Option<Value>,
) -> Result<Option<T>, PortError> {
    row.map(|r| decode(what, r)).transpose()
}

/// The number in an `allocate_subagent_run_sequence` answer: a bare
/// number, a one-element array, or `{allocate_subagent_run_sequence: n}`.
pub fn allocated_sequence(answer: &Value) -> Option<i64> {
    answer
        .as_i64()
        .or_else(|| {
            answer
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_i64)
        })
        .or_else(|| {
            answer
                .get("allocate_subagent_run_sequence")
                .and_then(Value::as_i64)
        })
}

#[async_trait]
impl ControlPlane for HubControlPlane {
    async fn claim_job(&self, job_id: &str, started_at: &str) -> Result<Option<Value>, PortError> {
        let rows = self
            .client
            .from(GATEWAY_JOBS)
            .update(json!({
                "status": RUNNING,
                "gateway_id": self.gateway_id,
                "started_at": started_at,
            }))
            .eq("id", job_id)
            .eq("team_id", self.team_id.as_str())
            .eq("status", "queued")
            .eq("gateway_id", self.gateway_id.as_str())
            .select("*")
            .execute()
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn job(&self, job_id: &str) -> Result<Option<Value>, PortError> {
        self.client
            .from(GATEWAY_JOBS)
            .select("*")
            .eq("id", job_id)
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn queued_jobs(&self) -> Result<Vec<Value>, PortError> {
        self.client
            .from(GATEWAY_JOBS)
            .select("*")
            .eq("team_id", self.team_id.as_str())
            .eq("status", "queued")
            .eq("gateway_id", self.gateway_id.as_str())
            .order("created_at", true, None)
            .execute()
            .await
    }

    async fn running_job_ids(&self) -> Result<Vec<String>, PortError> {
        let rows = self
            .client
            .from(GATEWAY_JOBS)
            .select("id")
            .eq("team_id", self.team_id.as_str())
            .eq("gateway_id", self.gateway_id.as_str())
            .eq("status", RUNNING)
            .order("created_at", true, None)
            .execute()
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    async fn has_idempotency_twin(
        &self,
        job: &GatewayJobRow,
        key: &str,
        attempt: i64,
    ) -> Result<bool, PortError> {
        let found = self
            .client
            .from(GATEWAY_JOBS)
            .select("id,status,result,error")
            .eq("team_id", job.team_id.as_str())
            .eq("idempotency_key", key)
            .eq("attempt", attempt)
            .in_("status", &[RUNNING, "completed"])
            .neq("id", job.id.as_str())
            .order("created_at", true, None)
            .limit(1)
            .maybe_single()
            .await?;
        Ok(found.is_some())
    }

    async fn heartbeat(&self, body: Value) -> Result<Value, PortError> {
        self.client
            .functions()
            .invoke(HEARTBEAT_FUNCTION, body)
            .await
    }

    async fn gateway_row(&self, columns: &str) -> Result<Option<Value>, PortError> {
        self.client
            .from("team_gateways")
            .select(columns)
            .eq("id", self.gateway_id.as_str())
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn team_resource(&self, id: &str, columns: &str) -> Result<Option<Value>, PortError> {
        self.client
            .from("team_resources")
            .select(columns)
            .eq("id", id)
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn resolve_secret_placeholders(&self, job_id: &str) -> Result<Value, PortError> {
        self.client
            .rpc(
                "resolve_secret_placeholders_for_job",
                json!({ "p_job_id": job_id }),
            )
            .await
    }

    async fn subagent(&self, id: &str) -> Result<Option<SubagentRow>, PortError> {
        let row = self
            .client
            .from(SUBAGENTS)
            .select("*")
            .eq("id", id)
            .maybe_single()
            .await?;
        decode_opt("subagent", row)
    }

    async fn update_subagent(
        &self,
        id: &str,
        guard: StatusGuard,
        patch: Value,
    ) -> Result<bool, PortError> {
        let update = self.client.from(SUBAGENTS).update(patch).eq("id", id);
        let update = match &guard {
            StatusGuard::Any => update,
            StatusGuard::Running => update.eq("status", RUNNING),
            StatusGuard::NotTerminal => update.not("status", "in", "(completed,failed,cancelled)"),
            StatusGuard::Status(status) => update.eq("status", status.as_str()),
        };
        Ok(!update.select("id").execute().await?.is_empty())
    }

    async fn allocate_run_sequence(&self, subagent_id: &str) -> Result<Option<i64>, PortError> {
        let answer = self
            .client
            .rpc(
                "allocate_subagent_run_sequence",
                json!({"p_subagent_id": subagent_id}),
            )
            .await?;
        let n = allocated_sequence(&answer);
        if n.is_none() {
            tracing::warn!(response = %answer, "Unexpected allocate_subagent_run_sequence response");
        }
        Ok(n)
    }

    async fn highest_run_sequence(&self, subagent_id: &str) -> Result<Option<i64>, PortError> {
        let row = self
            .client
            .from(SUBAGENT_RUNS)
            .select("run_sequence")
            .eq("subagent_id", subagent_id)
            .order("run_sequence", false, None)
            .limit(1)
            .maybe_single()
            .await?;
        Ok(row.and_then(|r| r.get("run_sequence").and_then(Value::as_i64)))
    }

    async fn run(&self, run_id: &str) -> Result<Option<SubagentRunRow>, PortError> {
        let row = self
            .client
            .from(SUBAGENT_RUNS)
            .select("*")
            .eq("id", run_id)
            .maybe_single()
            .await?;
        decode_opt("subagent run", row)
    }

    async fn newest_running_run(
        &self,
        subagent_id: &str,
    ) -> Result<Option<SubagentRunRow>, PortError> {
        let row = self
            .client
            .from(SUBAGENT_RUNS)
            .select("*")
            .eq("subagent_id", subagent_id)
            .eq("status", RUNNING)
            .order("run_sequence", false, None)
            .limit(1)
            .maybe_single()
            .await?;
        decode_opt("subagent run", row)
    }

    async fn insert_run(&self, run: &NewRun) -> Result<(), PortError> {
        let row = serde_json::to_value(run)
            .map_err(|e| PortError::InvalidRequest(format!("the run row: {e}")))?;
        self.client
            .from(SUBAGENT_RUNS)
            .insert(row)
            .select("id")
            .execute()
            .await
            .map(drop)
    }

    async fn mark_run_started(
        &self,
        subagent_id: &str,
        run_id: &str,
        started_at: &str,
        metadata: &Map<String, Value>,
    ) -> Result<bool, PortError> {
        let rows = self
            .client
            .from(SUBAGENT_RUNS)
            .update(json!({"started_at": started_at, "metadata": metadata}))
            .eq("id", run_id)
            .eq("subagent_id", subagent_id)
            .eq("status", RUNNING)
            .select("id")
            .execute()
            .await?;
        Ok(!rows.is_empty())
    }

    async fn update_run_if_running(&self, run_id: &str, patch: Value) -> Result<bool, PortError> {
        let rows = self
            .client
            .from(SUBAGENT_RUNS)
            .update(patch)
            .eq("id", run_id)
            .eq("status", RUNNING)
            .select("id")
            .execute()
            .await?;
        Ok(!rows.is_empty())
    }

    async fn last_run_event(&self, run_id: &str) -> Result<Option<LastEvent>, PortError> {
        let row = self
            .client
            .from(RUN_EVENTS)
            .select("sequence,event_type,payload")
            .eq("run_id", run_id)
            .order("sequence", false, None)
            .limit(1)
            .maybe_single()
            .await?;
        Ok(row.map(|e| LastEvent {
            sequence: e.get("sequence").and_then(Value::as_i64).unwrap_or(-1),
            event_type: e
                .get("event_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            payload: e.get("payload").cloned().unwrap_or(Value::Null),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocated_sequence_is_read_from_each_answer_shape() {
        assert_eq!(allocated_sequence(&json!(4)), Some(4));
        assert_eq!(allocated_sequence(&json!([5])), Some(5));
        assert_eq!(
            allocated_sequence(&json!({"allocate_subagent_run_sequence": 6})),
            Some(6)
        );
        assert_eq!(allocated_sequence(&json!({"other": 1})), None);
    }
}
