//! The hub's HTTP surface on one origin, laid out like a Supabase project:
//! `/rest/v1` (PostgREST), `/functions/v1` (edge functions), `/auth/v1`
//! (GoTrue subset) and `/realtime/v1/websocket` (Phoenix channels).

pub mod auth_routes;
pub mod functions;
pub mod rest;

use crate::auth::{AuthError, Keys, Principal};
use crate::changes::ChangeFeed;
use crate::error::ApiError;
use crate::store::SharedStore;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// Largest request body accepted (PostgREST has no limit of its own; the
/// Supabase gateway refuses large bodies too). Run events and job results
/// are far smaller.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Lifetime of a gateway access token (spec §16.1 recommends 1 h).
pub const ACCESS_TOKEN_TTL_SECS: i64 = 3600;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub keys: Keys,
    pub feed: ChangeFeed,
    pub access_token_ttl_secs: i64,
    /// Grace period for re-presenting a just-rotated refresh token.
    pub refresh_reuse_interval_secs: i64,
    /// Realtime broadcast fan-out between sockets.
    pub broadcasts: Arc<crate::realtime::broadcast::Broadcasts>,
}

impl AppState {
    pub fn new(store: SharedStore, keys: Keys, feed: ChangeFeed) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            keys,
            feed,
            broadcasts: Default::default(),
            access_token_ttl_secs: env_secs("PANORAMA_HUB_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL_SECS),
            refresh_reuse_interval_secs: env_secs(
                "PANORAMA_HUB_REFRESH_REUSE_INTERVAL",
                crate::store::REFRESH_REUSE_INTERVAL_SECS,
            ),
        })
    }
}

/// A duration in seconds from the environment (for operators and tests
/// that need short-lived tokens), or the default when unset or invalid.
fn env_secs(name: &str, default: i64) -> i64 {
    match std::env::var(name).ok().map(|v| v.trim().parse::<i64>()) {
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            tracing::warn!("{name} is not a non-negative number of seconds; using {default}");
            default
        }
        None => default,
    }
}

pub type State = axum::extract::State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rest/v1/rpc/{function}", post(rest::rpc).get(rest::rpc_get))
        .route(
            "/rest/v1/{table}",
            get(rest::select)
                .head(rest::select)
                .post(rest::insert)
                .patch(rest::update)
                .delete(rest::delete),
        )
        .route("/functions/v1/{name}", any(functions::invoke))
        .route("/auth/v1/token", post(auth_routes::token))
        .route("/auth/v1/user", get(auth_routes::user))
        .route("/realtime/v1/websocket", get(crate::realtime::websocket))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(crate::metrics::endpoint))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"message": "no such endpoint on this hub", "hint": "The hub serves /rest/v1, /functions/v1, /auth/v1 and /realtime/v1."})),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(crate::metrics::track_request))
        .with_state(state)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The request's principal, or the Supabase gateway's / PostgREST's error.
pub fn principal(
    state: &AppState,
    headers: &HeaderMap,
    query_apikey: Option<&str>,
) -> Result<Principal, Response> {
    let apikey = header(headers, "apikey").or(query_apikey);
    state
        .keys
        .resolve(apikey, bearer(headers))
        .map_err(auth_error_response)
}

pub fn auth_error_response(e: AuthError) -> Response {
    match e {
        AuthError::MissingApiKey => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."})),
        )
            .into_response(),
        AuthError::InvalidApiKey => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."})),
        )
            .into_response(),
        AuthError::Expired => ApiError::new(401, "PGRST303", "JWT expired")
            .hint("Refresh the session (POST /auth/v1/token?grant_type=refresh_token) and retry.")
            .into_response(),
        AuthError::Invalid(why) => ApiError::new(401, "PGRST301", format!("JWT could not be verified: {why}"))
            .hint("Use the access token the hub issued at pairing or refresh.")
            .into_response(),
    }
}

/// A gateway whose row was revoked or deleted gets nothing (RLS's
/// `current_gateway_is_active()`), with an error that says why.
pub async fn ensure_active(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    if let Principal::Gateway {
        gateway_id,
        team_id,
        ..
    } = p
    {
        if !state.store.gateway_active(gateway_id, team_id).await? {
            return Err(ApiError::pg(
                "42501",
                format!("gateway {gateway_id} is revoked or no longer exists"),
            )
            .hint("Pair this machine again with a new pairing code."));
        }
    }
    Ok(())
}
