//! Gateway control state and the gates that read it: the machine-control gate
//! for shell jobs (control-plane §13.4, runtime §4.9) and the gateway-state
//! pre-check of `subagent_run` jobs (§10.2 rows 6–7a).
//!
//! The caller loads the control state and re-reads the install flag from disk;
//! these functions only decide.

use serde_json::Value;

use crate::capabilities::{validate_capabilities_v1, Capabilities};
use crate::full_control::{
    LATER_INSTALL_DISABLED, LATER_TEAM_DISABLED, SEED_INSTALL_DISABLED, SEED_TEAM_DISABLED,
};
use crate::operational::is_heartbeat_fresh;

pub const MSG_CONTROL_STATE_UNAVAILABLE: &str = "Gateway control state unavailable";
pub const MSG_OFFLINE_OR_STALE: &str = "Gateway is offline or heartbeat is stale";
pub const MSG_MACHINE_CONTROL_SERVICE_UNAVAILABLE: &str =
    "Gateway machine control service is unavailable.";
pub const MSG_MODEL_PROVIDERS_UNAVAILABLE: &str = "Gateway AI model providers are unavailable";

/// `team_gateways` control state, normalized as `loadGatewayControlState` does.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlState {
    /// `full_control_enabled === true`.
    pub full_control_enabled: bool,
    /// The raw status string, or `unknown` when it is not a string.
    pub status: String,
    pub last_seen_at: Option<String>,
    /// \[LATER\] v1-valid capabilities, or `None` (invalid counts as missing).
    pub capabilities: Option<Capabilities>,
}

impl ControlState {
    /// The `select=` list the seed uses (the later one adds `capabilities`).
    pub const SEED_SELECT: &'static str = "full_control_enabled,status,last_seen_at";
    pub const LATER_SELECT: &'static str = "full_control_enabled,status,last_seen_at,capabilities";

    /// Normalizes a `maybeSingle` result. `None` (no row) stays unavailable.
    pub fn from_row(row: Option<&Value>) -> Option<Self> {
        let row = row?.as_object()?;
        Some(ControlState {
            full_control_enabled: row.get("full_control_enabled") == Some(&Value::Bool(true)),
            status: row
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            last_seen_at: row
                .get("last_seen_at")
                .and_then(Value::as_str)
                .map(str::to_string),
            capabilities: row
                .get("capabilities")
                .and_then(|c| validate_capabilities_v1(c).ok()),
        })
    }

    pub fn is_heartbeat_fresh(&self, now_ms: i64) -> bool {
        is_heartbeat_fresh(self.last_seen_at.as_deref(), now_ms)
    }

    /// Seed freshness: `status == 'ready'` and a fresh heartbeat.
    pub fn is_ready_and_fresh(&self, now_ms: i64) -> bool {
        self.status == "ready" && self.is_heartbeat_fresh(now_ms)
    }
}

/// Why the machine-control gate refused a shell job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MachineControlDenial {
    #[error("{MSG_CONTROL_STATE_UNAVAILABLE}")]
    ControlStateUnavailable,
    #[error("{SEED_INSTALL_DISABLED}")]
    SeedInstallDisabled,
    #[error("{SEED_TEAM_DISABLED}")]
    SeedTeamDisabled,
    #[error("{MSG_OFFLINE_OR_STALE}")]
    OfflineOrStale,
    #[error("{LATER_TEAM_DISABLED}")]
    LaterTeamDisabled,
    #[error("{LATER_INSTALL_DISABLED}")]
    LaterInstallDisabled,
    #[error("{MSG_MACHINE_CONTROL_SERVICE_UNAVAILABLE}")]
    ServiceUnavailable,
}

impl MachineControlDenial {
    /// The exact job `error` / `result.message`.
    pub fn message(self) -> String {
        self.to_string()
    }
}

/// Seed gate for `shell_session` (§13.4, seed order): unavailable → install →
/// team → `status != ready` or stale.
pub fn check_shell_session_machine_control(
    install_enabled: bool,
    state: Option<&ControlState>,
    now_ms: i64,
) -> Result<(), MachineControlDenial> {
    let state = state.ok_or(MachineControlDenial::ControlStateUnavailable)?;
    if !install_enabled {
        return Err(MachineControlDenial::SeedInstallDisabled);
    }
    if !state.full_control_enabled {
        return Err(MachineControlDenial::SeedTeamDisabled);
    }
    if !state.is_ready_and_fresh(now_ms) {
        return Err(MachineControlDenial::OfflineOrStale);
    }
    Ok(())
}

/// Later gate for `shell_exec` (§13.4, later order): unavailable → stale →
/// team → install → `services.machine_control.ready` (missing capabilities
/// count as not ready).
pub fn check_shell_exec_machine_control(
    install_enabled: bool,
    state: Option<&ControlState>,
    now_ms: i64,
) -> Result<(), MachineControlDenial> {
    let state = state.ok_or(MachineControlDenial::ControlStateUnavailable)?;
    if !state.is_heartbeat_fresh(now_ms) {
        return Err(MachineControlDenial::OfflineOrStale);
    }
    if !state.full_control_enabled {
        return Err(MachineControlDenial::LaterTeamDisabled);
    }
    if !install_enabled {
        return Err(MachineControlDenial::LaterInstallDisabled);
    }
    let service_ready = state
        .capabilities
        .as_ref()
        .is_some_and(|caps| caps.services.machine_control.ready);
    if !service_ready {
        return Err(MachineControlDenial::ServiceUnavailable);
    }
    Ok(())
}

/// Which version of the `subagent_run` gateway pre-check to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubagentRunGate {
    /// Seed: `status == 'ready'` and fresh. Default.
    #[default]
    Seed,
    /// Later: fresh, then `services.model_execution.ready`.
    Later,
}

/// §10.2 rows 6, 7 and 7a. `Err` carries the exact job error message.
pub fn check_subagent_run_gateway_state(
    state: Option<&ControlState>,
    now_ms: i64,
    gate: SubagentRunGate,
) -> Result<(), String> {
    let state = state.ok_or_else(|| MSG_CONTROL_STATE_UNAVAILABLE.to_string())?;
    match gate {
        SubagentRunGate::Seed => {
            if !state.is_ready_and_fresh(now_ms) {
                return Err(MSG_OFFLINE_OR_STALE.to_string());
            }
        }
        SubagentRunGate::Later => {
            if !state.is_heartbeat_fresh(now_ms) {
                return Err(MSG_OFFLINE_OR_STALE.to_string());
            }
            let model_execution = state
                .capabilities
                .as_ref()
                .map(|c| &c.services.model_execution);
            match model_execution {
                Some(service) if service.ready => {}
                Some(service) => {
                    return Err(service
                        .reason
                        .clone()
                        .unwrap_or_else(|| MSG_MODEL_PROVIDERS_UNAVAILABLE.to_string()))
                }
                None => return Err(MSG_MODEL_PROVIDERS_UNAVAILABLE.to_string()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{HostCapability, ProviderCapability, Providers};
    use serde_json::json;

    const NOW: i64 = 1_735_732_800_000; // 2025-01-01T12:00:00Z
    const FRESH: &str = "2025-01-01T11:59:45Z";
    const STALE: &str = "2025-01-01T11:50:00Z";

    fn caps(install: bool, provider_ready: bool) -> Capabilities {
        let provider = if provider_ready {
            ProviderCapability::available(None)
        } else {
            ProviderCapability::unavailable("ENOENT")
        };
        Capabilities::assemble(
            Providers {
                claude_code: provider.clone(),
                codex: provider.clone(),
                gemini: provider,
            },
            HostCapability::gateway(None, install),
            None,
        )
    }

    fn state(team: bool, status: &str, last_seen: Option<&str>) -> ControlState {
        ControlState {
            full_control_enabled: team,
            status: status.into(),
            last_seen_at: last_seen.map(str::to_string),
            capabilities: Some(caps(true, true)),
        }
    }

    #[test]
    fn control_state_normalization() {
        assert_eq!(ControlState::from_row(None), None);
        let s = ControlState::from_row(Some(&json!({
            "full_control_enabled": "true", "status": 3, "last_seen_at": 12,
            "capabilities": {"schema_version": "v1"}
        })))
        .unwrap();
        assert!(!s.full_control_enabled, "only boolean true counts");
        assert_eq!(s.status, "unknown");
        assert_eq!(s.last_seen_at, None);
        assert_eq!(
            s.capabilities, None,
            "invalid capabilities are treated as null"
        );
        let s = ControlState::from_row(Some(&json!({
            "full_control_enabled": true, "status": "ready", "last_seen_at": FRESH,
            "capabilities": caps(true, true).to_value()
        })))
        .unwrap();
        assert!(s.is_ready_and_fresh(NOW));
        assert!(s.capabilities.is_some());
    }

    /// (row name, install flag, control state, expected gate result)
    type GateRow = (
        &'static str,
        bool,
        Option<ControlState>,
        Result<(), MachineControlDenial>,
    );

    #[test]
    fn seed_shell_session_gate_rows_in_order() {
        use MachineControlDenial as D;
        let rows: [GateRow; 8] = [
            (
                "0. state unavailable beats everything",
                false,
                None,
                Err(D::ControlStateUnavailable),
            ),
            (
                "1. install off beats team off",
                false,
                Some(state(false, "error", None)),
                Err(D::SeedInstallDisabled),
            ),
            (
                "2. team off beats stale",
                true,
                Some(state(false, "offline", Some(STALE))),
                Err(D::SeedTeamDisabled),
            ),
            (
                "3. status not ready",
                true,
                Some(state(true, "pending", Some(FRESH))),
                Err(D::OfflineOrStale),
            ),
            (
                "3. heartbeat stale",
                true,
                Some(state(true, "ready", Some(STALE))),
                Err(D::OfflineOrStale),
            ),
            (
                "3. heartbeat missing",
                true,
                Some(state(true, "ready", None)),
                Err(D::OfflineOrStale),
            ),
            (
                "pass",
                true,
                Some(state(true, "ready", Some(FRESH))),
                Ok(()),
            ),
            (
                "seed ignores the machine_control service",
                true,
                Some(ControlState {
                    capabilities: None,
                    ..state(true, "ready", Some(FRESH))
                }),
                Ok(()),
            ),
        ];
        for (name, install, s, expected) in rows {
            assert_eq!(
                check_shell_session_machine_control(install, s.as_ref(), NOW),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn later_shell_exec_gate_rows_in_order() {
        use MachineControlDenial as D;
        let no_service = ControlState {
            capabilities: Some(caps(false, true)),
            ..state(true, "error", Some(FRESH))
        };
        let no_caps = ControlState {
            capabilities: None,
            ..state(true, "ready", Some(FRESH))
        };
        let rows: [GateRow; 7] = [
            (
                "1. state unavailable",
                true,
                None,
                Err(D::ControlStateUnavailable),
            ),
            (
                "2. stale beats team and install",
                false,
                Some(state(false, "ready", Some(STALE))),
                Err(D::OfflineOrStale),
            ),
            (
                "3. team off beats install off",
                false,
                Some(state(false, "ready", Some(FRESH))),
                Err(D::LaterTeamDisabled),
            ),
            (
                "4. install off",
                false,
                Some(state(true, "ready", Some(FRESH))),
                Err(D::LaterInstallDisabled),
            ),
            (
                "5. service not ready",
                true,
                Some(no_service),
                Err(D::ServiceUnavailable),
            ),
            (
                "5. capabilities missing",
                true,
                Some(no_caps),
                Err(D::ServiceUnavailable),
            ),
            (
                "pass, status not required",
                true,
                Some(state(true, "pending", Some(FRESH))),
                Ok(()),
            ),
        ];
        for (name, install, s, expected) in rows {
            assert_eq!(
                check_shell_exec_machine_control(install, s.as_ref(), NOW),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn denial_messages_are_exact() {
        use MachineControlDenial as D;
        assert_eq!(
            D::ControlStateUnavailable.message(),
            "Gateway control state unavailable"
        );
        assert_eq!(
            D::SeedInstallDisabled.message(),
            "Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host."
        );
        assert_eq!(
            D::SeedTeamDisabled.message(),
            "Gateway connection full control is disabled by team settings."
        );
        assert_eq!(
            D::OfflineOrStale.message(),
            "Gateway is offline or heartbeat is stale"
        );
        assert_eq!(
            D::LaterTeamDisabled.message(),
            "Gateway machine control is disabled in Team Integrations."
        );
        assert_eq!(
            D::LaterInstallDisabled.message(),
            "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host."
        );
        assert_eq!(
            D::ServiceUnavailable.message(),
            "Gateway machine control service is unavailable."
        );
    }

    #[test]
    fn subagent_run_gate_rows() {
        let seed = SubagentRunGate::Seed;
        let later = SubagentRunGate::Later;
        assert_eq!(
            check_subagent_run_gateway_state(None, NOW, seed),
            Err(MSG_CONTROL_STATE_UNAVAILABLE.into())
        );
        assert_eq!(
            check_subagent_run_gateway_state(Some(&state(true, "pending", Some(FRESH))), NOW, seed),
            Err(MSG_OFFLINE_OR_STALE.into()),
            "seed requires ready"
        );
        assert_eq!(
            check_subagent_run_gateway_state(Some(&state(false, "ready", Some(FRESH))), NOW, seed),
            Ok(())
        );
        assert_eq!(
            check_subagent_run_gateway_state(
                Some(&state(true, "pending", Some(FRESH))),
                NOW,
                later
            ),
            Ok(()),
            "later requires freshness only"
        );
        assert_eq!(
            check_subagent_run_gateway_state(Some(&state(true, "ready", Some(STALE))), NOW, later),
            Err(MSG_OFFLINE_OR_STALE.into())
        );
        let no_model = ControlState {
            capabilities: Some(caps(true, false)),
            ..state(true, "ready", Some(FRESH))
        };
        assert_eq!(
            check_subagent_run_gateway_state(Some(&no_model), NOW, later),
            Err("No gateway AI model provider is healthy".into())
        );
        let no_caps = ControlState {
            capabilities: None,
            ..state(true, "ready", Some(FRESH))
        };
        assert_eq!(
            check_subagent_run_gateway_state(Some(&no_caps), NOW, later),
            Err(MSG_MODEL_PROVIDERS_UNAVAILABLE.into())
        );
    }
}
