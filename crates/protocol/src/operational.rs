//! Operational status, job-ingress state and heartbeat freshness
//! (control-plane §7.4, §12.4, §12.5; runtime §4.5).
//!
//! Every function takes "now" as a parameter so the rules stay pure.

use serde::{Deserialize, Serialize};

use crate::capabilities::{validate_capabilities_v1, Capabilities};
use crate::status::GatewayStatus;
use crate::time::parse_timestamp_ms;

/// Reconcile interval (seed).
pub const RECONCILE_INTERVAL_MS: i64 = 5_000;
/// Ingress counts as ready while the last successful reconcile is this recent.
pub const INGRESS_READY_WINDOW_MS: i64 = 3 * RECONCILE_INTERVAL_MS;
/// Heartbeat interval (seed).
pub const HEARTBEAT_INTERVAL_MS: i64 = 30_000;
/// A heartbeat older than this is stale (gateway-side and server-side).
pub const HEARTBEAT_STALE_MS: i64 = 90_000;

/// Job-ingress state (§7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressState {
    pub pending: bool,
    pub ready: bool,
}

impl IngressState {
    /// Before the first reconcile.
    pub const STARTUP: IngressState = IngressState {
        pending: true,
        ready: false,
    };
    /// Set when shutdown begins.
    pub const SHUTDOWN: IngressState = IngressState {
        pending: false,
        ready: false,
    };

    /// Recomputed after every reconcile attempt (seed `updateJobIngressState`):
    /// `ready` = a success no more than 15 s ago; `pending` = no success and no
    /// failure yet. A failure does not clear an earlier, still-recent success.
    pub fn after_reconcile(
        last_success_at_ms: Option<i64>,
        has_failed_since_success: bool,
        now_ms: i64,
    ) -> Self {
        let ready = last_success_at_ms.is_some_and(|at| now_ms - at <= INGRESS_READY_WINDOW_MS);
        let pending = last_success_at_ms.is_none() && !has_failed_since_success;
        IngressState { pending, ready }
    }
}

/// Which rule decides row 2 of the operational-status table (§12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OperationalStatusRule {
    /// Seed \[INFERRED\]: `error` when no AI provider is ready.
    SeedProviderReadiness,
    /// Later: `error` only when `hosts.gateway.available` is not true, so a
    /// host without any AI CLI still reports `ready` (model readiness lives in
    /// `services.model_execution`). Our default.
    #[default]
    HostAvailability,
}

/// `computeGatewayOperationalStatus`. First matching row wins; `offline` is
/// never computed (it is sent explicitly at shutdown).
pub fn compute_operational_status(
    capabilities: Option<&Capabilities>,
    ingress: Option<IngressState>,
    accepting_jobs: bool,
    rule: OperationalStatusRule,
) -> GatewayStatus {
    // Row 1.
    let Some(capabilities) = capabilities else {
        return GatewayStatus::Pending;
    };
    // Row 2.
    let healthy = match rule {
        OperationalStatusRule::SeedProviderReadiness => capabilities.providers.any_ready(),
        OperationalStatusRule::HostAvailability => capabilities.hosts.gateway.available,
    };
    if !healthy {
        return GatewayStatus::Error;
    }
    // Row 3.
    if !accepting_jobs {
        return GatewayStatus::Pending;
    }
    match ingress {
        // Row 4.
        None => GatewayStatus::Pending,
        Some(state) if state.pending => GatewayStatus::Pending,
        // Row 5.
        Some(state) if state.ready => GatewayStatus::Ready,
        // Row 6.
        Some(_) => GatewayStatus::Error,
    }
}

/// Gateway-side freshness (`isHeartbeatFresh`): `last_seen_at` parses as a
/// date and `now − last_seen_at ≤ 90 000 ms`. A timestamp in the future (clock
/// skew) counts as fresh, as in the seed.
pub fn is_heartbeat_fresh(last_seen_at: Option<&str>, now_ms: i64) -> bool {
    match last_seen_at.and_then(parse_timestamp_ms) {
        Some(seen_ms) => now_ms - seen_ms <= HEARTBEAT_STALE_MS,
        None => false,
    }
}

/// Server-side liveness (later `deriveGatewayLiveness`, §12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayLiveness {
    pub online: bool,
    pub effective_status: GatewayStatus,
}

/// `online` = raw `ready`, fresh heartbeat, and v1 capabilities with
/// `hosts.gateway.available`. A `ready` gateway that is not online is shown as
/// `offline`; every other raw status is shown as is.
pub fn derive_gateway_liveness(
    raw_status: GatewayStatus,
    last_seen_at: Option<&str>,
    capabilities: Option<&serde_json::Value>,
    now_ms: i64,
) -> GatewayLiveness {
    let host_available = capabilities
        .and_then(|value| validate_capabilities_v1(value).ok())
        .is_some_and(|caps| caps.hosts.gateway.available);
    let online = raw_status == GatewayStatus::Ready
        && is_heartbeat_fresh(last_seen_at, now_ms)
        && host_available;
    let effective_status = match raw_status {
        GatewayStatus::Ready if online => GatewayStatus::Ready,
        GatewayStatus::Ready => GatewayStatus::Offline,
        other => other,
    };
    GatewayLiveness {
        online,
        effective_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{HostCapability, ProviderCapability, Providers};

    const NOW: i64 = 1_735_732_800_000; // 2025-01-01T12:00:00Z

    fn caps(provider_ready: bool, host_available: bool) -> Capabilities {
        let provider = if provider_ready {
            ProviderCapability::available(Some("1.0".into()))
        } else {
            ProviderCapability::unavailable("ENOENT")
        };
        let mut host = HostCapability::gateway(None, false);
        host.available = host_available;
        Capabilities::assemble(
            Providers {
                claude_code: provider.clone(),
                codex: ProviderCapability::unavailable("ENOENT"),
                gemini: ProviderCapability::unavailable("ENOENT"),
            },
            host,
            None,
        )
    }

    const READY: Option<IngressState> = Some(IngressState {
        pending: false,
        ready: true,
    });
    const FAILING: Option<IngressState> = Some(IngressState {
        pending: false,
        ready: false,
    });

    #[test]
    fn operational_status_rows_later_rule() {
        let rule = OperationalStatusRule::HostAvailability;
        let ok = caps(true, true);
        // Row 1: no capabilities.
        assert_eq!(
            compute_operational_status(None, READY, true, rule),
            GatewayStatus::Pending
        );
        // Row 2: host unavailable.
        assert_eq!(
            compute_operational_status(Some(&caps(true, false)), READY, true, rule),
            GatewayStatus::Error
        );
        // Row 2 does NOT fire for a host without any AI CLI.
        assert_eq!(
            compute_operational_status(Some(&caps(false, true)), READY, true, rule),
            GatewayStatus::Ready
        );
        // Row 3: not accepting jobs.
        assert_eq!(
            compute_operational_status(Some(&ok), READY, false, rule),
            GatewayStatus::Pending
        );
        // Row 4: ingress null or pending.
        assert_eq!(
            compute_operational_status(Some(&ok), None, true, rule),
            GatewayStatus::Pending
        );
        assert_eq!(
            compute_operational_status(Some(&ok), Some(IngressState::STARTUP), true, rule),
            GatewayStatus::Pending
        );
        // Row 5: ingress ready.
        assert_eq!(
            compute_operational_status(Some(&ok), READY, true, rule),
            GatewayStatus::Ready
        );
        // Row 6: otherwise.
        assert_eq!(
            compute_operational_status(Some(&ok), FAILING, true, rule),
            GatewayStatus::Error
        );
    }

    #[test]
    fn operational_status_rows_seed_rule() {
        let rule = OperationalStatusRule::SeedProviderReadiness;
        let ok = caps(true, true);
        assert_eq!(
            compute_operational_status(None, READY, true, rule),
            GatewayStatus::Pending
        );
        // Row 2 (seed): no provider ready → error even though the host is fine.
        assert_eq!(
            compute_operational_status(Some(&caps(false, true)), READY, true, rule),
            GatewayStatus::Error
        );
        // The seed rule ignores host availability.
        assert_eq!(
            compute_operational_status(Some(&caps(true, false)), READY, true, rule),
            GatewayStatus::Ready
        );
        assert_eq!(
            compute_operational_status(Some(&ok), READY, false, rule),
            GatewayStatus::Pending
        );
        assert_eq!(
            compute_operational_status(Some(&ok), None, true, rule),
            GatewayStatus::Pending
        );
        assert_eq!(
            compute_operational_status(Some(&ok), READY, true, rule),
            GatewayStatus::Ready
        );
        assert_eq!(
            compute_operational_status(Some(&ok), FAILING, true, rule),
            GatewayStatus::Error
        );
    }

    #[test]
    fn row_two_wins_over_row_three() {
        let status = compute_operational_status(
            Some(&caps(true, false)),
            None,
            false,
            OperationalStatusRule::HostAvailability,
        );
        assert_eq!(status, GatewayStatus::Error);
    }

    #[test]
    fn ingress_state_inputs() {
        // Never reconciled, never failed → pending.
        assert_eq!(
            IngressState::after_reconcile(None, false, NOW),
            IngressState {
                pending: true,
                ready: false
            }
        );
        // First attempt failed → neither.
        assert_eq!(
            IngressState::after_reconcile(None, true, NOW),
            IngressState {
                pending: false,
                ready: false
            }
        );
        // Success exactly 15 s ago → ready; 15 001 ms → not.
        assert_eq!(
            IngressState::after_reconcile(Some(NOW - 15_000), false, NOW),
            IngressState {
                pending: false,
                ready: true
            }
        );
        assert_eq!(
            IngressState::after_reconcile(Some(NOW - 15_001), false, NOW),
            IngressState {
                pending: false,
                ready: false
            }
        );
        // A failure after a recent success keeps ready.
        assert!(IngressState::after_reconcile(Some(NOW - 5_000), true, NOW).ready);
        assert_eq!(
            IngressState::SHUTDOWN,
            IngressState {
                pending: false,
                ready: false
            }
        );
    }

    #[test]
    fn heartbeat_freshness_boundaries() {
        assert!(is_heartbeat_fresh(Some("2025-01-01T12:00:00Z"), NOW));
        assert!(
            is_heartbeat_fresh(Some("2025-01-01T11:58:30Z"), NOW),
            "exactly 90 s"
        );
        assert!(
            !is_heartbeat_fresh(Some("2025-01-01T11:58:29.999Z"), NOW),
            "90.001 s"
        );
        assert!(
            is_heartbeat_fresh(Some("2025-01-01T12:05:00+00:00"), NOW),
            "future (skew)"
        );
        assert!(!is_heartbeat_fresh(None, NOW));
        assert!(!is_heartbeat_fresh(Some(""), NOW));
        assert!(!is_heartbeat_fresh(Some("yesterday"), NOW));
    }

    #[test]
    fn liveness_rows() {
        let good = caps(false, true).to_value();
        let fresh = Some("2025-01-01T11:59:30Z");
        let stale = Some("2025-01-01T11:00:00Z");
        let live = derive_gateway_liveness(GatewayStatus::Ready, fresh, Some(&good), NOW);
        assert_eq!(
            live,
            GatewayLiveness {
                online: true,
                effective_status: GatewayStatus::Ready
            }
        );
        let stale_ready = derive_gateway_liveness(GatewayStatus::Ready, stale, Some(&good), NOW);
        assert_eq!(
            stale_ready,
            GatewayLiveness {
                online: false,
                effective_status: GatewayStatus::Offline
            }
        );
        let no_caps = derive_gateway_liveness(GatewayStatus::Ready, fresh, None, NOW);
        assert_eq!(no_caps.effective_status, GatewayStatus::Offline);
        let host_down = caps(true, false).to_value();
        assert!(
            !derive_gateway_liveness(GatewayStatus::Ready, fresh, Some(&host_down), NOW).online
        );
        let invalid = serde_json::json!({"schema_version": "v1"});
        assert!(!derive_gateway_liveness(GatewayStatus::Ready, fresh, Some(&invalid), NOW).online);
        for raw in [
            GatewayStatus::Pending,
            GatewayStatus::Error,
            GatewayStatus::Offline,
        ] {
            let l = derive_gateway_liveness(raw, fresh, Some(&good), NOW);
            assert_eq!(
                l,
                GatewayLiveness {
                    online: false,
                    effective_status: raw
                }
            );
        }
    }
}
