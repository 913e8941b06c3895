//! The control-plane port: everything a job handler (and the runtime's job
//! path, and crash recovery) asks of the control plane, in two halves.
//!
//! * [`ControlPlane`]: the requests that need an answer before the job can
//!   go on — claim a job, read typed rows (`SubagentRow`, `SubagentRunRow`
//!   from `panorama-protocol`), the run lifecycle (allocate a sequence,
//!   insert a seed run, compare-and-set an accepted run started, re-read a
//!   run's status), the cancel's compare-and-sets, shell control state.
//!   [`hub::HubControlPlane`] answers over `panorama-supabase`; tests use
//!   the in-memory `fake::FakeControlPlane`.
//! * [`writes`]: the writes that report an outcome (job completions,
//!   terminal run and subagent rows, the later generation's
//!   `finalize-gateway-subagent-run` with its 404 fallback, run events,
//!   recovery's finalizations), built here and delivered by the fsync'd
//!   outbox.
//!
//! PostgREST's query grammar (`eq.running`, `not.in.(…)`) lives only in
//! this module and in the outbox that sends it.

// `PortError` is the transport's error, whose PostgREST variant is large;
// it is returned once per request, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use async_trait::async_trait;
use panorama_protocol::rows::{GatewayJobRow, SubagentRow, SubagentRunRow};
use serde::Serialize;
use serde_json::{Map, Value};

#[cfg(test)]
pub mod fake;
pub mod hub;
pub mod writes;

/// What a control-plane request failed with. The transport's own error:
/// `control_plane::is_unanswered` tells "no answer" (retry) from a refusal,
/// and its text is what a failed job reports.
pub type PortError = panorama_supabase::Error;

/// A control plane's answer to one request.
pub type Answer<T> = Result<T, PortError>;

/// §10.4 "later" step 3: the accepted run this gateway starts.
#[derive(Debug, Clone, Copy)]
pub struct RunStart<'a> {
    pub subagent_id: &'a str,
    pub run_id: &'a str,
    pub started_at: &'a str,
    /// The run's metadata from here on (the control plane's keys and ours).
    pub metadata: &'a Map<String, Value>,
}

/// Which rows an update may touch, by their status (its compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusGuard {
    /// Any status (the seed marks its subagent running unconditionally).
    Any,
    /// Only a row still `running`.
    Running,
    /// Only a row not yet `completed`, `failed` or `cancelled`.
    NotTerminal,
    /// Only a row whose status is still the one just read.
    Status(String),
}

/// A `subagent_runs` row the gateway inserts (seed generation). Columns it
/// does not set are left to the control plane's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewRun {
    pub id: String,
    pub subagent_id: String,
    pub team_id: String,
    pub gateway_id: String,
    pub run_sequence: i64,
    pub status: String,
    pub prompt: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub metadata: Map<String, Value>,
}

/// The newest event of a run (what recovery decides on).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LastEvent {
    pub sequence: i64,
    pub event_type: String,
    pub payload: Value,
}

/// The requests a job asks of the control plane, each sent once (callers
/// retry through `control_plane::retry_unanswered` where a blip of the hub
/// must not fail the job). Rows are this gateway's and its team's.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    // --- gateway_jobs ---
    /// The claim (§3.2.2): `queued` → `running` for this gateway with
    /// `started_at`; the claimed row, `None` when it was not ours to take.
    async fn claim_job(&self, job_id: &str, started_at: &str) -> Answer<Option<Value>>;
    /// A job row as the control plane has it now.
    async fn job(&self, job_id: &str) -> Answer<Option<Value>>;
    /// Applies `patch` to a job while it is `running` (model_run's `debug`).
    async fn update_job_if_running(&self, job_id: &str, patch: Value) -> Answer<()>;
    /// This gateway's `queued` jobs, oldest first (the reconcile, §3.2.1).
    async fn queued_jobs(&self) -> Answer<Vec<Value>>;
    /// The ids of this gateway's `running` jobs, oldest first.
    async fn running_job_ids(&self) -> Answer<Vec<String>>;
    /// §3.2.4: whether another job with `job`'s (non-empty) idempotency key
    /// and attempt is running or completed.
    async fn has_idempotency_twin(&self, job: &GatewayJobRow) -> Answer<bool>;

    // --- this gateway's control state ---
    /// `gateway-heartbeat` with `body` (status, capabilities, device name).
    async fn heartbeat(&self, body: Value) -> Answer<Value>;
    /// `columns` of this gateway's `team_gateways` row.
    async fn gateway_row(&self, columns: &str) -> Answer<Option<Value>>;
    /// A `team_resources` row of this team (`columns` of it).
    async fn team_resource(&self, id: &str, columns: &str) -> Answer<Option<Value>>;
    /// `resolve_secret_placeholders_for_job` (later generation).
    async fn resolve_secret_placeholders(&self, job_id: &str) -> Answer<Value>;

    // --- subagents ---
    async fn subagent(&self, id: &str) -> Answer<Option<SubagentRow>>;
    /// Applies `patch` where `guard` allows; whether a row matched.
    async fn update_subagent(&self, id: &str, guard: StatusGuard, patch: Value) -> Answer<bool>;

    // --- subagent_runs ---
    /// `allocate_subagent_run_sequence`; `None` when its answer carries no number.
    async fn allocate_run_sequence(&self, subagent_id: &str) -> Answer<Option<i64>>;
    /// The highest `run_sequence` of the subagent's runs.
    async fn highest_run_sequence(&self, subagent_id: &str) -> Answer<Option<i64>>;
    async fn run(&self, run_id: &str) -> Answer<Option<SubagentRunRow>>;
    /// The subagent's newest `running` run.
    async fn newest_running_run(&self, subagent_id: &str) -> Answer<Option<SubagentRunRow>>;
    async fn insert_run(&self, run: &NewRun) -> Answer<()>;
    /// `started_at` and `metadata` of the run, only while it is this
    /// subagent's `running` run; whether it matched.
    async fn mark_run_started(&self, start: &RunStart<'_>) -> Answer<bool>;
    /// Applies `patch` to the run while it is `running`; whether it matched.
    async fn update_run_if_running(&self, run_id: &str, patch: Value) -> Answer<bool>;

    // --- subagent_run_events ---
    async fn last_run_event(&self, run_id: &str) -> Answer<Option<LastEvent>>;
}

/// The sequence after a run's last event (0 for a run without events).
pub async fn next_event_sequence(port: &dyn ControlPlane, run_id: &str) -> Answer<i64> {
    Ok(port
        .last_run_event(run_id)
        .await?
        .map_or(0, |e| e.sequence + 1))
}
