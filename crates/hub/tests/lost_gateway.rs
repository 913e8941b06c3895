//! The lost-gateway sweeper (spec §16.10 "stale jobs"), end to end on both
//! backends: a real gateway is killed for good (SIGKILL, never restarted)
//! while it runs a stream-json subagent run and a `shell_exec`; after the
//! timeout the hub has failed both jobs, each once, the run has exactly one
//! `run_failed` event and a failed row, and the released subagent's next
//! run, on another gateway, starts and completes. On SQLite one hub sweeps;
//! on PostgreSQL three replicas of one database sweep at once (the gateways
//! connected to two of them, the test's writes going to the third), and
//! their sweep counters add up to exactly the two jobs.

use panorama_testkit::{backend, new_uuid, Backend, GatewayHost, Hub, PairedGateway};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);
/// The sweep's timeout: longer than the gateway's 30 s heartbeat interval,
/// so that only a dead gateway is lost.
const TIMEOUT_SECS: &str = "40";
/// From the kill to the sweep: the timeout after the last heartbeat, plus
/// the sweep interval and slack.
const SWEPT_WITHIN: Duration = Duration::from_secs(75);
/// The sweeper's interval for [`TIMEOUT_SECS`] (`timeout / 6`), rounded up.
const SWEEP_INTERVAL: Duration = Duration::from_secs(7);

/// The hubs that sweep: one on SQLite; on PostgreSQL, three replicas of
/// one database, every one running the sweeper.
fn sweeping_hubs() -> Vec<Hub> {
    let env = [("PANORAMA_HUB_LOST_GATEWAY_TIMEOUT", TIMEOUT_SECS)];
    let first = Hub::start_with_env(&env);
    let mut hubs = Vec::new();
    if backend() == Backend::Postgres {
        hubs.push(first.replica_with_env(&env));
        hubs.push(first.replica_with_env(&env));
    }
    hubs.insert(0, first);
    hubs
}

/// Jobs the hubs' sweepers failed, summed over the replicas.
fn jobs_swept(hubs: &[Hub]) -> f64 {
    hubs.iter()
        .map(|h| {
            h.metric("panorama_hub_lost_gateway_jobs_failed_total")
                .expect("the sweep counter in /metrics")
        })
        .sum()
}

fn start_gateway(
    hub: &Hub,
    gw: &PairedGateway,
    env: &[(&str, &str)],
) -> (GatewayHost, panorama_testkit::RunningGateway) {
    let host = GatewayHost::new();
    host.write_config(hub, gw, true);
    let running = host.start(hub, env);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    (host, running)
}

/// Accepts a run of `sid` on `gw` (later protocol) and queues its job.
fn accepted_run(hub: &Hub, gw: &PairedGateway, sid: &str, sequence: i64) -> (String, String) {
    let run_id = new_uuid();
    let input =
        json!({"schema_version": 1, "prompt": "work", "run_id": run_id, "run_sequence": sequence});
    let meta = json!({"current_run_id": run_id, "current_run_sequence": sequence});
    if sequence == 1 {
        hub.insert(
            "subagents",
            json!({"id": sid, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
                   "subagent_type": "claude_code_gateway", "status": "running",
                   "input": input, "metadata": meta}),
        );
    } else {
        hub.patch(
            "subagents",
            &format!("id=eq.{sid}"),
            json!({"gateway_id": gw.gateway_id, "status": "running", "input": input, "metadata": meta}),
        );
    }
    hub.insert(
        "subagent_runs",
        json!({"id": run_id, "subagent_id": sid, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "run_sequence": sequence, "status": "running", "prompt": "work"}),
    );
    let job = hub.insert_job(
        gw,
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    (run_id, job)
}

fn wait_status(hub: &Hub, table: &str, id: &str, status: &str) -> Value {
    wait_status_for(hub, table, id, status, WAIT)
}

fn wait_status_for(hub: &Hub, table: &str, id: &str, status: &str, wait: Duration) -> Value {
    hub.wait_for(&format!("{table} {id} to be {status}"), wait, || {
        let row = hub.row(table, id)?;
        let now = row["status"].as_str().unwrap_or_default().to_string();
        assert!(
            now == status || !["completed", "failed", "cancelled"].contains(&now.as_str()),
            "{table} {id} ended {now} while waiting for {status}: {row}"
        );
        (now == status).then_some(row)
    })
}

panorama_testkit::on_both_backends! {
fn a_gateway_killed_for_good_has_its_jobs_failed_and_its_subagent_released() {
    let hubs = sweeping_hubs();
    // The test writes and reads through the first hub; the doomed gateway
    // is connected to the second, its rescuer to the third (all the same
    // hub on SQLite).
    let hub = &hubs[0];
    let doomed_on = &hubs[1 % hubs.len()];
    let rescuer_on = &hubs[2 % hubs.len()];
    let team = hub.create_team("lost");
    let gw = hub.pair(&team, "doomed");
    // The agent holds its process open after its output, so the run is
    // still running when the gateway dies.
    hub.set_full_control(&gw.gateway_id, true);
    let (host, mut running) = start_gateway(doomed_on, &gw, &[("FAKE_AGENT_HOLD_MS", "30000")]);
    let sid = new_uuid();
    let (run_id, run_job) = accepted_run(hub, &gw, &sid, 1);
    let resource = hub.insert(
        "team_resources",
        json!({"team_id": team, "resource_type": "remote_shell", "title": "shell",
               "max_access_level": "editor",
               "metadata": {"gateway_id": gw.gateway_id, "full_control": true}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shell_job = hub.insert_job(
        &gw,
        "shell_exec",
        json!({"resource_id": resource, "command": "sleep 30", "timeout_ms": 60000}),
    );
    wait_status(hub, "gateway_jobs", &run_job, "running");
    wait_status(hub, "gateway_jobs", &shell_job, "running");
    hub.wait_for("the run's first event", WAIT, || {
        (!hub.select("subagent_run_events", &format!("run_id=eq.{run_id}")).is_empty()).then_some(())
    });
    running.sigkill();

    for job in [&run_job, &shell_job] {
        let row = wait_status_for(hub, "gateway_jobs", job, "failed", SWEPT_WITHIN);
        assert!(
            row["error"].as_str().unwrap_or_default().starts_with("gateway lost"),
            "{row}\n{}",
            host.log_tail(20)
        );
    }
    let swept_at = std::time::Instant::now();
    let run = wait_status(hub, "subagent_runs", &run_id, "failed");
    assert!(run["error"].as_str().unwrap().starts_with("gateway lost"), "{run}");
    let events = hub.select(
        "subagent_run_events",
        &format!("run_id=eq.{run_id}&order=sequence.asc"),
    );
    let last = events.last().expect("events");
    assert_eq!(last["event_type"], "run_failed", "{events:?}");
    assert_eq!(last["payload"]["source"], "hub_lost_gateway_sweep");
    assert_eq!(hub.row("subagents", &sid).unwrap()["status"], "failed");

    // The subagent is free: its next run starts and completes on another
    // gateway (the unique "one running run per subagent" index would have
    // refused the new run row otherwise).
    let gw2 = hub.pair(&team, "rescuer");
    let (_host2, _running2) = start_gateway(rescuer_on, &gw2, &[]);
    let (run2, job2) = accepted_run(hub, &gw2, &sid, 2);
    let done = hub.wait_job_terminal(&job2, WAIT);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(hub.row("subagent_runs", &run2).unwrap()["status"], "completed");

    // Every sweeper has looked again since: each job was failed by exactly
    // one of them, once, and the run got exactly one run_failed.
    std::thread::sleep(SWEEP_INTERVAL.saturating_sub(swept_at.elapsed()));
    assert_eq!(jobs_swept(&hubs), 2.0, "jobs failed by the sweepers of {} hubs", hubs.len());
    let failed_events = hub
        .select(
            "subagent_run_events",
            &format!("run_id=eq.{run_id}&event_type=eq.run_failed"),
        )
        .len();
    assert_eq!(failed_events, 1, "run_failed events of the lost run");
}
}
