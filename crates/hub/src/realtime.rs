//! Realtime: the Phoenix channel protocol of Supabase Realtime (in progress).

use crate::api::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

pub async fn websocket(_state: State) -> impl IntoResponse {
    (StatusCode::SERVICE_UNAVAILABLE, "realtime is being built")
}
