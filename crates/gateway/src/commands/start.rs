//! `start [--foreground|--daemon]` (runtime.md §1.6.2, daemon mode §2.8).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::Context;
use crate::backend::{self, Purpose};
use crate::cli::StartArgs;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::logfile::{self, RotatingLog};
use crate::network::{self, RuntimeRequest};
use crate::output::Row;
use crate::paths::{self, PreparedPaths};
use crate::pidfile;
use crate::readiness::{self, Verdict};

/// Set in the environment of the daemonized `start --foreground` child so
/// it writes its logs to the (rotating) log file. Scrubbed from job
/// children like every `PANORAMA_GATEWAY_*` variable.
pub const DAEMON_CHILD_ENV: &str = "PANORAMA_GATEWAY_DAEMON_CHILD";
pub const DEVICE_NAME_ENV: &str = "PANORAMA_GATEWAY_DEVICE_NAME";

/// What a `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Daemonized(u32),
    /// The foreground runtime ran and shut down.
    Foreground,
}

pub fn run(ctx: &Context, args: &StartArgs) -> Result<StartOutcome> {
    let prepared = ctx.prepare()?;
    if args.foreground {
        run_foreground(ctx, &prepared, args.metrics_listen)?;
        return Ok(StartOutcome::Foreground);
    }
    crate::logfile::init_tracing(None, ctx.global.verbose);
    run_background(ctx, &prepared, args.metrics_listen)
}

/// One gateway per identity: refuse while another live gateway holds the
/// PID file (two processes on one refresh token trip its reuse detection).
pub fn refuse_if_running(paths: &paths::GatewayPaths) -> Result<()> {
    match pidfile::live_gateway(&paths.pid_path) {
        Some(pid) => Err(GatewayError::cli(
            format!("Gateway already running (PID {pid})."),
            format!(
                "Only one gateway may run per config directory. Stop it with \"panorama-gateway stop\" (or `kill {pid}`) before starting another; \"panorama-gateway status\" shows it."
            ),
        )),
        None => Ok(()),
    }
}

/// Take the instance lock (see [`pidfile`]): the atomic half of "one
/// gateway per identity", which [`refuse_if_running`] alone cannot be.
pub fn claim_instance(paths: &paths::GatewayPaths) -> Result<pidfile::InstanceLock> {
    pidfile::claim(&paths.pid_path).map_err(|e| match e {
        pidfile::ClaimError::Held(pid) => {
            let who = pid.map_or_else(|| "another process is starting it".to_string(), |pid| format!("PID {pid}"));
            GatewayError::cli(
                format!("Gateway already running ({who})."),
                format!(
                    "Only one gateway may run per config directory; {} is locked. Stop the running one with \"panorama-gateway stop\" before starting another; \"panorama-gateway status\" shows it.",
                    pidfile::lock_path(&paths.pid_path).display()
                ),
            )
        }
        pidfile::ClaimError::Io(e) => {
            GatewayError::io("Could not lock", pidfile::lock_path(&paths.pid_path), e)
        }
    })
}

/// Step A: refuse if a gateway runs, else spawn the daemon and wait
/// (bounded) until it reports that it loaded its config and authenticated.
pub fn run_background(
    ctx: &Context,
    prepared: &PreparedPaths,
    metrics: Option<std::net::SocketAddr>,
) -> Result<StartOutcome> {
    let paths = &prepared.paths;
    let out = &ctx.out;
    refuse_if_running(paths)?;
    let (pid, pipe) = spawn_daemon(ctx, prepared, metrics)?;
    let step = out.step("Starting gateway...", false);
    let verdict = readiness::wait_for_child(pipe, readiness::DEFAULT_WAIT);
    drop(step);
    let rows = |out: &crate::output::Printer| {
        vec![
            Row::new("Logs", Some(out.path(&paths.log_path))),
            Row::verbose("PID", Some(pid.to_string())),
            Row::verbose("Config", Some(out.path(&paths.config_path))),
        ]
    };
    match verdict {
        Verdict::Ready => {
            out.success("Gateway started", &rows(out));
            Ok(StartOutcome::Daemonized(pid))
        }
        Verdict::Waiting(why) => {
            let mut rows = rows(out);
            rows.insert(0, Row::new("Hub", Some(why)));
            out.warn(
                "Gateway started, but it cannot reach the hub yet; it keeps retrying in the background.",
                &rows,
            );
            Ok(StartOutcome::Daemonized(pid))
        }
        Verdict::Failed { message, details } => {
            let _ = pidfile::remove_if_holds(&paths.pid_path, pid as i32);
            Err(GatewayError::cli(
                message,
                Some(details).filter(|d| !d.is_empty()),
            ))
        }
        Verdict::Exited => {
            let _ = pidfile::remove_if_holds(&paths.pid_path, pid as i32);
            Err(GatewayError::cli(
                "The gateway exited during start-up.",
                format!(
                    "See its log: panorama-gateway logs --no-follow ({}), or run \"panorama-gateway start --foreground\" to watch it start.",
                    out.path(&paths.log_path)
                ),
            ))
        }
        Verdict::TimedOut => Err(GatewayError::cli(
            format!(
                "The gateway (PID {pid}) did not report ready within {} s.",
                readiness::DEFAULT_WAIT.as_secs()
            ),
            format!(
                "It may still be starting: check \"panorama-gateway status\" and its log ({}); stop it with \"panorama-gateway stop\".",
                out.path(&paths.log_path)
            ),
        )),
    }
}

/// The device-name flag for the daemon child: `--device-name`, else
/// `PANORAMA_GATEWAY_DEVICE_NAME` (which therefore beats the config's
/// `deviceName` in daemon mode, as in Node).
fn daemon_device_name(ctx: &Context) -> Option<String> {
    ctx.global
        .device_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| paths::process_env(DEVICE_NAME_ENV))
}

/// Spawn `<this executable> start --foreground` detached (new session),
/// stdin from /dev/null, stdout and stderr appended to the log file, and
/// leave the PID file to the child (§2.8). Returns the child's PID and the
/// read end of its readiness pipe ([`readiness`]).
pub fn spawn_daemon(
    ctx: &Context,
    prepared: &PreparedPaths,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(u32, std::fs::File)> {
    let paths = &prepared.paths;
    let log = logfile::open_append_owner_only(&paths.log_path)?;
    let log_err = log
        .try_clone()
        .map_err(|e| GatewayError::io("Could not open log file", &paths.log_path, e))?;
    let exe = std::env::current_exe().map_err(|e| {
        GatewayError::cli(
            "Failed to start gateway process",
            format!("Could not locate the panorama-gateway executable: {e}"),
        )
    })?;
    let mut command = Command::new(&exe);
    command.arg("start").arg("--foreground");
    if let Some(addr) = metrics {
        command.env(crate::metrics::METRICS_LISTEN_ENV, addr.to_string());
    }
    if let Some(name) = daemon_device_name(ctx) {
        command.arg("--device-name").arg(name);
    }
    for (key, value) in paths.env_vars() {
        command.env(key, value);
    }
    for (key, value) in ctx.global.cli_env_overrides() {
        command.env(key, value);
    }
    if let Some(url) = ctx
        .global
        .supabase_url
        .as_deref()
        .filter(|v| !v.trim().is_empty())
    {
        command.env("PANORAMA_SUPABASE_URL", url);
    }
    if let Some(key) = ctx
        .global
        .anon_key
        .as_deref()
        .filter(|v| !v.trim().is_empty())
    {
        command.env("PANORAMA_SUPABASE_ANON_KEY", key);
    }
    let (ready_read, ready_write) = readiness::pipe().map_err(|e| {
        GatewayError::cli(
            "Failed to start gateway process",
            format!("Could not create the start-up pipe: {e}"),
        )
    })?;
    let ready_fd = ready_write.as_raw_fd();
    command
        .env(DAEMON_CHILD_ENV, "1")
        .env(readiness::READY_FD_ENV, readiness::CHILD_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid, dup2 and fcntl are async-signal-safe; they detach the
    // child from our session and terminal and hand it the pipe's write end.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            readiness::install_in_child(ready_fd)
        });
    }
    let child = command.spawn().map_err(|e| {
        GatewayError::cli(
            "Failed to start gateway process",
            format!("{}: {e}", exe.display()),
        )
    })?;
    let pid = child.id();
    if pid == 0 {
        return Err(GatewayError::cli(
            "Failed to determine gateway process id",
            "Run \"panorama-gateway start --foreground\" to see why the gateway does not start."
                .to_string(),
        ));
    }
    // The child is not waited for; it outlives us and is reparented. Our
    // copy of the write end goes, so the pipe closes if the child dies.
    // The child writes the PID file itself once it holds the instance
    // lock: a parent writing it here could overwrite the winner's PID with
    // that of a child about to lose the lock.
    drop(child);
    drop(ready_write);
    Ok((pid, ready_read))
}

/// The device name for a foreground start: `--device-name`, config
/// `deviceName`, `PANORAMA_GATEWAY_DEVICE_NAME`, host name.
pub fn foreground_device_name(
    flag: Option<&str>,
    config: Option<&str>,
    env: Option<String>,
    host: impl FnOnce() -> String,
) -> String {
    [flag.map(str::to_string), config.map(str::to_string), env]
        .into_iter()
        .flatten()
        .map(|n| n.trim().to_string())
        .find(|n| !n.is_empty())
        .unwrap_or_else(host)
}

/// Step B: the foreground runtime (also what the daemon child runs). It
/// refuses while another gateway runs, holds the PID file while it runs
/// and removes it only if it still holds its own PID.
pub fn run_foreground(
    ctx: &Context,
    prepared: &PreparedPaths,
    metrics: Option<std::net::SocketAddr>,
) -> Result<()> {
    let paths = &prepared.paths;
    refuse_if_running(paths)?;
    let _instance = claim_instance(paths)?;
    pidfile::write_pid(&paths.pid_path, std::process::id())?;
    let result = run_foreground_claimed(ctx, prepared, metrics);
    if let Err(e) = pidfile::remove_own(&paths.pid_path) {
        tracing::warn!(error = %e, "Could not remove the PID file");
    }
    result
}

fn run_foreground_claimed(
    ctx: &Context,
    prepared: &PreparedPaths,
    metrics: Option<std::net::SocketAddr>,
) -> Result<()> {
    let paths = &prepared.paths;
    if paths::process_env(DAEMON_CHILD_ENV).is_some() {
        // Our stdout/stderr already go to the log file; take them over so
        // they follow it across rotations.
        match RotatingLog::open(
            &paths.log_path,
            logfile::DEFAULT_MAX_BYTES,
            logfile::DEFAULT_KEEP,
        )
        .and_then(|log| {
            log.redirect_stdio()
                .map_err(|e| GatewayError::io("Could not redirect output to", &paths.log_path, e))
        }) {
            Ok(log) => logfile::init_tracing(Some(log), true),
            Err(e) => {
                logfile::init_tracing(None, true);
                tracing::warn!(error = %e, "Could not open the rotating gateway log");
            }
        }
    } else {
        logfile::init_tracing(None, ctx.global.verbose);
    }
    ctx.out.info("Starting gateway...", &[]);
    if !paths.config_path.exists() {
        return Err(GatewayError::cli(
            "Gateway config not found. Run \"pair\" first or set --config-path / PANORAMA_GATEWAY_CONFIG_PATH.",
            format!("No file at {}.", paths.config_path.display()),
        ));
    }
    let metrics_listener = metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr).map_err(|e| {
                GatewayError::cli(
                    format!("Could not listen for metrics on {addr}."),
                    format!("{e}. Pick another --metrics-listen address (HOST:PORT)."),
                )
            })
        })
        .transpose()?;
    // A config that exists but cannot be read says why (not "not found").
    let mut config = GatewayConfig::load(&paths.config_path)?;
    let backend = backend::resolve_backend(
        ctx.global.supabase_url.as_deref(),
        ctx.global.anon_key.as_deref(),
        &paths::process_env,
        Some((&config.supabase_url, &config.supabase_anon_key)),
        Some(&paths.config_path),
        Purpose::Start,
    )?;
    let device_name = foreground_device_name(
        ctx.global.device_name.as_deref(),
        config.device_name.as_deref(),
        paths::process_env(DEVICE_NAME_ENV),
        super::hostname,
    );
    config.supabase_url = backend.url.clone();
    config.supabase_anon_key = backend.anon_key.clone();
    config.device_name = Some(device_name.clone());
    config.save(&paths.config_path)?;
    network::run_gateway_runtime(RuntimeRequest {
        paths: paths.clone(),
        config,
        backend,
        device_name,
        migrated_from: prepared.migrated_from.clone(),
        verbose: ctx.global.verbose,
        metrics_listener,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_name_precedence() {
        let host = || "host".to_string();
        assert_eq!(
            foreground_device_name(Some("flag"), Some("cfg"), Some("env".into()), host),
            "flag"
        );
        assert_eq!(
            foreground_device_name(None, Some(" "), Some("env".into()), host),
            "env"
        );
        assert_eq!(foreground_device_name(None, Some("cfg"), None, host), "cfg");
        assert_eq!(foreground_device_name(None, None, None, host), "host");
    }
}
