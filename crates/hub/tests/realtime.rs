//! The realtime server end to end: an in-process hub on 127.0.0.1, rows
//! written through the REST API with the service key, and a WebSocket
//! client speaking the Phoenix protocol the way realtime-js does
//! (supabase-wire §5).

use futures_util::{SinkExt, StreamExt};
use panorama_hub::api::{self, AppState};
use panorama_hub::auth::Keys;
use panorama_hub::changes::ChangeFeed;
use panorama_hub::realtime::RealtimeOptions;
use panorama_hub::store::postgres::PgStore;
use panorama_hub::store::sqlite::SqliteStore;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &[u8] = b"realtime-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);

struct Hub {
    base: String,
    state: Arc<AppState>,
    http: reqwest::Client,
}

struct Gateway {
    id: String,
    team: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("127.0.0.1:{}", addr.port())
}

/// The hub's state on this test's backend: in-memory SQLite, or a fresh
/// database of the test binary's PostgreSQL cluster.
async fn new_state() -> Arc<AppState> {
    let feed = ChangeFeed::default();
    let store: panorama_hub::store::SharedStore = match panorama_testkit::backend() {
        panorama_testkit::Backend::Sqlite => {
            Arc::new(SqliteStore::open_in_memory(feed.clone()).unwrap())
        }
        panorama_testkit::Backend::Postgres => {
            let url = panorama_testkit::postgres::fresh_database();
            Arc::new(PgStore::connect(&url, feed.clone()).await.unwrap())
        }
    };
    AppState::new(store, Keys::from_secret(SECRET, now()), feed)
}

impl Hub {
    async fn start() -> Hub {
        let state = new_state().await;
        let base = serve(api::router(state.clone())).await;
        Hub {
            base,
            state,
            http: reqwest::Client::new(),
        }
    }

    /// A hub whose realtime route uses `opts` (short timeouts).
    async fn start_with(opts: RealtimeOptions) -> Hub {
        let state = new_state().await;
        let app = api::router_with_realtime(state.clone(), opts);
        let base = serve(app).await;
        Hub {
            base,
            state,
            http: reqwest::Client::new(),
        }
    }

    async fn rest(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let key = &self.state.keys.service_key;
        let res = self
            .http
            .request(method, format!("http://{}{path}", self.base))
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
        body
    }

    async fn insert(&self, table: &str, row: Value) -> Value {
        let rows = self
            .rest(reqwest::Method::POST, &format!("/rest/v1/{table}"), row)
            .await;
        rows[0].clone()
    }

    async fn update(&self, table: &str, id: &str, set: Value) -> Value {
        let rows = self
            .rest(
                reqwest::Method::PATCH,
                &format!("/rest/v1/{table}?id=eq.{id}"),
                set,
            )
            .await;
        rows[0].clone()
    }

    async fn team(&self, name: &str) -> String {
        let row = self.insert("teams", json!({"name": name})).await;
        row["id"].as_str().unwrap().to_string()
    }

    async fn gateway(&self, team: &str) -> Gateway {
        let row = self
            .insert(
                "team_gateways",
                json!({"team_id": team, "device_name": "box"}),
            )
            .await;
        Gateway {
            id: row["id"].as_str().unwrap().to_string(),
            team: team.to_string(),
        }
    }

    fn token(&self, gw: &Gateway) -> String {
        self.token_at(gw, now(), 3600)
    }

    fn token_at(&self, gw: &Gateway, iat: i64, lifetime: i64) -> String {
        self.state.keys.mint_gateway_token(
            "6a1c2b9e-0000-4000-8000-000000000001",
            "6a1c2b9e-0000-4000-8000-000000000002",
            &gw.id,
            &gw.team,
            iat,
            lifetime,
        )
    }

    async fn job(&self, gw: &Gateway) -> String {
        let row = self
            .insert(
                "gateway_jobs",
                json!({"team_id": gw.team, "gateway_id": gw.id, "job_type": "diagnostic", "payload": {"n": 1}}),
            )
            .await;
        row["id"].as_str().unwrap().to_string()
    }

    async fn connect(&self, vsn: Option<&str>) -> Ws {
        self.connect_key(&self.state.keys.anon_key.clone(), vsn)
            .await
    }

    async fn connect_key(&self, key: &str, vsn: Option<&str>) -> Ws {
        let mut url = format!(
            "ws://{}/realtime/v1/websocket?apikey={key}&log_level=info",
            self.base
        );
        if let Some(v) = vsn {
            url.push_str(&format!("&vsn={v}"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws {
            stream,
            v2: vsn == Some("2.0.0"),
        }
    }
}

/// A received frame, normalised from either serializer.
#[derive(Debug)]
struct In {
    join_ref: Value,
    ref_: Value,
    topic: String,
    event: String,
    payload: Value,
    raw: Value,
}

struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    v2: bool,
}

impl Ws {
    async fn push(
        &mut self,
        join_ref: Value,
        ref_: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = if self.v2 {
            json!([join_ref, ref_, topic, event, payload]).to_string()
        } else {
            let mut o = json!({"topic": topic, "event": event, "payload": payload, "ref": ref_});
            if !join_ref.is_null() {
                o["join_ref"] = join_ref;
            }
            o.to_string()
        };
        self.stream.send(Message::text(text)).await.unwrap();
    }

    async fn raw(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame (pings are skipped); panics after 5 s.
    async fn recv(&mut self) -> In {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame from the server within 5 s")
                .expect("socket ended")
                .expect("socket failed");
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            };
            let raw: Value = serde_json::from_str(&text).unwrap();
            return if self.v2 {
                let a = raw.as_array().expect("vsn 2.0.0 frames are arrays");
                assert_eq!(a.len(), 5);
                In {
                    join_ref: a[0].clone(),
                    ref_: a[1].clone(),
                    topic: a[2].as_str().unwrap().into(),
                    event: a[3].as_str().unwrap().into(),
                    payload: a[4].clone(),
                    raw,
                }
            } else {
                let o = raw.as_object().expect("vsn 1.0.0 frames are objects");
                assert!(
                    !o.contains_key("join_ref"),
                    "V1 server frames carry no join_ref: {text}"
                );
                In {
                    join_ref: Value::Null,
                    ref_: o["ref"].clone(),
                    topic: o["topic"].as_str().unwrap().into(),
                    event: o["event"].as_str().unwrap().into(),
                    payload: o["payload"].clone(),
                    raw,
                }
            };
        }
    }

    async fn heartbeat(&mut self, ref_: &str) {
        self.push(Value::Null, ref_, "phoenix", "heartbeat", json!({}))
            .await;
        let r = self.recv().await;
        assert_eq!(
            (r.topic.as_str(), r.event.as_str(), &r.ref_, &r.payload),
            (
                "phoenix",
                "phx_reply",
                &json!(ref_),
                &json!({"status": "ok", "response": {}})
            ),
            "{:?}",
            r.raw
        );
        assert_eq!(r.join_ref, Value::Null);
    }

    /// Joins `realtime:<name>` and returns the reply.
    async fn join(&mut self, name: &str, jr: &str, bindings: Value, token: Option<&str>) -> In {
        let mut payload = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": bindings,
                "private": false
            }
        });
        if let Some(t) = token {
            payload["access_token"] = json!(t);
        }
        self.push(
            json!(jr),
            jr,
            &format!("realtime:{name}"),
            "phx_join",
            payload,
        )
        .await;
        let r = self.recv().await;
        assert_eq!(r.event, "phx_reply", "{:?}", r.raw);
        assert_eq!(r.ref_, json!(jr));
        assert_eq!(r.topic, format!("realtime:{name}"));
        r
    }

    /// Joins and expects success, the echoed bindings and the `system`
    /// message; returns the binding ids.
    async fn join_ok(
        &mut self,
        name: &str,
        jr: &str,
        bindings: Value,
        token: Option<&str>,
    ) -> Vec<Value> {
        let r = self.join(name, jr, bindings.clone(), token).await;
        assert_eq!(r.payload["status"], "ok", "{:?}", r.raw);
        let echo = r.payload["response"]["postgres_changes"]
            .as_array()
            .unwrap()
            .clone();
        let sent = bindings.as_array().unwrap();
        assert_eq!(echo.len(), sent.len());
        let mut ids = Vec::new();
        for (e, s) in echo.iter().zip(sent) {
            let mut e = e.clone();
            let id = e.as_object_mut().unwrap().remove("id").expect("an id");
            assert!(id.as_u64().is_some_and(|n| n < 1 << 27), "{id}");
            assert_eq!(&e, s, "the echo is the binding unchanged plus id");
            ids.push(id);
        }
        if !sent.is_empty() {
            let sys = self.recv().await;
            assert_eq!(sys.event, "system");
            if self.v2 {
                assert_eq!((sys.join_ref, sys.ref_), (json!(jr), Value::Null));
            }
            assert_eq!(
                sys.payload,
                json!({"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL", "channel": name})
            );
        }
        ids
    }

    /// The next frame must be a `postgres_changes` on `topic` for `id`.
    async fn change(&mut self, topic: &str, kind: &str, id: &str) -> In {
        let r = self.recv().await;
        assert_eq!(
            (r.topic.as_str(), r.event.as_str()),
            (format!("realtime:{topic}").as_str(), "postgres_changes"),
            "{:?}",
            r.raw
        );
        assert_eq!((&r.join_ref, &r.ref_), (&Value::Null, &Value::Null));
        let data = &r.payload["data"];
        assert_eq!(data["type"], kind, "{:?}", r.raw);
        let row_id = if kind == "DELETE" {
            &data["old_record"]["id"]
        } else {
            &data["record"]["id"]
        };
        assert_eq!(row_id, id, "{:?}", r.raw);
        r
    }

    async fn expect_closed(&mut self) -> Option<tungstenite::protocol::CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("socket still open after 5 s")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                None | Some(Err(_)) => return None,
            }
        }
    }
}

fn jobs_binding(event: &str, team: &str) -> Value {
    json!({"event": event, "schema": "public", "table": "gateway_jobs", "filter": format!("team_id=eq.{team}")})
}

struct World {
    hub: Hub,
    a1: Gateway,
    a2: Gateway,
    b1: Gateway,
}

async fn world() -> World {
    let hub = Hub::start().await;
    let team_a = hub.team("a").await;
    let team_b = hub.team("b").await;
    let a1 = hub.gateway(&team_a).await;
    let a2 = hub.gateway(&team_a).await;
    let b1 = hub.gateway(&team_b).await;
    World { hub, a1, a2, b1 }
}

panorama_testkit::on_both_backends! {
async fn a_gateway_gets_its_own_team_jobs_only_vsn2() {
    let World { hub, a1, a2, b1 } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let name = format!("gateway_jobs_{}", a1.id);
    let token = hub.token(&a1);
    let ids = ws
        .join_ok(
            &name,
            "6",
            json!([jobs_binding("INSERT", &a1.team)]),
            Some(&token),
        )
        .await;
    ws.heartbeat("7").await;

    let own = hub.job(&a1).await;
    let r = ws.change(&name, "INSERT", &own).await;
    assert_eq!(r.payload["ids"], json!(ids));
    let data = &r.payload["data"];
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "gateway_jobs");
    assert_eq!(data["errors"], Value::Null);
    assert!(data.get("old_record").is_none(), "no old_record on INSERT");
    let record = &data["record"];
    assert_eq!(record["team_id"], a1.team.as_str());
    assert_eq!(record["gateway_id"], a1.id.as_str());
    assert_eq!(record["status"], "queued");
    assert_eq!(record["job_type"], "diagnostic");
    assert_eq!(record["payload"], json!({"n": 1}));
    assert_eq!(record["attempt"], json!(1));
    let ts = data["commit_timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "YYYY-MM-DDTHH:MM:SS.mmmZ, got {ts}"
    );
    let columns = data["columns"].as_array().unwrap();
    assert_eq!(columns[0], json!({"name": "id", "type": "uuid"}));
    assert!(columns.contains(&json!({"name": "payload", "type": "jsonb"})));
    assert!(columns.contains(&json!({"name": "attempt", "type": "int4"})));
    assert_eq!(columns.len(), record.as_object().unwrap().len());

    // Team B's job (filter) and team A's job for another gateway (RLS)
    // are not delivered: the next frame is the next own job.
    hub.job(&b1).await;
    hub.job(&a2).await;
    let own2 = hub.job(&a1).await;
    ws.change(&name, "INSERT", &own2).await;

    // An update does not match an INSERT binding.
    hub.update("gateway_jobs", &own, json!({"status": "running"}))
        .await;
    let own3 = hub.job(&a1).await;
    ws.change(&name, "INSERT", &own3).await;
    ws.heartbeat("8").await;
}
}

panorama_testkit::on_both_backends! {
async fn vsn1_object_frames() {
    let World { hub, a1, b1, .. } = world().await;
    let mut ws = hub.connect(Some("1.0.0")).await;
    let token = hub.token(&a1);
    let ids = ws
        .join_ok(
            "jobs",
            "3",
            json!([jobs_binding("INSERT", &a1.team)]),
            Some(&token),
        )
        .await;
    ws.heartbeat("4").await;
    hub.job(&b1).await;
    let own = hub.job(&a1).await;
    let r = ws.change("jobs", "INSERT", &own).await;
    assert_eq!(r.payload["ids"], json!(ids));
    assert_eq!(r.raw["ref"], Value::Null);

    // Without `vsn` the socket speaks 1.0.0 (Phoenix's default).
    let mut ws = hub.connect(None).await;
    ws.heartbeat("1").await;
}
}

panorama_testkit::on_both_backends! {
async fn update_bindings_and_several_ids() {
    let World { hub, a1, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let token = hub.token(&a1);
    let ids = ws
        .join_ok(
            "jobs",
            "1",
            json!([
                jobs_binding("UPDATE", &a1.team),
                jobs_binding("*", &a1.team)
            ]),
            Some(&token),
        )
        .await;
    assert_ne!(ids[0], ids[1]);

    let job = hub.job(&a1).await;
    let r = ws.change("jobs", "INSERT", &job).await;
    assert_eq!(
        r.payload["ids"],
        json!([ids[1]]),
        "INSERT matches only the * binding"
    );

    hub.update("gateway_jobs", &job, json!({"status": "running"}))
        .await;
    let r = ws.change("jobs", "UPDATE", &job).await;
    assert_eq!(r.payload["ids"], json!(ids));
    let data = &r.payload["data"];
    assert_eq!(data["record"]["status"], "running");
    assert_eq!(
        data["old_record"],
        json!({"id": job}),
        "default replica identity: primary key only"
    );

    // A status filter is checked against the new row.
    let mut ws2 = hub.connect(Some("2.0.0")).await;
    ws2.join_ok(
        "done",
        "1",
        json!([{"event": "UPDATE", "schema": "public", "table": "gateway_jobs", "filter": "status=in.(completed,failed)"}]),
        Some(&token),
    )
    .await;
    hub.update(
        "gateway_jobs",
        &job,
        json!({"status": "completed", "result": {}}),
    )
    .await;
    let r = ws2.change("done", "UPDATE", &job).await;
    assert_eq!(r.payload["data"]["record"]["status"], "completed");
}
}

panorama_testkit::on_both_backends! {
async fn bad_tokens_and_bad_bindings_refuse_the_join() {
    let World { hub, a1, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let binding = json!([jobs_binding("INSERT", &a1.team)]);
    let reason = |r: &In| {
        assert_eq!(r.payload["status"], "error", "{:?}", r.raw);
        r.payload["response"]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let expired = hub.token_at(&a1, now() - 7200, 3600);
    let r = ws.join("jobs", "1", binding.clone(), Some(&expired)).await;
    let why = reason(&r);
    assert!(
        why.starts_with("InvalidJWTToken: Token has expired "),
        "{why}"
    );
    assert!(why.ends_with(" seconds ago"), "{why}");

    let forged = Keys::from_secret(b"some other secret, not the hub's!!", now())
        .mint_gateway_token("u", "s", &a1.id, &a1.team, now(), 3600);
    let r = ws.join("jobs", "2", binding.clone(), Some(&forged)).await;
    assert!(
        reason(&r).starts_with("InvalidJWTToken: Signature error"),
        "{:?}",
        r.raw
    );

    let r = ws
        .join("jobs", "3", binding.clone(), Some("not-a-jwt"))
        .await;
    assert_eq!(
        reason(&r),
        "MalformedJWT: The token provided is not a valid JWT"
    );

    let r = ws
        .join(
            "jobs",
            "4",
            json!([{"event": "INSERT", "schema": "public", "table": "no_such_table"}]),
            Some(&hub.token(&a1)),
        )
        .await;
    let why = reason(&r);
    assert!(
        why.contains("no_such_table") && why.contains("does not exist"),
        "{why}"
    );

    for filter in [
        "team_id=eq.not-a-uuid",
        "team_id",
        "nope=eq.1",
        "team_id=between.1",
    ] {
        let r = ws
            .join(
                "jobs",
                "5",
                json!([{"event": "INSERT", "schema": "public", "table": "gateway_jobs", "filter": filter}]),
                Some(&hub.token(&a1)),
            )
            .await;
        let why = reason(&r);
        assert!(
            why.contains("Error parsing `filter` params"),
            "{filter}: {why}"
        );
    }

    let r = ws.join("", "6", json!([]), None).await;
    assert_eq!(
        reason(&r),
        "TopicNameRequired: You must provide a topic name"
    );

    // A revoked gateway may not join.
    hub.update(
        "team_gateways",
        &a1.id,
        json!({"revoked_at": "2025-01-01T00:00:00Z"}),
    )
    .await;
    let r = ws.join("jobs", "7", binding, Some(&hub.token(&a1))).await;
    assert!(
        reason(&r).starts_with("Unauthorized: gateway"),
        "{:?}",
        r.raw
    );

    // None of the refused joins left a channel behind.
    ws.push(json!("7"), "8", "realtime:jobs", "phx_leave", json!({}))
        .await;
    let r = ws.recv().await;
    assert_eq!(
        (r.ref_, r.payload),
        (
            json!("8"),
            json!({"status": "error", "response": {"reason": "unmatched topic"}})
        )
    );
}
}

panorama_testkit::on_both_backends! {
async fn access_token_updates_the_channel_principal() {
    let World { hub, a1, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let binding = json!([jobs_binding("INSERT", &a1.team)]);
    // Without a token the channel acts as the anon key: it sees nothing.
    ws.join_ok("jobs", "1", binding.clone(), None).await;
    // A service-key channel on the same socket is the sentinel.
    ws.join_ok(
        "all",
        "2",
        binding.clone(),
        Some(&hub.state.keys.service_key.clone()),
    )
    .await;
    let j1 = hub.job(&a1).await;
    ws.change("all", "INSERT", &j1).await;

    // The gateway's token: no reply, then its jobs flow.
    ws.push(
        json!("1"),
        "3",
        "realtime:jobs",
        "access_token",
        json!({"access_token": hub.token(&a1)}),
    )
    .await;
    ws.heartbeat("4").await;
    let j2 = hub.job(&a1).await;
    ws.change("jobs", "INSERT", &j2).await;
    ws.change("all", "INSERT", &j2).await;

    // A refreshed token (different iat) keeps the subscription; so do an
    // unchanged one, a null one and an `sb_` key.
    for t in [
        json!(hub.token_at(&a1, now() - 10, 3600)),
        Value::Null,
        json!("sb_publishable_x"),
    ] {
        ws.push(
            json!("1"),
            "5",
            "realtime:jobs",
            "access_token",
            json!({"access_token": t}),
        )
        .await;
    }
    ws.heartbeat("6").await;
    let j3 = hub.job(&a1).await;
    ws.change("jobs", "INSERT", &j3).await;
    ws.change("all", "INSERT", &j3).await;

    // An expired token closes the channel: system error, then phx_close.
    let expired = hub.token_at(&a1, now() - 7200, 3600);
    ws.push(
        json!("1"),
        "7",
        "realtime:jobs",
        "access_token",
        json!({"access_token": expired}),
    )
    .await;
    let sys = ws.recv().await;
    assert_eq!(
        (sys.event.as_str(), &sys.join_ref, &sys.ref_),
        ("system", &json!("1"), &Value::Null)
    );
    assert_eq!(sys.payload["extension"], "system");
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(sys.payload["channel"], "jobs");
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .starts_with("Token has expired"),
        "{:?}",
        sys.raw
    );
    let close = ws.recv().await;
    assert_eq!(
        close.raw,
        json!(["1", "1", "realtime:jobs", "phx_close", {}])
    );
    let j4 = hub.job(&a1).await;
    ws.change("all", "INSERT", &j4).await;
    let j5 = hub.job(&a1).await;
    ws.change("all", "INSERT", &j5).await;
}
}

panorama_testkit::on_both_backends! {
async fn a_channel_closes_when_its_token_expires() {
    let World { hub, a1, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let short = hub.token_at(&a1, now(), 2);
    ws.join_ok(
        "jobs",
        "1",
        json!([jobs_binding("INSERT", &a1.team)]),
        Some(&short),
    )
    .await;
    let sys = ws.recv().await;
    assert_eq!(sys.event, "system", "{:?}", sys.raw);
    assert!(sys.payload["message"]
        .as_str()
        .unwrap()
        .starts_with("Token has expired"));
    let close = ws.recv().await;
    assert_eq!(
        close.raw,
        json!(["1", "1", "realtime:jobs", "phx_close", {}])
    );
}
}

panorama_testkit::on_both_backends! {
async fn anon_sees_nothing_and_service_sees_everything() {
    let World { hub, a1, b1, .. } = world().await;
    let mut anon = hub.connect(Some("2.0.0")).await;
    anon.join_ok(
        "all",
        "1",
        json!([{"event": "*", "schema": "public"}]),
        None,
    )
    .await;
    let service_key = hub.state.keys.service_key.clone();
    let mut service = hub.connect_key(&service_key, Some("2.0.0")).await;
    // No access_token: the socket's key decides.
    service
        .join_ok(
            "all",
            "1",
            json!([{"event": "*", "schema": "public", "table": "gateway_jobs"}]),
            None,
        )
        .await;
    // The anon channel's sentinel is a service channel on the same socket.
    anon.join_ok(
        "sentinel",
        "2",
        json!([{"event": "INSERT", "schema": "public", "table": "teams"}]),
        Some(&service_key),
    )
    .await;

    let jb = hub.job(&b1).await;
    let ja = hub.job(&a1).await;
    service.change("all", "INSERT", &jb).await;
    service.change("all", "INSERT", &ja).await;
    let team = hub.team("c").await;
    anon.change("sentinel", "INSERT", &team).await;
}
}

panorama_testkit::on_both_backends! {
async fn leave_rejoin_and_delete() {
    let World { hub, a1, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    let token = hub.token(&a1);
    let binding = json!([jobs_binding("*", &a1.team)]);
    ws.join_ok("jobs", "1", binding.clone(), Some(&token)).await;
    ws.join_ok("sentinel", "2", binding.clone(), Some(&token))
        .await;

    // Re-joining a joined topic closes the old join first.
    ws.push(
        json!("3"),
        "3",
        "realtime:jobs",
        "phx_join",
        json!({"config": {"postgres_changes": binding.clone()}, "access_token": token}),
    )
    .await;
    let close = ws.recv().await;
    assert_eq!(
        close.raw,
        json!(["1", "1", "realtime:jobs", "phx_close", {}])
    );
    let reply = ws.recv().await;
    assert_eq!(
        (reply.event.as_str(), &reply.ref_, &reply.payload["status"]),
        ("phx_reply", &json!("3"), &json!("ok"))
    );
    assert_eq!(ws.recv().await.event, "system");

    // Deletes carry the primary key in old_record and no record. (The
    // re-joined channel now comes after the sentinel.)
    let job = hub.job(&a1).await;
    ws.change("sentinel", "INSERT", &job).await;
    ws.change("jobs", "INSERT", &job).await;
    hub.rest(
        reqwest::Method::DELETE,
        &format!("/rest/v1/gateway_jobs?id=eq.{job}"),
        json!(null),
    )
    .await;
    ws.change("sentinel", "DELETE", &job).await;
    let r = ws.change("jobs", "DELETE", &job).await;
    assert!(r.payload["data"].get("record").is_none());
    assert_eq!(r.payload["data"]["old_record"], json!({"id": job}));

    // A stale leave (older join_ref) does not end the current join.
    ws.push(json!("1"), "4", "realtime:jobs", "phx_leave", json!({}))
        .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["1", "4", "realtime:jobs", "phx_reply", {"status": "ok", "response": {}}])
    );

    ws.push(json!("3"), "5", "realtime:jobs", "phx_leave", json!({}))
        .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["3", "5", "realtime:jobs", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        ws.recv().await.raw,
        json!(["3", "3", "realtime:jobs", "phx_close", {}])
    );
    let job2 = hub.job(&a1).await;
    ws.change("sentinel", "INSERT", &job2).await;
    let job3 = hub.job(&a1).await;
    ws.change("sentinel", "INSERT", &job3).await;
    ws.push(
        json!("3"),
        "6",
        "realtime:jobs",
        "access_token",
        json!({"access_token": token}),
    )
    .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["3", "6", "realtime:jobs", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}
}

panorama_testkit::on_both_backends! {
async fn revoking_a_gateway_closes_its_channels() {
    let World { hub, a1, a2, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    ws.join_ok(
        "jobs",
        "1",
        json!([jobs_binding("INSERT", &a1.team)]),
        Some(&hub.token(&a1)),
    )
    .await;
    ws.join_ok(
        "other",
        "2",
        json!([jobs_binding("INSERT", &a2.team)]),
        Some(&hub.token(&a2)),
    )
    .await;
    hub.update(
        "team_gateways",
        &a1.id,
        json!({"revoked_at": "2025-01-01T00:00:00Z"}),
    )
    .await;
    let sys = ws.recv().await;
    assert_eq!(
        (sys.event.as_str(), sys.topic.as_str()),
        ("system", "realtime:jobs"),
        "{:?}",
        sys.raw
    );
    assert!(sys.payload["message"]
        .as_str()
        .unwrap()
        .starts_with("Unauthorized: gateway"));
    assert_eq!(
        ws.recv().await.raw,
        json!(["1", "1", "realtime:jobs", "phx_close", {}])
    );
    // The other gateway's channel lives on.
    let j = hub.job(&a2).await;
    ws.change("other", "INSERT", &j).await;
}
}

panorama_testkit::on_both_backends! {
async fn malformed_frames_broadcast_presence_and_unknown_topics() {
    let World { hub, .. } = world().await;
    let mut ws = hub.connect(Some("2.0.0")).await;
    for junk in [
        "not json",
        "[1,2]",
        "{\"topic\":5}",
        "[null,{},\"phoenix\",\"heartbeat\",{}]",
        "null",
    ] {
        ws.raw(junk).await;
    }
    ws.stream
        .send(Message::binary(vec![9u8, 1, 2]))
        .await
        .unwrap();
    ws.heartbeat("1").await;

    ws.push(json!("2"), "2", "realtime:nowhere", "broadcast", json!({}))
        .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["2", "2", "realtime:nowhere", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    ws.push(Value::Null, "3", "phoenix", "nonsense", json!({}))
        .await;
    assert_eq!(
        ws.recv().await.payload["response"]["reason"],
        "unmatched topic"
    );
    ws.push(json!("4"), "4", "elsewhere:x", "phx_join", json!({}))
        .await;
    assert_eq!(
        ws.recv().await.payload["response"]["reason"],
        "unmatched topic"
    );

    // A join without postgres_changes: ok, empty list, no system message;
    // broadcast with ack and self; presence acknowledged.
    ws.push(
        json!("5"),
        "5",
        "realtime:room",
        "phx_join",
        json!({"config": {"broadcast": {"ack": true, "self": true}, "presence": {"key": "", "enabled": true}, "postgres_changes": [], "private": false}, "unknown": 1}),
    )
    .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["5", "5", "realtime:room", "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}])
    );
    assert_eq!(
        ws.recv().await.raw,
        json!(["5", null, "realtime:room", "presence_state", {}])
    );
    let msg = json!({"type": "broadcast", "event": "hello", "payload": {"x": 1}});
    ws.push(json!("5"), "6", "realtime:room", "broadcast", msg.clone())
        .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["5", "6", "realtime:room", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        ws.recv().await.raw,
        json!([null, null, "realtime:room", "broadcast", msg])
    );
    ws.push(
        json!("5"),
        "7",
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {}}),
    )
    .await;
    assert_eq!(
        ws.recv().await.raw,
        json!(["5", "7", "realtime:room", "phx_reply", {"status": "ok", "response": {}}])
    );

    // Binary broadcast (kind 3): acknowledged, echoed as kind 4.
    let mut b = vec![3u8, 1, 1, 13, 2, 0, 1];
    b.extend_from_slice(b"58realtime:roomhi{\"y\":2}");
    ws.stream.send(Message::binary(b)).await.unwrap();
    assert_eq!(
        ws.recv().await.raw,
        json!(["5", "8", "realtime:room", "phx_reply", {"status": "ok", "response": {}}])
    );
    let echo = tokio::time::timeout(WAIT, ws.stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut want = vec![4u8, 13, 2, 0, 1];
    want.extend_from_slice(b"realtime:roomhi{\"y\":2}");
    assert_eq!(echo, Message::binary(want));

    // Unknown events on a joined channel get an error reply.
    ws.push(json!("5"), "9", "realtime:room", "whatever", json!({}))
        .await;
    let r = ws.recv().await;
    assert_eq!(r.payload["status"], "error");
    assert!(r.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("whatever"));
    ws.heartbeat("10").await;
}
}

panorama_testkit::on_both_backends! {
async fn the_upgrade_needs_a_valid_api_key() {
    let hub = Hub::start().await;
    for (query, message) in [
        ("vsn=2.0.0", "No API key found in request"),
        ("apikey=wrong&vsn=2.0.0", "Invalid API key"),
    ] {
        let url = format!("ws://{}/realtime/v1/websocket?{query}", hub.base);
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401);
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["message"], message);
            }
            other => panic!("expected a 401, got {:?}", other.map(|_| ())),
        }
    }
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={}&vsn=9.9.9",
        hub.base, hub.state.keys.anon_key
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}
}

panorama_testkit::on_both_backends! {
async fn silent_sockets_are_closed_and_heartbeating_ones_are_not() {
    let hub = Hub::start_with(RealtimeOptions {
        idle_timeout: Duration::from_millis(800),
        ..RealtimeOptions::default()
    })
    .await;
    let mut silent = hub.connect(Some("2.0.0")).await;
    let mut alive = hub.connect(Some("2.0.0")).await;
    let started = std::time::Instant::now();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        alive.heartbeat(&i.to_string()).await;
    }
    let frame = silent.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    if let Some(f) = frame {
        assert_eq!(f.reason.as_str(), "heartbeat timeout");
    }
    alive.heartbeat("last").await;
}
}

impl Ws {
    /// Joins `realtime:<name>` for broadcast only, private or not; returns
    /// the reply.
    async fn join_broadcast(
        &mut self,
        name: &str,
        jr: &str,
        private: bool,
        token: Option<&str>,
    ) -> In {
        let mut payload = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": [],
                "private": private
            }
        });
        if let Some(t) = token {
            payload["access_token"] = json!(t);
        }
        self.push(
            json!(jr),
            jr,
            &format!("realtime:{name}"),
            "phx_join",
            payload,
        )
        .await;
        let r = self.recv().await;
        assert_eq!(r.event, "phx_reply", "{:?}", r.raw);
        r
    }
}

panorama_testkit::on_both_backends! {
async fn broadcast_reaches_the_other_sockets_in_order_across_serializers() {
    use base64::Engine;
    let World { hub, .. } = world().await;
    let mut sender = hub.connect(Some("2.0.0")).await;
    let mut v1 = hub.connect(None).await;
    let mut v2 = hub.connect(Some("2.0.0")).await;
    let mut elsewhere = hub.connect(Some("2.0.0")).await;
    for (ws, name) in [
        (&mut sender, "room"),
        (&mut v1, "room"),
        (&mut v2, "room"),
        (&mut elsewhere, "other"),
    ] {
        assert_eq!(
            ws.join_broadcast(name, "1", false, None).await.payload["status"],
            "ok"
        );
    }
    // Every byte value, base64 in JSON, 300 messages in order.
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes: Vec<u8> = (0..=255u8).collect();
    for seq in 0..300u64 {
        let msg = json!({"type": "broadcast", "event": "output", "payload": {"seq": seq, "data": b64.encode(&bytes)}});
        sender
            .push(
                json!("1"),
                &format!("s{seq}"),
                "realtime:room",
                "broadcast",
                msg,
            )
            .await;
    }
    for ws in [&mut v1, &mut v2] {
        for seq in 0..300u64 {
            let r = ws.recv().await;
            assert_eq!(
                (r.topic.as_str(), r.event.as_str()),
                ("realtime:room", "broadcast")
            );
            assert_eq!((&r.join_ref, &r.ref_), (&Value::Null, &Value::Null));
            assert_eq!(r.payload["event"], "output");
            assert_eq!(r.payload["payload"]["seq"], seq, "in order");
            assert_eq!(
                b64.decode(r.payload["payload"]["data"].as_str().unwrap())
                    .unwrap(),
                bytes
            );
        }
    }
    // A binary push: kind 4 to the vsn 2 socket, JSON to the vsn 1 one.
    let mut b = vec![3u8, 1, 1, 13, 2, 0, 1];
    b.extend_from_slice(b"19realtime:roomhi{\"y\":2}");
    sender.stream.send(Message::binary(b)).await.unwrap();
    let got = tokio::time::timeout(WAIT, v2.stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut want = vec![4u8, 13, 2, 0, 1];
    want.extend_from_slice(b"realtime:roomhi{\"y\":2}");
    assert_eq!(got, Message::binary(want));
    let r = v1.recv().await;
    assert_eq!(
        r.payload,
        json!({"type": "broadcast", "event": "hi", "payload": {"y": 2}})
    );
    // Neither the sender (self: false) nor another topic got anything.
    for ws in [&mut sender, &mut elsewhere] {
        ws.heartbeat("h").await;
    }
    // After a leave, nothing more arrives.
    v1.push(Value::Null, "9", "realtime:room", "phx_leave", json!({}))
        .await;
    assert_eq!(v1.recv().await.event, "phx_reply");
    assert_eq!(v1.recv().await.event, "phx_close");
    sender
        .push(
            json!("1"),
            "x",
            "realtime:room",
            "broadcast",
            json!({"type": "broadcast", "event": "late", "payload": {}}),
        )
        .await;
    assert_eq!(v2.recv().await.payload["event"], "late");
    v1.heartbeat("h2").await;
}
}

panorama_testkit::on_both_backends! {
async fn terminal_channels_are_private_and_open_only_to_the_service_key_and_the_owning_gateway() {
    let World { hub, a1, a2, b1 } = world().await;
    let session = hub.job(&a1).await;
    let topic = format!("terminal:{session}");
    let service_key = hub.state.keys.service_key.clone();

    let mut service = hub.connect_key(&service_key, Some("2.0.0")).await;
    assert_eq!(
        service
            .join_broadcast(&topic, "1", true, None)
            .await
            .payload["status"],
        "ok"
    );
    let mut owner = hub.connect(Some("2.0.0")).await;
    let r = owner
        .join_broadcast(&topic, "1", true, Some(&hub.token(&a1)))
        .await;
    assert_eq!(r.payload["status"], "ok", "{:?}", r.raw);

    let refused = |r: In| {
        assert_eq!(r.payload["status"], "error", "{:?}", r.raw);
        r.payload["response"]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (gw, who) in [(&a2, "same team, other gateway"), (&b1, "other team")] {
        let mut ws = hub.connect(None).await;
        let why = refused(
            ws.join_broadcast(&topic, "1", true, Some(&hub.token(gw)))
                .await,
        );
        assert!(
            why.starts_with("Unauthorized:") && why.contains("does not own"),
            "{who}: {why}"
        );
    }
    let mut anon = hub.connect(None).await;
    let why = refused(anon.join_broadcast(&topic, "1", true, None).await);
    assert!(why.contains("anon"), "{why}");
    // Public terminal topics do not exist; other private topics have no policy.
    let why = refused(anon.join_broadcast(&topic, "2", false, None).await);
    assert!(why.contains("private"), "{why}");
    let why = refused(anon.join_broadcast("room", "3", true, None).await);
    assert!(why.starts_with("Unauthorized"), "{why}");
    let mut stranger = hub.connect(Some("2.0.0")).await;
    let why = refused(
        stranger
            .join_broadcast("terminal:not-a-uuid", "1", true, Some(&hub.token(&a1)))
            .await,
    );
    assert!(why.contains("not a job id"), "{why}");

    // Both ways between the service key and the owner, and nothing to a
    // public channel of the same name (it cannot be joined anyway).
    let msg = json!({"type": "broadcast", "event": "input", "payload": {"seq": 1, "data": "aGk="}});
    service
        .push(
            json!("1"),
            "2",
            &format!("realtime:{topic}"),
            "broadcast",
            msg.clone(),
        )
        .await;
    assert_eq!(owner.recv().await.payload, msg);
    let out =
        json!({"type": "broadcast", "event": "output", "payload": {"seq": 1, "data": "aGk="}});
    owner
        .push(
            json!("1"),
            "2",
            &format!("realtime:{topic}"),
            "broadcast",
            out.clone(),
        )
        .await;
    assert_eq!(service.recv().await.payload, out);
    stranger.heartbeat("h").await;
}
}

impl Hub {
    /// A signed-in person in `team` with `role`: an access token.
    async fn person(&self, team: &str, role: &str) -> String {
        let email = format!(
            "{}@example.test",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let user = self
            .rest(
                reqwest::Method::POST,
                "/auth/v1/admin/users",
                json!({"email": email, "password": "correct horse battery", "email_confirm": true}),
            )
            .await;
        self.insert(
            "team_members",
            json!({"team_id": team, "user_id": user["id"], "email": email, "role": role}),
        )
        .await;
        let session = self
            .rest(
                reqwest::Method::POST,
                "/auth/v1/token?grant_type=password",
                json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        session["access_token"].as_str().unwrap().to_string()
    }

    /// A `terminal_open` job of `gw` on a new remote_shell resource.
    async fn terminal(&self, gw: &Gateway, max_access_level: &str, metadata: Value) -> String {
        let mut meta = metadata;
        meta["gateway_id"] = json!(gw.id);
        let resource = self
            .insert(
                "team_resources",
                json!({"team_id": gw.team, "resource_type": "remote_shell",
                       "max_access_level": max_access_level, "metadata": meta}),
            )
            .await;
        let row = self
            .insert(
                "gateway_jobs",
                json!({"team_id": gw.team, "gateway_id": gw.id, "job_type": "terminal_open",
                       "payload": {"resource_id": resource["id"], "cols": 80, "rows": 24}}),
            )
            .await;
        row["id"].as_str().unwrap().to_string()
    }
}

panorama_testkit::on_both_backends! {
/// The terminal-channel matrix for people: members type, watchers only
/// read (their input is answered with an error and never relayed),
/// viewers watch only where the resource lets them, other teams and
/// non-terminal jobs are refused.
async fn terminal_channels_admit_team_members_by_role_and_resource() {
    let World { hub, a1, b1, .. } = world().await;
    let full = hub.terminal(&a1, "editor", json!({})).await;
    let viewer_level = hub.terminal(&a1, "viewer", json!({})).await;
    let watchable = hub
        .terminal(&a1, "editor", json!({"viewers_may_watch": true}))
        .await;
    let diagnostic = hub.job(&a1).await;
    let member = hub.person(&a1.team, "member").await;
    let viewer = hub.person(&a1.team, "viewer").await;
    let other_owner = hub.person(&b1.team, "owner").await;

    async fn join(hub: &Hub, session: &str, token: &str) -> (Ws, In) {
        let mut ws = hub.connect(Some("2.0.0")).await;
        let r = ws
            .join_broadcast(&format!("terminal:{session}"), "1", true, Some(token))
            .await;
        (ws, r)
    }
    // (session, person, admitted, may type)
    let cases = [
        (&full, &member, true, true),
        (&viewer_level, &member, true, false),
        (&full, &viewer, false, false),
        (&watchable, &viewer, true, false),
        (&full, &other_owner, false, false),
        (&watchable, &other_owner, false, false),
        (&diagnostic, &member, false, false),
    ];
    for (i, (session, token, admitted, may_type)) in cases.into_iter().enumerate() {
        let (mut ws, r) = join(&hub, session, token).await;
        let status = r.payload["status"].as_str().unwrap().to_string();
        assert_eq!(
            status == "ok",
            admitted,
            "case {i}: {:?}",
            r.payload["response"]
        );
        if !admitted {
            assert!(
                r.payload["response"]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("Unauthorized:"),
                "case {i}: {:?}",
                r.raw
            );
            continue;
        }
        // The owning gateway listens; the person types and pings.
        let (mut gw, gr) = join(&hub, session, &hub.token(&a1)).await;
        assert_eq!(gr.payload["status"], "ok");
        let topic = format!("realtime:terminal:{session}");
        let input = json!({"type": "broadcast", "event": "input",
                           "payload": {"client_id": "p", "seq": 1, "data": "aGk="}});
        ws.push(json!("1"), "2", &topic, "broadcast", input.clone())
            .await;
        if !may_type {
            let reply = ws.recv().await;
            assert_eq!(reply.event, "phx_reply", "case {i}");
            assert_eq!(reply.payload["status"], "error", "case {i}");
            assert!(
                reply.payload["response"]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("read-only"),
                "case {i}: {:?}",
                reply.raw
            );
        }
        let ping = json!({"type": "broadcast", "event": "ping", "payload": {"client_id": "p"}});
        ws.push(json!("1"), "3", &topic, "broadcast", ping.clone())
            .await;
        // The gateway gets the input only from a typist; the ping always.
        let first = gw.recv().await;
        if may_type {
            assert_eq!(first.payload, input, "case {i}");
            assert_eq!(gw.recv().await.payload, ping, "case {i}");
        } else {
            assert_eq!(
                first.payload, ping,
                "case {i}: a watcher's input was relayed"
            );
        }
    }
}
}
