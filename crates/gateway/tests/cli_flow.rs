//! The operator's first session, end to end with the real CLIs: the hub's
//! `pairing-code create` → `panorama-gateway pair <code>` → `start --daemon`
//! → `status --json` → the hub's `job submit` and `job wait` → `doctor
//! --json` → `logs --no-follow` → `stop` → `status`. A fake `claude` on
//! PATH makes the diagnostic result deterministic. Every network call is on
//! 127.0.0.1.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use panorama_testkit::{GatewayHost, Hub};
use serde_json::Value;

const FAKE_VERSION: &str = panorama_testkit::SCRIPTED_CLAUDE_VERSION;
const WAIT: Duration = Duration::from_secs(30);

/// A temp HOME with a fake `claude` in `<home>/bin`, first on PATH.
struct Machine {
    host: GatewayHost,
}

impl Machine {
    /// The testkit's scripted `claude` (prints its version, counts calls).
    fn new() -> Machine {
        Machine {
            host: GatewayHost::scripted_claude(0),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.host.home().join(".panorama").join("gateway")
    }

    fn path_env(&self) -> std::ffi::OsString {
        std::env::join_paths(std::iter::once(self.host.home().join("bin")).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap()
    }

    fn clean(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars() {
            if key.starts_with("PANORAMA_") || key.starts_with("SUPABASE_") || key == "CLAUDE_CLI" {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", self.host.home())
            .env("PATH", self.path_env())
            .current_dir(self.host.home())
            .stdin(Stdio::null());
    }

    /// `panorama-gateway ARGS` with the default config dir under HOME.
    fn gateway(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panorama-gateway"));
        self.clean(&mut cmd);
        cmd.args(args).output().expect("run panorama-gateway")
    }

    /// `panorama-hub --data-dir <hub's> ARGS`: finds the hub and its service
    /// key through the data dir's keys.json, as an operator's would.
    fn hub_cli(&self, hub: &Hub, args: &[&str]) -> Output {
        let mut cmd = Command::new(panorama_testkit::hub_binary());
        self.clean(&mut cmd);
        cmd.arg("--data-dir")
            .arg(hub.data_dir.path())
            .env("PANORAMA_HUB_LOG", "warn")
            .args(args)
            .output()
            .expect("run panorama-hub")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn json_of(out: &Output, what: &str) -> Value {
    let stdout = ok(out, what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) STATE ...: the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

fn gateway_row(hub: &Hub, id: &str) -> Value {
    hub.select("team_gateways", &format!("id=eq.{id}&select=*"))
        .into_iter()
        .next()
        .expect("gateway row")
}

panorama_testkit::on_both_backends! {
fn pair_start_run_a_job_inspect_and_stop_with_the_real_clis() {
    let hub = Hub::start();
    let machine = Machine::new();

    // The operator: a team and a pairing code, which prints the pair command.
    let team = json_of(
        &machine.hub_cli(&hub, &["--json", "team", "create", "first-team"]),
        "team create",
    );
    let team_id = team["id"].as_str().unwrap().to_string();
    let code = json_of(
        &machine.hub_cli(
            &hub,
            &["--json", "pairing-code", "create", "--team", &team_id],
        ),
        "pairing-code create",
    );
    let pairing_code = code["code"].as_str().unwrap().to_string();
    assert_eq!(
        code["pair_command"],
        format!(
            "panorama-gateway pair {pairing_code} --supabase-url {} --anon-key {}",
            hub.url, hub.anon_key
        )
    );

    // The machine: pair with exactly that command (it auto-starts the daemon).
    let out = machine.gateway(&[
        "pair",
        &pairing_code,
        "--supabase-url",
        &hub.url,
        "--anon-key",
        &hub.anon_key,
    ]);
    let stdout = ok(&out, "pair");
    assert!(stdout.contains("Pairing with team..."), "{stdout}");
    assert!(stdout.contains("Validating providers..."), "{stdout}");
    assert!(
        stdout.contains("OK Paired to team successfully"),
        "{stdout}"
    );
    assert!(stdout.contains("OK Gateway started"), "{stdout}");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(machine.config_dir().join("gateway.json")).unwrap(),
    )
    .unwrap();
    let gateway_id = config["gatewayId"].as_str().unwrap().to_string();
    assert_eq!(config["teamId"], team_id.as_str());

    // `start --daemon` finds the daemon that pair started and refuses to
    // start a second one.
    let out = machine.gateway(&["start", "--daemon"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Gateway already running (PID "), "{stderr}");

    hub.wait_for("gateway ready", WAIT, || {
        (gateway_row(&hub, &gateway_id)["status"] == "ready").then_some(())
    });
    let status = hub.wait_for("status --json with a PID", WAIT, || {
        let status = json_of(&machine.gateway(&["status", "--json"]), "status --json");
        status["pid"].as_i64().map(|_| status)
    });
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["paired"], true, "{status}");
    assert_eq!(status["gateway_id"], gateway_id.as_str(), "{status}");
    let pid = status["pid"].as_i64().unwrap() as i32;
    assert!(process_exists(pid));

    // A diagnostic job through the operator CLI.
    let job = json_of(
        &machine.hub_cli(
            &hub,
            &[
                "--json",
                "job",
                "submit",
                "--gateway",
                &gateway_id,
                "--type",
                "diagnostic",
            ],
        ),
        "job submit",
    );
    assert_eq!(job["status"], "queued");
    let job_id = job["id"].as_str().unwrap().to_string();
    let waited = machine.hub_cli(&hub, &["--json", "job", "wait", &job_id, "--timeout", "30"]);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "job wait: {}",
        text(&waited.stderr)
    );
    let done: Value = serde_json::from_slice(&waited.stdout).expect("job wait JSON");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["command"], "claude --version");
    assert_eq!(done["result"]["stdout"], format!("{FAKE_VERSION}\n"));
    assert_eq!(done["result"]["stderr"], "");
    assert_eq!(done["result"]["exit_code"], 0);
    assert_eq!(done["result"]["version"], FAKE_VERSION);
    assert!(done["result"]["duration_ms"].is_u64());
    assert_eq!(done["error"], Value::Null);
    let finished_at = Instant::now();
    // The human form of `job wait` too.
    let human = ok(
        &machine.hub_cli(&hub, &["job", "wait", &job_id]),
        "job wait (text)",
    );
    assert!(
        human.starts_with(&format!("job {job_id}  diagnostic  completed")),
        "{human}"
    );

    // doctor --json on the paired machine.
    let doctor = json_of(&machine.gateway(&["doctor", "--json"]), "doctor --json");
    assert_eq!(doctor["paired"], true, "{doctor}");
    assert_eq!(doctor["gateway_id"], gateway_id.as_str(), "{doctor}");
    assert_eq!(doctor["team_id"], team_id.as_str(), "{doctor}");

    // The daemon's log: JSON lines, including this job.
    let logs = hub.wait_for("the job in the log", WAIT, || {
        let logs = ok(
            &machine.gateway(&["logs", "--no-follow", "--lines", "20"]),
            "logs",
        );
        logs.contains(&job_id).then_some(logs)
    });
    let lines: Vec<&str> = logs.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 20, "{logs}");
    let records: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["level"].is_string() && r["timestamp"].is_string()),
        "no JSON log records in: {logs}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains(&job_id) && r["level"].is_string()),
        "the job's record is not JSON: {logs}"
    );

    // Claimed exactly once: let a duplicate delivery (realtime + the
    // 5-second reconcile) show itself, then count the runs.
    if let Some(rest) = Duration::from_millis(5_500).checked_sub(finished_at.elapsed()) {
        std::thread::sleep(rest);
    }
    // The gateway logs "Processing gateway job" once per successful claim.
    // (The fake `claude` is also run by provider validation, so its calls
    // are no measure of jobs.)
    let log = std::fs::read_to_string(machine.config_dir().join("gateway.log")).unwrap();
    let taken = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["message"] == "Processing gateway job" && r["jobId"] == job_id.as_str())
        .count();
    assert_eq!(taken, 1, "the job was claimed exactly once; log:\n{log}");
    let jobs = hub.select("gateway_jobs", &format!("gateway_id=eq.{gateway_id}"));
    assert_eq!(jobs.len(), 1);

    // stop → status says stopped; the hub sees the gateway offline.
    let stdout = ok(&machine.gateway(&["stop"]), "stop");
    assert!(stdout.contains("Stopping gateway..."), "{stdout}");
    assert!(stdout.contains("OK Gateway stopped"), "{stdout}");
    assert!(!process_exists(pid), "daemon PID {pid} still alive");
    let status = json_of(&machine.gateway(&["status", "--json"]), "status --json");
    assert_eq!(status["running"], false, "{status}");
    let stdout = ok(&machine.gateway(&["status"]), "status");
    assert!(stdout.contains("Gateway Status: Stopped"), "{stdout}");
    assert_eq!(gateway_row(&hub, &gateway_id)["status"], "offline");
}
}
