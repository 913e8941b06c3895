//! `panorama-hub up` end to end: the real hub binary starts a hub, pairs and
//! runs the real gateway binary, puts a diagnostic job through it, and
//! stops both cleanly on SIGINT/SIGTERM. A fake `claude` on PATH makes the
//! diagnostic deterministic. Every network call is on 127.0.0.1.

use std::io::{BufRead, BufReader, Read};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use panorama_testkit::GatewayHost;
use serde_json::Value;

const FAKE_VERSION: &str = panorama_testkit::SCRIPTED_CLAUDE_VERSION;
const WAIT: Duration = Duration::from_secs(90);

/// A temp HOME with a fake `claude` in `<home>/bin` and a hub data dir.
struct Sandbox {
    host: GatewayHost,
}

impl Sandbox {
    /// The testkit's scripted `claude` (prints its version, counts calls).
    fn new() -> Sandbox {
        Sandbox {
            host: GatewayHost::scripted_claude(0),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.host.home().join("hub-data")
    }

    fn gateway_dir(&self) -> PathBuf {
        self.data_dir().join("local-gateway")
    }

    /// `panorama-hub [--json] --data-dir D up --listen ADDR`, with the
    /// fake claude and the gateway binary's directory on PATH.
    fn up(&self, listen: &str, json: bool) -> Command {
        let gateway = panorama_testkit::gateway_binary();
        let path = std::env::join_paths(
            [
                self.host.home().join("bin"),
                gateway.parent().unwrap().to_path_buf(),
            ]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panorama-hub"));
        for (key, _) in std::env::vars() {
            if key.starts_with("PANORAMA_") || key.starts_with("SUPABASE_") || key == "CLAUDE_CLI" {
                cmd.env_remove(key);
            }
        }
        if json {
            cmd.arg("--json");
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(["up", "--listen", listen])
            .env("HOME", self.host.home())
            .env("PATH", path)
            .env("PANORAMA_HUB_LOG", "warn")
            .current_dir(self.host.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// How many times the gateway took (claimed and started) job `id`,
    /// from the "Processing gateway job" records in its output. (The fake
    /// `claude` is also run by provider validation, so its calls are no
    /// measure of jobs.)
    fn job_runs(&self, id: &str) -> usize {
        std::fs::read_to_string(self.gateway_dir().join("up-gateway.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Processing gateway job") && l.contains(id))
            .count()
    }

    fn service_key(&self) -> String {
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir().join("keys.json")).expect("keys.json"),
        )
        .unwrap();
        keys["service_key"].as_str().unwrap().to_string()
    }
}

/// A running `panorama-hub up`, its stdout read line by line on a thread.
/// SIGKILLed (and its gateway SIGTERMed by the kernel) if a test fails.
struct Up {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn spawn(mut cmd: Command) -> Up {
        let mut child = cmd.spawn().expect("spawn panorama-hub up");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line satisfies `f`.
    fn wait_line(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if f(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let stderr = self.kill_and_stderr();
                    panic!(
                        "no {what} from `panorama-hub up` within {WAIT:?}\nstdout:\n{}\nstderr:\n{stderr}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn kill_and_stderr(&mut self) -> String {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Sends `signal` and waits (bounded) for the exit; returns the status,
    /// the rest of stdout and all of stderr.
    fn stop(&mut self, signal: i32) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("panorama-hub up did not exit within {WAIT:?} after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rest: Vec<String> = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(line);
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, rest.join("\n"), err)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback address nobody listens on right now.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A service-key client for the hub that `up` serves.
struct Admin {
    url: String,
    key: String,
    http: reqwest::blocking::Client,
}

impl Admin {
    fn new(url: &str, key: String) -> Admin {
        Admin {
            url: url.to_string(),
            key,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn select(&self, table: &str, query: &str) -> Vec<Value> {
        let res = self
            .http
            .get(format!("{}/rest/v1/{table}?{query}", self.url))
            .header("apikey", &self.key)
            .header("authorization", format!("Bearer {}", self.key))
            .send()
            .expect("select");
        assert!(
            res.status().is_success(),
            "select {table}: {}",
            res.status()
        );
        res.json::<Value>().unwrap().as_array().cloned().unwrap()
    }
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

fn assert_diagnostic(job: &Value) {
    assert_eq!(job["status"], "completed", "job: {job}");
    assert_eq!(job["job_type"], "diagnostic");
    assert_eq!(job["result"]["command"], "claude --version");
    assert_eq!(job["result"]["version"], FAKE_VERSION);
    assert_eq!(job["result"]["stdout"], format!("{FAKE_VERSION}\n"));
    assert_eq!(job["result"]["exit_code"], 0);
    assert_eq!(job["error"], Value::Null);
}

#[test]
fn up_runs_a_diagnostic_job_and_stops_cleanly_then_reuses_the_gateway() {
    let sandbox = Sandbox::new();
    let addr = free_addr();
    let url = format!("http://{addr}");

    // First run, --json: pairs a new gateway.
    let mut up = Up::spawn(sandbox.up(&addr, true));
    let line = up.wait_line("JSON summary", |l| l.starts_with('{'));
    let summary: Value = serde_json::from_str(&line).expect("summary JSON");
    assert_eq!(summary["url"], url.as_str());
    assert_eq!(summary["paired_now"], true);
    assert_eq!(
        summary["gateway_config_dir"],
        sandbox.gateway_dir().display().to_string()
    );
    assert_diagnostic(&summary["job"]);
    // The agents the gateway found, and a shell command on this machine
    // with full control on.
    assert_eq!(summary["agents"][0]["id"], "claude_code", "{summary}");
    assert_eq!(summary["full_control"], true);
    assert_eq!(summary["shell_job"]["status"], "completed", "{summary}");
    assert_eq!(summary["shell_job"]["result"]["command"], "uname -a");
    let uname = std::process::Command::new("uname")
        .arg("-a")
        .output()
        .unwrap();
    assert_eq!(
        summary["shell_job"]["result"]["stdout"],
        String::from_utf8_lossy(&uname.stdout).as_ref()
    );
    let gateway_id = summary["gateway_id"].as_str().unwrap().to_string();
    let gateway_pid = summary["gateway_pid"].as_i64().unwrap() as i32;
    let job_id = summary["job"]["id"].as_str().unwrap().to_string();
    assert!(sandbox.gateway_dir().join("gateway.json").exists());

    // The hub agrees: the job completed, the gateway is ready.
    let admin = Admin::new(&url, sandbox.service_key());
    let job = &admin.select("gateway_jobs", &format!("id=eq.{job_id}"))[0];
    assert_diagnostic(job);
    let teams = admin.select("teams", "select=id,name");
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0]["name"], "local");
    let gw = &admin.select("team_gateways", &format!("id=eq.{gateway_id}"))[0];
    assert_eq!(gw["status"], "ready");
    assert_eq!(gw["team_id"], teams[0]["id"]);
    assert!(process_exists(gateway_pid));

    // Ctrl-C: the gateway goes offline, then the hub stops; exit 0.
    let (status, _, stderr) = up.stop(libc::SIGINT);
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(
        !process_exists(gateway_pid),
        "the gateway (PID {gateway_pid}) is still running"
    );
    assert!(
        !sandbox.gateway_dir().join("gateway.pid").exists(),
        "gateway PID file left behind"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the hub still listens on {addr}"
    );
    assert_eq!(sandbox.job_runs(&job_id), 1, "the job ran exactly once");
    let row = row_after_stop(&sandbox.data_dir(), &gateway_id);
    assert_eq!(row["status"], "offline", "row: {row}");

    // Second run, human output: reuses the paired gateway. With the
    // default log filter: no hub INFO lines between the spinners.
    let mut cmd = sandbox.up(&addr, false);
    cmd.env_remove("PANORAMA_HUB_LOG");
    let mut up = Up::spawn(cmd);
    up.wait_line("the reuse line", |l| {
        l.contains(&format!("reusing the paired local gateway {gateway_id}"))
    });
    let done = up.wait_line("the diagnostic result", |l| {
        l.starts_with("diagnostic job ") && !l.ends_with("submitted")
    });
    assert!(done.contains(" completed in "), "line: {done}");
    up.wait_line("the command row", |l| {
        l.trim() == "command:   claude --version"
    });
    up.wait_line("the version row", |l| {
        l.trim() == format!("version:   {FAKE_VERSION}")
    });
    up.wait_line("the Ctrl-C hint", |l| l.contains("press Ctrl-C"));
    assert!(
        up.seen
            .iter()
            .any(|l| l.starts_with("agents found on this machine: claude_code")),
        "{:?}",
        up.seen
    );
    assert!(
        up.seen
            .iter()
            .any(|l| l.starts_with("full control is ON for this local gateway")),
        "{:?}",
        up.seen
    );
    assert!(
        up.seen
            .iter()
            .any(|l| l.contains("completed: `uname -a` on this machine")),
        "{:?}",
        up.seen
    );
    assert!(
        up.seen
            .iter()
            .all(|l| !l.contains("pairing a local gateway")),
        "no second pairing: {:?}",
        up.seen
    );
    let gateways = admin.select("team_gateways", "select=id,status");
    assert_eq!(gateways.len(), 1, "still one gateway: {gateways:?}");
    assert_eq!(gateways[0]["status"], "ready");
    let jobs = admin.select("gateway_jobs", "select=id,status");
    assert_eq!(jobs.len(), 4, "two shell_exec and two diagnostic jobs");
    assert!(jobs.iter().all(|j| j["status"] == "completed"), "{jobs:?}");

    // SIGTERM works the same way.
    let (status, rest, stderr) = up.stop(libc::SIGTERM);
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(
        !stderr.contains(" INFO "),
        "hub INFO logs on up's terminal: {stderr}"
    );
    assert!(
        rest.contains(&format!("gateway {gateway_id} stopped (offline)")),
        "stdout after the signal: {rest}\nstderr: {stderr}"
    );
    assert!(rest.contains("hub stopped"), "stdout: {rest}");
    for job in &jobs {
        let id = job["id"].as_str().unwrap();
        assert_eq!(sandbox.job_runs(id), 1, "job {id} ran exactly once");
    }

    let row = row_after_stop(&sandbox.data_dir(), &gateway_id);
    assert_eq!(row["status"], "offline", "row: {row}");
}

/// The gateway row as the stopped hub left it: serves `up`'s data
/// directory with a plain `panorama-hub serve` and reads it.
fn row_after_stop(data: &Path, gateway_id: &str) -> Value {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_panorama-hub"))
        .arg("--data-dir")
        .arg(data)
        .args(["--json", "serve", "--listen", "127.0.0.1:0"])
        .env("PANORAMA_HUB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(line.trim()).expect("serve ready line");
    let keys: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("keys.json")).unwrap()).unwrap();
    let admin = Admin::new(
        ready["url"].as_str().unwrap(),
        keys["service_key"].as_str().unwrap().to_string(),
    );
    let rows = admin.select("team_gateways", &format!("id=eq.{gateway_id}"));
    let _ = serve.kill();
    let _ = serve.wait();
    rows.into_iter().next().expect("gateway row")
}

#[test]
fn up_on_a_taken_port_says_so_and_suggests_listen() {
    let sandbox = Sandbox::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sandbox.up(&addr, false).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{addr} is already in use")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(!sandbox.gateway_dir().exists(), "nothing was paired");
}

#[test]
fn up_without_a_gateway_binary_names_both_places() {
    let sandbox = Sandbox::new();
    // A copy of panorama-hub alone in a directory, and a PATH without the gateway.
    let lonely = sandbox.host.home().join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    let hub = lonely.join("panorama-hub");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_panorama-hub"), &hub).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_panorama-hub"), &hub).unwrap();
    }
    let out = Command::new(&hub)
        .arg("--data-dir")
        .arg(sandbox.data_dir())
        .args(["up", "--listen", &free_addr()])
        .env("PATH", sandbox.host.home().join("bin"))
        .env("HOME", sandbox.host.home())
        .env_remove("PANORAMA_HUB_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&lonely.join("panorama-gateway").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("nor on PATH"), "{stderr}");
    assert!(stderr.contains("cargo build"), "{stderr}");
}
