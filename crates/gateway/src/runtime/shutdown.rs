//! Signals and graceful shutdown (runtime.md §4.8, control-plane.md §14).
//!
//! Order: stop intake and clear pending jobs, stop the timers, sync the
//! heartbeat (`pending`), wait up to 15 s for running jobs, stop the
//! residual jobs' process groups (SIGTERM, SIGKILL after 2 s) and finalize
//! them as `cancelled`, flush the outbox, send `offline`, unsubscribe,
//! remove our PID file. A restart (§4.7) runs the same sequence without
//! the `offline` heartbeat and keeps the PID file (the re-executed process
//! keeps the PID).

use std::sync::Arc;
use std::time::Duration;

use panorama_protocol::jobs::residual_shutdown_completion;
use panorama_protocol::operational::IngressState;
use panorama_protocol::status::GatewayStatus;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::gateway::Gateway;
use super::ingress::IngressHandle;
use super::{heartbeat, jobs};
use crate::contain::KILL_GRACE;
use crate::error::{GatewayError, Result};
use crate::pidfile;

/// Shutdown grace for running jobs (runtime.md §4.8 step 6).
pub const SHUTDOWN_GRACE_MS: u64 = 15_000;
/// How long shutdown waits for the outbox to deliver before exiting.
pub const OUTBOX_FLUSH_TIMEOUT_MS: u64 = 10_000;

/// SIGINT and SIGTERM, installed once. Later signals during shutdown are
/// swallowed (the handlers stay installed), so shutdown always completes.
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub fn install() -> Result<Self> {
        let install = |kind| {
            signal(kind).map_err(|e| {
                GatewayError::cli(
                    "Could not install the gateway signal handlers.",
                    format!("{e}. The gateway cannot shut down cleanly without them."),
                )
            })
        };
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    /// Wait for the first signal; returns its name.
    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Overrides the 15 s grace for running jobs (an operator knob, e.g. to
/// fit a service manager's stop timeout). Not in the reference.
pub const SHUTDOWN_GRACE_ENV: &str = "PANORAMA_GATEWAY_SHUTDOWN_GRACE_MS";

/// The grace from `PANORAMA_GATEWAY_SHUTDOWN_GRACE_MS` (a non-negative
/// integer), else 15 s.
pub fn grace_from(raw: Option<&str>) -> Duration {
    Duration::from_millis(
        raw.and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(SHUTDOWN_GRACE_MS),
    )
}

/// Why the runtime stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownKind {
    /// SIGINT / SIGTERM: full shutdown, `offline` heartbeat.
    Signal(&'static str),
    /// Restart on upgrade with this reason: no `offline` heartbeat, the PID
    /// file stays for the re-executed process.
    Restart(String),
}

impl ShutdownKind {
    /// `SIGTERM`, or `restart:<reason>`.
    pub fn label(&self) -> String {
        match self {
            ShutdownKind::Signal(s) => s.to_string(),
            ShutdownKind::Restart(reason) => format!("restart:{reason}"),
        }
    }
}

/// How long residual jobs get to stop their children and report.
const RESIDUAL_STOP_WAIT: Duration = Duration::from_millis(KILL_GRACE.as_millis() as u64 + 3_000);

/// Run the shutdown sequence once.
pub async fn perform_shutdown(
    gw: &Arc<Gateway>,
    kind: &ShutdownKind,
    heartbeat_task: tokio::task::JoinHandle<()>,
    ingress: IngressHandle,
) {
    let signal = kind.label();
    let signal = signal.as_str();
    // 1. Stop intake.
    {
        let mut st = gw.lock();
        if st.shutting_down {
            return;
        }
        st.shutting_down = true;
        st.accepting = false;
        st.queue.clear_pending();
    }
    match kind {
        ShutdownKind::Signal(_) => tracing::info!(signal, "Gateway shutting down"),
        ShutdownKind::Restart(_) => tracing::info!(signal, "Gateway shutting down for a restart"),
    }
    // 3. Stop the heartbeat, reconcile and reconnect timers.
    let _ = gw.shutdown_tx.send(true);
    heartbeat_task.abort();
    // 4. Status sync (normally `pending`).
    heartbeat::sync_if_changed(gw).await;
    // 5. Agent runs are stopped now (SIGTERM to the group, SIGKILL after 5 s).
    crate::delegated::shutdown::request_termination(
        gw,
        &format!("Gateway shutting down ({signal})"),
    );
    // 6. Let running jobs finish within the grace period.
    let grace = grace_from(crate::paths::process_env(SHUTDOWN_GRACE_ENV).as_deref());
    wait_for_no_active(gw, grace).await;
    // 7. Residual jobs: ask them to stop (each stops its child's whole
    // process group, SIGTERM then SIGKILL, and completes as cancelled);
    // what is still there after that is aborted and completed as cancelled
    // here (only a job we claimed is `running`, so the conditional update
    // cannot touch an unclaimed one).
    let reason = format!("Gateway shutting down ({signal})");
    if !gw.lock().active.is_empty() {
        gw.shutdown.request(&reason);
        wait_for_no_active(gw, RESIDUAL_STOP_WAIT).await;
    }
    let residual: Vec<(String, tokio::task::AbortHandle)> = gw.lock().active.drain().collect();
    for (job_id, handle) in residual {
        handle.abort();
        tracing::warn!(jobId = %job_id, reason = %reason, "Cancelling gateway job still running at shutdown");
        crate::delegated::shutdown::finalize_residual(gw, &job_id, &reason).await;
        jobs::complete(gw, &job_id, &residual_shutdown_completion(&reason));
    }
    // 8. Close every shell session (local only).
    super::shell_glue::close_all_sessions(gw).await;
    // No job runs any more: what is left of one in a cgroup goes now.
    let _ = tokio::task::spawn_blocking(|| crate::contain::current().release()).await;
    // Deliver outcomes before announcing `offline`.
    if !gw
        .outbox
        .flush(Duration::from_millis(OUTBOX_FLUSH_TIMEOUT_MS))
        .await
    {
        tracing::warn!(
            pending = gw.outbox.pending(),
            "Gateway outbox not fully delivered at shutdown; it is retried at next start"
        );
    }
    // 9. Offline heartbeat (not for a restart: the replacement reports).
    gw.lock().ingress = Some(IngressState::SHUTDOWN);
    if matches!(kind, ShutdownKind::Signal(_)) {
        heartbeat::send(gw, GatewayStatus::Offline).await;
    }
    // 10. Unsubscribe and remove our PID file.
    ingress.close().await;
    if matches!(kind, ShutdownKind::Signal(_)) {
        remove_pid_file(gw);
    }
}

/// Remove our PID file (logged on failure).
pub fn remove_pid_file(gw: &Gateway) {
    if let Err(e) = pidfile::remove_own(&gw.paths.pid_path) {
        tracing::warn!(error = %e, "Could not remove the gateway PID file");
    }
}

/// Poll every 100 ms until no job is active or `limit` passes.
async fn wait_for_no_active(gw: &Gateway, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !gw.lock().active.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_and_labels() {
        assert_eq!(grace_from(None), Duration::from_millis(15_000));
        assert_eq!(grace_from(Some(" 1500 ")), Duration::from_millis(1_500));
        assert_eq!(grace_from(Some("0")), Duration::ZERO);
        assert_eq!(grace_from(Some("-1")), Duration::from_millis(15_000));
        assert_eq!(ShutdownKind::Signal("SIGTERM").label(), "SIGTERM");
        assert_eq!(
            ShutdownKind::Restart("gateway entry changed (x)".into()).label(),
            "restart:gateway entry changed (x)"
        );
    }
}
