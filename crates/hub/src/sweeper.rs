//! The lost-gateway sweeper (spec §16.10 "stale jobs"; Buildkite calls it
//! "agent lost"). A gateway never times out a `running` job it lost (a
//! crash, a machine gone for good), so the hub does: every few seconds it
//! fails the jobs left `running` on gateways whose last heartbeat is older
//! than `PANORAMA_HUB_LOST_GATEWAY_TIMEOUT` seconds (default 180; 0 turns
//! the sweeper off), with their running runs and subagents
//! ([`crate::store::Store::sweep_lost_gateways`]). Every replica sweeps;
//! PostgreSQL's `SKIP LOCKED` gives each job to one of them.
//!
//! A heartbeat can only be as recent as the hub's last chance to receive
//! it: while this hub was stopped, or its database unreachable, every
//! gateway's `last_seen_at` aged without the gateway being gone. So a
//! replica sweeps only once it has been answering for a whole timeout since
//! it started or since its store last failed ([`may_sweep`]); otherwise a
//! hub restart after an outage would fail the jobs of every live gateway
//! before they had a chance to heartbeat again.

use crate::store::SharedStore;
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

/// Default seconds without a heartbeat after which a gateway is lost.
pub const DEFAULT_TIMEOUT_SECS: i64 = 180;

/// How often a gateway heartbeats (the gateway's fixed interval); the
/// timeout should be well above it.
pub const GATEWAY_HEARTBEAT_SECS: u64 = 30;

/// Jobs failed per transaction; the sweep repeats while it finds more.
const BATCH: usize = 100;

/// How often to look: often enough that a job is failed soon after its
/// gateway's timeout, at most every 15 s.
pub fn interval(timeout: Duration) -> Duration {
    (timeout / 6).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// The heartbeat time before which a gateway counts as lost.
pub fn stale_before(now: DateTime<Utc>, timeout: Duration) -> String {
    let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    crate::values::format_timestamp(now - timeout)
}

/// Whether heartbeats have had a whole `timeout` to arrive: the hub has
/// been answering (up, its store reachable) since `answering_since`.
pub fn may_sweep(answering_since: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(answering_since) >= timeout
}

/// Runs the sweeper until the process ends; `timeout` zero does nothing.
pub fn spawn(store: SharedStore, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval(timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answering_since = Instant::now();
        let mut store_failed = false;
        loop {
            tick.tick().await;
            if store_failed {
                // The store is back (or we are about to find out): the
                // gateways' heartbeats could not land meanwhile.
                answering_since = Instant::now();
                store_failed = false;
            }
            if !may_sweep(answering_since, Instant::now(), timeout) {
                // Still in the grace: a sweep of no jobs is the probe that
                // tells whether the store answers (an outage restarts it).
                let cutoff = stale_before(Utc::now(), timeout);
                if let Err(e) = store.sweep_lost_gateways(&cutoff, 0).await {
                    tracing::warn!(error = %e, "lost-gateway sweeper: the store does not answer; the timeout starts again when it does");
                    store_failed = true;
                }
                continue;
            }
            loop {
                let cutoff = stale_before(Utc::now(), timeout);
                match store.sweep_lost_gateways(&cutoff, BATCH).await {
                    Ok(jobs) => {
                        crate::metrics::lost_gateway_jobs_failed(jobs.len());
                        for job in &jobs {
                            tracing::warn!(job_id = %job, "lost gateway: failed a job left running on a gateway with no heartbeat since before {cutoff}");
                        }
                        if jobs.len() < BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost-gateway sweep failed; retrying at the next tick");
                        store_failed = true;
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_looks_often_but_not_too_often() {
        assert_eq!(interval(Duration::from_secs(180)), Duration::from_secs(15));
        assert_eq!(interval(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_millis(250));
    }

    #[test]
    fn nothing_is_swept_until_heartbeats_had_a_whole_timeout_to_arrive() {
        let since = Instant::now();
        let timeout = Duration::from_secs(180);
        assert!(!may_sweep(since, since, timeout));
        assert!(!may_sweep(since, since + Duration::from_secs(179), timeout));
        assert!(may_sweep(since, since + timeout, timeout));
        // A clock read before `since` (another thread) is not an underflow.
        assert!(!may_sweep(since + timeout, since, timeout));
    }

    #[test]
    fn the_cutoff_is_the_timeout_before_now_in_the_stored_form() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:03:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            stale_before(now, Duration::from_secs(180)),
            "2026-01-01T00:00:00.000000+00:00"
        );
    }
}
