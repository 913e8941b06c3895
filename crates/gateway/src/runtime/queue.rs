//! The job queue (runtime.md §4.3, control-plane.md §7.3): FIFO pending
//! jobs, de-duplication, a concurrency limit and one run at a time per
//! subagent.
//!
//! One deliberate strengthening over the reference: a job id that this
//! process has ever handed out is never accepted again (`seen`), so a
//! reconcile that races with a completion cannot make this process run a
//! job twice. The database claim remains the cross-process guard.

use std::collections::{HashSet, VecDeque};

use panorama_protocol::rows::GatewayJobRow;

/// Default number of jobs run at once.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Environment variable that overrides the concurrency (runtime.md §4.3).
pub const CONCURRENCY_ENV: &str = "PANORAMA_GATEWAY_CONCURRENCY";

/// `PANORAMA_GATEWAY_CONCURRENCY` parsed as a positive integer; 10 when
/// unset, non-numeric or ≤ 0.
pub fn concurrency_from(raw: Option<&str>) -> usize {
    raw.and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONCURRENCY)
}

/// A job handed out by [`JobQueue::take_available`].
#[derive(Debug, Clone, PartialEq)]
pub struct TakenJob {
    pub job: GatewayJobRow,
    pub reserved_subagent_id: Option<String>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct JobQueue {
    pending: VecDeque<GatewayJobRow>,
    queued: HashSet<String>,
    active: HashSet<String>,
    reserved: HashSet<String>,
    seen: HashSet<String>,
}

impl JobQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a job; false when it is pending, active, or was already handed
    /// out by this process.
    pub fn enqueue(&mut self, job: GatewayJobRow) -> bool {
        if self.queued.contains(&job.id)
            || self.active.contains(&job.id)
            || self.seen.contains(&job.id)
        {
            return false;
        }
        self.queued.insert(job.id.clone());
        self.pending.push_back(job);
        true
    }

    /// Mark a job id handed out outside the queue (cancel fast path), so
    /// the queue never offers it again. False if it was already known.
    pub fn mark_seen(&mut self, job_id: &str) -> bool {
        if self.queued.contains(job_id) || self.active.contains(job_id) {
            return false;
        }
        self.seen.insert(job_id.to_string())
    }

    /// Hand out jobs while fewer than `max` are active (§4.3
    /// `takeAvailable`): jobs whose subagent is busy rotate to the back.
    pub fn take_available(&mut self, max: usize) -> Vec<TakenJob> {
        let mut out = Vec::new();
        let mut deferred = 0usize;
        while self.active.len() < max {
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            self.queued.remove(&job.id);
            let subagent = job.queue_subagent_key().map(str::to_string);
            if let Some(id) = subagent.as_deref() {
                if self.reserved.contains(id) {
                    self.queued.insert(job.id.clone());
                    self.pending.push_back(job);
                    deferred += 1;
                    if deferred >= self.pending.len() {
                        break;
                    }
                    continue;
                }
            }
            deferred = 0;
            if self.active.contains(&job.id) || self.seen.contains(&job.id) {
                continue;
            }
            self.active.insert(job.id.clone());
            self.seen.insert(job.id.clone());
            if let Some(id) = &subagent {
                self.reserved.insert(id.clone());
            }
            out.push(TakenJob {
                job,
                reserved_subagent_id: subagent,
            });
        }
        out
    }

    /// A handed-out job finished: free its slot and its subagent.
    pub fn mark_done(&mut self, job_id: &str, reserved_subagent_id: Option<&str>) {
        self.active.remove(job_id);
        if let Some(id) = reserved_subagent_id {
            self.reserved.remove(id);
        }
    }

    /// Drop every pending job (shutdown). Active jobs are untouched.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.queued.clear();
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: &str, job_type: &str, payload: serde_json::Value) -> GatewayJobRow {
        serde_json::from_value(json!({
            "id": id, "team_id": "t", "gateway_id": "g", "job_type": job_type,
            "status": "queued", "payload": payload,
        }))
        .unwrap()
    }

    fn ids(taken: &[TakenJob]) -> Vec<&str> {
        taken.iter().map(|t| t.job.id.as_str()).collect()
    }

    #[test]
    fn dedupes_and_never_hands_out_twice() {
        let mut q = JobQueue::new();
        assert!(q.enqueue(job("a", "diagnostic", json!({}))));
        assert!(!q.enqueue(job("a", "diagnostic", json!({}))));
        let taken = q.take_available(10);
        assert_eq!(ids(&taken), vec!["a"]);
        assert!(!q.enqueue(job("a", "diagnostic", json!({}))));
        q.mark_done("a", None);
        assert!(!q.enqueue(job("a", "diagnostic", json!({}))));
        assert_eq!(q.active_count(), 0);
        assert!(q.take_available(10).is_empty());
    }

    #[test]
    fn respects_concurrency_limit_in_fifo_order() {
        let mut q = JobQueue::new();
        for id in ["1", "2", "3"] {
            q.enqueue(job(id, "diagnostic", json!({})));
        }
        assert_eq!(ids(&q.take_available(2)), vec!["1", "2"]);
        assert!(q.take_available(2).is_empty());
        q.mark_done("1", None);
        assert_eq!(ids(&q.take_available(2)), vec!["3"]);
        assert_eq!(q.pending_count(), 0);
    }

    #[test]
    fn one_run_per_subagent_and_rotation() {
        let mut q = JobQueue::new();
        q.enqueue(job("r1", "subagent_run", json!({"subagent_id": "s"})));
        q.enqueue(job("r2", "subagent_run", json!({"subagentId": "s"})));
        q.enqueue(job("d", "diagnostic", json!({})));
        let taken = q.take_available(10);
        assert_eq!(ids(&taken), vec!["r1", "d"]);
        assert_eq!(taken[0].reserved_subagent_id.as_deref(), Some("s"));
        assert_eq!(q.pending_count(), 1);
        assert!(q.take_available(10).is_empty());
        q.mark_done("r1", Some("s"));
        assert_eq!(ids(&q.take_available(10)), vec!["r2"]);
    }

    #[test]
    fn clear_pending_and_mark_seen() {
        let mut q = JobQueue::new();
        q.enqueue(job("a", "diagnostic", json!({})));
        q.clear_pending();
        assert_eq!(q.pending_count(), 0);
        assert!(q.mark_seen("c"));
        assert!(!q.mark_seen("c"));
        assert!(!q.enqueue(job("c", "subagent_cancel", json!({}))));
    }

    #[test]
    fn concurrency_parsing() {
        assert_eq!(concurrency_from(None), 10);
        assert_eq!(concurrency_from(Some("4")), 4);
        assert_eq!(concurrency_from(Some("0")), 10);
        assert_eq!(concurrency_from(Some("-3")), 10);
        assert_eq!(concurrency_from(Some("many")), 10);
    }
}
