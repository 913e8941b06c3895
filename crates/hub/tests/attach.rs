//! `panorama-hub shell attach` from a real terminal: the command runs in a
//! tmux pane (a real pseudo-terminal the test can type into, resize and
//! read back), against a real hub and the real `panorama-gateway` binary
//! paired with install full control. Every network call is on 127.0.0.1.
//!
//! tmux is required: `.ci/run` installs it. Without it this test fails
//! with a message saying so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use panorama_testkit::Hub;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A private tmux server (its own socket, no user config); killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let version = Command::new("tmux").arg("-V").output();
        match version {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "tmux is required for the `shell attach` terminal test but is not installed \
                 (or not on PATH). Install it (e.g. `apt-get install -y tmux`; .ci/run does this)."
            ),
        }
        Tmux {
            socket: dir.join("tmux.sock"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", "t"])
                .stdout,
        )
        .into_owned()
    }

    fn lines(&self) -> Vec<String> {
        self.capture()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Waits until a pane line satisfies `f`.
    fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.lines().iter().any(|l| f(l)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in the terminal:\n{}",
                self.capture()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
    }

    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "t", key]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The gateway process; SIGKILLed on drop.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn patch(hub: &Hub, table: &str, id: &str, body: Value) -> Value {
    let res = hub
        .req(
            reqwest::Method::PATCH,
            &format!("/rest/v1/{table}?id=eq.{id}"),
            &hub.service_key,
        )
        .header("prefer", "return=representation")
        .json(&body)
        .send()
        .expect("PATCH request");
    let status = res.status();
    let body: Value = res.json().expect("PATCH response JSON");
    assert!(status.is_success(), "PATCH {table} failed: {status} {body}");
    body[0].clone()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn shell_attach_drives_a_remote_shell_from_a_real_terminal() {
    let home = tempfile::tempdir().expect("temp home");
    let tmux = Tmux::new(home.path());
    let gateway_bin = panorama_testkit::gateway_binary();
    let hub = Hub::start();

    // A gateway paired with install full control, in the foreground.
    let config_dir = home.path().join(".panorama").join("gateway");
    let claude = home.path().join("fake-claude");
    std::fs::write(&claude, "#!/bin/sh\necho '2.0.14 (Claude Code)'\n").unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let team_id = hub.create_team("attach-team");
    let code = hub.create_pairing_code(&team_id);
    let log = std::fs::File::create(home.path().join("gateway.log")).unwrap();
    let mut cmd = Command::new(&gateway_bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("PANORAMA_") || key.starts_with("SUPABASE_") {
            cmd.env_remove(key);
        }
    }
    let _gateway = Gateway(
        cmd.env("HOME", home.path())
            .env("SHELL", "/bin/bash")
            .current_dir(home.path())
            .arg("--config-dir")
            .arg(&config_dir)
            .args(["--supabase-url", &hub.url, "--anon-key", &hub.anon_key])
            .arg("--claude-cli")
            .arg(&claude)
            .args(["--device-name", "attach-box"])
            .args(["pair", &code, "--full-control", "true", "--foreground"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn gateway"),
    );
    let config = hub.wait_for("paired config", WAIT, || {
        std::fs::read_to_string(config_dir.join("gateway.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|c| c["gatewayId"].as_str().is_some_and(|s| !s.is_empty()))
    });
    let gateway_id = config["gatewayId"].as_str().unwrap().to_string();
    hub.wait_for("gateway ready", WAIT, || {
        hub.select("team_gateways", &format!("id=eq.{gateway_id}"))
            .into_iter()
            .find(|r| r["status"] == "ready")
    });
    // The team flag, and a remote_shell resource bound to the gateway.
    let row = patch(
        &hub,
        "team_gateways",
        &gateway_id,
        json!({"full_control_enabled": true}),
    );
    assert_eq!(row["full_control_enabled"], true);
    let resource_id = hub.insert(
        "team_resources",
        json!({"team_id": team_id, "resource_type": "remote_shell", "title": "attach",
            "metadata": {"gateway_id": gateway_id, "full_control": true}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    // `shell attach` in a 100x30 terminal.
    let attach = format!(
        "{} --hub {} --service-key {} shell attach --mode session --gateway {} --resource {}",
        shell_quote(env!("CARGO_BIN_EXE_panorama-hub")),
        shell_quote(&hub.url),
        shell_quote(&hub.service_key),
        gateway_id,
        resource_id
    );
    let pane = format!("{attach}; echo \"[attach exited $?]\"; sleep 600");
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        &pane,
    ]);
    tmux.wait_line("the attach banner", |l| {
        l.starts_with("attached to shell session ")
    });

    // An interactive program: prompt, answer, reply.
    tmux.type_text("read -p 'name? ' n; echo hi $n");
    tmux.key("Enter");
    tmux.wait_line("the `name?` prompt", |l| l == "name?");
    tmux.type_text("alice");
    tmux.key("Enter");
    tmux.wait_line("`hi alice`", |l| l == "hi alice");

    // The remote terminal has the local terminal's size, and follows it.
    tmux.type_text("stty size");
    tmux.key("Enter");
    tmux.wait_line("`30 100`", |l| l == "30 100");
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "35"]);
    // The resize reaches the gateway as its own job; retry `stty size`
    // until the new size shows (each attempt is another line).
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.type_text("stty size");
        tmux.key("Enter");
        std::thread::sleep(Duration::from_millis(700));
        if tmux.lines().iter().any(|l| l == "35 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the remote terminal never became 35x120:\n{}",
            tmux.capture()
        );
    }

    // Ctrl-] detaches: attach closes the session and exits 0.
    tmux.key("C-]");
    tmux.wait_line("attach to exit", |l| l.starts_with("[attach exited "));
    let screen = tmux.capture();
    assert!(screen.contains("[attach exited 0]"), "screen:\n{screen}");
    assert!(
        screen.contains("detached; shell session ") && screen.contains(" closed"),
        "screen:\n{screen}"
    );
    let jobs = hub.select(
        "gateway_jobs",
        &format!("gateway_id=eq.{gateway_id}&job_type=eq.shell_session&select=*"),
    );
    let opened: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["payload"]["action"] == "open")
        .collect();
    assert_eq!(opened.len(), 1, "one open job: {jobs:?}");
    let session_id = opened[0]["result"]["session_id"].as_str().unwrap();
    let closes: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["payload"]["action"] == "close")
        .collect();
    assert_eq!(closes.len(), 1, "one close job: {jobs:?}");
    let close = closes[0];
    assert_eq!(close["status"], "completed", "close job: {close}");
    assert_eq!(close["payload"]["session_id"], session_id);
    assert_eq!(close["result"]["message"], "Shell session closed");
    assert_eq!(close["result"]["status"], "closed");
    let resizes = jobs
        .iter()
        .filter(|j| j["payload"]["action"] == "resize" && j["status"] == "completed")
        .count();
    assert!(resizes >= 1, "a completed resize job: {jobs:?}");
    assert!(
        jobs.iter().all(|j| j["status"] == "completed"),
        "every shell_session job completed: {jobs:?}"
    );
}
