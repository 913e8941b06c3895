//! Job ingress (runtime.md §4.2, control-plane.md §6, §3.2.1): a realtime
//! channel for INSERTs as a fast path, and the authoritative reconcile every
//! 5 s. Status events from channels we replaced are ignored, and a terminal
//! status of the current channel schedules exactly one reconnect after 5 s,
//! so the reference's reconnect churn cannot happen.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use panorama_protocol::rows::{decode_gateway_job_row, GatewayJobRow};
use panorama_protocol::status::JobStatus;
use panorama_supabase::{
    ChannelHandle, ChannelStatus, PostgresBinding, RealtimeEvent, RealtimeEventKind,
    RealtimeOptions,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::gateway::Gateway;
use super::{heartbeat, jobs};

pub const RECONCILE_INTERVAL: Duration =
    Duration::from_millis(panorama_protocol::operational::RECONCILE_INTERVAL_MS as u64);
pub const RECONNECT_DELAY: Duration = Duration::from_millis(5_000);

/// Handle on the ingress task; [`IngressHandle::close`] unsubscribes the
/// channel (shutdown step 10).
pub struct IngressHandle {
    close_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl IngressHandle {
    pub async fn close(mut self) {
        if let Some(tx) = self.close_tx.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// `CHANNEL_ERROR` / `TIMED_OUT` / `CLOSED` as in supabase-js.
pub fn status_label(status: &ChannelStatus) -> &'static str {
    match status {
        ChannelStatus::Subscribed => "SUBSCRIBED",
        ChannelStatus::ChannelError(_) => "CHANNEL_ERROR",
        ChannelStatus::TimedOut => "TIMED_OUT",
        ChannelStatus::Closed(_) => "CLOSED",
    }
}

/// Reconnect bookkeeping, kept pure for testing: which generation is
/// current and whether a reconnect is already scheduled.
#[derive(Debug, Default)]
pub struct ChannelTracker {
    pub current: Option<u64>,
    pub reason: String,
    pub reconnect: Option<String>,
}

/// What to do with a channel event.
#[derive(Debug, PartialEq)]
pub enum Action {
    Ignore,
    Subscribed(String),
    /// Schedule a reconnect with this reason (`reconnect:<status>`).
    ScheduleReconnect(String),
    /// Terminal status, but a reconnect is already scheduled or we are stopping.
    Unavailable,
    Row(Box<serde_json::Value>),
}

impl ChannelTracker {
    /// Takes a change's record out of `event` (no copy on the job path).
    pub fn on_event(&mut self, event: &mut RealtimeEvent, stopping: bool) -> Action {
        if self.current != Some(event.generation) {
            return Action::Ignore;
        }
        match &mut event.kind {
            RealtimeEventKind::Status(ChannelStatus::Subscribed) => {
                Action::Subscribed(self.reason.clone())
            }
            RealtimeEventKind::Status(status) => {
                if stopping || self.reconnect.is_some() {
                    return Action::Unavailable;
                }
                let reason = format!("reconnect:{}", status_label(status).to_ascii_lowercase());
                self.reconnect = Some(reason.clone());
                Action::ScheduleReconnect(reason)
            }
            RealtimeEventKind::Change(change) => match change.record.take() {
                Some(record) => Action::Row(Box::new(record)),
                None => Action::Ignore,
            },
        }
    }
}

fn open_channel(rt: &panorama_supabase::Realtime, gw: &Gateway) -> ChannelHandle {
    rt.channel(
        &format!("gateway_jobs_{}", gw.gateway_id),
        vec![PostgresBinding::new("INSERT", "public", "gateway_jobs")
            .filter(&format!("team_id=eq.{}", gw.team_id))],
    )
}

/// Start the ingress task: connect (reason `startup`), reconcile
/// (`startup`), then reconcile every 5 s.
pub fn start(gw: Arc<Gateway>) -> IngressHandle {
    let (close_tx, close_rx) = oneshot::channel();
    let task = tokio::spawn(run(gw, close_rx));
    IngressHandle {
        close_tx: Some(close_tx),
        task,
    }
}

/// Like [`start`], but only once `before` completed (crash recovery that
/// could not reach the hub at startup). Closing before that skips ingress.
pub fn start_after<F>(gw: Arc<Gateway>, before: F) -> IngressHandle
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (close_tx, mut close_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = &mut close_rx => return,
            () = before => {}
        }
        if !gw.is_shutting_down() {
            run(gw, close_rx).await;
        }
    });
    IngressHandle {
        close_tx: Some(close_tx),
        task,
    }
}

async fn run(gw: Arc<Gateway>, mut close_rx: oneshot::Receiver<()>) {
    let (rt, mut events) = gw.client.realtime(RealtimeOptions::default());
    let mut channel = Some(open_channel(&rt, &gw));
    let mut tracker = ChannelTracker {
        current: channel.as_ref().map(ChannelHandle::generation),
        reason: "startup".to_string(),
        reconnect: None,
    };
    spawn_reconcile(&gw, "startup".to_string());
    let mut shutdown = gw.shutdown_tx.subscribe();
    let mut stopping = *shutdown.borrow();
    let mut tick =
        tokio::time::interval_at(Instant::now() + RECONCILE_INTERVAL, RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconnect_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut close_rx => break,
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    // Shutdown step 3: stop the reconcile and reconnect timers.
                    stopping = true;
                    reconnect_at = None;
                    tracker.reconnect = None;
                }
            }
            _ = tick.tick(), if !stopping => spawn_reconcile(&gw, "interval".to_string()),
            _ = sleep_until_opt(reconnect_at), if reconnect_at.is_some() && !stopping => {
                reconnect_at = None;
                let reason = tracker.reconnect.take().unwrap_or_else(|| "reconnect".into());
                if let Some(old) = channel.take() {
                    // Its events carry the old generation and are ignored.
                    tokio::spawn(old.unsubscribe());
                }
                let fresh = open_channel(&rt, &gw);
                tracker.current = Some(fresh.generation());
                tracker.reason = reason;
                channel = Some(fresh);
            }
            event = events.recv() => {
                let Some(mut event) = event else { break };
                match tracker.on_event(&mut event, stopping) {
                    Action::Ignore => {}
                    Action::Subscribed(reason) => {
                        tracing::info!(reason = %reason, "Gateway subscribed to job queue");
                        if !stopping {
                            spawn_reconcile(&gw, format!("channel_subscribed:{reason}"));
                        }
                    }
                    Action::ScheduleReconnect(_) | Action::Unavailable => {
                        if let RealtimeEventKind::Status(status) = &event.kind {
                            tracing::error!(
                                status = status_label(status),
                                detail = ?status,
                                reason = %tracker.reason,
                                "Gateway realtime channel unavailable"
                            );
                        }
                        if tracker.reconnect.is_some() && reconnect_at.is_none() && !stopping {
                            reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
                        }
                    }
                    Action::Row(record) => on_realtime_row(&gw, &record),
                }
            }
        }
    }
    if let Some(channel) = channel.take() {
        channel.unsubscribe().await;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A realtime INSERT: only `queued` rows, decoded strictly; malformed rows
/// are logged and dropped.
fn on_realtime_row(gw: &Arc<Gateway>, record: &serde_json::Value) {
    if record.get("status").and_then(serde_json::Value::as_str) != Some(JobStatus::Queued.as_str())
    {
        return;
    }
    match decode_gateway_job_row(record) {
        Ok(row) => jobs::enqueue(gw, row),
        Err(e) => tracing::warn!(error = %e, "Rejected malformed gateway job realtime payload"),
    }
}

fn spawn_reconcile(gw: &Arc<Gateway>, reason: String) {
    let gw = Arc::clone(gw);
    tokio::spawn(async move { reconcile(&gw, &reason).await });
}

struct InFlight<'a>(&'a Gateway);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.reconcile_in_flight.store(false, Ordering::SeqCst);
    }
}

/// List every queued job of ours (oldest first), offer each to the queue,
/// and sync the heartbeat (§3.2.1). One at a time; none after shutdown.
pub async fn reconcile(gw: &Arc<Gateway>, reason: &str) {
    if gw.is_shutting_down() || gw.reconcile_in_flight.swap(true, Ordering::SeqCst) {
        return;
    }
    let _guard = InFlight(gw);
    let listed = gw
        .control
        .queued_jobs()
        .await
        .map_err(|e| e.to_string())
        .and_then(|rows| {
            rows.iter()
                .map(|r| decode_gateway_job_row(r).map_err(|e| e.to_string()))
                .collect::<Result<Vec<GatewayJobRow>, String>>()
        });
    match listed {
        Ok(rows) => {
            let was_failing = gw.lock().last_ingress_error.is_some();
            gw.record_ingress(Ok(()));
            if was_failing {
                // The hub is reachable again: cut the outbox's retry backoff short.
                gw.outbox.notify();
            }
            // Send a changed status (e.g. pending → ready) before releasing
            // the batch (control-plane.md §7.4 race note).
            heartbeat::sync_if_changed(gw).await;
            for row in rows {
                jobs::enqueue(gw, row);
            }
        }
        Err(e) => {
            gw.record_ingress(Err(e.clone()));
            tracing::error!(error = %e, reason = %reason, "Failed to reconcile queued gateway jobs");
            heartbeat::sync_if_changed(gw).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use panorama_supabase::CloseReason;

    fn status(generation: u64, status: ChannelStatus) -> RealtimeEvent {
        RealtimeEvent {
            generation,
            topic: "realtime:gateway_jobs_g".into(),
            kind: RealtimeEventKind::Status(status),
        }
    }

    #[test]
    fn stale_generations_are_ignored_and_one_reconnect_is_scheduled() {
        let mut t = ChannelTracker {
            current: Some(2),
            reason: "startup".into(),
            reconnect: None,
        };
        assert_eq!(
            t.on_event(
                &mut status(1, ChannelStatus::Closed(CloseReason::Unsubscribed)),
                false
            ),
            Action::Ignore
        );
        assert_eq!(
            t.on_event(&mut status(2, ChannelStatus::Subscribed), false),
            Action::Subscribed("startup".into())
        );
        assert_eq!(
            t.on_event(&mut status(2, ChannelStatus::TimedOut), false),
            Action::ScheduleReconnect("reconnect:timed_out".into())
        );
        assert_eq!(
            t.on_event(
                &mut status(2, ChannelStatus::ChannelError("x".into())),
                false
            ),
            Action::Unavailable
        );
        let mut stopping = ChannelTracker {
            current: Some(3),
            ..ChannelTracker::default()
        };
        assert_eq!(
            stopping.on_event(
                &mut status(3, ChannelStatus::Closed(CloseReason::ServerClosed)),
                true
            ),
            Action::Unavailable
        );
        assert!(stopping.reconnect.is_none());
    }
}
