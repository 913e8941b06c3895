//! Provider adapters for the Panorama gateway: Claude Code, Codex CLI and
//! Gemini CLI (spec: `providers.md`).
//!
//! - [`registry`]: ids, labels, subagent types, command resolution, `PATH` lookup.
//! - [`flags`]: supported-flag detection from `--help` text.
//! - [`probe`]: async `--version`/`--help` probes with a timeout.
//! - [`health`]: validation modes, health transitions, `providerHealth` map.
//! - [`config`]: subagent config parsing and the run context.
//! - [`argv`]: pure argv/env/file plans for subagent runs, model runs and validation.
//! - [`delivery`]: whether a prompt goes on the command line or on stdin.
//! - [`collector`]: the stream-JSON stdout collector with its limits.
//! - [`normalize`]: per-provider line normalizers → run events.
//! - [`output`]: output envelopes, final result/metadata extraction, model-run extraction.
//! - [`retry`]: retry config and classification.
//! - [`transcript`]: the transcript format of `panorama-fake-agent`.

pub mod argv;
pub mod collector;
pub mod config;
pub mod delivery;
pub mod error;
pub mod flags;
pub mod health;
pub mod normalize;
pub mod output;
pub mod probe;
pub mod registry;
pub mod retry;
pub mod transcript;

pub use error::ProviderError;
pub use registry::ProviderId;
