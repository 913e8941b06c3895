//! `/functions/v1/<name>`: the edge functions the gateway calls (spec §5,
//! §16.9). Failures answer `{success: false, error}` with a status that
//! says whose fault it was.

use super::{ensure_active, principal, State};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::schema;
use crate::store::hash_token;
use crate::values::now_timestamp;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

fn failure(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"success": false, "error": error.into()})),
    )
        .into_response()
}

fn failure_of(e: impl Into<ApiError>) -> Response {
    let e = e.into();
    failure(e.status_code(), e.message)
}

/// A new opaque refresh token.
pub fn new_refresh_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub async fn invoke(
    state: State,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return failure(StatusCode::METHOD_NOT_ALLOWED, format!("{name} takes POST"));
    }
    let p = match principal(&state, &headers, None) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body: Map<String, Value> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o,
        _ => {
            return failure(
                StatusCode::BAD_REQUEST,
                "The request body must be a JSON object.",
            )
        }
    };
    match name.as_str() {
        "exchange-gateway-pairing-code" => exchange_pairing_code(&state, body).await,
        "gateway-heartbeat" => heartbeat(&state, &p, body).await,
        "finalize-gateway-subagent-run" => finalize_run(&state, &p, body).await,
        _ => failure(StatusCode::NOT_FOUND, format!("Function not found: {name}. The hub provides exchange-gateway-pairing-code, gateway-heartbeat and finalize-gateway-subagent-run.")),
    }
}

async fn exchange_pairing_code(state: &State, body: Map<String, Value>) -> Response {
    let code = body
        .get("code")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    if code.is_empty() {
        return failure(
            StatusCode::BAD_REQUEST,
            "A pairing code is required: send {\"code\": \"...\", \"device_name\": \"...\"}.",
        );
    }
    let device_name = body.get("device_name").and_then(Value::as_str);
    let refresh_token = new_refresh_token();
    let grant = match state
        .store
        .pair_gateway(code, device_name, &hash_token(&refresh_token))
        .await
        .map_err(ApiError::from)
    {
        Ok(g) => g,
        Err(e) if e.code == "P0001" => {
            return failure(StatusCode::NOT_FOUND, "Invalid or expired pairing code")
        }
        Err(e) => return failure_of(e),
    };
    let now = chrono::Utc::now().timestamp();
    let access_token = state.keys.mint_gateway_token(
        &grant.user_id,
        &grant.session_id,
        &grant.gateway_id,
        &grant.team_id,
        now,
        state.access_token_ttl_secs,
    );
    let expires_at = chrono::DateTime::from_timestamp(now + state.access_token_ttl_secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    tracing::info!(gateway_id = %grant.gateway_id, team_id = %grant.team_id, "gateway paired");
    Json(json!({
        "success": true,
        "gateway_id": grant.gateway_id,
        "team_id": grant.team_id,
        "access_token": access_token,
        "refresh_token": refresh_token,
        "expires_at": expires_at,
        "token_type": "bearer",
    }))
    .into_response()
}

fn gateway_of(p: &Principal) -> Result<(&str, &str), Response> {
    p.gateway_ids().ok_or_else(|| {
        failure(StatusCode::UNAUTHORIZED, "This function needs a gateway access token (Authorization: Bearer <token from pairing>).")
    })
}

async fn heartbeat(state: &State, p: &Principal, body: Map<String, Value>) -> Response {
    let (gateway_id, team_id) = match gateway_of(p) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !schema::GATEWAY_STATUSES.contains(&status) {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("Invalid status {status:?}: expected one of pending, ready, offline, error."),
        );
    }
    let capabilities = body.get("capabilities").cloned().unwrap_or(Value::Null);
    if !capabilities.is_object() {
        return failure(
            StatusCode::BAD_REQUEST,
            "capabilities must be a JSON object.",
        );
    }
    let device_name = body.get("device_name").and_then(Value::as_str);
    match state
        .store
        .record_heartbeat(gateway_id, team_id, status, &capabilities, device_name)
        .await
        .map_err(ApiError::from)
    {
        Ok(()) => Json(json!({"success": true, "egress_credential_renewal": null})).into_response(),
        Err(e) if e.code == "42501" => failure(
            StatusCode::FORBIDDEN,
            "This gateway is revoked or no longer exists; pair it again.",
        ),
        Err(e) => failure_of(e),
    }
}

/// The later gateway's terminal write (§5.3): a strict request, both rows
/// in their final state in one transaction (see [`crate::runs::finalize`]).
async fn finalize_run(state: &State, p: &Principal, body: Map<String, Value>) -> Response {
    let (gateway_id, team_id) = match gateway_of(p) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    if let Err(e) = ensure_active(state, p).await {
        return failure_of(e);
    }
    let req = match crate::runs::FinalizeRequest::parse(&Value::Object(body)) {
        Ok(req) => req,
        Err(message) => return failure(StatusCode::BAD_REQUEST, message),
    };
    let (gateway_id, team_id) = (gateway_id.to_string(), team_id.to_string());
    let now = now_timestamp();
    let finalized = state
        .store
        .atomic(Box::new(move |tx| {
            Ok(
                crate::runs::finalize(tx, &req, &gateway_id, &team_id, &now)?
                    .unwrap_or(Value::Null),
            )
        }))
        .await;
    match finalized {
        Ok(Value::Null) => {
            Json(json!({"success": false, "error": "Subagent run not found for this gateway"}))
                .into_response()
        }
        Ok(answer) => Json(answer).into_response(),
        Err(e) => failure_of(e),
    }
}
