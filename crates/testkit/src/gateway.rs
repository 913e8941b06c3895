//! A gateway host for integration tests: a temp `HOME` holding the
//! gateway's config dir, `panorama-fake-agent` linked as `claude`, `codex`
//! and `gemini` on a private `PATH`, and the real `panorama-gateway` binary
//! started against a [`Hub`] with a scrubbed environment.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{Hub, PairedGateway};

/// `target/<profile>/panorama-fake-agent`, built when missing.
/// `PANORAMA_FAKE_AGENT_BIN` overrides.
pub fn fake_agent_binary() -> PathBuf {
    crate::workspace_binary(
        "PANORAMA_FAKE_AGENT_BIN",
        "panorama-providers",
        "panorama-fake-agent",
    )
}

/// What the [`GatewayHost::scripted_claude`] CLI prints.
pub const SCRIPTED_CLAUDE_VERSION: &str = "2.0.14 (Claude Code)";

/// How long tests wait for something a gateway or hub does (only a bound
/// for a failing test: a passing one never waits it out).
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Names of the agent CLIs the fake agent stands in for.
pub const AGENT_NAMES: [&str; 3] = ["claude", "codex", "gemini"];

/// One machine a gateway runs on. Everything lives under a temp dir that is
/// removed when the host is dropped.
pub struct GatewayHost {
    home: tempfile::TempDir,
    /// The name the gateway reports (`--device-name`).
    pub device_name: String,
    /// The gateway executable to run: the workspace build unless a test
    /// installs a copy (upgrade and restart tests).
    pub program: PathBuf,
    /// `bin/` holds the fake agent: the gateway is told a Gemini sandbox
    /// exists (`GEMINI_SANDBOX=docker`), since restricted Gemini runs are
    /// refused without one and the fake agent ignores `--sandbox`.
    fake_agents: bool,
    /// Extra environment for every gateway command of this host (e.g. a
    /// pinned `SHELL`), set after the defaults.
    pub env: Vec<(String, String)>,
}

impl GatewayHost {
    /// A host whose `PATH` has the fake agent as `claude`, `codex`, `gemini`.
    pub fn new() -> GatewayHost {
        let mut host = GatewayHost::bare();
        host.fake_agents = true;
        let agent = fake_agent_binary();
        for name in AGENT_NAMES {
            symlink(&agent, host.bin_dir().join(name)).expect("link fake agent");
        }
        host
    }

    /// A host whose only agent CLI is a shell-script `claude` that sleeps
    /// `delay_s` seconds, records each call in `claude-calls` (see
    /// [`GatewayHost::claude_calls`]) and prints [`SCRIPTED_CLAUDE_VERSION`]
    /// whatever it is asked: detected, but its full validation fails.
    pub fn scripted_claude(delay_s: u32) -> GatewayHost {
        let host = GatewayHost::bare();
        host.write_script(
            "claude",
            &format!(
                "sleep {delay_s}\necho \"$$\" >> '{}'\necho '{SCRIPTED_CLAUDE_VERSION}'",
                host.path("claude-calls").display()
            ),
        );
        host
    }

    /// How often the [`GatewayHost::scripted_claude`] CLI ran.
    pub fn claude_calls(&self) -> usize {
        std::fs::read_to_string(self.path("claude-calls"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// A host with an empty `bin/` on its `PATH` (no agent CLI at all).
    pub fn bare() -> GatewayHost {
        let home = tempfile::tempdir().expect("temp home");
        std::fs::create_dir_all(home.path().join("bin")).expect("create bin dir");
        GatewayHost {
            home,
            device_name: "test-box".into(),
            program: crate::gateway_binary(),
            fake_agents: false,
            env: Vec::new(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A path under the host's home.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// Directory first on the gateway's `PATH`.
    pub fn bin_dir(&self) -> PathBuf {
        self.path("bin")
    }

    pub fn config_dir(&self) -> PathBuf {
        self.path(".panorama/gateway")
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir().join("gateway.json")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.config_dir().join("gateway.pid")
    }

    /// Where every gateway started by [`GatewayHost::spawn`] appends stderr.
    pub fn log_path(&self) -> PathBuf {
        self.path("gateway-stderr.log")
    }

    /// The gateway's stderr so far (all starts of this host).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Installs an executable script at `bin/<name>` (replacing a link).
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.bin_dir().join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod script");
        path
    }

    /// Writes `gateway.json` as `pair` would have, for an already paired
    /// gateway (skips the pairing round trip in tests about the runtime).
    pub fn write_config(&self, hub: &Hub, gw: &PairedGateway, full_control: bool) {
        std::fs::create_dir_all(self.config_dir()).expect("create config dir");
        let doc = json!({
            "supabaseUrl": hub.url,
            "supabaseAnonKey": hub.anon_key,
            "accessToken": gw.access_token,
            "refreshToken": gw.refresh_token,
            "gatewayId": gw.gateway_id,
            "teamId": gw.team_id,
            "full_control_enabled": full_control,
            "deviceName": self.device_name,
        });
        std::fs::write(
            self.config_path(),
            serde_json::to_string_pretty(&doc).expect("config JSON"),
        )
        .expect("write gateway.json");
    }

    /// The saved `gateway.json`.
    pub fn config(&self) -> Value {
        let text = std::fs::read_to_string(self.config_path()).expect("read gateway.json");
        serde_json::from_str(&text).expect("gateway.json is JSON")
    }

    /// `panorama-gateway --config-dir … --supabase-url … --anon-key … <args>`
    /// with `HOME`, a private `PATH` and none of the test runner's
    /// `PANORAMA_*`, `SUPABASE_*` or `FAKE_AGENT_*` variables.
    pub fn command(&self, hub: &Hub, args: &[&str]) -> Command {
        let mut cmd = self.program_command();
        cmd.arg("--config-dir")
            .arg(self.config_dir())
            .args(["--supabase-url", &hub.url, "--anon-key", &hub.anon_key])
            .args(["--device-name", &self.device_name])
            .args(args);
        cmd
    }

    /// The gateway program in this host's environment (`HOME`, a private
    /// `PATH`, none of the test runner's `PANORAMA_*`, `SUPABASE_*` or
    /// `FAKE_AGENT_*` variables), with no arguments yet: for a test that
    /// runs a command line as printed for a person.
    pub fn program_command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        for (key, _) in std::env::vars() {
            if key.starts_with("PANORAMA_")
                || key.starts_with("SUPABASE_")
                || key.starts_with("FAKE_AGENT")
            {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", self.home())
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.bin_dir().display()),
            )
            .env("PANORAMA_GATEWAY_LOG", "info")
            .envs(self.fake_agents.then_some(("GEMINI_SANDBOX", "docker")))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.home())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a gateway command to completion.
    pub fn run(&self, hub: &Hub, args: &[&str]) -> Output {
        self.command(hub, args)
            .output()
            .expect("run panorama-gateway")
    }

    /// `start --foreground` with extra environment; stderr is appended to
    /// [`GatewayHost::log_path`].
    pub fn start(&self, hub: &Hub, env: &[(&str, &str)]) -> RunningGateway {
        let mut cmd = self.command(hub, &["start", "--foreground"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.spawn(cmd)
    }

    /// Spawns `cmd` with stderr appended to the host's log (so a restarted
    /// gateway keeps one log).
    pub fn spawn(&self, mut cmd: Command) -> RunningGateway {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open gateway log");
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
        // A freshly written executable can be briefly "busy" while another
        // test thread's fork still holds its write descriptor.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match cmd.spawn() {
                Ok(child) => return RunningGateway { child: Some(child) },
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("spawn panorama-gateway: {e}"),
            }
        }
    }

    /// The last `n` lines of the gateway log, newest last.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Default for GatewayHost {
    fn default() -> Self {
        GatewayHost::new()
    }
}

/// A running gateway process; SIGKILLed when dropped unless it was stopped.
pub struct RunningGateway {
    child: Option<Child>,
}

impl RunningGateway {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway already stopped").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGKILL and reap: a crash, as far as the gateway can tell.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; panics (after a
    /// SIGKILL) if the gateway does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("gateway already stopped");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not exit within {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.sigkill();
    }
}
