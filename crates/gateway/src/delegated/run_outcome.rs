//! A run's effect on its provider's health (runtime.md §4.6 item 4).

use panorama_protocol::capabilities::ProviderHealthStatus;
use panorama_providers::ProviderId;
use serde_json::json;

use super::providers::persist_health;
use crate::gateway_events as events;
use crate::job_context::JobContext;
use crate::timestamp::now_iso;

/// After a model or subagent run (runtime.md §4.6 item 4): mark the
/// provider healthy/unhealthy, persist, flag the change for the runtime
/// (which rebuilds its capabilities and heartbeats before the job's
/// completion is queued, see `ProviderState::take_health_changed`), and
/// emit `provider_unhealthy` when it became non-healthy.
pub fn record_run_outcome(
    gw: &JobContext,
    provider: ProviderId,
    ok: bool,
    error: Option<&str>,
    context: &str,
    job_id: &str,
    run_id: Option<&str>,
) {
    let state = &gw.delegated.providers;
    let Some((became_unhealthy, health, status)) =
        state.apply_run_outcome(provider, ok, error, &now_iso())
    else {
        return;
    };
    persist_health(&gw.paths, &health);
    state.mark_health_changed();
    if became_unhealthy {
        let level = if status == ProviderHealthStatus::Unhealthy {
            "error"
        } else {
            "warn"
        };
        events::emit(
            &gw.outbox,
            &gw.gateway_id,
            &gw.team_id,
            events::event_row(
                &gw.gateway_id,
                &gw.team_id,
                Some(provider.as_str()),
                level,
                Some("provider_unhealthy"),
                &format!("{} provider marked {}.", provider.label(), status.as_str()),
                json!({"context": context, "status": status.as_str(), "error": error, "job_id": job_id, "run_id": run_id}),
            ),
        );
    }
}
