//! Our gateway and the reference Node gateway as processes: the same
//! command line for both (`pair CODE --foreground` plus global flags), a
//! temp HOME each, loopback hub only.

use crate::hub::Hub;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Flavor {
    Ours { bin: PathBuf },
    Peer { node: PathBuf, script: PathBuf },
}

impl Flavor {
    /// A gateway CLI command with a clean environment: PATH, HOME and the
    /// hub settings only.
    pub fn command(&self, home: &Path, hub: Option<&Hub>) -> Command {
        let mut cmd = match self {
            Flavor::Ours { bin } => Command::new(bin),
            Flavor::Peer { node, script } => {
                let mut c = Command::new(node);
                c.arg(script);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .env("PANORAMA_GATEWAY_AUTO_RESTART", "0")
            .env("PANORAMA_GATEWAY_LOG", "info")
            .current_dir(home)
            .stdin(Stdio::null());
        if let Some(hub) = hub {
            cmd.env("PANORAMA_SUPABASE_URL", &hub.url)
                .env("PANORAMA_SUPABASE_ANON_KEY", &hub.anon_key);
        }
        cmd
    }
}

/// A started gateway, paired to its own team. Stopped (SIGTERM, then
/// SIGKILL) when dropped.
pub struct Gateway {
    pub home: tempfile::TempDir,
    pub gateway_id: String,
    pub team_id: String,
    child: Option<Child>,
}

impl Gateway {
    pub fn config_dir(home: &Path) -> PathBuf {
        home.join(".panorama").join("gateway")
    }

    /// Pairs a new gateway (fresh team, fresh pairing code) with
    /// `pair CODE --foreground`, waits for `ready`, then runs `warmup`
    /// diagnostic jobs through it.
    pub async fn start(
        flavor: &Flavor,
        hub: &Hub,
        claude: &Path,
        warmup: usize,
    ) -> Result<Gateway> {
        Self::start_with(flavor, hub, claude, warmup, &[]).await
    }

    /// [`Gateway::start`] with more `pair` arguments (e.g. `--full-control true`).
    pub async fn start_with(
        flavor: &Flavor,
        hub: &Hub,
        claude: &Path,
        warmup: usize,
        pair_args: &[&str],
    ) -> Result<Gateway> {
        let home = tempfile::tempdir()?;
        let team_id = hub.create_team("bench-team").await?;
        let code = hub.pairing_code(&team_id).await?;
        let cfg = Self::config_dir(home.path());
        let out = std::fs::File::create(home.path().join("gateway-stdout.log"))?;
        let err = std::fs::File::create(home.path().join("gateway-stderr.log"))?;
        let child = flavor
            .command(home.path(), Some(hub))
            .args(["pair", &code, "--foreground", "--device-name", "bench-box"])
            .args(pair_args)
            .arg("--config-dir")
            .arg(&cfg)
            .arg("--claude-cli")
            .arg(claude)
            .args([
                "--codex-cli",
                "/nonexistent/codex",
                "--gemini-cli",
                "/nonexistent/gemini",
            ])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("spawning the gateway")?;
        let mut gw = Gateway {
            home,
            gateway_id: String::new(),
            team_id,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "gateway exited during startup ({status}): {}",
                    gw.log_tail()
                );
            }
            if gw.gateway_id.is_empty() {
                if let Some(id) = std::fs::read_to_string(cfg.join("gateway.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|c| c["gatewayId"].as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
                {
                    gw.gateway_id = id;
                }
            }
            if !gw.gateway_id.is_empty() {
                if let Some(row) = hub.gateway_row(&gw.gateway_id).await? {
                    if row["status"] == "ready" {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("gateway not ready after 90 s: {}", gw.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give the realtime join a moment, then prove the whole path works.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..warmup {
            let id = gw.insert_job(hub, "diagnostic", json!({})).await?;
            let row = wait_terminal(hub, &id, Duration::from_secs(30)).await?;
            if row["status"] != "completed" {
                bail!("warm-up diagnostic job did not complete: {row}");
            }
        }
        Ok(gw)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["gateway-stdout.log", "gateway-stderr.log"] {
            let t = std::fs::read_to_string(self.home.path().join(f)).unwrap_or_default();
            let tail: String = t
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            s.push_str(&format!("[{f}] {tail}\n"));
        }
        s
    }

    pub fn job_row(&self, job_type: &str, payload: Value) -> Value {
        json!({"team_id": self.team_id, "gateway_id": self.gateway_id, "job_type": job_type,
               "status": "queued", "payload": payload})
    }

    pub async fn insert_job(&self, hub: &Hub, job_type: &str, payload: Value) -> Result<String> {
        let rows = hub
            .insert("gateway_jobs", self.job_row(job_type, payload))
            .await?;
        crate::hub::id_of(rows.first())
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Polls a job row (every 20 ms) until it is terminal.
pub async fn wait_terminal(hub: &Hub, id: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(row) = hub
            .select("gateway_jobs", &format!("id=eq.{id}&select=*"))
            .await?
            .into_iter()
            .next()
        {
            if row["status"].as_str().is_some_and(is_terminal) {
                return Ok(row);
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!("job {id} not terminal after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
