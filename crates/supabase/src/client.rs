//! `Client`: configuration, shared HTTP plumbing and bearer selection.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use url::Url;

use crate::auth::AuthState;
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::postgrest::QueryBuilder;

/// Tunables. `Default` matches supabase-js timings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Value of `X-Client-Info`. Default `panorama-gateway/<crate version>; runtime=rust`.
    pub client_info: String,
    /// PostgREST schema for `Accept-Profile` / `Content-Profile`. Default `public`.
    pub schema: String,
    /// Per-request timeout (whole request). Default 30 s.
    pub request_timeout: Duration,
    /// Retries of GET requests on network errors / 503 / 520. Default 3.
    pub read_retries: u32,
    /// Base delay of those retries (`base · 2^k`, capped at 30 s). Default 1 s.
    pub read_retry_base: Duration,
    /// Refresh inline before a request when the token expires within this. Default 90 s.
    pub refresh_margin: Duration,
    /// The auto-refresh ticker refreshes when less than this remains. Default 120 s.
    pub auto_refresh_threshold: Duration,
    /// Auto-refresh tick period. Default 30 s.
    pub auto_refresh_interval: Duration,
    /// Total budget of retryable refresh attempts (backoff 200 ms · 2^n). Default 30 s.
    pub refresh_retry_budget: Duration,
    /// A failed refresh with a given refresh token is not re-attempted for this long. Default 60 s.
    pub refresh_failure_cooldown: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_info: format!(
                "panorama-gateway/{}; runtime=rust",
                env!("CARGO_PKG_VERSION")
            ),
            schema: "public".into(),
            request_timeout: Duration::from_secs(30),
            read_retries: 3,
            read_retry_base: Duration::from_secs(1),
            refresh_margin: Duration::from_secs(90),
            auto_refresh_threshold: Duration::from_secs(120),
            auto_refresh_interval: Duration::from_secs(30),
            refresh_retry_budget: Duration::from_secs(30),
            refresh_failure_cooldown: Duration::from_secs(60),
        }
    }
}

/// Supabase client. Cheap to clone (an `Arc` inside); all clones share the
/// session, the single-flight refresh and the session-change callbacks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:54321`.
    pub(crate) base: String,
    pub(crate) anon_key: String,
    pub(crate) http: reqwest::Client,
    pub(crate) opts: ClientOptions,
    pub(crate) auth: AuthState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// Which bearer a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bearer {
    /// Session access token (refreshed first if needed), else the anon key.
    Session,
    /// Always the anon key (pairing, auth endpoints).
    Anon,
}

/// A raw HTTP answer (any status).
pub(crate) struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Client {
    /// Build a client from the project URL (`http://127.0.0.1:54321`,
    /// `https://abc.supabase.co`, trailing slash optional) and the anon key.
    pub fn new(url: &str, anon_key: &str) -> Result<Client> {
        Client::with_options(url, anon_key, ClientOptions::default())
    }

    /// Like [`Client::new`] with explicit options.
    pub fn with_options(url: &str, anon_key: &str, opts: ClientOptions) -> Result<Client> {
        let parsed = Url::parse(url)
            .map_err(|e| Error::InvalidRequest(format!("invalid Supabase URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::InvalidRequest(format!(
                "Supabase URL must be http(s), got {url:?}"
            )));
        }
        if anon_key.is_empty() {
            return Err(Error::InvalidRequest("anon key is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .build()
            .map_err(|e| Error::transport("building the HTTP client", e))?;
        let base = url.trim_end_matches('/').to_string();
        Ok(Client {
            inner: Arc::new(Inner {
                base,
                anon_key: anon_key.to_string(),
                http,
                auth: AuthState::new(anon_key),
                opts,
            }),
        })
    }

    /// The base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// The anon (publishable) key.
    pub fn anon_key(&self) -> &str {
        &self.inner.anon_key
    }

    /// The options in effect.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Start a PostgREST query on `table` (`{url}/rest/v1/<table>`).
    pub fn from(&self, table: &str) -> QueryBuilder {
        QueryBuilder::new(self.clone(), table)
    }

    /// Edge Functions (`{url}/functions/v1/<name>`).
    pub fn functions(&self) -> Functions {
        Functions::new(self.clone())
    }

    pub(crate) fn endpoint(&self, path: &str) -> Result<Url> {
        Url::parse(&format!("{}{}", self.inner.base, path))
            .map_err(|e| Error::InvalidRequest(format!("bad URL for {path}: {e}")))
    }

    /// Headers common to REST and Functions (`apikey`, `X-Client-Info`).
    pub(crate) fn base_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("apikey", header_value(&self.inner.anon_key));
        h.insert("x-client-info", header_value(&self.inner.opts.client_info));
        h
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
            Bearer::Anon => (self.inner.anon_key.clone(), false),
            Bearer::Session => self.bearer_token().await?,
        };
        let retry_reads = method == Method::GET || method == Method::HEAD;
        let opts = &self.inner.opts;
        let mut attempt: u32 = 0;
        let mut auth_retried = false;
        loop {
            let mut req = self
                .inner
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
                    .refresh_if(self, |s| s.access_token == used)
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

pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(1u32 << attempt.min(16));
    d.min(Duration::from_secs(30))
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `reqwest::Error` display plus its sources (the useful part is often the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
