//! Signals and graceful shutdown (runtime.md §4.8, control-plane.md §14).
//!
//! Order: stop intake and clear pending jobs, stop the timers, sync the
//! heartbeat (`pending`), wait up to 15 s for running jobs, finalize
//! residual jobs as `cancelled`, flush the outbox, send `offline`,
//! unsubscribe, remove our PID file.

use std::sync::Arc;
use std::time::Duration;

use panorama_protocol::jobs::residual_shutdown_completion;
use panorama_protocol::operational::IngressState;
use panorama_protocol::status::GatewayStatus;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::ingress::IngressHandle;
use super::{heartbeat, jobs, Gateway, OUTBOX_FLUSH_TIMEOUT_MS, SHUTDOWN_GRACE_MS};
use crate::error::{GatewayError, Result};
use crate::pidfile;

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

/// Run the shutdown sequence once.
pub async fn perform_shutdown(
    gw: &Arc<Gateway>,
    signal: &str,
    heartbeat_task: tokio::task::JoinHandle<()>,
    ingress: IngressHandle,
) {
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
    tracing::info!(signal, "Gateway shutting down");
    // 3. Stop the heartbeat, reconcile and reconnect timers.
    let _ = gw.shutdown_tx.send(true);
    heartbeat_task.abort();
    // 4. Status sync (normally `pending`).
    heartbeat::sync_if_changed(gw).await;
    // 6. Let running jobs finish within the grace period.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
    while !gw.lock().active.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 7. Residual jobs: stop them and complete them as cancelled (only a
    // job we claimed is `running`, so the conditional update cannot touch
    // an unclaimed one).
    let residual: Vec<(String, tokio::task::AbortHandle)> = gw.lock().active.drain().collect();
    let reason = format!("Gateway shutting down ({signal})");
    for (job_id, handle) in residual {
        handle.abort();
        tracing::warn!(jobId = %job_id, reason = %reason, "Cancelling gateway job still running at shutdown");
        jobs::complete(gw, &job_id, &residual_shutdown_completion(&reason));
    }
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
    // 9. Offline heartbeat.
    gw.lock().ingress = Some(IngressState::SHUTDOWN);
    heartbeat::send(gw, GatewayStatus::Offline).await;
    // 10. Unsubscribe and remove our PID file.
    ingress.close().await;
    if let Err(e) = pidfile::remove_own(&gw.paths.pid_path) {
        tracing::warn!(error = %e, "Could not remove the gateway PID file");
    }
}
