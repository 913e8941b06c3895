//! Conformance: the official `@supabase/supabase-js` (from the npm registry)
//! against a real `panorama-hub serve` process.
//!
//! Starts the hub on a free loopback port with a fresh data directory,
//! creates two teams and a pairing code for each with the operator CLI,
//! installs the pinned npm packages in `tests/conformance` (once: skipped
//! while `node_modules` matches `package.json` and `package-lock.json`), and
//! runs `node supabase-js.mjs`, which exits non-zero on the first failed
//! check. See `tests/conformance/README.md`.
//!
//! Needs Node.js and npm: without them the test fails and says so.

use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const HUB: &str = env!("CARGO_BIN_EXE_panorama-hub");
/// The hub's refresh-token reuse grace for this test, so that the reuse
/// check waits seconds, not the default 10 s.
const REUSE_GRACE_SECS: &str = "2";
const STAMP: &str = ".panorama-hub-install-stamp";

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn describe(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test unless `tool --version` runs.
fn require_tool(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} --version` failed; the supabase-js conformance test needs a working Node.js 20+ with npm.\n{}",
            describe(&out)
        ),
        Err(e) => panic!(
            "`{tool}` not found ({e}): the supabase-js conformance test needs Node.js 20+ and npm. \
             Install Node.js (e.g. `apt-get install nodejs npm`; CI's .ci/run installs it), then rerun \
             `cargo test -p panorama-hub --test supabase_js`."
        ),
    }
}

/// `npm ci` in the conformance directory, unless `node_modules` already
/// holds exactly what `package.json` and `package-lock.json` ask for.
fn install_npm_packages(dir: &Path) {
    let manifest = fs::read(dir.join("package.json")).expect("tests/conformance/package.json");
    let lock = fs::read(dir.join("package-lock.json")).ok();
    let mut wanted = manifest;
    wanted.extend_from_slice(b"\n--- package-lock.json ---\n");
    wanted.extend_from_slice(lock.as_deref().unwrap_or(b"(none)"));
    let node_modules = dir.join("node_modules");
    let stamp = node_modules.join(STAMP);
    let installed = node_modules
        .join("@supabase/supabase-js/package.json")
        .is_file()
        && fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice());
    if installed {
        eprintln!("npm packages are up to date in {}", node_modules.display());
        return;
    }
    let verb = if lock.is_some() { "ci" } else { "install" };
    eprintln!("running `npm {verb}` in {}", dir.display());
    let out = Command::new("npm")
        .args([verb, "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}); install Node.js with npm"));
    assert!(
        out.status.success(),
        "`npm {verb}` failed in {} (it needs the npm registry):\n{}",
        dir.display(),
        describe(&out)
    );
    fs::write(&stamp, &wanted).expect("write the npm install stamp");
}

/// A running `panorama-hub serve`, killed on drop.
struct Hub {
    child: Child,
    url: String,
    data_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Hub {
    fn start() -> Hub {
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let log = data_dir.path().join("serve.log");
        let mut child = Command::new(HUB)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PANORAMA_HUB_DATA_DIR", data_dir.path().join("hub"))
            .env("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", REUSE_GRACE_SECS)
            .env_remove("PANORAMA_HUB_URL")
            .env_remove("PANORAMA_HUB_SERVICE_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).expect("hub log file"))
            .spawn()
            .expect("start panorama-hub serve");
        let stdout = child.stdout.take().expect("hub stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("ready at ").nth(1) {
                        let _ = tx.send(rest.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "panorama-hub serve did not print \"panorama-hub ready at …\" within 30 s; its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Hub {
            child,
            url,
            data_dir,
            log,
        }
    }

    /// `panorama-hub --json ARGS…` against this hub, parsed.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(HUB)
            .arg("--json")
            .args(args)
            .env("PANORAMA_HUB_DATA_DIR", self.data_dir.path().join("hub"))
            .env("PANORAMA_HUB_URL", &self.url)
            .env_remove("PANORAMA_HUB_SERVICE_KEY")
            .stdin(Stdio::null())
            .output()
            .expect("run the panorama-hub CLI");
        assert!(
            out.status.success(),
            "panorama-hub --json {}:\n{}",
            args.join(" "),
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "panorama-hub --json {} printed no JSON ({e}):\n{}",
                args.join(" "),
                describe(&out)
            )
        })
    }

    /// `panorama-hub --json ARGS…` with `stdin` piped in.
    fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Value {
        use std::io::Write;
        let mut child = Command::new(HUB)
            .arg("--json")
            .args(args)
            .env("PANORAMA_HUB_DATA_DIR", self.data_dir.path().join("hub"))
            .env("PANORAMA_HUB_URL", &self.url)
            .env_remove("PANORAMA_HUB_SERVICE_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the panorama-hub CLI");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait for the CLI");
        assert!(
            out.status.success(),
            "panorama-hub --json {}:\n{}",
            args.join(" "),
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).expect("CLI JSON")
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_string()
}

/// Runs `cmd` to completion, at most `limit`; returns (success, stdout, stderr).
fn run_with_limit(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (out, mut err) = (out.join().unwrap(), err.join().unwrap());
    if status.is_none() {
        err.push_str(&format!("\n(killed after {} s)", limit.as_secs()));
    }
    (status.is_some_and(|s| s.success()), out, err)
}

panorama_testkit::on_both_backends! {
fn official_supabase_js_talks_to_the_hub() {
    require_tool("node");
    require_tool("npm");
    let dir = conformance_dir();
    install_npm_packages(&dir);

    let hub = Hub::start();
    let keys = hub.cli(&["keys"]);
    let team_a = field(&hub.cli(&["team", "create", "conformance-a"]), "id");
    let team_b = field(&hub.cli(&["team", "create", "conformance-b"]), "id");
    let code_a = field(
        &hub.cli(&["pairing-code", "create", "--team", &team_a]),
        "code",
    );
    let code_b = field(
        &hub.cli(&["pairing-code", "create", "--team", &team_b]),
        "code",
    );

    // People: the first user from the CLI (password on stdin), and an
    // invitation to team A that supabase-js signs up with.
    let user_email = "operator@example.test";
    let user_password = "operator password 1";
    let user = hub.cli_with_stdin(
        &["user", "create", "--email", user_email],
        &format!("{user_password}\n"),
    );
    assert_eq!(field(&user, "email"), user_email);
    let invite_email = "ada@example.test";
    let invitation = hub.cli(&[
        "team",
        "invite",
        "--team",
        &team_a,
        "--email",
        invite_email,
        "--role",
        "member",
    ]);
    let members = hub.cli(&["team", "members", "--team", &team_a]);
    assert_eq!(members, serde_json::json!([]), "nobody has accepted yet");

    let mut node = Command::new("node");
    node.arg("supabase-js.mjs")
        .current_dir(&dir)
        .env("HUB_URL", &hub.url)
        .env("HUB_ANON_KEY", field(&keys, "anon_key"))
        .env("HUB_SERVICE_KEY", field(&keys, "service_key"))
        .env("HUB_TEAM_A", &team_a)
        .env("HUB_TEAM_B", &team_b)
        .env("HUB_PAIRING_CODE_A", &code_a)
        .env("HUB_PAIRING_CODE_B", &code_b)
        .env("HUB_REFRESH_REUSE_INTERVAL_SECS", REUSE_GRACE_SECS)
        .env("HUB_INVITE_EMAIL", invite_email)
        .env("HUB_INVITE_CODE", field(&invitation, "code"))
        .env("HUB_USER_EMAIL", user_email)
        .env("HUB_USER_PASSWORD", user_password);
    let (ok, stdout, stderr) = run_with_limit(node, Duration::from_secs(180));
    if !ok {
        panic!(
            "supabase-js conformance failed (rerun alone: cargo test -p panorama-hub --test supabase_js -- --nocapture)\n\
             --- node stdout ---\n{stdout}\n--- node stderr ---\n{stderr}\n--- hub log ---\n{}",
            hub.log()
        );
    }
    println!("{stdout}");
    let members = hub.cli(&["team", "members", "--team", &team_a]);
    assert_eq!(
        members.as_array().map(|m| m
            .iter()
            .map(|r| (field(r, "email"), field(r, "role")))
            .collect::<Vec<_>>()),
        Some(vec![(invite_email.to_string(), "member".to_string())]),
        "team members after the sign-up: {members}"
    );
}
}
