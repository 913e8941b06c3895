//! `Client`: the facade — a [`Transport`] plus the session ([`AuthState`]);
//! picks each request's bearer and refreshes on a 401. PostgREST
//! (`postgrest.rs`) and Functions (`functions.rs`) add their own `impl Client`
//! blocks on top, so this file imports neither.

use std::sync::{Arc, Weak};
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::watch;
use url::Url;

use crate::auth::{self, AuthState, Session, SessionCallback};
use crate::error::{Error, Result};
use crate::transport::{
    backoff, error_chain, header_value, Bearer, ClientOptions, RawResponse, Transport,
};

/// Supabase client. Cheap to clone (an `Arc` inside); all clones share the
/// session, the single-flight refresh and the session-change callbacks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    pub(crate) auth: AuthState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.transport.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Build a client from the project URL (`http://127.0.0.1:54321`,
    /// `https://abc.supabase.co`, trailing slash optional) and the anon key.
    pub fn new(url: &str, anon_key: &str) -> Result<Client> {
        Client::with_options(url, anon_key, ClientOptions::default())
    }

    /// Like [`Client::new`] with explicit options.
    pub fn with_options(url: &str, anon_key: &str, opts: ClientOptions) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                transport: Transport::new(url, anon_key, opts)?,
                auth: AuthState::new(anon_key),
            }),
        })
    }

    /// The base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.inner.transport.base
    }

    /// The anon (publishable) key.
    pub fn anon_key(&self) -> &str {
        &self.inner.transport.anon_key
    }

    /// The options in effect.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.transport.opts
    }

    /// Register a callback that receives every new session (each rotation by
    /// a refresh, and `set_session`). It runs synchronously *before* the
    /// refreshed token is handed to anyone, so it can persist the new
    /// refresh token to disk first. Keep it short and non-blocking-ish.
    pub fn on_session_change(&self, cb: SessionCallback) {
        self.inner.auth.add_listener(cb);
    }

    /// The current session, if any (no network).
    pub fn session(&self) -> Option<Session> {
        self.inner.auth.snapshot()
    }

    /// Install a session without any network call and without invoking the
    /// callbacks (e.g. tokens loaded from disk whose expiry is known).
    pub fn restore_session(&self, session: Session) {
        self.inner.auth.store(Some(session));
    }

    /// Forget the session locally (requests then use the anon key).
    pub fn clear_session(&self) {
        self.inner.auth.store(None);
    }

    /// supabase-js `auth.setSession({access_token, refresh_token})`:
    /// decodes `exp` (unverified); if expired, refreshes with
    /// `refresh_token`; otherwise validates with `GET /auth/v1/user`.
    /// Stores the session and invokes the session callbacks.
    pub async fn set_session(&self, access_token: &str, refresh_token: &str) -> Result<Session> {
        self.inner
            .auth
            .set_session(&self.inner.transport, access_token, refresh_token)
            .await
    }

    /// Refresh now (`POST /auth/v1/token?grant_type=refresh_token`).
    /// Concurrent callers share one refresh: whoever waits behind an
    /// in-flight refresh gets its result instead of refreshing again.
    pub async fn refresh(&self) -> Result<Session> {
        self.inner.auth.refresh(&self.inner.transport).await
    }

    /// `GET /auth/v1/user` with the (possibly refreshed) session token.
    pub async fn get_user(&self) -> Result<Value> {
        let (token, from_session) = self.inner.auth.bearer_token(&self.inner.transport).await?;
        if !from_session {
            return Err(Error::session_missing());
        }
        auth::fetch_user(&self.inner.transport, &token).await
    }

    /// The current access token (refreshing first if needed), or the anon
    /// key when there is no session.
    pub async fn access_token(&self) -> Result<String> {
        Ok(self.inner.auth.bearer_token(&self.inner.transport).await?.0)
    }

    /// A watch of the bearer realtime should use (access token, or the anon
    /// key without a session). Changes on every refresh / session change.
    pub fn token_watch(&self) -> watch::Receiver<String> {
        self.inner.auth.token_watch()
    }

    /// Start the auth-js style auto-refresh ticker: every
    /// `auto_refresh_interval` (first tick immediately) refresh when less
    /// than `auto_refresh_threshold` remains. The task holds only a weak
    /// reference and ends when every `Client` clone is dropped; abort the
    /// handle to stop it earlier.
    pub fn start_auto_refresh(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = self.inner.transport.opts.auto_refresh_interval;
        let threshold = self.inner.transport.opts.auto_refresh_threshold.as_secs() as i64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let Some(s) = inner.auth.snapshot() else {
                    continue;
                };
                if s.expires_in() < threshold {
                    if let Err(e) = inner
                        .auth
                        .refresh_if(&inner.transport, |s| s.expires_in() < threshold)
                        .await
                    {
                        tracing::warn!(error = %e, "auto-refresh failed");
                    }
                }
            }
        })
    }

    pub(crate) fn endpoint(&self, path: &str) -> Result<Url> {
        self.inner.transport.endpoint(path)
    }

    /// Headers common to REST and Functions (`apikey`, `X-Client-Info`).
    pub(crate) fn base_headers(&self) -> HeaderMap {
        self.inner.transport.base_headers()
    }

    /// Send a REST/Functions request: picks the bearer (refreshing first if
    /// the session expires within the margin), retries GETs like
    /// postgrest-js, and on a 401 refreshes once and retries.
    pub(crate) async fn send(
        &self,
        context: &str,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        bearer: Bearer,
    ) -> Result<RawResponse> {
        let (mut token, mut from_session) = match bearer {
            Bearer::Anon => (self.inner.transport.anon_key.clone(), false),
            Bearer::Session => self.inner.auth.bearer_token(&self.inner.transport).await?,
        };
        let retry_reads = method == Method::GET || method == Method::HEAD;
        let opts = &self.inner.transport.opts;
        let mut attempt: u32 = 0;
        let mut auth_retried = false;
        loop {
            let mut req = self
                .inner
                .transport
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .header(AUTHORIZATION, header_value(&format!("Bearer {token}")));
            if attempt > 0 {
                req = req.header("x-retry-count", attempt.to_string());
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let result = req.send().await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if retry_reads && attempt < opts.read_retries {
                        let delay = backoff(opts.read_retry_base, attempt);
                        tracing::debug!(%context, error = %e, ?delay, "retrying read after network error");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::transport(context, error_chain(&e)));
                }
            };
            let status = resp.status().as_u16();
            if retry_reads && (status == 503 || status == 520) && attempt < opts.read_retries {
                let delay = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| backoff(opts.read_retry_base, attempt));
                tracing::debug!(%context, status, ?delay, "retrying read");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            if status == 401 && from_session && !auth_retried {
                auth_retried = true;
                let used = token.clone();
                tracing::debug!(%context, "got 401 with the session token; refreshing once");
                match self
                    .inner
                    .auth
                    .refresh_if(&self.inner.transport, |s| s.access_token == used)
                    .await
                {
                    Ok(s) if s.access_token != used => {
                        token = s.access_token;
                        from_session = true;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%context, error = %e, "refresh after 401 failed");
                    }
                }
            }
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map_err(|e| Error::transport(context, error_chain(&e)))?
                .to_vec();
            return Ok(RawResponse {
                status,
                headers,
                body,
            });
        }
    }
}
