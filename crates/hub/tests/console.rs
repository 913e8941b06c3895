//! The web console in a real browser: Debian's Chromium, headless, driven
//! by `tests/console/drive.mjs` (playwright-core from npm, pinned by its
//! lockfile) against a real `panorama-hub` and a real gateway that pairs
//! with the command the page printed.
//!
//! Steps (each one fails the test with its name): the owner signs in with
//! the keyboard; invites a person who accepts in a second browser context;
//! creates a pairing code and copies the command, which this test runs on a
//! `GatewayHost` (fake agent CLIs); sees the machine come online with its
//! providers and turns team full control on; dispatches a stream-json run
//! and sees events while it is still running; cancels a second run and sees
//! it end cancelled; dispatches a diagnostic, a shell command and a text
//! model run and sees their results; pages and filters the job history
//! (55 older jobs); in the terminal, over the interactive stream, runs
//! `echo hi`, answers a `read` by typing, has the browser answer `ESC[6n`
//! and interrupts `sleep` with Ctrl-C; signs out. The owner of another team sees none of it and is
//! refused when acting on it. No request leaves the hub's origin.
//!
//! Screenshots of every screen go to `target/console-screenshots/`, or to
//! `PANORAMA_CONSOLE_SCREENSHOTS` (`docs/console/` holds the committed ones).
//!
//! Skips, loudly, only when Chromium is not installed (`.ci/run` installs
//! it) or the npm registry cannot be reached.

use panorama_testkit::gateway::GatewayHost;
use panorama_testkit::Hub;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";
const STAMP: &str = ".panorama-console-test-stamp";
/// The whole browser run; it takes about a minute.
const DRIVE_TIMEOUT: Duration = Duration::from_secs(240);
/// Completed jobs made before the browser starts, so the history pages.
const HISTORY_JOBS: usize = 55;

fn chromium() -> Option<PathBuf> {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let ok = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(path)
}

/// `npm ci` in `dir` unless its `node_modules` matches the lockfile.
/// `Err` (a reason to skip) only when the registry is unreachable.
fn npm_ci(dir: &Path) -> Result<(), String> {
    let mut wanted = std::fs::read(dir.join("package.json")).expect("package.json");
    wanted.extend(std::fs::read(dir.join("package-lock.json")).expect("package-lock.json"));
    let stamp = dir.join("node_modules").join(STAMP);
    if std::fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice()) {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run npm ({e}): the console test needs Node.js 20+ with npm (.ci/run installs them)")
        });
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let unreachable = [
            "ENOTFOUND",
            "EAI_AGAIN",
            "ECONNREFUSED",
            "ETIMEDOUT",
            "ECONNRESET",
            "network",
        ]
        .iter()
        .any(|m| err.contains(m));
        if unreachable {
            return Err(format!("the npm registry is unreachable: {}", err.trim()));
        }
        panic!("`npm ci` failed in {}:\n{err}", dir.display());
    }
    std::fs::write(&stamp, &wanted).expect("write the npm stamp");
    Ok(())
}

/// A person with an account, a member of `team` as `role`.
fn person(hub: &Hub, team: &str, email: &str, role: &str) {
    hub.create_user(email, PASSWORD);
    let code = hub.invite(team, email, role);
    let session = hub.sign_in(email, PASSWORD);
    let (status, body) = hub.rpc(
        &session.access_token,
        "accept_team_invitation",
        json!({"p_code": code}),
    );
    assert_eq!(status, 200, "accept the invitation: {body}");
}

/// A fake-agent transcript for the run the page cancels (its prompt names
/// it as `[[fake:PATH]]`): the first lines of the normal Claude run, then
/// a wait far longer than the test.
fn slow_transcript(host: &GatewayHost) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers/fixtures/claude");
    let success = std::fs::read_to_string(fixtures.join("success.jsonl")).expect("claude fixture");
    let first = success.lines().take(4).collect::<Vec<_>>().join("\n");
    let path = host.path("slow.jsonl");
    std::fs::write(&path, format!("{first}\n#!fake sleep 120000\n")).unwrap();
    path
}

/// The gateway command the page printed, run on `host` as its owner would
/// (plus where this test keeps its state, `--foreground` so the test owns
/// the process, and `--full-control true`: the host's own layer, which
/// only the machine's owner can turn on).
fn pair_command(host: &GatewayHost, printed: &str) -> Command {
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"panorama-gateway"), "{printed}");
    let mut cmd = host.program_command();
    cmd.env("FAKE_AGENT_LINE_DELAY_MS", "400")
        .args(&words[1..])
        .arg("--config-dir")
        .arg(host.config_dir())
        .args([
            "--device-name",
            "console-box",
            "--foreground",
            "--full-control",
            "true",
        ]);
    cmd
}

#[test]
fn console_in_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "\n*** SKIPPED console_in_chromium: /usr/bin/chromium is not installed \
             (`apt-get install -y chromium chromium-driver`; .ci/run does this) ***\n"
        );
        return;
    };
    let driver_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    if let Err(why) = npm_ci(&driver_dir) {
        eprintln!("\n*** SKIPPED console_in_chromium: {why} ***\n");
        return;
    }
    let hub = Hub::start();
    let app_js = hub
        .http()
        .get(format!("{}/console/app.js", hub.url))
        .send()
        .expect("GET /console/app.js");
    assert!(app_js.status().is_success());
    if app_js.bytes().expect("app.js").is_empty() {
        eprintln!(
            "\n*** SKIPPED console_in_chromium: this panorama-hub was built without its console \
             (the npm registry was unreachable at build time; see the cargo warning) ***\n"
        );
        return;
    }

    let alpha = hub.create_team("alpha");
    let beta = hub.create_team("beta");
    let owner = "owner@alpha.test";
    let other = "owner@beta.test";
    person(&hub, &alpha, owner, "owner");
    person(&hub, &beta, other, "owner");
    // History older than today's work: two pages of it.
    let history: Vec<_> = (0..HISTORY_JOBS)
        .map(|n| {
            json!({"team_id": alpha, "job_type": "diagnostic", "status": "completed",
            "payload": {"n": n}, "created_at": format!("2026-01-01T00:{:02}:00Z", n % 60)})
        })
        .collect();
    hub.insert("gateway_jobs", json!(history));
    let host = GatewayHost::new();
    let slow = slow_transcript(&host);
    let shots = std::env::var("PANORAMA_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
        });

    let mut node = Command::new("node")
        .arg(driver_dir.join("drive.mjs"))
        .env("HUB_URL", &hub.url)
        .env("PASSWORD", PASSWORD)
        .env("OWNER_EMAIL", owner)
        .env("INVITEE_EMAIL", "invitee@alpha.test")
        .env("OTHER_EMAIL", other)
        .env("TEAM_NAME", "alpha")
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .env("SLOW_TRANSCRIPT", &slow)
        .current_dir(&driver_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node drive.mjs");
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("drive: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + DRIVE_TIMEOUT;
    let mut gateway = None;
    let mut paired_id = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(printed) = line.strip_prefix("PAIR_COMMAND ") {
                    gateway = Some(host.spawn(pair_command(&host, printed)));
                }
                if let Some(id) = line.strip_prefix("GATEWAY_ID ") {
                    paired_id = Some(id.to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                let _ = node.kill();
                panic!(
                    "the browser run took over {DRIVE_TIMEOUT:?}; gateway log:\n{}",
                    host.log_tail(40)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "the browser run failed (see \"FAILED at step\" above); gateway log:\n{}",
        host.log_tail(40)
    );
    assert!(gateway.is_some(), "the page never printed a pair command");
    // What the page showed is what the hub holds: the machine the page
    // paired is alpha's, and both runs ended as the page said.
    let gateway_id = paired_id.expect("the driver reports the paired gateway");
    let row = hub
        .row("team_gateways", &gateway_id)
        .expect("the paired gateway");
    assert_eq!(row["team_id"], json!(alpha));
    assert!(
        row["revoked_at"].is_null(),
        "the other team revoked it: {row}"
    );
    assert_eq!(
        row["full_control_enabled"],
        json!(true),
        "the owner's toggle reached the hub"
    );
    let runs = hub.select(
        "subagent_runs",
        &format!("gateway_id=eq.{gateway_id}&order=created_at.asc"),
    );
    let statuses: Vec<&str> = runs
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["completed", "cancelled"], "{runs:?}");
    // The terminal was one session (one job row for everything typed), and
    // leaving its screen closed it: the gateway no longer answers for it.
    let opens = hub.select(
        "gateway_jobs",
        &format!("gateway_id=eq.{gateway_id}&job_type=eq.terminal_open"),
    );
    assert_eq!(opens.len(), 1, "one terminal_open job: {opens:?}");
    let sessions = hub.cli_json(&["shell", "list", "--gateway", &gateway_id]);
    let sessions = sessions.as_array().expect("shell list --json is an array");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        sessions[0]["alive"],
        json!(false),
        "leaving the terminal screen closes the session: {sessions:?}"
    );
}

/// The console's pure functions (dispatch rows, pairing codes, the
/// terminal's line commands): `node --test console/test/`.
#[test]
fn console_pure_functions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 20+ (.ci/run does)"));
    assert!(
        out.status.success(),
        "node --test failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hub serves the console on its own origin: `/` with a same-origin
/// Content-Security-Policy, the bundle revalidated by ETag (304 when
/// unchanged), and the anon key the page's client needs.
#[test]
fn console_assets_are_served_by_the_hub() {
    let hub = Hub::start();
    let get = |path: &str, etag: Option<&str>| {
        let mut req = hub.http().get(format!("{}{path}", hub.url));
        if let Some(tag) = etag {
            req = req.header("if-none-match", tag);
        }
        req.send().expect("GET")
    };
    let index = get("/", None);
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(index.text().unwrap().contains("<html"));
    let js = get("/console/app.js", None);
    assert_eq!(js.status(), 200);
    let tag = js.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(get("/console/app.js", Some(&tag)).status(), 304);
    assert_eq!(get("/console/app.js", Some("\"stale\"")).status(), 200);
    let config: serde_json::Value = get("/console/config.json", None).json().unwrap();
    assert_eq!(config["anon_key"], json!(hub.anon_key));
}
