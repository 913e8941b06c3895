//! Wire types and pure decision tables of the Panorama gateway protocol.
//!
//! Both `panorama-gateway` (the host-side agent) and `panorama-hub` (the
//! Supabase-compatible control plane) depend on this crate, so every rule
//! that both sides must apply identically lives here exactly once:
//!
//! | Module | Contents | Spec |
//! |---|---|---|
//! | [`status`] | gateway, job, subagent, run and event vocabularies; [`status::JobType`] | control-plane §3, §10.7, §16.3 |
//! | [`rows`] | tolerant serde rows for the seven tables; the strict job-row decoder | §3, §16.3 |
//! | [`jobs`] | job payload parsers with exact refusal texts; handler envelope; final status matrix | §8 |
//! | [`results`] | `diagnostic`, `subagent_cancel`, `shell_session`, `shell_exec` result shapes | §8.1, §8.5, §8.6, §9.5 |
//! | [`cancel`] | cancel adapter registry, `cancel_supported`, `resolve_cancel_request`, cancel metadata | §9.1–§9.4 |
//! | [`capabilities`] | heartbeat capabilities v1, service derivation, v1 validator | §12.2 |
//! | [`operational`] | operational status, ingress state, heartbeat freshness, liveness | §7.4, §12.4, §12.5; runtime §4.5 |
//! | [`full_control`] | full-control layering, boolean parsing, provider support | §13.2, §13.3 |
//! | [`shell_gate`] | control state, machine-control gates, subagent-run gateway gate | §10.2, §13.4; runtime §4.9 |
//! | [`remote_shell`] | remote-shell resource validation | §13.5; runtime §5.3 |
//! | [`guard`] | `gateway_jobs` transition guard for gateway principals | §16.4 |
//! | [`secrets`] | `shell_exec.secret_env` requests, secret placeholder rows, fail-closed resolution check | §4.2, §8.6, §15.1 |
//! | [`subagent`] | output envelope, run-event payload trimming, provider failure message | §8.2, §10.6, §10.7 |
//! | [`time`] | RFC 3339 timestamp parsing | §3.1 freshness |
//!
//! # Invariant: no I/O
//!
//! Nothing here touches the network, the file system, the environment, the
//! clock or a random source. The current time, the install flag read from
//! disk, rows loaded from the database: all arrive as parameters. That keeps
//! every decision table deterministic and unit-testable row by row, and lets
//! the hub and the gateway share them without sharing a runtime.
//!
//! Where the seed (2.29.14) and the later reference version differ, the seed
//! behaviour is the default and the later one is selectable through an enum
//! parameter; see `NOTES.md` for every such choice.

pub mod accepted;
pub mod cancel;
pub mod capabilities;
pub mod full_control;
pub mod guard;
pub mod job;
pub mod jobs;
pub mod operational;
pub mod remote_shell;
pub mod results;
pub mod rows;
pub mod secrets;
pub mod shell_gate;
pub mod status;
pub mod subagent;
pub mod terminal;
pub mod time;
