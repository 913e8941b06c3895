//! The control plane's side of a subagent run in the later protocol
//! generation (control-plane spec §4.2, §5.3, §10.4, §16.10): accepting a
//! run before its job is queued (`accept_subagent_run`) and finalizing it
//! (`finalize-gateway-subagent-run`). The decisions are pure functions over
//! rows; [`accept`] and [`finalize`] apply them inside one store
//! transaction, so both rows change together or not at all.

use crate::changes::Row;
use crate::error::ApiError;
use crate::postgrest::Filter;
use crate::schema;
use crate::store::TxOps;
use crate::values::{prepare_insert, prepare_update};
use panorama_protocol::subagent::{ContentType, SUBAGENT_SCHEMA_VERSION};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Metadata keys of a cancel request (§9.4) that a terminal state clears.
pub const CANCEL_MARKER_KEYS: &[&str] = &[
    "cancel_run_id",
    "cancel_requested_at",
    "cancel_reason",
    "cancel_state",
    "cancel_support",
    "cancellation_scope",
    "cancelled",
];

/// Longest `stderr` kept inline in run metadata; the rest is counted in
/// `stderr_bytes` and `stderr_omission_reason` says why it is missing.
pub const STDERR_INLINE_CHARS: usize = 20_000;
/// Length of `stderr_preview`.
pub const STDERR_PREVIEW_CHARS: usize = 2_000;

fn str_of<'a>(row: &'a Row, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

fn object_of(row: &Row, key: &str) -> Map<String, Value> {
    row.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "22023", message)
}

// ------------------------------------------------------------ acceptance

/// The arguments of `accept_subagent_run` (§4.2). Only `p_subagent_id` is
/// required.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcceptRequest {
    pub subagent_id: String,
    /// The run's id; a fresh UUID when absent.
    pub run_id: Option<String>,
    /// The prompt; else the (merged) input's `prompt`, `query` or `task`.
    pub prompt: Option<String>,
    pub prompted_at: Option<String>,
    pub prompted_by_agent_id: Option<String>,
    /// Merged into `subagents.input`.
    pub input: Map<String, Value>,
    /// Merged into the run's metadata.
    pub metadata: Map<String, Value>,
    /// `metadata.runner` (default `gateway`).
    pub runner: Option<String>,
    /// When set, the subagent must be assigned to this gateway.
    pub gateway_id: Option<String>,
}

const ACCEPT_ARGS: &[&str] = &[
    "p_subagent_id",
    "p_run_id",
    "p_prompt",
    "p_prompted_at",
    "p_prompted_by_agent_id",
    "p_input",
    "p_metadata",
    "p_runner",
    "p_gateway_id",
];

fn uuid_arg(name: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if uuid::Uuid::parse_str(s).is_ok() => Ok(Some(s.to_lowercase())),
        other => Err(
            ApiError::invalid_input("uuid", other.to_string().trim_matches('"'))
                .details(format!("{name} must be a UUID")),
        ),
    }
}

fn text_arg(name: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(bad_request(format!("{name} must be a string"))),
    }
}

fn object_arg(name: &str, v: &Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(o) => Ok(o.clone()),
        _ => Err(bad_request(format!("{name} must be a JSON object"))),
    }
}

impl AcceptRequest {
    /// Reads the RPC's named arguments. `None` when the argument names are
    /// not this function's (PostgREST then answers 404 PGRST202).
    pub fn from_args(args: &Map<String, Value>) -> Option<Result<AcceptRequest, ApiError>> {
        if !args.contains_key("p_subagent_id")
            || args.keys().any(|k| !ACCEPT_ARGS.contains(&k.as_str()))
        {
            return None;
        }
        let arg = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
        Some((|| {
            Ok(AcceptRequest {
                subagent_id: uuid_arg("p_subagent_id", &arg("p_subagent_id"))?
                    .ok_or_else(|| bad_request("p_subagent_id is required"))?,
                run_id: uuid_arg("p_run_id", &arg("p_run_id"))?,
                prompt: text_arg("p_prompt", &arg("p_prompt"))?,
                prompted_at: text_arg("p_prompted_at", &arg("p_prompted_at"))?,
                prompted_by_agent_id: uuid_arg(
                    "p_prompted_by_agent_id",
                    &arg("p_prompted_by_agent_id"),
                )?,
                input: object_arg("p_input", &arg("p_input"))?,
                metadata: object_arg("p_metadata", &arg("p_metadata"))?,
                runner: text_arg("p_runner", &arg("p_runner"))?,
                gateway_id: uuid_arg("p_gateway_id", &arg("p_gateway_id"))?,
            })
        })())
    }
}

/// What accepting a run writes: the new `subagent_runs` row and the patch
/// of the `subagents` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptPlan {
    pub run: Map<String, Value>,
    pub subagent_patch: Map<String, Value>,
    pub response: Value,
}

/// The prompt the gateway will find (§10.1: `prompt`, else `query`, else
/// `task`, trimmed). The run row stores exactly this text, because the
/// later gateway compares the two before it starts (§10.4).
pub fn input_prompt(input: &Map<String, Value>) -> Option<String> {
    ["prompt", "query", "task"]
        .iter()
        .filter_map(|k| input.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .map(str::to_string)
}

/// Decides an acceptance (§10.4 "Later", §16.10): the subagent must exist,
/// have a gateway and not be running already; the run gets
/// `run_sequence`, the subagent points at it in `input` and `metadata`.
pub fn plan_acceptance(
    subagent: &Row,
    req: &AcceptRequest,
    run_id: &str,
    run_sequence: i64,
    now: &str,
) -> Result<AcceptPlan, ApiError> {
    let subagent_id = str_of(subagent, "id").unwrap_or_default();
    let gateway_id = str_of(subagent, "gateway_id").ok_or_else(|| {
        bad_request(format!(
            "subagent {subagent_id} is not assigned to a gateway"
        ))
        .hint("Set subagents.gateway_id to the gateway that should run it.")
    })?;
    if let Some(wanted) = &req.gateway_id {
        if wanted != gateway_id {
            return Err(bad_request(format!(
                "subagent {subagent_id} is assigned to gateway {gateway_id}, not {wanted}"
            )));
        }
    }
    let metadata = object_of(subagent, "metadata");
    if str_of(subagent, "status") == Some("running") {
        let current = metadata
            .get("current_run_id")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        return Err(ApiError::new(
            409,
            "P0001",
            format!("subagent {subagent_id} already has a running run ({current})"),
        )
        .hint("Wait for it to end or cancel it (panorama-hub job cancel) before accepting another run."));
    }
    let mut input = object_of(subagent, "input");
    input.extend(req.input.clone());
    let prompt = req
        .prompt
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .or_else(|| input_prompt(&input))
        .ok_or_else(|| {
            bad_request(format!("subagent {subagent_id} has no prompt"))
                .hint("Pass p_prompt, or set input.prompt on the subagent.")
        })?;
    let prompted_at = req.prompted_at.clone().unwrap_or_else(|| now.to_string());
    input.insert("schema_version".into(), json!(SUBAGENT_SCHEMA_VERSION));
    input.insert("prompt".into(), json!(prompt));
    input.insert("run_id".into(), json!(run_id));
    input.insert("run_sequence".into(), json!(run_sequence));
    input.insert("prompt_at".into(), json!(prompted_at));

    let mut sub_metadata = metadata;
    sub_metadata.insert("current_run_id".into(), json!(run_id));
    sub_metadata.insert("current_run_sequence".into(), json!(run_sequence));
    // A cancel request aimed at an earlier run must not reach this one.
    for k in CANCEL_MARKER_KEYS {
        sub_metadata.remove(*k);
    }
    sub_metadata.insert("cancel_state".into(), json!("none"));

    let runner = req.runner.clone().unwrap_or_else(|| "gateway".into());
    let mut run_metadata = Map::new();
    run_metadata.insert("schema_version".into(), json!(SUBAGENT_SCHEMA_VERSION));
    run_metadata.insert("runner".into(), json!(runner));
    run_metadata.insert(
        "subagent_type".into(),
        subagent
            .get("subagent_type")
            .cloned()
            .unwrap_or(Value::Null),
    );
    run_metadata.insert("run_id".into(), json!(run_id));
    run_metadata.insert("run_sequence".into(), json!(run_sequence));
    run_metadata.insert("cancel_state".into(), json!("none"));
    run_metadata.insert("accepted_at".into(), json!(now));
    run_metadata.insert("prompted_at".into(), json!(prompted_at));
    if let Some(agent) = &req.prompted_by_agent_id {
        run_metadata.insert("prompted_by_agent_id".into(), json!(agent));
    }
    run_metadata.extend(req.metadata.clone());

    let mut run = Map::new();
    run.insert("id".into(), json!(run_id));
    run.insert("subagent_id".into(), json!(subagent_id));
    run.insert(
        "team_id".into(),
        subagent.get("team_id").cloned().unwrap_or(Value::Null),
    );
    run.insert("gateway_id".into(), json!(gateway_id));
    run.insert("run_sequence".into(), json!(run_sequence));
    run.insert("status".into(), json!("running"));
    run.insert("prompt".into(), json!(prompt));
    run.insert("metadata".into(), Value::Object(run_metadata));

    let mut subagent_patch = Map::new();
    subagent_patch.insert("status".into(), json!("running"));
    subagent_patch.insert("input".into(), Value::Object(input));
    subagent_patch.insert("metadata".into(), Value::Object(sub_metadata));
    subagent_patch.insert("error".into(), Value::Null);
    subagent_patch.insert("completed_at".into(), Value::Null);

    let response = json!({
        "success": true,
        "subagent_id": subagent_id,
        "run_id": run_id,
        "run_sequence": run_sequence,
        "gateway_id": gateway_id,
        "team_id": subagent.get("team_id"),
        "status": "running",
        "prompt": prompt,
        "accepted_at": now,
    });
    Ok(AcceptPlan {
        run,
        subagent_patch,
        response,
    })
}

/// Accepts a run in one transaction: insert the `running` run with the
/// next sequence, point the subagent at it. Returns the RPC's answer.
pub fn accept(tx: &mut dyn TxOps, req: &AcceptRequest, now: &str) -> Result<Value, ApiError> {
    let subagent = tx
        .select(&schema::SUBAGENTS, &[Filter::eq("id", &req.subagent_id)])?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::new(
                404,
                "P0002",
                format!("subagent {} not found", req.subagent_id),
            )
            .hint("Create the subagent row first (panorama-hub job submit does both).")
        })?;
    let run_id = req
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let run_sequence = tx.allocate_run_sequence(&req.subagent_id)?;
    let plan = plan_acceptance(&subagent, req, &run_id, run_sequence, now)?;
    tx.insert(
        &schema::SUBAGENT_RUNS,
        &prepare_insert(&schema::SUBAGENT_RUNS, &plan.run, None, false)?,
    )?;
    let set = prepare_update(&schema::SUBAGENTS, &plan.subagent_patch)?;
    tx.update(
        &schema::SUBAGENTS,
        &[Filter::eq("id", &req.subagent_id)],
        &set,
    )?;
    Ok(plan.response)
}

// ------------------------------------------------------------ finalization

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExactContentState {
    Inline,
    Overflow,
    PreviewOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OmissionReason {
    OverflowArtifactTooLarge,
    OverflowPersistenceFailed,
}

/// The strict output envelope the later generation sends (§10.6): unknown
/// keys are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // decoded to validate, never read field by field
struct StrictEnvelope {
    schema_version: u32,
    content: Value,
    content_type: ContentType,
    #[serde(default)]
    original_content_type: Option<ContentType>,
    #[serde(default)]
    exact_content_state: Option<ExactContentState>,
    #[serde(default)]
    omission_reason: Option<OmissionReason>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    errors: Option<Vec<String>>,
    #[serde(default)]
    overflow_artifact: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Completed,
    Failed,
    Cancelled,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::Failed => "failed",
            FinalStatus::Cancelled => "cancelled",
        }
    }
}

/// The request body of `finalize-gateway-subagent-run` (§5.3), strict.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalizeRequest {
    pub subagent_id: uuid::Uuid,
    pub run_id: uuid::Uuid,
    pub final_status: FinalStatus,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub failure_output: Option<Value>,
    #[serde(default)]
    pub final_error: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
    #[serde(default)]
    pub metadata_patch: Option<Map<String, Value>>,
}

fn check_envelope(field: &str, v: &Value) -> Result<(), String> {
    if let Some(n) = v.get("schema_version").and_then(Value::as_u64) {
        if n == 0 {
            return Err(format!("{field}.schema_version must be a positive integer"));
        }
    }
    serde_json::from_value::<StrictEnvelope>(v.clone())
        .map(|_| ())
        .map_err(|e| format!("{field} is not a subagent output envelope: {e}"))
}

impl FinalizeRequest {
    /// Decodes and checks a request body; the error says what is wrong.
    pub fn parse(body: &Value) -> Result<FinalizeRequest, String> {
        let req: FinalizeRequest = serde_json::from_value(body.clone())
            .map_err(|e| format!("Invalid finalize request: {e}"))?;
        match (&req.output, req.final_status) {
            (Some(o), FinalStatus::Completed) => check_envelope("output", o)?,
            (None, FinalStatus::Completed) => {
                return Err("Invalid finalize request: a completed run needs output".into())
            }
            (Some(_), status) => {
                return Err(format!(
                    "Invalid finalize request: output is only for completed runs (this one is {}); send failure_output",
                    status.as_str()
                ))
            }
            (None, _) => {}
        }
        if let Some(f) = &req.failure_output {
            check_envelope("failure_output", f)?;
        }
        if let Some(t) = &req.completed_at {
            if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                return Err(format!(
                    "Invalid finalize request: completed_at {t:?} is not an ISO 8601 date-time"
                ));
            }
        }
        Ok(req)
    }

    /// The output stored on both rows.
    fn stored_output(&self) -> Value {
        match self.final_status {
            FinalStatus::Completed => self.output.clone().unwrap_or(Value::Null),
            _ => self.failure_output.clone().unwrap_or(Value::Null),
        }
    }
}

/// `stderr`, `stderr_preview`, `stderr_bytes` and `stderr_omission_reason`
/// derived from the raw stderr (§10.5 "[LATER] the server derives…").
pub fn stderr_metadata(stderr: &str) -> Map<String, Value> {
    let mut m = Map::new();
    if stderr.is_empty() {
        return m;
    }
    let chars = stderr.chars().count();
    m.insert("stderr_bytes".into(), json!(stderr.len()));
    m.insert(
        "stderr_preview".into(),
        json!(stderr
            .chars()
            .take(STDERR_PREVIEW_CHARS)
            .collect::<String>()),
    );
    if chars <= STDERR_INLINE_CHARS {
        m.insert("stderr".into(), json!(stderr));
        m.insert("stderr_omission_reason".into(), Value::Null);
    } else {
        m.insert(
            "stderr".into(),
            json!(stderr.chars().take(STDERR_INLINE_CHARS).collect::<String>()),
        );
        m.insert(
            "stderr_omission_reason".into(),
            json!("inline_limit_exceeded"),
        );
    }
    m
}

/// A row's metadata in its terminal state: the existing metadata, the
/// gateway's patch, the derived stderr keys, then the cancel markers set to
/// their terminal values (§10.5 terminal metadata, §9.4). Markers of a
/// cancel aimed at another run (`cancel_run_id` naming it) are left alone:
/// that request is still pending.
pub fn terminal_metadata(
    existing: &Map<String, Value>,
    patch: &Map<String, Value>,
    stderr: &Map<String, Value>,
    run_id: &str,
    status: FinalStatus,
    final_error: Option<&str>,
) -> Map<String, Value> {
    let mut m = existing.clone();
    m.extend(patch.clone());
    m.extend(stderr.clone());
    let pending_for_other_run = existing
        .get("cancel_run_id")
        .and_then(Value::as_str)
        .is_some_and(|id| id != run_id)
        && !patch.contains_key("cancel_run_id");
    if pending_for_other_run {
        return m;
    }
    let cancelled = status == FinalStatus::Cancelled;
    let reason = patch
        .get("cancel_reason")
        .and_then(Value::as_str)
        .or(final_error)
        .unwrap_or("Cancelled");
    let support = patch
        .get("cancel_support")
        .and_then(Value::as_str)
        .unwrap_or("gateway");
    let scope = patch
        .get("cancellation_scope")
        .and_then(Value::as_str)
        .unwrap_or("gateway");
    let on = |v: Value| if cancelled { v } else { Value::Null };
    m.insert("cancel_run_id".into(), Value::Null);
    m.insert("cancel_requested_at".into(), Value::Null);
    m.insert("cancel_reason".into(), on(json!(reason)));
    m.insert(
        "cancel_state".into(),
        json!(if cancelled { "acknowledged" } else { "none" }),
    );
    m.insert("cancel_support".into(), on(json!(support)));
    m.insert("cancellation_scope".into(), on(json!(scope)));
    m.insert("cancelled".into(), json!(cancelled));
    m
}

const TERMINAL_RUN_STATUSES: &[&str] = &["completed", "failed", "cancelled"];

/// Finalizes a run for `gateway_id` in one transaction: both rows get the
/// terminal state and merged metadata (the subagent only while this run is
/// still its current one). A run that is already terminal (cancelled by
/// the control plane, or finalized before) is never overwritten: the answer
/// then reports the stored state. `Ok(None)`: no such run for this gateway.
pub fn finalize(
    tx: &mut dyn TxOps,
    req: &FinalizeRequest,
    gateway_id: &str,
    team_id: &str,
    now: &str,
) -> Result<Option<Value>, ApiError> {
    let (run_id, subagent_id) = (req.run_id.to_string(), req.subagent_id.to_string());
    let run_filters = [
        Filter::eq("id", &run_id),
        Filter::eq("subagent_id", &subagent_id),
        Filter::eq("team_id", team_id),
        Filter::SubagentOfGateway(gateway_id.to_string()),
    ];
    let Some(run) = tx
        .select(&schema::SUBAGENT_RUNS, &run_filters)?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let stored_status = str_of(&run, "status").unwrap_or_default().to_string();
    if TERMINAL_RUN_STATUSES.contains(&stored_status.as_str()) {
        return Ok(Some(json!({
            "success": true,
            "output": run.get("output").filter(|o| o.is_object()).cloned(),
            "status": stored_status,
            "error": run.get("error").cloned().unwrap_or(Value::Null),
        })));
    }
    let output = req.stored_output();
    let completed_at = req.completed_at.clone().unwrap_or_else(|| now.to_string());
    let patch = req.metadata_patch.clone().unwrap_or_default();
    let stderr = stderr_metadata(req.stderr.as_deref().unwrap_or_default());
    let final_error = req.final_error.as_deref();
    let terminal = |row: &Row| {
        let mut m = Map::new();
        m.insert("status".into(), json!(req.final_status.as_str()));
        m.insert("output".into(), output.clone());
        m.insert("error".into(), json!(final_error));
        m.insert("completed_at".into(), json!(completed_at));
        m.insert(
            "metadata".into(),
            Value::Object(terminal_metadata(
                &object_of(row, "metadata"),
                &patch,
                &stderr,
                &run_id,
                req.final_status,
                final_error,
            )),
        );
        m
    };
    let sub_filters = [
        Filter::eq("id", &subagent_id),
        Filter::eq("gateway_id", gateway_id),
        Filter::eq("team_id", team_id),
        Filter::eq("status", "running"),
    ];
    write_terminal(
        tx,
        &run,
        &run_filters,
        &sub_filters,
        &run_id,
        true,
        &terminal,
    )?;
    Ok(Some(json!({
        "success": true,
        "output": output.is_object().then_some(output.clone()),
        "status": req.final_status.as_str(),
        "error": final_error,
    })))
}

/// Writes a run's terminal state, then its subagent's: the subagent that
/// `sub_filters` finds (still `running`) when its `metadata.current_run_id`
/// is this run, or, with `adopt_unmarked`, names no run at all (a run the
/// gateway created itself, seed style).
fn write_terminal(
    tx: &mut dyn TxOps,
    run: &Row,
    run_filters: &[Filter],
    sub_filters: &[Filter],
    run_id: &str,
    adopt_unmarked: bool,
    terminal: &dyn Fn(&Row) -> Map<String, Value>,
) -> Result<(), ApiError> {
    tx.update(
        &schema::SUBAGENT_RUNS,
        run_filters,
        &prepare_update(&schema::SUBAGENT_RUNS, &terminal(run))?,
    )?;
    let Some(subagent) = tx
        .select(&schema::SUBAGENTS, sub_filters)?
        .into_iter()
        .next()
    else {
        return Ok(());
    };
    let current = object_of(&subagent, "metadata")
        .get("current_run_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let ours = match current {
        Some(c) => c == run_id,
        None => adopt_unmarked,
    };
    if ours {
        tx.update(
            &schema::SUBAGENTS,
            sub_filters,
            &prepare_update(&schema::SUBAGENTS, &terminal(&subagent))?,
        )?;
    }
    Ok(())
}

/// `request_subagent_run_cancellation(p_run_id, p_reason?)` for a run the
/// control plane accepted but no gateway has started (`started_at` unset,
/// spec §9.6, §16.10 Cancel): the run and its subagent become `cancelled`
/// in one transaction, so a gateway that picks the job up later finds the
/// run no longer active and skips it. A started run is left to the
/// gateway (`cancelled: false`; queue a `subagent_cancel` job).
pub fn cancel_unstarted(
    tx: &mut dyn TxOps,
    run_id: &str,
    reason: Option<&str>,
    now: &str,
) -> Result<Value, ApiError> {
    let run = tx
        .select(&schema::SUBAGENT_RUNS, &[Filter::eq("id", run_id)])?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(404, "P0002", format!("subagent run {run_id} not found")))?;
    let status = str_of(&run, "status").unwrap_or_default().to_string();
    let started = run.get("started_at").is_some_and(|v| !v.is_null());
    if status != "running" || started {
        return Ok(json!({
            "success": true, "cancelled": false, "run_id": run_id, "run_status": status,
            "started": started,
        }));
    }
    let reason = reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or("Cancelled");
    let output = serde_json::to_value(panorama_protocol::subagent::OutputEnvelope::error(reason))
        .unwrap_or(Value::Null);
    let mut cancel = Map::new();
    cancel.insert("cancel_reason".into(), json!(reason));
    cancel.insert("cancel_support".into(), json!("control_plane"));
    cancel.insert("cancellation_scope".into(), json!("control_plane"));
    cancel.insert("last_run_at".into(), json!(now));
    let terminal = |row: &Row| {
        let mut m = Map::new();
        m.insert("status".into(), json!("cancelled"));
        m.insert("output".into(), output.clone());
        m.insert("error".into(), json!(reason));
        m.insert("completed_at".into(), json!(now));
        m.insert(
            "metadata".into(),
            Value::Object(terminal_metadata(
                &object_of(row, "metadata"),
                &cancel,
                &Map::new(),
                run_id,
                FinalStatus::Cancelled,
                Some(reason),
            )),
        );
        m
    };
    let run_filters = [Filter::eq("id", run_id), Filter::eq("status", "running")];
    let subagent_id = str_of(&run, "subagent_id").unwrap_or_default().to_string();
    let sub_filters = [
        Filter::eq("id", &subagent_id),
        Filter::eq("status", "running"),
    ];
    write_terminal(
        tx,
        &run,
        &run_filters,
        &sub_filters,
        run_id,
        false,
        &terminal,
    )?;
    Ok(
        json!({"success": true, "cancelled": true, "run_id": run_id, "run_status": "cancelled", "started": false}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    fn subagent() -> Row {
        row(json!({
            "id": "11111111-1111-4111-8111-111111111111", "team_id": "t", "gateway_id": "g",
            "subagent_type": "claude_code_gateway", "status": "completed",
            "input": {"prompt": "  say hi  ", "extra": 1},
            "metadata": {"session_id": "s1", "cancel_run_id": "old", "cancel_state": "requested"},
        }))
    }

    #[test]
    fn acceptance_points_both_rows_at_the_run() {
        let req = AcceptRequest {
            subagent_id: "11111111-1111-4111-8111-111111111111".into(),
            ..Default::default()
        };
        let plan = plan_acceptance(&subagent(), &req, "r1", 3, "NOW").unwrap();
        assert_eq!(plan.run["status"], "running");
        assert_eq!(plan.run["run_sequence"], 3);
        assert_eq!(
            plan.run["prompt"], "say hi",
            "trimmed, as the gateway compares it"
        );
        assert_eq!(plan.run["gateway_id"], "g");
        assert_eq!(plan.run["metadata"]["runner"], "gateway");
        let patch = &plan.subagent_patch;
        assert_eq!(patch["status"], "running");
        assert_eq!(patch["input"]["run_id"], "r1");
        assert_eq!(patch["input"]["run_sequence"], 3);
        assert_eq!(patch["input"]["prompt"], "say hi");
        assert_eq!(patch["input"]["extra"], 1);
        assert_eq!(patch["metadata"]["current_run_id"], "r1");
        assert_eq!(patch["metadata"]["current_run_sequence"], 3);
        assert_eq!(patch["metadata"]["session_id"], "s1", "continuation kept");
        assert_eq!(patch["metadata"]["cancel_state"], "none");
        assert!(patch["metadata"].get("cancel_run_id").is_none());
    }

    #[test]
    fn acceptance_refusals_say_why() {
        let mut req = AcceptRequest {
            subagent_id: "x".into(),
            ..Default::default()
        };
        let mut running = subagent();
        running.insert("status".into(), json!("running"));
        let e = plan_acceptance(&running, &req, "r", 1, "n").unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (409, "P0001"));
        let mut no_prompt = subagent();
        no_prompt.insert("input".into(), json!({"prompt": "  "}));
        assert!(plan_acceptance(&no_prompt, &req, "r", 1, "n")
            .unwrap_err()
            .message
            .contains("no prompt"));
        req.prompt = Some("explicit".into());
        assert_eq!(
            plan_acceptance(&no_prompt, &req, "r", 1, "n").unwrap().run["prompt"],
            "explicit"
        );
        req.gateway_id = Some("other".into());
        assert!(plan_acceptance(&subagent(), &req, "r", 1, "n").is_err());
        let mut unassigned = subagent();
        unassigned.insert("gateway_id".into(), Value::Null);
        req.gateway_id = None;
        assert!(plan_acceptance(&unassigned, &req, "r", 1, "n")
            .unwrap_err()
            .message
            .contains("not assigned"));
    }

    #[test]
    fn accept_args_are_matched_by_name() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert!(AcceptRequest::from_args(&args(json!({"p_other": 1}))).is_none());
        assert!(
            AcceptRequest::from_args(&args(json!({"p_subagent_id": "x", "p_bogus": 1}))).is_none()
        );
        let e = AcceptRequest::from_args(&args(json!({"p_subagent_id": "x"})))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, "22P02");
        let ok = AcceptRequest::from_args(&args(json!({
            "p_subagent_id": "11111111-1111-4111-8111-111111111111", "p_prompt": "p",
            "p_input": {"a": 1}, "p_metadata": null,
        })))
        .unwrap()
        .unwrap();
        assert_eq!(ok.prompt.as_deref(), Some("p"));
        assert_eq!(ok.input["a"], 1);
    }

    fn finalize_body(extra: Value) -> Value {
        let mut b = json!({
            "subagent_id": "11111111-1111-4111-8111-111111111111",
            "run_id": "22222222-2222-4222-8222-222222222222",
            "final_status": "completed",
            "output": {"schema_version": 1, "content": "hi", "content_type": "markdown"},
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    }

    #[test]
    fn finalize_requests_are_strict() {
        assert!(FinalizeRequest::parse(&finalize_body(json!({}))).is_ok());
        let cases = [
            (json!({"extra": 1}), "unknown field"),
            (json!({"run_id": "nope"}), "UUID"),
            (json!({"final_status": "done"}), "unknown variant"),
            (json!({"output": null}), "needs output"),
            (
                json!({"output": {"schema_version": 1, "content": "x", "content_type": "html"}}),
                "envelope",
            ),
            (
                json!({"output": {"schema_version": 1, "content": "x", "content_type": "text", "junk": 1}}),
                "envelope",
            ),
            (json!({"final_status": "failed"}), "only for completed"),
            (json!({"completed_at": "yesterday"}), "ISO 8601"),
            (json!({"metadata_patch": [1]}), "Invalid finalize request"),
        ];
        for (extra, wanted) in cases {
            let e = FinalizeRequest::parse(&finalize_body(extra.clone())).unwrap_err();
            assert!(e.contains(wanted), "{extra}: {e}");
        }
        let failed = FinalizeRequest::parse(&finalize_body(json!({
            "final_status": "failed", "output": null, "final_error": "boom",
            "failure_output": {"schema_version": 1, "content": "boom", "content_type": "text", "errors": ["boom"]},
        })))
        .unwrap();
        assert_eq!(failed.stored_output()["content"], "boom");
    }

    #[test]
    fn terminal_metadata_merges_and_clears_cancel_markers() {
        let existing = json!({"session_id": "old", "keep": 1, "cancel_run_id": "r1",
                              "cancel_state": "requested", "cancel_requested_at": "t", "cancel_reason": "stop"});
        let patch = json!({"session_id": "new", "exit_code": 0});
        let m = terminal_metadata(
            existing.as_object().unwrap(),
            patch.as_object().unwrap(),
            &Map::new(),
            "r1",
            FinalStatus::Completed,
            None,
        );
        assert_eq!(m["session_id"], "new");
        assert_eq!(m["keep"], 1);
        assert_eq!(m["exit_code"], 0);
        assert_eq!(m["cancel_run_id"], Value::Null);
        assert_eq!(m["cancel_requested_at"], Value::Null);
        assert_eq!(m["cancel_reason"], Value::Null);
        assert_eq!(m["cancel_state"], "none");
        assert_eq!(m["cancelled"], false);

        let m = terminal_metadata(
            existing.as_object().unwrap(),
            &Map::new(),
            &Map::new(),
            "r1",
            FinalStatus::Cancelled,
            Some("user stop"),
        );
        assert_eq!(m["cancel_state"], "acknowledged");
        assert_eq!(m["cancel_reason"], "user stop");
        assert_eq!(m["cancel_support"], "gateway");
        assert_eq!(m["cancelled"], true);

        // A cancel request for a newer run survives this run's end.
        let m = terminal_metadata(
            existing.as_object().unwrap(),
            &Map::new(),
            &Map::new(),
            "r0",
            FinalStatus::Completed,
            None,
        );
        assert_eq!(m["cancel_run_id"], "r1");
        assert_eq!(m["cancel_state"], "requested");
    }

    #[test]
    fn stderr_is_kept_inline_up_to_a_limit() {
        assert!(stderr_metadata("").is_empty());
        let m = stderr_metadata("warn: x");
        assert_eq!(m["stderr"], "warn: x");
        assert_eq!(m["stderr_bytes"], 7);
        assert_eq!(m["stderr_omission_reason"], Value::Null);
        let long = "é".repeat(STDERR_INLINE_CHARS + 5);
        let m = stderr_metadata(&long);
        assert_eq!(
            m["stderr"].as_str().unwrap().chars().count(),
            STDERR_INLINE_CHARS
        );
        assert_eq!(m["stderr_bytes"], long.len());
        assert_eq!(m["stderr_omission_reason"], "inline_limit_exceeded");
        assert_eq!(
            m["stderr_preview"].as_str().unwrap().chars().count(),
            STDERR_PREVIEW_CHARS
        );
    }
}
