//! Runs the real `panorama-gateway` binary against a temporary HOME.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn gateway_dir(&self) -> PathBuf {
        self.path().join(".panorama/gateway")
    }
    fn config_path(&self) -> PathBuf {
        self.gateway_dir().join("gateway.json")
    }
    fn write_config(&self, text: &str) {
        fs::create_dir_all(self.gateway_dir()).unwrap();
        fs::write(self.config_path(), text).unwrap();
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panorama-gateway"));
        cmd.args(args)
            .env_clear()
            .env("HOME", self.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }
    fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().unwrap())
    }
}

struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A process the test owns, reaped by a background thread when it exits so
/// it never lingers as a zombie.
fn spawn_sleeper() -> u32 {
    let mut child: Child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    pid
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn full_control_round_trip() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw-1","teamId":"t-1"}"#);

    let r = home.run(&["full-control"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout(), "Gateway install full control\n  Enabled: No\n");

    let r = home.run(&["full-control", "enable", "-v"]);
    assert_eq!(r.code(), 0);
    assert_eq!(
        r.stdout(),
        "OK Gateway install full control enabled.\n  Gateway ID: gw-1\n"
    );
    let r = home.run(&["full-control", "ON"]);
    assert_eq!(
        r.stdout(),
        "Gateway install full control already enabled.\n"
    );
    let r = home.run(&["full-control", "status", "--verbose"]);
    assert_eq!(
        r.stdout(),
        "Gateway install full control\n  Enabled: Yes\n  Gateway ID: gw-1\n"
    );
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(home.config_path()).unwrap()).unwrap();
    assert_eq!(doc["full_control_enabled"], true);

    let r = home.run(&["full-control", "disable"]);
    assert_eq!(r.stdout(), "OK Gateway install full control disabled.\n");
    let r = home.run(&["full-control", "status"]);
    assert!(r.stdout().contains("Enabled: No"));

    let r = home.run(&["full-control", "toggle", "-v"]);
    assert_eq!(r.code(), 1);
    assert!(r
        .stderr()
        .starts_with("ERROR Unknown full-control command.\n"));
    assert!(r
        .stderr()
        .contains("  Details: Use one of: on, off, status"));
}

#[test]
fn full_control_without_config_fails() {
    let home = Home::new();
    let r = home.run(&["full-control", "enable"]);
    assert_eq!(r.code(), 1);
    assert!(r
        .stderr()
        .starts_with("ERROR Gateway config not found. Run \"pair\" first.\n"));
    assert!(!home.config_path().exists());
}

#[test]
fn config_merge_keeps_unknown_keys() {
    let home = Home::new();
    home.write_config(
        r#"{"vmGuest":{"vmId":"vm-1"},"gatewayId":"gw","providerHealth":{"codex":{"status":"healthy","check_type":"full","checked_at":"2025-01-01T00:00:00Z"}},"futureKey":[1,2]}"#,
    );
    let r = home.run(&["full-control", "enable"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let text = fs::read_to_string(home.config_path()).unwrap();
    assert!(text.starts_with("{\n  \"vmGuest\": {"), "{text}");
    assert!(!text.ends_with('\n'));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["vmGuest"]["vmId"], "vm-1");
    assert_eq!(doc["futureKey"], serde_json::json!([1, 2]));
    assert_eq!(doc["providerHealth"]["codex"]["status"], "healthy");
    assert_eq!(doc["gatewayId"], "gw");
    assert_eq!(doc["full_control_enabled"], true);
    // No temp files are left next to the config.
    let leftovers: Vec<String> = fs::read_dir(home.gateway_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn permissions_are_repaired_on_every_start() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw","accessToken":"a","refreshToken":"r"}"#);
    let dir = home.gateway_dir();
    let log = dir.join("gateway.log");
    let pid = dir.join("gateway.pid");
    fs::write(&log, "old line\n").unwrap();
    fs::write(&pid, "not-a-pid\n").unwrap();
    for file in [home.config_path(), log.clone(), pid.clone()] {
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();

    // Loading the config (any command) makes it 0600.
    let r = home.run(&["full-control", "status"]);
    assert_eq!(r.code(), 0);
    assert_eq!(mode(&home.config_path()), 0o600);

    fs::set_permissions(home.config_path(), fs::Permissions::from_mode(0o666)).unwrap();
    let r = home.run(&["start", "--foreground", "--anon-key", "anon"]);
    // The session cannot be authenticated (no hub); everything before it ran.
    assert_eq!(r.code(), 1);
    assert!(r.stdout().contains("Starting gateway..."));
    assert!(
        r.stderr()
            .contains("Failed to authenticate gateway session."),
        "{}",
        r.stderr()
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tmp")), 0o700);
    assert_eq!(mode(&dir.join("work")), 0o700);
    assert_eq!(mode(&home.config_path()), 0o600);
    assert_eq!(mode(&log), 0o600);
    // The stale PID file was taken over, then removed by its owner.
    assert!(
        !pid.exists(),
        "the foreground gateway removes its own PID file"
    );
    // Start saved the resolved backend and device name, keeping the tokens.
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(home.config_path()).unwrap()).unwrap();
    assert_eq!(doc["supabaseUrl"], "http://127.0.0.1:54321");
    assert_eq!(doc["supabaseAnonKey"], "anon");
    assert_eq!(doc["accessToken"], "a");
    assert!(doc["deviceName"].as_str().is_some_and(|n| !n.is_empty()));
}

#[test]
fn start_without_config_explains_what_to_do() {
    let home = Home::new();
    let r = home.run(&["start", "--foreground"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().starts_with(
        "ERROR Gateway config not found. Run \"pair\" first or set --config-path / PANORAMA_GATEWAY_CONFIG_PATH.\n"
    ));
}

#[test]
fn env_file_is_loaded_for_start_but_never_overrides() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw"}"#);
    fs::write(
        home.path().join(".env"),
        "PANORAMA_SUPABASE_ANON_KEY=from-dotenv\nPANORAMA_SUPABASE_URL=http://dotenv:1\n",
    )
    .unwrap();
    let r = Run(home
        .command(&["start", "--foreground"])
        .env("PANORAMA_SUPABASE_URL", "http://from-env:2")
        .output()
        .unwrap());
    assert_eq!(r.code(), 1);
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(home.config_path()).unwrap()).unwrap();
    assert_eq!(doc["supabaseAnonKey"], "from-dotenv");
    assert_eq!(doc["supabaseUrl"], "http://from-env:2");

    let r = home.run(&["pair", "CODE", "--env-file", "missing.env", "-v"]);
    assert_eq!(r.code(), 1);
    assert!(r
        .stderr()
        .starts_with("ERROR Environment file not found.\n"));
    assert!(r.stderr().contains("missing.env"));
}

#[test]
fn fallback_dir_when_default_is_unusable() {
    let home = Home::new();
    fs::write(home.path().join(".panorama"), "a file, not a directory").unwrap();
    let xdg = home.path().join("xdg");
    let r = Run(home
        .command(&["start", "--foreground", "-v"])
        .env("XDG_DATA_HOME", &xdg)
        .output()
        .unwrap());
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .starts_with("WARN Gateway config directory not writable; using fallback location.\n"),
        "{}",
        r.stderr()
    );
    assert!(xdg.join("panorama-gateway/tmp").is_dir());
    assert_eq!(mode(&xdg.join("panorama-gateway")), 0o700);
}

#[test]
fn status_json_reports_local_state() {
    let home = Home::new();
    let r = home.run(&["status", "--json"]);
    assert_eq!(r.code(), 0);
    let doc: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(doc["running"], false);
    assert_eq!(doc["paired"], false);
    assert_eq!(doc["full_control_enabled"], Value::Null);
    assert_eq!(doc["pid"], Value::Null);
    assert_eq!(doc["config_path"], home.config_path().display().to_string());
    assert!(!home.gateway_dir().exists(), "status must not create files");

    home.write_config(
        r#"{"gatewayId":"gw-9","teamId":"t","deviceName":"box","full_control_enabled":true}"#,
    );
    let stale = dead_pid();
    fs::write(home.gateway_dir().join("gateway.pid"), format!("{stale}\n")).unwrap();
    let doc: Value = serde_json::from_str(&home.run(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(doc["running"], false);
    assert_eq!(doc["stale_pid"], stale);
    assert_eq!(doc["paired"], true);
    assert_eq!(doc["full_control_enabled"], true);
    assert_eq!(doc["gateway_id"], "gw-9");
    assert_eq!(doc["device_name"], "box");
    assert!(
        home.gateway_dir().join("gateway.pid").exists(),
        "status has no side effects"
    );

    let live = spawn_sleeper();
    fs::write(home.gateway_dir().join("gateway.pid"), format!("{live}\n")).unwrap();
    let doc: Value = serde_json::from_str(&home.run(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(doc["running"], true);
    assert_eq!(doc["pid"], live);
    let r = home.run(&["status"]);
    assert!(r
        .stdout()
        .starts_with("Gateway Status: Running\n  Version: "));
    assert!(r
        .stdout()
        .contains("  Paired: Yes\n  Install full control: Enabled\n"));
    kill_pid(live);
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn stop_without_pid_file() {
    let home = Home::new();
    let r = home.run(&["stop", "-v"]);
    assert_eq!(r.code(), 0);
    assert_eq!(
        r.stdout(),
        "Gateway is not running\n  PID file: ~/.panorama/gateway/gateway.pid\n"
    );
}

#[test]
fn stop_removes_stale_pid_and_stops_live_process() {
    let home = Home::new();
    fs::create_dir_all(home.gateway_dir()).unwrap();
    let pid_path = home.gateway_dir().join("gateway.pid");
    fs::write(&pid_path, format!("{}\n", dead_pid())).unwrap();
    let r = home.run(&["stop"]);
    assert_eq!(r.stdout(), "Gateway is not running (stale PID removed)\n");
    assert!(!pid_path.exists());

    let live = spawn_sleeper();
    fs::write(&pid_path, format!("{live}\n")).unwrap();
    let r = home.run(&["stop", "-v"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!("Stopping gateway...\n  PID: {live}\nOK Gateway stopped\n  PID: {live}\n")
    );
    assert!(!pid_path.exists());
}

#[test]
fn logs_no_follow_shows_last_lines() {
    let home = Home::new();
    let r = home.run(&["logs", "--no-follow"]);
    assert_eq!(r.code(), 1);
    assert!(r
        .stderr()
        .starts_with("ERROR Unable to read gateway log file\n"));

    fs::create_dir_all(home.gateway_dir()).unwrap();
    fs::write(
        home.gateway_dir().join("gateway.log"),
        "one\ntwo\r\nthree\nfour\n",
    )
    .unwrap();
    let r = home.run(&["logs", "--no-follow", "--lines", "2"]);
    assert_eq!(r.code(), 0);
    assert_eq!(
        r.stdout(),
        "Showing last 2 lines of gateway logs\nthree\nfour\n"
    );
    let r = home.run(&["logs", "--lines=0", "--no-follow", "-v"]);
    assert_eq!(
        r.stdout(),
        "Showing last 4 lines of gateway logs\n  Log path: ~/.panorama/gateway/gateway.log\none\ntwo\nthree\nfour\n"
    );
}

#[test]
fn logs_follow_prints_appended_text() {
    let home = Home::new();
    fs::create_dir_all(home.gateway_dir()).unwrap();
    let log = home.gateway_dir().join("gateway.log");
    fs::write(&log, "before\n").unwrap();
    let mut child = home
        .command(&["logs", "--lines", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Watchdog: never let a broken follower hang the test run.
    let follower_pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        kill_pid(follower_pid);
    });
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "Following gateway logs (press Ctrl+C to stop)\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"after\n")
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_command_lines_fail_clearly() {
    let home = Home::new();
    let r = home.run(&[]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout().starts_with("\nPanorama Gateway\n\nUsage:\n"));
    let r = home.run(&["--help"]);
    assert_eq!(r.code(), 0);
    assert!(r
        .stdout()
        .contains("panorama-gateway full-control <on|off|status>"));
    // Options only this gateway has are listed after the reference's text;
    // the spellings shared with panorama-hub, not the hidden old ones.
    for flag in [
        "--hub-url <url>",
        "--data-dir <path>",
        "--anon-key <key>",
        "--json ",
    ] {
        assert!(r.stdout().contains(flag), "--help lacks {flag}");
    }
    for old in [
        "--supabase-url <url>",
        "--config-dir <path>",
        "enable|disable",
    ] {
        assert!(!r.stdout().contains(old), "--help still shows {old}");
    }

    let r = home.run(&["frobnicate"]);
    assert_eq!(r.code(), 1);
    assert!(r.stdout().contains("Panorama Gateway"));
    assert!(r
        .stderr()
        .starts_with("ERROR unrecognized subcommand 'frobnicate'"));

    let r = home.run(&["status", "--bogus"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .starts_with("ERROR unexpected argument '--bogus'"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("--help"));

    let r = home.run(&["logs", "--lines", "many"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("many"));

    let r = home.run(&["start", "--foreground", "--daemon"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().starts_with("ERROR "));
}

#[test]
fn pair_validates_locally_then_stops_at_the_network_step() {
    let home = Home::new();
    let r = home.run(&["pair"]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.stdout(), "");
    assert!(r.stderr().starts_with("ERROR Pairing code is required\n"));
    // The config dir was prepared before the code check.
    assert_eq!(mode(&home.gateway_dir()), 0o700);

    let r = home.run(&["pair", "ABC-123"]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.stdout(), "Pairing with team...\n");
    assert!(r
        .stderr()
        .starts_with("ERROR Missing Supabase configuration for pairing.\n"));

    let r = home.run(&["pair", "--code", "ABC-123", "--anon-key", "anon"]);
    assert_eq!(r.code(), 1);
    // Nothing listens on the default 127.0.0.1 backend.
    assert!(r.stderr().starts_with("ERROR Pairing request failed."));
    assert!(!home.config_path().exists());

    let r = home.run(&["pair", "ABC", "--anon-key", "a", "--full-control=maybe"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().starts_with("ERROR Invalid --full-control value"));
}

#[test]
fn doctor_reports_local_state_in_host_only_mode() {
    let home = Home::new();
    let closed = closed_port_url();
    home.write_config(&format!(
        r#"{{"gatewayId":"gw","full_control_enabled":true,"supabaseUrl":"{closed}","supabaseAnonKey":"anon"}}"#
    ));
    let r = home.run(&["doctor"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!("Gateway doctor report\n  Config dir: ~/.panorama/gateway\n  Paired: Yes\n  Hub: Unreachable ({closed})\n  Install full control: Enabled\nValidating providers...\nProvider status:\n  - claude_code: unavailable (spawn claude ENOENT)\n  - codex: unavailable (spawn codex ENOENT)\n  - gemini: unavailable (spawn gemini ENOENT)\n")
    );
    assert!(
        r.stderr()
            .starts_with(&format!("WARN The hub at {closed} cannot be reached.\n")),
        "{}",
        r.stderr()
    );
    let r = home.run(&["doctor", "--json"]);
    let doc: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(doc["paired"], true);
    assert_eq!(doc["hub"]["reachable"], false);
    assert_eq!(doc["hub"]["url"], closed.as_str());
    assert_eq!(doc["full_control_enabled"], true);
    // No AI CLI on this PATH: every provider is unavailable, none ready.
    assert_eq!(doc["host_only"], false);
    assert_eq!(doc["any_provider_ready"], false);
    assert_eq!(doc["providers"]["claude_code"]["status"], "unavailable");
    assert_eq!(doc["providers"]["codex"]["check_type"], "full");
}

/// A loopback URL nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn garbage_config_is_not_paired_and_start_says_why() {
    let home = Home::new();
    home.write_config("garbage{");
    let r = home.run(&["status"]);
    assert!(
        r.stdout().contains("  Paired: No (config unreadable: "),
        "{}",
        r.stdout()
    );
    let doc: Value = serde_json::from_str(&home.run(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(doc["paired"], false);
    assert!(doc["config_error"]
        .as_str()
        .unwrap()
        .contains("could not be parsed"));
    let r = home.run(&["doctor", "--json"]);
    let doc: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(doc["paired"], false);

    // The daemon parent waits for its child's verdict: the child's error,
    // exit 1, no "OK".
    let r = home.run(&["start"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(!r.stdout().contains("OK Gateway started"), "{}", r.stdout());
    assert!(
        r.stderr().starts_with("ERROR Gateway config at "),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("could not be parsed."),
        "{}",
        r.stderr()
    );
    assert!(!home.gateway_dir().join("gateway.pid").exists());
}

#[test]
fn pair_on_a_paired_directory_asks_for_force() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw-old","teamId":"t"}"#);
    let r = home.run(&["pair", "ABC-123", "--anon-key", "anon", "-v"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .starts_with("ERROR This config directory is already paired (gateway gw-old).\n"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("--force"), "{}", r.stderr());
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(home.config_path()).unwrap()).unwrap();
    assert_eq!(doc["gatewayId"], "gw-old", "identity untouched");
    // With --force it goes on to the network step (nothing listens there).
    let url = closed_port_url();
    let r = home.run(&[
        "pair",
        "ABC-123",
        "--force",
        "--anon-key",
        "a",
        "--supabase-url",
        &url,
    ]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().starts_with("ERROR Pairing request failed."),
        "{}",
        r.stderr()
    );
}

#[test]
fn start_daemonizes_into_the_log_file() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw","accessToken":"a","refreshToken":"r"}"#);
    let r = home.run(&["start", "--anon-key", "anon", "-v"]);
    // The child loads its config and fails authentication (the tokens are
    // not JWTs): the parent prints the child's error and exits 1.
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(!r.stdout().contains("OK Gateway started"), "{}", r.stdout());
    assert!(
        r.stderr()
            .starts_with("ERROR Failed to authenticate gateway session.\n  Details: "),
        "{}",
        r.stderr()
    );
    let pid_path = home.gateway_dir().join("gateway.pid");
    assert!(!pid_path.exists(), "a dead daemon's PID file is removed");
    // The detached child logged to the file: JSON lines only.
    let log = home.gateway_dir().join("gateway.log");
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Failed to authenticate gateway session."),
        "{text}"
    );
    for line in text.lines() {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line:?}"));
        assert!(record["level"].is_string(), "{line}");
    }
    assert_eq!(mode(&log), 0o600);
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(home.config_path()).unwrap()).unwrap();
    assert_eq!(
        doc["supabaseAnonKey"], "anon",
        "flag reached the daemon child"
    );
}

#[test]
fn piped_output_has_no_colour() {
    let home = Home::new();
    home.write_config(r#"{"gatewayId":"gw"}"#);
    for args in [
        &["doctor"][..],
        &["status"][..],
        &["start", "--foreground"][..],
    ] {
        let r = Run(home
            .command(args)
            .env("PANORAMA_GATEWAY_LOG", "info")
            .output()
            .unwrap());
        assert!(
            !r.stdout().contains('\u{1b}') && !r.stderr().contains('\u{1b}'),
            "{args:?} printed ANSI escapes into a pipe: {:?}",
            r.stderr()
        );
    }
}

#[test]
fn completions_load_in_bash_and_know_the_commands() {
    let home = Home::new();
    let r = home.run(&["completions", "bash"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let script = r.stdout();
    for word in ["pair", "start", "doctor", "full-control", "--data-dir"] {
        assert!(script.contains(word), "{word} missing");
    }
    let path = home.path().join("completion.bash");
    fs::write(&path, &script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p panorama-gateway",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("panorama-gateway"));
    for shell in ["zsh", "fish"] {
        let r = home.run(&["completions", shell]);
        assert_eq!(r.code(), 0);
        assert!(r.stdout().contains("panorama-gateway"));
    }
}

/// One dialect with panorama-hub: `--data-dir`, `--hub-url`, `on|off`, a
/// global `--json`; the old spellings still work but are not advertised.
#[test]
fn shared_spellings_and_hidden_old_ones() {
    let home = Home::new();
    let dir = home.path().join("elsewhere");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("gateway.json"),
        r#"{"gatewayId":"gw-9","teamId":"t","accessToken":"a","refreshToken":"r"}"#,
    )
    .unwrap();
    let dir = dir.to_str().unwrap();
    let mut outputs = Vec::new();
    for args in [
        &["--json", "status", "--data-dir", dir][..],
        &["status", "--json", "--config-dir", dir][..],
    ] {
        let r = home.run(args);
        assert_eq!(r.code(), 0, "{args:?}: {}", r.stderr());
        let v: Value = serde_json::from_str(&r.stdout()).unwrap();
        assert_eq!(v["gateway_id"], "gw-9", "{args:?}: {v}");
        outputs.push(v["config_dir"].clone());
    }
    assert_eq!(outputs[0], outputs[1]);

    for (word, said) in [
        ("on", "enabled"),
        ("off", "disabled"),
        ("enable", "enabled"),
        ("disable", "disabled"),
    ] {
        let r = home.run(&["--data-dir", dir, "full-control", word]);
        assert_eq!(r.code(), 0, "{word}: {}", r.stderr());
        assert!(r.stdout().contains(said), "{word}: {}", r.stdout());
    }

    // --json on a command that prints no JSON is refused, not ignored.
    let r = home.run(&["--data-dir", dir, "logs", "--no-follow", "--json"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .starts_with("ERROR --json is not available for this command."),
        "{}",
        r.stderr()
    );
}

/// `service install|status|uninstall` with no systemd user manager around
/// (as in a container): the unit is written under `$XDG_CONFIG_HOME`, the
/// commands to start it are printed, and systemd-analyze accepts it.
#[test]
fn service_install_status_uninstall() {
    let home = Home::new();
    let xdg = home.path().join("xdg");
    let run = |args: &[&str]| {
        let mut cmd = home.command(args);
        cmd.env("XDG_CONFIG_HOME", &xdg);
        Run(cmd.output().unwrap())
    };
    let r = run(&["service", "install"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .starts_with("ERROR This gateway is not paired yet."),
        "{}",
        r.stderr()
    );

    home.write_config(r#"{"gatewayId":"gw-1","teamId":"t","accessToken":"a","refreshToken":"r"}"#);
    let r = run(&["service", "install"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let unit_path = xdg.join("systemd/user/panorama-gateway.service");
    assert!(
        r.stdout().starts_with("OK Service unit written\n"),
        "{}",
        r.stdout()
    );
    assert!(
        r.stdout()
            .contains("systemctl --user enable --now panorama-gateway.service"),
        "{}",
        r.stdout()
    );
    assert!(
        r.stdout().contains("loginctl enable-linger"),
        "{}",
        r.stdout()
    );
    let unit = fs::read_to_string(&unit_path).unwrap();
    let exe = env!("CARGO_BIN_EXE_panorama-gateway");
    assert!(
        unit.contains(&format!("\nExecStart={exe} start --foreground\n")),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "\nEnvironment=PANORAMA_GATEWAY_CONFIG_DIR={}\n",
            home.gateway_dir().display()
        )),
        "{unit}"
    );
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panorama-gateway.service"),
            "{stderr}"
        );
    } else {
        eprintln!("systemd-analyze not installed: verification skipped");
    }

    let r = run(&["service", "status"]);
    assert!(r.stdout().contains("  Installed: Yes\n"), "{}", r.stdout());
    let r = run(&["service", "uninstall"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stdout().starts_with("OK Service removed\n"),
        "{}",
        r.stdout()
    );
    assert!(!unit_path.exists());
    let r = run(&["service", "status"]);
    assert!(r.stdout().contains("  Installed: No\n"), "{}", r.stdout());
}
