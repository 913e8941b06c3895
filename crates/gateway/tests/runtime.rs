//! The gateway runtime against a real hub process: pairing, the
//! foreground runtime, heartbeats, diagnostic jobs, unsupported job types,
//! `status --json` and SIGTERM shutdown. Every network call is on 127.0.0.1.

use panorama_testkit::{
    GatewayHost, Hub, PairedGateway, RunningGateway, SCRIPTED_CLAUDE_VERSION, WAIT,
};
use serde_json::{json, Value};

const FAKE_VERSION: &str = SCRIPTED_CLAUDE_VERSION;

/// A gateway host whose only agent CLI is a shell-script `claude` that
/// prints a version and records each call.
fn machine() -> GatewayHost {
    GatewayHost::scripted_claude(0)
}

fn spawn(machine: &GatewayHost, hub: &Hub, args: &[&str]) -> RunningGateway {
    machine.spawn(machine.command(hub, args))
}

fn gateway_row(hub: &Hub, gateway_id: &str) -> Option<Value> {
    hub.row("team_gateways", gateway_id)
}

fn wait_status(hub: &Hub, gateway_id: &str, status: &str) -> Value {
    hub.wait_gateway_status(gateway_id, status, WAIT)
}

fn job(hub: &Hub, id: &str) -> Value {
    hub.row("gateway_jobs", id).expect("job row")
}

fn wait_job_terminal(hub: &Hub, id: &str) -> Value {
    hub.wait_job_terminal(id, WAIT)
}

/// A started foreground gateway for a freshly paired gateway row.
fn started(hub: &Hub, machine: &GatewayHost) -> (PairedGateway, RunningGateway) {
    let team = hub.create_team("runtime-team");
    let gw = hub.pair(&team, "test-box");
    machine.write_config(hub, &gw, false);
    let running = spawn(machine, hub, &["start", "--foreground"]);
    wait_status(hub, &gw.gateway_id, "ready");
    (gw, running)
}

fn insert_job(hub: &Hub, gw: &PairedGateway, job_type: &str) -> String {
    hub.insert_job(gw, job_type, json!({}))
}

panorama_testkit::on_both_backends! {
fn pair_then_foreground_runtime_reports_ready_and_shuts_down_offline() {
    let hub = Hub::start();
    let machine = machine();
    let team = hub.create_team("pair-team");
    let code = hub.create_pairing_code(&team);
    let mut running = spawn(&machine, &hub, &["pair", &code, "--foreground"]);

    let config = hub.wait_for("paired config", WAIT, || {
        std::fs::read_to_string(machine.config_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|c| c["gatewayId"].as_str().is_some_and(|s| !s.is_empty()))
    });
    assert_eq!(config["teamId"], team.as_str());
    let gateway_id = config["gatewayId"].as_str().unwrap().to_string();

    let row = wait_status(&hub, &gateway_id, "ready");
    let caps = &row["capabilities"];
    assert_eq!(caps["schema_version"], "v1");
    assert_eq!(caps["hosts"]["gateway"]["kind"], "gateway");
    assert_eq!(caps["hosts"]["gateway"]["available"], true);
    assert_eq!(caps["hosts"]["gateway"]["label"], "test-box");
    assert_eq!(
        caps["hosts"]["gateway"]["metadata"]["install_full_control_enabled"],
        false
    );
    assert_eq!(caps["services"]["remote_shell"]["ready"], true);
    assert_eq!(caps["services"]["model_execution"]["ready"], false);
    assert_eq!(row["device_name"], "test-box");

    // The PID file is written after the first heartbeat.
    let pid = hub.wait_for("pid file", WAIT, || {
        std::fs::read_to_string(machine.pid_path()).ok()
    });
    assert_eq!(pid.trim(), running.pid().to_string());
    // The session was persisted (setSession wrote the tokens back).
    assert!(!machine.config()["refreshToken"]
        .as_str()
        .unwrap()
        .is_empty());

    // Realtime joined once; no reconnect churn.
    let log = hub.wait_for("realtime subscription", WAIT, || {
        let log = machine.log();
        log.contains("Gateway subscribed to job queue")
            .then_some(log)
    });
    assert!(log.contains("Gateway running"), "log: {log}");
    assert!(
        !log.contains("Gateway realtime channel unavailable"),
        "log: {log}"
    );

    let status = running.terminate(WAIT);
    assert!(status.success(), "gateway exit status {status:?}");
    assert!(machine.log().contains("Gateway shutting down"));
    let row = gateway_row(&hub, &gateway_id).unwrap();
    assert_eq!(row["status"], "offline");
    assert!(!machine.pid_path().exists(), "PID file removed at shutdown");
}
}

panorama_testkit::on_both_backends! {
fn status_json_while_running() {
    let hub = Hub::start();
    let machine = machine();
    let (gw, mut running) = started(&hub, &machine);
    hub.wait_for("pid file", WAIT, || {
        machine.pid_path().exists().then_some(())
    });
    let out = machine.run(&hub, &["status", "--json"]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(report["running"], true);
    assert_eq!(report["pid"], json!(running.pid()));
    assert_eq!(report["paired"], true);
    assert_eq!(report["gateway_id"], gw.gateway_id.as_str());
    assert!(running.terminate(WAIT).success());
    let out = machine.run(&hub, &["status", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(report["running"], false);
}
}

panorama_testkit::on_both_backends! {
fn diagnostic_job_completes_with_the_version_result() {
    let hub = Hub::start();
    let machine = machine();
    let (gw, mut running) = started(&hub, &machine);
    let id = insert_job(&hub, &gw, "diagnostic");
    let row = wait_job_terminal(&hub, &id);
    assert_eq!(row["status"], "completed", "row: {row}");
    let result = &row["result"];
    // Found on PATH, the CLI is invoked (and reported) by its bare name.
    assert_eq!(result["command"], "claude --version");
    assert_eq!(result["stdout"], format!("{FAKE_VERSION}\n"));
    assert_eq!(result["stderr"], "");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["version"], FAKE_VERSION);
    assert!(result["duration_ms"].is_u64());
    assert!(result.get("error").is_none());
    assert_eq!(row["error"], Value::Null);
    assert!(row["started_at"].is_string());
    assert!(row["completed_at"].is_string());
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn twenty_diagnostic_jobs_complete_exactly_once() {
    let hub = Hub::start();
    let machine = machine();
    let (gw, mut running) = started(&hub, &machine);
    // Startup provider discovery and validation also call the fake CLI.
    let baseline = machine.claude_calls();
    let ids: Vec<String> = (0..20)
        .map(|_| insert_job(&hub, &gw, "diagnostic"))
        .collect();
    for id in &ids {
        let row = wait_job_terminal(&hub, id);
        assert_eq!(row["status"], "completed", "row: {row}");
        assert_eq!(row["result"]["version"], FAKE_VERSION);
    }
    // Let any duplicate (realtime + reconcile) attempt show up: one more
    // reconcile pass of the queue, then count.
    hub.wait_reconcile_pass(WAIT);
    assert_eq!(
        machine.claude_calls() - baseline,
        20,
        "each job ran exactly once"
    );
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn unknown_and_unbuilt_job_types_fail_with_clear_messages() {
    let hub = Hub::start();
    let machine = machine();
    let (gw, mut running) = started(&hub, &machine);
    let baseline = machine.claude_calls();
    let unknown = insert_job(&hub, &gw, "teleport");
    let model = insert_job(&hub, &gw, "model_run");
    let row = wait_job_terminal(&hub, &unknown);
    assert_eq!(row["status"], "failed");
    assert_eq!(row["error"], "Unsupported job type: teleport");
    assert_eq!(
        row["result"],
        json!({"message": "Unsupported job type", "job_type": "teleport"})
    );
    let row = wait_job_terminal(&hub, &model);
    assert_eq!(row["status"], "failed");
    // An empty model_run payload is refused before any CLI runs.
    assert_eq!(row["error"], "Missing prompt or model");
    assert_eq!(
        row["result"],
        json!({"message": "Missing prompt or model for gateway model run"})
    );
    assert_eq!(machine.claude_calls(), baseline);
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn jobs_for_other_gateways_are_left_alone() {
    let hub = Hub::start();
    let machine = machine();
    let (gw, mut running) = started(&hub, &machine);
    let other = hub.pair(&gw.team_id, "other-box");
    let foreign = hub.insert(
        "gateway_jobs",
        json!({"team_id": gw.team_id, "gateway_id": other.gateway_id, "job_type": "diagnostic"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = insert_job(&hub, &gw, "diagnostic");
    assert_eq!(wait_job_terminal(&hub, &mine)["status"], "completed");
    // A reconcile pass lists the queue after the foreign job was there.
    hub.wait_reconcile_pass(WAIT);
    assert_eq!(job(&hub, &foreign)["status"], "queued");
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn doctor_succeeds_host_only_without_ai_clis() {
    let hub = Hub::start();
    let machine = machine();
    let out = machine.run(&hub, &["doctor", "--json"]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert_eq!(report["paired"], false);
    // The fake `claude` only prints its version: detected, but the full
    // validation run fails; no provider is ready.
    assert_eq!(report["host_only"], false);
    assert_eq!(report["any_provider_ready"], false);
    assert_eq!(report["providers"]["claude_code"]["status"], "unhealthy");
    assert_eq!(report["providers"]["claude_code"]["check_type"], "full");
}
}

panorama_testkit::on_both_backends! {
fn start_with_a_revoked_session_fails_with_the_spec_message() {
    let hub = Hub::start();
    let machine = machine();
    let team = hub.create_team("bad-session");
    let gw = hub.pair(&team, "test-box");
    let mut broken = gw.clone();
    broken.access_token = "not-a-jwt".into();
    broken.refresh_token = "nope".into();
    machine.write_config(&hub, &broken, false);
    let out = machine.run(&hub, &["start", "--foreground"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Failed to authenticate gateway session."),
        "stderr: {stderr}"
    );
    assert!(!machine.pid_path().exists());
}
}

panorama_testkit::on_both_backends! {
fn sigterm_waits_for_a_running_job_then_goes_offline() {
    let hub = Hub::start();
    let machine = GatewayHost::scripted_claude(2);
    let (gw, mut running) = started(&hub, &machine);
    let id = insert_job(&hub, &gw, "diagnostic");
    hub.wait_for("job running", WAIT, || {
        (job(&hub, &id)["status"] == "running").then_some(())
    });
    let status = running.terminate(WAIT);
    assert!(status.success(), "gateway exit status {status:?}");
    // The job finished inside the grace period and its completion was
    // delivered before the offline heartbeat.
    let row = job(&hub, &id);
    assert_eq!(row["status"], "completed", "row: {row}");
    assert_eq!(row["result"]["version"], FAKE_VERSION);
    assert_eq!(
        gateway_row(&hub, &gw.gateway_id).unwrap()["status"],
        "offline"
    );
    assert!(!machine.pid_path().exists());
}
}
