//! Live run events (control-plane §3.7, §10.7): every event gets the next
//! sequence of its run at emit time and is persisted through the outbox in
//! batches (one `Insert` of up to [`MAX_BATCH`] rows, at least every
//! [`FLUSH_INTERVAL`]), so rows reach the hub in sequence order while the
//! agent is still running. A batch is inserted atomically and its rows have
//! fixed `(run_id, sequence)` keys, so a replayed batch is a duplicate
//! (`duplicate_is_delivered`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use panorama_protocol::status::RunEventType;
use panorama_protocol::subagent::trim_event_payload;
use serde_json::{json, Value};

use crate::outbox::{Outbox, OutboxWrite};

/// Longest time an emitted event waits in memory.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Largest batch (one outbox entry).
pub const MAX_BATCH: usize = 100;
pub const EVENTS_TABLE: &str = "subagent_run_events";

/// Identity of a run's event rows.
#[derive(Debug, Clone)]
pub struct RunIds {
    pub run_id: String,
    pub subagent_id: String,
    pub team_id: String,
    pub gateway_id: String,
}

impl RunIds {
    pub fn row(&self, sequence: i64, event_type: RunEventType, payload: Value) -> Value {
        json!({
            "run_id": self.run_id,
            "subagent_id": self.subagent_id,
            "team_id": self.team_id,
            "gateway_id": self.gateway_id,
            "sequence": sequence,
            "event_type": event_type.as_str(),
            "payload": trim_event_payload(payload),
        })
    }
}

struct SinkState {
    next: i64,
    buffer: Vec<Value>,
}

struct SinkInner {
    outbox: Outbox,
    ids: RunIds,
    state: Mutex<SinkState>,
}

impl SinkInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push the buffered rows as one outbox entry (state lock held, so
    /// batches enter the outbox in sequence order).
    fn flush_locked(&self, st: &mut SinkState) {
        if st.buffer.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut st.buffer);
        let count = rows.len();
        if let Err(e) = self.outbox.push(OutboxWrite::Insert {
            table: EVENTS_TABLE.to_string(),
            rows: Value::Array(rows),
            duplicate_is_delivered: true,
        }) {
            tracing::error!(error = %e, runId = %self.ids.run_id, count, "Failed to queue subagent run events");
        }
    }
}

/// The last clone going away (a finished run, or a job task aborted at
/// shutdown) queues what is still buffered instead of losing it.
impl Drop for SinkInner {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut st);
    }
}

/// The event emitter of one run. Cheap to clone; the flusher task stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<SinkInner>,
}

impl EventSink {
    /// `first_sequence` is 0 for a new run, max + 1 otherwise.
    pub fn start(outbox: Outbox, ids: RunIds, first_sequence: i64) -> EventSink {
        let inner = Arc::new(SinkInner {
            outbox,
            ids,
            state: Mutex::new(SinkState {
                next: first_sequence,
                buffer: Vec::new(),
            }),
        });
        let weak: Weak<SinkInner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let mut st = inner.lock();
                inner.flush_locked(&mut st);
            }
        });
        EventSink { inner }
    }

    pub fn ids(&self) -> &RunIds {
        &self.inner.ids
    }

    /// Assigns the next sequence and buffers the row; returns the sequence.
    pub fn emit(&self, event_type: RunEventType, payload: Value) -> i64 {
        let mut st = self.inner.lock();
        let seq = st.next;
        st.next += 1;
        st.buffer.push(self.inner.ids.row(seq, event_type, payload));
        if st.buffer.len() >= MAX_BATCH {
            self.inner.flush_locked(&mut st);
        }
        seq
    }

    /// Queue everything buffered now.
    pub fn flush(&self) {
        let mut st = self.inner.lock();
        self.inner.flush_locked(&mut st);
    }

    /// The next sequence that would be assigned.
    pub fn next_sequence(&self) -> i64 {
        self.inner.lock().next
    }
}

/// Out-of-band insert (cancel job, job-failure fallback, shutdown) for a run
/// this process does not hold a sink for: the caller read max + 1.
pub fn push_out_of_band(
    outbox: &Outbox,
    ids: &RunIds,
    first: i64,
    events: Vec<(RunEventType, Value)>,
) {
    let rows: Vec<Value> = events
        .into_iter()
        .enumerate()
        .map(|(i, (t, p))| ids.row(first + i as i64, t, p))
        .collect();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = outbox.push(OutboxWrite::Insert {
        table: EVENTS_TABLE.to_string(),
        rows: Value::Array(rows),
        duplicate_is_delivered: true,
    }) {
        tracing::error!(error = %e, runId = %ids.run_id, "Failed to queue subagent run events");
    }
}

/// max(sequence) + 1 of a run at the hub, 0 when it has no events.
pub async fn next_sequence_at_hub(
    client: &panorama_supabase::Client,
    run_id: &str,
) -> Result<i64, String> {
    let row = client
        .from(EVENTS_TABLE)
        .select("sequence")
        .eq("run_id", run_id)
        .order("sequence", false, None)
        .limit(1)
        .maybe_single()
        .await
        .map_err(|e| e.to_string())?;
    Ok(row
        .and_then(|r| r.get("sequence").and_then(Value::as_i64))
        .map_or(0, |s| s + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_batched_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let ids = RunIds {
            run_id: "r".into(),
            subagent_id: "s".into(),
            team_id: "t".into(),
            gateway_id: "g".into(),
        };
        let sink = EventSink::start(outbox.clone(), ids, 3);
        for i in 0..150 {
            assert_eq!(sink.emit(RunEventType::Message, json!({"i": i})), 3 + i);
        }
        // 100 rows went out at once; the rest waits for the flusher.
        assert_eq!(outbox.pending(), 1);
        tokio::time::sleep(FLUSH_INTERVAL * 3).await;
        assert_eq!(outbox.pending(), 2);
        assert_eq!(sink.next_sequence(), 153);
        sink.flush();
        assert_eq!(outbox.pending(), 2, "an empty flush pushes nothing");
        sink.emit(RunEventType::Message, json!({"i": "last"}));
        drop(sink);
        assert_eq!(outbox.pending(), 3, "dropping the sink queues its buffer");
    }
}
