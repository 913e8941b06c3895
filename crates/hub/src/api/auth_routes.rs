//! `/auth/v1`: the GoTrue subset a gateway needs (supabase-wire §4):
//! refresh with rotation and reuse detection, and `GET /user`; and for
//! people (issue 13): sign-up (invite-only unless opened), the password
//! grant with failed-attempt limits, `GET`/`PUT /user`, logout, and the
//! admin user creation the operator CLI uses. Errors use the 2024-01-01
//! shape and say so in `X-Supabase-Api-Version`.

use super::{bearer, State};
use crate::auth::{gateway_app_metadata, user_app_metadata, AuthError, Principal};
use crate::people;
use crate::store::{hash_token, LogoutScope, PeopleError, UserRecord};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery};
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

type Peer = Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>;

fn query_param(raw: &Option<String>, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn check_apikey(state: &State, headers: &HeaderMap) -> Result<(), Response> {
    let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
    state
        .keys
        .resolve(apikey, None)
        .map(|_| ())
        .map_err(super::auth_error_response)
}

fn json_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(auth_error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "Could not parse request body as JSON: send one JSON object",
        )),
    }
}

fn str_arg<'a>(body: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or_default()
}

pub async fn token(
    state: State,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    peer: Peer,
    body: Bytes,
) -> Response {
    if let Err(r) = check_apikey(&state, &headers) {
        return r;
    }
    match query_param(&raw, "grant_type").as_deref() {
        Some("refresh_token") => refresh_grant(state, body).await,
        Some("password") => password_grant(state, peer, body).await,
        _ => auth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant type: this hub supports grant_type=password and grant_type=refresh_token.",
        ),
    }
}

async fn refresh_grant(state: State, body: Bytes) -> Response {
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
    let (old_hash, new_hash) = (hash_token(&refresh_token), hash_token(&new_token));
    let reuse = state.refresh_reuse_interval_secs;
    let grant = match state
        .store
        .rotate_refresh_token(&old_hash, &new_hash, reuse)
        .await
    {
        Ok(g) => g,
        // Not a gateway's token: perhaps a person's.
        Err(crate::store::RefreshError::NotFound) => {
            return match state
                .store
                .rotate_user_refresh_token(&old_hash, &new_hash, reuse)
                .await
            {
                Ok((user_id, session_id)) => match state.store.user_by_id(&user_id).await {
                    Ok(Some(user)) => session_response(&state, &user, &session_id, new_token),
                    Ok(None) => auth_error(
                        StatusCode::BAD_REQUEST,
                        "session_not_found",
                        "Invalid Refresh Token: No Valid Session Found",
                    ),
                    Err(e) => e.into_response(),
                },
                Err(e) => auth_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
            };
        }
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
        Ok(Principal::User { user_id, session_id }) => match signed_in_user(&state, &user_id, &session_id).await {
            Ok(user) => Json(person_object(&user)).into_response(),
            Err(r) => r,
        },
        Ok(_) => auth_error(StatusCode::FORBIDDEN, "user_not_found", "User from sub claim in JWT does not exist"),
        Err(AuthError::Expired) => auth_error(StatusCode::FORBIDDEN, "bad_jwt", "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired"),
        Err(e) => auth_error(StatusCode::FORBIDDEN, "bad_jwt", &format!("invalid JWT: unable to parse or verify signature, {e}")),
    }
}

/// A person as GoTrue returns one (supabase-js `User`).
fn person_object(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": u.email,
        "email_confirmed_at": u.created_at,
        "phone": "",
        "confirmed_at": u.created_at,
        "last_sign_in_at": u.last_sign_in_at,
        "app_metadata": user_app_metadata(),
        "user_metadata": u.user_metadata,
        "identities": [],
        "created_at": u.created_at,
        "updated_at": u.updated_at,
        "is_anonymous": false,
    })
}

/// A GoTrue session (supabase-js `Session`) for a person.
fn session_response(
    state: &State,
    user: &UserRecord,
    session_id: &str,
    refresh_token: String,
) -> Response {
    let now = chrono::Utc::now().timestamp();
    let ttl = state.access_token_ttl_secs;
    let access_token = state
        .keys
        .mint_user_token(&user.id, &user.email, session_id, now, ttl);
    Json(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl,
        "expires_at": now + ttl,
        "refresh_token": refresh_token,
        "user": person_object(user),
    }))
    .into_response()
}

async fn new_session(state: &State, user: &UserRecord) -> Response {
    let refresh_token = super::functions::new_refresh_token();
    match state
        .store
        .start_user_session(&user.id, &hash_token(&refresh_token))
        .await
    {
        Ok(session_id) => match state.store.user_by_id(&user.id).await {
            Ok(Some(fresh)) => session_response(state, &fresh, &session_id, refresh_token),
            Ok(None) => invalid_credentials(),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

fn invalid_credentials() -> Response {
    // The same words whether the email is unknown or the password wrong.
    auth_error(
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "Invalid login credentials",
    )
}

/// Argon2 is deliberately slow: run it off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        crate::error::ApiError::internal(format!("password hashing task failed: {e}"))
            .into_response()
    })
}

async fn password_grant(state: State, peer: Peer, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let email = people::normalize_email(str_arg(&body, "email")).unwrap_or_default();
    let password = str_arg(&body, "password").to_string();
    if email.is_empty() || password.is_empty() {
        return invalid_credentials();
    }
    let account_key = format!("email:{email}");
    let addr_key = match &peer {
        Some(axum::Extension(ConnectInfo(addr))) => format!("addr:{}", addr.ip()),
        None => "addr:unknown".to_string(),
    };
    let keys = [account_key.as_str(), addr_key.as_str()];
    let now = std::time::Instant::now();
    if state
        .signin_failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .blocked(&keys, now)
    {
        return auth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "over_request_rate_limit",
            "Request rate limit reached: too many failed sign-in attempts. Wait a few minutes and try again.",
        );
    }
    let user = match state.store.user_by_email(&email).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let stored = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| people::decoy_hash().to_string());
    let ok = match blocking(move || people::verify_password(&password, &stored)).await {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    match user {
        Some(user) if ok => new_session(&state, &user).await,
        _ => {
            state
                .signin_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_failure(&keys, std::time::Instant::now());
            invalid_credentials()
        }
    }
}

/// The person a bearer token stands for, with a live session.
async fn signed_in_user(
    state: &State,
    user_id: &str,
    session_id: &str,
) -> Result<UserRecord, Response> {
    match state.store.user_session_active(session_id).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(auth_error(
                StatusCode::FORBIDDEN,
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            ))
        }
        Err(e) => return Err(e.into_response()),
    }
    match state.store.user_by_id(user_id).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(auth_error(
            StatusCode::FORBIDDEN,
            "user_not_found",
            "User from sub claim in JWT does not exist",
        )),
        Err(e) => Err(e.into_response()),
    }
}

/// The signed-in person of a request, or GoTrue's error.
async fn require_user(
    state: &State,
    headers: &HeaderMap,
) -> Result<(UserRecord, String), Response> {
    let Some(token) = bearer(headers) else {
        return Err(auth_error(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        ));
    };
    match state.keys.principal_of_token(token) {
        Ok(Principal::User { user_id, session_id }) => {
            let user = signed_in_user(state, &user_id, &session_id).await?;
            Ok((user, session_id))
        }
        Ok(_) => Err(auth_error(
            StatusCode::FORBIDDEN,
            "user_not_found",
            "This endpoint needs a signed-in user's access token",
        )),
        Err(AuthError::Expired) => Err(auth_error(
            StatusCode::FORBIDDEN,
            "bad_jwt",
            "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired",
        )),
        Err(e) => Err(auth_error(
            StatusCode::FORBIDDEN,
            "bad_jwt",
            &format!("invalid JWT: unable to parse or verify signature, {e}"),
        )),
    }
}

fn people_error(e: PeopleError) -> Response {
    match e {
        PeopleError::EmailTaken => auth_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_already_exists",
            "User already registered",
        ),
        PeopleError::InvalidInvitation => auth_error(
            StatusCode::FORBIDDEN,
            "invite_not_found",
            "Invitation code is invalid, expired, already used, or for another email. Ask a team owner or admin for a new one.",
        ),
        PeopleError::UserNotFound => auth_error(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "User not found",
        ),
        PeopleError::Storage(e) => e.into_response(),
    }
}

/// Email and password checked, password hashed, or GoTrue's error.
async fn new_credentials(email: &str, password: &str) -> Result<(String, String), Response> {
    let email = people::normalize_email(email)
        .map_err(|m| auth_error(StatusCode::BAD_REQUEST, "validation_failed", m))?;
    people::check_password(password)
        .map_err(|m| auth_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", &m))?;
    let password = password.to_string();
    let hash = blocking(move || people::hash_password(&password))
        .await?
        .map_err(|e| crate::error::ApiError::internal(e.to_string()).into_response())?;
    Ok((email, hash))
}

/// `POST /auth/v1/signup`: open to anyone only when the hub allows it;
/// otherwise the sign-up must carry an invitation code for this email in
/// `data.invitation_code` (supabase-js `options.data`), which it redeems.
pub async fn signup(state: State, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_apikey(&state, &headers) {
        return r;
    }
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut metadata = match body.get("data") {
        Some(Value::Object(o)) => o.clone(),
        _ => serde_json::Map::new(),
    };
    let invitation = metadata
        .remove("invitation_code")
        .and_then(|v| v.as_str().map(str::to_string));
    if invitation.is_none() && !state.open_signup {
        return auth_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "signup_disabled",
            "Signups not allowed for this instance: ask a team owner or admin for an invitation code and pass it as data.invitation_code",
        );
    }
    let (email, hash) =
        match new_credentials(str_arg(&body, "email"), str_arg(&body, "password")).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let code_hash = invitation.as_deref().map(hash_token);
    match state
        .store
        .create_user(
            &email,
            &hash,
            &Value::Object(metadata),
            code_hash.as_deref(),
        )
        .await
    {
        Ok(user) => new_session(&state, &user).await,
        Err(e) => people_error(e),
    }
}

/// `PUT /auth/v1/user`: change email, password or `data` (user metadata).
pub async fn update_user(state: State, headers: HeaderMap, body: Bytes) -> Response {
    let (user, _) = match require_user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let email = match body.get("email").and_then(Value::as_str) {
        Some(e) => match people::normalize_email(e) {
            Ok(e) => Some(e),
            Err(m) => return auth_error(StatusCode::BAD_REQUEST, "validation_failed", m),
        },
        None => None,
    };
    let hash = match body.get("password").and_then(Value::as_str) {
        Some(p) => {
            if let Err(m) = people::check_password(p) {
                return auth_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", &m);
            }
            let p = p.to_string();
            match blocking(move || people::hash_password(&p)).await {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => {
                    return crate::error::ApiError::internal(e.to_string()).into_response()
                }
                Err(r) => return r,
            }
        }
        None => None,
    };
    // GoTrue merges `data` into the existing user metadata.
    let metadata = match body.get("data") {
        Some(Value::Object(patch)) => {
            let mut m = user.user_metadata.as_object().cloned().unwrap_or_default();
            m.extend(patch.clone());
            Some(Value::Object(m))
        }
        _ => None,
    };
    match state
        .store
        .update_user(
            &user.id,
            email.as_deref(),
            hash.as_deref(),
            metadata.as_ref(),
        )
        .await
    {
        Ok(u) => Json(person_object(&u)).into_response(),
        Err(e) => people_error(e),
    }
}

/// `POST /auth/v1/logout?scope=global|local|others` (GoTrue's default is
/// global): ends sessions; their refresh tokens and access tokens stop
/// working at once.
pub async fn logout(state: State, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let (user, session_id) = match require_user(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let scope = match query_param(&raw, "scope").as_deref() {
        None | Some("global") => LogoutScope::Global,
        Some("local") => LogoutScope::Local,
        Some("others") => LogoutScope::Others,
        Some(other) => {
            return auth_error(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                &format!("Unsupported logout scope {other:?}: use global, local or others"),
            )
        }
    };
    match state
        .store
        .end_user_sessions(&user.id, &session_id, scope)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /auth/v1/admin/users` (service key only): creates a confirmed
/// user, as GoTrue's admin API does. `panorama-hub user create` uses it.
pub async fn admin_create_user(state: State, headers: HeaderMap, body: Bytes) -> Response {
    let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
    match state.keys.resolve(apikey, bearer(&headers)) {
        Ok(Principal::Service) => {}
        Ok(_) => {
            return auth_error(
                StatusCode::FORBIDDEN,
                "not_admin",
                "User not allowed: the admin API needs the service key",
            )
        }
        Err(e) => return super::auth_error_response(e),
    }
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (email, hash) =
        match new_credentials(str_arg(&body, "email"), str_arg(&body, "password")).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let metadata = match body.get("user_metadata") {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => json!({}),
    };
    match state
        .store
        .create_user(&email, &hash, &metadata, None)
        .await
    {
        Ok(u) => Json(person_object(&u)).into_response(),
        Err(PeopleError::EmailTaken) => auth_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email_exists",
            "A user with this email address has already been registered",
        ),
        Err(e) => people_error(e),
    }
}
