//! Run events written outside a run's own sink: by the cancel job, at
//! shutdown, by the job-failure fallback. Their sequence must follow every
//! event the run already has.

use std::time::Duration;

use panorama_protocol::status::RunEventType;
use serde_json::Value;

use super::events::{RunIds, STOPPING_DRAIN};
use crate::control_plane::is_unanswered;
use crate::job_context::JobContext;
use crate::port::next_event_sequence;

/// Out-of-band events (cancel job, job-failure fallback, cancel before
/// start, shutdown) of a run: queued at the run's next sequences, dense and
/// after every event already written. Returns the first sequence used.
///
/// Why not "read the hub's max + 1, 0 if the read fails": a row at a taken
/// sequence is a 23505, which the outbox counts as delivered, so the event
/// would vanish. Instead:
/// * when this process has the run's counter (it runs or ran the run, or
///   already wrote an out-of-band event of it), the sequence comes from that
///   counter: no hub read, and ordered after the sink's buffered rows;
/// * otherwise (a run an earlier process of this gateway ran, or a run row
///   that exists upstream before any job here ran it) the hub's max + 1 is
///   read once everything this process queued before has been delivered (so
///   rows still in our outbox are counted), retrying with backoff while the
///   hub does not answer; the answer seeds the counter for later writers
///   and for a sink started afterwards.
///
/// The wait ends only when the hub answers or the gateway asks its jobs to
/// stop (shutdown step 7: then one more short drain and one read are
/// tried); after that (or on a permanent hub refusal) the events are *not*
/// written and `Err` says why: never at a guessed sequence.
pub async fn push_out_of_band(
    gw: &JobContext,
    ids: &RunIds,
    events: Vec<(RunEventType, Value)>,
) -> Result<Option<i64>, String> {
    let seqs = &gw.delegated.sequences;
    let mut events = match seqs.push_known(ids, events) {
        Ok(first) => return Ok(first),
        Err(events) => events,
    };
    let mut delay = Duration::from_millis(100);
    loop {
        // Our own queued rows (e.g. recovery's) land first, so the hub's
        // max + 1 counts them. Once the gateway is stopping, a short wait.
        let drained = if gw.cancel_reason().is_some() {
            gw.outbox.flush(STOPPING_DRAIN).await
        } else {
            tokio::select! {
                drained = gw.outbox.flush(Duration::from_secs(24 * 3600)) => drained,
                _ = gw.cancelled() => false,
            }
        };
        if !drained {
            if gw.cancel_reason().is_some() {
                return Err(format!(
                    "gateway stopping before its queued writes reached the hub; the events of run {} were not sequenced",
                    ids.run_id
                ));
            }
            continue;
        }
        // A sink or another writer may have created the counter meanwhile.
        events = match seqs.push_known(ids, events) {
            Ok(first) => return Ok(first),
            Err(events) => events,
        };
        match next_event_sequence(&*gw.control, &ids.run_id).await {
            Ok(next) => return Ok(seqs.push_from(&gw.outbox, ids, next, events)),
            Err(e) if is_unanswered(&e) && gw.cancel_reason().is_none() => {
                tracing::warn!(error = %e, runId = %ids.run_id, delay_ms = delay.as_millis() as u64,
                    "Could not read the run's last event sequence; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = gw.cancelled() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(format!(
                    "the last event sequence of run {} could not be read: {e}",
                    ids.run_id
                ))
            }
        }
    }
}
