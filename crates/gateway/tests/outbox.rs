//! Outbox delivery and crash recovery against a real `panorama-hub`
//! process (loopback only), through the real `panorama-supabase` client.
//!
//! The tests are synchronous: the hub fixtures use a blocking HTTP client,
//! and the async parts run on a multi-thread runtime owned by each test so
//! the delivery task keeps running while the test kills or restarts the hub.

use std::path::Path;
use std::time::Duration;

use panorama_gateway::outbox::{Outbox, OutboxWrite, DEAD_LETTER_FILE};
use panorama_gateway::port::hub::HubControlPlane;
use panorama_gateway::recovery::{
    recover_interrupted_jobs, ClaimLedger, ClaimedJob, RESTART_MESSAGE,
};
use panorama_supabase::Client;
use panorama_testkit::{Hub, PairedGateway};
use serde_json::{json, Value};

const FLUSH: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn client(rt: &tokio::runtime::Runtime, hub: &Hub, gw: &PairedGateway) -> Client {
    rt.block_on(async {
        let c = Client::new(&hub.url, &hub.anon_key).expect("client");
        c.set_session(&gw.access_token, &gw.refresh_token)
            .await
            .expect("set_session");
        c
    })
}

/// The gateway's control-plane port over `c`.
fn port(c: &Client, gw: &PairedGateway) -> HubControlPlane {
    HubControlPlane {
        client: c.clone(),
        gateway_id: gw.gateway_id.clone(),
        team_id: gw.team_id.clone(),
    }
}

fn setup() -> (Hub, PairedGateway) {
    let hub = Hub::start();
    let team = hub.create_team("outbox");
    let gw = hub.pair(&team, "dev");
    (hub, gw)
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn gateway_event(gw: &PairedGateway, code: &str, i: usize) -> OutboxWrite {
    OutboxWrite::Insert {
        table: "gateway_events".into(),
        rows: json!({
            "gateway_id": gw.gateway_id,
            "team_id": gw.team_id,
            "level": "info",
            "code": code,
            "message": format!("event {i}"),
            "details": {"i": i},
        }),
        duplicate_is_delivered: false,
    }
}

fn messages(hub: &Hub, code: &str) -> Vec<String> {
    hub.select(
        "gateway_events",
        &format!("select=message,created_at&code=eq.{code}&order=created_at.asc"),
    )
    .iter()
    .map(|r| r["message"].as_str().unwrap().to_string())
    .collect()
}

fn job_row(hub: &Hub, id: &str) -> Value {
    hub.select("gateway_jobs", &format!("id=eq.{id}"))
        .pop()
        .expect("job row")
}

fn insert_job(
    hub: &Hub,
    gw: &PairedGateway,
    job_type: &str,
    status: &str,
    payload: Value,
) -> String {
    hub.insert(
        "gateway_jobs",
        json!({
            "team_id": gw.team_id,
            "gateway_id": gw.gateway_id,
            "job_type": job_type,
            "status": status,
            "payload": payload,
        }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Claims a queued job through the client, exactly as the runtime does (§3.2.2).
fn claim(rt: &tokio::runtime::Runtime, c: &Client, gw: &PairedGateway, job_id: &str) -> Value {
    let rows = rt
        .block_on(
            c.from("gateway_jobs")
                .update(json!({
                    "status": "running",
                    "gateway_id": gw.gateway_id,
                    "started_at": chrono::Utc::now().to_rfc3339(),
                }))
                .eq("id", job_id)
                .eq("team_id", &gw.team_id)
                .eq("status", "queued")
                .eq("gateway_id", &gw.gateway_id)
                .select("*")
                .execute(),
        )
        .expect("claim");
    assert_eq!(rows.len(), 1, "claim matched {rows:?}");
    rows[0].clone()
}

fn claimed(row: &Value) -> ClaimedJob {
    ClaimedJob {
        job_id: row["id"].as_str().unwrap().into(),
        job_type: row["job_type"].as_str().unwrap().into(),
        payload: row["payload"].clone(),
        claimed_at: chrono::Utc::now().to_rfc3339(),
        pid: std::process::id(),
    }
}

fn dead_letter_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join(DEAD_LETTER_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

panorama_testkit::on_both_backends! {
fn writes_pushed_while_the_hub_is_down_are_delivered_in_order_after_it_returns() {
    let rt = runtime();
    let (hub, gw) = setup();
    let c = client(&rt, &hub, &gw);
    let job_id = insert_job(&hub, &gw, "diagnostic", "running", json!({}));
    let run_subagent = uuid();
    hub.insert(
        "subagents",
        json!({"id": run_subagent, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "running"}),
    );
    let run_id = uuid();

    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(tmp.path()).unwrap();
    let task = {
        let _enter = rt.enter();
        outbox.start(c.clone())
    };

    let listen = hub.url.trim_start_matches("http://").to_string();
    let data = hub.kill();

    for i in 0..5 {
        outbox.push(gateway_event(&gw, "down", i)).unwrap();
    }
    // A dependent pair: delivered out of order, the update would match no
    // row and the run would stay `running`.
    outbox
        .push(OutboxWrite::Insert {
            table: "subagent_runs".into(),
            rows: json!({"id": run_id, "subagent_id": run_subagent, "team_id": gw.team_id,
                         "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running"}),
            duplicate_is_delivered: true,
        })
        .unwrap();
    outbox
        .push(OutboxWrite::Update {
            table: "subagent_runs".into(),
            filters: vec![
                ("id".into(), format!("eq.{run_id}")),
                ("status".into(), "eq.running".into()),
            ],
            patch: json!({"status": "completed"}),
        })
        .unwrap();
    let last = outbox
        .push(OutboxWrite::Update {
            table: "gateway_jobs".into(),
            filters: vec![
                ("id".into(), format!("eq.{job_id}")),
                ("status".into(), "eq.running".into()),
            ],
            patch: json!({"status": "completed", "result": {"ok": true}, "error": null,
                          "completed_at": chrono::Utc::now().to_rfc3339()}),
        })
        .unwrap();
    assert_eq!(last, 8);

    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        outbox.pending(),
        8,
        "nothing can be delivered while the hub is down"
    );
    assert!(!rt.block_on(outbox.flush(Duration::from_millis(100))));

    let hub = Hub::start_in(data, &listen, &[]);
    outbox.notify();
    assert!(
        rt.block_on(outbox.flush(FLUSH)),
        "outbox drained after the hub came back"
    );
    assert_eq!(outbox.pending(), 0);
    assert_eq!(outbox.dead_letters(), 0);

    assert_eq!(
        messages(&hub, "down"),
        (0..5).map(|i| format!("event {i}")).collect::<Vec<_>>()
    );
    let run = hub.select("subagent_runs", &format!("id=eq.{run_id}"));
    assert_eq!(
        run[0]["status"],
        json!("completed"),
        "insert delivered before its update"
    );
    let job = job_row(&hub, &job_id);
    assert_eq!(job["status"], json!("completed"));
    assert_eq!(job["result"], json!({"ok": true}));
    assert!(job["completed_at"].is_string());
    // The delivery order is also the creation order on the hub.
    let events = hub.select(
        "gateway_events",
        "select=created_at&code=eq.down&order=created_at.desc&limit=1",
    );
    assert!(
        events[0]["created_at"].as_str().unwrap() <= run[0]["created_at"].as_str().unwrap(),
        "events were inserted before the run row"
    );
    task.abort();
}
}

panorama_testkit::on_both_backends! {
fn replayed_insert_hitting_23505_counts_as_delivered() {
    let rt = runtime();
    let (hub, gw) = setup();
    let c = client(&rt, &hub, &gw);
    let subagent = uuid();
    let run_id = uuid();
    hub.insert(
        "subagents",
        json!({"id": subagent, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "running"}),
    );
    hub.insert(
        "subagent_runs",
        json!({"id": run_id, "subagent_id": subagent, "team_id": gw.team_id,
               "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running"}),
    );
    let event = |seq: i64, kind: &str, dup: bool| OutboxWrite::Insert {
        table: "subagent_run_events".into(),
        rows: json!({"run_id": run_id, "subagent_id": subagent, "team_id": gw.team_id,
                     "gateway_id": gw.gateway_id, "sequence": seq, "event_type": kind,
                     "payload": {"seq": seq}}),
        duplicate_is_delivered: dup,
    };
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(tmp.path()).unwrap();
    // The same entry twice, as after a crash between delivery and the ack.
    outbox.push(event(0, "run_started", true)).unwrap();
    outbox.push(event(0, "run_started", true)).unwrap();
    // A batch (one entry) that collides on its first row is also "delivered".
    outbox
        .push(OutboxWrite::Insert {
            table: "subagent_run_events".into(),
            rows: json!([
                {"run_id": run_id, "subagent_id": subagent, "team_id": gw.team_id,
                 "gateway_id": gw.gateway_id, "sequence": 0, "event_type": "message", "payload": {}},
            ]),
            duplicate_is_delivered: true,
        })
        .unwrap();
    outbox.push(event(1, "run_progress", true)).unwrap();
    let task = {
        let _enter = rt.enter();
        outbox.start(c)
    };
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(outbox.dead_letters(), 0);
    let rows = hub.select(
        "subagent_run_events",
        &format!("select=sequence,event_type&run_id=eq.{run_id}&order=sequence.asc"),
    );
    assert_eq!(
        rows,
        vec![
            json!({"sequence": 0, "event_type": "run_started"}),
            json!({"sequence": 1, "event_type": "run_progress"}),
        ]
    );

    // Without the flag, the duplicate is a permanent 409 (dead letter).
    outbox.push(event(1, "run_progress", false)).unwrap();
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(outbox.dead_letters(), 1);
    let dead = dead_letter_lines(tmp.path());
    assert_eq!(dead[0]["code"], json!("23505"));
    task.abort();
}
}

panorama_testkit::on_both_backends! {
fn permanent_4xx_goes_to_dead_letters_and_does_not_block_later_entries() {
    let rt = runtime();
    let (hub, gw) = setup();
    let c = client(&rt, &hub, &gw);
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(tmp.path()).unwrap();
    outbox.push(gateway_event(&gw, "dl", 0)).unwrap();
    // 404: no such table.
    outbox
        .push(OutboxWrite::Insert {
            table: "no_such_table".into(),
            rows: json!({"x": 1}),
            duplicate_is_delivered: false,
        })
        .unwrap();
    // 403: a column the gateway may not write.
    outbox
        .push(OutboxWrite::Insert {
            table: "gateway_events".into(),
            rows: json!({"gateway_id": gw.gateway_id, "team_id": gw.team_id,
                         "message": "forged", "created_at": "2000-01-01T00:00:00Z"}),
            duplicate_is_delivered: false,
        })
        .unwrap();
    // 404 from the functions endpoint.
    outbox
        .push(OutboxWrite::Function {
            name: "no-such-function".into(),
            body: json!({}),
        })
        .unwrap();
    outbox.push(gateway_event(&gw, "dl", 1)).unwrap();
    let task = {
        let _enter = rt.enter();
        outbox.start(c)
    };
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(outbox.pending(), 0);
    assert_eq!(outbox.dead_letters(), 3);
    assert_eq!(messages(&hub, "dl"), vec!["event 0", "event 1"]);
    let dead = dead_letter_lines(tmp.path());
    let seqs: Vec<u64> = dead.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    for d in &dead {
        let status = d["status"].as_u64().unwrap();
        assert!((400..500).contains(&status), "{d}");
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
    }
    assert_eq!(dead[0]["write"]["Insert"]["table"], json!("no_such_table"));
    // Dead letters are counted across reopen.
    drop(outbox);
    task.abort();
    assert_eq!(Outbox::open(tmp.path()).unwrap().dead_letters(), 3);
}
}

panorama_testkit::on_both_backends! {
fn reopened_outbox_delivers_what_the_previous_process_left() {
    let (hub, gw) = setup();
    let tmp = tempfile::tempdir().unwrap();
    {
        // "Process 1": pushes, never delivers, dies.
        let outbox = Outbox::open(tmp.path()).unwrap();
        for i in 0..4 {
            outbox.push(gateway_event(&gw, "left", i)).unwrap();
        }
        assert_eq!(outbox.pending(), 4);
    }
    // "Process 2": a new runtime, client and outbox on the same directory.
    let rt = runtime();
    let c = client(&rt, &hub, &gw);
    let outbox = Outbox::open(tmp.path()).unwrap();
    assert_eq!(outbox.pending(), 4);
    let task = {
        let _enter = rt.enter();
        outbox.start(c.clone())
    };
    // A second start is refused (no double delivery).
    let second = {
        let _enter = rt.enter();
        outbox.start(c)
    };
    rt.block_on(second).unwrap();
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(
        messages(&hub, "left"),
        (0..4).map(|i| format!("event {i}")).collect::<Vec<_>>()
    );
    task.abort();
    drop(rt);
    drop(outbox);
    // "Process 3": nothing is replayed.
    let outbox = Outbox::open(tmp.path()).unwrap();
    assert_eq!(outbox.pending(), 0);
    assert_eq!(outbox.push(gateway_event(&gw, "left", 9)).unwrap(), 5);
}
}

panorama_testkit::on_both_backends! {
fn recovery_fails_jobs_claimed_by_the_previous_process() {
    let (hub, gw) = setup();
    let state = tempfile::tempdir().unwrap();
    let outbox_dir = state.path().join("outbox");
    let ledger_dir = state.path().join("claims");
    let recorded = insert_job(&hub, &gw, "diagnostic", "queued", json!({"n": 1}));
    let unrecorded = insert_job(&hub, &gw, "diagnostic", "queued", json!({"n": 2}));
    let finished = insert_job(&hub, &gw, "diagnostic", "completed", json!({"n": 3}));
    let queued = insert_job(&hub, &gw, "diagnostic", "queued", json!({"n": 4}));
    {
        // Previous process: claims two jobs, records one (the other ledger
        // write is "lost"), and has a stale ledger entry for a finished job.
        let rt = runtime();
        let c = client(&rt, &hub, &gw);
        let ledger = ClaimLedger::open(&ledger_dir).unwrap();
        let row = claim(&rt, &c, &gw, &recorded);
        ledger.record(&claimed(&row)).unwrap();
        claim(&rt, &c, &gw, &unrecorded);
        ledger.record(&claimed(&job_row(&hub, &finished))).unwrap();
        let _ = Outbox::open(&outbox_dir).unwrap();
    }
    let rt = runtime();
    let c = client(&rt, &hub, &gw);
    let outbox = Outbox::open(&outbox_dir).unwrap();
    let ledger = ClaimLedger::open(&ledger_dir).unwrap();
    assert_eq!(ledger.outstanding().len(), 2);
    let task = {
        let _enter = rt.enter();
        outbox.start(c.clone())
    };
    let report = rt
        .block_on(recover_interrupted_jobs(
            &port(&c, &gw),
            &outbox,
            &ledger,
            &gw.gateway_id,
        ))
        .expect("recovery");
    let mut recovered = report.recovered_jobs.clone();
    recovered.sort();
    let mut expected = vec![recorded.clone(), unrecorded.clone()];
    expected.sort();
    assert_eq!(recovered, expected);
    assert_eq!(report.already_terminal, vec![finished.clone()]);
    assert!(ledger.outstanding().is_empty(), "ledger released");
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(outbox.dead_letters(), 0);
    for id in [&recorded, &unrecorded] {
        let job = job_row(&hub, id);
        assert_eq!(job["status"], json!("failed"), "{job}");
        assert_eq!(job["error"], json!(RESTART_MESSAGE));
        assert_eq!(job["result"]["message"], json!(RESTART_MESSAGE));
        assert!(job["completed_at"].is_string(), "{job}");
    }
    assert_eq!(job_row(&hub, &finished)["status"], json!("completed"));
    assert_eq!(
        job_row(&hub, &queued)["status"],
        json!("queued"),
        "unclaimed work untouched"
    );

    // A second recovery finds nothing to do.
    let again = rt
        .block_on(recover_interrupted_jobs(
            &port(&c, &gw),
            &outbox,
            &ledger,
            &gw.gateway_id,
        ))
        .expect("second recovery");
    assert!(again.recovered_jobs.is_empty() && again.already_terminal.is_empty());
    task.abort();
}
}

panorama_testkit::on_both_backends! {
fn recovery_fails_an_interrupted_subagent_run() {
    let (hub, gw) = setup();
    let state = tempfile::tempdir().unwrap();
    let subagent = uuid();
    let run_id = uuid();
    hub.insert(
        "subagents",
        json!({"id": subagent, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "running",
               "input": {"prompt": "hi", "run_id": run_id},
               "metadata": {"session_id": "sess-1", "current_run_id": run_id, "current_run_sequence": 1}}),
    );
    hub.insert(
        "subagent_runs",
        json!({"id": run_id, "subagent_id": subagent, "team_id": gw.team_id,
               "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running",
               "metadata": {"runner": "gateway", "run_id": run_id, "cancel_state": "none"}}),
    );
    for (seq, kind) in [(0, "run_started"), (1, "run_progress")] {
        hub.insert(
            "subagent_run_events",
            json!({"run_id": run_id, "subagent_id": subagent, "team_id": gw.team_id,
                   "gateway_id": gw.gateway_id, "sequence": seq, "event_type": kind, "payload": {}}),
        );
    }
    let job_id = insert_job(
        &hub,
        &gw,
        "subagent_run",
        "queued",
        json!({"subagent_id": subagent, "run_id": run_id}),
    );
    {
        let rt = runtime();
        let c = client(&rt, &hub, &gw);
        let ledger = ClaimLedger::open(&state.path().join("claims")).unwrap();
        let row = claim(&rt, &c, &gw, &job_id);
        ledger.record(&claimed(&row)).unwrap();
    }

    let rt = runtime();
    let c = client(&rt, &hub, &gw);
    let outbox = Outbox::open(&state.path().join("outbox")).unwrap();
    let ledger = ClaimLedger::open(&state.path().join("claims")).unwrap();
    let task = {
        let _enter = rt.enter();
        outbox.start(c.clone())
    };
    let report = rt
        .block_on(recover_interrupted_jobs(
            &port(&c, &gw),
            &outbox,
            &ledger,
            &gw.gateway_id,
        ))
        .expect("recovery");
    assert_eq!(report.recovered_jobs, vec![job_id.clone()]);
    assert!(rt.block_on(outbox.flush(FLUSH)));
    assert_eq!(outbox.dead_letters(), 0);

    let run = hub
        .select("subagent_runs", &format!("id=eq.{run_id}"))
        .pop()
        .unwrap();
    assert_eq!(run["status"], json!("failed"), "{run}");
    assert_eq!(run["error"], json!(RESTART_MESSAGE));
    assert_eq!(run["output"]["errors"], json!([RESTART_MESSAGE]));
    assert!(run["completed_at"].is_string());
    assert_eq!(run["metadata"]["gateway_error"], json!(RESTART_MESSAGE));
    assert_eq!(
        run["metadata"]["cancel_state"],
        json!("none"),
        "run metadata merged"
    );

    let sub = hub
        .select("subagents", &format!("id=eq.{subagent}"))
        .pop()
        .unwrap();
    assert_eq!(sub["status"], json!("failed"), "{sub}");
    assert_eq!(sub["error"], json!(RESTART_MESSAGE));
    assert_eq!(
        sub["metadata"]["session_id"],
        json!("sess-1"),
        "continuation kept"
    );
    assert_eq!(sub["metadata"]["gateway_error"], json!(RESTART_MESSAGE));

    let events = hub.select(
        "subagent_run_events",
        &format!("select=sequence,event_type,payload&run_id=eq.{run_id}&order=sequence.asc"),
    );
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["sequence"], json!(2));
    assert_eq!(events[2]["event_type"], json!("run_failed"));
    assert_eq!(events[2]["payload"]["reason"], json!(RESTART_MESSAGE));
    assert_eq!(events[2]["payload"]["source"], json!("gateway_restart"));

    let job = job_row(&hub, &job_id);
    assert_eq!(job["status"], json!("failed"));
    assert_eq!(job["error"], json!(RESTART_MESSAGE));
    assert!(ledger.outstanding().is_empty());
    task.abort();
}
}
