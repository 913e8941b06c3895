//! Remote-shell resource validation (`remote-shell-resource`, control-plane
//! §13.5, runtime §5.3). Runs before every shell action; the first failing
//! rule wins and its message becomes the job error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::rows::TeamResourceRow;
use crate::status::wire_enum;

pub const REMOTE_SHELL_RESOURCE_TYPE: &str = "remote_shell";
pub const VIEWER_ACCESS_LEVEL: &str = "viewer";

pub const MSG_RESOURCE_LOAD_FAILED: &str = "Failed to load remote shell resource";
pub const MSG_RESOURCE_LOAD_FAILED_LOG: &str =
    "Failed to load remote shell resource for gateway validation";
pub const MSG_GATEWAY_IDENTITY_LOAD_FAILED: &str =
    "Failed to load gateway identity for remote shell resource";
pub const MSG_GATEWAY_IDENTITY_MISSING: &str = "Gateway identity is missing";

/// Access an action needs on the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellAccess {
    Read,
    Write,
}
wire_enum!(ShellAccess { Read => "read", Write => "write" });

/// Which text row 6 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteShellWording {
    /// `…missing metadata.gateway_id` (seed, inferred). Default.
    #[default]
    Seed,
    /// `…missing metadata.gateway_id or metadata.vm_id` (later).
    Later,
}

/// What the resource must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteShellContext<'a> {
    pub team_id: &'a str,
    pub gateway_id: &'a str,
    /// `team_gateways.vm_id` for managed-VM guests; `None` for local gateways.
    pub gateway_vm_id: Option<&'a str>,
    pub required_access: ShellAccess,
    pub wording: RemoteShellWording,
}

/// A failed rule; `Display` is the exact user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteShellResourceError {
    #[error("Remote shell resource not found")]
    NotFound,
    #[error("Remote shell resource belongs to another team")]
    OtherTeam,
    #[error("Resource is not a remote shell target (found {found})")]
    NotRemoteShell { found: String },
    #[error("Remote shell resource is configured for viewer access. Full access is required for this action.")]
    ViewerOnly,
    #[error("Remote shell resource targets a different VM-backed gateway")]
    OtherVm,
    #[error("Remote shell resource is missing metadata.gateway_id")]
    MissingGatewayId,
    #[error("Remote shell resource is missing metadata.gateway_id or metadata.vm_id")]
    MissingGatewayOrVmId,
    #[error("Remote shell resource targets a different gateway")]
    OtherGateway,
    #[error("Remote shell resource machine control is disabled")]
    MachineControlDisabled,
}

impl RemoteShellResourceError {
    pub fn message(&self) -> String {
        self.to_string()
    }
}

fn trimmed_string<'a>(metadata: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    metadata
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// §13.5 rows 1–8, first failure wins. `row` is the `maybeSingle` result.
pub fn validate_remote_shell_resource(
    row: Option<&TeamResourceRow>,
    ctx: &RemoteShellContext<'_>,
) -> Result<(), RemoteShellResourceError> {
    use RemoteShellResourceError as E;
    // 1.
    let row = row.ok_or(E::NotFound)?;
    // 2.
    if row.team_id != ctx.team_id {
        return Err(E::OtherTeam);
    }
    // 3.
    if row.resource_type != REMOTE_SHELL_RESOURCE_TYPE {
        return Err(E::NotRemoteShell {
            found: row.resource_type.clone(),
        });
    }
    // 4.
    if ctx.required_access == ShellAccess::Write && row.max_access_level == VIEWER_ACCESS_LEVEL {
        return Err(E::ViewerOnly);
    }
    // A non-object metadata counts as {}.
    let empty = Map::new();
    let metadata = row
        .metadata
        .as_ref()
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // 5. A VM-targeted resource is bound by vm_id instead of gateway_id.
    if let Some(vm_id) = trimmed_string(metadata, "vm_id") {
        if ctx.gateway_vm_id.map(str::trim) != Some(vm_id) {
            return Err(E::OtherVm);
        }
    } else {
        // 6.
        let gateway_id = trimmed_string(metadata, "gateway_id").ok_or(match ctx.wording {
            RemoteShellWording::Seed => E::MissingGatewayId,
            RemoteShellWording::Later => E::MissingGatewayOrVmId,
        })?;
        // 7.
        if gateway_id != ctx.gateway_id {
            return Err(E::OtherGateway);
        }
    }
    // 8. Only a real boolean true enables it.
    if metadata.get("full_control") != Some(&Value::Bool(true)) {
        return Err(E::MachineControlDisabled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(resource_type: &str, level: &str, metadata: Value) -> TeamResourceRow {
        serde_json::from_value(json!({
            "id": "res-1", "team_id": "team-1", "resource_type": resource_type,
            "max_access_level": level, "metadata": metadata
        }))
        .unwrap()
    }

    fn ctx(access: ShellAccess) -> RemoteShellContext<'static> {
        RemoteShellContext {
            team_id: "team-1",
            gateway_id: "gw-1",
            gateway_vm_id: None,
            required_access: access,
            wording: RemoteShellWording::Seed,
        }
    }

    fn good_metadata() -> Value {
        json!({"gateway_id": "gw-1", "full_control": true})
    }

    #[test]
    fn row_1_not_found() {
        let err = validate_remote_shell_resource(None, &ctx(ShellAccess::Read)).unwrap_err();
        assert_eq!(err.message(), "Remote shell resource not found");
    }

    #[test]
    fn row_2_other_team() {
        let mut r = resource("remote_shell", "editor", good_metadata());
        r.team_id = "team-2".into();
        let err = validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)).unwrap_err();
        assert_eq!(
            err.message(),
            "Remote shell resource belongs to another team"
        );
    }

    #[test]
    fn row_3_wrong_type() {
        let r = resource("database", "editor", good_metadata());
        let err = validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)).unwrap_err();
        assert_eq!(
            err.message(),
            "Resource is not a remote shell target (found database)"
        );
    }

    #[test]
    fn row_4_viewer_blocks_write_only() {
        let r = resource("remote_shell", "viewer", good_metadata());
        let err = validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Write)).unwrap_err();
        assert_eq!(
            err.message(),
            "Remote shell resource is configured for viewer access. Full access is required for this action."
        );
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)),
            Ok(())
        );
        let r = resource("remote_shell", "Viewer", good_metadata());
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Write)),
            Ok(()),
            "only the exact value viewer forbids writes"
        );
    }

    #[test]
    fn row_5_vm_id_binds_instead_of_gateway_id() {
        let r = resource(
            "remote_shell",
            "editor",
            json!({"vm_id": " vm-1 ", "full_control": true}),
        );
        let err = validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Write)).unwrap_err();
        assert_eq!(
            err.message(),
            "Remote shell resource targets a different VM-backed gateway"
        );
        let vm_ctx = RemoteShellContext {
            gateway_vm_id: Some("vm-2"),
            ..ctx(ShellAccess::Write)
        };
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &vm_ctx),
            Err(RemoteShellResourceError::OtherVm)
        );
        // Matching VM: rows 6–7 are skipped even with a foreign gateway_id.
        let r = resource(
            "remote_shell",
            "editor",
            json!({"vm_id": "vm-1", "gateway_id": "gw-other", "full_control": true}),
        );
        let vm_ctx = RemoteShellContext {
            gateway_vm_id: Some("vm-1"),
            ..ctx(ShellAccess::Write)
        };
        assert_eq!(validate_remote_shell_resource(Some(&r), &vm_ctx), Ok(()));
        // A blank vm_id is ignored.
        let r = resource(
            "remote_shell",
            "editor",
            json!({"vm_id": "  ", "gateway_id": "gw-1", "full_control": true}),
        );
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Write)),
            Ok(())
        );
    }

    #[test]
    fn row_6_missing_gateway_id_in_both_wordings() {
        for metadata in [
            json!({"gateway_id": "  ", "full_control": true}),
            json!("junk"),
            Value::Null,
        ] {
            let r = resource("remote_shell", "editor", metadata);
            let err =
                validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)).unwrap_err();
            assert_eq!(
                err.message(),
                "Remote shell resource is missing metadata.gateway_id"
            );
            let later = RemoteShellContext {
                wording: RemoteShellWording::Later,
                ..ctx(ShellAccess::Read)
            };
            let err = validate_remote_shell_resource(Some(&r), &later).unwrap_err();
            assert_eq!(
                err.message(),
                "Remote shell resource is missing metadata.gateway_id or metadata.vm_id"
            );
        }
    }

    #[test]
    fn row_7_other_gateway() {
        let r = resource(
            "remote_shell",
            "editor",
            json!({"gateway_id": "gw-2", "full_control": true}),
        );
        let err = validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)).unwrap_err();
        assert_eq!(
            err.message(),
            "Remote shell resource targets a different gateway"
        );
        let r = resource(
            "remote_shell",
            "editor",
            json!({"gateway_id": " gw-1 ", "full_control": true}),
        );
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)),
            Ok(()),
            "trimmed"
        );
    }

    #[test]
    fn row_8_full_control_must_be_boolean_true() {
        for flag in [json!(false), json!("true"), json!(1), Value::Null] {
            let r = resource(
                "remote_shell",
                "editor",
                json!({"gateway_id": "gw-1", "full_control": flag}),
            );
            let err =
                validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)).unwrap_err();
            assert_eq!(
                err.message(),
                "Remote shell resource machine control is disabled"
            );
        }
        let r = resource("remote_shell", "editor", json!({"gateway_id": "gw-1"}));
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Read)),
            Err(RemoteShellResourceError::MachineControlDisabled)
        );
    }

    #[test]
    fn all_rules_pass() {
        let r = resource("remote_shell", "editor", good_metadata());
        assert_eq!(
            validate_remote_shell_resource(Some(&r), &ctx(ShellAccess::Write)),
            Ok(())
        );
    }
}
