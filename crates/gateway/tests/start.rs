//! `start` against a real hub: one gateway per identity, a daemon parent
//! that reports its child's real outcome, an unreachable hub waited for,
//! and `doctor`'s hub and session checks.

use std::process::Output;
use std::time::{Duration, Instant};

use panorama_testkit::{GatewayHost, Hub};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn pid_in(host: &GatewayHost) -> Option<i32> {
    std::fs::read_to_string(host.pid_path())
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn paired_host(hub: &Hub) -> (GatewayHost, String) {
    let host = GatewayHost::bare();
    let team = hub.create_team("start-tests");
    let gw = hub.pair(&team, "start-box");
    host.write_config(hub, &gw, false);
    (host, gw.gateway_id)
}

#[test]
fn a_second_start_refuses_and_never_touches_the_running_gateways_pid_file() {
    let hub = Hub::start();
    let (host, gateway_id) = paired_host(&hub);

    let out = host.run(&hub, &["start"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("OK Gateway started"),
        "{}",
        text(&out.stdout)
    );
    let pid = pid_in(&host).expect("daemon PID file");
    hub.wait_gateway_status(&gateway_id, "ready", WAIT);

    // Foreground and daemon alike refuse, naming the PID and the way out.
    for args in [&["start", "--foreground", "-v"][..], &["start", "-v"][..]] {
        let out = host.run(&hub, args);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("ERROR Gateway already running (PID {pid}).\n")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("panorama-gateway stop"), "{stderr}");
    }
    // doctor leaves the running gateway's session alone (a second client
    // refreshing it could trip the hub's reuse detection).
    let out = host.run(&hub, &["doctor"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "  Session: In use by the running gateway (PID {pid})"
        )),
        "{stdout}"
    );
    // The refused processes left the daemon's PID file alone.
    assert_eq!(pid_in(&host), Some(pid));
    let status: Value =
        serde_json::from_slice(&host.run(&hub, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], pid);

    let out = host.run(&hub, &["stop"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK Gateway stopped"));
    assert_eq!(pid_in(&host), None);
    hub.wait_gateway_status(&gateway_id, "offline", WAIT);

    // The daemon's log is JSON lines only, without Rust debug text.
    let log = std::fs::read_to_string(host.config_dir().join("gateway.log")).unwrap();
    assert!(log.contains("Provider capability refreshed"), "{log}");
    for line in log.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line:?}"));
        assert!(!line.contains("Some("), "debug text in the log: {line}");
    }
}

/// Starts at the same instant: the PID-file check alone lets all of them
/// through (each sees no live gateway yet); the instance lock admits one.
#[test]
fn simultaneous_starts_leave_exactly_one_gateway_running() {
    let hub = Hub::start();
    let (host, gateway_id) = paired_host(&hub);
    for mode in [&["start"][..], &["start", "--foreground"][..]] {
        let children: Vec<_> = (0..3)
            .map(|_| {
                let mut cmd = host.command(&hub, mode);
                cmd.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                cmd.spawn().unwrap()
            })
            .collect();
        let foreground = mode.len() == 2;
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        let mut running = children;
        let deadline = Instant::now() + WAIT;
        // Daemon starts all exit; foreground losers exit and the winner runs on.
        while running.len() > usize::from(foreground) && Instant::now() < deadline {
            let mut still = Vec::new();
            for mut child in running {
                match child.try_wait().unwrap() {
                    Some(_) => {
                        let out = child.wait_with_output().unwrap();
                        if code(&out) == 0 {
                            winners.push(out);
                        } else {
                            losers.push(out);
                        }
                    }
                    None => still.push(child),
                }
            }
            running = still;
            std::thread::sleep(Duration::from_millis(50));
        }
        let foreground_winner = if foreground {
            assert_eq!(
                running.len(),
                1,
                "{mode:?}: {} foreground gateways run",
                running.len()
            );
            running.pop()
        } else {
            assert_eq!(winners.len(), 1, "{mode:?}: {} started", winners.len());
            None
        };
        assert_eq!(losers.len(), 2, "{mode:?}");
        for out in &losers {
            let stderr = text(&out.stderr);
            assert_eq!(code(out), 1, "{mode:?}: {stderr}");
            assert!(
                stderr.starts_with("ERROR Gateway already running ("),
                "{mode:?}: {stderr}"
            );
        }
        hub.wait_gateway_status(&gateway_id, "ready", WAIT);
        let pid = pid_in(&host).expect("the winner's PID file");
        assert!(unsafe { libc::kill(pid, 0) } == 0, "PID {pid} is not alive");
        if let Some(mut child) = foreground_winner {
            assert_eq!(pid, child.id() as i32, "the PID file names the winner");
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            assert!(child.wait().unwrap().success());
        } else {
            let out = host.run(&hub, &["stop"]);
            assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        }
        assert_eq!(pid_in(&host), None);
        hub.wait_gateway_status(&gateway_id, "offline", WAIT);
    }
}

#[test]
fn a_foreground_gateway_prints_one_line_per_job_taken_and_ended() {
    let hub = Hub::start();
    let (host, gateway_id) = paired_host(&hub);
    let stdout_path = host.path("foreground-stdout.txt");
    let mut cmd = host.command(&hub, &["start", "--foreground"]);
    cmd.stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    hub.wait_gateway_status(&gateway_id, "ready", WAIT);
    let gw = panorama_testkit::PairedGateway {
        gateway_id: gateway_id.clone(),
        team_id: host.config()["teamId"].as_str().unwrap().to_string(),
        access_token: String::new(),
        refresh_token: String::new(),
    };
    let job = hub.insert_job(&gw, "diagnostic", serde_json::json!({}));
    let done = hub.wait_job_terminal(&job, WAIT);
    let status = done["status"].as_str().unwrap().to_string();
    let ended = format!("Job {job} (diagnostic) {status} in ");
    wait_until("the job's end line", || {
        std::fs::read_to_string(&stdout_path)
            .unwrap_or_default()
            .contains(&ended)
    });
    let out = std::fs::read_to_string(&stdout_path).unwrap();
    assert_eq!(
        out.matches(&format!("Job {job} (diagnostic) started\n"))
            .count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches(&ended).count(), 1, "{out}");
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_unreachable_hub_at_start_is_retried_and_said_so() {
    let hub = Hub::start();
    let (host, gateway_id) = paired_host(&hub);
    let listen = hub.url.trim_start_matches("http://").to_string();
    // Commands are built while the hub is up (they carry its URL and key).
    let daemon_start = host.command(&hub, &["start"]);
    let stop = host.command(&hub, &["stop"]);
    let foreground = host.command(&hub, &["start", "--foreground"]);
    let dir = hub.kill();

    // Daemon: the parent hears "waiting" from its child, says so, exits 0.
    let out = { daemon_start }.output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "WARN Gateway started, but it cannot reach the hub yet; it keeps retrying in the background.\n"
        ),
        "{stderr}"
    );
    let pid = pid_in(&host).expect("PID file");
    // Still alive a moment later: retrying, not dead.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pid_in(&host), Some(pid));
    let log = std::fs::read_to_string(host.config_dir().join("gateway.log")).unwrap();
    assert!(log.contains("Cannot reach the hub at"), "{log}");
    for line in log.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line:?}"));
    }
    let out = { stop }.output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(pid_in(&host), None);

    // Foreground: says it retries on the terminal, then comes up once the
    // hub is back.
    let mut running = host.spawn(foreground);
    wait_until("the retry notice", || {
        host.log().contains("WARN Cannot reach the hub at ")
    });
    assert!(running.is_running(), "{}", host.log());
    let hub = Hub::start_in(dir, &listen, &[]);
    hub.wait_gateway_status(&gateway_id, "ready", WAIT);
    let status = running.terminate(WAIT);
    assert!(status.success(), "{status:?}: {}", host.log());
}

#[test]
fn doctor_checks_the_hub_and_the_session() {
    let hub = Hub::start();
    let (host, _) = paired_host(&hub);
    let out = host.run(&hub, &["doctor", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["hub"]["reachable"], true, "{doc}");
    assert_eq!(doc["hub"]["session_valid"], true, "{doc}");
    let out = host.run(&hub, &["doctor"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "  Hub: Reachable ({})\n  Session: Valid\n",
            hub.url
        )),
        "{stdout}"
    );

    // A revoked gateway: the hub answers, the session is refused.
    hub.patch(
        "team_gateways",
        &format!("id=eq.{}", host.config()["gatewayId"].as_str().unwrap()),
        serde_json::json!({"revoked_at": "2025-01-01T00:00:00Z"}),
    );
    let mut cfg = host.config();
    cfg["accessToken"] = Value::String("expired.or.bad".into());
    std::fs::write(host.config_path(), cfg.to_string()).unwrap();
    let out = host.run(&hub, &["doctor"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("WARN The hub refused this gateway's session."),
        "{stderr}"
    );
}
