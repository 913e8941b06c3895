//! Table rows as PostgREST returns them (control-plane §3, §16.3).
//!
//! Rows are tolerant: unknown columns are ignored, nullable columns are
//! `Option`, JSON columns stay `serde_json::Value`. Subagent and run rows also
//! default every missing column, because the gateway reads them through
//! narrow `select=` projections. `gateway_jobs` is the exception: its identity
//! columns are required, and [`decode_gateway_job_row`] applies the later
//! gateway's strict decoder.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::status::{
    EventLevel, GatewayStatus, JobStatus, JobType, RunEventType, SubagentRunStatus, SubagentStatus,
};

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `gateway_jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayJobRow {
    pub id: String,
    pub team_id: String,
    #[serde(default)]
    pub gateway_id: Option<String>,
    pub job_type: JobType,
    pub status: JobStatus,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub debug: Option<Value>,
    #[serde(default)]
    pub requested_via: Option<String>,
    #[serde(default)]
    pub requested_by_user_id: Option<String>,
    #[serde(default)]
    pub requested_by_agent_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub attempt: Option<i64>,
    #[serde(default)]
    pub retry_of_job_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

impl GatewayJobRow {
    /// §7.1: a job is ours only when `gateway_id` equals our id (null is not ours).
    pub fn is_targeted_at(&self, gateway_id: &str) -> bool {
        self.gateway_id.as_deref() == Some(gateway_id)
    }

    /// `attempt`, defaulting to 1 as the idempotency query does (§3.2.4).
    pub fn attempt_or_default(&self) -> i64 {
        self.attempt.unwrap_or(1)
    }

    /// `subagent_id` (or `subagentId`) of a `subagent_run` job, used by the queue
    /// to serialize runs of the same subagent (§7.3). `None` for other types.
    pub fn queue_subagent_key(&self) -> Option<&str> {
        if self.job_type != JobType::SubagentRun {
            return None;
        }
        ["subagent_id", "subagentId"]
            .iter()
            .find_map(|key| self.payload.get(*key).and_then(Value::as_str))
    }
}

/// Why a `gateway_jobs` row failed the strict decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed gateway job row: `{field}` {problem}")]
pub struct RowDecodeError {
    pub field: &'static str,
    pub problem: &'static str,
}

/// The later gateway's row decoder (§3.2): required non-empty `id`, `team_id`,
/// `job_type`, `created_at`, `updated_at`; `gateway_id`, `error`,
/// `completed_at` string or null; `status` one of five; `payload` an object;
/// `result` an object or null.
pub fn decode_gateway_job_row(value: &Value) -> Result<GatewayJobRow, RowDecodeError> {
    let err = |field, problem| RowDecodeError { field, problem };
    let row = value.as_object().ok_or(err("row", "must be an object"))?;
    for field in ["id", "team_id", "job_type", "created_at", "updated_at"] {
        match row.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(err(field, "must be a non-empty string")),
        }
    }
    for field in ["gateway_id", "error", "completed_at"] {
        match row.get(field) {
            Some(Value::String(_)) | Some(Value::Null) => {}
            _ => return Err(err(field, "must be a string or null")),
        }
    }
    match row
        .get("status")
        .and_then(Value::as_str)
        .and_then(JobStatus::parse)
    {
        Some(_) => {}
        None => return Err(err("status", "must be a known job status")),
    }
    if !row.get("payload").is_some_and(Value::is_object) {
        return Err(err("payload", "must be an object"));
    }
    match row.get("result") {
        Some(Value::Object(_)) | Some(Value::Null) => {}
        _ => return Err(err("result", "must be an object or null")),
    }
    for field in ["requested_via", "idempotency_key", "retry_of_job_id"] {
        match row.get(field) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            _ => return Err(err(field, "must be a string or null")),
        }
    }
    match row.get("attempt") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_i64().is_some() => {}
        _ => return Err(err("attempt", "must be an integer or null")),
    }
    serde_json::from_value(value.clone())
        .map_err(|_| err("row", "does not match the gateway_jobs shape"))
}

/// `team_gateways`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamGatewayRow {
    pub id: String,
    pub team_id: String,
    #[serde(default)]
    pub device_name: Option<String>,
    pub status: GatewayStatus,
    #[serde(default)]
    pub last_seen_at: Option<String>,
    #[serde(default)]
    pub ready_at: Option<String>,
    #[serde(default = "empty_object")]
    pub capabilities: Value,
    #[serde(default)]
    pub full_control_enabled: bool,
    #[serde(default)]
    pub vm_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `subagents`. Missing columns default (narrow projections are common).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubagentRow {
    pub id: String,
    pub team_id: String,
    pub gateway_id: Option<String>,
    pub owner_agent_id: Option<String>,
    pub created_by: Option<String>,
    pub subagent_type: String,
    pub status: SubagentStatus,
    pub config: Value,
    pub input: Option<Value>,
    pub metadata: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl Default for SubagentRow {
    fn default() -> Self {
        SubagentRow {
            id: String::new(),
            team_id: String::new(),
            gateway_id: None,
            owner_agent_id: None,
            created_by: None,
            subagent_type: String::new(),
            status: SubagentStatus::Other(SubagentStatus::UNKNOWN.to_string()),
            config: empty_object(),
            input: None,
            metadata: empty_object(),
            output: None,
            error: None,
            started_at: None,
            completed_at: None,
            created_at: None,
            updated_at: None,
        }
    }
}

/// `subagent_runs`. Missing columns default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubagentRunRow {
    pub id: String,
    pub subagent_id: String,
    pub team_id: String,
    pub gateway_id: Option<String>,
    pub run_sequence: Option<i64>,
    pub status: Option<SubagentRunStatus>,
    pub prompt: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub metadata: Value,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl Default for SubagentRunRow {
    fn default() -> Self {
        SubagentRunRow {
            id: String::new(),
            subagent_id: String::new(),
            team_id: String::new(),
            gateway_id: None,
            run_sequence: None,
            status: None,
            prompt: None,
            output: None,
            error: None,
            metadata: empty_object(),
            started_at: None,
            completed_at: None,
            created_at: None,
            updated_at: None,
        }
    }
}

/// `subagent_run_events`. `id` and `created_at` are server defaults, so they
/// are absent on insert bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubagentRunEventRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub run_id: String,
    pub subagent_id: String,
    pub team_id: String,
    #[serde(default)]
    pub gateway_id: Option<String>,
    pub sequence: i64,
    pub event_type: RunEventType,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `gateway_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayEventRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub gateway_id: String,
    pub team_id: String,
    #[serde(default)]
    pub provider: Option<String>,
    pub level: EventLevel,
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
    #[serde(default = "empty_object")]
    pub details: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `team_resources` (the gateway reads only `remote_shell` rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamResourceRow {
    pub id: String,
    pub team_id: String,
    pub resource_type: String,
    /// `viewer` forbids write actions; any other value allows them.
    #[serde(default)]
    pub max_access_level: String,
    /// `{gateway_id, vm_id?, full_control}`; any shape is accepted here.
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub owner_agent_id: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job_json() -> Value {
        json!({
            "id": "j1", "team_id": "t1", "gateway_id": "g1", "job_type": "subagent_run",
            "status": "queued", "payload": {"subagentId": "s1"}, "result": null, "error": null,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "completed_at": null, "attempt": 2, "some_future_column": [1, 2]
        })
    }

    #[test]
    fn job_row_is_tolerant_and_typed() {
        let row: GatewayJobRow = serde_json::from_value(job_json()).unwrap();
        assert_eq!(row.job_type, JobType::SubagentRun);
        assert_eq!(row.status, JobStatus::Queued);
        assert!(row.is_targeted_at("g1"));
        assert!(!row.is_targeted_at("g2"));
        assert_eq!(row.attempt_or_default(), 2);
        assert_eq!(row.queue_subagent_key(), Some("s1"));

        let minimal: GatewayJobRow = serde_json::from_value(
            json!({"id": "j", "team_id": "t", "job_type": "x", "status": "running"}),
        )
        .unwrap();
        assert_eq!(minimal.payload, json!({}));
        assert!(
            !minimal.is_targeted_at("g1"),
            "null gateway_id is never ours"
        );
        assert_eq!(minimal.attempt_or_default(), 1);
        assert_eq!(minimal.queue_subagent_key(), None);
    }

    #[test]
    fn strict_decoder_rules() {
        assert!(decode_gateway_job_row(&job_json()).is_ok());
        let cases: [(&str, Value, &str); 10] = [
            ("id", json!(""), "id"),
            ("team_id", json!(null), "team_id"),
            ("job_type", json!(3), "job_type"),
            ("updated_at", json!(null), "updated_at"),
            ("gateway_id", json!(7), "gateway_id"),
            ("status", json!("paused"), "status"),
            ("payload", json!([]), "payload"),
            ("result", json!("ok"), "result"),
            ("error", json!({}), "error"),
            ("attempt", json!("2"), "attempt"),
        ];
        for (field, value, expected) in cases {
            let mut row = job_json();
            row[field] = value;
            assert_eq!(decode_gateway_job_row(&row).unwrap_err().field, expected);
        }
        let mut row = job_json();
        row.as_object_mut().unwrap().remove("completed_at");
        assert_eq!(
            decode_gateway_job_row(&row).unwrap_err().field,
            "completed_at"
        );
    }

    #[test]
    fn narrow_projections_deserialize() {
        let subagent: SubagentRow = serde_json::from_value(
            json!({"team_id": "t", "gateway_id": null, "metadata": {"a": 1}}),
        )
        .unwrap();
        assert_eq!(subagent.metadata, json!({"a": 1}));
        assert_eq!(subagent.status.as_str(), "unknown");
        assert_eq!(subagent.config, json!({}));
        let run: SubagentRunRow =
            serde_json::from_value(json!({"id": "r", "run_sequence": 3})).unwrap();
        assert_eq!(run.run_sequence, Some(3));
        assert_eq!(run.status, None);
    }

    #[test]
    fn other_rows_round_trip() {
        let gw: TeamGatewayRow = serde_json::from_value(json!({
            "id": "g", "team_id": "t", "status": "ready", "full_control_enabled": true,
            "last_seen_at": "2025-01-01T00:00:00Z", "capabilities": {}
        }))
        .unwrap();
        assert_eq!(gw.status, GatewayStatus::Ready);
        assert!(gw.full_control_enabled);

        let event = SubagentRunEventRow {
            id: None,
            run_id: "r".into(),
            subagent_id: "s".into(),
            team_id: "t".into(),
            gateway_id: Some("g".into()),
            sequence: 0,
            event_type: RunEventType::RunStarted,
            payload: json!({"runner": "gateway"}),
            created_at: None,
        };
        let body = serde_json::to_value(&event).unwrap();
        assert_eq!(
            body,
            json!({"run_id": "r", "subagent_id": "s", "team_id": "t", "gateway_id": "g", "sequence": 0,
                   "event_type": "run_started", "payload": {"runner": "gateway"}})
        );

        let gateway_event: GatewayEventRow = serde_json::from_value(json!({
            "gateway_id": "g", "team_id": "t", "provider": null, "level": "warn",
            "code": "config_dir_fallback", "message": "m", "details": {"previous": "a"}
        }))
        .unwrap();
        assert_eq!(gateway_event.level, EventLevel::Warn);

        let resource: TeamResourceRow = serde_json::from_value(json!({
            "id": "r", "team_id": "t", "resource_type": "remote_shell", "max_access_level": "viewer",
            "metadata": "not an object"
        }))
        .unwrap();
        assert_eq!(resource.metadata, Some(json!("not an object")));
    }
}
