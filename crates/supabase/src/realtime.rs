//! Realtime: Phoenix channels over WebSocket, `postgres_changes` only.
//!
//! Model (deliberately simpler than realtime-js, and loop-free):
//!
//! * [`Client::realtime`] returns a [`Realtime`] factory plus **one**
//!   `mpsc::Receiver<RealtimeEvent>` on which every channel created by that
//!   factory delivers its statuses and changes.
//! * [`Realtime::channel`] opens a dedicated socket, joins
//!   `realtime:<name>` and returns a [`ChannelHandle`] carrying a unique
//!   **generation** number. Every event is tagged with it.
//! * A channel emits `Subscribed` at most once, then change events, then
//!   exactly one **terminal** status (`ChannelError`, `TimedOut` or
//!   `Closed`) after which it is finished: it never rejoins or reconnects by
//!   itself. **The caller drives reconnects** (create a new channel; use
//!   [`ReconnectBackoff`] for delays) and ignores events whose generation is
//!   not the one of its current channel. Closing a channel on purpose
//!   ([`ChannelHandle::unsubscribe`]) yields `Closed(CloseReason::Unsubscribed)`
//!   for *that* generation, so it cannot trigger a reconnect loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::error::{Error, Result};

/// Phoenix serializer version (`vsn` URL parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vsn {
    /// `1.0.0`: JSON objects `{topic,event,payload,ref,join_ref}`.
    V1,
    /// `2.0.0` (supabase-js default): JSON arrays `[join_ref,ref,topic,event,payload]`.
    #[default]
    V2,
}

impl Vsn {
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

/// One Phoenix message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

impl Frame {
    /// Encode as a text frame for `vsn`.
    pub fn encode(&self, vsn: Vsn) -> String {
        match vsn {
            Vsn::V2 => json!([
                self.join_ref,
                self.ref_,
                self.topic,
                self.event,
                self.payload
            ])
            .to_string(),
            Vsn::V1 => {
                let mut m = Map::new();
                m.insert("topic".into(), json!(self.topic));
                m.insert("event".into(), json!(self.event));
                m.insert("payload".into(), self.payload.clone());
                m.insert("ref".into(), json!(self.ref_));
                if let Some(jr) = &self.join_ref {
                    m.insert("join_ref".into(), json!(jr));
                }
                Value::Object(m).to_string()
            }
        }
    }

    /// Decode a text frame of either serializer (array → 2.0.0, object → 1.0.0).
    pub fn decode(text: &str) -> Result<Frame> {
        let bad = |m: &str| Error::decode("a realtime frame", format!("{m}: {}", truncate(text)));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let opt_ref = |v: Option<&Value>| -> Result<Option<String>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(bad("ref is not a string")),
            }
        };
        let req_str = |v: Option<&Value>, what: &str| -> Result<String> {
            v.and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("missing {what}")))
        };
        match v {
            Value::Array(mut a) => {
                if a.len() != 5 {
                    return Err(bad("array frame must have 5 elements"));
                }
                // Moved out, not cloned: the payload is the whole row.
                let payload = a.pop().unwrap_or(Value::Null);
                Ok(Frame {
                    join_ref: opt_ref(a.first())?,
                    ref_: opt_ref(a.get(1))?,
                    topic: req_str(a.get(2), "topic")?,
                    event: req_str(a.get(3), "event")?,
                    payload,
                })
            }
            Value::Object(mut m) => Ok(Frame {
                join_ref: opt_ref(m.get("join_ref"))?,
                ref_: opt_ref(m.get("ref"))?,
                topic: req_str(m.get("topic"), "topic")?,
                event: req_str(m.get("event"), "event")?,
                payload: m.remove("payload").unwrap_or(Value::Null),
            }),
            _ => Err(bad("frame is neither an array nor an object")),
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// One `postgres_changes` binding of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostgresBinding {
    /// `*`, `INSERT`, `UPDATE` or `DELETE`.
    pub event: String,
    pub schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// e.g. `team_id=eq.7`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl PostgresBinding {
    /// Binding on `schema.table` for `event`, no filter.
    pub fn new(event: &str, schema: &str, table: &str) -> Self {
        PostgresBinding {
            event: event.into(),
            schema: schema.into(),
            table: Some(table.into()),
            filter: None,
        }
    }

    /// Add a filter (`col=op.value`).
    pub fn filter(mut self, filter: &str) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// supabase-js comparison of an echoed binding: `event` equal;
    /// `schema`, `table`, `filter` equal with null == missing.
    fn matches_echo(&self, echo: &Value) -> bool {
        let field = |k: &str| echo.get(k).and_then(Value::as_str).map(str::to_string);
        field("event").as_deref() == Some(self.event.as_str())
            && field("schema").as_deref() == Some(self.schema.as_str())
            && field("table") == self.table
            && field("filter") == self.filter
    }
}

/// Build the `phx_join` payload (control-plane §6 / wire §5.5).
pub fn join_payload(bindings: &[PostgresBinding], access_token: Option<&str>) -> Value {
    let mut p = json!({
        "config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false},
            "postgres_changes": bindings,
            "private": false
        }
    });
    if let Some(t) = access_token {
        p["access_token"] = json!(t);
    }
    p
}

/// Change type of a `postgres_changes` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeType {
    Insert,
    Update,
    Delete,
    Other(String),
}

impl ChangeType {
    fn parse(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "INSERT" => ChangeType::Insert,
            "UPDATE" => ChangeType::Update,
            "DELETE" => ChangeType::Delete,
            _ => ChangeType::Other(s.to_string()),
        }
    }
}

/// A delivered database change.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresChange {
    pub change_type: ChangeType,
    pub schema: String,
    pub table: String,
    pub commit_timestamp: Option<String>,
    /// The new row (INSERT/UPDATE); supabase-js `payload.new`.
    pub record: Option<Value>,
    /// The old row (UPDATE/DELETE; often PK only); supabase-js `payload.old`.
    pub old_record: Option<Value>,
    /// `data.errors` when not null.
    pub errors: Option<Value>,
}

/// Why a channel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The caller unsubscribed (leave replied, timed out, or handle dropped).
    Unsubscribed,
    /// The server sent `phx_close`.
    ServerClosed,
    /// No heartbeat reply before the next heartbeat was due; socket closed with 1000.
    HeartbeatTimeout,
}

/// Channel status. Everything except `Subscribed` is terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelStatus {
    /// Join acknowledged and the echoed bindings match.
    Subscribed,
    /// Join refused, binding mismatch, `phx_error`, socket failure / close,
    /// or no usable token. The string says which.
    ChannelError(String),
    /// No join reply within the push timeout (10 s).
    TimedOut,
    Closed(CloseReason),
}

impl ChannelStatus {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ChannelStatus::Subscribed)
    }
}

/// What a channel reports.
#[derive(Debug, Clone, PartialEq)]
pub enum RealtimeEventKind {
    Status(ChannelStatus),
    /// Boxed to keep the enum small.
    Change(Box<PostgresChange>),
}

/// An event from the channel with generation `generation`.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeEvent {
    pub generation: u64,
    /// `realtime:<name>`
    pub topic: String,
    pub kind: RealtimeEventKind,
}

/// Realtime tunables (realtime-js defaults).
#[derive(Debug, Clone)]
pub struct RealtimeOptions {
    pub vsn: Vsn,
    /// Heartbeat period; a reply must arrive before the next one. Default 25 s.
    pub heartbeat_interval: Duration,
    /// Join / leave / connect timeout. Default 10 s.
    pub push_timeout: Duration,
    /// Extra URL params between `apikey` and `vsn` (e.g. `eventsPerSecond=10`).
    pub params: Vec<(String, String)>,
    /// Capacity of the event channel. Default 1024.
    pub event_buffer: usize,
}

impl Default for RealtimeOptions {
    fn default() -> Self {
        RealtimeOptions {
            vsn: Vsn::V2,
            heartbeat_interval: Duration::from_secs(25),
            push_timeout: Duration::from_secs(10),
            params: Vec::new(),
            event_buffer: 1024,
        }
    }
}

/// `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{url with ws/wss}/realtime/v1/websocket?apikey=<key>[&params]&vsn=<vsn>`.
pub fn websocket_url(base: &str, apikey: &str, params: &[(String, String)], vsn: Vsn) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    let mut url = format!(
        "{ws}/realtime/v1/websocket?apikey={}",
        encode_uri_component(apikey)
    );
    for (k, v) in params {
        url.push('&');
        url.push_str(&encode_uri_component(k));
        url.push('=');
        url.push_str(&encode_uri_component(v));
    }
    url.push_str("&vsn=");
    url.push_str(vsn.as_str());
    url
}

/// Channel reconnect delays like realtime-js: 1 s, 2 s, 5 s, then 10 s.
/// Call [`ReconnectBackoff::reset`] after a `Subscribed`.
#[derive(Debug, Clone, Default)]
pub struct ReconnectBackoff {
    tries: u32,
}

impl ReconnectBackoff {
    pub fn new() -> Self {
        Self::default()
    }
    /// Delay before the next attempt (advances the counter).
    pub fn next_delay(&mut self) -> Duration {
        let d = match self.tries {
            0 => 1,
            1 => 2,
            2 => 5,
            _ => 10,
        };
        self.tries = self.tries.saturating_add(1);
        Duration::from_secs(d)
    }
    pub fn reset(&mut self) {
        self.tries = 0;
    }
}

/// Realtime factory; see the module docs.
#[derive(Clone)]
pub struct Realtime {
    client: Client,
    opts: RealtimeOptions,
    tx: mpsc::Sender<RealtimeEvent>,
    next_generation: Arc<AtomicU64>,
}

impl Client {
    /// Create a realtime factory and the single event receiver shared by all
    /// channels it creates.
    pub fn realtime(&self, opts: RealtimeOptions) -> (Realtime, mpsc::Receiver<RealtimeEvent>) {
        let (tx, rx) = mpsc::channel(opts.event_buffer.max(1));
        (
            Realtime {
                client: self.clone(),
                opts,
                tx,
                next_generation: Arc::new(AtomicU64::new(1)),
            },
            rx,
        )
    }
}

enum Command {
    Leave,
}

/// A live channel. Dropping it leaves the channel too (without waiting).
#[derive(Debug)]
pub struct ChannelHandle {
    generation: u64,
    topic: String,
    cmd: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    wait: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leave")
    }
}

impl ChannelHandle {
    /// Generation id carried by every event of this channel.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// `realtime:<name>`
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// True once the channel emitted its terminal status.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
    /// Send `phx_leave` and wait (≤ push timeout) for the reply. The channel
    /// then emits `Closed(Unsubscribed)` (unless it had already ended).
    pub async fn unsubscribe(self) {
        let _ = self.cmd.send(Command::Leave);
        let wait = self.wait + Duration::from_secs(2);
        let task = self.task;
        if tokio::time::timeout(wait, task).await.is_err() {
            tracing::warn!("realtime channel did not finish after unsubscribe");
        }
    }
}

impl Realtime {
    /// Open a socket and join `realtime:<name>` with `bindings`. Returns at
    /// once; the outcome arrives as events on the receiver.
    pub fn channel(&self, name: &str, bindings: Vec<PostgresBinding>) -> ChannelHandle {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let topic = format!("realtime:{name}");
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let ch = ChannelTask {
            client: self.client.clone(),
            opts: self.opts.clone(),
            tx: self.tx.clone(),
            generation,
            topic: topic.clone(),
            bindings,
            next_ref: 0,
        };
        let task = tokio::spawn(ch.run(cmd_rx));
        ChannelHandle {
            generation,
            topic,
            cmd: cmd_tx,
            task,
            wait: self.opts.push_timeout,
        }
    }
}

type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

struct ChannelTask {
    client: Client,
    opts: RealtimeOptions,
    tx: mpsc::Sender<RealtimeEvent>,
    generation: u64,
    topic: String,
    bindings: Vec<PostgresBinding>,
    next_ref: u64,
}

/// Outcome of a step of the loop.
enum Flow {
    Continue,
    End(ChannelStatus),
}

impl ChannelTask {
    fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn emit(&self, kind: RealtimeEventKind) -> bool {
        self.tx
            .send(RealtimeEvent {
                generation: self.generation,
                topic: self.topic.clone(),
                kind,
            })
            .await
            .is_ok()
    }

    async fn push(&self, sink: &mut WsSink, frame: Frame) -> Result<()> {
        let text = frame.encode(self.opts.vsn);
        tracing::trace!(frame = %text, "realtime send");
        sink.send(Message::text(text))
            .await
            .map_err(|e| Error::transport("realtime send", e))
    }

    async fn run(mut self, cmd_rx: mpsc::UnboundedReceiver<Command>) {
        let status = self.run_inner(cmd_rx).await;
        tracing::debug!(topic = %self.topic, generation = self.generation, ?status, "realtime channel finished");
        self.emit(RealtimeEventKind::Status(status)).await;
    }

    async fn run_inner(&mut self, mut cmd_rx: mpsc::UnboundedReceiver<Command>) -> ChannelStatus {
        let mut token_rx = self.client.token_watch();
        let token = match self.client.access_token().await {
            Ok(t) => t,
            Err(e) => return ChannelStatus::ChannelError(format!("no usable access token: {e}")),
        };
        token_rx.borrow_and_update();
        let url = websocket_url(
            self.client.url(),
            self.client.anon_key(),
            &self.opts.params,
            self.opts.vsn,
        );
        let connect = tokio::time::timeout(
            self.opts.push_timeout,
            // tungstenite zero-fills the whole spare read buffer on every
            // read (128 KiB by default: ~2 × 128 KiB memset per pushed job,
            // the largest cost on the gateway's dispatch path); frames here
            // are small and the buffer still grows for a large one.
            tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .read_buffer_size(8 * 1024),
                ),
                true,
            ),
        )
        .await;
        let ws = match connect {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                return ChannelStatus::ChannelError(format!("socket connect failed: {e}"))
            }
            Err(_) => return ChannelStatus::ChannelError("socket connect timed out".into()),
        };
        let (mut sink, mut stream) = ws.split();
        let status = self
            .session(&mut sink, &mut stream, &mut cmd_rx, &mut token_rx, token)
            .await;
        if let ChannelStatus::Closed(CloseReason::HeartbeatTimeout) = status {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "heartbeat timeout".into(),
                })))
                .await;
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
        status
    }

    async fn session(
        &mut self,
        sink: &mut WsSink,
        stream: &mut (impl futures_util::Stream<
            Item = std::result::Result<Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin),
        cmd_rx: &mut mpsc::UnboundedReceiver<Command>,
        token_rx: &mut tokio::sync::watch::Receiver<String>,
        token: String,
    ) -> ChannelStatus {
        let join_ref = self.make_ref();
        let join = Frame {
            join_ref: Some(join_ref.clone()),
            ref_: Some(join_ref.clone()),
            topic: self.topic.clone(),
            event: "phx_join".into(),
            payload: join_payload(&self.bindings, Some(&token)),
        };
        if let Err(e) = self.push(sink, join).await {
            return ChannelStatus::ChannelError(e.to_string());
        }
        let mut st = State {
            join_ref,
            joined: false,
            server_ids: Vec::new(),
            pending_heartbeat: None,
            leave_ref: None,
            last_token: token,
        };
        let join_deadline = Instant::now() + self.opts.push_timeout;
        let mut leave_deadline = Instant::now() + Duration::from_secs(3600 * 24 * 365);
        let hb = self.opts.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        let mut cmd_open = true;
        let mut token_open = true;
        loop {
            let flow = tokio::select! {
                msg = stream.next() => match msg {
                    None => Flow::End(ChannelStatus::ChannelError("socket closed".into())),
                    Some(Err(e)) => Flow::End(ChannelStatus::ChannelError(format!("socket error: {e}"))),
                    Some(Ok(Message::Text(t))) => self.on_text(sink, &mut st, t.as_str()).await,
                    Some(Ok(Message::Close(frame))) => {
                        let detail = frame
                            .map(|f| if f.reason.is_empty() {
                                format!("{}", u16::from(f.code))
                            } else {
                                format!("{} ({})", u16::from(f.code), f.reason)
                            })
                            .unwrap_or_else(|| "no code".into());
                        if st.leave_ref.is_some() {
                            Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed))
                        } else {
                            Flow::End(ChannelStatus::ChannelError(format!("socket closed: {detail}")))
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        tracing::debug!("ignoring binary realtime frame");
                        Flow::Continue
                    }
                    Some(Ok(_)) => Flow::Continue,
                },
                _ = tokio::time::sleep_until(join_deadline), if !st.joined && st.leave_ref.is_none() => {
                    let leave = Frame {
                        join_ref: Some(st.join_ref.clone()),
                        ref_: Some(self.make_ref()),
                        topic: self.topic.clone(),
                        event: "phx_leave".into(),
                        payload: json!({}),
                    };
                    let _ = self.push(sink, leave).await;
                    Flow::End(ChannelStatus::TimedOut)
                }
                _ = tokio::time::sleep_until(leave_deadline), if st.leave_ref.is_some() => {
                    Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed))
                }
                _ = heartbeat.tick() => {
                    if st.pending_heartbeat.is_some() {
                        tracing::warn!(topic = %self.topic, "realtime heartbeat timeout");
                        Flow::End(ChannelStatus::Closed(CloseReason::HeartbeatTimeout))
                    } else {
                        let r = self.make_ref();
                        st.pending_heartbeat = Some(r.clone());
                        let frame = Frame {
                            join_ref: None,
                            ref_: Some(r),
                            topic: "phoenix".into(),
                            event: "heartbeat".into(),
                            payload: json!({}),
                        };
                        // Re-evaluate the token like realtime-js: refresh in the
                        // background if due; the watch then triggers a push.
                        let client = self.client.clone();
                        tokio::spawn(async move {
                            if let Err(e) = client.access_token().await {
                                tracing::debug!(error = %e, "token check on heartbeat failed");
                            }
                        });
                        match self.push(sink, frame).await {
                            Ok(()) => Flow::Continue,
                            Err(e) => Flow::End(ChannelStatus::ChannelError(e.to_string())),
                        }
                    }
                }
                changed = token_rx.changed(), if token_open => {
                    if changed.is_err() {
                        token_open = false;
                        Flow::Continue
                    } else {
                        let t = token_rx.borrow_and_update().clone();
                        self.maybe_push_token(sink, &mut st, t).await
                    }
                }
                cmd = cmd_rx.recv(), if cmd_open && st.leave_ref.is_none() => {
                    if cmd.is_none() {
                        cmd_open = false;
                    }
                    let r = self.make_ref();
                    let leave = Frame {
                        join_ref: Some(st.join_ref.clone()),
                        ref_: Some(r.clone()),
                        topic: self.topic.clone(),
                        event: "phx_leave".into(),
                        payload: json!({}),
                    };
                    st.leave_ref = Some(r);
                    leave_deadline = Instant::now() + self.opts.push_timeout;
                    match self.push(sink, leave).await {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed)),
                    }
                }
            };
            if let Flow::End(status) = flow {
                return status;
            }
        }
    }

    async fn maybe_push_token(&mut self, sink: &mut WsSink, st: &mut State, token: String) -> Flow {
        if !st.joined || st.leave_ref.is_some() || token == st.last_token {
            return Flow::Continue;
        }
        st.last_token = token.clone();
        let frame = Frame {
            join_ref: Some(st.join_ref.clone()),
            ref_: Some(self.make_ref()),
            topic: self.topic.clone(),
            event: "access_token".into(),
            payload: json!({ "access_token": token }),
        };
        tracing::debug!(topic = %self.topic, "pushing rotated access token to realtime");
        match self.push(sink, frame).await {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::End(ChannelStatus::ChannelError(e.to_string())),
        }
    }

    async fn on_text(&mut self, sink: &mut WsSink, st: &mut State, text: &str) -> Flow {
        tracing::trace!(frame = %text, "realtime recv");
        let frame = match Frame::decode(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "skipping malformed realtime frame");
                return Flow::Continue;
            }
        };
        if frame.topic == "phoenix" {
            if frame.event == "phx_reply"
                && frame.ref_.is_some()
                && frame.ref_ == st.pending_heartbeat
            {
                st.pending_heartbeat = None;
            }
            return Flow::Continue;
        }
        if frame.topic != self.topic {
            tracing::debug!(topic = %frame.topic, "ignoring frame for another topic");
            return Flow::Continue;
        }
        if let Some(jr) = &frame.join_ref {
            if *jr != st.join_ref {
                tracing::debug!(join_ref = %jr, "dropping stale realtime frame");
                return Flow::Continue;
            }
        }
        match frame.event.as_str() {
            "phx_reply" => self.on_reply(sink, st, &frame).await,
            "phx_close" => {
                if frame.ref_.is_some() && frame.ref_.as_deref() != Some(st.join_ref.as_str()) {
                    return Flow::Continue;
                }
                if st.leave_ref.is_some() {
                    Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed))
                } else {
                    Flow::End(ChannelStatus::Closed(CloseReason::ServerClosed))
                }
            }
            "phx_error" => {
                if frame.ref_.is_some() && frame.ref_.as_deref() != Some(st.join_ref.as_str()) {
                    return Flow::Continue;
                }
                Flow::End(ChannelStatus::ChannelError(
                    "channel error: transport failure".into(),
                ))
            }
            "postgres_changes" => {
                if let Some(change) = self.match_change(st, &frame.payload) {
                    if !self.emit(RealtimeEventKind::Change(Box::new(change))).await {
                        return self.receiver_gone(sink, st).await;
                    }
                }
                Flow::Continue
            }
            "system" => {
                let status = frame.payload.get("status").and_then(Value::as_str);
                if status == Some("error") {
                    tracing::warn!(payload = %frame.payload, "realtime system error");
                } else {
                    tracing::debug!(payload = %frame.payload, "realtime system message");
                }
                Flow::Continue
            }
            other => {
                tracing::debug!(event = other, "ignoring realtime event");
                Flow::Continue
            }
        }
    }

    async fn receiver_gone(&mut self, sink: &mut WsSink, st: &mut State) -> Flow {
        let leave = Frame {
            join_ref: Some(st.join_ref.clone()),
            ref_: Some(self.make_ref()),
            topic: self.topic.clone(),
            event: "phx_leave".into(),
            payload: json!({}),
        };
        let _ = self.push(sink, leave).await;
        Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed))
    }

    async fn on_reply(&mut self, sink: &mut WsSink, st: &mut State, frame: &Frame) -> Flow {
        let status = frame.payload.get("status").and_then(Value::as_str);
        let response = frame
            .payload
            .get("response")
            .cloned()
            .unwrap_or(Value::Null);
        if st.leave_ref.is_some() && frame.ref_ == st.leave_ref {
            return Flow::End(ChannelStatus::Closed(CloseReason::Unsubscribed));
        }
        if st.joined || frame.ref_.as_deref() != Some(st.join_ref.as_str()) {
            if status == Some("error") {
                tracing::debug!(response = %response, "realtime push refused");
            }
            return Flow::Continue;
        }
        match status {
            Some("ok") => {
                let echoed = response.get("postgres_changes");
                match echoed {
                    None | Some(Value::Null) => {
                        st.server_ids = vec![None; self.bindings.len()];
                    }
                    Some(Value::Array(list)) => {
                        if list.len() < self.bindings.len()
                            || !self
                                .bindings
                                .iter()
                                .zip(list)
                                .all(|(b, e)| b.matches_echo(e))
                        {
                            let leave = Frame {
                                join_ref: Some(st.join_ref.clone()),
                                ref_: Some(self.make_ref()),
                                topic: self.topic.clone(),
                                event: "phx_leave".into(),
                                payload: json!({}),
                            };
                            let _ = self.push(sink, leave).await;
                            return Flow::End(ChannelStatus::ChannelError(
                                "mismatch between server and client bindings for postgres changes"
                                    .into(),
                            ));
                        }
                        st.server_ids = list.iter().map(|e| e.get("id").cloned()).collect();
                    }
                    Some(other) => {
                        return Flow::End(ChannelStatus::ChannelError(format!(
                            "malformed join reply postgres_changes: {other}"
                        )))
                    }
                }
                st.joined = true;
                if !self
                    .emit(RealtimeEventKind::Status(ChannelStatus::Subscribed))
                    .await
                {
                    return self.receiver_gone(sink, st).await;
                }
                // Like setAuth() after join: push a token that changed meanwhile.
                let current = self.client.token_watch().borrow().clone();
                self.maybe_push_token(sink, st, current).await
            }
            _ => {
                let reason = match &response {
                    Value::Object(m) if !m.is_empty() => m
                        .values()
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    Value::Null => "join refused".to_string(),
                    other => other.to_string(),
                };
                Flow::End(ChannelStatus::ChannelError(reason))
            }
        }
    }

    fn match_change(&self, st: &State, payload: &Value) -> Option<PostgresChange> {
        let ids = payload.get("ids").and_then(Value::as_array);
        let data = payload.get("data")?;
        let type_str = data.get("type").and_then(Value::as_str).unwrap_or("");
        let matched = self.bindings.iter().enumerate().any(|(i, b)| {
            let id_ok = match (st.server_ids.get(i).cloned().flatten(), ids) {
                (Some(id), Some(ids)) => ids.contains(&id),
                // Server without binding ids: accept.
                (None, _) => true,
                (Some(_), None) => false,
            };
            id_ok && (b.event == "*" || b.event.eq_ignore_ascii_case(type_str))
        });
        if !matched {
            tracing::debug!("postgres_changes not matching any binding");
            return None;
        }
        let columns = data.get("columns").and_then(Value::as_array);
        let conv = |k: &str| {
            data.get(k)
                .filter(|v| !v.is_null())
                .map(|v| convert_record(columns, v))
        };
        Some(PostgresChange {
            change_type: ChangeType::parse(type_str),
            schema: data
                .get("schema")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            table: data
                .get("table")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            commit_timestamp: data
                .get("commit_timestamp")
                .and_then(Value::as_str)
                .map(str::to_string),
            record: conv("record"),
            old_record: conv("old_record"),
            errors: data.get("errors").filter(|v| !v.is_null()).cloned(),
        })
    }
}

struct State {
    join_ref: String,
    joined: bool,
    /// Binding ids from the join reply (None: server gave none).
    server_ids: Vec<Option<Value>>,
    pending_heartbeat: Option<String>,
    leave_ref: Option<String>,
    last_token: String,
}

/// realtime-js value conversion: strings of numeric / bool / json columns
/// become typed JSON; already-typed values pass through.
pub fn convert_record(columns: Option<&Vec<Value>>, record: &Value) -> Value {
    let (Some(columns), Value::Object(m)) = (columns, record) else {
        return record.clone();
    };
    let mut out = m.clone();
    for c in columns {
        let (Some(name), Some(ty)) = (
            c.get("name").and_then(Value::as_str),
            c.get("type").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(Value::String(s)) = m.get(name) else {
            continue;
        };
        let converted = match ty {
            "int2" | "int4" | "int8" | "oid" => s.parse::<i64>().ok().map(Value::from),
            "float4" | "float8" | "numeric" => s
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            "bool" => match s.as_str() {
                "t" | "true" => Some(Value::Bool(true)),
                "f" | "false" => Some(Value::Bool(false)),
                _ => None,
            },
            "json" | "jsonb" => serde_json::from_str(s).ok(),
            "timestamp" => Some(Value::String(s.replacen(' ', "T", 1))),
            _ => None,
        };
        if let Some(v) = converted {
            out.insert(name.to_string(), v);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_both_serializers() {
        let f = Frame {
            join_ref: Some("6".into()),
            ref_: Some("6".into()),
            topic: "realtime:room1".into(),
            event: "phx_join".into(),
            payload: json!({"config":{}}),
        };
        assert_eq!(
            f.encode(Vsn::V2),
            r#"["6","6","realtime:room1","phx_join",{"config":{}}]"#
        );
        assert_eq!(
            f.encode(Vsn::V1),
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#
        );
        assert_eq!(Frame::decode(&f.encode(Vsn::V2)).unwrap(), f);
        assert_eq!(Frame::decode(&f.encode(Vsn::V1)).unwrap(), f);
        let hb = Frame {
            join_ref: None,
            ref_: Some("7".into()),
            topic: "phoenix".into(),
            event: "heartbeat".into(),
            payload: json!({}),
        };
        assert_eq!(hb.encode(Vsn::V2), r#"[null,"7","phoenix","heartbeat",{}]"#);
        assert_eq!(
            hb.encode(Vsn::V1),
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#
        );
        // server V1 reply without join_ref
        let r = Frame::decode(r#"{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"6"}"#).unwrap();
        assert_eq!(r.join_ref, None);
        assert_eq!(r.ref_.as_deref(), Some("6"));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "nope",
            "[1,2,3]",
            r#"[null,null,5,"x",{}]"#,
            r#"{"event":"x"}"#,
            "42",
            r#"[null,{},"t","e",{}]"#,
        ] {
            assert!(Frame::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_url_encoding() {
        assert_eq!(
            websocket_url("http://127.0.0.1:54321/", "a b+c", &[("eventsPerSecond".into(), "10".into())], Vsn::V1),
            "ws://127.0.0.1:54321/realtime/v1/websocket?apikey=a%20b%2Bc&eventsPerSecond=10&vsn=1.0.0"
        );
        assert_eq!(
            websocket_url("https://abc.supabase.co", "k", &[], Vsn::V2),
            "wss://abc.supabase.co/realtime/v1/websocket?apikey=k&vsn=2.0.0"
        );
    }

    #[test]
    fn join_payload_shape() {
        let b = PostgresBinding::new("INSERT", "public", "gateway_jobs").filter("team_id=eq.7");
        let p = join_payload(std::slice::from_ref(&b), Some("jwt"));
        assert_eq!(
            p,
            json!({"config":{"broadcast":{"ack":false,"self":false},"presence":{"key":"","enabled":false},
                "postgres_changes":[{"event":"INSERT","schema":"public","table":"gateway_jobs","filter":"team_id=eq.7"}],
                "private":false},"access_token":"jwt"})
        );
        assert!(b.matches_echo(&json!({"id":1,"event":"INSERT","schema":"public","table":"gateway_jobs","filter":"team_id=eq.7"})));
        assert!(!b.matches_echo(&json!({"id":1,"event":"*","schema":"public","table":"gateway_jobs","filter":"team_id=eq.7"})));
        assert!(!b.matches_echo(
            &json!({"id":1,"event":"INSERT","schema":"public","table":"gateway_jobs"})
        ));
        let nofilter = PostgresBinding::new("*", "public", "t");
        assert!(nofilter.matches_echo(
            &json!({"id":1,"event":"*","schema":"public","table":"t","filter":null})
        ));
    }

    #[test]
    fn record_conversion_and_backoff() {
        let cols = vec![
            json!({"name":"id","type":"int8"}),
            json!({"name":"ok","type":"bool"}),
            json!({"name":"p","type":"jsonb"}),
            json!({"name":"s","type":"text"}),
        ];
        let rec = json!({"id":"7","ok":"t","p":"{\"a\":1}","s":"12"});
        assert_eq!(
            convert_record(Some(&cols), &rec),
            json!({"id":7,"ok":true,"p":{"a":1},"s":"12"})
        );
        let typed = json!({"id":7,"ok":true});
        assert_eq!(convert_record(Some(&cols), &typed), typed);
        let mut b = ReconnectBackoff::new();
        let d: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, vec![1, 2, 5, 10, 10]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
