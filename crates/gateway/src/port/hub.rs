//! [`ControlPlane`] over the control plane's wire (`panorama-supabase`:
//! PostgREST, RPC). The only place the gateway spells a PostgREST query.

use async_trait::async_trait;
use panorama_protocol::rows::{GatewayJobRow, SubagentRow, SubagentRunRow};
use panorama_supabase::Client;
use serde_json::{json, Value};

use super::{Answer, ControlPlane, LastEvent, NewRun, PortError, RunStart, StatusGuard};

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

fn decode<T: serde::de::DeserializeOwned>(what: &str, row: Value) -> Answer<T> {
    serde_json::from_value(row).map_err(|e| PortError::Decode {
        context: format!("the {what} row"),
        message: format!("{e}; fix the row's column values"),
    })
}

fn decode_opt<T: serde::de::DeserializeOwned>(what: &str, row: Option<Value>) -> Answer<Option<T>> {
    row.map(|r| decode(what, r)).transpose()
}

impl HubControlPlane {
    /// The whole row of `table` with `id`.
    async fn row_by_id(&self, table: &str, id: &str) -> Answer<Option<Value>> {
        self.client
            .from(table)
            .select("*")
            .eq("id", id)
            .maybe_single()
            .await
    }

    /// `columns` of the row matching `filters` (column = value) that is
    /// last by `order`.
    async fn last_row(
        &self,
        table: &str,
        columns: &str,
        filters: &[(&str, &str)],
        order: &str,
    ) -> Answer<Option<Value>> {
        let mut query = self.client.from(table).select(columns);
        for (column, value) in filters {
            query = query.eq(column, *value);
        }
        query
            .order(order, false, None)
            .limit(1)
            .maybe_single()
            .await
    }
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
    async fn claim_job(&self, job_id: &str, started_at: &str) -> Answer<Option<Value>> {
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

    async fn job(&self, job_id: &str) -> Answer<Option<Value>> {
        self.client
            .from(GATEWAY_JOBS)
            .select("*")
            .eq("id", job_id)
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn update_job_if_running(&self, job_id: &str, patch: Value) -> Answer<()> {
        self.client
            .from(GATEWAY_JOBS)
            .update(patch)
            .eq("id", job_id)
            .eq("status", RUNNING)
            .execute()
            .await
            .map(drop)
    }

    async fn queued_jobs(&self) -> Answer<Vec<Value>> {
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

    async fn running_job_ids(&self) -> Answer<Vec<String>> {
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

    async fn has_idempotency_twin(&self, job: &GatewayJobRow) -> Answer<bool> {
        let found = self
            .client
            .from(GATEWAY_JOBS)
            .select("id,status,result,error")
            .eq("team_id", job.team_id.as_str())
            .eq(
                "idempotency_key",
                job.idempotency_key.as_deref().unwrap_or_default(),
            )
            .eq("attempt", job.attempt_or_default())
            .in_("status", &[RUNNING, "completed"])
            .neq("id", job.id.as_str())
            .order("created_at", true, None)
            .limit(1)
            .maybe_single()
            .await?;
        Ok(found.is_some())
    }

    async fn heartbeat(&self, body: Value) -> Answer<Value> {
        self.client
            .functions()
            .invoke(HEARTBEAT_FUNCTION, body)
            .await
    }

    async fn gateway_row(&self, columns: &str) -> Answer<Option<Value>> {
        self.client
            .from("team_gateways")
            .select(columns)
            .eq("id", self.gateway_id.as_str())
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn team_resource(&self, id: &str, columns: &str) -> Answer<Option<Value>> {
        self.client
            .from("team_resources")
            .select(columns)
            .eq("id", id)
            .eq("team_id", self.team_id.as_str())
            .maybe_single()
            .await
    }

    async fn resolve_secret_placeholders(&self, job_id: &str) -> Answer<Value> {
        self.client
            .rpc(
                "resolve_secret_placeholders_for_job",
                json!({ "p_job_id": job_id }),
            )
            .await
    }

    async fn subagent(&self, id: &str) -> Answer<Option<SubagentRow>> {
        let row = self.row_by_id(SUBAGENTS, id).await?;
        decode_opt("subagent", row)
    }

    async fn update_subagent(&self, id: &str, guard: StatusGuard, patch: Value) -> Answer<bool> {
        let update = self.client.from(SUBAGENTS).update(patch).eq("id", id);
        let update = match &guard {
            StatusGuard::Any => update,
            StatusGuard::Running => update.eq("status", RUNNING),
            StatusGuard::NotTerminal => update.not("status", "in", "(completed,failed,cancelled)"),
            StatusGuard::Status(status) => update.eq("status", status.as_str()),
        };
        Ok(!update.select("id").execute().await?.is_empty())
    }

    async fn allocate_run_sequence(&self, subagent_id: &str) -> Answer<Option<i64>> {
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

    async fn highest_run_sequence(&self, subagent_id: &str) -> Answer<Option<i64>> {
        let filters = [("subagent_id", subagent_id)];
        let row = self
            .last_row(SUBAGENT_RUNS, "run_sequence", &filters, "run_sequence")
            .await?;
        Ok(row.and_then(|r| r.get("run_sequence").and_then(Value::as_i64)))
    }

    async fn run(&self, run_id: &str) -> Answer<Option<SubagentRunRow>> {
        let row = self.row_by_id(SUBAGENT_RUNS, run_id).await?;
        decode_opt("subagent run", row)
    }

    async fn newest_running_run(&self, subagent_id: &str) -> Answer<Option<SubagentRunRow>> {
        let filters = [("subagent_id", subagent_id), ("status", RUNNING)];
        let row = self
            .last_row(SUBAGENT_RUNS, "*", &filters, "run_sequence")
            .await?;
        decode_opt("subagent run", row)
    }

    async fn insert_run(&self, run: &NewRun) -> Answer<()> {
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

    async fn mark_run_started(&self, start: &RunStart<'_>) -> Answer<bool> {
        let rows = self
            .client
            .from(SUBAGENT_RUNS)
            .update(json!({"started_at": start.started_at, "metadata": start.metadata}))
            .eq("id", start.run_id)
            .eq("subagent_id", start.subagent_id)
            .eq("status", RUNNING)
            .select("id")
            .execute()
            .await?;
        Ok(!rows.is_empty())
    }

    async fn update_run_if_running(&self, run_id: &str, patch: Value) -> Answer<bool> {
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

    async fn last_run_event(&self, run_id: &str) -> Answer<Option<LastEvent>> {
        let columns = "sequence,event_type,payload";
        let row = self
            .last_row(RUN_EVENTS, columns, &[("run_id", run_id)], "sequence")
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
