//! `panorama-gateway`: the host-side gateway that runs control-plane jobs
//! on a team's machine. This crate is the CLI and its local half (files,
//! paths, config, PID and log files, child environment, redaction); every
//! network step goes through [`network`].

pub mod backend;
pub mod child_env;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contain;
pub mod control_plane;
pub mod delegated;
pub mod env;
pub mod error;
pub mod gateway_events;
pub mod job_context;
pub mod job_debug;
pub mod logfile;
pub mod metrics;
pub mod network;
pub mod outbox;
pub mod output;
pub mod paths;
pub mod pidfile;
pub mod port;
pub mod readiness;
pub mod recovery;
pub mod redact;
pub mod runtime;
pub mod service;
pub mod shell;
pub mod timestamp;

pub use error::{GatewayError, Result};
