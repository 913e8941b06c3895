//! Job transition guard for gateway principals (control-plane §16.4).
//!
//! The hub applies this to every `gateway_jobs` update made with a gateway's
//! token, so that a buggy or compromised gateway cannot rewrite history. The
//! service role (the control plane itself) does not call it.

use crate::rows::GatewayJobRow;
use crate::status::JobStatus;

/// SQLSTATE the hub reports for a guard failure (`insufficient_privilege`).
pub const GUARD_SQLSTATE: &str = "42501";

/// `Display` matches the SQL trigger's exception texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// One of `id`, `team_id`, `job_type`, `payload`, `created_at` changed.
    #[error("gateway may not modify job identity")]
    IdentityChanged { field: &'static str },
    #[error("gateway may only hold its own jobs")]
    ForeignGateway,
    #[error("illegal job transition {from} -> {to}")]
    IllegalTransition { from: JobStatus, to: JobStatus },
}

impl GuardError {
    pub fn sqlstate(&self) -> &'static str {
        GUARD_SQLSTATE
    }
}

/// Allowed status changes for a gateway: `queued → running` and
/// `running → completed | failed | cancelled`. An unchanged status always
/// passes (debug-only updates).
pub fn is_allowed_job_transition(from: JobStatus, to: JobStatus) -> bool {
    from == to
        || matches!(
            (from, to),
            (JobStatus::Queued, JobStatus::Running)
                | (
                    JobStatus::Running,
                    JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
                )
        )
}

/// Checks an update of `old` into `new` made by the gateway `acting_gateway_id`,
/// in the trigger's order: identity, ownership, then status transition.
pub fn check_gateway_job_transition(
    old: &GatewayJobRow,
    new: &GatewayJobRow,
    acting_gateway_id: &str,
) -> Result<(), GuardError> {
    let identity = [
        ("id", old.id != new.id),
        ("team_id", old.team_id != new.team_id),
        ("job_type", old.job_type != new.job_type),
        // serde_json maps compare key-order-insensitively, like jsonb equality.
        ("payload", old.payload != new.payload),
        ("created_at", old.created_at != new.created_at),
    ];
    if let Some((field, _)) = identity.into_iter().find(|(_, changed)| *changed) {
        return Err(GuardError::IdentityChanged { field });
    }
    if new.gateway_id.as_deref() != Some(acting_gateway_id) {
        return Err(GuardError::ForeignGateway);
    }
    if !is_allowed_job_transition(old.status, new.status) {
        return Err(GuardError::IllegalTransition {
            from: old.status,
            to: new.status,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: JobStatus) -> GatewayJobRow {
        serde_json::from_value(json!({
            "id": "job-1", "team_id": "team-1", "gateway_id": "gw-1", "job_type": "diagnostic",
            "status": status.as_str(), "payload": {"a": 1, "b": 2}, "created_at": "2025-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn with(status: JobStatus, edit: impl FnOnce(&mut GatewayJobRow)) -> GatewayJobRow {
        let mut row = job(status);
        edit(&mut row);
        row
    }

    #[test]
    fn status_transition_matrix() {
        use JobStatus::*;
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let allowed = from == to
                    || (*from == Queued && *to == Running)
                    || (*from == Running && matches!(to, Completed | Failed | Cancelled));
                assert_eq!(
                    is_allowed_job_transition(*from, *to),
                    allowed,
                    "{from} -> {to}"
                );
                let result = check_gateway_job_transition(&job(*from), &job(*to), "gw-1");
                if allowed {
                    assert_eq!(result, Ok(()), "{from} -> {to}");
                } else {
                    assert_eq!(
                        result,
                        Err(GuardError::IllegalTransition {
                            from: *from,
                            to: *to
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn identity_fields_are_immutable() {
        let old = job(JobStatus::Running);
        let cases: [(&str, GatewayJobRow); 5] = [
            ("id", with(JobStatus::Running, |r| r.id = "job-2".into())),
            (
                "team_id",
                with(JobStatus::Running, |r| r.team_id = "team-2".into()),
            ),
            (
                "job_type",
                with(JobStatus::Running, |r| {
                    r.job_type = "model_run".to_string().into()
                }),
            ),
            (
                "payload",
                with(JobStatus::Running, |r| r.payload = json!({"a": 1})),
            ),
            (
                "created_at",
                with(JobStatus::Running, |r| r.created_at = None),
            ),
        ];
        for (field, new) in cases {
            let err = check_gateway_job_transition(&old, &new, "gw-1").unwrap_err();
            assert_eq!(err, GuardError::IdentityChanged { field });
            assert_eq!(err.to_string(), "gateway may not modify job identity");
            assert_eq!(err.sqlstate(), "42501");
        }
    }

    #[test]
    fn payload_key_order_does_not_count_as_a_change() {
        let old = job(JobStatus::Queued);
        let new = with(JobStatus::Running, |r| r.payload = json!({"b": 2, "a": 1}));
        assert_eq!(check_gateway_job_transition(&old, &new, "gw-1"), Ok(()));
    }

    #[test]
    fn gateway_may_only_hold_its_own_jobs() {
        let old = job(JobStatus::Queued);
        let claim_for_other = with(JobStatus::Running, |r| r.gateway_id = Some("gw-2".into()));
        assert_eq!(
            check_gateway_job_transition(&old, &claim_for_other, "gw-1"),
            Err(GuardError::ForeignGateway)
        );
        let released = with(JobStatus::Running, |r| r.gateway_id = None);
        assert_eq!(
            check_gateway_job_transition(&old, &released, "gw-1"),
            Err(GuardError::ForeignGateway)
        );
        // Another gateway touching our job, even without a status change.
        assert_eq!(
            check_gateway_job_transition(&old, &old, "gw-2"),
            Err(GuardError::ForeignGateway)
        );
        // Claiming an untargeted job re-writes gateway_id to ourselves: allowed.
        let untargeted = with(JobStatus::Queued, |r| r.gateway_id = None);
        assert_eq!(
            check_gateway_job_transition(&untargeted, &job(JobStatus::Running), "gw-1"),
            Ok(())
        );
    }

    #[test]
    fn identity_is_checked_before_ownership_and_status() {
        let old = job(JobStatus::Completed);
        let new = with(JobStatus::Queued, |r| {
            r.id = "x".into();
            r.gateway_id = None;
        });
        assert_eq!(
            check_gateway_job_transition(&old, &new, "gw-1"),
            Err(GuardError::IdentityChanged { field: "id" })
        );
        let new = with(JobStatus::Queued, |r| r.gateway_id = None);
        assert_eq!(
            check_gateway_job_transition(&old, &new, "gw-1"),
            Err(GuardError::ForeignGateway)
        );
        assert_eq!(
            GuardError::IllegalTransition {
                from: JobStatus::Completed,
                to: JobStatus::Queued
            }
            .to_string(),
            "illegal job transition completed -> queued"
        );
    }
}
