//! The shell gate: machine control (runtime.md §4.9, control-plane §13.4)
//! and remote-shell resource validation (§5.3, §13.5), built on
//! `panorama_protocol::shell_gate` and `panorama_protocol::remote_shell`.
//!
//! Pure: the caller loads the rows and re-reads the install flag.

use panorama_protocol::remote_shell::{
    validate_remote_shell_resource, RemoteShellContext, RemoteShellWording, ShellAccess,
    MSG_RESOURCE_LOAD_FAILED,
};
use panorama_protocol::rows::TeamResourceRow;
use panorama_protocol::shell_gate::{
    check_shell_exec_machine_control, check_shell_session_machine_control, ControlState,
};
use serde_json::Value;

/// Which job's rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellGateKind {
    /// `shell_session` \[SEED\]: unavailable → install → team → ready+fresh;
    /// seed resource wording.
    Session,
    /// `shell_exec` \[LATER\]: unavailable → fresh → team → install →
    /// `services.machine_control.ready`; later wording, `vm_id` binding.
    Exec,
}

/// Our identity: the job's team and this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellIdentity {
    pub team_id: String,
    pub gateway_id: String,
}

/// Machine-control inputs, loaded fresh for every job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GateInputs {
    /// `full_control_enabled` re-read from `gateway.json` (JSON `true` only).
    pub install_full_control: bool,
    /// The `team_gateways` control state; `None` when the load failed or
    /// found no row (→ `Gateway control state unavailable`).
    pub control_state: Option<ControlState>,
    /// `team_gateways.vm_id` (managed-VM guests only; `shell_exec`).
    pub gateway_vm_id: Option<String>,
}

impl GateInputs {
    /// From the install flag and the `team_gateways` row (`maybeSingle`:
    /// `None` for no row or a failed load). Reads `full_control_enabled`,
    /// `status`, `last_seen_at`, `capabilities` and `vm_id`.
    pub fn from_gateway_row(install_full_control: bool, row: Option<&Value>) -> Self {
        GateInputs {
            install_full_control,
            control_state: ControlState::from_row(row),
            gateway_vm_id: row
                .and_then(|r| r.get("vm_id"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        }
    }
}

/// The machine-control check; `Err` is the exact job message.
pub fn check_machine_control(
    kind: ShellGateKind,
    inputs: &GateInputs,
    now_ms: i64,
) -> Result<(), String> {
    let state = inputs.control_state.as_ref();
    let result = match kind {
        ShellGateKind::Session => {
            check_shell_session_machine_control(inputs.install_full_control, state, now_ms)
        }
        ShellGateKind::Exec => {
            check_shell_exec_machine_control(inputs.install_full_control, state, now_ms)
        }
    };
    result.map_err(|denial| denial.message())
}

/// Resource validation. `resource` is the load result: `Err` for a failed
/// load (→ `Failed to load remote shell resource`), `Ok(None)` for no row.
pub fn check_resource(
    kind: ShellGateKind,
    identity: &ShellIdentity,
    inputs: &GateInputs,
    resource: Result<Option<&TeamResourceRow>, &str>,
    access: ShellAccess,
) -> Result<(), String> {
    let row = resource.map_err(|_| MSG_RESOURCE_LOAD_FAILED.to_string())?;
    let ctx = RemoteShellContext {
        team_id: &identity.team_id,
        gateway_id: &identity.gateway_id,
        gateway_vm_id: match kind {
            ShellGateKind::Session => None,
            ShellGateKind::Exec => inputs.gateway_vm_id.as_deref(),
        },
        required_access: access,
        wording: match kind {
            ShellGateKind::Session => RemoteShellWording::Seed,
            ShellGateKind::Exec => RemoteShellWording::Later,
        },
    };
    validate_remote_shell_resource(row, &ctx).map_err(|e| e.message())
}

/// Both checks, machine control first: Ok, or the spec's exact denial.
pub fn check_shell_gate(
    kind: ShellGateKind,
    identity: &ShellIdentity,
    inputs: &GateInputs,
    resource: Result<Option<&TeamResourceRow>, &str>,
    access: ShellAccess,
    now_ms: i64,
) -> Result<(), String> {
    check_machine_control(kind, inputs, now_ms)?;
    check_resource(kind, identity, inputs, resource, access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_735_732_800_000; // 2025-01-01T12:00:00Z

    fn ident() -> ShellIdentity {
        ShellIdentity {
            team_id: "t1".into(),
            gateway_id: "g1".into(),
        }
    }

    fn row() -> TeamResourceRow {
        serde_json::from_value(
            json!({"id": "r1", "team_id": "t1", "resource_type": "remote_shell",
            "max_access_level": "editor", "metadata": {"gateway_id": "g1", "full_control": true}}),
        )
        .unwrap()
    }

    #[test]
    fn session_gate_order_and_messages() {
        let gw = json!({"full_control_enabled": true, "status": "ready", "last_seen_at": "2025-01-01T11:59:50Z"});
        let ok = GateInputs::from_gateway_row(true, Some(&gw));
        let r = row();
        assert_eq!(
            check_shell_gate(
                ShellGateKind::Session,
                &ident(),
                &ok,
                Ok(Some(&r)),
                ShellAccess::Write,
                NOW
            ),
            Ok(())
        );
        let off = GateInputs::from_gateway_row(false, Some(&gw));
        assert_eq!(
            check_shell_gate(ShellGateKind::Session, &ident(), &off, Ok(None), ShellAccess::Read, NOW),
            Err("Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host.".into())
        );
        let none = GateInputs::from_gateway_row(true, None);
        assert_eq!(
            check_machine_control(ShellGateKind::Session, &none, NOW),
            Err("Gateway control state unavailable".into())
        );
        assert_eq!(
            check_shell_gate(
                ShellGateKind::Session,
                &ident(),
                &ok,
                Err("boom"),
                ShellAccess::Read,
                NOW
            ),
            Err("Failed to load remote shell resource".into())
        );
        assert_eq!(
            check_shell_gate(
                ShellGateKind::Session,
                &ident(),
                &ok,
                Ok(None),
                ShellAccess::Read,
                NOW
            ),
            Err("Remote shell resource not found".into())
        );
    }

    #[test]
    fn exec_gate_uses_later_rules_and_vm_binding() {
        let gw = json!({"full_control_enabled": false, "status": "pending",
            "last_seen_at": "2025-01-01T11:59:50Z", "vm_id": " vm-1 "});
        let inputs = GateInputs::from_gateway_row(false, Some(&gw));
        assert_eq!(inputs.gateway_vm_id.as_deref(), Some("vm-1"));
        assert_eq!(
            check_machine_control(ShellGateKind::Exec, &inputs, NOW),
            Err("Gateway machine control is disabled in Team Integrations.".into())
        );
        let mut r = row();
        r.metadata = Some(json!({"vm_id": "vm-2", "full_control": true}));
        assert_eq!(
            check_resource(
                ShellGateKind::Exec,
                &ident(),
                &inputs,
                Ok(Some(&r)),
                ShellAccess::Write
            ),
            Err("Remote shell resource targets a different VM-backed gateway".into())
        );
        r.metadata = Some(json!({"full_control": true}));
        assert_eq!(
            check_resource(
                ShellGateKind::Exec,
                &ident(),
                &inputs,
                Ok(Some(&r)),
                ShellAccess::Write
            ),
            Err("Remote shell resource is missing metadata.gateway_id or metadata.vm_id".into())
        );
    }
}
