//! What every request handler shares, whichever surface it serves (REST,
//! functions, auth, realtime, metrics, the console): the hub's state, the
//! request's principal and the revocation check. A leaf below `api/`,
//! `realtime` and `metrics`, so none of them imports the router that
//! composes them.

use crate::active_cache::{Lookup, Subject};
use crate::auth::{AuthError, Keys, Principal};
use crate::changes::ChangeFeed;
use crate::error::ApiError;
use crate::realtime::dispatch::Dispatcher;
use crate::store::{SharedStore, StoreError};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body accepted (PostgREST has no limit of its own; the
/// Supabase gateway refuses large bodies too). Run events and job results
/// are far smaller.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Lifetime of a cached "this principal is active" answer
/// (`PANORAMA_HUB_ACTIVE_CACHE_TTL`, seconds; 0 turns the cache off). The
/// change feed ends answers early; this only bounds a missed invalidation.
pub const ACTIVE_CACHE_TTL_SECS: i64 = 5;

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
    /// Whether anyone may sign up (`PANORAMA_HUB_OPEN_SIGNUP`); otherwise
    /// only with an invitation code.
    pub open_signup: bool,
    /// Failed password sign-ins, per account and per client address.
    pub signin_failures: Arc<std::sync::Mutex<crate::people::FailureLimiter>>,
    /// Realtime broadcast fan-out between sockets.
    pub broadcasts: Arc<crate::realtime::broadcast::Broadcasts>,
    /// The feed's one realtime dispatcher, started on first use from inside
    /// the runtime that serves sockets (the state may be built before
    /// there is one).
    dispatcher: Arc<std::sync::OnceLock<Dispatcher>>,
}

/// Failed sign-ins allowed per account and per address in the window.
pub const SIGNIN_FAILURE_LIMIT: usize = 5;
pub const SIGNIN_FAILURE_WINDOW_SECS: i64 = 300;

impl AppState {
    pub fn new(store: SharedStore, keys: Keys, feed: ChangeFeed) -> Arc<AppState> {
        feed.active_cache()
            .set_ttl(std::time::Duration::from_secs(env_secs(
                "PANORAMA_HUB_ACTIVE_CACHE_TTL",
                ACTIVE_CACHE_TTL_SECS,
            ) as u64));
        Arc::new(AppState {
            store,
            keys,
            feed,
            broadcasts: Default::default(),
            dispatcher: Default::default(),
            access_token_ttl_secs: env_secs("PANORAMA_HUB_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL_SECS),
            refresh_reuse_interval_secs: env_secs(
                "PANORAMA_HUB_REFRESH_REUSE_INTERVAL",
                crate::store::REFRESH_REUSE_INTERVAL_SECS,
            ),
            open_signup: env_flag("PANORAMA_HUB_OPEN_SIGNUP"),
            signin_failures: Arc::new(std::sync::Mutex::new(crate::people::FailureLimiter::new(
                SIGNIN_FAILURE_LIMIT,
                std::time::Duration::from_secs(env_secs(
                    "PANORAMA_HUB_SIGNIN_FAILURE_WINDOW",
                    SIGNIN_FAILURE_WINDOW_SECS,
                ) as u64),
            ))),
        })
    }

    /// The realtime dispatcher reading this hub's change feed, started (on
    /// the current Tokio runtime) the first time it is asked for.
    pub fn dispatcher(&self) -> &Dispatcher {
        self.dispatcher
            .get_or_init(|| Dispatcher::start(self.feed.subscribe()))
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

/// A boolean setting from the environment: 1/true/yes/on.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

pub type State = axum::extract::State<Arc<AppState>>;

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
/// `current_gateway_is_active()`), with an error that says why; so does a
/// gateway whose session reuse detection revoked, and a person whose
/// session was signed out.
pub async fn ensure_active(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    let Some(subject) = subject_of(p) else {
        return Ok(());
    };
    if is_active(state, subject).await? {
        return Ok(());
    }
    Err(match p {
        Principal::Gateway { gateway_id, .. } => ApiError::pg(
            "42501",
            format!(
                "gateway {gateway_id} is revoked or no longer exists, or its session was revoked"
            ),
        )
        .hint("Pair this machine again with a new pairing code."),
        _ => ApiError::new(
            401,
            "PGRST301",
            "the session of this access token has ended",
        )
        .hint("Sign in again (POST /auth/v1/token?grant_type=password)."),
    })
}

/// Whose activity a principal's requests depend on (`None`: the anon and
/// service keys, which are never revoked this way).
pub fn subject_of(p: &Principal) -> Option<Subject> {
    match p {
        Principal::Gateway {
            gateway_id,
            team_id,
            session_id,
            ..
        } => Some(Subject::Gateway {
            gateway_id: gateway_id.clone(),
            team_id: team_id.clone(),
            session_id: session_id.clone(),
        }),
        Principal::User {
            user_id,
            session_id,
        } => Some(Subject::UserSession {
            user_id: user_id.clone(),
            session_id: session_id.clone(),
        }),
        Principal::Anon | Principal::Service => None,
    }
}

/// Whether `subject` is active: from the active cache (`active_cache.rs`,
/// kept current by the change feed), else from the store, remembering a
/// positive answer.
pub async fn is_active(state: &AppState, subject: Subject) -> Result<bool, StoreError> {
    let cache = state.feed.active_cache();
    let ticket = match cache.lookup(&subject, Instant::now()) {
        Lookup::Active => return Ok(true),
        Lookup::Unknown(ticket) => ticket,
    };
    let active = match &subject {
        Subject::Gateway {
            gateway_id,
            team_id,
            session_id,
        } => {
            state
                .store
                .gateway_active(gateway_id, team_id, session_id)
                .await?
        }
        Subject::UserSession { session_id, .. } => {
            state.store.user_session_active(session_id).await?
        }
    };
    if active {
        cache.remember(subject, ticket, Instant::now());
    }
    Ok(active)
}
