//! `panorama-hub up`: everything local in one command. Starts a hub
//! in-process, makes sure a team `local` exists, pairs (once) a gateway
//! that keeps its state under `<data-dir>/local-gateway`, runs it as a
//! child process (`panorama-gateway pair CODE --foreground` the first time,
//! `start --foreground` afterwards), waits for it to be ready, puts one
//! `diagnostic` job through it and prints the result. Then it serves until
//! Ctrl-C or SIGTERM, stops the gateway (which goes offline) and then the
//! hub.

use crate::cli_text::{parse_listen, printable};
use crate::client::HubClient;
use crate::config::{self, DEFAULT_LISTEN};
use crate::server::{self, ServeError, ServeOptions};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The gateway binary's file name.
pub const GATEWAY_BIN: &str = "panorama-gateway";
/// The team `up` creates (or reuses).
pub const LOCAL_TEAM: &str = "local";
/// The local gateway's config directory, under the data directory.
pub const LOCAL_GATEWAY_DIR: &str = "local-gateway";
/// Where the local gateway's stdout and stderr go, in its config directory.
pub const GATEWAY_OUTPUT_LOG: &str = "up-gateway.log";
/// How long the gateway gets to finish after SIGTERM before it is killed.
const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(30);
/// How long the hub gets to close its connections.
const HUB_STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Address to listen on (HOST:PORT).
    #[arg(long, default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: String,
    /// Seconds to wait for the gateway to be ready, and then for the diagnostic job.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot find the {GATEWAY_BIN} binary: it is neither next to this panorama-hub ({next_to}) nor on PATH. Build both with `cargo build --release` and run target/release/panorama-hub, or put {GATEWAY_BIN} on PATH")]
    GatewayBinaryMissing { next_to: String },
    #[error("{addr} is already in use (is another `panorama-hub serve` or `panorama-hub up` running?). Stop it, or pick a free address, e.g. `panorama-hub up --listen 127.0.0.1:54322`")]
    PortTaken { addr: String },
    #[error("a local gateway from another `panorama-hub up` is still running (PID {pid}, config in {dir}). Stop that `up` with Ctrl-C, or stop the gateway with `{GATEWAY_BIN} --config-dir {dir} stop`")]
    GatewayAlreadyRunning { pid: i32, dir: String },
    #[error(
        "cannot start {bin}: {source}. Check that it is an executable panorama-gateway binary"
    )]
    Spawn { bin: String, source: std::io::Error },
    #[error("the local gateway exited ({status}) before {what}. Its output is in {log}:\n{tail}")]
    GatewayExited {
        status: String,
        what: String,
        log: String,
        tail: String,
    },
    #[error("timed out after {secs} s waiting for {what}. The gateway's output is in {log}; wait longer with `panorama-hub up --timeout SECS`")]
    Timeout {
        secs: u64,
        what: String,
        log: String,
    },
}

/// The local gateway child process.
struct GatewayProcess {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl GatewayProcess {
    /// Fails with the tail of the gateway's output if it has exited.
    fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(UpError::GatewayExited {
                status: status.to_string(),
                what: what.to_string(),
                log: self.log.display().to_string(),
                tail: log_tail(&self.log, 20),
            }
            .into());
        }
        Ok(())
    }
}

/// Everything the demo learned, for the summary and for shutdown.
#[derive(Default)]
struct Local {
    gateway_id: Option<String>,
}

/// Prints the human lines (not with `--json`) and runs spinners on a
/// terminal.
struct Ui {
    json: bool,
    spin: bool,
}

impl Ui {
    fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    /// A spinner on stderr while `what` is awaited (terminal only).
    fn spinner(&self, what: &str) -> Option<indicatif::ProgressBar> {
        if !self.spin {
            return None;
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Some(bar)
    }
}

/// `data_dir` is the global `--data-dir` when given; `json` the global
/// `--json`.
pub async fn run(data_dir_flag: Option<&Path>, json: bool, args: &UpArgs) -> Result<i32> {
    let data_dir = match data_dir_flag {
        Some(d) => d.to_path_buf(),
        None => config::default_data_dir()?,
    };
    let ui = Ui {
        json,
        spin: !json && std::io::stderr().is_terminal(),
    };
    let gateway_bin = find_gateway_binary(
        std::env::current_exe().ok().as_deref(),
        std::env::var_os("PATH"),
    )?;
    let hub = server::bind(ServeOptions {
        listen: args.listen.clone(),
        data_dir: data_dir.clone(),
        db: None,
        database: None,
    })
    .await
    .map_err(|e| match e {
        ServeError::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::Error::from(UpError::PortTaken { addr })
        }
        e => e.into(),
    })?;
    let url = hub.url.clone();
    let keys = hub.keys.clone();
    let (stop_hub, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(hub.run(async move {
        let _ = hub_stopped.await;
    }));
    ui.line(format!(
        "panorama-hub ready at {url} (data in {})",
        data_dir.display()
    ));
    let client = HubClient::new(&url, &keys.service_key);

    let mut gateway: Option<GatewayProcess> = None;
    let mut local = Local::default();
    let signal = server::shutdown_signal();
    tokio::pin!(signal);
    let demo = tokio::select! {
        r = demo(&ui, &client, &url, &keys.anon_key, &data_dir, &gateway_bin, args, &mut gateway, &mut local) => Some(r),
        () = &mut signal => None,
    };
    let outcome = match demo {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(())) => {
            if let Some(gw) = gateway.as_mut() {
                let submit_hint = match data_dir_flag {
                    Some(d) if Some(d) != config::default_data_dir().ok().as_deref() => {
                        format!("panorama-hub --data-dir {} ", d.display())
                    }
                    _ => "panorama-hub ".to_string(),
                };
                ui.line(format!(
                    "\nThe hub and the local gateway keep running; press Ctrl-C to stop them.\n  \
                     anon key:        {}\n  \
                     gateway output:  {}\n  \
                     another job:     {submit_hint}job submit --gateway {} --type diagnostic",
                    keys.anon_key,
                    gw.log.display(),
                    local.gateway_id.as_deref().unwrap_or("<GATEWAY>"),
                ));
                tokio::select! {
                    () = &mut signal => {}
                    status = gw.child.wait() => {
                        eprintln!(
                            "warning: the local gateway exited ({}); its output is in {}. The hub keeps serving; press Ctrl-C to stop it.",
                            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                            gw.log.display()
                        );
                        (&mut signal).await;
                    }
                }
            } else {
                (&mut signal).await;
            }
            Ok(())
        }
    };

    // Shutdown: the gateway first (its offline heartbeat needs the hub),
    // then the hub.
    ui.line("stopping...");
    if let Some(gw) = gateway.as_mut() {
        stop_gateway(gw).await;
        if let Some(id) = &local.gateway_id {
            let offline = wait_until(Duration::from_secs(5), || async {
                gateway_row(&client, id)
                    .await
                    .ok()
                    .flatten()
                    .filter(|row| s(row, "status") == "offline")
            })
            .await;
            match offline {
                Some(_) => ui.line(format!("gateway {id} stopped (offline)")),
                None => eprintln!(
                    "warning: gateway {id} stopped without reporting offline; see {}",
                    gw.log.display()
                ),
            }
        }
    }
    drop(client);
    let _ = stop_hub.send(());
    match tokio::time::timeout(HUB_STOP_GRACE, server_task).await {
        Ok(Ok(Ok(()))) => ui.line("hub stopped"),
        Ok(Ok(Err(e))) => eprintln!("warning: {e}"),
        Ok(Err(e)) => eprintln!("warning: the hub task failed: {e}"),
        Err(_) => eprintln!(
            "warning: the hub did not close its connections within {} s; stopping anyway",
            HUB_STOP_GRACE.as_secs()
        ),
    }
    outcome.map(|()| 0)
}

/// Team, pairing, gateway start, readiness, one diagnostic job.
#[allow(clippy::too_many_arguments)]
async fn demo(
    ui: &Ui,
    client: &HubClient,
    url: &str,
    anon_key: &str,
    data_dir: &Path,
    gateway_bin: &Path,
    args: &UpArgs,
    gateway: &mut Option<GatewayProcess>,
    local: &mut Local,
) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let team_id = ensure_team(client).await?;
    ui.line(format!("team {LOCAL_TEAM}: {team_id}"));

    let dir = data_dir.join(LOCAL_GATEWAY_DIR);
    config::prepare_dir(&dir)?;
    if let Some(pid) = running_pid(&dir.join("gateway.pid")) {
        return Err(UpError::GatewayAlreadyRunning {
            pid,
            dir: dir.display().to_string(),
        }
        .into());
    }
    let config_path = dir.join("gateway.json");
    let reuse = match paired_gateway_id(&config_path) {
        Some(id) => gateway_row(client, &id)
            .await?
            .filter(|row| s(row, "team_id") == team_id && row["revoked_at"].is_null())
            .map(|_| id),
        None => None,
    };
    // This machine's own gateway gets full control (install level here,
    // team level below) so the demo can run a shell command on it.
    let command: Vec<String> = match &reuse {
        Some(id) => {
            ui.line(format!(
                "reusing the paired local gateway {id} (config in {})",
                dir.display()
            ));
            enable_install_full_control(gateway_bin, &dir)?;
            vec!["start".into(), "--foreground".into()]
        }
        None => {
            let code = create_pairing_code(client, &team_id).await?;
            ui.line(format!(
                "pairing a local gateway with code {code} (config in {})",
                dir.display()
            ));
            vec![
                "pair".into(),
                code,
                "--full-control".into(),
                "true".into(),
                "--foreground".into(),
            ]
        }
    };
    let gw = gateway.insert(spawn_gateway(gateway_bin, &dir, url, anon_key, &command)?);

    let deadline = Instant::now() + timeout;
    let bar = ui.spinner("waiting for the local gateway to be ready");
    let gateway_id = match reuse {
        Some(id) => id,
        None => loop {
            gw.check_alive("pairing")?;
            if let Some(id) = paired_gateway_id(&config_path) {
                break id;
            }
            if Instant::now() >= deadline {
                return Err(timeout_error(args, "the gateway to pair", gw));
            }
            tokio::time::sleep(POLL).await;
        },
    };
    local.gateway_id = Some(gateway_id.clone());
    loop {
        gw.check_alive("it was ready")?;
        let row = gateway_row(client, &gateway_id).await?;
        if row.as_ref().is_some_and(|r| s(r, "status") == "ready") {
            break;
        }
        if Instant::now() >= deadline {
            return Err(timeout_error(
                args,
                &format!("gateway {gateway_id} to be ready"),
                gw,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    drop(bar);
    ui.line(format!(
        "gateway {gateway_id} is ready (PID {}, pid file {})",
        gw.pid,
        dir.join("gateway.pid").display()
    ));

    // 1. The agents the gateway found, or how to get one.
    let capabilities = gateway_row(client, &gateway_id)
        .await?
        .and_then(|r| r.get("capabilities").cloned())
        .unwrap_or(Value::Null);
    let agents = found_agents(&capabilities);
    ui.line(describe_agents(&agents));

    // 2. A shell command on this machine, with full control said out loud.
    client
        .update(
            "team_gateways",
            &[("id", format!("eq.{gateway_id}"))],
            &json!({"full_control_enabled": true}),
        )
        .await
        .context("enabling full control for the local gateway")?;
    ui.line(format!(
        "full control is ON for this local gateway: jobs from this hub may run shell commands on this machine\n  \
         (turn it off: panorama-hub gateways full-control {gateway_id} off)"
    ));
    let resource_id = ensure_local_shell_resource(client, &team_id, &gateway_id).await?;
    let shell_job = run_job(
        ui,
        client,
        gw,
        args,
        json!({"team_id": team_id, "gateway_id": gateway_id, "job_type": "shell_exec", "status": "queued",
               "payload": {"resource_id": resource_id, "command": SHELL_DEMO_COMMAND, "timeout_ms": 20_000},
               "requested_via": "panorama-hub-up"}),
        "shell_exec",
    )
    .await?;
    if !ui.json {
        println!("{}", describe_shell_exec(&shell_job));
    }

    // 3. The diagnostic.
    let job = run_job(
        ui,
        client,
        gw,
        args,
        json!({"team_id": team_id, "gateway_id": gateway_id, "job_type": "diagnostic", "status": "queued", "payload": {}, "requested_via": "panorama-hub-up"}),
        "diagnostic",
    )
    .await?;
    if ui.json {
        let v = json!({
            "url": url,
            "anon_key": anon_key,
            "data_dir": data_dir.display().to_string(),
            "team_id": team_id,
            "gateway_id": gateway_id,
            "gateway_pid": gw.pid,
            "gateway_config_dir": dir.display().to_string(),
            "paired_now": command[0] == "pair",
            "agents": agents,
            "full_control": true,
            "shell_job": shell_job,
            "job": job,
        });
        println!("{v}");
    } else {
        println!("{}", describe_diagnostic(&job));
    }
    Ok(())
}

/// The shell command the demo runs on this machine.
pub const SHELL_DEMO_COMMAND: &str = "uname -a";

/// Submit one job and wait (with a spinner) until it is terminal.
async fn run_job(
    ui: &Ui,
    client: &HubClient,
    gw: &mut GatewayProcess,
    args: &UpArgs,
    row: Value,
    what: &str,
) -> Result<Value> {
    let job = client
        .insert("gateway_jobs", &row)
        .await
        .with_context(|| format!("submitting the {what} job"))?;
    let job_id = s(&job, "id").to_string();
    ui.line(format!("{what} job {job_id} submitted"));
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let _bar = ui.spinner(&format!("waiting for {what} job {job_id}"));
    loop {
        let row = client
            .select("gateway_jobs", &[("id", format!("eq.{job_id}"))])
            .await?
            .into_iter()
            .next();
        if let Some(row) =
            row.filter(|r| matches!(s(r, "status"), "completed" | "failed" | "cancelled"))
        {
            return Ok(row);
        }
        gw.check_alive(&format!("the {what} job finished"))?;
        if Instant::now() >= deadline {
            return Err(timeout_error(args, &format!("{what} job {job_id}"), gw));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One agent CLI the gateway reported in its capabilities.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agent {
    pub id: String,
    pub version: Option<String>,
    pub health: Option<String>,
}

/// The available agent CLIs in a gateway's `capabilities`.
pub fn found_agents(capabilities: &Value) -> Vec<Agent> {
    let Some(providers) = capabilities.get("providers").and_then(Value::as_object) else {
        return Vec::new();
    };
    providers
        .iter()
        .filter(|(_, p)| p.get("available").and_then(Value::as_bool) == Some(true))
        .map(|(id, p)| Agent {
            id: id.clone(),
            version: p.get("version").and_then(Value::as_str).map(str::to_string),
            health: p
                .pointer("/health/status")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
        .collect()
}

/// The agents line(s) of the demo.
pub fn describe_agents(agents: &[Agent]) -> String {
    if agents.is_empty() {
        return "no AI agent CLI found on this machine, so agent jobs (subagent_run, model_run) cannot run here yet.\n  \
                Install one, e.g. `npm install -g @anthropic-ai/claude-code` (Claude Code), `npm install -g @openai/codex` (Codex) \
                or `npm install -g @google/gemini-cli` (Gemini CLI), or point the gateway at it with PANORAMA_CLAUDE_CLI=/path, \
                then run `panorama-hub up` again."
            .to_string();
    }
    let list: Vec<String> = agents
        .iter()
        .map(|a| {
            let mut t = a.id.clone();
            if let Some(v) = &a.version {
                t.push_str(&format!(" {v}"));
            }
            if let Some(h) = &a.health {
                t.push_str(&format!(" ({h})"));
            }
            t
        })
        .collect();
    format!("agents found on this machine: {}", list.join(", "))
}

/// The shell_exec job in human form.
pub fn describe_shell_exec(job: &Value) -> String {
    let result = &job["result"];
    let mut out = format!(
        "shell_exec job {} {}: `{SHELL_DEMO_COMMAND}` on this machine",
        s(job, "id"),
        s(job, "status")
    );
    if let Some(stdout) = result.get("stdout").and_then(Value::as_str) {
        for line in stdout.trim_end().lines() {
            out.push_str(&format!("\n  {}", printable(line)));
        }
    }
    if let Some(e) = job.get("error").and_then(Value::as_str) {
        out.push_str(&format!("\n  error: {}", printable(e)));
    }
    out
}

/// The remote_shell resource `up` uses for its own gateway (reused).
async fn ensure_local_shell_resource(
    client: &HubClient,
    team_id: &str,
    gateway_id: &str,
) -> Result<String> {
    let existing = client
        .select(
            "team_resources",
            &[
                ("resource_type", "eq.remote_shell".into()),
                ("resource_id", format!("eq.{gateway_id}")),
                ("limit", "1".into()),
            ],
        )
        .await
        .context("looking up the local shell resource")?;
    if let Some(row) = existing.first() {
        return Ok(s(row, "id").to_string());
    }
    let row = client
        .insert(
            "team_resources",
            &json!({
                "team_id": team_id, "resource_type": "remote_shell", "resource_id": gateway_id,
                "title": "This machine (panorama-hub up)", "max_access_level": "editor",
                "metadata": {"gateway_id": gateway_id, "full_control": true},
            }),
        )
        .await
        .context("creating the local shell resource")?;
    Ok(s(&row, "id").to_string())
}

/// `panorama-gateway full-control enable` for a reused local gateway.
fn enable_install_full_control(bin: &Path, dir: &Path) -> Result<()> {
    let out = std::process::Command::new(bin)
        .arg("--config-dir")
        .arg(dir)
        .arg("--config-path")
        .arg(dir.join("gateway.json"))
        .args(["full-control", "enable"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} full-control enable", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "could not enable full control for the local gateway: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn timeout_error(args: &UpArgs, what: &str, gw: &GatewayProcess) -> anyhow::Error {
    UpError::Timeout {
        secs: args.timeout,
        what: what.to_string(),
        log: gw.log.display().to_string(),
    }
    .into()
}

/// The diagnostic job in human form.
pub fn describe_diagnostic(job: &Value) -> String {
    let result = &job["result"];
    let status = s(job, "status");
    let mut out = format!("diagnostic job {} {status}", s(job, "id"));
    if let Some(ms) = result.get("duration_ms").and_then(Value::as_u64) {
        out.push_str(&format!(" in {ms} ms"));
    }
    let mut row = |label: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            out.push_str(&format!("\n  {label:<10} {}", v.trim_end()));
        }
    };
    let text = |k: &str| result.get(k).and_then(Value::as_str).map(str::to_string);
    row("command:", text("command"));
    row(
        "exit code:",
        result
            .get("exit_code")
            .filter(|v| !v.is_null())
            .map(Value::to_string),
    );
    row("version:", text("version"));
    row("stdout:", text("stdout"));
    row("stderr:", text("stderr"));
    row(
        "error:",
        job.get("error").and_then(Value::as_str).map(str::to_string),
    );
    if status != "completed" {
        out.push_str(
            "\n  The diagnostic runs `claude --version` on the gateway's machine: install Claude Code, \
             or point the gateway at it with PANORAMA_CLAUDE_CLI=/path/to/claude, then run `panorama-hub up` again.",
        );
    }
    out
}

/// `panorama-gateway` next to `current_exe`, else the first on `path`.
pub fn find_gateway_binary(
    current_exe: Option<&Path>,
    path: Option<OsString>,
) -> Result<PathBuf, UpError> {
    let next_to = current_exe
        .and_then(Path::parent)
        .map(|dir| dir.join(GATEWAY_BIN));
    if let Some(p) = next_to.as_ref().filter(|p| is_executable(p)) {
        return Ok(p.clone());
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(GATEWAY_BIN);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(UpError::GatewayBinaryMissing {
        next_to: next_to
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "unknown location".into()),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

async fn ensure_team(client: &HubClient) -> Result<String> {
    let existing = client
        .select(
            "teams",
            &[
                ("name", format!("eq.{LOCAL_TEAM}")),
                ("order", "created_at.asc".into()),
                ("limit", "1".into()),
            ],
        )
        .await
        .context("looking up the local team")?;
    let row = match existing.into_iter().next() {
        Some(row) => row,
        None => client
            .insert("teams", &json!({"name": LOCAL_TEAM}))
            .await
            .context("creating the local team")?,
    };
    Ok(s(&row, "id").to_string())
}

async fn create_pairing_code(client: &HubClient, team_id: &str) -> Result<String> {
    use rand::Rng;
    // The operator CLI's alphabet: no 0/O/1/I.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let code: String = {
        let mut rng = rand::thread_rng();
        let mut pick = || ALPHABET[rng.gen_range(0..ALPHABET.len())] as char;
        let a: String = (0..4).map(|_| pick()).collect();
        let b: String = (0..4).map(|_| pick()).collect();
        format!("{a}-{b}")
    };
    let expires = chrono::Utc::now() + chrono::Duration::minutes(15);
    client
        .insert(
            "gateway_pairing_codes",
            &json!({"code": code, "team_id": team_id, "expires_at": expires.to_rfc3339()}),
        )
        .await
        .context("creating a pairing code for the local gateway")?;
    Ok(code)
}

async fn gateway_row(client: &HubClient, id: &str) -> Result<Option<Value>> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(None);
    }
    Ok(client
        .select("team_gateways", &[("id", format!("eq.{id}"))])
        .await
        .context("looking up the local gateway")?
        .into_iter()
        .next())
}

/// The `gatewayId` of a paired `gateway.json`, if any.
fn paired_gateway_id(config_path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config_path).ok()?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    doc.get("gatewayId")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The PID in `pid_path` if that process is alive.
fn running_pid(pid_path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

fn spawn_gateway(
    bin: &Path,
    dir: &Path,
    url: &str,
    anon_key: &str,
    command: &[String],
) -> Result<GatewayProcess> {
    let log = dir.join(GATEWAY_OUTPUT_LOG);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}; check the data directory", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(bin);
    // Explicit paths beat any PANORAMA_GATEWAY_* the user has set; the
    // backend flags beat PANORAMA_SUPABASE_* and the saved config.
    cmd.arg("--config-dir")
        .arg(dir)
        .arg("--config-path")
        .arg(dir.join("gateway.json"))
        .arg("--pid-path")
        .arg(dir.join("gateway.pid"))
        .arg("--log-path")
        .arg(dir.join("gateway.log"))
        .args(["--supabase-url", url, "--anon-key", anon_key])
        .args(command)
        .env_remove("PANORAMA_GATEWAY_DAEMON_CHILD")
        // Its output goes to a file: plain text, no colour codes.
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Its own process group: a Ctrl-C in the terminal reaches only
        // `up`, which then stops the gateway in order.
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; it asks the kernel to SIGTERM the
    // gateway if `up` dies without stopping it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| UpError::Spawn {
        bin: bin.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    Ok(GatewayProcess { child, pid, log })
}

/// SIGTERM, then wait; SIGKILL after the grace period.
async fn stop_gateway(gw: &mut GatewayProcess) {
    if let Ok(Some(_)) = gw.child.try_wait() {
        return;
    }
    if gw.pid > 0 {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(gw.pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(GATEWAY_STOP_GRACE, gw.child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "warning: the local gateway did not stop within {} s of SIGTERM; killing it",
            GATEWAY_STOP_GRACE.as_secs()
        );
        let _ = gw.child.kill().await;
    }
}

async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last `lines` lines of a file (for error messages).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_come_from_the_capabilities_or_the_install_hint() {
        let caps = json!({"providers": {
            "claude_code": {"available": true, "version": "2.0.14", "health": {"status": "healthy"}},
            "codex": {"available": false},
        }});
        let agents = found_agents(&caps);
        assert_eq!(agents.len(), 1);
        assert_eq!(
            describe_agents(&agents),
            "agents found on this machine: claude_code 2.0.14 (healthy)"
        );
        let none = describe_agents(&found_agents(&json!({})));
        assert!(none.starts_with("no AI agent CLI found"), "{none}");
        assert!(none.contains("npm install -g"), "{none}");
    }

    #[test]
    fn the_gateway_binary_is_found_next_to_us_then_on_path() {
        let tmp = tempfile::tempdir().unwrap();
        let here = tmp.path().join("here");
        let on_path = tmp.path().join("on-path");
        std::fs::create_dir_all(&here).unwrap();
        std::fs::create_dir_all(&on_path).unwrap();
        let exe = here.join("panorama-hub");
        let make = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let path = std::env::join_paths([on_path.clone()]).unwrap();

        let e = find_gateway_binary(Some(&exe), Some(path.clone())).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&here.join(GATEWAY_BIN).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("PATH"), "{msg}");

        make(&on_path.join(GATEWAY_BIN));
        assert_eq!(
            find_gateway_binary(Some(&exe), Some(path.clone())).unwrap(),
            on_path.join(GATEWAY_BIN)
        );
        make(&here.join(GATEWAY_BIN));
        assert_eq!(
            find_gateway_binary(Some(&exe), Some(path)).unwrap(),
            here.join(GATEWAY_BIN)
        );
    }

    #[test]
    fn diagnostic_results_read_well() {
        let ok = json!({"id": "j1", "status": "completed", "error": null, "result": {
            "command": "claude --version", "stdout": "2.0.14 (Claude Code)\n", "stderr": "",
            "exit_code": 0, "version": "2.0.14 (Claude Code)", "duration_ms": 12}});
        let text = describe_diagnostic(&ok);
        assert!(
            text.starts_with("diagnostic job j1 completed in 12 ms"),
            "{text}"
        );
        assert!(text.contains("command:   claude --version"), "{text}");
        assert!(text.contains("version:   2.0.14 (Claude Code)"), "{text}");
        assert!(!text.contains("stderr"), "{text}");
        let failed = json!({"id": "j2", "status": "failed", "error": "spawn claude ENOENT",
            "result": {"command": "claude --version", "exit_code": null, "duration_ms": 1}});
        let text = describe_diagnostic(&failed);
        assert!(text.contains("error:     spawn claude ENOENT"), "{text}");
        assert!(text.contains("PANORAMA_CLAUDE_CLI"), "{text}");
        assert!(!text.contains("exit code"), "{text}");
    }

    #[test]
    fn paired_config_and_pid_files_are_read_defensively() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("gateway.json");
        assert_eq!(paired_gateway_id(&cfg), None);
        std::fs::write(&cfg, r#"{"gatewayId": " "}"#).unwrap();
        assert_eq!(paired_gateway_id(&cfg), None);
        std::fs::write(&cfg, r#"{"gatewayId": "abc"}"#).unwrap();
        assert_eq!(paired_gateway_id(&cfg).as_deref(), Some("abc"));
        let pid = tmp.path().join("gateway.pid");
        std::fs::write(&pid, "garbage").unwrap();
        assert_eq!(running_pid(&pid), None);
        std::fs::write(&pid, std::process::id().to_string()).unwrap();
        assert_eq!(running_pid(&pid), Some(std::process::id() as i32));
    }
}
