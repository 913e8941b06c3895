//! Delegated runs: coding-agent CLIs (Claude Code, Codex, Gemini) run on
//! this host for the control plane — `model_run` (control-plane §8.2),
//! `subagent_run` (§10, with live events), `subagent_cancel` (§9), provider
//! discovery/validation/health (providers.md §1–2) and the shutdown of
//! active agents (§10.8.6).
//!
//! The state they share (detected providers, active runs, pending cancels,
//! run event counters) is a [`Delegated`], owned by the runtime's `Gateway`.

pub mod active;
pub mod cancel;
pub mod error;
pub mod events;
pub mod model_run;
pub mod process;
pub mod providers;
pub mod shutdown;
pub mod subagent_run;
pub mod workdir;

use panorama_providers::health::ValidationMode;

use crate::output::Printer;
use crate::runtime::Gateway;

pub use error::DelegatedError;

/// Delegated-run state of one gateway runtime.
#[derive(Default)]
pub struct Delegated {
    pub providers: providers::ProviderState,
    pub active: active::ActiveRuns,
    /// Event sequence counters of runs (see [`events::push_out_of_band`]).
    pub sequences: events::RunSequences,
}

/// Runtime startup (runtime.md §4.1 steps 1–3, 6): CLI discovery and
/// `auto` validation with progress lines, `providerHealth` saved when a
/// full check ran, `provider_validation` events (context `startup`).
pub async fn startup(gw: &Gateway, out: &Printer) {
    let _ = std::fs::create_dir_all(&gw.paths.tmp_dir);
    let previous = crate::config::GatewayConfig::load(&gw.paths.config_path)
        .map(|c| providers::from_stored(&c.provider_health()))
        .unwrap_or_default();
    let commands = providers::resolve_commands();
    tracing::info!(
        claude = %commands[&panorama_providers::ProviderId::ClaudeCode].command,
        codex = %commands[&panorama_providers::ProviderId::Codex].command,
        gemini = %commands[&panorama_providers::ProviderId::Gemini].command,
        "Gateway CLI discovery results"
    );
    out.info("Validating providers...", &[]);
    let report = providers::validate(ValidationMode::Auto, &previous, &gw.paths, &|line| {
        out.info(&line, &[])
    })
    .await;
    gw.delegated.providers.install(&report);
    if !report.full_checked.is_empty() {
        providers::persist_health(&gw.paths, &report.health);
        for row in providers::validation_event_rows(&report, &gw.gateway_id, &gw.team_id, "startup")
        {
            crate::runtime::events::emit(&gw.outbox, &gw.gateway_id, &gw.team_id, row);
        }
    }
}
