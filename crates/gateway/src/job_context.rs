//! What a job handler gets from the runtime: the control-plane port and the
//! outbox, this gateway's identity and paths, the delegated-run state and a
//! [`Shutdown`] handle — and nothing of the runtime's own machinery (queue,
//! ingress, heartbeat). The runtime's `Gateway` holds one and derefs to it,
//! so handlers sit below the runtime and never import it.

use std::future::Future;
use std::sync::Arc;

use panorama_supabase::Client;
use tokio::sync::watch;

use crate::delegated::active::ActiveRuns;
use crate::delegated::events::RunSequences;
use crate::delegated::providers::ProviderState;
use crate::outbox::Outbox;
use crate::paths::GatewayPaths;
use crate::port::ControlPlane;

/// The runtime's request that running jobs stop their children (shutdown
/// step 7), with its reason. Cheap to clone; every clone sees one signal.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<Option<String>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::channel(None).0,
        }
    }
}

impl Shutdown {
    /// Asks running jobs to stop (the first reason wins for readers that
    /// already saw one; later calls replace it).
    pub fn request(&self, reason: &str) {
        self.tx.send_replace(Some(reason.to_string()));
    }

    /// The reason jobs were asked to stop, if they were.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Resolves once jobs are asked to stop.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            if rx.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver of the signal (for code that selects on it).
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.tx.subscribe()
    }
}

/// Delegated-run state of one gateway runtime.
#[derive(Default)]
pub struct Delegated {
    pub providers: ProviderState,
    pub active: ActiveRuns,
    /// Event sequence counters of runs (see `delegated::out_of_band`).
    pub sequences: RunSequences,
}

/// Everything a job handler may use.
pub struct JobContext {
    /// The session's client, for what is not a request of a job (realtime,
    /// the terminal stream's channel).
    pub client: Client,
    /// Every request a job makes of the control plane (`port`).
    pub control: Arc<dyn ControlPlane>,
    pub gateway_id: String,
    pub team_id: String,
    pub device_name: String,
    pub paths: GatewayPaths,
    pub outbox: Outbox,
    /// Providers, active delegated runs, pending cancels, run event counters.
    pub delegated: Delegated,
    pub shutdown: Shutdown,
}

impl JobContext {
    /// Resolves once running jobs are asked to stop.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.requested()
    }

    /// The reason running jobs were asked to stop, if they were.
    pub fn cancel_reason(&self) -> Option<String> {
        self.shutdown.reason()
    }
}

#[cfg(test)]
impl JobContext {
    /// A context over `control` with its files (config, outbox, work dirs)
    /// under `dir`; the client points at a closed port (nothing may use it).
    pub fn for_tests(control: Arc<dyn ControlPlane>, dir: &std::path::Path) -> JobContext {
        let paths = GatewayPaths::resolve(
            &crate::paths::PathOverrides {
                config_dir: Some(dir.to_path_buf()),
                ..Default::default()
            },
            &|_| None,
            dir,
            dir,
        );
        JobContext {
            client: Client::new("http://127.0.0.1:9", "anon").expect("a client"),
            control,
            gateway_id: "gateway-1".into(),
            team_id: "team-1".into(),
            device_name: "test".into(),
            outbox: Outbox::open(&dir.join("outbox")).expect("an outbox"),
            paths,
            delegated: Delegated::default(),
            shutdown: Shutdown::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_is_seen_by_every_clone() {
        let a = Shutdown::default();
        let b = a.clone();
        assert_eq!(b.reason(), None);
        let waiter = tokio::spawn(b.requested());
        a.request("Gateway shutting down (SIGTERM)");
        waiter.await.unwrap();
        assert_eq!(
            b.reason().as_deref(),
            Some("Gateway shutting down (SIGTERM)")
        );
    }
}
