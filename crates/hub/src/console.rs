//! The web console: `GET /` and `/console/*` serve the single-page app that
//! `build.rs` bundled from `console/` (supabase-js, xterm.js and marked
//! from the npm registry, pinned by `console/package-lock.json`), embedded
//! in the binary. The page talks to this same origin only (its
//! Content-Security-Policy says so to the browser), through supabase-js,
//! like any other Supabase client.

use crate::api::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const INDEX_HTML: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/index.html"));
const APP_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/app.js"));
const APP_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/app.css"));

/// No request may leave the hub's origin: scripts, styles, fonts, images
/// and connections (REST, auth, the realtime WebSocket) are all `'self'`.
/// xterm.js sets inline styles on its elements, hence `'unsafe-inline'`
/// for styles only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The console's routes, merged into the API router.
pub fn routes() -> Router<Arc<crate::api::AppState>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/console/config.json", get(config))
}

async fn index() -> Response {
    let mut res = asset(INDEX_HTML, "text/html; charset=utf-8");
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

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Small and embedded: revalidating is cheap, and a new binary
            // must never be shadowed by an old cached bundle.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
