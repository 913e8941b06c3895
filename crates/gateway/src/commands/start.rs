//! `start [--foreground|--daemon]` (runtime.md §1.6.2, daemon mode §2.8).

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

/// Set in the environment of the daemonized `start --foreground` child so
/// it writes its logs to the (rotating) log file. Scrubbed from job
/// children like every `PANORAMA_GATEWAY_*` variable.
pub const DAEMON_CHILD_ENV: &str = "PANORAMA_GATEWAY_DAEMON_CHILD";
pub const DEVICE_NAME_ENV: &str = "PANORAMA_GATEWAY_DEVICE_NAME";

/// What a `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    AlreadyRunning(i32),
    Daemonized(u32),
    /// The foreground runtime ran and shut down.
    Foreground,
}

pub fn run(ctx: &Context, args: &StartArgs) -> Result<StartOutcome> {
    let prepared = ctx.prepare()?;
    if args.foreground {
        run_foreground(ctx, &prepared)?;
        return Ok(StartOutcome::Foreground);
    }
    crate::logfile::init_tracing(None, ctx.global.verbose);
    run_background(ctx, &prepared)
}

/// Step A: report a running gateway, or spawn the daemon.
pub fn run_background(ctx: &Context, prepared: &PreparedPaths) -> Result<StartOutcome> {
    let paths = &prepared.paths;
    let out = &ctx.out;
    if let Some(pid) = pidfile::read_pid(&paths.pid_path).filter(|p| pidfile::is_alive(*p)) {
        out.info(
            "Gateway already running",
            &[Row::verbose("PID", Some(pid.to_string()))],
        );
        return Ok(StartOutcome::AlreadyRunning(pid));
    }
    let pid = spawn_daemon(ctx, prepared)?;
    out.success(
        "Gateway started",
        &[
            Row::new("Logs", Some(out.path(&paths.log_path))),
            Row::verbose("PID", Some(pid.to_string())),
            Row::verbose("Config", Some(out.path(&paths.config_path))),
        ],
    );
    Ok(StartOutcome::Daemonized(pid))
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
/// record its PID in the PID file (§2.8). Returns the child's PID.
pub fn spawn_daemon(ctx: &Context, prepared: &PreparedPaths) -> Result<u32> {
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
    command
        .env(DAEMON_CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid is async-signal-safe and only detaches the child from
    // our session and controlling terminal.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
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
    // The child is not waited for; it outlives us and is reparented.
    drop(child);
    pidfile::write_pid(&paths.pid_path, pid)?;
    Ok(pid)
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

/// Step B: the foreground runtime (also what the daemon child runs).
pub fn run_foreground(ctx: &Context, prepared: &PreparedPaths) -> Result<()> {
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
    let mut config = GatewayConfig::load(&paths.config_path).map_err(|e| {
        GatewayError::cli(
            "Gateway config not found. Run \"pair\" first or set --config-path / PANORAMA_GATEWAY_CONFIG_PATH.",
            e.to_string(),
        )
    })?;
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
