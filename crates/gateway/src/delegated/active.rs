//! What this process is running right now: subagent runs (with their cancel
//! signal, process group and event sink), pending cancels that arrived
//! before their run started (control-plane §9.6), and model runs (killed at
//! shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::events::EventSink;

/// Who stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSource {
    /// An accepted `subagent_cancel` job, or a pending cancel.
    Gateway,
    /// Gateway shutdown (§10.8.6).
    Shutdown,
}

impl CancelSource {
    pub fn event_source(self) -> &'static str {
        match self {
            CancelSource::Gateway => "gateway",
            CancelSource::Shutdown => "gateway_shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CancelInfo {
    pub reason: String,
    pub source: CancelSource,
}

/// One active subagent run.
pub struct RunControl {
    pub run_id: String,
    pub subagent_id: String,
    pub job_id: String,
    pub sink: EventSink,
    stop_tx: watch::Sender<Option<String>>,
    cancel: Mutex<Option<CancelInfo>>,
    pgid: Mutex<Option<i32>>,
    /// The run's outcome is decided ([`ActiveRuns::settle`]): a cancel no
    /// longer finds it active. Read and written under the registry lock.
    settled: std::sync::atomic::AtomicBool,
}

impl RunControl {
    pub fn stop_receiver(&self) -> watch::Receiver<Option<String>> {
        self.stop_tx.subscribe()
    }

    /// Marks the run cancelled (first request wins) and signals the runner,
    /// which terminates the agent's process group.
    pub fn cancel(&self, info: CancelInfo) {
        {
            let mut c = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
            if c.is_none() {
                *c = Some(info.clone());
            }
        }
        self.stop_tx.send_replace(Some(info.reason));
        if let Some(pgid) = self.pgid() {
            super::process::stop_requested(pgid);
        }
    }

    pub fn cancelled(&self) -> Option<CancelInfo> {
        self.cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_pgid(&self, pgid: Option<i32>) {
        *self.pgid.lock().unwrap_or_else(|e| e.into_inner()) = pgid;
    }

    pub fn pgid(&self) -> Option<i32> {
        *self.pgid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A model run that shutdown can stop.
struct ModelRunControl {
    stop_tx: watch::Sender<Option<String>>,
    pgid: Arc<Mutex<Option<i32>>>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Arc<RunControl>>,
    /// Pending cancels keyed by run id, or by subagent id when none was given.
    pending: HashMap<String, String>,
    model_runs: HashMap<String, ModelRunControl>,
    shutting_down: Option<String>,
}

#[derive(Default)]
pub struct ActiveRuns {
    inner: Mutex<Inner>,
}

/// What [`ActiveRuns::request_cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelSignal {
    /// A local run was signalled; its sink holds the `cancellation_requested` event.
    Active,
    /// Remembered as a pending cancel.
    Pending,
}

impl ActiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run and consumes a late pending cancel (§9.6 step 2),
    /// which marks it cancelled before its child starts. A run registered
    /// during shutdown is cancelled at once.
    pub fn register(
        &self,
        run_id: &str,
        subagent_id: &str,
        job_id: &str,
        sink: EventSink,
    ) -> Arc<RunControl> {
        let (stop_tx, _) = watch::channel(None);
        let run = Arc::new(RunControl {
            run_id: run_id.to_string(),
            subagent_id: subagent_id.to_string(),
            job_id: job_id.to_string(),
            sink,
            stop_tx,
            cancel: Mutex::new(None),
            pgid: Mutex::new(None),
            settled: std::sync::atomic::AtomicBool::new(false),
        });
        let mut inner = self.lock();
        let pending = inner
            .pending
            .remove(run_id)
            .or_else(|| inner.pending.remove(subagent_id));
        if let Some(reason) = pending {
            run.cancel(CancelInfo {
                reason,
                source: CancelSource::Gateway,
            });
        } else if let Some(reason) = inner.shutting_down.clone() {
            run.cancel(CancelInfo {
                reason,
                source: CancelSource::Shutdown,
            });
        }
        inner.runs.insert(run_id.to_string(), Arc::clone(&run));
        run
    }

    pub fn remove(&self, run_id: &str) {
        self.lock().runs.remove(run_id);
    }

    /// §9.6 step 1: a pending cancel for the run id, else for the subagent id.
    pub fn take_pending(&self, run_id: &str, subagent_id: &str) -> Option<String> {
        let mut inner = self.lock();
        inner
            .pending
            .remove(run_id)
            .or_else(|| inner.pending.remove(subagent_id))
    }

    /// The runner decided the run's outcome (completed or failed): a cancel
    /// that was requested meanwhile wins (returned: the run ends
    /// cancelled, `emit_terminal` is not called); otherwise the run is
    /// settled and `emit_terminal` queues its terminal event, both under
    /// the registry lock that [`ActiveRuns::request_cancel`] holds for its
    /// check, event and signal. So a cancel either reaches the run before
    /// the decision or finds it settled and its terminal event sequenced
    /// (soak across replicas: a cancel answered "accepted" with a
    /// `cancellation_requested` for a run that then completed).
    pub fn settle(&self, run: &RunControl, emit_terminal: impl FnOnce()) -> Option<CancelInfo> {
        let _inner = self.lock();
        let cancel = run.cancelled();
        if cancel.is_none() {
            run.settled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            emit_terminal();
        }
        cancel
    }

    /// §9.5 step 8 (`requestSubagentCancel`). When this gateway runs the
    /// subagent (and the run id, if given, matches) and the run's outcome
    /// is not yet settled, `before_signal` runs with the run under the
    /// registry lock (so `cancellation_requested` is sequenced before the
    /// run's acknowledgement), then the run is cancelled. Otherwise the
    /// cancel is remembered as pending.
    pub fn request_cancel(
        &self,
        subagent_id: &str,
        run_id: Option<&str>,
        reason: &str,
        before_signal: impl FnOnce(&RunControl),
    ) -> CancelSignal {
        let mut inner = self.lock();
        let local = inner
            .runs
            .values()
            .find(|r| {
                r.subagent_id == subagent_id
                    && run_id.is_none_or(|id| id == r.run_id)
                    && !r.settled.load(std::sync::atomic::Ordering::Relaxed)
            })
            .cloned();
        match local {
            Some(run) => {
                before_signal(&run);
                run.cancel(CancelInfo {
                    reason: reason.to_string(),
                    source: CancelSource::Gateway,
                });
                CancelSignal::Active
            }
            None => {
                let key = run_id.unwrap_or(subagent_id).to_string();
                inner.pending.insert(key, reason.to_string());
                CancelSignal::Pending
            }
        }
    }

    pub fn run_for_job(&self, job_id: &str) -> Option<Arc<RunControl>> {
        self.lock()
            .runs
            .values()
            .find(|r| r.job_id == job_id)
            .cloned()
    }

    pub fn run_count(&self) -> usize {
        let inner = self.lock();
        inner.runs.len() + inner.model_runs.len()
    }

    /// Shutdown step 5: cancel every run and stop every model run; runs
    /// registered from now on are cancelled at once.
    pub fn shutdown(&self, reason: &str) {
        let mut inner = self.lock();
        inner.shutting_down = Some(reason.to_string());
        for run in inner.runs.values() {
            run.cancel(CancelInfo {
                reason: reason.to_string(),
                source: CancelSource::Shutdown,
            });
        }
        for m in inner.model_runs.values() {
            m.stop_tx.send_replace(Some(reason.to_string()));
            if let Some(pgid) = *m.pgid.lock().unwrap_or_else(|e| e.into_inner()) {
                super::process::stop_requested(pgid);
            }
        }
    }

    pub fn shutdown_reason(&self) -> Option<String> {
        self.lock().shutting_down.clone()
    }

    /// Registers a model run; returns its stop receiver and pgid slot.
    pub fn register_model_run(
        &self,
        job_id: &str,
    ) -> (watch::Receiver<Option<String>>, Arc<Mutex<Option<i32>>>) {
        let (stop_tx, rx) = watch::channel(None);
        let pgid = Arc::new(Mutex::new(None));
        let mut inner = self.lock();
        if let Some(reason) = inner.shutting_down.clone() {
            stop_tx.send_replace(Some(reason));
        }
        inner.model_runs.insert(
            job_id.to_string(),
            ModelRunControl {
                stop_tx,
                pgid: Arc::clone(&pgid),
            },
        );
        (rx, pgid)
    }

    pub fn remove_model_run(&self, job_id: &str) {
        self.lock().model_runs.remove(job_id);
    }

    /// Process group of a job's agent (subagent or model run), for the
    /// residual kill of an aborted job.
    pub fn pgid_for_job(&self, job_id: &str) -> Option<i32> {
        let inner = self.lock();
        if let Some(m) = inner.model_runs.get(job_id) {
            return *m.pgid.lock().unwrap_or_else(|e| e.into_inner());
        }
        inner
            .runs
            .values()
            .find(|r| r.job_id == job_id)
            .and_then(|r| r.pgid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delegated::events::RunIds;
    use crate::outbox::Outbox;
    use panorama_protocol::status::RunEventType;
    use serde_json::json;

    fn registered(runs: &ActiveRuns, outbox: &Outbox) -> Arc<RunControl> {
        let ids = RunIds {
            run_id: "r".into(),
            subagent_id: "s".into(),
            team_id: "t".into(),
            gateway_id: "g".into(),
        };
        runs.register("r", "s", "j", EventSink::start(outbox.clone(), ids, 0))
    }

    /// A cancel after the run settled finds no active run (remembered as
    /// pending, nothing written into the run), and the terminal event was
    /// sequenced when the run settled.
    #[tokio::test]
    async fn a_cancel_after_the_outcome_is_settled_does_not_reach_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let runs = ActiveRuns::default();
        let run = registered(&runs, &outbox);
        let mut terminal = None;
        let settled = runs.settle(&run, || {
            terminal = run.sink.emit(RunEventType::RunCompleted, json!({}));
        });
        assert!(settled.is_none());
        assert_eq!(terminal, Some(0));
        let signal = runs.request_cancel("s", Some("r"), "stop", |_| {
            unreachable!("a settled run is not active")
        });
        assert_eq!(signal, CancelSignal::Pending);
        assert!(run.cancelled().is_none());
    }

    /// A cancel that reached the run before it settled wins: the terminal
    /// event is not emitted and the runner gets the cancel.
    #[tokio::test]
    async fn a_cancel_before_the_outcome_is_settled_wins() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let runs = ActiveRuns::default();
        let run = registered(&runs, &outbox);
        let signal = runs.request_cancel("s", Some("r"), "stop", |local| {
            local
                .sink
                .emit(RunEventType::CancellationRequested, json!({}));
        });
        assert_eq!(signal, CancelSignal::Active);
        let settled = runs.settle(&run, || unreachable!("the cancel won"));
        assert_eq!(settled.map(|c| c.reason), Some("stop".to_string()));
    }
}
