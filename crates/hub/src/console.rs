//! The web console: `GET /` and `/console/*` serve the single-page app that
//! `build.rs` bundled from `console/` (supabase-js, xterm.js and marked
//! from the npm registry, pinned by `console/package-lock.json`), embedded
//! in the binary. The page talks to this same origin only (its
//! Content-Security-Policy says so to the browser), through supabase-js,
//! like any other Supabase client.

use crate::app::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::{Arc, LazyLock};

const INDEX_HTML: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/index.html"));
const APP_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/app.js"));
const APP_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/app.css"));

/// Each asset's ETag, hashed once.
static INDEX_TAG: LazyLock<String> = LazyLock::new(|| etag(INDEX_HTML));
static APP_JS_TAG: LazyLock<String> = LazyLock::new(|| etag(APP_JS));
static APP_CSS_TAG: LazyLock<String> = LazyLock::new(|| etag(APP_CSS));

/// No request may leave the hub's origin: scripts, styles, fonts, images
/// and connections (REST, auth, the realtime WebSocket) are all `'self'`.
/// xterm.js sets inline styles on its elements, hence `'unsafe-inline'`
/// for styles only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The console's routes, merged into the API router.
pub fn routes() -> Router<Arc<crate::app::AppState>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/console/app.js",
            get(|headers: HeaderMap| async move {
                asset(
                    &headers,
                    APP_JS,
                    &APP_JS_TAG,
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/console/app.css",
            get(|headers: HeaderMap| async move {
                asset(&headers, APP_CSS, &APP_CSS_TAG, "text/css; charset=utf-8")
            }),
        )
        .route("/console/config.json", get(config))
}

async fn index(headers: HeaderMap) -> Response {
    let mut res = asset(&headers, INDEX_HTML, &INDEX_TAG, "text/html; charset=utf-8");
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

/// What the page needs to create its supabase-js client: the anon key
/// (public by design: it only lets a client sign in and pair). The URL is
/// the page's own origin.
async fn config(state: State) -> Response {
    axum::Json(serde_json::json!({"anon_key": state.keys.anon_key})).into_response()
}

/// A strong validator for an embedded asset: its SHA-256, quoted.
pub fn etag(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32])
}

/// Whether an `If-None-Match` header value names `etag` (a list, or `*`).
pub fn not_modified(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    })
}

/// An embedded asset, revalidated on every load (`no-cache` + ETag): a new
/// binary is never shadowed by an old cached bundle, and an unchanged one
/// costs a 304, not the 650 KB again.
fn asset(
    headers: &HeaderMap,
    body: &'static [u8],
    tag: &str,
    content_type: &'static str,
) -> Response {
    let common = [
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, tag.to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if not_modified(inm, tag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_quoted_and_content_addressed() {
        let a = etag(b"one");
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 34,
            "{a}"
        );
        assert_eq!(a, etag(b"one"));
        assert_ne!(a, etag(b"two"));
    }

    #[test]
    fn if_none_match_matches_lists_weak_tags_and_star() {
        let tag = etag(b"x");
        assert!(not_modified(Some(&tag), &tag));
        assert!(not_modified(Some(&format!("\"other\", W/{tag}")), &tag));
        assert!(not_modified(Some("*"), &tag));
        assert!(!not_modified(Some("\"other\""), &tag));
        assert!(!not_modified(None, &tag));
    }
}
