//! An in-memory control plane for unit tests: subagent and run rows with
//! the real one's compare-and-set semantics, a switch that makes the next
//! requests go unanswered, a log of what was asked, and [`FakeControlPlane::apply`],
//! which applies the outbox's queued writes the way the control plane would
//! (a finalize function it lacks: the direct fallback writes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use panorama_protocol::rows::{GatewayJobRow, SubagentRow, SubagentRunRow};
use panorama_protocol::status::{SubagentRunStatus, SubagentStatus};
use serde_json::{json, Value};

use super::{Answer, ControlPlane, LastEvent, NewRun, PortError, RunStart, StatusGuard};
use crate::outbox::OutboxWrite;

#[derive(Default)]
pub struct FakeControlPlane {
    pub subagents: Mutex<HashMap<String, SubagentRow>>,
    pub runs: Mutex<HashMap<String, SubagentRunRow>>,
    pub events: Mutex<Vec<Value>>,
    pub gateway: Mutex<Option<Value>>,
    /// Requests by name whose next this many attempts get no answer (a
    /// transport error; the request is not applied).
    pub unanswered: Mutex<HashMap<String, usize>>,
    /// Requests by name (`*`: every request) refused with this message
    /// (HTTP 400) while set.
    pub refusing: Mutex<HashMap<String, String>>,
    /// What `allocate_subagent_run_sequence` hands out next.
    pub next_sequence: AtomicI64,
    /// The requests made, by name, in order.
    pub calls: Mutex<Vec<String>>,
}

fn no_answer() -> PortError {
    PortError::Transport {
        context: "fake control plane".into(),
        message: "no answer".into(),
    }
}

fn unique_violation() -> PortError {
    PortError::Postgrest {
        status: 409,
        code: "23505".into(),
        message: "duplicate key value violates unique constraint \"subagent_runs_one_running\""
            .into(),
        details: None,
        hint: None,
    }
}

fn merge(target: &mut Value, patch: &Value) -> Value {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        t.extend(p.clone());
    }
    target.clone()
}

/// Whether a status satisfies a PostgREST filter of the writes we queue.
fn matches_filter(status: &str, filter: &str) -> bool {
    if let Some(v) = filter.strip_prefix("eq.") {
        return status == v;
    }
    if let Some(list) = filter
        .strip_prefix("not.in.(")
        .and_then(|l| l.strip_suffix(')'))
    {
        return !list.split(',').any(|v| v == status);
    }
    panic!("the fake control plane does not know the filter {filter}")
}

impl FakeControlPlane {
    /// A control plane where this gateway's control state is fresh and
    /// full control is off.
    pub fn new() -> FakeControlPlane {
        let fake = FakeControlPlane::default();
        *fake.gateway.lock().unwrap() = Some(json!({
            "full_control_enabled": false, "status": "ready",
            "last_seen_at": crate::timestamp::now_iso(),
        }));
        fake.next_sequence.store(1, Ordering::SeqCst);
        fake
    }

    pub fn put_subagent(&self, row: SubagentRow) {
        self.subagents.lock().unwrap().insert(row.id.clone(), row);
    }

    pub fn put_run(&self, row: SubagentRunRow) {
        self.runs.lock().unwrap().insert(row.id.clone(), row);
    }

    pub fn subagent_row(&self, id: &str) -> SubagentRow {
        self.subagents.lock().unwrap()[id].clone()
    }

    pub fn run_row(&self, id: &str) -> Option<SubagentRunRow> {
        self.runs.lock().unwrap().get(id).cloned()
    }

    pub fn set_run_status(&self, id: &str, status: SubagentRunStatus) {
        self.runs.lock().unwrap().get_mut(id).unwrap().status = Some(status);
    }

    /// Request `name` (`*`: every request) is refused with `message`.
    pub fn refuse(&self, name: &str, message: &str) {
        self.refusing
            .lock()
            .unwrap()
            .insert(name.into(), message.into());
    }

    /// The next `times` attempts of request `name` get no answer.
    pub fn leave_unanswered(&self, name: &str, times: usize) {
        self.unanswered.lock().unwrap().insert(name.into(), times);
    }

    pub fn called(&self, name: &str) -> bool {
        self.calls.lock().unwrap().iter().any(|c| c == name)
    }

    fn call(&self, name: &str) -> Answer<()> {
        self.calls.lock().unwrap().push(name.to_string());
        let refusals = self.refusing.lock().unwrap();
        if let Some(message) = refusals.get(name).or_else(|| refusals.get("*")).cloned() {
            return Err(PortError::Http {
                context: name.into(),
                status: 400,
                message,
                body: None,
            });
        }
        match self.unanswered.lock().unwrap().get_mut(name) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(no_answer())
            }
            _ => Ok(()),
        }
    }

    fn patch_subagent(&self, id: &str, filter: Option<&str>, patch: &Value) -> bool {
        let mut subs = self.subagents.lock().unwrap();
        let Some(row) = subs.get_mut(id) else {
            return false;
        };
        if filter.is_some_and(|f| !matches_filter(row.status.as_str(), f)) {
            return false;
        }
        let mut value = serde_json::to_value(&*row).unwrap();
        *row = serde_json::from_value(merge(&mut value, patch)).unwrap();
        true
    }

    fn patch_run(&self, id: &str, filter: Option<&str>, patch: &Value) -> bool {
        let mut runs = self.runs.lock().unwrap();
        let Some(row) = runs.get_mut(id) else {
            return false;
        };
        let status = row
            .status
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if filter.is_some_and(|f| !matches_filter(&status, f)) {
            return false;
        }
        let mut value = serde_json::to_value(&*row).unwrap();
        *row = serde_json::from_value(merge(&mut value, patch)).unwrap();
        true
    }

    /// Applies queued writes as the control plane would (without the
    /// finalize function: its direct fallback writes).
    pub fn apply(&self, writes: &[OutboxWrite]) {
        for write in writes {
            match write {
                OutboxWrite::Update {
                    table,
                    filters,
                    patch,
                } => {
                    let id = filters
                        .iter()
                        .find(|(c, _)| c == "id")
                        .and_then(|(_, f)| f.strip_prefix("eq."))
                        .unwrap();
                    let status = filters
                        .iter()
                        .find(|(c, _)| c == "status")
                        .map(|(_, f)| f.as_str());
                    match table.as_str() {
                        "subagents" => drop(self.patch_subagent(id, status, patch)),
                        "subagent_runs" => drop(self.patch_run(id, status, patch)),
                        _ => {}
                    }
                }
                OutboxWrite::Insert { table, rows, .. } if table == super::writes::EVENTS_TABLE => {
                    let rows = match rows {
                        Value::Array(rows) => rows.clone(),
                        row => vec![row.clone()],
                    };
                    self.events.lock().unwrap().extend(rows);
                }
                OutboxWrite::FunctionOrFallback { fallback, .. } => self.apply(fallback),
                _ => {}
            }
        }
    }

    /// `event_type`s of the run's events, in sequence order.
    pub fn event_types(&self, run_id: &str) -> Vec<String> {
        self.events_of(run_id)
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The run's event rows, in sequence order.
    pub fn events_of(&self, run_id: &str) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        let mut events: Vec<Value> = events
            .iter()
            .filter(|e| e["run_id"] == run_id)
            .cloned()
            .collect();
        events.sort_by_key(|e| e["sequence"].as_i64());
        events
    }

    /// The subagent's run rows.
    fn runs_of(&self, subagent_id: &str) -> Vec<SubagentRunRow> {
        let runs = self.runs.lock().unwrap();
        runs.values()
            .filter(|r| r.subagent_id == subagent_id)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl ControlPlane for FakeControlPlane {
    async fn claim_job(&self, _job_id: &str, _started_at: &str) -> Answer<Option<Value>> {
        self.call("claim_job")?;
        Ok(None)
    }

    async fn job(&self, _job_id: &str) -> Answer<Option<Value>> {
        self.call("job")?;
        Ok(None)
    }

    async fn update_job_if_running(&self, _job_id: &str, _patch: Value) -> Answer<()> {
        self.call("update_job_if_running")
    }

    async fn queued_jobs(&self) -> Answer<Vec<Value>> {
        self.call("queued_jobs")?;
        Ok(Vec::new())
    }

    async fn running_job_ids(&self) -> Answer<Vec<String>> {
        self.call("running_job_ids")?;
        Ok(Vec::new())
    }

    async fn has_idempotency_twin(&self, _job: &GatewayJobRow) -> Answer<bool> {
        self.call("has_idempotency_twin")?;
        Ok(false)
    }

    async fn heartbeat(&self, _body: Value) -> Answer<Value> {
        self.call("heartbeat")?;
        Ok(json!({"success": true}))
    }

    async fn gateway_row(&self, _columns: &str) -> Answer<Option<Value>> {
        self.call("gateway_row")?;
        Ok(self.gateway.lock().unwrap().clone())
    }

    async fn team_resource(&self, _id: &str, _columns: &str) -> Answer<Option<Value>> {
        self.call("team_resource")?;
        Ok(None)
    }

    async fn resolve_secret_placeholders(&self, _job_id: &str) -> Answer<Value> {
        self.call("resolve_secret_placeholders")?;
        Ok(json!([]))
    }

    async fn subagent(&self, id: &str) -> Answer<Option<SubagentRow>> {
        self.call("subagent")?;
        Ok(self.subagents.lock().unwrap().get(id).cloned())
    }

    async fn update_subagent(&self, id: &str, guard: StatusGuard, patch: Value) -> Answer<bool> {
        self.call("update_subagent")?;
        let filter = super::writes::status_filter(&guard);
        Ok(self.patch_subagent(id, filter.as_deref(), &patch))
    }

    async fn allocate_run_sequence(&self, _subagent_id: &str) -> Answer<Option<i64>> {
        self.call("allocate_run_sequence")?;
        Ok(Some(self.next_sequence.fetch_add(1, Ordering::SeqCst)))
    }

    async fn highest_run_sequence(&self, subagent_id: &str) -> Answer<Option<i64>> {
        self.call("highest_run_sequence")?;
        let runs = self.runs_of(subagent_id);
        Ok(runs.iter().filter_map(|r| r.run_sequence).max())
    }

    async fn run(&self, run_id: &str) -> Answer<Option<SubagentRunRow>> {
        self.call("run")?;
        Ok(self.run_row(run_id))
    }

    async fn newest_running_run(&self, subagent_id: &str) -> Answer<Option<SubagentRunRow>> {
        self.call("newest_running_run")?;
        let runs = self.runs_of(subagent_id).into_iter();
        let running = runs.filter(|r| r.status == Some(SubagentRunStatus::Running));
        Ok(running.max_by_key(|r| r.run_sequence))
    }

    async fn insert_run(&self, run: &NewRun) -> Answer<()> {
        self.call("insert_run")?;
        let mut runs = self.runs.lock().unwrap();
        let one_running = run.status == "running"
            && runs.values().any(|r| {
                r.subagent_id == run.subagent_id && r.status == Some(SubagentRunStatus::Running)
            });
        if runs.contains_key(&run.id) || one_running {
            return Err(unique_violation());
        }
        let row: SubagentRunRow =
            serde_json::from_value(serde_json::to_value(run).unwrap()).unwrap();
        runs.insert(run.id.clone(), row);
        Ok(())
    }

    async fn mark_run_started(&self, start: &RunStart<'_>) -> Answer<bool> {
        self.call("mark_run_started")?;
        let mut runs = self.runs.lock().unwrap();
        match runs.get_mut(start.run_id) {
            Some(run)
                if run.subagent_id == start.subagent_id
                    && run.status == Some(SubagentRunStatus::Running) =>
            {
                run.started_at = Some(start.started_at.into());
                run.metadata = Value::Object(start.metadata.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn update_run_if_running(&self, run_id: &str, patch: Value) -> Answer<bool> {
        self.call("update_run_if_running")?;
        Ok(self.patch_run(run_id, Some("eq.running"), &patch))
    }

    async fn last_run_event(&self, run_id: &str) -> Answer<Option<LastEvent>> {
        self.call("last_run_event")?;
        Ok(self.events_of(run_id).last().map(|e| LastEvent {
            sequence: e["sequence"].as_i64().unwrap_or_default(),
            event_type: e["event_type"].as_str().unwrap_or_default().to_string(),
            payload: e["payload"].clone(),
        }))
    }
}

/// A subagent of this gateway, `idle`, with a prompt.
pub fn subagent(id: &str, gateway_id: &str, subagent_type: &str) -> SubagentRow {
    SubagentRow {
        id: id.into(),
        team_id: "team-1".into(),
        gateway_id: Some(gateway_id.into()),
        subagent_type: subagent_type.into(),
        status: SubagentStatus::Idle,
        input: Some(json!({"prompt": "say hi"})),
        ..SubagentRow::default()
    }
}
