//! Three hub replicas on one PostgreSQL database (issue 14): realtime
//! changes committed through one replica reach gateways connected to
//! another, and the rules that must hold once across the whole deployment
//! hold under concurrent requests sent to different replicas (through a
//! round-robin proxy, or to each replica directly).

use panorama_testkit::{on_backend, Backend, GatewayHost, Hub, RoundRobinProxy};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn replicas() -> (Hub, Hub, Hub) {
    on_backend(Backend::Postgres, || {
        let a = Hub::start_with_env(&[("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0")]);
        let b = a.replica_with_env(&[("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0")]);
        let c = a.replica_with_env(&[("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0")]);
        (a, b, c)
    })
}

fn millis_between(from: &Value, to: &Value) -> i64 {
    let t = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    t(to) - t(from)
}

/// Gateways connected to replicas B and C pick up jobs inserted through
/// replica A within the realtime path: every pickup well under the 5 s
/// reconcile (with the reconcile alone, five pickups under a second would
/// happen by chance once in three thousand runs).
#[test]
fn jobs_inserted_through_one_replica_reach_gateways_on_the_others_by_realtime() {
    let (a, b, c) = replicas();
    let team = a.create_team("acme");
    let mut running = Vec::new();
    let mut gateways = Vec::new();
    for (name, replica) in [("on-b", &b), ("on-c", &c)] {
        let gw = a.pair(&team, name);
        let host = GatewayHost::new();
        host.write_config(replica, &gw, false);
        running.push(host.start(replica, &[]));
        a.wait_gateway_status(&gw.gateway_id, "ready", Duration::from_secs(30));
        gateways.push((gw, host));
    }
    // Let both gateways' realtime channels settle after start-up.
    std::thread::sleep(Duration::from_secs(2));
    let mut latencies = Vec::new();
    for round in 0..5 {
        for (gw, host) in &gateways {
            let id = a.insert_job(gw, "diagnostic", json!({}));
            let done = a.wait_job_terminal(&id, Duration::from_secs(30));
            assert_eq!(
                done["status"],
                "completed",
                "round {round}: {done}\n{}",
                host.log_tail(30)
            );
            latencies.push(millis_between(&done["created_at"], &done["started_at"]));
        }
        // Land on a different phase of the reconcile each round.
        std::thread::sleep(Duration::from_millis(700));
    }
    latencies.sort();
    eprintln!("pickup latency through another replica (ms): {latencies:?}");
    assert!(
        latencies.iter().all(|ms| *ms < 1000),
        "a pickup took the reconcile path: {latencies:?}"
    );
    drop(running);
}

/// Fifty parallel exchanges of one pairing code spread over the replicas:
/// exactly one succeeds.
#[test]
fn fifty_parallel_uses_of_one_pairing_code_pair_exactly_one_gateway() {
    let (a, b, c) = replicas();
    let proxy = RoundRobinProxy::start(&[&a.url, &b.url, &c.url]);
    let team = a.create_team("acme");
    let code = a.create_pairing_code(&team);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (url, anon, code) = (&proxy.url, &a.anon_key, &code);
                s.spawn(move || {
                    reqwest::blocking::Client::new()
                        .post(format!("{url}/functions/v1/exchange-gateway-pairing-code"))
                        .header("apikey", anon)
                        .header("authorization", format!("Bearer {anon}"))
                        .json(&json!({"code": code, "device_name": format!("racer-{i}")}))
                        .send()
                        .expect("pairing request")
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1, "statuses: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 404),
        "{statuses:?}"
    );
    assert_eq!(
        a.select("team_gateways", &format!("team_id=eq.{team}"))
            .len(),
        1
    );
}

/// One refresh token sent to two replicas at the same moment: one rotation,
/// then reuse detection ends the session (the rotated token is refused
/// too), 20 times over.
#[test]
fn a_refresh_token_reused_on_two_replicas_at_once_rotates_once() {
    let (a, b, _c) = replicas();
    let team = a.create_team("acme");
    for round in 0..20 {
        let gw = a.pair(&team, &format!("box-{round}"));
        let barrier = std::sync::Barrier::new(2);
        let (on_a, on_b) = std::thread::scope(|s| {
            let ta = s.spawn(|| {
                barrier.wait();
                a.refresh_session(&gw.refresh_token)
            });
            let tb = s.spawn(|| {
                barrier.wait();
                b.refresh_session(&gw.refresh_token)
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let outcomes = [&on_a, &on_b];
        let rotated: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(rotated.len(), 1, "round {round}: {on_a:?} {on_b:?}");
        let refused = outcomes.iter().find(|(s, _)| *s != 200).unwrap();
        assert_eq!(refused.0, 400, "round {round}: {refused:?}");
        assert_eq!(refused.1["code"], "refresh_token_already_used");
        let new_token = rotated[0].1["refresh_token"].as_str().unwrap();
        let (status, body) = a.refresh_session(new_token);
        assert_eq!(status, 400, "the session ended after reuse: {body}");
    }
}

/// Two claims of one queued job sent to two replicas at the same moment
/// (the gateway's compare-and-set `queued → running`): exactly one gets the
/// row, 30 times over.
#[test]
fn two_claims_of_one_job_through_different_replicas_make_one_claim() {
    let (a, b, c) = replicas();
    let team = a.create_team("acme");
    let gw = a.pair(&team, "box");
    let claim = |hub: &Hub, job: &str| -> Vec<Value> {
        let res = hub
            .req(
                Method::PATCH,
                &format!("/rest/v1/gateway_jobs?id=eq.{job}&status=eq.queued"),
                &gw.access_token,
            )
            .header("prefer", "return=representation")
            .json(&json!({"status": "running", "started_at": chrono::Utc::now().to_rfc3339()}))
            .send()
            .expect("claim request");
        assert!(res.status().is_success(), "claim: {}", res.status());
        res.json::<Vec<Value>>().expect("claim rows")
    };
    let started = Instant::now();
    for round in 0..30 {
        let job = a.insert_job(&gw, "diagnostic", json!({}));
        let (x, y) = if round % 2 == 0 { (&b, &c) } else { (&a, &b) };
        let barrier = std::sync::Barrier::new(2);
        let (one, two) = std::thread::scope(|s| {
            let t1 = s.spawn(|| {
                barrier.wait();
                claim(x, &job)
            });
            let t2 = s.spawn(|| {
                barrier.wait();
                claim(y, &job)
            });
            (t1.join().unwrap(), t2.join().unwrap())
        });
        assert_eq!(one.len() + two.len(), 1, "round {round}: {one:?} {two:?}");
    }
    eprintln!("30 claim races in {:?}", started.elapsed());
}

/// Three replicas sweep lost gateways at the same time: every job left
/// running on a silent gateway is failed once, and each of its runs gets
/// exactly one `run_failed` event (`SKIP LOCKED` hands each job to one
/// replica; a second sweep of a job finds it no longer running).
#[test]
fn three_replicas_sweeping_at_once_fail_each_lost_job_once() {
    let env = [("PANORAMA_HUB_LOST_GATEWAY_TIMEOUT", "2")];
    let (a, _b, _c) = on_backend(Backend::Postgres, || {
        let a = Hub::start_with_env(&env);
        let b = a.replica_with_env(&env);
        let c = a.replica_with_env(&env);
        (a, b, c)
    });
    let team = a.create_team("acme");
    let gw = a.pair(&team, "silent");
    let mut runs = Vec::new();
    for _ in 0..30 {
        let sid = panorama_testkit::new_uuid();
        let run = panorama_testkit::new_uuid();
        a.insert(
            "subagents",
            json!({"id": sid, "team_id": team, "gateway_id": gw.gateway_id,
                   "subagent_type": "claude_code_gateway", "status": "running"}),
        );
        a.insert(
            "subagent_runs",
            json!({"id": run, "subagent_id": sid, "team_id": team, "gateway_id": gw.gateway_id,
                   "run_sequence": 1, "status": "running"}),
        );
        a.insert(
            "gateway_jobs",
            json!({"team_id": team, "gateway_id": gw.gateway_id, "job_type": "subagent_run",
                   "status": "running", "payload": {"subagent_id": sid, "run_id": run}}),
        );
        runs.push(run);
    }
    a.wait_for("every lost job failed", Duration::from_secs(30), || {
        a.select(
            "gateway_jobs",
            &format!("team_id=eq.{team}&status=eq.running"),
        )
        .is_empty()
        .then_some(())
    });
    for run in &runs {
        let row = a.row("subagent_runs", run).unwrap();
        assert_eq!(row["status"], "failed", "{row}");
        let failed = a.select(
            "subagent_run_events",
            &format!("run_id=eq.{run}&event_type=eq.run_failed"),
        );
        assert_eq!(failed.len(), 1, "run {run}: {failed:?}");
    }
    let jobs = a.select("gateway_jobs", &format!("team_id=eq.{team}"));
    assert_eq!(jobs.len(), 30);
    assert!(jobs.iter().all(|j| j["status"] == "failed"), "{jobs:?}");
}
