//! The active-principal cache (`crates/hub/src/active_cache.rs`): the
//! hub answers "is this gateway / session still active?" from memory, and
//! every revocation — made through this hub, through another replica, or
//! while the change listener is down — is honoured at once, not after the
//! cache's TTL. Each test sets the TTL to a minute, so only the
//! invalidation path can explain a prompt refusal.

use panorama_testkit::{on_backend, Backend, Hub, PairedGateway};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

const LONG_TTL: (&str, &str) = ("PANORAMA_HUB_ACTIVE_CACHE_TTL", "60");
const NO_REUSE_GRACE: (&str, &str) = ("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0");

fn replicas() -> (Hub, Hub) {
    on_backend(Backend::Postgres, || {
        let a = Hub::start_with_env(&[LONG_TTL, NO_REUSE_GRACE]);
        let b = a.replica_with_env(&[LONG_TTL, NO_REUSE_GRACE]);
        (a, b)
    })
}

/// One REST read as the gateway (or person) holding `token`; the status.
fn read_as(hub: &Hub, token: &str) -> u16 {
    hub.req(
        Method::GET,
        "/rest/v1/gateway_jobs?select=id&limit=1",
        token,
    )
    .send()
    .expect("REST read")
    .status()
    .as_u16()
}

/// A counter or gauge from the hub's `/metrics`.
fn metric(hub: &Hub, name: &str) -> f64 {
    hub.metric(name)
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Reads as `token` until the hub answers from its cache (the first read
/// may ask the database; later ones must not).
fn warm(hub: &Hub, token: &str) {
    assert_eq!(read_as(hub, token), 200);
    hub.wait_for(
        "the active cache to answer",
        Duration::from_secs(10),
        || {
            let hits = metric(hub, "panorama_hub_active_cache_hits_total");
            assert_eq!(read_as(hub, token), 200);
            (metric(hub, "panorama_hub_active_cache_hits_total") > hits).then_some(())
        },
    );
}

fn revoke_through_rest(hub: &Hub, gw: &PairedGateway) {
    let rows = hub.patch(
        "team_gateways",
        &format!("id=eq.{}", gw.gateway_id),
        json!({"revoked_at": chrono::Utc::now().to_rfc3339()}),
    );
    assert_eq!(rows.len(), 1);
}

/// Reads as `token` until refused; how long that took after `since`, and
/// how many reads were still let through.
fn until_refused(hub: &Hub, token: &str, since: Instant, limit: Duration) -> (Duration, usize) {
    let mut let_through = 0;
    loop {
        let status = read_as(hub, token);
        if status != 200 {
            assert!(
                status == 403 || status == 401,
                "refused with {status}, expected 401/403"
            );
            return (since.elapsed(), let_through);
        }
        let_through += 1;
        assert!(
            since.elapsed() < limit,
            "still accepted {:?} after the revocation ({let_through} reads let through)",
            since.elapsed()
        );
    }
}

panorama_testkit::on_both_backends! {
/// One hub: a revocation made through it is honoured by the very next
/// request — a gateway revoked by the operator CLI, a person signed out.
fn a_revocation_through_this_hub_is_honoured_by_the_next_request() {
    let hub = Hub::start_with_env(&[LONG_TTL]);
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box");
    warm(&hub, &gw.access_token);
    let out = hub.cli(&["gateways", "revoke", &gw.gateway_id], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_as(&hub, &gw.access_token), 403, "revoked gateway");

    let person = hub.member(&team, "member");
    warm(&hub, &person.access_token);
    let res = hub
        .req(Method::POST, "/auth/v1/logout?scope=local", &person.access_token)
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(read_as(&hub, &person.access_token), 401, "signed-out person");
}
}

/// A gateway revoked through replica A is refused by replica B within the
/// NOTIFY's delivery, not after the one-minute TTL B's cached answer had.
#[test]
fn a_gateway_revoked_through_one_replica_is_refused_by_another_at_once() {
    let (a, b) = replicas();
    let team = a.create_team("acme");
    let mut delays = Vec::new();
    for round in 0..5 {
        let gw = a.pair(&team, &format!("box-{round}"));
        warm(&b, &gw.access_token);
        revoke_through_rest(&a, &gw);
        let committed = Instant::now();
        let (delay, let_through) =
            until_refused(&b, &gw.access_token, committed, Duration::from_secs(2));
        delays.push((delay, let_through));
    }
    eprintln!("revoke on A committed → refused on B (delay, reads let through): {delays:?}");
    // Far under the TTL; on an idle machine the first read is refused.
    assert!(
        delays.iter().all(|(d, _)| *d < Duration::from_millis(500)),
        "{delays:?}"
    );
}

/// Refresh-token reuse detected on replica A ends the session: its access
/// tokens are refused on replica B, for a gateway and for a person.
#[test]
fn refresh_token_reuse_on_one_replica_ends_access_tokens_on_another() {
    let (a, b) = replicas();
    let team = a.create_team("acme");
    let gw = a.pair(&team, "box");
    let person = a.member(&team, "member");
    for (who, access, refresh_token) in [
        ("gateway", &gw.access_token, &gw.refresh_token),
        ("person", &person.access_token, &person.refresh_token),
    ] {
        warm(&b, access);
        let (status, rotated) = a.refresh_session(refresh_token);
        assert_eq!(status, 200, "{who}: {rotated}");
        let new_access = rotated["access_token"].as_str().unwrap().to_string();
        warm(&b, &new_access);
        let (status, reused) = a.refresh_session(refresh_token);
        assert_eq!(
            (status, reused["code"].as_str()),
            (400, Some("refresh_token_already_used")),
            "{who}"
        );
        let committed = Instant::now();
        for token in [access, &new_access] {
            let (delay, let_through) = until_refused(&b, token, committed, Duration::from_secs(2));
            eprintln!(
                "{who}: reuse on A → refused on B after {delay:?} ({let_through} let through)"
            );
            assert!(delay < Duration::from_millis(500), "{who}: {delay:?}");
        }
    }
}

/// The address of the database behind a PostgreSQL test hub.
fn database_url(hub: &Hub) -> String {
    std::fs::read_to_string(hub.data_dir.path().join("test-database-url"))
        .expect("a PostgreSQL hub")
        .trim()
        .to_string()
}

/// Revokes a gateway behind every hub's back: plain SQL, no NOTIFY.
fn revoke_in_sql(db: &mut postgres::Client, gw: &PairedGateway) {
    let n = db
        .execute(
            "UPDATE team_gateways SET revoked_at = $1 WHERE id = $2",
            &[&chrono::Utc::now().to_rfc3339(), &gw.gateway_id],
        )
        .expect("revoke in SQL");
    assert_eq!(n, 1);
}

fn listener_pids(db: &mut postgres::Client) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'panorama-hub-listener'",
        &[],
    )
    .expect("pg_stat_activity")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The listener's connection is killed (`pg_terminate_backend`) and a
/// gateway revoked meanwhile in plain SQL, which no NOTIFY announces: the
/// hub dropped its cache when it lost the feed, so it refuses the gateway
/// at the first request; after it reconnects it caches again.
#[test]
fn losing_the_listener_drops_the_cache() {
    let (a, b) = replicas();
    let team = a.create_team("acme");
    let (gw, other) = (a.pair(&team, "box"), a.pair(&team, "other"));
    warm(&b, &gw.access_token);
    let mut db = postgres::Client::connect(&database_url(&b), postgres::NoTls).expect("connect");
    let pids = listener_pids(&mut db);
    assert_eq!(pids.len(), 2, "one listener per replica: {pids:?}");
    let losses = metric(&b, "panorama_hub_active_cache_feed_losses_total");
    for pid in pids {
        db.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate the listener");
    }
    revoke_in_sql(&mut db, &gw);
    b.wait_for(
        "B to notice the lost listener",
        Duration::from_secs(10),
        || (metric(&b, "panorama_hub_active_cache_feed_losses_total") > losses).then_some(()),
    );
    assert_eq!(
        read_as(&b, &gw.access_token),
        403,
        "revoked while the feed was down"
    );
    // Reconnected and in sync again: answers are cached once more.
    b.wait_for("B's listener to be back", Duration::from_secs(10), || {
        (metric(&b, "panorama_hub_active_cache_trusted") == 1.0).then_some(())
    });
    warm(&b, &other.access_token);
}

/// A listener that stops answering without losing its connection (its
/// database backend is stopped with SIGSTOP, as a lagging or partitioned
/// listener would be): its lease runs out and the hub asks the database
/// again, so a revocation nobody announced is honoured within the lease
/// (1 s), not the TTL.
#[test]
fn a_silent_listener_stops_being_trusted_after_its_lease() {
    let (a, b) = replicas();
    let team = a.create_team("acme");
    let gw = a.pair(&team, "box");
    warm(&b, &gw.access_token);
    let mut db = postgres::Client::connect(&database_url(&b), postgres::NoTls).expect("connect");
    let pids = listener_pids(&mut db);
    let signal = |sig: i32| {
        for pid in &pids {
            // SAFETY: a plain kill(2) on the listeners' backend processes.
            assert_eq!(unsafe { libc::kill(*pid, sig) }, 0, "signal {sig} to {pid}");
        }
    };
    // Revoked first, so that nothing between SIGSTOP and SIGCONT can fail.
    revoke_in_sql(&mut db, &gw);
    signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until_refused(&b, &gw.access_token, stopped, Duration::from_secs(5))
    }));
    signal(libc::SIGCONT);
    let (delay, let_through) = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "listener stopped → revoked gateway refused after {delay:?} ({let_through} let through)"
    );
    assert!(delay < Duration::from_millis(1800), "{delay:?}");
    b.wait_for(
        "B's listener to be trusted again",
        Duration::from_secs(10),
        || (metric(&b, "panorama_hub_active_cache_trusted") == 1.0).then_some(()),
    );
}

/// A realtime join on replica B answers `status` (`ok` or `error`), as a
/// gateway joins its job channel with its access token.
fn join_jobs_channel(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    gw: &PairedGateway,
    topic: &str,
) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    rt.block_on(async {
        let url = format!(
            "{}/realtime/v1/websocket?apikey={}&vsn=1.0.0",
            hub.url.replacen("http", "ws", 1),
            hub.anon_key
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("realtime socket");
        let join = json!({
            "topic": format!("realtime:{topic}"), "event": "phx_join", "ref": "1", "join_ref": "1",
            "payload": {"access_token": gw.access_token, "config": {"postgres_changes": [
                {"event": "INSERT", "schema": "public", "table": "gateway_jobs",
                 "filter": format!("team_id=eq.{}", gw.team_id)}]}},
        });
        ws.send(Message::text(join.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("a join reply within 10 s")
                .expect("the socket stays open")
                .expect("a frame");
            if let Message::Text(text) = frame {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["event"] == "phx_reply" && v["ref"] == "1" {
                    return v["payload"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
            }
        }
    })
}

/// Realtime's token check shares the cache: a gateway revoked through
/// replica A can no longer join a channel on replica B, whose cache held
/// "active" for it a moment before.
#[test]
fn a_gateway_revoked_through_one_replica_cannot_join_realtime_on_another() {
    let (a, b) = replicas();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let team = a.create_team("acme");
    let gw = a.pair(&team, "box");
    warm(&b, &gw.access_token);
    assert_eq!(join_jobs_channel(&rt, &b, &gw, "before"), "ok");
    revoke_through_rest(&a, &gw);
    assert_eq!(join_jobs_channel(&rt, &b, &gw, "after"), "error");
}
