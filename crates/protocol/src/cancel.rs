//! Subagent cancellation rules (control-plane §9.1–§9.4).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::status::{wire_enum, SubagentStatus};

/// Where a subagent type executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runner {
    Gateway,
    Worker,
    External,
}
wire_enum!(Runner { Gateway => "gateway", Worker => "worker", External => "external" });

/// `cancel.support`, written to metadata as `cancel_support`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelSupport {
    Gateway,
    BestEffortLocal,
    Provider,
}
wire_enum!(CancelSupport { Gateway => "gateway", BestEffortLocal => "best_effort_local", Provider => "provider" });

/// `cancel.scope`, written to metadata as `cancellation_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelScope {
    Gateway,
    Local,
    Provider,
}
wire_enum!(CancelScope { Gateway => "gateway", Local => "local", Provider => "provider" });

/// `request_mode` [LATER field].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelRequestMode {
    GatewayJob,
    CooperativeLocal,
    ProviderRequest,
}
wire_enum!(CancelRequestMode {
    GatewayJob => "gateway_job",
    CooperativeLocal => "cooperative_local",
    ProviderRequest => "provider_request",
});

/// One row of the cancel-adapter registry (`getSubagentCancelAdapter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelAdapter {
    pub runner: Option<Runner>,
    pub adapter_id: Option<&'static str>,
    pub supported: bool,
    pub support: Option<CancelSupport>,
    pub scope: Option<CancelScope>,
    pub request_mode: CancelRequestMode,
}

impl CancelAdapter {
    const UNSUPPORTED: CancelAdapter = CancelAdapter {
        runner: None,
        adapter_id: None,
        supported: false,
        support: None,
        scope: None,
        request_mode: CancelRequestMode::CooperativeLocal,
    };

    const fn gateway(adapter_id: &'static str) -> Self {
        CancelAdapter {
            runner: Some(Runner::Gateway),
            adapter_id: Some(adapter_id),
            supported: true,
            support: Some(CancelSupport::Gateway),
            scope: Some(CancelScope::Gateway),
            request_mode: CancelRequestMode::GatewayJob,
        }
    }

    const fn local(runner: Runner, adapter_id: &'static str) -> Self {
        CancelAdapter {
            runner: Some(runner),
            adapter_id: Some(adapter_id),
            supported: true,
            support: Some(CancelSupport::BestEffortLocal),
            scope: Some(CancelScope::Local),
            request_mode: CancelRequestMode::CooperativeLocal,
        }
    }

    const fn provider(adapter_id: &'static str) -> Self {
        CancelAdapter {
            runner: Some(Runner::External),
            adapter_id: Some(adapter_id),
            supported: true,
            support: Some(CancelSupport::Provider),
            scope: Some(CancelScope::Provider),
            request_mode: CancelRequestMode::ProviderRequest,
        }
    }
}

/// §9.1: the cancel adapter for a `subagent_type` (exact match).
pub fn cancel_adapter_for(subagent_type: &str) -> CancelAdapter {
    match subagent_type {
        "claude_code_gateway" => CancelAdapter::gateway("claude_code"),
        "codex_gateway" => CancelAdapter::gateway("codex"),
        "gemini_gateway" => CancelAdapter::gateway("gemini"),
        "panorama_internal" => CancelAdapter::local(Runner::Worker, "panorama"),
        "perplexity_provider_hosted" => CancelAdapter::local(Runner::External, "perplexity"),
        "openai_provider_hosted" => CancelAdapter::provider("openai"),
        "google_provider_hosted" => CancelAdapter::provider("google"),
        "anthropic_provider_hosted" => CancelAdapter::provider("anthropic"),
        _ => CancelAdapter::UNSUPPORTED,
    }
}

/// §9.2: supported, and either not gateway-cancelled or the subagent is bound
/// to a gateway. An empty `gateway_id` counts as none (JavaScript truthiness).
pub fn cancel_supported(adapter: &CancelAdapter, subagent_gateway_id: Option<&str>) -> bool {
    let has_gateway = subagent_gateway_id.is_some_and(|id| !id.is_empty());
    adapter.supported && (adapter.support != Some(CancelSupport::Gateway) || has_gateway)
}

/// `cancel_result` of a resolution and of the cancel job result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    Accepted,
    Rejected,
    AlreadyTerminal,
    NoActiveRun,
}
wire_enum!(CancelOutcome {
    Accepted => "accepted",
    Rejected => "rejected",
    AlreadyTerminal => "already_terminal",
    NoActiveRun => "no_active_run",
});

/// `cancel_state` in resolutions, results and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelState {
    None,
    Requested,
    Acknowledged,
    Rejected,
}
wire_enum!(CancelState {
    None => "none",
    Requested => "requested",
    Acknowledged => "acknowledged",
    Rejected => "rejected",
});

pub const MSG_CANCEL_REJECTED: &str = "Cancellation request rejected for this subagent.";
pub const MSG_NO_ACTIVE_RUN: &str = "No active subagent run to cancel.";
pub const MSG_RUN_ID_NOT_ACTIVE: &str = "Requested run_id is not the active running subagent run.";
pub const MSG_CANCEL_REQUESTED: &str = "Cancel requested.";

/// Inputs of `resolveCancelRequest`, raw as the handler has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest<'a> {
    /// The subagent's status; `None` when it was not a string.
    pub subagent_status: Option<&'a str>,
    pub requested_run_id: Option<&'a str>,
    pub active_run_id: Option<&'a str>,
    pub cancel_supported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelResolution {
    pub accepted: bool,
    pub cancel_result: CancelOutcome,
    pub cancel_state: CancelState,
    pub resolved_run_id: Option<String>,
    pub message: String,
    /// The normalized subagent status, echoed back.
    pub status: SubagentStatus,
}

fn trimmed_non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

/// §9.3 decision table; the first matching row wins.
pub fn resolve_cancel_request(request: CancelRequest<'_>) -> CancelResolution {
    let status = match request.subagent_status {
        Some(raw) => SubagentStatus::normalize(raw),
        None => SubagentStatus::normalize(""),
    };
    let requested = trimmed_non_empty(request.requested_run_id);
    let active = trimmed_non_empty(request.active_run_id);

    let reject = |outcome: CancelOutcome, state: CancelState, message: String| CancelResolution {
        accepted: false,
        cancel_result: outcome,
        cancel_state: state,
        resolved_run_id: None,
        message,
        status: status.clone(),
    };

    // Row 1.
    if !request.cancel_supported {
        return reject(
            CancelOutcome::Rejected,
            CancelState::Rejected,
            MSG_CANCEL_REJECTED.into(),
        );
    }
    // Row 2.
    if status.is_terminal() {
        return reject(
            CancelOutcome::AlreadyTerminal,
            CancelState::None,
            format!("Subagent run is already terminal (status: {status})."),
        );
    }
    // Row 3.
    if status == SubagentStatus::Idle {
        return reject(
            CancelOutcome::NoActiveRun,
            CancelState::None,
            MSG_NO_ACTIVE_RUN.into(),
        );
    }
    // Row 4.
    if !status.is_running() {
        return reject(
            CancelOutcome::Rejected,
            CancelState::None,
            format!("Subagent is not running (status: {status})."),
        );
    }
    // Row 5.
    let Some(active) = active else {
        return reject(
            CancelOutcome::NoActiveRun,
            CancelState::None,
            MSG_NO_ACTIVE_RUN.into(),
        );
    };
    // Row 6.
    if requested.is_some_and(|requested| requested != active) {
        return reject(
            CancelOutcome::NoActiveRun,
            CancelState::None,
            MSG_RUN_ID_NOT_ACTIVE.into(),
        );
    }
    // Row 7.
    CancelResolution {
        accepted: true,
        cancel_result: CancelOutcome::Accepted,
        cancel_state: CancelState::Requested,
        resolved_run_id: Some(active.to_string()),
        message: MSG_CANCEL_REQUESTED.into(),
        status,
    }
}

/// §9.4 `buildRequestedCancelMetadata`: `base` (a non-object counts as `{}`)
/// with the six cancel keys overwritten.
pub fn build_requested_cancel_metadata(
    base: &Value,
    run_id: Option<&str>,
    reason: &str,
    now_iso: &str,
    support: Option<CancelSupport>,
    scope: Option<CancelScope>,
) -> Map<String, Value> {
    let mut metadata = base.as_object().cloned().unwrap_or_default();
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_string()));
    metadata.insert("cancel_run_id".into(), text(run_id));
    metadata.insert("cancel_requested_at".into(), Value::String(now_iso.into()));
    metadata.insert("cancel_reason".into(), Value::String(reason.into()));
    metadata.insert(
        "cancel_state".into(),
        Value::String(CancelState::Requested.as_str().into()),
    );
    metadata.insert(
        "cancel_support".into(),
        text(support.map(CancelSupport::as_str)),
    );
    metadata.insert(
        "cancellation_scope".into(),
        text(scope.map(CancelScope::as_str)),
    );
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adapter_registry_rows() {
        use CancelRequestMode as M;
        use CancelScope as Sc;
        use CancelSupport as Su;
        type Row = (
            &'static str,
            Option<Runner>,
            Option<&'static str>,
            bool,
            Option<Su>,
            Option<Sc>,
            M,
        );
        let rows: [Row; 10] = [
            (
                "claude_code_gateway",
                Some(Runner::Gateway),
                Some("claude_code"),
                true,
                Some(Su::Gateway),
                Some(Sc::Gateway),
                M::GatewayJob,
            ),
            (
                "codex_gateway",
                Some(Runner::Gateway),
                Some("codex"),
                true,
                Some(Su::Gateway),
                Some(Sc::Gateway),
                M::GatewayJob,
            ),
            (
                "gemini_gateway",
                Some(Runner::Gateway),
                Some("gemini"),
                true,
                Some(Su::Gateway),
                Some(Sc::Gateway),
                M::GatewayJob,
            ),
            (
                "panorama_internal",
                Some(Runner::Worker),
                Some("panorama"),
                true,
                Some(Su::BestEffortLocal),
                Some(Sc::Local),
                M::CooperativeLocal,
            ),
            (
                "perplexity_provider_hosted",
                Some(Runner::External),
                Some("perplexity"),
                true,
                Some(Su::BestEffortLocal),
                Some(Sc::Local),
                M::CooperativeLocal,
            ),
            (
                "openai_provider_hosted",
                Some(Runner::External),
                Some("openai"),
                true,
                Some(Su::Provider),
                Some(Sc::Provider),
                M::ProviderRequest,
            ),
            (
                "google_provider_hosted",
                Some(Runner::External),
                Some("google"),
                true,
                Some(Su::Provider),
                Some(Sc::Provider),
                M::ProviderRequest,
            ),
            (
                "anthropic_provider_hosted",
                Some(Runner::External),
                Some("anthropic"),
                true,
                Some(Su::Provider),
                Some(Sc::Provider),
                M::ProviderRequest,
            ),
            (
                "mystery_type",
                None,
                None,
                false,
                None,
                None,
                M::CooperativeLocal,
            ),
            (
                "Claude_Code_Gateway",
                None,
                None,
                false,
                None,
                None,
                M::CooperativeLocal,
            ),
        ];
        for (ty, runner, id, supported, support, scope, mode) in rows {
            let a = cancel_adapter_for(ty);
            assert_eq!(
                (
                    a.runner,
                    a.adapter_id,
                    a.supported,
                    a.support,
                    a.scope,
                    a.request_mode
                ),
                (runner, id, supported, support, scope, mode),
                "{ty}"
            );
        }
    }

    #[test]
    fn cancel_supported_rows() {
        let gateway = cancel_adapter_for("codex_gateway");
        let local = cancel_adapter_for("panorama_internal");
        let unsupported = cancel_adapter_for("nope");
        assert!(
            cancel_supported(&gateway, Some("gw-1")),
            "gateway support with a gateway_id"
        );
        assert!(
            !cancel_supported(&gateway, None),
            "gateway support without a gateway_id"
        );
        assert!(
            !cancel_supported(&gateway, Some("")),
            "empty gateway_id is falsy"
        );
        assert!(
            cancel_supported(&local, None),
            "non-gateway support needs no gateway_id"
        );
        assert!(
            !cancel_supported(&unsupported, Some("gw-1")),
            "unsupported adapter"
        );
    }

    fn resolve(
        status: Option<&str>,
        requested: Option<&str>,
        active: Option<&str>,
        supported: bool,
    ) -> CancelResolution {
        resolve_cancel_request(CancelRequest {
            subagent_status: status,
            requested_run_id: requested,
            active_run_id: active,
            cancel_supported: supported,
        })
    }

    fn summary(r: &CancelResolution) -> (bool, CancelOutcome, CancelState, Option<&str>, &str) {
        (
            r.accepted,
            r.cancel_result,
            r.cancel_state,
            r.resolved_run_id.as_deref(),
            r.message.as_str(),
        )
    }

    #[test]
    fn row_1_unsupported_is_rejected_first() {
        let r = resolve(Some("completed"), None, Some("run-1"), false);
        assert_eq!(
            summary(&r),
            (
                false,
                CancelOutcome::Rejected,
                CancelState::Rejected,
                None,
                MSG_CANCEL_REJECTED
            )
        );
    }

    #[test]
    fn row_2_terminal_statuses() {
        for status in ["completed", "failed", " CANCELLED "] {
            let r = resolve(Some(status), None, Some("run-1"), true);
            let normalized = status.trim().to_lowercase();
            let message = format!("Subagent run is already terminal (status: {normalized}).");
            assert_eq!(
                summary(&r),
                (
                    false,
                    CancelOutcome::AlreadyTerminal,
                    CancelState::None,
                    None,
                    message.as_str()
                )
            );
            assert_eq!(r.status.as_str(), normalized);
        }
    }

    #[test]
    fn row_3_idle() {
        let r = resolve(Some("idle"), None, None, true);
        assert_eq!(
            summary(&r),
            (
                false,
                CancelOutcome::NoActiveRun,
                CancelState::None,
                None,
                MSG_NO_ACTIVE_RUN
            )
        );
    }

    #[test]
    fn row_4_any_other_status_including_unknown() {
        let r = resolve(Some("queued"), None, Some("run-1"), true);
        assert_eq!(
            summary(&r),
            (
                false,
                CancelOutcome::Rejected,
                CancelState::None,
                None,
                "Subagent is not running (status: queued)."
            )
        );
        let r = resolve(None, None, None, true);
        assert_eq!(r.message, "Subagent is not running (status: unknown).");
        let r = resolve(Some("   "), None, None, true);
        assert_eq!(r.status.as_str(), "unknown");
    }

    #[test]
    fn row_5_running_without_active_run() {
        for active in [None, Some(""), Some("  ")] {
            let r = resolve(Some("running"), Some("run-1"), active, true);
            assert_eq!(
                summary(&r),
                (
                    false,
                    CancelOutcome::NoActiveRun,
                    CancelState::None,
                    None,
                    MSG_NO_ACTIVE_RUN
                )
            );
        }
    }

    #[test]
    fn row_6_requested_run_is_not_the_active_one() {
        let r = resolve(Some("running"), Some("run-2"), Some("run-1"), true);
        assert_eq!(
            summary(&r),
            (
                false,
                CancelOutcome::NoActiveRun,
                CancelState::None,
                None,
                MSG_RUN_ID_NOT_ACTIVE
            )
        );
    }

    #[test]
    fn row_7_accepted() {
        // No requested id, a blank one, or a matching one (after trimming).
        for requested in [None, Some(" "), Some(" run-1 ")] {
            let r = resolve(Some("Running"), requested, Some("run-1 "), true);
            assert_eq!(
                summary(&r),
                (
                    true,
                    CancelOutcome::Accepted,
                    CancelState::Requested,
                    Some("run-1"),
                    MSG_CANCEL_REQUESTED
                )
            );
            assert_eq!(r.status, SubagentStatus::Running);
        }
    }

    #[test]
    fn requested_cancel_metadata_overwrites_the_six_keys_and_keeps_the_rest() {
        let base = json!({"session_id": "s-1", "cancel_state": "none", "cancel_reason": "old"});
        let m = build_requested_cancel_metadata(
            &base,
            Some("run-1"),
            "User stopped the task",
            "2025-01-01T00:00:00.000Z",
            Some(CancelSupport::Gateway),
            Some(CancelScope::Gateway),
        );
        assert_eq!(
            Value::Object(m),
            json!({
                "session_id": "s-1",
                "cancel_state": "requested",
                "cancel_reason": "User stopped the task",
                "cancel_run_id": "run-1",
                "cancel_requested_at": "2025-01-01T00:00:00.000Z",
                "cancel_support": "gateway",
                "cancellation_scope": "gateway"
            })
        );
        let m = build_requested_cancel_metadata(&json!(null), None, "Cancelled", "t", None, None);
        assert_eq!(m["cancel_run_id"], Value::Null);
        assert_eq!(m["cancel_support"], Value::Null);
        assert_eq!(m["cancellation_scope"], Value::Null);
        assert_eq!(m.len(), 6);
    }
}
