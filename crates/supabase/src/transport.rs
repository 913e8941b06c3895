//! The HTTP plumbing every part of the client shares: the options, the
//! project's base URL and anon key, one `reqwest::Client`, header helpers.
//! A leaf: it knows nothing of sessions, PostgREST or functions, so those
//! modules and the `Client` facade all build on it without importing each
//! other back.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use crate::error::{Error, Result};

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

/// The project's endpoint and credentials plus the shared HTTP client.
pub(crate) struct Transport {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:54321`.
    pub(crate) base: String,
    pub(crate) anon_key: String,
    pub(crate) http: reqwest::Client,
    pub(crate) opts: ClientOptions,
}

impl Transport {
    /// Validate the project URL and key and build the HTTP client.
    pub(crate) fn new(url: &str, anon_key: &str, opts: ClientOptions) -> Result<Transport> {
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
        Ok(Transport {
            base: url.trim_end_matches('/').to_string(),
            anon_key: anon_key.to_string(),
            http,
            opts,
        })
    }

    pub(crate) fn endpoint(&self, path: &str) -> Result<Url> {
        Url::parse(&format!("{}{}", self.base, path))
            .map_err(|e| Error::InvalidRequest(format!("bad URL for {path}: {e}")))
    }

    /// Headers common to REST and Functions (`apikey`, `X-Client-Info`).
    pub(crate) fn base_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("apikey", header_value(&self.anon_key));
        h.insert("x-client-info", header_value(&self.opts.client_info));
        h
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
