//! panorama-hub: a self-hosted, Supabase-compatible control plane.
//! See ARCHITECTURE.md for the map.

// Handlers return a ready `Response` as their error: that is axum's idiom,
// and the size of the error variant does not matter on this path.
#![allow(clippy::result_large_err)]

pub mod active_cache;
pub mod api;
pub mod app;
pub mod attach;
pub mod auth;
pub mod changes;
pub mod cli;
pub mod cli_text;
pub mod client;
pub mod config;
pub mod console;
pub mod error;
pub mod gateway_view;
pub mod login;
pub mod metrics;
pub mod people;
pub mod policy;
pub mod postgrest;
pub mod realtime;
pub mod runs;
pub mod schema;
pub mod schema_sql;
pub mod secrets;
pub mod server;
pub mod shell_jobs;
pub mod store;
pub mod store_http;
pub mod sweeper;
pub mod term;
pub mod up;
pub mod values;
