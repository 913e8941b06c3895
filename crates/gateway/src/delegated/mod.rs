//! Delegated runs: coding-agent CLIs (Claude Code, Codex, Gemini) run on
//! this host for the control plane — `model_run` (control-plane §8.2),
//! `subagent_run` (§10, with live events), `subagent_cancel` (§9), provider
//! discovery/validation/health (providers.md §1–2) and the shutdown of
//! active agents (§10.8.6).
//!
//! The state they share (detected providers, active runs, pending cancels,
//! run event counters) is `job_context::Delegated`, part of the `JobContext`
//! every handler receives. Nothing here imports the runtime.

pub mod accepted_run;
pub mod active;
pub mod agent_process;
pub mod cancel;
pub mod error;
pub mod events;
pub mod model_run;
pub mod out_of_band;
pub mod process;
pub mod providers;
pub mod run_outcome;
pub mod shutdown;
pub mod subagent_run;
pub mod workdir;

pub use error::DelegatedError;
