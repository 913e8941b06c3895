//! The network boundary: every step that needs the control-plane client
//! (crate `panorama-supabase`) goes through exactly one function here. The
//! commands are synchronous; each function runs its own tokio runtime and
//! delegates to [`crate::runtime`].

use std::path::PathBuf;

use crate::config::{GatewayConfig, ProviderHealth};
use crate::error::{GatewayError, Result};
use crate::paths::GatewayPaths;
use std::collections::BTreeMap;

pub use crate::runtime::pairing::{PairingExchange, PairingRequest};
pub use crate::runtime::RuntimeRequest;

/// `pair` step 4–5: POST `{url}/functions/v1/exchange-gateway-pairing-code`
/// with `{code, device_name}`, `apikey` and `Authorization: Bearer <anon>`.
/// Errors: `Pairing response missing required fields`,
/// `Pairing failed with status <n>` or the body's `error` string.
///
pub fn exchange_pairing_code(request: &PairingRequest) -> Result<PairingExchange> {
    tokio_runtime(false)?.block_on(crate::runtime::pairing::exchange(request))
}

/// A runtime for one command: current-thread for short calls, two workers
/// for the gateway runtime (so the heartbeat task never waits on job work).
fn tokio_runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        GatewayError::cli(
            "Could not start the gateway's async runtime.",
            format!("{e}. Check the process limits (threads, open files)."),
        )
    })
}

/// `start --foreground` steps B.6 onwards: `setSession`, token persistence,
/// provider validation, heartbeat, job ingress, PID file (write with
/// `pidfile::write_pid` after the first heartbeat, remove with
/// `pidfile::remove_own` at shutdown), signal handling. Returns when the
/// gateway has shut down.
pub fn run_gateway_runtime(request: RuntimeRequest) -> Result<()> {
    let runtime = tokio_runtime(true)?;
    let result = runtime.block_on(crate::runtime::run(request));
    // Do not wait for stragglers (e.g. a channel still closing).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
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
    /// Set when no provider was validated because this build has no
    /// provider support: the gateway runs host-only (not an error).
    pub host_only: Option<String>,
}

/// `doctor` steps 2–4 and `pair` steps 8 and 11: CLI discovery and a full
/// provider validation (a real `Say hi.` model run per available CLI, with
/// progress lines in the log), then (when paired) an event client that
/// delivers `config_dir_fallback` and the `provider_validation` events
/// (control-plane §11). The caller prints the summary and saves
/// `providerHealth`.
pub fn check_providers(request: &ProviderCheckRequest) -> Result<ProviderCheckOutcome> {
    let rt = tokio_runtime(false)?;
    let previous = request
        .config
        .as_ref()
        .map(|c| crate::delegated::providers::from_stored(&c.provider_health()))
        .unwrap_or_default();
    let _ = std::fs::create_dir_all(&request.paths.tmp_dir);
    let report = rt.block_on(crate::delegated::providers::validate(
        panorama_providers::health::ValidationMode::Full,
        &previous,
        &request.paths,
        &|line| tracing::info!("{}", line.trim()),
    ));
    if let Some(config) = &request.config {
        let mut rows = Vec::new();
        if let Some(previous) = &request.migrated_from {
            rows.push(crate::runtime::events::config_dir_fallback_row(
                &config.gateway_id,
                &config.team_id,
                previous,
                &request.paths.config_dir,
            ));
        }
        rows.extend(crate::delegated::providers::validation_event_rows(
            &report,
            &config.gateway_id,
            &config.team_id,
            request.context,
        ));
        if !rows.is_empty() {
            rt.block_on(emit_events(request, config, rows));
        }
    }
    Ok(ProviderCheckOutcome {
        provider_health: crate::delegated::providers::to_stored(&report.health),
        any_provider_ready: report.any_provider_ready(),
        host_only: None,
    })
}

/// The event client of pair/doctor (control-plane.md §2.4): authenticate
/// (persisting any rotated tokens), queue the event in the outbox, deliver.
async fn emit_events(
    request: &ProviderCheckRequest,
    config: &GatewayConfig,
    rows: Vec<serde_json::Value>,
) {
    use crate::runtime;
    if config.gateway_id.is_empty() || config.team_id.is_empty() {
        return;
    }
    let client = match runtime::authenticate(
        &config.supabase_url,
        &config.supabase_anon_key,
        &request.paths.config_path,
        &config.access_token,
        &config.refresh_token,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Failed to authenticate gateway event session");
            return;
        }
    };
    let outbox = match crate::outbox::Outbox::open(&runtime::outbox_dir(&request.paths)) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "Failed to record gateway event");
            return;
        }
    };
    for row in rows {
        runtime::events::emit(&outbox, &config.gateway_id, &config.team_id, row);
    }
    let task = outbox.start(client);
    if !outbox.flush(std::time::Duration::from_secs(5)).await {
        tracing::warn!("Gateway event not delivered yet; it is retried at the next start");
    }
    task.abort();
}
