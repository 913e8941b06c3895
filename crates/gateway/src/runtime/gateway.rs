//! The state the runtime's tasks share: the [`Gateway`] (the handlers'
//! [`JobContext`] plus the claim ledger, queue, ingress state, heartbeat
//! bookkeeping and shell sessions). Every runtime module builds on it; it
//! imports none of them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use panorama_protocol::capabilities::Capabilities;
use panorama_protocol::operational::{
    compute_operational_status, IngressState, OperationalStatusRule,
};
use panorama_protocol::status::GatewayStatus;
use tokio::sync::watch;

use super::clock::ServerClock;
use super::queue::JobQueue;
use crate::job_context::JobContext;
use crate::recovery::ClaimLedger;
use crate::timestamp::now_ms;

/// Mutable runtime state, behind one lock (never held across an await).
#[derive(Default)]
pub struct State {
    pub queue: JobQueue,
    pub accepting: bool,
    pub shutting_down: bool,
    pub ingress: Option<IngressState>,
    pub last_ingress_success_ms: Option<i64>,
    pub last_ingress_error: Option<String>,
    pub capabilities: Option<Capabilities>,
    pub full_control_enabled: bool,
    /// The active-claimed map: every job handed to a task, until it ends.
    pub active: HashMap<String, tokio::task::AbortHandle>,
    /// Jobs whose completion was queued by this process.
    pub finalized: HashSet<String>,
}

/// Everything the runtime's tasks share. Derefs to the [`JobContext`] it
/// hands to job handlers (client, identity, paths, outbox, delegated-run
/// state, shutdown signal).
pub struct Gateway {
    pub ctx: JobContext,
    pub ledger: ClaimLedger,
    pub concurrency: usize,
    pub state: Mutex<State>,
    /// Last status sent; the lock also serializes heartbeat requests.
    pub last_sent: tokio::sync::Mutex<Option<GatewayStatus>>,
    pub reconcile_in_flight: AtomicBool,
    pub shutdown_tx: watch::Sender<bool>,
    /// Server-clock estimate for freshness checks (control-plane.md §17).
    pub clock: ServerClock,
    /// Shell sessions of this process (runtime.md §5), closed at shutdown.
    pub shell_sessions: Arc<crate::shell::ShellSessions>,
}

impl std::ops::Deref for Gateway {
    type Target = JobContext;

    fn deref(&self) -> &JobContext {
        &self.ctx
    }
}

impl Gateway {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// The operational status now (later rule: host availability).
    pub fn compute_status(&self) -> GatewayStatus {
        let st = self.lock();
        compute_operational_status(
            st.capabilities.as_ref(),
            st.ingress,
            st.accepting,
            OperationalStatusRule::HostAvailability,
        )
    }

    /// Record the outcome of a reconcile and recompute the ingress state.
    pub fn record_ingress(&self, outcome: std::result::Result<(), String>) {
        let now = now_ms();
        let mut st = self.lock();
        match outcome {
            Ok(()) => {
                st.last_ingress_success_ms = Some(now);
                st.last_ingress_error = None;
            }
            Err(e) => st.last_ingress_error = Some(e),
        }
        if !st.shutting_down {
            st.ingress = Some(IngressState::after_reconcile(
                st.last_ingress_success_ms,
                st.last_ingress_error.is_some(),
                now,
            ));
        }
    }
}
