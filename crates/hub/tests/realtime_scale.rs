//! Realtime fan-out at scale: the hub's one change dispatcher routes each
//! committed change only to the sockets whose bindings can match, a slow
//! socket loses changes alone (and is told), and registrations do not
//! outlive their channels or sockets. In-process hub on 127.0.0.1, rows
//! written through the REST API with the service key, Phoenix vsn 2.0.0
//! clients.

use futures_util::{SinkExt, StreamExt};
use panorama_hub::api::{self, AppState};
use panorama_hub::auth::Keys;
use panorama_hub::changes::ChangeFeed;
use panorama_hub::realtime::RealtimeOptions;
use panorama_hub::store::sqlite::SqliteStore;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SECRET: &[u8] = b"realtime-scale-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

struct Hub {
    addr: String,
    state: Arc<AppState>,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Gateway {
    id: String,
    team: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Hub {
    /// A hub whose realtime route uses `opts`.
    async fn start(opts: RealtimeOptions) -> Hub {
        let feed = ChangeFeed::default();
        let store = SqliteStore::open_in_memory(feed.clone()).unwrap();
        let state = AppState::new(Arc::new(store), Keys::from_secret(SECRET, now()), feed);
        let app = api::router_with_realtime(state.clone(), opts);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Hub {
            addr,
            state,
            http: reqwest::Client::new(),
        }
    }

    async fn rest(&self, method: reqwest::Method, path: &str, body: Value) -> Vec<Value> {
        let key = &self.state.keys.service_key;
        let res = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .header("apikey", key)
            .header("authorization", format!("Bearer {key}"))
            .header("prefer", "return=representation")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body.as_array().unwrap().clone()
    }

    async fn insert(&self, table: &str, rows: Value) -> Vec<Value> {
        self.rest(reqwest::Method::POST, &format!("/rest/v1/{table}"), rows)
            .await
    }

    fn ids(rows: &[Value]) -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// `teams` teams of `per_team` gateways each, gateways in team order.
    async fn gateways(&self, teams: usize, per_team: usize) -> Vec<Gateway> {
        let names: Vec<Value> = (0..teams)
            .map(|i| json!({"name": format!("t{i}")}))
            .collect();
        let team_ids = Self::ids(&self.insert("teams", Value::Array(names)).await);
        let rows: Vec<Value> = team_ids
            .iter()
            .flat_map(|t| (0..per_team).map(move |_| json!({"team_id": t, "device_name": "box"})))
            .collect();
        let mut out = Vec::new();
        for chunk in rows.chunks(500) {
            for r in self
                .insert("team_gateways", Value::Array(chunk.to_vec()))
                .await
            {
                out.push(Gateway {
                    id: r["id"].as_str().unwrap().to_string(),
                    team: r["team_id"].as_str().unwrap().to_string(),
                });
            }
        }
        out
    }

    fn token(&self, gw: &Gateway) -> String {
        self.state.keys.mint_gateway_token(
            "6a1c2b9e-0000-4000-8000-000000000001",
            "6a1c2b9e-0000-4000-8000-000000000002",
            &gw.id,
            &gw.team,
            now(),
            3600,
        )
    }

    /// One job per gateway, in order; returns the job ids.
    async fn jobs(&self, gws: &[Gateway], payload: Value) -> Vec<String> {
        let mut ids = Vec::new();
        for chunk in gws.chunks(500) {
            let rows: Vec<Value> = chunk
                .iter()
                .map(|g| json!({"team_id": g.team, "gateway_id": g.id, "job_type": "diagnostic", "payload": payload}))
                .collect();
            ids.extend(Self::ids(
                &self.insert("gateway_jobs", Value::Array(rows)).await,
            ));
        }
        ids
    }

    async fn connect(&self) -> Ws {
        let stream = TcpStream::connect(&self.addr).await.unwrap();
        self.connect_over(stream).await
    }

    async fn connect_over(&self, stream: TcpStream) -> Ws {
        let url = format!(
            "ws://{}/realtime/v1/websocket?apikey={}&vsn=2.0.0",
            self.addr, self.state.keys.anon_key
        );
        let (stream, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        Ws { stream, refs: 0 }
    }

    /// Polls the dispatcher until `f` holds (registration is asynchronous
    /// to the client: a socket's close is seen when its task ends).
    async fn until(&self, what: &str, f: impl Fn(&AppState) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f(&self.state) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn subs(s: &AppState) -> usize {
    s.dispatcher().subscriptions()
}

fn entries(s: &AppState) -> usize {
    s.dispatcher().index_entries()
}

struct Ws {
    stream: WebSocketStream<TcpStream>,
    refs: u64,
}

/// A server frame (vsn 2.0.0 array).
#[derive(Debug)]
struct In {
    join_ref: Value,
    ref_: Value,
    topic: String,
    event: String,
    payload: Value,
}

impl Ws {
    async fn push(&mut self, join_ref: Value, topic: &str, event: &str, payload: Value) -> String {
        self.refs += 1;
        let r = self.refs.to_string();
        let text = json!([join_ref, r, topic, event, payload]).to_string();
        self.stream.send(Message::text(text)).await.unwrap();
        r
    }

    async fn recv_within(&mut self, wait: Duration) -> Option<In> {
        loop {
            let msg = match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return None,
                Ok(m) => m.expect("socket ended").expect("socket failed"),
            };
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            };
            let a: Vec<Value> = serde_json::from_str(&text).unwrap();
            return Some(In {
                join_ref: a[0].clone(),
                ref_: a[1].clone(),
                topic: a[2].as_str().unwrap().into(),
                event: a[3].as_str().unwrap().into(),
                payload: a[4].clone(),
            });
        }
    }

    async fn recv(&mut self) -> In {
        self.recv_within(WAIT)
            .await
            .expect("no frame from the server in time")
    }

    /// Joins `realtime:<name>` and expects success (and the `system` ok
    /// when there are bindings).
    async fn join(&mut self, name: &str, bindings: Value, token: Option<&str>) {
        let mut payload = json!({"config": {"postgres_changes": bindings}});
        if let Some(t) = token {
            payload["access_token"] = json!(t);
        }
        self.refs += 1;
        let jr = self.refs.to_string();
        let topic = format!("realtime:{name}");
        let text = json!([jr, jr, topic, "phx_join", payload]).to_string();
        self.stream.send(Message::text(text)).await.unwrap();
        let r = self.recv().await;
        assert_eq!(
            (r.event.as_str(), &r.ref_, &r.payload["status"]),
            ("phx_reply", &json!(jr), &json!("ok")),
            "{r:?}"
        );
        if !bindings.as_array().unwrap().is_empty() {
            let sys = self.recv().await;
            assert_eq!(sys.event, "system", "{sys:?}");
            assert_eq!(sys.payload["status"], "ok", "{sys:?}");
        }
    }

    async fn leave(&mut self, name: &str, join_ref: &str) {
        let topic = format!("realtime:{name}");
        let r = self
            .push(json!(join_ref), &topic, "phx_leave", json!({}))
            .await;
        let reply = self.recv().await;
        assert_eq!(
            (reply.event.as_str(), &reply.ref_),
            ("phx_reply", &json!(r))
        );
        assert_eq!(self.recv().await.event, "phx_close");
    }

    /// The next frame must be a `postgres_changes` on `name` for row `id`.
    async fn change(&mut self, name: &str, id: &str) -> In {
        let r = self.recv().await;
        assert_eq!(
            (r.topic.as_str(), r.event.as_str()),
            (format!("realtime:{name}").as_str(), "postgres_changes"),
            "{r:?}"
        );
        assert_eq!(r.payload["data"]["record"]["id"], id, "{r:?}");
        r
    }

    /// Nothing arrives for a while (a negative check; the positive checks
    /// below it use in-order sentinels instead).
    async fn quiet(&mut self) {
        if let Some(r) = self.recv_within(Duration::from_millis(300)).await {
            panic!("unexpected frame {r:?}");
        }
    }
}

fn jobs_binding(event: &str, filter: Option<String>) -> Value {
    let mut b = json!({"event": event, "schema": "public", "table": "gateway_jobs"});
    if let Some(f) = filter {
        b["filter"] = json!(f);
    }
    b
}

#[tokio::test]
async fn filtered_bindings_receive_only_matching_rows() {
    let hub = Hub::start(RealtimeOptions::default()).await;
    let gws = hub.gateways(2, 1).await;
    let (a, b) = (gws[0].clone(), gws[1].clone());
    let service = hub.state.keys.service_key.clone();

    // Gateway A, filtered on its team (exact-lookup path).
    let mut wa = hub.connect().await;
    wa.join(
        "a",
        json!([jobs_binding(
            "INSERT",
            Some(format!("team_id=eq.{}", a.team))
        )]),
        Some(&hub.token(&a)),
    )
    .await;
    // The service, on UPDATEs to `running` (eq on a text column) and on
    // INSERTs of every team but A (a `neq` filter: the per-table list).
    let mut ws = hub.connect().await;
    ws.join(
        "svc",
        json!([
            jobs_binding("UPDATE", Some("status=eq.running".into())),
            jobs_binding("INSERT", Some(format!("team_id=neq.{}", a.team)))
        ]),
        Some(&service),
    )
    .await;

    let ja = hub.jobs(std::slice::from_ref(&a), json!({})).await[0].clone();
    let jb = hub.jobs(std::slice::from_ref(&b), json!({})).await[0].clone();
    hub.rest(
        reqwest::Method::PATCH,
        &format!("/rest/v1/gateway_jobs?id=eq.{jb}"),
        json!({"status": "cancelled"}),
    )
    .await;
    hub.rest(
        reqwest::Method::PATCH,
        &format!("/rest/v1/gateway_jobs?id=eq.{ja}"),
        json!({"status": "running"}),
    )
    .await;
    let ja2 = hub.jobs(std::slice::from_ref(&a), json!({})).await[0].clone();

    // Changes arrive in commit order, so each socket's frames are exactly
    // its matching rows: A sees its two INSERTs and nothing of B's.
    wa.change("a", &ja).await;
    wa.change("a", &ja2).await;
    wa.quiet().await;
    // The service sees B's INSERT, A's job going to running (not B's
    // being cancelled), and not A's INSERTs.
    ws.change("svc", &jb).await;
    let r = ws.change("svc", &ja).await;
    assert_eq!(r.payload["data"]["type"], "UPDATE");
    assert_eq!(r.payload["ids"].as_array().unwrap().len(), 1);
    ws.quiet().await;

    // Routing work followed the bindings. A: its 2 INSERTs (exact lookup;
    // B's INSERT was not queued to it). The service: all 3 INSERTs (a `neq`
    // binding is checked per change, by the socket) and the UPDATE to
    // `running` (exact lookup; the one to `cancelled` was not queued).
    let (queued, dropped) = hub.state.dispatcher().counts();
    assert_eq!((queued, dropped), (2 + 4, 0));
}

#[tokio::test]
async fn leaving_unbinding_and_closing_stop_delivery_and_unregister() {
    let hub = Hub::start(RealtimeOptions::default()).await;
    let gws = hub.gateways(1, 1).await;
    let g = gws[0].clone();
    let token = hub.token(&g);
    let binding = || {
        json!([jobs_binding(
            "INSERT",
            Some(format!("team_id=eq.{}", g.team))
        )])
    };

    let mut ws = hub.connect().await;
    ws.join("one", binding(), Some(&token)).await; // join_ref "1"
    ws.join("two", binding(), Some(&token)).await; // join_ref "2"
    assert_eq!(subs(&hub.state), 1, "one registration per socket");
    let j1 = hub.jobs(&gws, json!({})).await[0].clone();
    // One queued change serves both channels.
    let first = ws.recv().await;
    let second = ws.recv().await;
    let mut topics = vec![first.topic.clone(), second.topic.clone()];
    topics.sort();
    assert_eq!(topics, ["realtime:one", "realtime:two"]);
    for f in [&first, &second] {
        assert_eq!(f.payload["data"]["record"]["id"], j1.as_str());
    }
    assert_eq!(hub.state.dispatcher().counts().0, 1);

    // Leaving one channel: the other still receives.
    ws.leave("one", "1").await;
    let j2 = hub.jobs(&gws, json!({})).await[0].clone();
    ws.change("two", &j2).await;
    ws.quiet().await;

    // Re-joining "two" without bindings replaces it: no more deliveries,
    // and the socket is no longer registered at all.
    ws.push(
        json!("9"),
        "realtime:two",
        "phx_join",
        json!({"config": {}}),
    )
    .await;
    assert_eq!(ws.recv().await.event, "phx_close");
    let reply = ws.recv().await;
    assert_eq!(
        (reply.event.as_str(), &reply.payload["status"]),
        ("phx_reply", &json!("ok"))
    );
    assert_eq!((subs(&hub.state), entries(&hub.state)), (0, 0));
    hub.jobs(&gws, json!({})).await;
    ws.quiet().await;

    // Binding again registers again; closing the socket unregisters it.
    ws.join("three", binding(), Some(&token)).await;
    assert_eq!(subs(&hub.state), 1);
    assert!(entries(&hub.state) > 0);
    ws.stream.close(None).await.unwrap();
    hub.until("the closed socket to unregister", |s| {
        subs(s) == 0 && entries(s) == 0
    })
    .await;
}

/// A small queue, so that the flood below stays small.
const SLOW_QUEUE: usize = 256;

#[tokio::test]
async fn a_slow_consumer_does_not_block_others_and_is_told_to_rejoin() {
    // Long send timeout: the stalled socket must survive its stall, so
    // that it can be seen being told.
    let hub = Hub::start(RealtimeOptions {
        send_timeout: Duration::from_secs(60),
        queue_capacity: SLOW_QUEUE,
        ..RealtimeOptions::default()
    })
    .await;
    let gws = hub.gateways(2, 1).await;
    let (a, b) = (gws[0].clone(), gws[1].clone());
    let service = hub.state.keys.service_key.clone();

    // The slow socket: every gateway_jobs INSERT, over a TCP connection
    // with a small receive window so that the server's sends block soon.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let slow_tcp = sock.connect(hub.addr.parse().unwrap()).await.unwrap();
    let mut slow = hub.connect_over(slow_tcp).await;
    slow.join("all", json!([jobs_binding("INSERT", None)]), Some(&service))
        .await;
    let mut fast = hub.connect().await;
    fast.join(
        "a",
        json!([jobs_binding(
            "INSERT",
            Some(format!("team_id=eq.{}", a.team))
        )]),
        Some(&hub.token(&a)),
    )
    .await;

    // Flood: more than the slow socket's queue plus what the kernel
    // buffers, with ~8 KiB rows. `slow` reads nothing meanwhile.
    let filler = "x".repeat(8 * 1024);
    let flood: Vec<Gateway> = std::iter::repeat_n(b.clone(), 4 * SLOW_QUEUE).collect();
    hub.jobs(&flood, json!({ "filler": filler })).await;
    hub.until("the slow socket's queue to overflow", |s| {
        s.dispatcher().counts().1 > 0
    })
    .await;

    // Others are not held up: A's job arrives while `slow` is stalled.
    let t0 = Instant::now();
    let ja = hub.jobs(std::slice::from_ref(&a), json!({})).await[0].clone();
    fast.change("a", &ja).await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a stalled socket delayed another by {took:?}"
    );

    // The slow socket, reading again, gets what was queued, then a system
    // error saying why and `phx_error` (the client rejoins by itself).
    let mut delivered = 0;
    let sys = loop {
        let f = slow.recv().await;
        match f.event.as_str() {
            "postgres_changes" => delivered += 1,
            _ => break f,
        }
    };
    // What was not delivered was dropped (the flood plus A's job, which
    // found the queue full too).
    let dropped = hub.state.dispatcher().counts().1;
    assert!(delivered >= 1 && dropped >= 1, "{delivered} {dropped}");
    assert!(
        delivered as u64 + dropped <= flood.len() as u64 + 1,
        "{delivered} delivered + {dropped} dropped"
    );
    assert_eq!(sys.event, "system", "{sys:?}");
    assert_eq!(
        (&sys.payload["status"], &sys.payload["channel"]),
        (&json!("error"), &json!("all"))
    );
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .starts_with("SubscriberTooSlow: "),
        "{sys:?}"
    );
    let err = slow.recv().await;
    assert_eq!(
        (
            err.event.as_str(),
            &err.join_ref,
            &err.ref_,
            err.topic.as_str()
        ),
        ("phx_error", &json!("1"), &json!("1"), "realtime:all")
    );
    // Rejoining works and delivers again.
    slow.join("all", json!([jobs_binding("INSERT", None)]), Some(&service))
        .await;
    let jb = hub.jobs(std::slice::from_ref(&b), json!({})).await[0].clone();
    slow.change("all", &jb).await;
}

#[tokio::test]
async fn two_thousand_gateways_each_get_only_their_own_jobs() {
    const TEAMS: usize = 200;
    const PER_TEAM: usize = 10;
    let hub = Arc::new(Hub::start(RealtimeOptions::default()).await);
    let gws = hub.gateways(TEAMS, PER_TEAM).await;
    assert_eq!(gws.len(), TEAMS * PER_TEAM);

    // Every gateway joins like the real one: its own channel, bound to its
    // team's job INSERTs with its own token.
    let sockets: Vec<(Gateway, Ws)> = futures_util::stream::iter(gws.clone())
        .map(|g| {
            let hub = hub.clone();
            async move {
                let mut ws = hub.connect().await;
                let b = json!([jobs_binding(
                    "INSERT",
                    Some(format!("team_id=eq.{}", g.team))
                )]);
                ws.join(&g.id, b, Some(&hub.token(&g))).await;
                (g, ws)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(subs(&hub.state), TEAMS * PER_TEAM);

    // Two rounds of one job per gateway. Each socket's next two frames must
    // be its own round-1 then round-2 job: changes arrive in commit order,
    // so any other job routed to it and let through would come between.
    let round1 = hub.jobs(&gws, json!({"round": 1})).await;
    let round2 = hub.jobs(&gws, json!({"round": 2})).await;
    let want: std::collections::HashMap<String, (String, String)> = gws
        .iter()
        .zip(round1.into_iter().zip(round2))
        .map(|(g, pair)| (g.id.clone(), pair))
        .collect();
    let want = Arc::new(want);
    let checked: Vec<Ws> = futures_util::stream::iter(sockets)
        .map(|(g, mut ws)| {
            let want = want.clone();
            async move {
                let (j1, j2) = &want[&g.id];
                ws.change(&g.id, j1).await;
                ws.change(&g.id, j2).await;
                ws
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    assert_eq!(checked.len(), TEAMS * PER_TEAM);

    // Each job was queued to its team's sockets only (10), not to all
    // 2,000: the select policy then keeps it for its own gateway.
    let jobs = 2 * (TEAMS * PER_TEAM) as u64;
    let expected = jobs * PER_TEAM as u64;
    hub.until("every job to be routed", |s| {
        s.dispatcher().counts().0 >= expected
    })
    .await;
    assert_eq!(hub.state.dispatcher().counts(), (expected, 0));

    drop(checked);
    hub.until("every socket to unregister", |s| {
        subs(s) == 0 && entries(s) == 0
    })
    .await;
}

#[tokio::test]
async fn heartbeats_wake_no_socket_and_revocation_still_closes() {
    let hub = Hub::start(RealtimeOptions::default()).await;
    let gws = hub.gateways(1, 1).await;
    let g = gws[0].clone();
    let mut ws = hub.connect().await;
    ws.join(
        "jobs",
        json!([jobs_binding(
            "INSERT",
            Some(format!("team_id=eq.{}", g.team))
        )]),
        Some(&hub.token(&g)),
    )
    .await;
    let path = format!("/rest/v1/team_gateways?id=eq.{}", g.id);
    let patch = |set: Value| hub.rest(reqwest::Method::PATCH, &path, set);
    // A heartbeat-like UPDATE of the gateway's own row is routed nowhere
    // (before the dispatcher, every such UPDATE woke every socket).
    for _ in 0..5 {
        patch(json!({"last_seen_at": "2025-01-01T00:00:00Z", "status": "ready"})).await;
    }
    // The job inserted after them arrives: they were all dispatched.
    let j = hub.jobs(&gws, json!({})).await[0].clone();
    ws.change("jobs", &j).await;
    assert_eq!(hub.state.dispatcher().counts(), (1, 0));

    // Revoking it reaches the socket, which closes the channel.
    patch(json!({"revoked_at": "2025-01-01T00:00:00Z"})).await;
    let sys = ws.recv().await;
    assert_eq!(
        (sys.event.as_str(), sys.topic.as_str()),
        ("system", "realtime:jobs")
    );
    assert!(sys.payload["message"]
        .as_str()
        .unwrap()
        .starts_with("Unauthorized: gateway"));
    assert_eq!(ws.recv().await.event, "phx_close");
    assert_eq!((subs(&hub.state), entries(&hub.state)), (0, 0));
}
