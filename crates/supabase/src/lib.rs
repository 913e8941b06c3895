//! Supabase client subset used by `panorama-gateway`, matching supabase-js v2
//! on the wire (see `shared/spec/supabase-wire.md`).
//!
//! * [`Client`]: base URL + anon key; cheap to clone.
//! * PostgREST: [`Client::from`] → [`QueryBuilder`]; [`Client::rpc`].
//! * Edge functions: [`Client::functions`] → [`Functions::invoke`].
//! * Auth: [`Session`], [`Client::set_session`], [`Client::refresh`],
//!   [`Client::on_session_change`], [`Client::get_user`].
//! * Realtime: [`realtime::Realtime`] (Phoenix channels, `postgres_changes`);
//!   [`broadcast::BroadcastChannel`] (one broadcast channel, e.g. a terminal stream).

mod auth;
pub mod broadcast;
mod client;
mod error;
mod functions;
pub mod jwt;
pub mod postgrest;
pub mod realtime;
mod transport;

pub use auth::{Session, SessionCallback};
pub use client::Client;
pub use error::{Error, Result};
pub use functions::{Functions, InvokeOptions};
pub use postgrest::{FilterValue, QueryBuilder};
pub use realtime::{
    ChannelHandle, ChannelStatus, CloseReason, PostgresBinding, PostgresChange, Realtime,
    RealtimeEvent, RealtimeEventKind, RealtimeOptions, ReconnectBackoff, Vsn,
};
pub use transport::ClientOptions;
