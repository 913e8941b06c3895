//! The isolation matrix for realtime: every subscriber that is not team B's
//! gateway joins `postgres_changes` channels on every table of
//! `schema::TABLES` (unfiltered, per event, and with filters naming team
//! B's team, gateway, subagent and run), then the control plane inserts,
//! updates and deletes team B's rows. No frame carrying a B row may reach
//! them. Invalid tokens (expired, forged, `alg: none`, a revoked gateway)
//! are refused at join, as Supabase Realtime answers an invalid token with
//! a join error; the anon key joins and receives nothing; an
//! `access_token` push with a bad token closes the channel. Positive
//! controls: gateway B and the service key receive the same changes.
//!
//! People (issue 13): a member of another team gets only its own team's
//! rows; a removed member, and a member removed after joining, get
//! nothing (membership is read live), and so does a member who signs out
//! after joining (the session is read live too); a signed-out session and
//! an expired user token are refused at join. A viewer of team B is a positive
//! control: it receives B's changes on every table its role reads.
//!
//! Run: `cargo test -p panorama-hub --test isolation_realtime -- --nocapture`.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use panorama_hub::auth::Claims;
use panorama_hub::schema::{Table, TABLES};
use panorama_testkit::{Hub, PairedGateway};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a socket must stay quiet, after every positive control has
/// caught up, before "received nothing" is believed.
const QUIET: Duration = Duration::from_millis(700);
const WAIT: Duration = Duration::from_secs(10);

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn sign(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Prefix of every team secret value the test stores.
const SECRET_MARKER: &str = "RTSECRETVALUE";

/// Team B's identity, and the ids of everything of B's the test made.
#[derive(Clone)]
struct B {
    team: String,
    gateway: String,
    subagent: String,
    run: String,
    /// A person not (yet) in team B, for the team_members rows.
    joiner: String,
}

/// A service-key row for `table` in team B; a table without a case
/// fails the test (a new table must be added here).
fn b_row(table: &str, b: &B, n: i64) -> Value {
    match table {
        "teams" => json!({"name": "b-extra"}),
        "team_gateways" => json!({"team_id": b.team, "device_name": "b-extra"}),
        "gateway_pairing_codes" => {
            json!({"code": format!("RT{}", &panorama_testkit::new_uuid()[..8]).to_uppercase(), "team_id": b.team, "expires_at": "2999-01-01T00:00:00Z"})
        }
        "gateway_jobs" => json!({"team_id": b.team, "gateway_id": b.gateway}),
        "gateway_events" => json!({"team_id": b.team, "gateway_id": b.gateway, "message": "m"}),
        "subagents" => {
            json!({"id": panorama_testkit::new_uuid(), "team_id": b.team, "gateway_id": b.gateway, "subagent_type": "codex_gateway"})
        }
        "subagent_runs" => {
            json!({"subagent_id": b.subagent, "team_id": b.team, "gateway_id": b.gateway, "run_sequence": 10 + n, "status": "pending_admission"})
        }
        "subagent_run_events" => {
            json!({"run_id": b.run, "subagent_id": b.subagent, "team_id": b.team, "gateway_id": b.gateway, "sequence": 10 + n, "event_type": "message"})
        }
        "team_resources" => {
            json!({"team_id": b.team, "resource_type": "remote_shell", "metadata": {"gateway_id": b.gateway}})
        }
        "team_members" => json!({"team_id": b.team, "user_id": b.joiner, "role": "member"}),
        // The value is write-only: no frame may ever carry it (checked below).
        "team_secrets" => {
            json!({"team_id": b.team, "name": format!("rt-{n}-{}", &panorama_testkit::new_uuid()[..8]), "value": format!("{SECRET_MARKER}{n}")})
        }
        other => panic!("table {other} has no realtime isolation case"),
    }
}

fn b_patch(table: &str) -> Value {
    match table {
        "teams" => json!({"name": "b-extra-2"}),
        "team_gateways" => json!({"device_name": "b-extra-2"}),
        "gateway_pairing_codes" => json!({"used_at": "2030-01-01T00:00:00Z"}),
        "gateway_jobs" | "subagents" => json!({"status": "running"}),
        "gateway_events" => json!({"message": "m2"}),
        "subagent_runs" => json!({"status": "completed"}),
        "subagent_run_events" => json!({"payload": {"n": 2}}),
        "team_resources" => json!({"title": "t2"}),
        "team_members" => json!({"role": "viewer"}),
        "team_secrets" => json!({"value": format!("{SECRET_MARKER}patched")}),
        other => panic!("table {other} has no realtime isolation case"),
    }
}

/// Every binding shape on `table` that could name B's rows.
fn bindings(table: &Table, b: &B) -> Vec<Value> {
    let mut out: Vec<Value> = ["*", "INSERT", "UPDATE", "DELETE"]
        .iter()
        .map(|e| json!({"event": e, "schema": "public", "table": table.name}))
        .collect();
    let id = match table.name {
        "teams" => Some(&b.team),
        "team_gateways" => Some(&b.gateway),
        "subagents" => Some(&b.subagent),
        "subagent_runs" => Some(&b.run),
        _ => None,
    };
    for (col, value) in [
        ("team_id", Some(&b.team)),
        ("gateway_id", Some(&b.gateway)),
        ("subagent_id", Some(&b.subagent)),
        ("run_id", Some(&b.run)),
        ("id", id),
    ] {
        if let (Some(_), Some(v)) = (table.column(col), value) {
            out.push(json!({"event": "*", "schema": "public", "table": table.name, "filter": format!("{col}=eq.{v}")}));
        }
    }
    out
}

/// A Phoenix client speaking vsn 1.0.0 (JSON object frames).
struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Every frame that was not the reply being waited for.
    log: Vec<Value>,
}

impl Ws {
    async fn connect(url: &str, apikey: &str, bearer: Option<&str>) -> Ws {
        let ws_url = format!(
            "{}/realtime/v1/websocket?apikey={apikey}&vsn=1.0.0",
            url.replacen("http", "ws", 1)
        );
        let mut req = ws_url.into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws {
            stream,
            next_ref: 0,
            log: Vec::new(),
        }
    }

    async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let frame =
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": r});
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
        r
    }

    /// The next frame, or None when none came within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match timeout(wait, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    async fn reply(&mut self, r: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let f = self
                .next(deadline - Instant::now())
                .await
                .expect("no reply within 10 s");
            if f["event"] == "phx_reply" && f["ref"] == r {
                return f;
            }
            self.log.push(f);
        }
    }

    /// Joins `realtime:<name>` with `bindings`; the reply's status.
    async fn join(&mut self, name: &str, bindings: &[Value], token: Option<&str>) -> Value {
        let mut payload = json!({"config": {"broadcast": {"self": false}, "presence": {"enabled": false}, "postgres_changes": bindings, "private": false}});
        if let Some(t) = token {
            payload["access_token"] = json!(t);
        }
        let r = self
            .push(&format!("realtime:{name}"), "phx_join", payload)
            .await;
        self.reply(&r).await["payload"].clone()
    }

    /// Reads into the log until `done` holds for a frame (true) or
    /// nothing came for `quiet` (false).
    async fn drain(&mut self, quiet: Duration, done: impl Fn(&Value) -> bool) -> bool {
        while let Some(f) = self.next(quiet).await {
            let hit = done(&f);
            self.log.push(f);
            if hit {
                return true;
            }
        }
        false
    }
}

/// What a subscriber is, and what it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every join answers `status: error`.
    RefusedAtJoin,
    /// Joins, then receives nothing at all.
    Nothing,
    /// Joins; receives only its own gateway's rows (the sentinel job).
    OwnOnly,
    /// Positive control: receives B's rows.
    Everything,
}

struct Sub {
    name: &'static str,
    /// `Authorization` on the upgrade request (not what realtime-js does,
    /// but the upgrade accepts it).
    socket_bearer: Option<String>,
    join_token: Option<String>,
    /// A token pushed (`access_token`) on every channel after the join.
    push_token: Option<String>,
    /// The push must close the channels (an invalid token).
    push_closes: bool,
    expect: Expect,
    /// A gateway's own id (its sentinel job proves it caught up).
    own_gateway: Option<String>,
    /// A person's own team: frames of its rows are theirs to see.
    own_team: Option<String>,
    /// A person whose role reads every team table but pairing codes and
    /// secret names (a viewer).
    person_reads: bool,
    /// A membership removed after this subscriber joined.
    removed_after_join: Option<String>,
    /// Signs out (this access token) after joining.
    signs_out_after_join: Option<String>,
}

panorama_testkit::on_both_backends! {
fn no_subscriber_receives_another_principals_rows() {
    let hub = Hub::start();
    let team_a = hub.create_team("a");
    let team_b = hub.create_team("b");
    let gw: BTreeMap<&str, PairedGateway> = [
        ("A", hub.pair(&team_a, "a")),
        ("A2", hub.pair(&team_a, "a2")),
        ("B", hub.pair(&team_b, "b")),
        ("Brev", hub.pair(&team_b, "b-revoked")),
    ]
    .into_iter()
    .collect();
    let sub = panorama_testkit::new_uuid();
    hub.insert(
        "subagents",
        json!({"id": sub, "team_id": team_b, "gateway_id": gw["B"].gateway_id, "subagent_type": "codex_gateway"}),
    );
    let run = hub.insert(
        "subagent_runs",
        json!({"subagent_id": sub, "team_id": team_b, "gateway_id": gw["B"].gateway_id, "run_sequence": 1}),
    );
    let b = B {
        team: team_b.clone(),
        gateway: gw["B"].gateway_id.clone(),
        subagent: sub,
        run: run["id"].as_str().unwrap().to_string(),
        joiner: hub.create_user("joiner@example.test", "joiner password"),
    };
    let a_member = hub.member(&team_a, "member");
    let b_viewer = hub.member(&team_b, "viewer");
    let b_removed = hub.member(&team_b, "member");
    let b_removed_later = hub.member(&team_b, "member");
    let b_signed_out = hub.member(&team_b, "member");
    let b_signs_out_later = hub.member(&team_b, "member");
    let membership = |u: &str| {
        hub.select(
            "team_members",
            &format!("team_id=eq.{team_b}&user_id=eq.{u}"),
        )[0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let removed_id = membership(&b_removed.user_id);
    hub.http()
        .delete(format!(
            "{}/rest/v1/team_members?id=eq.{removed_id}",
            hub.url
        ))
        .header("apikey", &hub.service_key)
        .header("authorization", format!("Bearer {}", hub.service_key))
        .send()
        .unwrap();
    let res = hub
        .req(
            reqwest::Method::POST,
            "/auth/v1/logout",
            &b_signed_out.access_token,
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    hub.patch(
        "team_gateways",
        &format!("id=eq.{}", gw["Brev"].gateway_id),
        json!({"revoked_at": "2025-01-01T00:00:00Z"}),
    );

    // Bad tokens for gateway B: expired (the hub's key, exp in the past),
    // forged (another key), unsigned, and one that expires in 2 s.
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(hub.data_dir.path().join("keys.json")).unwrap(),
    )
    .unwrap();
    let secret = keys["jwt_secret"].as_str().unwrap().as_bytes().to_vec();
    let claims = claims_of(&gw["B"].access_token);
    let now = chrono::Utc::now().timestamp();
    let expired = sign(
        &secret,
        &Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        },
    );
    let forged = sign(b"not the hub's secret, but long enough", &claims);
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&claims).unwrap())
    );
    let user_claims = claims_of(&b_viewer.access_token);
    let expired_user = sign(
        &secret,
        &Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..user_claims
        },
    );
    let expiring_at = now + 2;
    let expiring = sign(
        &secret,
        &Claims {
            exp: expiring_at,
            ..claims.clone()
        },
    );

    let tok = |k: &str| Some(gw[k].access_token.clone());
    let s = |name, socket_bearer, join_token, expect| Sub {
        name,
        socket_bearer,
        join_token,
        push_token: None,
        push_closes: false,
        expect,
        own_gateway: None,
        own_team: None,
        person_reads: false,
        removed_after_join: None,
        signs_out_after_join: None,
    };
    let mut subs = vec![
        Sub {
            own_gateway: Some(gw["A"].gateway_id.clone()),
            ..s("gateway A", None, tok("A"), Expect::OwnOnly)
        },
        Sub {
            own_gateway: Some(gw["A2"].gateway_id.clone()),
            ..s("gateway A2", None, tok("A2"), Expect::OwnOnly)
        },
        s("revoked B", None, tok("Brev"), Expect::RefusedAtJoin),
        s(
            "expired B token",
            None,
            Some(expired.clone()),
            Expect::RefusedAtJoin,
        ),
        s(
            "forged B token",
            None,
            Some(forged.clone()),
            Expect::RefusedAtJoin,
        ),
        s(
            "alg=none B token",
            None,
            Some(none.clone()),
            Expect::RefusedAtJoin,
        ),
        s("anon key", None, None, Expect::Nothing),
        // The upgrade's Authorization stands for the socket's joins
        // without a token: it must be held to the same rules.
        s(
            "revoked B as socket bearer",
            tok("Brev"),
            None,
            Expect::RefusedAtJoin,
        ),
        s(
            "expiring B token as socket bearer",
            Some(expiring),
            None,
            Expect::Nothing,
        ),
    ];
    for (name, token, closes) in [
        ("A, then a forged access_token", forged.clone(), true),
        ("A, then an expired access_token", expired.clone(), true),
        ("A, then an alg=none access_token", none.clone(), true),
        (
            "A, then the revoked gateway's token",
            gw["Brev"].access_token.clone(),
            true,
        ),
        ("A, then the anon key", hub.anon_key.clone(), false),
    ] {
        subs.push(Sub {
            push_token: Some(token),
            push_closes: closes,
            ..s(name, None, tok("A"), Expect::Nothing)
        });
    }
    let person = |name, token: &str, expect| s(name, None, Some(token.to_string()), expect);
    subs.push(Sub {
        own_gateway: Some(gw["A"].gateway_id.clone()),
        own_team: Some(team_a.clone()),
        ..person("member of team A", &a_member.access_token, Expect::OwnOnly)
    });
    subs.push(person(
        "removed member of B",
        &b_removed.access_token,
        Expect::Nothing,
    ));
    subs.push(Sub {
        removed_after_join: Some(membership(&b_removed_later.user_id)),
        ..person(
            "member of B removed after joining",
            &b_removed_later.access_token,
            Expect::Nothing,
        )
    });
    subs.push(Sub {
        signs_out_after_join: Some(b_signs_out_later.access_token.clone()),
        ..person(
            "member of B signed out after joining",
            &b_signs_out_later.access_token,
            Expect::Nothing,
        )
    });
    subs.push(person(
        "signed-out member of B",
        &b_signed_out.access_token,
        Expect::RefusedAtJoin,
    ));
    subs.push(person(
        "expired B user token",
        &expired_user,
        Expect::RefusedAtJoin,
    ));
    subs.push(Sub {
        person_reads: true,
        ..person(
            "viewer of B (control)",
            &b_viewer.access_token,
            Expect::Everything,
        )
    });
    subs.push(Sub {
        own_gateway: Some(b.gateway.clone()),
        ..s("owner B (control)", None, tok("B"), Expect::Everything)
    });
    subs.push(s(
        "service (control)",
        None,
        Some(hub.service_key.clone()),
        Expect::Everything,
    ));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(subscribe_and_change(&hub, &b, &gw, subs, expiring_at));
    println!("{report}");
}
}

async fn rest(
    hub: &Hub,
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Vec<Value> {
    let mut req = http
        .request(method, format!("{}{path}", hub.url))
        .header("apikey", &hub.service_key)
        .header("authorization", format!("Bearer {}", hub.service_key))
        .header("prefer", "return=representation");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v.as_array().cloned().unwrap_or_default()
}

async fn subscribe_and_change(
    hub: &Hub,
    b: &B,
    gw: &BTreeMap<&str, PairedGateway>,
    subs: Vec<Sub>,
    expiring_at: i64,
) -> String {
    let http = reqwest::Client::new();
    let mut channels: Vec<(String, Vec<Value>)> = TABLES
        .iter()
        .map(|t| (format!("iso-{}", t.name), bindings(t, b)))
        .collect();
    // Bindings on every table at once.
    channels.push((
        "iso-any".into(),
        vec![
            json!({"event": "*", "schema": "public"}),
            json!({"event": "*", "schema": "public", "filter": format!("team_id=eq.{}", b.team)}),
        ],
    ));
    let per_sub: usize = channels.iter().map(|(_, b)| b.len()).sum();

    let mut leaked = Vec::new();
    let mut cases = 0;
    let mut refused_at_join = 0;
    let mut closed_by_push = 0;
    let mut sockets = Vec::new();
    for s in &subs {
        let mut ws = Ws::connect(&hub.url, &hub.anon_key, s.socket_bearer.as_deref()).await;
        for (name, binds) in &channels {
            let reply = ws.join(name, binds, s.join_token.as_deref()).await;
            cases += binds.len();
            match s.expect {
                Expect::RefusedAtJoin => {
                    if reply["status"] == "error" {
                        refused_at_join += binds.len();
                    } else {
                        leaked.push(format!("{}: join of {name} accepted: {reply}", s.name));
                    }
                }
                _ => assert_eq!(reply["status"], "ok", "{}: {name}: {reply}", s.name),
            }
        }
        if let Some(t) = &s.push_token {
            for (name, _) in &channels {
                ws.push(
                    &format!("realtime:{name}"),
                    "access_token",
                    json!({"access_token": t}),
                )
                .await;
            }
            if s.push_closes {
                // Each channel answers a bad token with a system error and
                // phx_close (supabase-wire §5.7).
                let mut closed = BTreeSet::new();
                let deadline = Instant::now() + WAIT;
                while closed.len() < channels.len() {
                    let f = ws
                        .next(deadline - Instant::now())
                        .await
                        .unwrap_or_else(|| panic!("{}: channels not closed: {closed:?}", s.name));
                    if f["event"] == "phx_close" {
                        closed.insert(f["topic"].as_str().unwrap().to_string());
                    }
                    ws.log.push(f);
                }
                closed_by_push += channels.len();
            }
        }
        sockets.push(ws);
    }
    // Memberships that end while their holder is subscribed.
    for id in subs.iter().filter_map(|s| s.removed_after_join.as_ref()) {
        rest(
            hub,
            &http,
            reqwest::Method::DELETE,
            &format!("/rest/v1/team_members?id=eq.{id}"),
            None,
        )
        .await;
    }
    for token in subs.iter().filter_map(|s| s.signs_out_after_join.as_ref()) {
        let res = http
            .post(format!("{}/auth/v1/logout", hub.url))
            .header("apikey", &hub.anon_key)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "signing out after joining");
    }
    // The expiring socket token must be past its `exp` before any change.
    let wait_ms = (expiring_at * 1000 + 1200 - chrono::Utc::now().timestamp_millis()).max(0);
    tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;

    // Team B's rows change: an insert, an update and a delete on every
    // table, and updates of B's own gateway and team rows.
    let mut b_pks: BTreeSet<String> = [&b.team, &b.gateway, &b.subagent, &b.run]
        .into_iter()
        .cloned()
        .collect();
    let mut made = Vec::new();
    for (n, t) in TABLES.iter().enumerate() {
        let row = rest(
            hub,
            &http,
            reqwest::Method::POST,
            &format!("/rest/v1/{}", t.name),
            Some(b_row(t.name, b, n as i64)),
        )
        .await;
        let pk = row[0][t.primary_key].as_str().unwrap().to_string();
        rest(
            hub,
            &http,
            reqwest::Method::PATCH,
            &format!("/rest/v1/{}?{}=eq.{pk}", t.name, t.primary_key),
            Some(b_patch(t.name)),
        )
        .await;
        b_pks.insert(pk.clone());
        made.push((*t, pk));
    }
    for (t, pk) in made.iter().rev() {
        rest(
            hub,
            &http,
            reqwest::Method::DELETE,
            &format!("/rest/v1/{}?{}=eq.{pk}", t.name, t.primary_key),
            None,
        )
        .await;
    }
    rest(
        hub,
        &http,
        reqwest::Method::PATCH,
        &format!("/rest/v1/team_gateways?id=eq.{}", b.gateway),
        Some(json!({"device_name": "b-renamed"})),
    )
    .await;
    rest(
        hub,
        &http,
        reqwest::Method::PATCH,
        &format!("/rest/v1/teams?id=eq.{}", b.team),
        Some(json!({"name": "b-renamed"})),
    )
    .await;
    // Sentinels: one job per gateway, after everything else. The feed is
    // ordered, so a socket that has its sentinel has seen every change.
    let mut sentinels = BTreeMap::new();
    for k in ["A", "A2", "B"] {
        let g = &gw[k];
        let job = rest(
            hub,
            &http,
            reqwest::Method::POST,
            "/rest/v1/gateway_jobs",
            Some(
                json!({"team_id": g.team_id, "gateway_id": g.gateway_id, "job_type": "diagnostic"}),
            ),
        )
        .await;
        sentinels.insert(
            g.gateway_id.clone(),
            job[0]["id"].as_str().unwrap().to_string(),
        );
    }
    let last_sentinel = sentinels[&b.gateway].clone();

    let record_id = |f: &Value| -> Option<String> {
        let d = &f["payload"]["data"];
        d["record"]["id"]
            .as_str()
            .or(d["old_record"]["id"].as_str())
            .or(d["record"]["code"].as_str())
            .or(d["old_record"]["code"].as_str())
            .map(str::to_string)
    };
    let is_sentinel_of = |f: &Value, gateway: &str| {
        f["event"] == "postgres_changes"
            && record_id(f).as_deref() == sentinels.get(gateway).map(String::as_str)
    };
    // Positive controls first: they prove the changes went out.
    let mut report = Vec::new();
    let mut quiet_subs = 0;
    let mut closed_at_expiry = 0;
    for (s, ws) in subs.iter().zip(sockets.iter_mut()) {
        if s.expect != Expect::Everything {
            continue;
        }
        let target = match &s.own_gateway {
            Some(g) => sentinels[g].clone(),
            None => last_sentinel.clone(),
        };
        let got = ws
            .drain(WAIT, |f| {
                f["event"] == "postgres_changes" && record_id(f).as_deref() == Some(target.as_str())
            })
            .await;
        assert!(got, "{}: its sentinel never arrived", s.name);
        let mut tables: BTreeSet<&str> = BTreeSet::new();
        let mut frames = 0;
        for f in &ws.log {
            if f["event"] == "postgres_changes"
                && record_id(f).is_some_and(|id| b_pks.contains(&id))
            {
                tables.insert(f["payload"]["data"]["table"].as_str().unwrap());
                frames += 1;
            }
        }
        // The owner sees the tables the spec lets a gateway select; the
        // service key sees every table.
        let want: BTreeSet<&str> = if s.person_reads {
            TABLES
                .iter()
                .map(|t| t.name)
                // Pairing codes are for managers, secret names for those
                // who dispatch: a viewer gets neither.
                .filter(|t| !matches!(*t, "gateway_pairing_codes" | "team_secrets"))
                .collect()
        } else if s.own_gateway.is_some() {
            [
                "team_gateways",
                "gateway_jobs",
                "subagents",
                "subagent_runs",
                "subagent_run_events",
                "team_resources",
            ]
            .into()
        } else {
            TABLES.iter().map(|t| t.name).collect()
        };
        assert_eq!(tables, want, "{}: tables with B frames", s.name);
        report.push(format!(
            "  {}: {frames} frames of B's rows on {} tables",
            s.name,
            tables.len()
        ));
    }
    for (s, ws) in subs.iter().zip(sockets.iter_mut()) {
        match s.expect {
            Expect::Everything => continue,
            Expect::OwnOnly => {
                let own = s.own_gateway.as_deref().unwrap();
                let got = ws.drain(WAIT, |f| is_sentinel_of(f, own)).await;
                assert!(got, "{}: its own sentinel job never arrived", s.name);
                ws.drain(QUIET, |_| false).await;
            }
            _ => {
                ws.drain(QUIET, |_| false).await;
            }
        }
        let mut own_frames = 0;
        for f in &ws.log {
            if f["event"] != "postgres_changes" {
                continue;
            }
            if s.own_gateway
                .as_deref()
                .is_some_and(|g| is_sentinel_of(f, g))
            {
                own_frames += 1;
                continue;
            }
            let d = &f["payload"]["data"];
            let team_of = d["record"]["team_id"]
                .as_str()
                .or(d["old_record"]["team_id"].as_str());
            if s.own_team.is_some() && team_of == s.own_team.as_deref() {
                own_frames += 1;
                continue;
            }
            let d = &f["payload"]["data"];
            leaked.push(format!(
                "{}: {} {} {} {:?}",
                s.name,
                f["topic"],
                d["type"],
                d["table"],
                record_id(f)
            ));
        }
        if own_frames == 0 {
            quiet_subs += 1;
        }
        if s.name.starts_with("expiring") {
            // Its channels end when the token does (system error, then
            // phx_close), as for a join token.
            let closes = ws.log.iter().filter(|f| f["event"] == "phx_close").count();
            assert_eq!(
                closes,
                channels.len(),
                "{}: channels closed at expiry",
                s.name
            );
            closed_at_expiry += closes;
        }
        report.push(format!(
            "  {}: {:?}, {own_frames} frames of its own rows, {} other frames",
            s.name,
            s.expect,
            ws.log
                .iter()
                .filter(|f| f["event"] == "postgres_changes")
                .count()
                - own_frames
        ));
    }
    // Write-only values reach no subscriber, the service key's included.
    for (s, ws) in subs.iter().zip(sockets.iter()) {
        for f in &ws.log {
            if f.to_string().contains(SECRET_MARKER) {
                leaked.push(format!("{}: a frame carries a secret value: {f}", s.name));
            }
        }
    }
    let negative = subs
        .iter()
        .filter(|s| s.expect != Expect::Everything)
        .count();
    let summary = format!(
        "realtime: {cases} cases ({} subscribers × {} channels, {per_sub} bindings each; {negative} subscribers must not see B), {refused_at_join} refused at join, {closed_by_push} channels closed by a bad access_token push, {closed_at_expiry} closed when the socket's token expired, {quiet_subs} subscribers received nothing, {} leaked\n{}",
        subs.len(),
        channels.len(),
        leaked.len(),
        report.join("\n")
    );
    assert!(cases > 0 && refused_at_join > 0 && closed_by_push > 0);
    assert!(
        leaked.is_empty(),
        "{summary}\nleaked frames:\n{}",
        leaked.join("\n")
    );
    summary
}
