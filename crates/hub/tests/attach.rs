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

    /// Runs `command` in a detached 100x30 session `t`, the terminal every
    /// test attaches in.
    fn start_pane(&self, command: &str) {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
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

/// A real hub and a real gateway paired with install full control (in the
/// foreground, `HOME` a temp dir), a `remote_shell` resource bound to it,
/// and a private tmux server.
struct Rig {
    // Dropped in this order: tmux, the gateway, the hub, the home dir.
    tmux: Tmux,
    _gateway: Gateway,
    hub: Hub,
    gateway_id: String,
    resource_id: String,
    home: tempfile::TempDir,
}

fn rig(gateway_env: &[(&str, &str)]) -> Rig {
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
    cmd.envs(gateway_env.iter().copied());
    let gateway = Gateway(
        cmd.env("HOME", home.path())
            .env("SHELL", "/bin/bash")
            .current_dir("/")
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
    Rig {
        home,
        tmux,
        hub,
        _gateway: gateway,
        gateway_id,
        resource_id,
    }
}

impl Rig {
    /// The `shell attach` command line (`mode`: session, stream, auto).
    fn attach_command(&self, mode: &str) -> String {
        format!(
            "{} --hub {} --service-key {} shell attach --mode {mode} --gateway {} --resource {}",
            shell_quote(env!("CARGO_BIN_EXE_panorama-hub")),
            shell_quote(&self.hub.url),
            shell_quote(&self.hub.service_key),
            self.gateway_id,
            self.resource_id
        )
    }

    fn jobs(&self) -> Vec<Value> {
        self.hub.select(
            "gateway_jobs",
            &format!("gateway_id=eq.{}&select=*", self.gateway_id),
        )
    }
}

#[test]
fn shell_attach_drives_a_remote_shell_from_a_real_terminal() {
    let rig = rig(&[]);
    let (tmux, hub, gateway_id) = (&rig.tmux, &rig.hub, &rig.gateway_id);

    // `shell attach` in a 100x30 terminal.
    let attach = rig.attach_command("session");
    let pane = format!("{attach}; echo \"[attach exited $?]\"; sleep 600");
    tmux.start_pane(&pane);
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
    // The resize reaches the gateway as its own job.
    resize_to_35x120(tmux);

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

/// Resizes the pane to 120x35 and retries `stty size` in the remote shell
/// until it shows the new size (each attempt is another line).
fn resize_to_35x120(tmux: &Tmux) {
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "35"]);
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.type_text("stty size");
        tmux.key("Enter");
        std::thread::sleep(Duration::from_millis(500));
        if tmux.lines().iter().any(|l| l == "35 120") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the remote terminal never became 35x120:\n{}",
            tmux.capture()
        );
    }
}

/// `KEY=<digits>` on a pane line starting with `KEY=`.
fn pane_number(tmux: &Tmux, key: &str) -> i32 {
    tmux.lines()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key}<number> line:\n{}", tmux.capture()))
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Runs `line` in the remote shell and waits for a pane line that is
/// exactly `expect` (the command is typed so that `expect` is not in its
/// echo: callers split markers with `""`).
fn run_line(tmux: &Tmux, line: &str, expect: &str) {
    tmux.type_text(line);
    tmux.key("Enter");
    tmux.wait_line(expect, |l| l == expect);
}

/// `shell attach` on the terminal stream (the default where the gateway
/// announces it) from a real terminal: issue 15's "done when" list.
#[test]
fn shell_attach_on_the_stream_feels_like_a_local_terminal() {
    let rig = rig(&[("PANORAMA_TERMINAL_IDLE_TIMEOUT_SECS", "2")]);
    let (tmux, hub) = (&rig.tmux, &rig.hub);
    let home = rig.home.path().display().to_string();
    let started = Instant::now();
    let pane = format!(
        "{}; echo \"[attach exited $?]\"; sleep 600",
        rig.attach_command("auto")
    );
    tmux.start_pane(&pane);

    // The shell starts in $HOME (the gateway runs in /).
    run_line(
        tmux,
        "cd; clear; echo \"W\"\"D=$OLDPWD\"",
        &format!("WD={home}"),
    );

    // Terminal replies arrive intact: DA2 (`ESC[>…c`) and CPR (`ESC[row;colR`).
    let reply = |query: &str, last: char, key: &str| {
        format!(
            "stty raw -echo; printf '{query}'; r=; while IFS= read -r -n1 ch; do r=\"$r$ch\"; [ \"$ch\" = {last} ] && break; done; stty sane; printf '{key}=%q\\n' \"$r\""
        )
    };
    tmux.type_text(&reply("\\033[>c", 'c', "DA2"));
    tmux.key("Enter");
    tmux.wait_line("the DA2 reply", |l| l.starts_with("DA2="));
    let da2 = tmux
        .lines()
        .into_iter()
        .find(|l| l.starts_with("DA2="))
        .unwrap();
    assert!(
        da2.starts_with("DA2=$'\\E[>") && da2.ends_with("c'"),
        "the DA2 reply was damaged: {da2}"
    );
    run_line(tmux, "clear; tput cup 4 9", "");
    tmux.type_text(&reply("\\033[6n", 'R', "CPR"));
    tmux.key("Enter");
    tmux.wait_line("the CPR reply", |l| l.starts_with("CPR="));
    let cpr = tmux
        .lines()
        .into_iter()
        .find(|l| l.starts_with("CPR="))
        .unwrap();
    assert!(
        cpr.starts_with("CPR=$'\\E[") && cpr.ends_with("R'") && cpr.contains(';'),
        "the CPR reply was damaged: {cpr}"
    );

    // vim edits and saves a file byte-exact.
    let file = rig.home.path().join("notes.txt");
    std::fs::write(&file, "alpha\nbeta\n").unwrap();
    run_line(tmux, "clear; echo \"V\"\"IM=go\"", "VIM=go");
    tmux.type_text("vim -u NONE -N -n notes.txt");
    tmux.key("Enter");
    tmux.wait_line("vim showing the file", |l| l == "beta");
    tmux.type_text("ggA one é");
    tmux.key("Escape");
    tmux.type_text("Gogamma");
    tmux.key("Escape");
    tmux.type_text(":wq");
    tmux.key("Enter");
    let deadline = Instant::now() + WAIT;
    while std::fs::read(&file).unwrap() != "alpha one é\nbeta\ngamma\n".as_bytes() {
        assert!(
            Instant::now() < deadline,
            "vim did not save the edit: {:?}\n{}",
            String::from_utf8_lossy(&std::fs::read(&file).unwrap()),
            tmux.capture()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run_line(tmux, "clear; echo \"B\"\"ACK=$?\"", "BACK=0");

    // 10 MB arrive complete and in order, as the pane sees them.
    let seen = rig.home.path().join("pane.out");
    tmux.run(&[
        "pipe-pane",
        "-t",
        "t",
        &format!("cat > {}", shell_quote(&seen.display().to_string())),
    ]);
    run_line(tmux, "seq 1 1500000; echo \"E\"\"ND=seq\"", "END=seq");
    tmux.run(&["pipe-pane", "-t", "t"]);
    let bytes = std::fs::read(&seen).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let from = text.find("\r1\r\n2\r\n").expect("seq output in the pane") + 1;
    let to = text.find("END=seq").unwrap();
    let mut expect = 1u64;
    for line in text[from..to].split("\r\n").filter(|l| !l.is_empty()) {
        assert_eq!(
            line,
            expect.to_string(),
            "line {expect} damaged or out of order"
        );
        expect += 1;
    }
    assert_eq!(expect, 1_500_001, "every line reached the pane");

    // Resize follows.
    run_line(tmux, "clear; stty size", "30 100");
    resize_to_35x120(tmux);

    // Ctrl-C, Ctrl-\ and Ctrl-Z reach the remote program as signals.
    run_line(tmux, "clear; echo \"S\"\"TART=1\"", "START=1");
    tmux.type_text("sleep 100");
    tmux.key("Enter");
    std::thread::sleep(Duration::from_millis(300));
    tmux.key("C-c");
    run_line(tmux, "echo \"R\"\"C=$?\"", "RC=130");
    tmux.type_text("sleep 100");
    tmux.key("Enter");
    std::thread::sleep(Duration::from_millis(300));
    tmux.key("C-\\");
    run_line(tmux, "echo \"Q\"\"C=$?\"", "QC=131");
    tmux.type_text("sleep 100");
    tmux.key("Enter");
    std::thread::sleep(Duration::from_millis(300));
    tmux.key("C-z");
    tmux.wait_line("the stopped job", |l| {
        l.contains("Stopped") && l.contains("sleep 100")
    });
    run_line(
        tmux,
        "kill -9 %1; sleep 0.3; jobs; echo \"Z\"\"C=done\"",
        "ZC=done",
    );
    assert!(
        tmux.lines()
            .iter()
            .any(|l| l.contains("Killed") && l.contains("sleep 100")),
        "{}",
        tmux.capture()
    );

    // In use for ATTACH_USE_SECS from the start (the minute:
    // ATTACH_USE_SECS=60; by default the steps above are the use), a line
    // every half second: still one job row at the end.
    let use_for = Duration::from_secs(
        std::env::var("ATTACH_USE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    );
    let mut n = 0;
    while started.elapsed() < use_for {
        n += 1;
        run_line(tmux, &format!("echo \"N\"\"={n}\""), &format!("N={n}"));
        std::thread::sleep(Duration::from_millis(500));
    }

    // `exit`: one line from attach, exit code 0.
    run_line(tmux, "clear", "");
    tmux.type_text("exit");
    tmux.key("Enter");
    tmux.wait_line("attach to exit", |l| l.starts_with("[attach exited "));
    let lines: Vec<String> = tmux.lines().into_iter().filter(|l| !l.is_empty()).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("[attach exited "))
        .unwrap();
    assert_eq!(lines[at], "[attach exited 0]", "{lines:?}");
    assert!(
        lines[at - 1].starts_with("[session ") && lines[at - 2].ends_with("exit"),
        "one line between the shell's exit and attach's: {lines:?}"
    );
    let jobs = rig.jobs();
    assert_eq!(jobs.len(), 1, "one job row for the whole session: {jobs:?}");
    assert_eq!(jobs[0]["job_type"], "terminal_open");
    let _ = hub;
}

/// kill -9 of the attach client: the remote shell and its children are
/// gone within the idle timeout + 1 s.
#[test]
fn a_killed_attach_client_s_remote_tree_is_reaped_after_the_idle_timeout() {
    let rig = rig(&[("PANORAMA_TERMINAL_IDLE_TIMEOUT_SECS", "2")]);
    let tmux = &rig.tmux;
    let pane = format!("{}; sleep 600", rig.attach_command("stream"));
    tmux.start_pane(&pane);
    run_line(
        tmux,
        "sleep 1000 & echo \"C\"\"HILD=$!\"; echo \"S\"\"HELL=$$\"",
        "",
    );
    tmux.wait_line("the pids", |l| l.starts_with("SHELL="));
    let child = pane_number(tmux, "CHILD=");
    let shell = pane_number(tmux, "SHELL=");
    assert!(pid_alive(child) && pid_alive(shell));
    // The pane runs `sh -c '<attach>; sleep 600'`: attach is its child.
    let sh: i32 = String::from_utf8_lossy(
        &tmux
            .run(&["display", "-p", "-t", "t", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
    let attach: i32 = children
        .split_whitespace()
        .next()
        .expect("attach runs")
        .parse()
        .unwrap();
    assert!(
        std::fs::read_to_string(format!("/proc/{attach}/cmdline"))
            .unwrap()
            .contains("attach"),
        "pid {attach} is not shell attach"
    );
    unsafe { libc::kill(attach, libc::SIGKILL) };
    let gone_at = Instant::now();
    while (pid_alive(child) || pid_alive(shell)) && gone_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = gone_at.elapsed();
    assert!(
        !pid_alive(child) && !pid_alive(shell),
        "the tree survived {took:?}"
    );
    assert!(
        took <= Duration::from_secs(3),
        "reaped after {took:?}: more than the idle timeout + 1 s"
    );
}
