//! Realtime channel behaviour against a scripted loopback WebSocket server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::Router;
use common::*;
use panorama_supabase::realtime::Frame;
use panorama_supabase::{
    ChannelStatus, Client, CloseReason, PostgresBinding, RealtimeEvent, RealtimeEventKind,
    RealtimeOptions, Session, Vsn,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The test drives the server side: frames the client sent arrive on
/// `from_client`; strings pushed to `to_client` are sent as text frames.
struct Bridge {
    from_client: mpsc::UnboundedSender<String>,
    to_client: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    query: Mutex<Option<String>>,
}

async fn ws_handler(
    State(b): State<Arc<Bridge>>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    *b.query.lock().unwrap() = q;
    ws.on_upgrade(move |socket| pump(socket, b))
}

async fn pump(mut socket: WebSocket, b: Arc<Bridge>) {
    // One scripted socket per test; later sockets are closed at once.
    let Some(mut rx) = b.to_client.lock().unwrap().take() else {
        return;
    };
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => { let _ = b.from_client.send(t.to_string()); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = b.from_client.send("<closed>".into());
                    return;
                }
                _ => {}
            },
            out = rx.recv() => match out {
                Some(text) => { if socket.send(Message::Text(text.into())).await.is_err() { return; } }
                None => return,
            }
        }
    }
}

async fn token_handler() -> impl IntoResponse {
    let exp = now() + 3600;
    axum::Json(session_body(&jwt("rotated", exp), "rt-2", exp))
}

struct Harness {
    client: Client,
    from_client: mpsc::UnboundedReceiver<String>,
    to_client: mpsc::UnboundedSender<String>,
    bridge: Arc<Bridge>,
}

async fn harness() -> Harness {
    let (ftx, frx) = mpsc::unbounded_channel();
    let (ttx, trx) = mpsc::unbounded_channel();
    let bridge = Arc::new(Bridge {
        from_client: ftx,
        to_client: Mutex::new(Some(trx)),
        query: Mutex::new(None),
    });
    let app = Router::new()
        .route("/realtime/v1/websocket", any(ws_handler))
        .route("/auth/v1/token", post(token_handler))
        .with_state(bridge.clone());
    let addr = serve(app).await;
    let client = Client::new(&format!("http://{addr}"), "anon-key").unwrap();
    Harness {
        client,
        from_client: frx,
        to_client: ttx,
        bridge,
    }
}

impl Harness {
    async fn next_frame(&mut self) -> Frame {
        let text = tokio::time::timeout(Duration::from_secs(5), self.from_client.recv())
            .await
            .expect("no frame from client")
            .expect("bridge closed");
        Frame::decode(&text).unwrap_or_else(|e| panic!("client sent bad frame {text}: {e}"))
    }
    fn send(&self, f: Frame, vsn: Vsn) {
        self.to_client.send(f.encode(vsn)).unwrap();
    }
    fn send_raw(&self, s: &str) {
        self.to_client.send(s.to_string()).unwrap();
    }
}

fn reply(to: &Frame, status: &str, response: Value) -> Frame {
    Frame {
        join_ref: to.join_ref.clone(),
        ref_: to.ref_.clone(),
        topic: to.topic.clone(),
        event: "phx_reply".into(),
        payload: json!({"status": status, "response": response}),
    }
}

fn binding() -> PostgresBinding {
    PostgresBinding::new("INSERT", "public", "gateway_jobs").filter("team_id=eq.7")
}

fn opts(vsn: Vsn) -> RealtimeOptions {
    RealtimeOptions {
        vsn,
        heartbeat_interval: Duration::from_millis(300),
        push_timeout: Duration::from_millis(800),
        ..Default::default()
    }
}

async fn next_event(rx: &mut mpsc::Receiver<RealtimeEvent>) -> RealtimeEvent {
    recv_timeout(rx, 5).await
}

#[tokio::test]
async fn join_event_heartbeat_token_push_and_leave_v2() {
    let mut h = harness().await;
    let access = jwt("gw", now() + 3600);
    h.client.restore_session(Session {
        access_token: access.clone(),
        refresh_token: "rt-1".into(),
        expires_at: now() + 3600,
        token_type: "bearer".into(),
        user: None,
    });
    let (rt, mut events) = h.client.realtime(opts(Vsn::V2));
    let ch = rt.channel("gateway_jobs_42", vec![binding()]);
    let gen = ch.generation();

    let join = h.next_frame().await;
    assert_eq!(
        h.bridge.query.lock().unwrap().as_deref(),
        Some("apikey=anon-key&vsn=2.0.0")
    );
    assert_eq!(join.event, "phx_join");
    assert_eq!(join.topic, "realtime:gateway_jobs_42");
    assert_eq!(join.join_ref, join.ref_);
    assert_eq!(join.payload["access_token"], json!(access));
    assert_eq!(
        join.payload["config"]["postgres_changes"],
        json!([{"event":"INSERT","schema":"public","table":"gateway_jobs","filter":"team_id=eq.7"}])
    );
    assert_eq!(join.payload["config"]["private"], json!(false));
    h.send(
        reply(
            &join,
            "ok",
            json!({"postgres_changes":[{"id":1000,"event":"INSERT","schema":"public","table":"gateway_jobs","filter":"team_id=eq.7"}]}),
        ),
        Vsn::V2,
    );
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, gen);
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Subscribed)
    );

    // malformed frames and non-matching ids are skipped
    h.send_raw("this is not json");
    h.send_raw(r#"[1,2]"#);
    h.send_raw(r#"[null,null,"realtime:gateway_jobs_42","postgres_changes",{"ids":[5],"data":{"type":"INSERT","schema":"public","table":"gateway_jobs","record":{"id":"x"}}}]"#);
    // stale join_ref is dropped
    h.send_raw(r#"["999",null,"realtime:gateway_jobs_42","phx_close",{}]"#);
    h.send_raw(r#"[null,null,"realtime:gateway_jobs_42","postgres_changes",{"ids":[1000],"data":{"schema":"public","table":"gateway_jobs","commit_timestamp":"2025-01-01T12:00:00.123Z","type":"INSERT","columns":[{"name":"team_id","type":"int8"}],"record":{"id":"j1","team_id":"7","status":"queued"},"errors":null}}]"#);
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, gen);
    let RealtimeEventKind::Change(change) = ev.kind else {
        panic!("expected a change, got {ev:?}")
    };
    assert_eq!(change.table, "gateway_jobs");
    assert_eq!(
        change.record,
        Some(json!({"id":"j1","team_id":7,"status":"queued"}))
    );
    assert_eq!(change.old_record, None);

    // heartbeat arrives with a null join_ref; answer it
    let hb = loop {
        let f = h.next_frame().await;
        if f.event == "heartbeat" {
            break f;
        }
    };
    assert_eq!(hb.topic, "phoenix");
    assert_eq!(hb.join_ref, None);
    h.send(reply(&hb, "ok", json!({})), Vsn::V2);

    // rotate the session → access_token push on the channel
    let rotated = h.client.refresh().await.unwrap();
    let push = loop {
        let f = h.next_frame().await;
        if f.event == "heartbeat" {
            h.send(reply(&f, "ok", json!({})), Vsn::V2);
            continue;
        }
        break f;
    };
    assert_eq!(push.event, "access_token");
    assert_eq!(push.join_ref, join.join_ref);
    assert_eq!(push.payload, json!({"access_token": rotated.access_token}));

    // unsubscribe → phx_leave; reply → Closed(Unsubscribed)
    let unsub = tokio::spawn(ch.unsubscribe());
    let leave = loop {
        let f = h.next_frame().await;
        if f.event == "phx_leave" {
            break f;
        }
        if f.event == "heartbeat" {
            h.send(reply(&f, "ok", json!({})), Vsn::V2);
        }
    };
    assert_eq!(leave.join_ref, join.join_ref);
    h.send(reply(&leave, "ok", json!({})), Vsn::V2);
    unsub.await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, gen);
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Closed(CloseReason::Unsubscribed))
    );
}

#[tokio::test]
async fn missing_heartbeat_reply_closes_v1() {
    let mut h = harness().await;
    let (rt, mut events) = h.client.realtime(opts(Vsn::V1));
    let ch = rt.channel("room1", vec![]);
    let join = h.next_frame().await;
    assert_eq!(
        h.bridge.query.lock().unwrap().as_deref(),
        Some("apikey=anon-key&vsn=1.0.0")
    );
    // no session: the anon key is the access token
    assert_eq!(join.payload["access_token"], "anon-key");
    // V1 server replies have no join_ref
    h.send_raw(&format!(
        r#"{{"topic":"realtime:room1","event":"phx_reply","payload":{{"status":"ok","response":{{}}}},"ref":"{}"}}"#,
        join.ref_.clone().unwrap()
    ));
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Subscribed)
    );
    let hb = h.next_frame().await;
    assert_eq!(hb.event, "heartbeat");
    // never answered → Closed(HeartbeatTimeout) and the socket closes
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, ch.generation());
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Closed(CloseReason::HeartbeatTimeout))
    );
    loop {
        let text = recv_timeout_unbounded(&mut h.from_client).await;
        if text == "<closed>" {
            break;
        }
    }
    assert!(
        ch.is_finished()
            || tokio::time::timeout(Duration::from_secs(2), async {
                while !ch.is_finished() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .is_ok()
    );
}

async fn recv_timeout_unbounded(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

#[tokio::test]
async fn join_error_reply_is_channel_error() {
    let mut h = harness().await;
    let (rt, mut events) = h.client.realtime(opts(Vsn::V2));
    let _ch = rt.channel("room1", vec![binding()]);
    let join = h.next_frame().await;
    h.send(
        reply(
            &join,
            "error",
            json!({"reason":"Unauthorized: You do not have permissions to read from this Channel topic: room1"}),
        ),
        Vsn::V2,
    );
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::ChannelError(
            "Unauthorized: You do not have permissions to read from this Channel topic: room1"
                .into()
        ))
    );
}

#[tokio::test]
async fn mismatched_bindings_are_channel_error() {
    let mut h = harness().await;
    let (rt, mut events) = h.client.realtime(opts(Vsn::V2));
    let _ch = rt.channel("room1", vec![binding()]);
    let join = h.next_frame().await;
    h.send(
        reply(
            &join,
            "ok",
            json!({"postgres_changes":[{"id":1,"event":"*","schema":"public","table":"gateway_jobs"}]}),
        ),
        Vsn::V2,
    );
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::ChannelError(
            "mismatch between server and client bindings for postgres changes".into()
        ))
    );
    let leave = h.next_frame().await;
    assert_eq!(leave.event, "phx_leave");
}

#[tokio::test]
async fn no_join_reply_times_out_and_generations_differ() {
    let mut h = harness().await;
    let (rt, mut events) = h.client.realtime(RealtimeOptions {
        heartbeat_interval: Duration::from_secs(5),
        ..opts(Vsn::V2)
    });
    let ch = rt.channel("room1", vec![binding()]);
    let join = h.next_frame().await;
    assert_eq!(join.event, "phx_join");
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, ch.generation());
    assert_eq!(ev.kind, RealtimeEventKind::Status(ChannelStatus::TimedOut));
    let leave = h.next_frame().await;
    assert_eq!(leave.event, "phx_leave");
    assert_eq!(leave.join_ref, join.join_ref);
    // a replacement channel gets a new generation (the server script only
    // accepts one socket, so just check the id and the terminal status)
    let ch2 = rt.channel("room1", vec![binding()]);
    assert!(ch2.generation() > ch.generation());
    let ev = next_event(&mut events).await;
    assert_eq!(ev.generation, ch2.generation());
    assert!(matches!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::ChannelError(_))
    ));
}

#[tokio::test]
async fn server_close_is_closed() {
    let mut h = harness().await;
    let (rt, mut events) = h.client.realtime(opts(Vsn::V2));
    let _ch = rt.channel("room1", vec![]);
    let join = h.next_frame().await;
    h.send(reply(&join, "ok", json!({"postgres_changes": []})), Vsn::V2);
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Subscribed)
    );
    h.send(
        Frame {
            join_ref: join.join_ref.clone(),
            ref_: join.join_ref.clone(),
            topic: join.topic.clone(),
            event: "phx_close".into(),
            payload: json!({}),
        },
        Vsn::V2,
    );
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev.kind,
        RealtimeEventKind::Status(ChannelStatus::Closed(CloseReason::ServerClosed))
    );
}

/// An `https://` project URL gives a `wss://` socket: the TLS connector is
/// compiled in, so the attempt fails on the network (nothing listens on
/// this loopback port), not with "TLS support not enabled".
#[tokio::test]
async fn wss_urls_are_supported() {
    let client = Client::new("https://127.0.0.1:9", "anon").unwrap();
    let (rt, mut events) = client.realtime(RealtimeOptions::default());
    let _ch = rt.channel("gateway_jobs_1", vec![]);
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a status within 10 s")
        .expect("an event");
    match event.kind {
        RealtimeEventKind::Status(ChannelStatus::ChannelError(message)) => {
            assert!(!message.to_lowercase().contains("tls"), "{message}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
}
