//! Realtime: Supabase Realtime's Phoenix channel protocol over WebSocket
//! (supabase-wire §5, control-plane §6 and §16.8), `postgres_changes` only,
//! with the minimum of broadcast and presence that keeps clients working.
//!
//! One task per socket. It reads client frames, answers heartbeats, joins
//! and leaves channels, and — while at least one joined channel has
//! `postgres_changes` bindings — is registered with the hub's one change
//! [`dispatch`]er, which routes each committed change of the store's
//! [`ChangeFeed`](crate::changes::ChangeFeed) into the queues of only the
//! sockets whose bindings can match it (an exact lookup for `col=eq.value`
//! filters). The socket task forwards each queued change that matches a
//! binding and that the channel's principal may see
//! ([`crate::policy::row_visible`]). Sockets
//! that stay silent past [`RealtimeOptions::idle_timeout`] are closed; a
//! channel whose token expires, is replaced by an invalid one, or whose
//! gateway is revoked, is closed with a `system` error then `phx_close`.
//!
//! Wire choices where the spec leaves one:
//! * no `vsn` parameter means `1.0.0` (Phoenix's default); an unknown `vsn`
//!   is refused at the upgrade with 400;
//! * binding ids are FNV-1a hashes of the binding entry below 2^27, unique
//!   per channel;
//! * `old_record` holds only the primary key (default replica identity),
//!   on UPDATE and DELETE; `columns` lists every column of the table;
//! * a bad binding (unknown table, malformed filter) refuses the join with
//!   a `phx_reply` error rather than an ok followed by a `system` error, so
//!   that the client reports `CHANNEL_ERROR`;
//! * broadcast reaches every other socket joined to the same channel
//!   ([`broadcast`]), and the sender too when it joined with `self: true`;
//!   public and private (`config.private`) channels of a topic are distinct.
//!   A private channel is joined only by principals its topic allows
//!   ([`authorize_private`]): `terminal:<session_id>` for the service key,
//!   the gateway whose `terminal_open` job is that session, and team
//!   members by role and resource (watchers' `input`/`resize`/`close` are
//!   not relayed). Presence pushes are acknowledged and not tracked;
//! * a socket too slow to take its changes (its dispatcher queue filled up)
//!   gets `phx_error` on its bound channels, so that clients rejoin and
//!   reconcile (see [`Conn::fail_bound_channels`]).

pub mod broadcast;
pub mod dispatch;
pub mod filter;
pub mod frame;

use crate::app::{self, AppState};
use crate::auth::{principal_of_claims, AuthError, Principal};
use crate::changes::{ChangeKind, RowChange};
use crate::schema;
use crate::values::parse_timestamp;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broadcast::{Body, ChannelKey, Delivery};
use dispatch::{Item, Route, Subscription};
use filter::{binding_id, columns_json, Binding};
use frame::{BinaryPush, Frame, Vsn};
use panorama_protocol::terminal::{person_access, watcher_may_send, ChannelAccess};
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Tunables of the realtime server.
#[derive(Debug, Clone, Copy)]
pub struct RealtimeOptions {
    /// A socket that sends nothing (not even a heartbeat) for this long is
    /// closed. realtime-js heartbeats every 25 s; Phoenix closes after ~60 s.
    pub idle_timeout: Duration,
    /// A send that cannot complete in this time (the client stopped
    /// reading) ends the socket.
    pub send_timeout: Duration,
    /// Channels one socket may join.
    pub max_channels: usize,
    /// `postgres_changes` bindings one channel may have.
    pub max_bindings: usize,
    /// Largest client frame accepted.
    pub max_message_bytes: usize,
    /// Matching changes one socket may have waiting before it is told it
    /// is too slow (see `realtime/dispatch.rs`). Large enough for an
    /// operator's bulk insert of thousands of jobs to reach a listener
    /// bound to all of them; the queue only holds memory while it holds
    /// changes.
    pub queue_capacity: usize,
}

impl Default for RealtimeOptions {
    fn default() -> Self {
        RealtimeOptions {
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(10),
            max_channels: 100,
            max_bindings: 100,
            max_message_bytes: 1 << 20,
            queue_capacity: dispatch::QUEUE_CAPACITY,
        }
    }
}

/// `GET /realtime/v1/websocket?apikey=…&vsn=…` on `opts` (the defaults,
/// or tests' short timeouts); `crate::api::router` mounts it.
pub fn websocket_route<S>(
    state: Arc<AppState>,
    opts: RealtimeOptions,
) -> axum::routing::MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    axum::routing::get(
        move |RawQuery(q): RawQuery,
              headers: HeaderMap,
              ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
            let st = state.clone();
            async move { upgrade(st, q.as_deref(), &headers, ws, opts) }
        },
    )
}

/// The upgrade itself, with explicit options (tests use short timeouts).
/// The API key is checked before the upgrade: a missing or unknown key gets
/// the Supabase gateway's 401 JSON and no socket.
pub fn upgrade(
    state: Arc<AppState>,
    query: Option<&str>,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    opts: RealtimeOptions,
) -> Response {
    let mut apikey = None;
    let mut vsn_param = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "apikey" if apikey.is_none() => apikey = Some(v.into_owned()),
            "vsn" if vsn_param.is_none() => vsn_param = Some(v.into_owned()),
            _ => {}
        }
    }
    let principal = match app::principal(&state, headers, apikey.as_deref()) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let socket_token = match principal {
        Principal::Gateway { .. } => app::bearer(headers).map(str::to_string),
        _ => None,
    };
    let vsn = match vsn_param.as_deref() {
        None => Vsn::DEFAULT,
        Some(s) => match Vsn::parse(s) {
            Some(v) => v,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("unsupported vsn {s:?}: this server speaks 1.0.0 and 2.0.0")})),
                )
                    .into_response()
            }
        },
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(opts.max_message_bytes)
        .max_frame_size(opts.max_message_bytes)
        .on_upgrade(move |socket| async move {
            let _open = crate::metrics::socket_opened();
            let (socket_id, broadcast_tx, broadcast_rx) = state.broadcasts.socket();
            let conn = Conn {
                socket_id,
                broadcast_tx,
                broadcast_rx,
                state,
                opts,
                vsn,
                socket_principal: principal,
                socket_token,
                socket,
                channels: Vec::new(),
                sub: None,
            };
            conn.run().await;
        })
}

/// The socket is gone (closed, failed, or too slow to take a frame).
struct Gone;

type Flow = Result<(), Gone>;

struct Channel {
    topic: String,
    join_ref: Value,
    principal: Principal,
    /// Hash of the access token last accepted (to ignore unchanged ones).
    token_hash: Option<u64>,
    /// The token's `exp`, for user JWTs (the API keys do not expire).
    expires_at: Option<i64>,
    bindings: Vec<Binding>,
    broadcast_ack: bool,
    broadcast_self: bool,
    /// Joined with `config.private: true` (authorized by topic).
    private: bool,
    /// A terminal watcher: only the broadcasts reading needs are relayed
    /// ([`panorama_protocol::terminal::watcher_may_send`]).
    read_only: bool,
}

impl Channel {
    fn key(&self) -> ChannelKey {
        ChannelKey {
            topic: self.topic.clone(),
            private: self.private,
        }
    }

    fn sub_topic(&self) -> &str {
        self.topic.strip_prefix("realtime:").unwrap_or(&self.topic)
    }
}

struct Conn {
    /// This socket in the broadcast registry, and its queue there.
    socket_id: u64,
    broadcast_tx: tokio::sync::mpsc::Sender<Arc<Delivery>>,
    broadcast_rx: tokio::sync::mpsc::Receiver<Arc<Delivery>>,
    state: Arc<AppState>,
    opts: RealtimeOptions,
    vsn: Vsn,
    /// Who the socket's `apikey` stands for (a join without a token).
    socket_principal: Principal,
    /// The upgrade's `Authorization` bearer when it is a user JWT: a join
    /// without a token inherits it, and must then be held to the same
    /// checks as a join token (expiry, revocation), not to the principal
    /// resolved once at the upgrade.
    socket_token: Option<String>,
    socket: WebSocket,
    channels: Vec<Channel>,
    /// Registered with the dispatcher only while some channel has bindings
    /// (idle sockets cost no wake-ups); dropping it unregisters.
    sub: Option<Subscription>,
}

/// A refused token, as Realtime words it (`"<Code>: <message>"`).
#[derive(Debug)]
struct TokenError {
    code: &'static str,
    message: String,
}

impl TokenError {
    fn reason(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn hash_token(token: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

/// The `exp` claim of a token whose signature was already checked (or
/// that failed only because it expired), read without verification.
fn unverified_exp(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

fn looks_like_jwt(token: &str) -> bool {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v.is_object())
        })
}

fn expired_message(exp: Option<i64>) -> String {
    match exp {
        Some(exp) => format!(
            "Token has expired {} seconds ago",
            (now_millis() / 1000 - exp).max(0)
        ),
        None => "Token has expired".to_string(),
    }
}

/// `commit_timestamp` in Realtime's form: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn commit_timestamp(raw: &str) -> String {
    parse_timestamp(raw)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| raw.to_string())
}

fn truncated(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn ok_reply() -> Value {
    json!({"status": "ok", "response": {}})
}

fn error_reply(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

impl Conn {
    async fn run(mut self) {
        tracing::debug!(vsn = ?self.vsn, principal = ?self.socket_principal, "realtime socket opened");
        let mut last_seen = Instant::now();
        let sleep = tokio::time::sleep_until(self.deadline(last_seen));
        tokio::pin!(sleep);
        loop {
            let flow = tokio::select! {
                msg = self.socket.recv() => match msg {
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "realtime socket failed");
                        break;
                    }
                    Some(Ok(msg)) => {
                        last_seen = Instant::now();
                        self.on_message(msg).await
                    }
                },
                item = next_item(&mut self.sub) => self.on_item(item).await,
                Some(delivery) = self.broadcast_rx.recv() => self.on_delivery(&delivery).await,
                () = &mut sleep => self.on_timer(last_seen).await,
            };
            if flow.is_err() {
                break;
            }
            sleep.as_mut().reset(self.deadline(last_seen));
        }
        self.state.broadcasts.leave_all(self.socket_id);
        tracing::debug!("realtime socket closed");
    }

    /// The next moment something must happen without client input: the
    /// idle timeout, or the first channel token to expire.
    fn deadline(&self, last_seen: Instant) -> Instant {
        let idle = last_seen + self.opts.idle_timeout;
        let now_ms = now_millis();
        let first_exp = self.channels.iter().filter_map(|c| c.expires_at).min();
        match first_exp {
            Some(exp) => {
                let wait = Duration::from_millis((exp * 1000 - now_ms).max(0) as u64 + 1);
                idle.min(Instant::now() + wait)
            }
            None => idle,
        }
    }

    async fn send(&mut self, frame: Frame) -> Flow {
        self.send_message(Message::Text(frame.encode(self.vsn).into()))
            .await
    }

    async fn send_message(&mut self, msg: Message) -> Flow {
        match tokio::time::timeout(self.opts.send_timeout, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "realtime send failed");
                Err(Gone)
            }
            Err(_) => {
                tracing::warn!(
                    timeout_secs = self.opts.send_timeout.as_secs(),
                    "realtime client stopped reading; closing its socket"
                );
                Err(Gone)
            }
        }
    }

    async fn reply(&mut self, req: &Frame, payload: Value) -> Flow {
        self.send(Frame::new(
            req.join_ref.clone(),
            req.ref_.clone(),
            &req.topic,
            "phx_reply",
            payload,
        ))
        .await
    }

    async fn on_message(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Text(text) => match Frame::decode(text.as_str()) {
                Ok(frame) => self.on_frame(frame).await,
                Err(e) => {
                    tracing::warn!(error = %e, frame = truncated(text.as_str()), "ignoring a malformed realtime frame");
                    Ok(())
                }
            },
            Message::Binary(bytes) => self.on_binary(&bytes).await,
            Message::Close(_) => Err(Gone),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    fn channel_index(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.topic == topic)
    }

    async fn on_frame(&mut self, frame: Frame) -> Flow {
        if frame.topic == "phoenix" {
            return if frame.event == "heartbeat" {
                self.reply(&frame, ok_reply()).await
            } else {
                self.reply(&frame, error_reply("unmatched topic")).await
            };
        }
        if frame.event == "phx_join" {
            return self.join(frame).await;
        }
        let Some(idx) = self.channel_index(&frame.topic) else {
            if frame.ref_.is_null() {
                return Ok(());
            }
            return self.reply(&frame, error_reply("unmatched topic")).await;
        };
        match frame.event.as_str() {
            "phx_leave" => self.leave(idx, frame).await,
            "access_token" => self.access_token(idx, &frame).await,
            "broadcast" => {
                let (ack, echo) = (
                    self.channels[idx].broadcast_ack,
                    self.channels[idx].broadcast_self,
                );
                if self.channels[idx].read_only {
                    let event = frame.payload.get("event").and_then(Value::as_str);
                    if !event.is_some_and(watcher_may_send) {
                        tracing::debug!(topic = %frame.topic, event = ?event, "a terminal watcher's broadcast was not relayed");
                        if frame.ref_.is_null() {
                            return Ok(());
                        }
                        let reason = format!(
                            "read-only: a watcher of {} may send attach, output_ack and ping only",
                            frame.topic
                        );
                        return self.reply(&frame, error_reply(&reason)).await;
                    }
                }
                let key = self.channels[idx].key();
                self.state.broadcasts.publish(
                    self.socket_id,
                    &key,
                    Body::Json(frame.payload.clone()),
                );
                if ack && !frame.ref_.is_null() {
                    self.reply(&frame, ok_reply()).await?;
                }
                if echo {
                    self.send(Frame::new(
                        Value::Null,
                        Value::Null,
                        &frame.topic,
                        "broadcast",
                        frame.payload.clone(),
                    ))
                    .await?;
                }
                Ok(())
            }
            "presence" => self.reply(&frame, ok_reply()).await,
            other => {
                tracing::debug!(topic = %frame.topic, event = other, "unknown realtime event");
                if frame.ref_.is_null() {
                    return Ok(());
                }
                let reason = format!(
                    "unknown event {other:?}: this server handles phx_join, phx_leave, access_token, broadcast and presence"
                );
                self.reply(&frame, error_reply(&reason)).await
            }
        }
    }

    /// vsn 2.0.0 binary broadcast (kind 3): acknowledged and echoed like
    /// its JSON form; anything else is ignored.
    async fn on_binary(&mut self, bytes: &[u8]) -> Flow {
        let Some(push) = BinaryPush::decode(bytes) else {
            tracing::debug!(
                len = bytes.len(),
                "ignoring a binary realtime frame that is not a broadcast push"
            );
            return Ok(());
        };
        let req = Frame::new(
            json!(push.join_ref),
            json!(push.ref_),
            &push.topic,
            "broadcast",
            Value::Null,
        );
        let Some(idx) = self.channel_index(&push.topic) else {
            return self.reply(&req, error_reply("unmatched topic")).await;
        };
        if self.channels[idx].read_only {
            return self
                .reply(
                    &req,
                    error_reply("read-only: a terminal watcher may not send binary broadcasts"),
                )
                .await;
        }
        let (ack, echo) = (
            self.channels[idx].broadcast_ack,
            self.channels[idx].broadcast_self,
        );
        let key = self.channels[idx].key();
        self.state
            .broadcasts
            .publish(self.socket_id, &key, Body::Binary(push.clone()));
        if ack {
            self.reply(&req, ok_reply()).await?;
        }
        if echo {
            if let Some(out) = push.to_broadcast() {
                self.send_message(Message::Binary(out.into())).await?;
            }
        }
        Ok(())
    }
}

/// The principal a join's or an `access_token` push's token stands for,
/// with its expiry.
async fn resolve_token(
    state: &AppState,
    token: &str,
) -> Result<(Principal, Option<i64>), TokenError> {
    let keys = &state.keys;
    let (principal, exp) = if token == keys.service_key {
        (Principal::Service, None)
    } else if token == keys.anon_key {
        (Principal::Anon, None)
    } else {
        let claims = keys.verify(token).map_err(|e| match e {
            AuthError::Expired => TokenError {
                code: "InvalidJWTToken",
                message: expired_message(unverified_exp(token)),
            },
            _ if !looks_like_jwt(token) => TokenError {
                code: "MalformedJWT",
                message: "The token provided is not a valid JWT".into(),
            },
            AuthError::Invalid(why) if why.contains("missing field") => TokenError {
                code: "InvalidJWTToken",
                message: "Fields `role` and `exp` are required in JWT".into(),
            },
            AuthError::Invalid(why) if why.contains("InvalidSignature") => TokenError {
                code: "InvalidJWTToken",
                message: "Signature error: the token was not signed by this hub".into(),
            },
            other => TokenError {
                code: "InvalidJWTToken",
                message: other.to_string(),
            },
        })?;
        let principal = principal_of_claims(&claims).map_err(|e| TokenError {
            code: "Unauthorized",
            message: e.to_string(),
        })?;
        (principal, Some(claims.exp))
    };
    if let Some(subject) = crate::app::subject_of(&principal) {
        let refused = match (&principal, crate::app::is_active(state, subject).await) {
            (_, Ok(true)) => None,
            (Principal::Gateway { gateway_id, .. }, Ok(false)) => Some(format!(
                "gateway {gateway_id} is revoked or no longer exists, or its session was revoked; pair this machine again"
            )),
            (Principal::Gateway { gateway_id, .. }, Err(e)) => {
                Some(format!("could not check gateway {gateway_id}: {e}"))
            }
            (_, _) => Some("the session of this access token has ended; sign in again".into()),
        };
        if let Some(message) = refused {
            return Err(TokenError {
                code: "Unauthorized",
                message,
            });
        }
    }
    Ok((principal, exp))
}

impl Conn {
    async fn join(&mut self, frame: Frame) -> Flow {
        let Some(sub) = frame.topic.strip_prefix("realtime:") else {
            return self.reply(&frame, error_reply("unmatched topic")).await;
        };
        if sub.is_empty() {
            return self
                .reply(
                    &frame,
                    error_reply("TopicNameRequired: You must provide a topic name"),
                )
                .await;
        }
        // A re-join of a joined topic replaces the old channel.
        if let Some(idx) = self.channel_index(&frame.topic) {
            let old = self.channels.remove(idx);
            self.state.broadcasts.leave(&old.key(), self.socket_id);
            self.send(Frame::new(
                old.join_ref.clone(),
                old.join_ref,
                &old.topic,
                "phx_close",
                json!({}),
            ))
            .await?;
        }
        let prepared = prepare_channel(
            &self.state,
            &self.opts,
            &self.socket_principal,
            self.socket_token.as_deref(),
            self.channels.len(),
            &frame,
        )
        .await;
        match prepared {
            Ok((channel, echo, presence)) => {
                let has_bindings = !channel.bindings.is_empty();
                tracing::debug!(topic = %frame.topic, principal = ?channel.principal, bindings = channel.bindings.len(), private = channel.private, "realtime channel joined");
                self.state.broadcasts.join(
                    channel.key(),
                    self.socket_id,
                    self.broadcast_tx.clone(),
                );
                self.channels.push(channel);
                // Listen before replying, so that every change committed
                // after the client sees SUBSCRIBED is delivered.
                self.sync_routes();
                self.reply(
                    &frame,
                    json!({"status": "ok", "response": {"postgres_changes": echo}}),
                )
                .await?;
                if has_bindings {
                    self.send(Frame::new(
                        frame.join_ref.clone(),
                        Value::Null,
                        &frame.topic,
                        "system",
                        json!({"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL", "channel": sub}),
                    ))
                    .await?;
                }
                if presence {
                    self.send(Frame::new(
                        frame.join_ref.clone(),
                        Value::Null,
                        &frame.topic,
                        "presence_state",
                        json!({}),
                    ))
                    .await?;
                }
                Ok(())
            }
            Err(reason) => {
                tracing::debug!(topic = %frame.topic, %reason, "realtime join refused");
                self.sync_routes();
                self.reply(&frame, error_reply(&reason)).await
            }
        }
    }
}

/// Validates a join: its token, then its bindings. Returns the channel,
/// the `postgres_changes` echo and whether presence is enabled.
async fn prepare_channel(
    state: &AppState,
    opts: &RealtimeOptions,
    socket_principal: &Principal,
    socket_token: Option<&str>,
    joined: usize,
    frame: &Frame,
) -> Result<(Channel, Vec<Value>, bool), String> {
    if joined >= opts.max_channels {
        return Err("ChannelRateLimitReached: Too many channels".into());
    }
    let empty = Map::new();
    let payload = frame.payload.as_object().unwrap_or(&empty);
    let token = match payload.get("access_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.starts_with("sb_") => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err("MalformedJWT: The token provided is not a valid JWT".into()),
    };
    let (principal, expires_at, token_hash) = match token.or(socket_token) {
        None => (socket_principal.clone(), None, None),
        Some(t) => {
            let (p, exp) = resolve_token(state, t).await.map_err(|e| e.reason())?;
            (p, exp, Some(hash_token(t)))
        }
    };
    let config = payload
        .get("config")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let private = config
        .get("private")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let sub_topic = frame
        .topic
        .strip_prefix("realtime:")
        .unwrap_or(&frame.topic);
    let access = authorize_private(state, &principal, sub_topic, private).await?;
    let entries: &[Value] = match config.get("postgres_changes") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "PostgresChangesError: config.postgres_changes must be an array, got {other}"
            ))
        }
    };
    if entries.len() > opts.max_bindings {
        return Err(format!(
            "PostgresChangesError: too many postgres_changes bindings ({} > {})",
            entries.len(),
            opts.max_bindings
        ));
    }
    let mut bindings = Vec::with_capacity(entries.len());
    let mut echo = Vec::with_capacity(entries.len());
    let mut ids = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let id = binding_id(entry, &ids);
        let binding = Binding::parse(entry, id).map_err(|why| {
                format!("PostgresChangesError: Unable to subscribe to changes with given parameters: postgres_changes[{i}]: {why}")
            })?;
        ids.push(id);
        let mut e = entry.as_object().cloned().unwrap_or_default();
        e.insert("id".into(), json!(id));
        echo.push(Value::Object(e));
        bindings.push(binding);
    }
    let flag = |section: &str, key: &str| {
        config
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let channel = Channel {
        topic: frame.topic.clone(),
        join_ref: frame.join_ref.clone(),
        principal,
        token_hash,
        expires_at,
        bindings,
        broadcast_ack: flag("broadcast", "ack"),
        broadcast_self: flag("broadcast", "self"),
        private,
        read_only: access == Some(ChannelAccess::Watch),
    };
    Ok((channel, echo, flag("presence", "enabled")))
}

impl Conn {
    async fn leave(&mut self, idx: usize, frame: Frame) -> Flow {
        // A leave for an older join of this topic (the client timed that
        // join out) does not end the current one.
        let current = &self.channels[idx].join_ref;
        if !frame.join_ref.is_null() && frame.join_ref != *current {
            return self.reply(&frame, ok_reply()).await;
        }
        let channel = self.channels.remove(idx);
        self.state.broadcasts.leave(&channel.key(), self.socket_id);
        self.sync_routes();
        self.reply(&frame, ok_reply()).await?;
        self.send(Frame::new(
            channel.join_ref.clone(),
            channel.join_ref,
            &channel.topic,
            "phx_close",
            json!({}),
        ))
        .await
    }

    /// Closes a channel from the server side: a `system` error, then
    /// `phx_close` (supabase-wire §5.7).
    async fn close_channel(&mut self, idx: usize, message: &str) -> Flow {
        let channel = self.channels.remove(idx);
        self.state.broadcasts.leave(&channel.key(), self.socket_id);
        self.sync_routes();
        tracing::info!(topic = %channel.topic, %message, "realtime channel closed by the server");
        self.end_channel(channel, message, "phx_close").await
    }

    /// Tells the client a channel ended: a `system` error carrying
    /// `message`, then `closing_event` (`phx_close`: closed for good;
    /// `phx_error`: failed, the client rejoins).
    async fn end_channel(&mut self, channel: Channel, message: &str, closing_event: &str) -> Flow {
        self.send(Frame::new(
            channel.join_ref.clone(),
            Value::Null,
            &channel.topic,
            "system",
            json!({"extension": "system", "status": "error", "message": message, "channel": channel.sub_topic()}),
        ))
        .await?;
        self.send(Frame::new(
            channel.join_ref.clone(),
            channel.join_ref,
            &channel.topic,
            closing_event,
            json!({}),
        ))
        .await
    }

    /// `access_token` push: no reply. An unchanged, null or `sb_` token is
    /// ignored; a valid one replaces the channel's principal; an invalid
    /// one closes the channel.
    async fn access_token(&mut self, idx: usize, frame: &Frame) -> Flow {
        let Some(token) = frame.payload.get("access_token").and_then(Value::as_str) else {
            return Ok(());
        };
        let hash = hash_token(token);
        if token.starts_with("sb_") || self.channels[idx].token_hash == Some(hash) {
            return Ok(());
        }
        match resolve_token(&self.state, token).await {
            Ok((principal, exp)) => {
                let c = &mut self.channels[idx];
                tracing::debug!(topic = %c.topic, principal = ?principal, "realtime channel token updated");
                c.principal = principal;
                c.expires_at = exp;
                c.token_hash = Some(hash);
                // The gateway a channel is revoked with may have changed.
                self.sync_routes();
                Ok(())
            }
            Err(e) => self.close_channel(idx, &e.message).await,
        }
    }

    async fn on_timer(&mut self, last_seen: Instant) -> Flow {
        if Instant::now() >= last_seen + self.opts.idle_timeout {
            tracing::info!(
                idle_secs = self.opts.idle_timeout.as_secs(),
                "closing a realtime socket that stopped heartbeating"
            );
            let close = Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "heartbeat timeout".into(),
            }));
            let _ = self.send_message(close).await;
            return Err(Gone);
        }
        let now_ms = now_millis();
        while let Some(idx) = self
            .channels
            .iter()
            .position(|c| c.expires_at.is_some_and(|exp| exp * 1000 <= now_ms))
        {
            let message = expired_message(self.channels[idx].expires_at);
            self.close_channel(idx, &message).await?;
        }
        Ok(())
    }

    /// What this socket must be woken for: every binding of its channels
    /// and, for revocation, the gateways its channels act as. Nothing while
    /// no channel has bindings.
    fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        if self.channels.iter().all(|c| c.bindings.is_empty()) {
            return routes;
        }
        for c in &self.channels {
            let gateway = c.principal.gateway_ids().map(|(g, t)| Route::Gateway {
                id: g.to_string(),
                team: t.to_string(),
            });
            for r in c.bindings.iter().map(Route::of_binding).chain(gateway) {
                if !routes.contains(&r) {
                    routes.push(r);
                }
            }
        }
        routes
    }

    /// Brings the dispatcher registration in line with the channels. Called
    /// before a join is acknowledged, so that every change committed after
    /// the client sees SUBSCRIBED is delivered.
    fn sync_routes(&mut self) {
        let routes = self.routes();
        match (&mut self.sub, routes.is_empty()) {
            (None, true) => {}
            (Some(_), true) => self.sub = None,
            (Some(sub), false) => sub.set_routes(routes),
            (None, false) => {
                let label = match self.channels.iter().find_map(|c| c.principal.gateway_ids()) {
                    Some((g, t)) => format!("gateway {g} (team {t})"),
                    None => format!(
                        "{:?} on {}",
                        self.socket_principal,
                        self.channels.first().map_or("", |c| c.topic.as_str())
                    ),
                };
                self.sub = Some(self.state.dispatcher().register(
                    routes,
                    label,
                    self.opts.queue_capacity,
                ));
            }
        }
    }

    /// Another socket's broadcast on a channel this socket joined, in this
    /// socket's serializer. A binary push with a binary payload has no JSON
    /// form and is not delivered to a vsn 1.0.0 socket.
    async fn on_delivery(&mut self, delivery: &Delivery) -> Flow {
        let Some(channel) = self.channels.iter().find(|c| c.key() == delivery.channel) else {
            return Ok(());
        };
        let topic = channel.topic.clone();
        match (&delivery.body, self.vsn) {
            (Body::Json(payload), _) => {
                self.send(Frame::new(
                    Value::Null,
                    Value::Null,
                    &topic,
                    "broadcast",
                    payload.clone(),
                ))
                .await
            }
            (Body::Binary(push), Vsn::V2) => match push.to_broadcast() {
                Some(out) => self.send_message(Message::Binary(out.into())).await,
                None => Ok(()),
            },
            (Body::Binary(push), Vsn::V1) => {
                if push.encoding != 1 {
                    tracing::debug!(topic = %topic, "a binary broadcast has no JSON form for a vsn 1.0.0 socket; not delivered");
                    return Ok(());
                }
                let Ok(payload) = serde_json::from_slice::<Value>(&push.payload) else {
                    return Ok(());
                };
                self.send(Frame::new(
                    Value::Null,
                    Value::Null,
                    &topic,
                    "broadcast",
                    json!({"type": "broadcast", "event": push.event, "payload": payload}),
                ))
                .await
            }
        }
    }

    async fn on_item(&mut self, item: Item) -> Flow {
        if let Item::Change(change) = item {
            self.deliver(&change).await?;
        }
        let lost = self.sub.as_ref().map_or(0, Subscription::take_lost);
        if lost > 0 {
            self.fail_bound_channels(lost).await?;
        }
        Ok(())
    }

    /// Some changes for this socket were dropped because its queue was
    /// full (it does not read fast enough). What the client is told follows
    /// real Realtime: it bounds each channel process's memory
    /// (`max_heap_size`) and kills a channel whose mailbox outgrows it, and
    /// Phoenix then sends the client `phx_error`. realtime-js (and our
    /// client) answer `phx_error` with CHANNEL_ERROR and rejoin by
    /// themselves after a backoff; the gateway's reconcile poll then picks
    /// up the jobs it missed. So every channel with bindings gets a `system`
    /// error saying why (the form of Realtime's channel shutdowns), then
    /// `phx_error`, and is dropped here so that the rejoin starts clean.
    async fn fail_bound_channels(&mut self, lost: u64) -> Flow {
        let (failed, kept) = std::mem::take(&mut self.channels)
            .into_iter()
            .partition::<Vec<_>, _>(|c| !c.bindings.is_empty());
        self.channels = kept;
        self.sync_routes();
        let message = format!(
            "SubscriberTooSlow: {lost} changes could not be queued for this socket because it did not read them fast enough; rejoin and reconcile"
        );
        for channel in failed {
            self.state.broadcasts.leave(&channel.key(), self.socket_id);
            tracing::debug!(topic = %channel.topic, lost, "realtime channel failed: the socket fell behind");
            self.end_channel(channel, &message, "phx_error").await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, change: &RowChange) -> Flow {
        let Some(table) = schema::table(change.table) else {
            return Ok(());
        };
        if table.name == schema::TEAM_GATEWAYS.name {
            self.check_revocation(change).await?;
        }
        let row = &change.record;
        let mut out: Vec<(String, Vec<u32>)> = Vec::new();
        for c in &self.channels {
            let ids: Vec<u32> = c
                .bindings
                .iter()
                .filter(|b| b.matches(table, change.kind, row))
                .map(|b| b.id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let deleted = change.kind == crate::changes::ChangeKind::Delete;
            if !crate::policy::row_visible(&c.principal, table, row, deleted, &self.state.store)
                .await
            {
                continue;
            }
            out.push((c.topic.clone(), ids));
        }
        if out.is_empty() {
            return Ok(());
        }
        let mut data = Map::new();
        data.insert("schema".into(), json!("public"));
        data.insert("table".into(), json!(table.name));
        data.insert(
            "commit_timestamp".into(),
            json!(commit_timestamp(&change.commit_timestamp)),
        );
        data.insert("type".into(), json!(change.kind.as_str()));
        data.insert("columns".into(), columns_json(table));
        if change.kind != ChangeKind::Delete {
            data.insert("record".into(), Value::Object(change.record.clone()));
        }
        if change.kind != ChangeKind::Insert {
            // Default replica identity: the old row's primary key only.
            let old = change.old_record.as_ref().unwrap_or(&change.record);
            let mut pk = Map::new();
            pk.insert(
                table.primary_key.into(),
                old.get(table.primary_key).cloned().unwrap_or(Value::Null),
            );
            data.insert("old_record".into(), Value::Object(pk));
        }
        data.insert("errors".into(), Value::Null);
        let data = Value::Object(data);
        for (topic, ids) in out {
            self.send(Frame::new(
                Value::Null,
                Value::Null,
                &topic,
                "postgres_changes",
                json!({"ids": ids, "data": data}),
            ))
            .await?;
        }
        Ok(())
    }

    /// A gateway revoked, deleted or moved to another team loses its
    /// channels at once (RLS's `current_gateway_is_active()`).
    async fn check_revocation(&mut self, change: &RowChange) -> Flow {
        let row = &change.record;
        let Some(id) = row.get("id").and_then(Value::as_str) else {
            return Ok(());
        };
        while let Some(idx) = self.channels.iter().position(|c| match &c.principal {
            Principal::Gateway {
                gateway_id,
                team_id,
                ..
            } => {
                gateway_id == id
                    && (change.kind == ChangeKind::Delete
                        || !row.get("revoked_at").is_none_or(Value::is_null)
                        || row.get("team_id").and_then(Value::as_str) != Some(team_id.as_str()))
            }
            _ => false,
        }) {
            let message = format!("Unauthorized: gateway {id} is revoked or no longer exists; pair this machine again");
            self.close_channel(idx, &message).await?;
        }
        Ok(())
    }
}

/// The prefix of a terminal stream's topic; the rest is the session id,
/// which is the id of the `terminal_open` job that opened it.
pub const TERMINAL_TOPIC_PREFIX: &str = "terminal:";

/// Who may join a channel, by topic (Realtime authorizes private channels
/// with RLS on `realtime.messages`; ours are authorized here, like the
/// tables). A terminal channel must be private and is open to the service
/// key and the gateway that owns the session (full access), and to signed-in
/// members of the session's team as [`person_access`] decides from their
/// role and the session's resource (full, watch-only, or refused); any other
/// private topic is refused, having no policy. Public topics are open to
/// anyone holding an API key, as in Realtime. `Some` is a terminal
/// channel's access.
async fn authorize_private(
    state: &AppState,
    principal: &Principal,
    topic: &str,
    private: bool,
) -> Result<Option<ChannelAccess>, String> {
    let Some(session_id) = topic.strip_prefix(TERMINAL_TOPIC_PREFIX) else {
        return if private {
            Err(format!("Unauthorized: You do not have permissions to read from this Channel topic: {topic}"))
        } else {
            Ok(None)
        };
    };
    if !private {
        return Err(format!(
            "Unauthorized: {topic} is a terminal stream; join it as a private channel (config.private = true)"
        ));
    }
    let refuse = |why: &str| {
        Err(format!(
            "Unauthorized: You do not have permissions to read from this Channel topic: {topic} ({why})"
        ))
    };
    if !matches!(principal, Principal::Service) && uuid::Uuid::parse_str(session_id).is_err() {
        return refuse("the session id is not a job id");
    }
    let check =
        |e: crate::error::ApiError| format!("Unauthorized: could not check {topic}: {}", e.message);
    match principal {
        Principal::Service => Ok(Some(ChannelAccess::Full)),
        Principal::Anon => refuse("the anon key may not join terminal streams"),
        Principal::User {
            user_id,
            session_id: login,
        } => {
            // The session's job, in a team the person belongs to through a
            // live sign-in (both read in one statement).
            let job = select_one(
                state,
                &schema::GATEWAY_JOBS,
                vec![
                    crate::postgrest::Filter::eq("id", session_id),
                    crate::postgrest::Filter::eq(
                        "job_type",
                        panorama_protocol::terminal::JOB_TERMINAL_OPEN,
                    ),
                    crate::postgrest::Filter::TeamOfMember {
                        column: "team_id",
                        user_id: user_id.clone(),
                        session_id: login.clone(),
                        roles: crate::people::ALL_ROLES,
                    },
                ],
            )
            .await
            .map_err(check)?;
            let Some(job) = job else {
                return refuse("no terminal session of a team you belong to");
            };
            let team_id = job
                .get("team_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let member = select_one(
                state,
                &schema::TEAM_MEMBERS,
                vec![
                    crate::postgrest::Filter::eq("team_id", team_id),
                    crate::postgrest::Filter::eq("user_id", user_id),
                ],
            )
            .await
            .map_err(check)?;
            let role = member
                .as_ref()
                .and_then(|m| m.get("role"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let resource_id = job
                .get("payload")
                .and_then(|p| p.get("resource_id"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let resource = if uuid::Uuid::parse_str(resource_id).is_ok() {
                select_one(
                    state,
                    &schema::TEAM_RESOURCES,
                    vec![
                        crate::postgrest::Filter::eq("id", resource_id),
                        crate::postgrest::Filter::eq("team_id", team_id),
                    ],
                )
                .await
                .map_err(check)?
            } else {
                None
            };
            let Some(resource) = resource else {
                return refuse("the session's remote_shell resource is gone");
            };
            match person_access(
                role,
                resource.get("max_access_level").and_then(Value::as_str),
                resource.get("metadata"),
            ) {
                Some(access) => Ok(Some(access)),
                None => refuse("your team role may not watch this resource's terminals"),
            }
        }
        Principal::Gateway {
            gateway_id,
            team_id,
            ..
        } => {
            let found = select_one(
                state,
                &schema::GATEWAY_JOBS,
                vec![
                    crate::postgrest::Filter::eq("id", session_id),
                    crate::postgrest::Filter::eq("gateway_id", gateway_id),
                    crate::postgrest::Filter::eq("team_id", team_id),
                ],
            )
            .await
            .map_err(check)?;
            if found.is_none() {
                refuse("this gateway does not own that session")
            } else {
                Ok(Some(ChannelAccess::Full))
            }
        }
    }
}

/// The first row of `table` matching `filters`.
async fn select_one(
    state: &AppState,
    table: &'static schema::Table,
    filters: Vec<crate::postgrest::Filter>,
) -> Result<Option<crate::changes::Row>, crate::error::ApiError> {
    Ok(state
        .store
        .select(crate::store::SelectRequest {
            table,
            filters,
            order: vec![],
            limit: Some(1),
            offset: None,
            count: false,
        })
        .await?
        .rows
        .into_iter()
        .next())
}

async fn next_item(sub: &mut Option<Subscription>) -> Item {
    match sub {
        Some(sub) => sub.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_timestamps_have_milliseconds_and_z() {
        assert_eq!(
            commit_timestamp("2025-01-01T12:00:00.123456+00:00"),
            "2025-01-01T12:00:00.123Z"
        );
        assert_eq!(
            commit_timestamp("2025-05-01T14:00:00+02:00"),
            "2025-05-01T12:00:00.000Z"
        );
    }

    #[test]
    fn token_shapes() {
        let keys =
            crate::auth::Keys::from_secret(b"0123456789abcdef0123456789abcdef", 1_700_000_000);
        let t = keys.mint_gateway_token("u", "s", "g", "t", 1_700_000_000, 60);
        assert!(looks_like_jwt(&t));
        assert_eq!(unverified_exp(&t), Some(1_700_000_060));
        assert!(!looks_like_jwt("abc"));
        assert!(!looks_like_jwt("a.b.c"));
        assert_eq!(unverified_exp("abc"), None);
        assert!(expired_message(Some(now_millis() / 1000 - 5)).starts_with("Token has expired "));
    }
}
