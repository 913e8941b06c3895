//! `/auth/v1`: the GoTrue subset a gateway needs (supabase-wire §4):
//! refresh with rotation and reuse detection, and `GET /user`. Errors use
//! the 2024-01-01 shape and say so in `X-Supabase-Api-Version`.

use super::{bearer, State};
use crate::auth::{gateway_app_metadata, AuthError, Principal};
use crate::store::hash_token;
use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

fn auth_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut res = (status, Json(json!({"code": code, "message": message}))).into_response();
    res.headers_mut().insert(
        "x-supabase-api-version",
        HeaderValue::from_static("2024-01-01"),
    );
    res
}

fn user_object(user_id: &str, gateway_id: &str, team_id: &str) -> Value {
    json!({
        "id": user_id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": "",
        "phone": "",
        "app_metadata": gateway_app_metadata(gateway_id, team_id),
        "user_metadata": {},
        "identities": [],
        "is_anonymous": false,
    })
}

pub async fn token(
    state: State,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
    if let Err(e) = state.keys.resolve(apikey, None) {
        return super::auth_error_response(e);
    }
    let grant_type = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    if grant_type.as_deref() != Some("refresh_token") {
        return auth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=refresh_token is supported by this hub.",
        );
    }
    let refresh_token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    if refresh_token.is_empty() {
        return auth_error(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "Refresh token is not valid",
        );
    }
    let new_token = super::functions::new_refresh_token();
    let grant = match state
        .store
        .rotate_refresh_token(
            &hash_token(&refresh_token),
            &hash_token(&new_token),
            state.refresh_reuse_interval_secs,
        )
        .await
    {
        Ok(g) => g,
        Err(e) => return auth_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let now = chrono::Utc::now().timestamp();
    let ttl = state.access_token_ttl_secs;
    let access_token = state.keys.mint_gateway_token(
        &grant.user_id,
        &grant.session_id,
        &grant.gateway_id,
        &grant.team_id,
        now,
        ttl,
    );
    Json(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl,
        "expires_at": now + ttl,
        "refresh_token": new_token,
        "user": user_object(&grant.user_id, &grant.gateway_id, &grant.team_id),
    }))
    .into_response()
}

pub async fn user(state: State, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        return auth_error(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        );
    };
    match state.keys.principal_of_token(token) {
        Ok(Principal::Gateway { gateway_id, team_id, user_id, session_id }) => {
            match state.store.session_active(&session_id).await {
                Ok(true) => Json(user_object(&user_id, &gateway_id, &team_id)).into_response(),
                Ok(false) => auth_error(StatusCode::FORBIDDEN, "session_not_found", "Session from session_id claim in JWT does not exist"),
                Err(e) => e.into_response(),
            }
        }
        Ok(_) => auth_error(StatusCode::FORBIDDEN, "user_not_found", "User from sub claim in JWT does not exist"),
        Err(AuthError::Expired) => auth_error(StatusCode::FORBIDDEN, "bad_jwt", "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired"),
        Err(e) => auth_error(StatusCode::FORBIDDEN, "bad_jwt", &format!("invalid JWT: unable to parse or verify signature, {e}")),
    }
}
