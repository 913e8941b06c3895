//! Live run events (control-plane §3.7, §10.7): every event gets the next
//! sequence of its run at emit time and is persisted through the outbox in
//! batches (one `Insert` of up to [`MAX_BATCH`] rows, at least every
//! [`FLUSH_INTERVAL`]), so rows reach the hub in sequence order while the
//! agent is still running. A batch is inserted atomically and its rows have
//! fixed `(run_id, sequence)` keys, so a replayed batch is a duplicate
//! (`duplicate_is_delivered`).
//!
//! That also means a row written at a sequence another row already holds is
//! *lost*: the hub answers 23505 and the outbox counts it as delivered. So a
//! sequence is never guessed. Each run this process writes events for has
//! one counter ([`RunSequences`]), shared by its live [`EventSink`] and by
//! out-of-band writers ([`push_out_of_band`]: the cancel job, the
//! job-failure fallback, a cancel before start, shutdown); the hub's
//! max + 1 is read only for a run this process has no counter for, after
//! this process's queued writes were delivered, and retried while the hub
//! does not answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use panorama_protocol::status::RunEventType;
use panorama_protocol::subagent::trim_event_payload;
use serde_json::{json, Value};

use crate::outbox::Outbox;
use crate::port::writes;

/// Longest time an emitted event waits in memory.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Largest batch (one outbox entry).
pub const MAX_BATCH: usize = 100;
/// Counters of finished runs kept for late out-of-band events; past this,
/// the oldest finished run's counter is forgotten (its next out-of-band
/// event then reads the hub).
pub const REMEMBERED_RUNS: usize = 1024;
/// How long an out-of-band writer waits for the outbox once the gateway is
/// stopping (the residual jobs' wait is short).
pub(super) const STOPPING_DRAIN: Duration = Duration::from_secs(2);

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
    /// A terminal event (`run_completed`, `run_failed`, `run_cancelled`)
    /// has been sequenced: the run's event log is closed, and an
    /// out-of-band writer that lost a race with the run's end (a cancel
    /// that read the run as running) must not append after it.
    ended: bool,
}

/// The event counter of one run and its rows not yet queued.
struct RunLog {
    outbox: Outbox,
    ids: RunIds,
    state: Mutex<SinkState>,
}

impl RunLog {
    fn new(outbox: Outbox, ids: RunIds, next: i64) -> RunLog {
        RunLog {
            outbox,
            ids,
            state: Mutex::new(SinkState {
                next,
                buffer: Vec::new(),
                ended: false,
            }),
        }
    }

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
        queue_rows(&self.outbox, &self.ids.run_id, rows);
    }

    /// Queues `events` (rows of `ids`) at the next sequences, after what is
    /// buffered; returns the first sequence, or `None` (nothing queued) when
    /// the run's terminal event is already sequenced.
    fn push_now(&self, ids: &RunIds, events: Vec<(RunEventType, Value)>) -> Option<i64> {
        let mut st = self.lock();
        if st.ended {
            return None;
        }
        self.flush_locked(&mut st);
        st.ended = events.iter().any(|(t, _)| t.is_terminal());
        let first = st.next;
        st.next += events.len() as i64;
        let rows: Vec<Value> = events
            .into_iter()
            .enumerate()
            .map(|(i, (t, p))| ids.row(first + i as i64, t, p))
            .collect();
        if !rows.is_empty() {
            queue_rows(&self.outbox, &ids.run_id, rows);
        }
        Some(first)
    }
}

fn queue_rows(outbox: &Outbox, run_id: &str, rows: Vec<Value>) {
    let count = rows.len();
    if let Err(e) = outbox.push(writes::run_events(Value::Array(rows))) {
        tracing::error!(error = %e, runId = %run_id, count, "Failed to queue subagent run events");
    }
}

struct SinkInner {
    log: Arc<RunLog>,
}

/// The last clone going away (a finished run, or a job task aborted at
/// shutdown) queues what is still buffered instead of losing it.
impl Drop for SinkInner {
    fn drop(&mut self) {
        let mut st = self.log.lock();
        self.log.flush_locked(&mut st);
    }
}

/// The event emitter of one run. Cheap to clone; the flusher task stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<SinkInner>,
}

impl EventSink {
    /// A sink with a counter of its own; `first_sequence` is 0 for a new
    /// run, max + 1 otherwise. The gateway starts sinks through
    /// [`RunSequences::sink`] instead, so out-of-band writers share it.
    pub fn start(outbox: Outbox, ids: RunIds, first_sequence: i64) -> EventSink {
        EventSink::with_log(Arc::new(RunLog::new(outbox, ids, first_sequence)))
    }

    fn with_log(log: Arc<RunLog>) -> EventSink {
        let inner = Arc::new(SinkInner { log });
        let weak: Weak<SinkInner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let mut st = inner.log.lock();
                inner.log.flush_locked(&mut st);
            }
        });
        EventSink { inner }
    }

    pub fn ids(&self) -> &RunIds {
        &self.inner.log.ids
    }

    /// Assigns the next sequence and buffers the row; returns the sequence.
    /// `None` (nothing written) once the run's terminal event is sequenced:
    /// a run has exactly one terminal event, and it is the last (e.g. a
    /// cancel that reaches the run just after it finished).
    pub fn emit(&self, event_type: RunEventType, payload: Value) -> Option<i64> {
        let log = &self.inner.log;
        let mut st = log.lock();
        if st.ended {
            tracing::debug!(runId = %log.ids.run_id, event = ?event_type, "run already ended; event not written");
            return None;
        }
        let seq = st.next;
        st.next += 1;
        st.ended |= event_type.is_terminal();
        st.buffer.push(log.ids.row(seq, event_type, payload));
        if st.buffer.len() >= MAX_BATCH {
            log.flush_locked(&mut st);
        }
        Some(seq)
    }

    /// Queue everything buffered now.
    pub fn flush(&self) {
        let mut st = self.inner.log.lock();
        self.inner.log.flush_locked(&mut st);
    }

    /// The next sequence that would be assigned.
    pub fn next_sequence(&self) -> i64 {
        self.inner.log.lock().next
    }
}

#[derive(Default)]
struct Registry {
    logs: HashMap<String, Arc<RunLog>>,
    /// Run ids, oldest first (eviction order).
    order: VecDeque<String>,
}

/// The event counters of the runs this process wrote (or read) events of,
/// keyed by run id: one per run, so no sequence is handed out twice by
/// this process. A run's events are only ever written by the gateway
/// process that owns the run, so for such a run the counter here is the
/// truth and the hub is not asked.
#[derive(Default)]
pub struct RunSequences {
    inner: Mutex<Registry>,
}

impl RunSequences {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counter of `ids.run_id`, created at `floor` when there is none,
    /// else raised to at least `floor`.
    fn entry(&self, outbox: &Outbox, ids: &RunIds, floor: i64) -> Arc<RunLog> {
        let mut reg = self.lock();
        if let Some(log) = reg.logs.get(&ids.run_id) {
            let log = Arc::clone(log);
            drop(reg);
            let mut st = log.lock();
            st.next = st.next.max(floor);
            drop(st);
            return log;
        }
        let log = Arc::new(RunLog::new(outbox.clone(), ids.clone(), floor));
        reg.logs.insert(ids.run_id.clone(), Arc::clone(&log));
        reg.order.push_back(ids.run_id.clone());
        // Forget the oldest finished runs (a live sink holds its counter).
        let mut scanned = 0;
        while reg.logs.len() > REMEMBERED_RUNS && scanned < reg.order.len() {
            scanned += 1;
            let Some(oldest) = reg.order.pop_front() else {
                break;
            };
            let live = reg
                .logs
                .get(&oldest)
                .is_some_and(|l| Arc::strong_count(l) > 1);
            if live {
                reg.order.push_back(oldest);
            } else {
                reg.logs.remove(&oldest);
            }
        }
        log
    }

    /// The sink of a run this process runs. It continues after any
    /// sequence already handed out for the run (e.g. a cancel job's
    /// `cancellation_requested` written before the run registered).
    pub fn sink(&self, outbox: &Outbox, ids: &RunIds, first_sequence: i64) -> EventSink {
        EventSink::with_log(self.entry(outbox, ids, first_sequence))
    }

    /// Queues `events` at the run's next sequences when this process has
    /// its counter (`Ok(None)`: the run had already ended, nothing queued);
    /// hands them back otherwise.
    pub fn push_known(
        &self,
        ids: &RunIds,
        events: Vec<(RunEventType, Value)>,
    ) -> Result<Option<i64>, Vec<(RunEventType, Value)>> {
        let log = self.lock().logs.get(&ids.run_id).cloned();
        match log {
            Some(log) => Ok(log.push_now(ids, events)),
            None => Err(events),
        }
    }

    /// Queues `events` at the next sequences, at least `floor` (the hub's
    /// max + 1, or 0 for a run this process just created); `None` when the
    /// run had already ended here.
    pub fn push_from(
        &self,
        outbox: &Outbox,
        ids: &RunIds,
        floor: i64,
        events: Vec<(RunEventType, Value)>,
    ) -> Option<i64> {
        self.entry(outbox, ids, floor).push_now(ids, events)
    }

    /// Whether this process has the run's counter.
    pub fn knows(&self, run_id: &str) -> bool {
        self.lock().logs.contains_key(run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(run: &str) -> RunIds {
        RunIds {
            run_id: run.into(),
            subagent_id: "s".into(),
            team_id: "t".into(),
            gateway_id: "g".into(),
        }
    }

    /// `(event_type, sequence)` of every queued row, in outbox order.
    fn queued(dir: &std::path::Path) -> Vec<(String, i64)> {
        let text = std::fs::read_to_string(dir.join("outbox.jsonl")).unwrap();
        let mut out = Vec::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            for row in v["write"]["Insert"]["rows"].as_array().unwrap() {
                out.push((
                    row["event_type"].as_str().unwrap().to_string(),
                    row["sequence"].as_i64().unwrap(),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn events_are_batched_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let sink = EventSink::start(outbox.clone(), ids("r"), 3);
        for i in 0..150 {
            assert_eq!(
                sink.emit(RunEventType::Message, json!({"i": i})),
                Some(3 + i)
            );
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

    /// Regression (soak): out-of-band events were written at the hub's
    /// max + 1, or at 0 when that read failed, and a taken sequence is a
    /// 23505 the outbox counts as delivered. A run's sink and its
    /// out-of-band writers now share one counter.
    #[tokio::test]
    async fn out_of_band_events_share_the_run_counter_with_its_sink() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let seqs = RunSequences::default();
        let r = ids("r");
        // Unknown run: handed back (the caller must read the hub).
        let events = vec![(RunEventType::CancellationRequested, json!({}))];
        let events = seqs.push_known(&r, events).unwrap_err();
        assert!(!seqs.knows("r"));
        // A cancel for a run upstream whose job has not started here: the
        // hub said 0 events; then the run's sink starts after it.
        assert_eq!(seqs.push_from(&outbox, &r, 0, events), Some(0));
        let sink = seqs.sink(&outbox, &r, 0);
        assert_eq!(sink.emit(RunEventType::RunStarted, json!({})), Some(1));
        assert_eq!(sink.emit(RunEventType::Message, json!({})), Some(2));
        // While the sink lives, an out-of-band event goes after its
        // buffered rows, in outbox order too.
        let first = seqs
            .push_known(&r, vec![(RunEventType::CancellationRequested, json!({}))])
            .unwrap();
        assert_eq!(first, Some(3));
        // A stale hub answer (lower than ours) never moves it back.
        assert_eq!(
            seqs.push_from(&outbox, &r, 2, vec![(RunEventType::System, json!({}))]),
            Some(4)
        );
        assert_eq!(sink.emit(RunEventType::RunCancelled, json!({})), Some(5));
        // The sink itself writes nothing after its terminal event either.
        assert_eq!(
            sink.emit(RunEventType::CancellationAcknowledged, json!({})),
            None
        );
        drop(sink);
        // After the terminal event nothing more is appended (regression,
        // soak: a cancel that read the run as running appended
        // `cancellation_requested` after `run_completed`).
        assert_eq!(
            seqs.push_known(&r, vec![(RunEventType::CancellationRequested, json!({}))]),
            Ok(None)
        );
        assert_eq!(
            seqs.push_from(&outbox, &r, 2, vec![(RunEventType::RunFailed, json!({}))]),
            None
        );
        let q = queued(dir.path());
        let order: Vec<i64> = q.iter().map(|(_, s)| *s).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5], "{q:?}");
        assert_eq!(q[3].0, "cancellation_requested");
    }

    #[tokio::test]
    async fn finished_runs_are_forgotten_first_and_live_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let seqs = RunSequences::default();
        let live = seqs.sink(&outbox, &ids("live"), 0);
        for i in 0..REMEMBERED_RUNS + 10 {
            seqs.push_from(&outbox, &ids(&format!("done-{i}")), 0, Vec::new());
        }
        assert!(seqs.knows("live"), "a live sink keeps its counter");
        assert!(!seqs.knows("done-0"));
        assert!(seqs.knows(&format!("done-{}", REMEMBERED_RUNS + 9)));
        assert!(seqs.lock().logs.len() <= REMEMBERED_RUNS);
        drop(live);
    }
}
