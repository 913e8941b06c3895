//! Starting the hub: open the store, load the keys, serve HTTP and
//! WebSocket on one listener until asked to stop.

use crate::api::{self, AppState};
use crate::changes::ChangeFeed;
use crate::config::{self, KeyFile};
use crate::store::sqlite::SqliteStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ServeOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    pub db: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Open(#[from] crate::store::sqlite::OpenError),
    #[error("cannot listen on {addr}: {source}. Is another hub already running there? Pick another address with --listen")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the server stopped with an error: {0}")]
    Serve(std::io::Error),
}

/// A bound, ready-to-run hub.
pub struct Hub {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub url: String,
    pub keys: KeyFile,
    pub state: Arc<AppState>,
}

pub async fn bind(opts: ServeOptions) -> Result<Hub, ServeError> {
    let mut keys = config::load_or_create_keys(&opts.data_dir)?;
    let db = opts.db.unwrap_or_else(|| opts.data_dir.join("hub.db"));
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        config::prepare_dir(parent)?;
    }
    let feed = ChangeFeed::default();
    let store = SqliteStore::open(&db, feed.clone())?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let url = format!("http://{addr}");
    keys.url = Some(url.clone());
    config::write_key_file(&opts.data_dir, &keys)?;
    crate::metrics::set_db_path(db.clone());
    let state = AppState::new(
        crate::metrics::TimedStore::wrap(Arc::new(store)),
        keys.keys(),
        feed,
    );
    Ok(Hub {
        listener,
        addr,
        url,
        keys,
        state,
    })
}

impl Hub {
    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        use axum::serve::ListenerExt;
        // Nagle off: realtime frames (terminal keystrokes and echoes above
        // all) are small and must not wait ~40 ms for the previous one's
        // acknowledgement.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        // Peer addresses feed the per-address sign-in limiter.
        axum::serve(
            listener,
            api::router(self.state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
