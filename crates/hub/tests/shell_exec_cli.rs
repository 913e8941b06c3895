//! `panorama-hub shell exec` and line-mode `shell attach` over `shell_exec`
//! jobs (the only shell jobs 2.30+ reference gateways run), against a real
//! hub and the real `panorama-gateway` (which runs both job families).

use std::time::Duration;

use panorama_testkit::{GatewayHost, Hub, RunningGateway};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Setup {
    hub: Hub,
    gateway_id: String,
    team_id: String,
    _host: GatewayHost,
    _running: RunningGateway,
}

/// A ready gateway with full control on both layers and one remote_shell
/// resource.
fn setup() -> Setup {
    let hub = Hub::start();
    let team_id = hub.create_team("shell-exec");
    let gw = hub.pair(&team_id, "exec-box");
    let host = GatewayHost::new();
    host.write_config(&hub, &gw, true);
    let running = host.start(&hub, &[]);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    hub.set_full_control(&gw.gateway_id, true);
    hub.insert(
        "team_resources",
        json!({"team_id": team_id, "resource_type": "remote_shell",
               "metadata": {"gateway_id": gw.gateway_id, "full_control": true}}),
    );
    Setup {
        hub,
        gateway_id: gw.gateway_id,
        team_id,
        _host: host,
        _running: running,
    }
}

#[test]
fn shell_exec_runs_one_command_and_returns_its_exit_code() {
    let s = setup();
    let g = s.gateway_id.as_str();
    let out = s.hub.cli(
        &["shell", "exec", g, "--", "echo out; echo err >&2; exit 3"],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    let err = text(&out.stderr);
    assert!(err.starts_with("err\n"), "{err}");
    assert!(err.contains("[exit 3]"), "{err}");

    // Words after `--` are joined; the command runs in `/`.
    let out = s
        .hub
        .cli(&["shell", "exec", g, "--", "pwd", "&&", "echo", "ok"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/\nok\n");

    // A timeout exits 124, like timeout(1).
    let out = s.hub.cli(
        &["shell", "exec", g, "--timeout-ms", "300", "--", "sleep 5"],
        None,
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("timed out"));

    // --json prints the job result as the later generation writes it.
    let out = s
        .hub
        .cli(&["--json", "shell", "exec", g, "--", "echo hi"], None);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["message"], "Remote shell command completed");
    assert_eq!(result["stdout"], "hi\n");
    assert_eq!(result["error"], serde_json::Value::Null);

    // A team secret reaches the command's environment, not its output.
    let out = s.hub.cli(
        &["secret", "set", "--team", &s.team_id, "deploy"],
        Some("v4lue-of-the-secret"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = s.hub.cli(
        &[
            "shell",
            "exec",
            g,
            "--secret-env",
            "TOK=deploy",
            "--",
            "test \"$TOK\" = v4lue-of-the-secret && echo match; echo \"$TOK\"",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("match\npano_sec_"), "{stdout}");
    assert!(!stdout.contains("v4lue-of-the-secret"));
    let out = s.hub.cli(
        &[
            "shell",
            "exec",
            g,
            "--secret-env",
            "TOK=nope",
            "--",
            "echo never",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Team secret alias response was incomplete or invalid"),
        "{}",
        text(&out.stderr)
    );

    // Bad input.
    let out = s.hub.cli(
        &["shell", "exec", g, "--secret-env", "nope", "--", "true"],
        None,
    );
    assert!(text(&out.stderr).contains("expected ENV=SECRET"));
    // Two resources: the CLI cannot guess.
    s.hub.insert(
        "team_resources",
        json!({"team_id": s.team_id, "resource_type": "remote_shell",
               "metadata": {"gateway_id": g, "full_control": true}}),
    );
    let out = s.hub.cli(&["shell", "exec", g, "--", "true"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pick one with --resource"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn attach_falls_back_to_line_mode_for_shell_exec_only_gateways() {
    let s = setup();
    let g = s.gateway_id.as_str();
    // Forced line mode: `cd` is tracked, everything else is one command.
    let out = s.hub.cli(
        &["shell", "attach", "--gateway", g, "--mode", "exec"],
        Some("cd /tmp\npwd\n\nls /definitely-not-here\ncd /nowhere\npwd\nexit\necho after-exit\n"),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(stdout, "/tmp\n/tmp\n", "stderr: {stderr}");
    assert!(
        stderr.contains("runs shell_exec jobs only: line mode"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Not available here: interactive programs"),
        "{stderr}"
    );
    assert!(stderr.contains("[exit 2]"), "{stderr}");
    assert!(
        stderr.contains("/nowhere"),
        "the failed cd says why: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit leaves with the last status"
    );

    // Auto: a heartbeat from a 2.32 reference gateway picks line mode.
    // (Only the runtime block changes: the gateway's shell gate reads the
    // rest of the capabilities from this row.)
    let mut caps = s.hub.row("team_gateways", g).unwrap()["capabilities"].clone();
    caps["runtime"]["node_version"] = json!("v24.3.0");
    caps["runtime"]["gateway_version"] = json!("2.32.167");
    // A reference gateway announces no terminal stream.
    caps.as_object_mut().unwrap().remove("terminal_stream");
    s.hub.patch(
        "team_gateways",
        &format!("id=eq.{g}"),
        json!({ "capabilities": caps }),
    );
    let out = s.hub.cli(
        &["shell", "attach", "--gateway", g],
        Some("echo picked-by-heartbeat\n"),
    );
    assert_eq!(
        text(&out.stdout),
        "picked-by-heartbeat\n",
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("line mode"));
    let jobs = s.hub.select(
        "gateway_jobs",
        &format!("gateway_id=eq.{g}&job_type=eq.shell_session&select=id"),
    );
    assert!(jobs.is_empty(), "no shell_session job was queued: {jobs:?}");
}
