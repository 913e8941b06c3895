//! The operator CLI against a real hub process.

use panorama_testkit::Hub;
use serde_json::{json, Value};
use std::process::Output;

fn cli(hub: &Hub, args: &[&str]) -> Output {
    hub.cli(args, None)
}

fn json_of(hub: &Hub, args: &[&str]) -> Value {
    hub.cli_json(args)
}

#[test]
fn operator_commands_round_trip() {
    let hub = Hub::start();
    let keys = json_of(&hub, &["keys"]);
    assert_eq!(keys["url"], hub.url.as_str());
    assert_eq!(keys["service_key"], hub.service_key.as_str());

    let team = json_of(&hub, &["team", "create", "acme"]);
    let team_id = team["id"].as_str().unwrap();
    let code = json_of(&hub, &["pairing-code", "create", "--team", team_id]);
    let pair_cmd = code["pair_command"].as_str().unwrap();
    assert!(
        pair_cmd.contains(code["code"].as_str().unwrap()) && pair_cmd.contains(&hub.anon_key),
        "{pair_cmd}"
    );

    let gw = hub.pair(team_id, "box");
    let gateways = json_of(&hub, &["gateways", "list", "--team", team_id]);
    assert_eq!(gateways[0]["id"], gw.gateway_id.as_str());
    let fc = json_of(&hub, &["gateways", "full-control", &gw.gateway_id, "on"]);
    assert_eq!(fc["full_control_enabled"], true);

    // A diagnostic job: submit, list, show; wait times out while nobody runs it.
    let job = json_of(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "diagnostic",
        ],
    );
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["team_id"], team_id);
    let listed = json_of(&hub, &["jobs", "list", "--gateway", &gw.gateway_id]);
    assert_eq!(listed[0]["id"], job_id);
    assert_eq!(json_of(&hub, &["job", "show", job_id])["id"], job_id);
    let out = cli(&hub, &["job", "wait", job_id, "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2), "a wait that times out exits 2");
    assert!(String::from_utf8_lossy(&out.stdout).contains("timed out"));

    // Cancel a queued job; wait then reports it and exits 1.
    let cancelled = json_of(&hub, &["job", "cancel", job_id]);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cli(&hub, &["job", "wait", job_id]).status.code(), Some(1));
    let out = cli(&hub, &["job", "cancel", job_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already cancelled"));

    // A subagent run, later recipe (the default): the hub accepts the run
    // (run row `running`, subagent pointing at it) before queueing the job.
    let accepted = json_of(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
            "--prompt",
            "  plan it  ",
        ],
    );
    let acc_subagent = accepted["payload"]["subagent_id"].as_str().unwrap();
    let acc_run = accepted["payload"]["run_id"].as_str().unwrap();
    let sub = &hub.select("subagents", &format!("id=eq.{acc_subagent}"))[0];
    assert_eq!(sub["status"], "running");
    assert_eq!(sub["subagent_type"], "claude_code_gateway");
    assert_eq!(sub["input"]["run_id"], acc_run);
    assert_eq!(sub["input"]["run_sequence"], 1);
    assert_eq!(sub["input"]["prompt"], "plan it");
    assert_eq!(sub["metadata"]["current_run_id"], acc_run);
    assert_eq!(sub["metadata"]["current_run_sequence"], 1);
    let run = &hub.select("subagent_runs", &format!("id=eq.{acc_run}"))[0];
    assert_eq!(run["status"], "running");
    assert_eq!(run["run_sequence"], 1);
    assert_eq!(run["prompt"], "plan it");
    assert_eq!(run["gateway_id"], gw.gateway_id);
    assert_eq!(run["started_at"], Value::Null, "no gateway started it yet");
    // Cancelling the queued job closes the accepted run and its subagent.
    let out = cli(&hub, &["job", "cancel", accepted["id"].as_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("run {acc_run} cancelled")));
    let run = &hub.select("subagent_runs", &format!("id=eq.{acc_run}"))[0];
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["metadata"]["cancel_state"], "acknowledged");
    let sub = &hub.select("subagents", &format!("id=eq.{acc_subagent}"))[0];
    assert_eq!(sub["status"], "cancelled");
    // The same subagent's next run (a continuation) gets sequence 2.
    let next = json_of(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
            "--payload",
            &json!({"subagent_id": acc_subagent}).to_string(),
            "--prompt",
            "and then?",
        ],
    );
    let next_run = next["payload"]["run_id"].as_str().unwrap();
    assert_ne!(next_run, acc_run);
    let sub = &hub.select("subagents", &format!("id=eq.{acc_subagent}"))[0];
    assert_eq!(sub["status"], "running");
    assert_eq!(sub["input"]["run_sequence"], 2);
    assert_eq!(sub["input"]["prompt"], "and then?");
    assert_eq!(
        hub.select("subagent_runs", &format!("id=eq.{next_run}"))[0]["run_sequence"],
        2
    );
    // A second run while one is running is refused, and nothing is queued.
    let jobs_before = hub.select("gateway_jobs", "select=id").len();
    let out = cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
            "--payload",
            &json!({"subagent_id": acc_subagent}).to_string(),
            "--prompt",
            "again",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has a running run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hub.select("gateway_jobs", "select=id").len(), jobs_before);

    // The seed recipe: the subagent row and the job, nothing else.
    let run_job = json_of(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
            "--recipe",
            "seed",
            "--subagent-type",
            "codex_gateway",
            "--prompt",
            "say hi",
            "--config",
            r#"{"model": "o4"}"#,
        ],
    );
    let subagent_id = run_job["payload"]["subagent_id"].as_str().unwrap();
    let run_id = run_job["payload"]["run_id"].as_str().unwrap();
    let subagent = &hub.select("subagents", &format!("id=eq.{subagent_id}"))[0];
    assert_eq!(subagent["subagent_type"], "codex_gateway");
    assert_eq!(subagent["status"], "idle");
    assert_eq!(subagent["config"], json!({"model": "o4"}));
    assert_eq!(subagent["input"]["prompt"], "say hi");
    assert_eq!(subagent["input"]["run_id"], run_id);
    assert_eq!(subagent["input"]["schema_version"], 1);
    assert!(hub
        .select("subagent_runs", &format!("id=eq.{run_id}"))
        .is_empty());

    // Run events print in order.
    let run = hub.insert("subagent_runs", json!({"id": run_id, "subagent_id": subagent_id, "team_id": team_id, "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "completed"}));
    for seq in [1, 0] {
        hub.insert("subagent_run_events", json!({"run_id": run["id"], "subagent_id": subagent_id, "team_id": team_id, "sequence": seq, "event_type": "message", "payload": {"n": seq}}));
    }
    let out = cli(&hub, &["run", "events", run_id, "--follow"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.find("{\"n\":0}").expect("event 0 printed");
    let second = text.find("{\"n\":1}").expect("event 1 printed");
    assert!(first < second, "events out of order: {text}");

    let res = json_of(
        &hub,
        &[
            "resource",
            "create",
            "--team",
            team_id,
            "--gateway",
            &gw.gateway_id,
            "--machine-control",
        ],
    );
    assert_eq!(res["resource_type"], "remote_shell");
    assert_eq!(
        res["metadata"],
        json!({"gateway_id": gw.gateway_id, "full_control": true})
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() {
    let hub = Hub::start();
    let cases: &[(&[&str], &str)] = &[
        (&["job", "show", "not-a-uuid"], "is not a job id"),
        (
            &[
                "job",
                "submit",
                "--gateway",
                "00000000-0000-4000-8000-000000000000",
                "--type",
                "diagnostic",
            ],
            "no gateway",
        ),
        (
            &["team", "create", "x", "--hub", "http://127.0.0.1:9"],
            "cannot reach the hub",
        ),
        (
            &["pairing-code", "create", "--team", "nope"],
            "no team \"nope\"",
        ),
    ];
    for (args, expected) in cases {
        let out = cli(&hub, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let team = json_of(&hub, &["team", "create", "acme"]);
    let gw = hub.pair(team["id"].as_str().unwrap(), "box");
    let out = cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "diagnostic",
            "--payload",
            "{oops",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    let out = cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a prompt"));
}
