//! The foreground gateway runtime (runtime.md §4; control-plane.md §2.4,
//! §6, §7, §8, §12, §14): session, heartbeat, job ingress, queue, job
//! processing, durable reporting and graceful shutdown.
//!
//! Tasks:
//! * heartbeat ([`heartbeat`]): its own task, every 30 s, plus immediate
//!   sends when the operational status changes;
//! * ingress ([`ingress`]): the realtime channel and the 5 s reconcile;
//! * one task per job ([`jobs`]); job work never runs on the heartbeat task;
//! * the outbox delivery task (crate `outbox`), which carries every outcome
//!   write (job completions, `gateway_events`).

pub mod clock;
pub mod diagnostic;
pub mod gateway;
pub use crate::gateway_events as events;
pub mod heartbeat;
pub mod ingress;
pub mod jobs;
pub mod pairing;
pub mod queue;
pub mod restart;
pub mod shell_glue;
pub mod shutdown;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use panorama_protocol::operational::IngressState;
use panorama_supabase::{Client, Session};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::job_context::{Delegated, JobContext, Shutdown};
use crate::outbox::Outbox;
use crate::output::{Printer, Row};
use crate::paths::GatewayPaths;
use crate::pidfile;
use crate::recovery::{self, ClaimLedger};

/// Everything the foreground runtime needs; the config has already been
/// saved with the resolved backend and device name (runtime.md §1.6.2
/// step B.5).
#[derive(Debug)]
pub struct RuntimeRequest {
    pub paths: GatewayPaths,
    pub config: GatewayConfig,
    pub backend: Backend,
    pub device_name: String,
    /// Set when the fallback config dir is in use (emit `config_dir_fallback`).
    pub migrated_from: Option<PathBuf>,
    pub verbose: bool,
    /// `--metrics-listen`, already bound (so a bad address fails `start`).
    pub metrics_listener: Option<std::net::TcpListener>,
}

pub use gateway::{Gateway, State};
pub use shutdown::{OUTBOX_FLUSH_TIMEOUT_MS, SHUTDOWN_GRACE_MS};

/// Directory of the durable outbox: next to `gateway.json`.
pub fn outbox_dir(paths: &GatewayPaths) -> PathBuf {
    paths.config_dir.join("outbox")
}

/// Directory of the claim ledger: next to `gateway.json`.
pub fn claims_dir(paths: &GatewayPaths) -> PathBuf {
    paths.config_dir.join("claims")
}

/// Persist a (possibly rotated) session into `gateway.json`; runs inside
/// the client's session callback, synchronously, before the new tokens are
/// used (control-plane.md §2.4).
pub fn persist_session(config_path: &Path, session: &Session) {
    let result = GatewayConfig::load(config_path).and_then(|mut config| {
        if config.access_token == session.access_token
            && config.refresh_token == session.refresh_token
        {
            return Ok(false);
        }
        config.access_token = session.access_token.clone();
        config.refresh_token = session.refresh_token.clone();
        config.save(config_path).map(|_| true)
    });
    match result {
        Ok(true) => tracing::info!("Gateway session refreshed"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "Failed to persist refreshed gateway session"),
    }
}

/// Create the client, register token persistence first, then
/// `setSession` (runtime.md §1.6.2 B.6–B.7).
pub async fn authenticate(
    url: &str,
    anon_key: &str,
    config_path: &Path,
    access_token: &str,
    refresh_token: &str,
) -> std::result::Result<Client, AuthError> {
    let client = Client::new(url, anon_key).map_err(|e| AuthError::Client(e.to_string()))?;
    for secret in [anon_key, access_token, refresh_token] {
        crate::child_env::register_secret(secret);
    }
    let path = config_path.to_path_buf();
    client.on_session_change(Box::new(move |session| {
        crate::child_env::register_secret(&session.access_token);
        crate::child_env::register_secret(&session.refresh_token);
        persist_session(&path, session)
    }));
    client
        .set_session(access_token, refresh_token)
        .await
        .map_err(|e| {
            // No HTTP answer (or a 5xx): the hub was not reached, so the
            // session is not known to be bad; pairing again would not help.
            let unreachable = e.is_transport()
                || matches!(e, panorama_supabase::Error::Auth { status, retryable: true, .. } if status == 0 || status >= 500);
            if unreachable {
                AuthError::Unreachable(e.to_string())
            } else {
                AuthError::Session(e.to_string())
            }
        })?;
    Ok(client)
}

/// Why [`authenticate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid backend configuration: {0}")]
    Client(String),
    #[error("{0}")]
    Session(String),
    #[error("{0}")]
    Unreachable(String),
}

impl From<AuthError> for GatewayError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Client(detail) => GatewayError::cli(
                "Invalid Supabase configuration for gateway start.",
                format!("{detail}. Check --supabase-url / PANORAMA_SUPABASE_URL."),
            ),
            AuthError::Session(detail) => GatewayError::cli(
                "Failed to authenticate gateway session.",
                format!(
                    "{}. The control plane refused this gateway's session: it was removed or revoked, or its session expired. Run \"panorama-gateway pair <CODE>\" again with a new pairing code.",
                    if detail.is_empty() { "No session returned" } else { &detail }
                ),
            ),
            AuthError::Unreachable(detail) => GatewayError::cli(
                "Failed to authenticate gateway session.",
                format!(
                    "{detail}. The control plane could not be reached; check the network connection and --supabase-url / PANORAMA_SUPABASE_URL, then start the gateway again."
                ),
            ),
        }
    }
}

/// How long one recovery attempt waits for an earlier process's outbox.
const RECOVERY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest pause between recovery attempts while the hub is unreachable.
const RECOVERY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// One attempt at crash recovery (crate `recovery`): deliver what an
/// earlier process left in the outbox, finalize the jobs it left running,
/// and deliver those failures before any new job is claimed. False when it
/// must be retried (the hub could not be reached).
async fn recover_once(gw: &Gateway) -> bool {
    if gw.outbox.pending() > 0 && !gw.outbox.flush(RECOVERY_DRAIN_TIMEOUT).await {
        tracing::warn!(
            pending = gw.outbox.pending(),
            "Gateway outbox of an earlier process not delivered yet; recovery of interrupted jobs will be retried"
        );
        return false;
    }
    match recovery::recover_interrupted_jobs(&*gw.control, &gw.outbox, &gw.ledger, &gw.gateway_id)
        .await
    {
        Ok(report) if !report.recovered_jobs.is_empty() || !report.already_terminal.is_empty() => {
            tracing::info!(
                recovered = ?report.recovered_jobs,
                already_terminal = ?report.already_terminal,
                "Recovered jobs interrupted by an earlier gateway process"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "Failed to recover interrupted gateway jobs; retrying before taking new jobs");
            return false;
        }
    }
    // Deliver the recovered jobs' failures before any new job is claimed,
    // so the hub never shows a new job running next to an orphan.
    gw.outbox.pending() == 0
        || gw
            .outbox
            .flush(std::time::Duration::from_millis(OUTBOX_FLUSH_TIMEOUT_MS))
            .await
}

/// Retry [`recover_once`] with a capped backoff until it succeeds (or the
/// gateway shuts down, which drops this future).
async fn recover_until_done(gw: Arc<Gateway>) {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        tokio::time::sleep(delay).await;
        if recover_once(&gw).await {
            return;
        }
        delay = (delay * 2).min(RECOVERY_RETRY_MAX);
    }
}

/// `run_gateway_runtime`: everything after step B.5. Returns after shutdown.
pub async fn run(request: RuntimeRequest) -> Result<()> {
    let RuntimeRequest {
        paths,
        config,
        backend,
        device_name,
        migrated_from,
        verbose,
        metrics_listener,
    } = request;
    let out = Printer::new(verbose);
    // Signals are caught from here on, so an early SIGTERM is not fatal.
    let mut signals = shutdown::Signals::install()?;

    // An unreachable hub is waited for (with backoff), not fatal; a signal
    // while waiting ends the gateway cleanly.
    let client = tokio::select! {
        client = crate::readiness::retry_while_unreachable(
            &out,
            &backend.url,
            || authenticate(
                &backend.url,
                &backend.anon_key,
                &paths.config_path,
                &config.access_token,
                &config.refresh_token,
            ),
            |e| match e {
                AuthError::Unreachable(why) => Some(why.clone()),
                _ => None,
            },
        ) => client?,
        signal = signals.wait() => {
            tracing::info!(signal, "Gateway stopped before it reached the hub");
            return Ok(());
        }
    };
    // Not a spec step: without both ids no query could match our jobs.
    if config.gateway_id.is_empty() || config.team_id.is_empty() {
        return Err(GatewayError::cli(
            "Gateway config is missing gatewayId or teamId.",
            "Run \"panorama-gateway pair <CODE>\" to pair this machine again.".to_string(),
        ));
    }
    crate::readiness::notify(&crate::readiness::Signal::Ready);
    let auto_refresh = client.start_auto_refresh();

    let outbox = Outbox::open(&outbox_dir(&paths))
        .map_err(|e| GatewayError::cli("Could not open the gateway outbox.", e.to_string()))?;
    let ledger = ClaimLedger::open(&claims_dir(&paths)).map_err(|e| {
        GatewayError::cli("Could not open the gateway claim ledger.", e.to_string())
    })?;
    let outbox_task = outbox.start(client.clone());
    let (shutdown_tx, _) = watch::channel(false);
    let concurrency =
        queue::concurrency_from(crate::paths::process_env(queue::CONCURRENCY_ENV).as_deref());
    let gw = Arc::new(Gateway {
        ctx: JobContext {
            client: client.clone(),
            control: Arc::new(crate::port::hub::HubControlPlane {
                client: client.clone(),
                gateway_id: config.gateway_id.clone(),
                team_id: config.team_id.clone(),
            }),
            gateway_id: config.gateway_id.clone(),
            team_id: config.team_id.clone(),
            device_name: device_name.clone(),
            paths: paths.clone(),
            outbox: outbox.clone(),
            delegated: Delegated::default(),
            shutdown: Shutdown::default(),
        },
        ledger,
        concurrency,
        state: Mutex::new(State {
            accepting: true,
            full_control_enabled: config.full_control_enabled,
            ..State::default()
        }),
        last_sent: tokio::sync::Mutex::new(None),
        reconcile_in_flight: AtomicBool::new(false),
        shutdown_tx,
        clock: clock::ServerClock::new(),
        shell_sessions: shell_glue::new_sessions(&paths),
    });

    // Jobs an earlier process left running are finalized before this one
    // takes work. Recovery finalizes every job the hub lists as running for
    // this gateway, so it only runs when no other live process owns it. If
    // the hub cannot be reached now, it is retried in the background and
    // ingress starts only once it succeeded.
    let other_live = pidfile::read_pid(&paths.pid_path)
        .filter(|pid| *pid != std::process::id() as i32 && pidfile::is_alive(*pid));
    // Containment is chosen before any job process starts; with no other
    // live process of this gateway, job cgroups an earlier one left (a
    // kill -9) are emptied and removed now.
    let containment = crate::contain::init(&paths.config_dir, other_live.is_none())
        .map_err(|e| GatewayError::cli("Invalid process containment setting.", e.to_string()))?;
    tracing::info!(containment = %containment.report_value(), "Process containment");
    if let Err(e) = std::fs::write(
        paths.config_dir.join(crate::contain::STATE_FILE),
        containment.report_value().to_string(),
    ) {
        tracing::warn!(error = %e, "Could not record the process containment for status");
    }
    let recovered = match other_live {
        Some(pid) => {
            tracing::warn!(
                pid,
                "Another gateway process is running for this config; skipping recovery of interrupted jobs"
            );
            true
        }
        None => recover_once(&gw).await,
    };

    // §4.1 steps 1–5: provider discovery and `auto` validation, capabilities.
    validate_providers_at_startup(&gw, &out).await;
    {
        let mut st = gw.lock();
        st.capabilities = Some(heartbeat::capabilities(
            &gw.delegated.providers,
            &device_name,
            config.full_control_enabled,
        ));
        st.ingress = Some(IngressState::STARTUP);
    }
    tracing::info!(
        providers = %heartbeat::providers_summary(&gw),
        concurrency,
        "Gateway capabilities loaded"
    );
    // Step 6: events.
    if let Some(previous) = &migrated_from {
        events::emit(
            &outbox,
            &gw.gateway_id,
            &gw.team_id,
            events::config_dir_fallback_row(
                &gw.gateway_id,
                &gw.team_id,
                previous,
                &paths.config_dir,
            ),
        );
    }
    // Step 7: first heartbeat, then the PID file.
    let initial = gw.compute_status();
    heartbeat::send_and_calibrate(&gw, initial).await;
    pidfile::write_pid(&paths.pid_path, std::process::id())?;
    // Step 8: heartbeat interval on its own task.
    let heartbeat_task = tokio::spawn(heartbeat::run_loop(Arc::clone(&gw)));
    if let Some(listener) = metrics_listener {
        match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(listener) => {
                let gw = Arc::clone(&gw);
                let source: crate::metrics::SnapshotSource = Arc::new(move || {
                    let providers = gw.delegated.providers.health();
                    crate::metrics::snapshot(
                        gw.outbox.pending(),
                        providers
                            .iter()
                            .map(|(id, h)| (id.as_str().to_string(), h.status.as_str().to_string()))
                            .collect(),
                    )
                });
                drop(tokio::spawn(crate::metrics::serve(listener, source)))
            }
            Err(e) => tracing::error!(error = %e, "Metrics endpoint not started"),
        }
    }
    // Step 9: auto-restart watcher (captures the executable now).
    let watcher = restart::Watcher::for_current_exe(restart::RestartConfig::from_env(
        crate::paths::process_env,
    ));
    // Step 10: ingress (realtime + reconcile), after recovery.
    let ingress = if recovered {
        ingress::start(Arc::clone(&gw))
    } else {
        ingress::start_after(Arc::clone(&gw), recover_until_done(Arc::clone(&gw)))
    };

    tracing::info!(
        gatewayId = %gw.gateway_id,
        teamId = %gw.team_id,
        deviceName = %device_name,
        installFullControlEnabled = config.full_control_enabled,
        heartbeatIntervalMs = heartbeat::HEARTBEAT_INTERVAL.as_millis() as u64,
        concurrency,
        "Gateway running"
    );
    out.success(
        "Gateway running",
        &[
            Row::new("Mode", Some("Foreground".to_string())),
            Row::new("Device", Some(device_name.clone())),
            Row::new(
                "Install full control",
                Some(crate::output::enabled_label(config.full_control_enabled)),
            ),
            Row::verbose("Gateway ID", Some(gw.gateway_id.clone())),
            Row::verbose("Team ID", Some(gw.team_id.clone())),
        ],
    );

    let kind = tokio::select! {
        signal = signals.wait() => shutdown::ShutdownKind::Signal(signal),
        reason = restart::wait_for_restart(Arc::clone(&gw), watcher.clone()) => {
            shutdown::ShutdownKind::Restart(reason)
        }
    };
    shutdown::perform_shutdown(&gw, &kind, heartbeat_task, ingress).await;
    auto_refresh.abort();
    outbox_task.abort();
    if let (shutdown::ShutdownKind::Restart(_), Some(watcher)) = (&kind, watcher) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let err = restart::exec_self(&watcher.exe);
        // No replacement will report: say so, then let a service manager
        // (or the user) start us again.
        tracing::error!(error = %err, exe = %watcher.exe.display(), "Gateway restart failed");
        heartbeat::send(&gw, panorama_protocol::status::GatewayStatus::Offline).await;
        shutdown::remove_pid_file(&gw);
        return Err(GatewayError::cli(
            "Gateway restart failed.",
            format!(
                "Could not execute {}: {err}. Start the gateway again with \"panorama-gateway start\" (a service manager restarts it automatically).",
                watcher.exe.display()
            ),
        ));
    }
    Ok(())
}

/// Runtime startup (runtime.md §4.1 steps 1–3, 6): CLI discovery and
/// `auto` validation with progress lines, `providerHealth` saved when a
/// full check ran, `provider_validation` events (context `startup`).
async fn validate_providers_at_startup(gw: &Gateway, out: &Printer) {
    let _ = std::fs::create_dir_all(&gw.paths.tmp_dir);
    let previous = crate::config::GatewayConfig::load(&gw.paths.config_path)
        .map(|c| crate::delegated::providers::from_stored(&c.provider_health()))
        .unwrap_or_default();
    let commands = crate::delegated::providers::resolve_commands();
    tracing::info!(
        claude = %commands[&panorama_providers::ProviderId::ClaudeCode].command,
        codex = %commands[&panorama_providers::ProviderId::Codex].command,
        gemini = %commands[&panorama_providers::ProviderId::Gemini].command,
        "Gateway CLI discovery results"
    );
    out.info("Validating providers...", &[]);
    let report = crate::delegated::providers::validate(
        panorama_providers::health::ValidationMode::Auto,
        &previous,
        &gw.paths,
        &|line| out.info(&line, &[]),
    )
    .await;
    gw.delegated.providers.install(&report);
    if !report.full_checked.is_empty() {
        crate::delegated::providers::persist_health(&gw.paths, &report.health);
        for row in crate::delegated::providers::validation_event_rows(
            &report,
            &gw.gateway_id,
            &gw.team_id,
            "startup",
        ) {
            crate::runtime::events::emit(&gw.outbox, &gw.gateway_id, &gw.team_id, row);
        }
    }
}
