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

/// What `doctor` found out about the hub and this gateway's session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HubCheck {
    pub url: String,
    pub reachable: bool,
    /// `Some(true)`: the session was accepted; `Some(false)`: refused
    /// (`error` says why); `None`: not known (the hub was not reached).
    pub session_valid: Option<bool>,
    pub error: Option<String>,
}

/// `doctor`: can the hub be reached, and does it accept this gateway's
/// session? (Authenticating may rotate the tokens; they are persisted.)
/// With `check_session` false only reachability is checked: a running
/// gateway owns the session, and a second client refreshing it could
/// trip the hub's refresh-token reuse detection.
pub fn check_hub(
    config: &GatewayConfig,
    config_path: &std::path::Path,
    check_session: bool,
) -> Result<HubCheck> {
    use crate::runtime::{authenticate, AuthError};
    let url = config.supabase_url.clone();
    if let Err(e) = probe_tcp(&url) {
        return Ok(HubCheck {
            url,
            reachable: false,
            session_valid: None,
            error: Some(e),
        });
    }
    if !check_session {
        return Ok(HubCheck {
            url,
            reachable: true,
            session_valid: None,
            error: None,
        });
    }
    let rt = tokio_runtime(false)?;
    let result = rt.block_on(authenticate(
        &config.supabase_url,
        &config.supabase_anon_key,
        config_path,
        &config.access_token,
        &config.refresh_token,
    ));
    Ok(match result {
        Ok(_) => HubCheck {
            url,
            reachable: true,
            session_valid: Some(true),
            error: None,
        },
        Err(AuthError::Unreachable(e)) | Err(AuthError::Client(e)) => HubCheck {
            url,
            reachable: false,
            session_valid: None,
            error: Some(e),
        },
        Err(AuthError::Session(e)) => HubCheck {
            url,
            reachable: true,
            session_valid: Some(false),
            error: Some(e),
        },
    })
}

/// `host:port` of an http(s) URL (default ports 80/443).
pub fn url_authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        return Some(authority.to_string());
    }
    let port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    Some(format!("{authority}:{port}"))
}

/// Does anything accept a TCP connection at the URL's host and port?
fn probe_tcp(url: &str) -> std::result::Result<(), String> {
    use std::net::ToSocketAddrs;
    let authority = url_authority(url).ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let mut last = format!("no address for {authority}");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
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

#[cfg(test)]
mod tests {
    #[test]
    fn authorities_get_default_ports() {
        use super::url_authority;
        assert_eq!(
            url_authority("http://127.0.0.1:54321").as_deref(),
            Some("127.0.0.1:54321")
        );
        assert_eq!(
            url_authority("https://x.supabase.co/rest").as_deref(),
            Some("x.supabase.co:443")
        );
        assert_eq!(url_authority("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(url_authority("nonsense"), None);
    }
}
