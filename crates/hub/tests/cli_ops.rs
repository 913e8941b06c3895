//! Operator experience of the hub CLI against a real hub process: teams by
//! name, validation with clear messages, control characters escaped.

use panorama_testkit::Hub;
use serde_json::Value;
use std::process::{Command, Output};

/// `panorama-hub ARGS` that finds `hub` through its data directory.
fn hub_cmd(hub: &Hub, args: &[&str]) -> Command {
    hub.cli_command(args)
}

fn cli(hub: &Hub, args: &[&str]) -> Output {
    hub.cli(args, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn json_ok(hub: &Hub, args: &[&str]) -> Value {
    hub.cli_json(args)
}

#[track_caller]
fn fails_with(hub: &Hub, args: &[&str], needle: &str) -> String {
    let out = cli(hub, args);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains(needle), "{args:?}: {err}");
    for raw in ["invalid input syntax", "foreign key"] {
        assert!(!err.starts_with(raw), "raw database text: {err}");
    }
    err
}

#[test]
fn teams_by_name_everywhere_with_clear_errors() {
    let hub = Hub::start();
    let team = json_ok(&hub, &["team", "create", "my-team"]);
    let team_id = team["id"].as_str().unwrap().to_string();
    fails_with(&hub, &["team", "create", "my-team"], "already exists");
    fails_with(&hub, &["team", "create", "  "], "a team needs a name");

    // Pairing codes, gateway lists and resources take the name or the id.
    let code = json_ok(&hub, &["pairing-code", "create", "--team", "my-team"]);
    assert_eq!(code["team_id"], team_id.as_str());
    let code = json_ok(&hub, &["pairing-code", "create", "--team", &team_id]);
    assert_eq!(code["team_id"], team_id.as_str());
    fails_with(
        &hub,
        &["pairing-code", "create", "--team", "nope"],
        "no team \"nope\"",
    );
    let unknown = panorama_testkit::new_uuid();
    fails_with(
        &hub,
        &["pairing-code", "create", "--team", &unknown],
        "no team",
    );
    let gw = hub.pair(&team_id, "box");
    let listed = json_ok(&hub, &["gateways", "list", "--team", "my-team"]);
    assert_eq!(listed[0]["id"], gw.gateway_id.as_str());
    let res = json_ok(
        &hub,
        &[
            "resource",
            "create",
            "--team",
            "my-team",
            "--gateway",
            &gw.gateway_id,
        ],
    );
    assert_eq!(res["team_id"], team_id.as_str());

    // TTLs: 1 minute to a week.
    for bad in ["0", "-1", "99999999999", "10081"] {
        fails_with(
            &hub,
            &[
                "pairing-code",
                "create",
                "--team",
                "my-team",
                "--ttl-minutes",
                bad,
            ],
            "--ttl-minutes",
        );
    }
    json_ok(
        &hub,
        &[
            "pairing-code",
            "create",
            "--team",
            "my-team",
            "--ttl-minutes",
            "10080",
        ],
    );

    // Unknown and malformed ids.
    fails_with(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            "my-box",
            "--type",
            "diagnostic",
        ],
        "is not a gateway id",
    );
    fails_with(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &unknown,
            "--type",
            "diagnostic",
        ],
        "no gateway",
    );
    fails_with(
        &hub,
        &[
            "resource",
            "create",
            "--team",
            "my-team",
            "--gateway",
            &unknown,
        ],
        "no gateway",
    );
    fails_with(
        &hub,
        &["gateways", "full-control", "x", "on"],
        "is not a gateway id",
    );
}

#[test]
fn listen_without_a_port_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_panorama-hub"))
        .args(["serve", "--listen", "0.0.0.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("has no port"), "{err}");
    assert!(err.contains("0.0.0.0:54321"), "{err}");
}

#[test]
fn control_characters_in_names_and_reasons_are_escaped() {
    let hub = Hub::start();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let team = json_ok(&hub, &["team", "create", evil]);
    let team_id = team["id"].as_str().unwrap().to_string();
    // JSON output keeps the exact name (escaped by JSON itself).
    assert_eq!(team["name"], evil);
    let gw = hub.pair(&team_id, &format!("box{evil}"));
    let job = json_ok(
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
    json_ok(&hub, &["job", "cancel", job_id, "--reason", evil]);
    let odd_type = format!("odd{evil}");
    json_ok(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            &odd_type,
        ],
    );
    for args in [
        &["team", "list"][..],
        &["gateways", "list"][..],
        &["job", "show", job_id][..],
        &["jobs", "list"][..],
        &["team", "create", &format!("{evil}2")][..],
    ] {
        let out = cli(&hub, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{args:?} printed raw control characters: {text:?}"
        );
        assert!(text.contains("\\u{1b}]0;pwned"), "{args:?}: {text}");
    }
}

#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let hub = Hub::start();
    let team = hub.create_team("pipes");
    let gw = hub.pair(&team, "box");
    // Enough rows that the listing outgrows a pipe buffer (64 KiB).
    let rows: Vec<Value> = (0..1000)
        .map(|_| {
            serde_json::json!({"team_id": gw.team_id, "gateway_id": gw.gateway_id,
                "job_type": "diagnostic", "status": "completed", "payload": {}})
        })
        .collect();
    hub.insert("gateway_jobs", Value::Array(rows));
    for json in [false, true] {
        let args: &[&str] = if json {
            &["--json", "jobs", "list", "--limit", "1000"]
        } else {
            &["jobs", "list", "--limit", "1000"]
        };
        let mut child = hub_cmd(&hub, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader is gone now, like `| head -1`.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert_ne!(out.status.code(), Some(101), "{err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{:?} {err}",
            out.status
        );
    }
}

fn cli_stdin(hub: &Hub, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = hub_cmd(hub, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[test]
fn cancelled_runs_fail_job_wait_and_run_events_takes_a_job_id() {
    let hub = Hub::start();
    let host = panorama_testkit::GatewayHost::new();
    let team = hub.create_team("runs");
    let gw = hub.pair(&team, "runs-box");
    host.write_config(&hub, &gw, false);
    // The fake agent's fixtures, plus one that holds the run for a minute
    // (chosen by the prompt's `[[fake:hold]]` marker).
    let transcripts = tempfile::tempdir().unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers/fixtures/claude");
    std::fs::copy(
        fixtures.join("success.jsonl"),
        transcripts.path().join("success.jsonl"),
    )
    .unwrap();
    std::fs::write(
        transcripts.path().join("hold.jsonl"),
        "#!fake sleep 60000\n",
    )
    .unwrap();
    let dir = transcripts.path().display().to_string();
    let mut gateway = host.start(&hub, &[("FAKE_AGENT_TRANSCRIPT_DIR", dir.as_str())]);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);

    // Flags that do not apply to the job type are refused.
    fails_with(
        &hub,
        &[
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "diagnostic",
            "--prompt",
            "hi",
        ],
        "--prompt only applies to --type subagent_run",
    );

    // The prompt from standard input.
    let out = cli_stdin(
        &hub,
        &[
            "--json",
            "job",
            "submit",
            "--gateway",
            &gw.gateway_id,
            "--type",
            "subagent_run",
            "--prompt-file",
            "-",
        ],
        "say hello from stdin [[fake:hold]]",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();
    let run_id = job["payload"]["run_id"].as_str().unwrap().to_string();
    let subagent_id = job["payload"]["subagent_id"].as_str().unwrap();
    let subagent = hub.row("subagents", subagent_id).unwrap();
    assert_eq!(
        subagent["input"]["prompt"],
        "say hello from stdin [[fake:hold]]"
    );

    hub.wait_for("the run running", WAIT, || {
        hub.row("subagent_runs", &run_id)
            .filter(|r| r["status"] == "running")
    });
    json_ok(&hub, &["job", "cancel", &job_id, "--reason", "stop it"]);
    let out = cli(&hub, &["job", "wait", &job_id, "--timeout", "60"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled run is not a success: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("(run cancelled)"), "{}", stdout(&out));

    // `run events` with the job's id finds its run, and says that a json
    // run carries no live agent events.
    let out = cli(&hub, &["run", "events", &job_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("job {job_id} runs {run_id}")));
    assert!(
        stderr(&out).contains("no live events") || stderr(&out).contains("not as live events"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("run_cancelled"), "{}", stdout(&out));
    let unknown = panorama_testkit::new_uuid();
    fails_with(
        &hub,
        &["run", "events", &unknown, "--follow"],
        "no run or job",
    );

    // A job for an offline gateway is queued with a warning.
    assert!(gateway.terminate(WAIT).success());
    hub.wait_gateway_status(&gw.gateway_id, "offline", WAIT);
    let out = cli(
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
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("warning: gateway {} is offline", gw.gateway_id)),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_events_follow_rides_out_a_hub_restart() {
    use std::io::{BufRead, BufReader};
    let hub = Hub::start();
    let team = hub.create_team("follow");
    let gw = hub.pair(&team, "follow-box");
    let subagent = hub.insert(
        "subagents",
        serde_json::json!({"id": panorama_testkit::new_uuid(), "team_id": team, "gateway_id": gw.gateway_id,
            "subagent_type": "claude_code_gateway", "config": {"output_format": "stream-json"},
            "input": {"prompt": "x"}}),
    );
    let subagent_id = subagent["id"].as_str().unwrap().to_string();
    let run = hub.insert(
        "subagent_runs",
        serde_json::json!({"id": panorama_testkit::new_uuid(), "subagent_id": subagent_id, "team_id": team,
            "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running"}),
    );
    let run_id = run["id"].as_str().unwrap().to_string();
    let event = |seq: i64, kind: &str| {
        serde_json::json!({"id": panorama_testkit::new_uuid(), "run_id": run_id, "subagent_id": subagent_id, "team_id": team,
            "gateway_id": gw.gateway_id, "sequence": seq, "event_type": kind, "payload": {}})
    };
    hub.insert("subagent_run_events", event(1, "run_started"));

    let mut follower = hub_cmd(&hub, &["run", "events", &run_id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("run_started"), "{line}");

    let listen = hub.url.trim_start_matches("http://").to_string();
    let dir = hub.kill();
    let mut err = BufReader::new(follower.stderr.take().unwrap());
    let mut notice = String::new();
    err.read_line(&mut notice).unwrap();
    assert!(
        notice.contains("the hub is unreachable; retrying"),
        "{notice}"
    );
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower gave up"
    );

    let hub = Hub::start_in(dir, &listen, &[]);
    hub.insert("subagent_run_events", event(2, "run_completed"));
    hub.patch(
        "subagent_runs",
        &format!("id=eq.{run_id}"),
        serde_json::json!({"status": "completed"}),
    );
    let status = follower.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("run_completed"), "{rest}");
}

#[test]
fn listings_by_type_runs_resources_and_revoke() {
    let hub = Hub::start();
    let team = hub.create_team("lists");
    let gw = hub.pair(&team, "lists-box");
    let g = gw.gateway_id.as_str();
    json_ok(
        &hub,
        &["job", "submit", "--gateway", g, "--type", "diagnostic"],
    );
    let run_job = json_ok(
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
            "hi",
        ],
    );
    let only_runs = json_ok(&hub, &["jobs", "list", "--type", "subagent_run"]);
    assert_eq!(only_runs.as_array().unwrap().len(), 1, "{only_runs}");
    assert_eq!(only_runs[0]["id"], run_job["id"]);

    let run_id = panorama_testkit::new_uuid();
    hub.insert(
        "subagent_runs",
        serde_json::json!({"id": run_id, "subagent_id": run_job["payload"]["subagent_id"],
            "team_id": team, "gateway_id": g, "run_sequence": 1, "status": "running"}),
    );
    let runs = json_ok(&hub, &["run", "list", "--gateway", g]);
    assert_eq!(runs[0]["id"], run_id.as_str(), "{runs}");
    assert!(stdout(&cli(&hub, &["run", "list"])).contains(&run_id));

    json_ok(
        &hub,
        &[
            "resource",
            "create",
            "--team",
            "lists",
            "--gateway",
            g,
            "--title",
            "box shell",
        ],
    );
    let resources = json_ok(&hub, &["resource", "list", "--team", "lists"]);
    assert_eq!(resources[0]["title"], "box shell", "{resources}");
    assert!(stdout(&cli(&hub, &["resource", "list"])).contains("box shell"));

    let revoked = json_ok(&hub, &["gateways", "revoke", g]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    fails_with(
        &hub,
        &["job", "submit", "--gateway", g, "--type", "diagnostic"],
        "is revoked",
    );
}

#[test]
fn completions_load_in_bash_and_know_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_panorama-hub"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    for word in ["pairing-code", "gateways", "revoke", "--team"] {
        assert!(script.contains(word), "{word} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bash");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p panorama-hub",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("panorama-hub"));
}
