//! panorama-hub: a self-hosted, Supabase-compatible control plane.
//! See ARCHITECTURE.md for the map.

pub mod auth;
pub mod changes;
pub mod error;
pub mod postgrest;
pub mod schema;
pub mod store;
pub mod values;
