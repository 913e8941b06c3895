//! The reference Node gateway (`@panorama-ai/gateway`), installed from the
//! npm registry into a temp directory together with the Node runtime it
//! needs (the `node-linux-<arch>` package carries the binary; nothing else
//! is downloaded). Shared by the side-by-side tests and the benchmark.
//!
//! `PANORAMA_REFERENCE_PREFIX` names an existing install prefix (a
//! directory where `npm install --prefix` put both packages) to reuse.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const REFERENCE_PACKAGE: &str = "@panorama-ai/gateway@2.32.167";
pub const NODE_MAJOR: &str = "24";

/// An installed reference gateway: run `node script <args>`.
pub struct ReferenceGateway {
    pub node: PathBuf,
    pub script: PathBuf,
    pub node_version: String,
    /// The install prefix (removed on drop unless it was given).
    _dir: Option<tempfile::TempDir>,
}

#[derive(Debug)]
pub enum InstallError {
    /// The npm registry cannot be reached (or npm is missing): a test may
    /// skip, loudly.
    RegistryUnreachable(String),
    /// Anything else: a real failure.
    Failed(String),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::RegistryUnreachable(m) => {
                write!(f, "the npm registry is unreachable: {m}")
            }
            InstallError::Failed(m) => write!(f, "installing the reference gateway failed: {m}"),
        }
    }
}

impl std::error::Error for InstallError {}

/// `node-linux-<arch>@<major>` for this machine.
pub fn node_package() -> Result<String, InstallError> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => {
            return Err(InstallError::Failed(format!(
                "no Node runtime package for architecture {other}"
            )))
        }
    };
    if std::env::consts::OS != "linux" {
        return Err(InstallError::Failed(
            "the Node runtime package is picked for Linux only".into(),
        ));
    }
    Ok(format!("node-linux-{arch}@{NODE_MAJOR}"))
}

/// Runs `cmd` to completion (output to a temp log) or kills it after
/// `timeout`. `Err` carries the last lines of its output.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, what: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = dir.path().join("out.log");
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(f))
        .spawn()
        .map_err(|e| format!("spawning {what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: String = out.lines().rev().take(8).collect::<Vec<_>>().join(" / ");
        return Err(format!("{what} failed ({status}): {tail}"));
    }
    Ok(out)
}

fn npm() -> String {
    std::env::var("NPM").unwrap_or_else(|_| "npm".into())
}

/// Whether `npm ping` reaches the configured registry.
fn registry_reachable() -> Result<(), String> {
    run_bounded(
        Command::new(npm()).arg("ping"),
        Duration::from_secs(60),
        "npm ping",
    )
    .map(|_| ())
}

/// Installs (or, with `PANORAMA_REFERENCE_PREFIX`, finds) the reference
/// gateway and its Node runtime, and checks Node is new enough.
pub fn install() -> Result<ReferenceGateway, InstallError> {
    let node_pkg = node_package()?;
    let (prefix, dir) = match std::env::var_os("PANORAMA_REFERENCE_PREFIX") {
        Some(p) => (PathBuf::from(p), None),
        None => {
            let dir = tempfile::tempdir().map_err(|e| InstallError::Failed(e.to_string()))?;
            eprintln!(
                "installing {REFERENCE_PACKAGE} and {node_pkg} with npm into {}",
                dir.path().display()
            );
            let installed = run_bounded(
                Command::new(npm())
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        "--prefix",
                    ])
                    .arg(dir.path())
                    .args([REFERENCE_PACKAGE, &node_pkg]),
                Duration::from_secs(600),
                "npm install",
            );
            if let Err(e) = installed {
                return Err(match registry_reachable() {
                    Err(why) => InstallError::RegistryUnreachable(format!("{e}; {why}")),
                    Ok(()) => InstallError::Failed(e),
                });
            }
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    let nm = prefix.join("node_modules");
    let node = nm
        .join(node_pkg.split('@').next().unwrap_or_default())
        .join("bin")
        .join("node");
    check_exists(&node)?;
    let version = run_bounded(
        Command::new(&node).arg("--version"),
        Duration::from_secs(30),
        "node --version",
    )
    .map_err(InstallError::Failed)?
    .trim()
    .to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| InstallError::Failed(format!("unreadable node version {version:?}")))?;
    if major < 24 {
        return Err(InstallError::Failed(format!(
            "the installed Node is {version}; the reference gateway needs >= 24"
        )));
    }
    let pkg_dir = nm.join("@panorama-ai").join("gateway");
    let manifest: serde_json::Value = std::fs::read_to_string(pkg_dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            InstallError::Failed("the reference package has no readable package.json".into())
        })?;
    let bin_rel = manifest["bin"]["panorama-gateway"]
        .as_str()
        .or_else(|| manifest["bin"].as_str())
        .ok_or_else(|| {
            InstallError::Failed("the reference package.json names no panorama-gateway bin".into())
        })?;
    let script = pkg_dir.join(bin_rel);
    check_exists(&script)?;
    Ok(ReferenceGateway {
        node,
        script,
        node_version: version,
        _dir: dir,
    })
}

fn check_exists(p: &Path) -> Result<(), InstallError> {
    if p.exists() {
        Ok(())
    } else {
        Err(InstallError::Failed(format!("{} is missing", p.display())))
    }
}

impl ReferenceGateway {
    /// `node <script>` with a clean environment: `PATH`, `HOME`, `LANG`,
    /// no auto-restart, the hub's URL and anon key.
    pub fn command(&self, home: &Path, path: &str, hub_url: &str, anon_key: &str) -> Command {
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.script)
            .env_clear()
            .env("PATH", path)
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .env("PANORAMA_GATEWAY_AUTO_RESTART", "0")
            .env("PANORAMA_SUPABASE_URL", hub_url)
            .env("PANORAMA_SUPABASE_ANON_KEY", anon_key)
            .current_dir(home)
            .stdin(Stdio::null());
        cmd
    }
}

/// A running reference gateway; SIGKILLed on drop.
pub struct RunningReference {
    child: std::process::Child,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl RunningReference {
    /// What the reference gateway printed so far (stdout, then stderr).
    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&self.stdout_log).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
        )
    }
}

impl Drop for RunningReference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ReferenceGateway {
    /// `start --foreground` on `host` (whose `gateway.json` the test wrote
    /// with [`crate::GatewayHost::write_config`]), the fake agent of its
    /// `bin/` as the Claude CLI, `env` added; output goes to
    /// `ref-stdout.log`/`ref-stderr.log` in the host's home.
    pub fn start(
        &self,
        host: &crate::GatewayHost,
        hub: &crate::Hub,
        env: &[(&str, &str)],
    ) -> RunningReference {
        let stdout_log = host.path("ref-stdout.log");
        let stderr_log = host.path("ref-stderr.log");
        let out = std::fs::File::create(&stdout_log).expect("create ref-stdout.log");
        let err = std::fs::File::create(&stderr_log).expect("create ref-stderr.log");
        let path = format!("{}:/usr/bin:/bin", host.bin_dir().display());
        let mut cmd = self.command(host.home(), &path, &hub.url, &hub.anon_key);
        cmd.envs(env.iter().copied())
            .arg("start")
            .arg("--foreground")
            .arg("--config-dir")
            .arg(host.config_dir())
            .arg("--claude-cli")
            .arg(host.bin_dir().join("claude"))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().expect("spawn the reference gateway");
        RunningReference {
            child,
            stdout_log,
            stderr_log,
        }
    }
}
