//! Provider validation modes and health bookkeeping (providers.md §2).
//!
//! The types are the protocol crate's [`ProviderHealth`]; a
//! [`ProviderHealthMap`] serializes exactly as `gateway.json`'s
//! `providerHealth` object (`{"claude_code": {"status": …}, …}`).

use std::collections::BTreeMap;

pub use panorama_protocol::capabilities::{CheckType, ProviderHealth, ProviderHealthStatus};
use serde_json::{json, Value};

use crate::registry::ProviderId;

/// Prompt of a full validation run.
pub const VALIDATION_PROMPT: &str = "Say hi.";
/// Timeout of a full validation run.
pub const VALIDATION_TIMEOUT_MS: u64 = 30_000;
/// Interval of light checks (heartbeat).
pub const LIGHT_CHECK_INTERVAL_MS: u64 = 30_000;

/// JSON schema of a full validation run.
pub fn validation_schema() -> Value {
    json!({"type":"object","properties":{"message":{"type":"string"}},"required":["message"]})
}

/// `providerHealth` in `gateway.json`.
pub type ProviderHealthMap = BTreeMap<ProviderId, ProviderHealth>;

/// Requested validation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMode {
    /// pair, doctor: a real model run.
    Full,
    /// heartbeat: re-detect the CLI only.
    Light,
    /// start: full where no earlier full result is cached, else light.
    Auto,
}

impl ValidationMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "full" => Some(Self::Full),
            "light" => Some(Self::Light),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }
}

/// Whether `previous` carries a cached full result.
pub fn has_cached_full(previous: Option<&ProviderHealth>) -> bool {
    previous.is_some_and(|h| h.check_type == CheckType::Full || h.last_full_checked_at.is_some())
}

/// The check actually performed for a provider.
pub fn resolve_check_type(mode: ValidationMode, previous: Option<&ProviderHealth>) -> CheckType {
    match mode {
        ValidationMode::Full => CheckType::Full,
        ValidationMode::Light => CheckType::Light,
        ValidationMode::Auto if has_cached_full(previous) => CheckType::Light,
        ValidationMode::Auto => CheckType::Full,
    }
}

fn last_full_of(
    previous: Option<&ProviderHealth>,
) -> (Option<String>, Option<ProviderHealthStatus>) {
    match previous {
        Some(p) if p.check_type == CheckType::Full => (Some(p.checked_at.clone()), Some(p.status)),
        Some(p) => (p.last_full_checked_at.clone(), p.last_full_status),
        None => (None, None),
    }
}

/// A light check: a missing CLI is `unavailable` (with the detection error);
/// otherwise the previous status is kept (`unknown` when there is none) with
/// `check_type: "light"`, and the last full result is carried along.
pub fn light_health(
    previous: Option<&ProviderHealth>,
    available: bool,
    detection_error: Option<&str>,
    checked_at: &str,
    duration_ms: Option<u64>,
) -> ProviderHealth {
    let (last_full_checked_at, last_full_status) = last_full_of(previous);
    let status = if !available {
        ProviderHealthStatus::Unavailable
    } else {
        match previous.map(|p| p.status) {
            // A CLI that came back is no longer "unavailable".
            Some(ProviderHealthStatus::Unavailable) | None => ProviderHealthStatus::Unknown,
            Some(s) => s,
        }
    };
    let mut h = ProviderHealth::new(status, CheckType::Light, checked_at);
    h.last_full_checked_at = last_full_checked_at;
    h.last_full_status = last_full_status;
    h.duration_ms = duration_ms.map(serde_json::Number::from);
    h.error = if available {
        previous
            .filter(|p| p.status == status)
            .and_then(|p| p.error.clone())
    } else {
        detection_error.map(str::to_string)
    };
    h.model = previous.and_then(|p| p.model.clone());
    h
}

/// Outcome of a full validation run.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidationOutcome {
    /// CLI missing.
    Unavailable { error: String },
    /// Model run succeeded with a string `message`.
    Healthy,
    /// Model run failed (error text).
    Unhealthy { error: String },
}

/// Health after a full check.
pub fn full_health(
    outcome: &ValidationOutcome,
    checked_at: &str,
    duration_ms: u64,
    model: Option<&str>,
) -> ProviderHealth {
    let (status, error) = match outcome {
        ValidationOutcome::Unavailable { error } => {
            (ProviderHealthStatus::Unavailable, Some(error.clone()))
        }
        ValidationOutcome::Healthy => (ProviderHealthStatus::Healthy, None),
        ValidationOutcome::Unhealthy { error } => {
            (ProviderHealthStatus::Unhealthy, Some(error.clone()))
        }
    };
    let mut h = ProviderHealth::new(status, CheckType::Full, checked_at);
    h.last_full_checked_at = Some(checked_at.to_string());
    h.last_full_status = Some(status);
    h.error = error;
    h.duration_ms = Some(serde_json::Number::from(duration_ms));
    h.model = model.map(str::to_string);
    h
}

/// Success test of a validation run: the structured output (already
/// extracted, see [`crate::output::extract_model_run_output`]) is an object
/// with a string `message`.
pub fn validation_succeeded(structured: &Value) -> bool {
    structured.get("message").is_some_and(Value::is_string)
}

/// Health after a model or subagent run outcome. Returns the new health and
/// whether it *changed to* a non-healthy status (→ `provider_unhealthy`
/// gateway event and an immediate heartbeat).
pub fn health_after_run(
    previous: Option<&ProviderHealth>,
    ok: bool,
    error: Option<&str>,
    checked_at: &str,
) -> (ProviderHealth, bool) {
    let status = if ok {
        ProviderHealthStatus::Healthy
    } else {
        ProviderHealthStatus::Unhealthy
    };
    let check_type = previous.map_or(CheckType::Light, |p| p.check_type);
    let mut h = ProviderHealth::new(status, check_type, checked_at);
    let (lf, ls) = match previous {
        Some(p) => (p.last_full_checked_at.clone(), p.last_full_status),
        None => (None, None),
    };
    h.last_full_checked_at = lf;
    h.last_full_status = ls;
    h.model = previous.and_then(|p| p.model.clone());
    h.error = if ok { None } else { error.map(str::to_string) };
    let became_unhealthy =
        !ok && previous.map(|p| p.status) != Some(ProviderHealthStatus::Unhealthy);
    (h, became_unhealthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(ValidationMode::parse("auto"), Some(ValidationMode::Auto));
        assert_eq!(ValidationMode::parse("Full"), None);
        let full = full_health(&ValidationOutcome::Healthy, "t0", 12, Some("m"));
        assert_eq!(
            resolve_check_type(ValidationMode::Auto, None),
            CheckType::Full
        );
        assert_eq!(
            resolve_check_type(ValidationMode::Auto, Some(&full)),
            CheckType::Light
        );
        let light = light_health(Some(&full), true, None, "t1", None);
        assert_eq!(
            resolve_check_type(ValidationMode::Auto, Some(&light)),
            CheckType::Light
        );
        let unknown = light_health(None, true, None, "t1", None);
        assert_eq!(
            resolve_check_type(ValidationMode::Auto, Some(&unknown)),
            CheckType::Full
        );
        assert_eq!(
            resolve_check_type(ValidationMode::Light, None),
            CheckType::Light
        );
        assert_eq!(
            resolve_check_type(ValidationMode::Full, Some(&full)),
            CheckType::Full
        );
    }

    #[test]
    fn light_keeps_previous_status_and_last_full() {
        let full = full_health(
            &ValidationOutcome::Unhealthy {
                error: "boom".into(),
            },
            "t0",
            5,
            None,
        );
        let light = light_health(Some(&full), true, None, "t1", None);
        assert_eq!(light.status, ProviderHealthStatus::Unhealthy);
        assert_eq!(light.check_type, CheckType::Light);
        assert_eq!(light.checked_at, "t1");
        assert_eq!(light.last_full_checked_at.as_deref(), Some("t0"));
        assert_eq!(
            light.last_full_status,
            Some(ProviderHealthStatus::Unhealthy)
        );
        assert_eq!(light.error.as_deref(), Some("boom"));
        let gone = light_health(Some(&light), false, Some("spawn claude ENOENT"), "t2", None);
        assert_eq!(gone.status, ProviderHealthStatus::Unavailable);
        assert_eq!(gone.error.as_deref(), Some("spawn claude ENOENT"));
        assert_eq!(gone.last_full_checked_at.as_deref(), Some("t0"));
        let back = light_health(Some(&gone), true, None, "t3", None);
        assert_eq!(back.status, ProviderHealthStatus::Unknown);
        assert_eq!(back.error, None);
    }

    #[test]
    fn serializes_in_gateway_json_shape() {
        let mut map = ProviderHealthMap::new();
        map.insert(
            ProviderId::ClaudeCode,
            full_health(
                &ValidationOutcome::Healthy,
                "2025-01-01T00:00:00.000Z",
                812,
                None,
            ),
        );
        map.insert(
            ProviderId::Codex,
            full_health(
                &ValidationOutcome::Unavailable {
                    error: "spawn codex ENOENT".into(),
                },
                "2025-01-01T00:00:00.000Z",
                3,
                None,
            ),
        );
        let v = serde_json::to_value(&map).unwrap();
        assert_eq!(
            v,
            json!({
                "claude_code": {"status":"healthy","check_type":"full","checked_at":"2025-01-01T00:00:00.000Z",
                    "last_full_checked_at":"2025-01-01T00:00:00.000Z","last_full_status":"healthy","duration_ms":812},
                "codex": {"status":"unavailable","check_type":"full","checked_at":"2025-01-01T00:00:00.000Z",
                    "last_full_checked_at":"2025-01-01T00:00:00.000Z","last_full_status":"unavailable",
                    "error":"spawn codex ENOENT","duration_ms":3}
            })
        );
        let back: ProviderHealthMap = serde_json::from_value(v).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn run_outcomes_update_health() {
        let healthy = full_health(&ValidationOutcome::Healthy, "t0", 1, None);
        let (h, changed) = health_after_run(Some(&healthy), false, Some("exit 1"), "t1");
        assert_eq!(h.status, ProviderHealthStatus::Unhealthy);
        assert!(changed);
        assert_eq!(h.error.as_deref(), Some("exit 1"));
        let (h2, changed2) = health_after_run(Some(&h), false, Some("exit 1"), "t2");
        assert!(!changed2);
        assert_eq!(h2.status, ProviderHealthStatus::Unhealthy);
        let (h3, changed3) = health_after_run(Some(&h2), true, None, "t3");
        assert!(!changed3);
        assert_eq!(h3.status, ProviderHealthStatus::Healthy);
        assert_eq!(h3.error, None);
        assert!(validation_succeeded(&json!({"message": "hi"})));
        assert!(!validation_succeeded(&json!({"message": 1})));
        assert_eq!(validation_schema()["required"], json!(["message"]));
    }
}
