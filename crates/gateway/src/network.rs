//! The network boundary: every step that needs the control-plane client
//! (crate `panorama-supabase`, in progress) goes through exactly one
//! function here. Each currently returns [`GatewayError::NotAvailable`];
//! the integrator replaces the bodies, everything around them is done.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::config::{GatewayConfig, ProviderHealth};
use crate::error::{GatewayError, Result};
use crate::paths::GatewayPaths;
use std::collections::BTreeMap;

/// Input of the pairing exchange (control-plane.md §2.2).
#[derive(Debug, Clone)]
pub struct PairingRequest {
    pub backend: Backend,
    /// Trimmed pairing code.
    pub code: String,
    pub device_name: String,
}

/// A successful pairing exchange. All four ids/tokens are non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingExchange {
    pub access_token: String,
    pub refresh_token: String,
    pub gateway_id: String,
    pub team_id: String,
}

/// `pair` step 4–5: POST `{url}/functions/v1/exchange-gateway-pairing-code`
/// with `{code, device_name}`, `apikey` and `Authorization: Bearer <anon>`.
/// Errors: `Pairing response missing required fields`,
/// `Pairing failed with status <n>` or the body's `error` string.
///
/// WIRE HERE (pair).
pub fn exchange_pairing_code(_request: &PairingRequest) -> Result<PairingExchange> {
    Err(GatewayError::NotAvailable {
        what: "Pairing with the control plane",
    })
}

/// Everything the foreground runtime needs; the config has already been
/// saved with the resolved backend and device name (runtime.md §1.6.2
/// step B.5).
#[derive(Debug, Clone)]
pub struct RuntimeRequest {
    pub paths: GatewayPaths,
    pub config: GatewayConfig,
    pub backend: Backend,
    pub device_name: String,
    /// Set when the fallback config dir is in use (emit `config_dir_fallback`).
    pub migrated_from: Option<PathBuf>,
    pub verbose: bool,
}

/// `start --foreground` steps B.6 onwards: `setSession`, token persistence,
/// provider validation, heartbeat, job ingress, PID file (write with
/// `pidfile::write_pid` after the first heartbeat, remove with
/// `pidfile::remove_own` at shutdown), signal handling. Returns when the
/// gateway has shut down.
///
/// WIRE HERE (start).
pub fn run_gateway_runtime(_request: RuntimeRequest) -> Result<()> {
    Err(GatewayError::NotAvailable {
        what: "The gateway runtime (control-plane session and job processing)",
    })
}

/// Input of the provider checks of `doctor` and of `pair` step 8.
#[derive(Debug, Clone)]
pub struct ProviderCheckRequest {
    pub paths: GatewayPaths,
    /// The loaded config, if any (events need an authenticated client).
    pub config: Option<GatewayConfig>,
    pub migrated_from: Option<PathBuf>,
    /// `pairing` or `doctor` (event context).
    pub context: &'static str,
    pub verbose: bool,
}

/// Result of a full provider validation.
#[derive(Debug, Clone, Default)]
pub struct ProviderCheckOutcome {
    pub provider_health: BTreeMap<String, ProviderHealth>,
    pub any_provider_ready: bool,
}

/// `doctor` steps 2–4 and `pair` steps 8 and 11: CLI discovery, full
/// provider validation with progress lines, then (when paired) an event
/// client that flushes queued events, `config_dir_fallback` and
/// `provider_validation` events. The caller prints the summary and saves
/// `providerHealth`.
///
/// WIRE HERE (doctor, and pair's post-pairing validation).
pub fn check_providers(_request: &ProviderCheckRequest) -> Result<ProviderCheckOutcome> {
    Err(GatewayError::NotAvailable {
        what: "Provider validation",
    })
}
