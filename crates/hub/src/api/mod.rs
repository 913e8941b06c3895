//! The hub's HTTP surface on one origin, laid out like a Supabase project:
//! `/rest/v1` (PostgREST), `/functions/v1` (edge functions), `/auth/v1`
//! (GoTrue subset) and `/realtime/v1/websocket` (Phoenix channels).

pub mod auth_routes;
pub mod functions;
pub mod rest;

pub use crate::app::{
    auth_error_response, bearer, ensure_active, principal, AppState, State, ACCESS_TOKEN_TTL_SECS,
    MAX_BODY_BYTES, SIGNIN_FAILURE_LIMIT, SIGNIN_FAILURE_WINDOW_SECS,
};
use crate::realtime::RealtimeOptions;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// Every route of the hub on one origin.
pub fn router(state: Arc<AppState>) -> Router {
    router_with_realtime(state, RealtimeOptions::default())
}

/// [`router`] with explicit realtime options (tests that tune timeouts).
pub fn router_with_realtime(state: Arc<AppState>, realtime: RealtimeOptions) -> Router {
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
        .route("/auth/v1/user", get(auth_routes::user).put(auth_routes::update_user))
        .route("/auth/v1/signup", post(auth_routes::signup))
        .route("/auth/v1/logout", post(auth_routes::logout))
        .route("/auth/v1/admin/users", post(auth_routes::admin_create_user))
        .route(
            "/realtime/v1/websocket",
            crate::realtime::websocket_route(state.clone(), realtime),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(crate::metrics::endpoint))
        .merge(crate::console::routes())
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
