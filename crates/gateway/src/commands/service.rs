//! `service install|uninstall|status`: keep the gateway running under the
//! user's service manager (systemd user unit on Linux, launchd agent on
//! macOS). The definitions come from [`crate::service`]; this module writes
//! them and runs `systemctl --user` when a user manager is reachable, else
//! prints the commands to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Context;
use crate::cli::ServiceAction;
use crate::error::{GatewayError, Result};
use crate::output::Row;
use crate::paths;
use crate::service::{self, ServiceSpec};

pub fn run(ctx: &Context, action: &ServiceAction) -> Result<()> {
    let prepared = ctx.prepare()?;
    let gw_paths = &prepared.paths;
    let spec = ServiceSpec {
        exe: std::env::current_exe().map_err(|e| {
            GatewayError::cli(
                "Could not locate the panorama-gateway executable.",
                e.to_string(),
            )
        })?,
        env: gw_paths
            .env_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
            .collect(),
    };
    let target = Target::for_this_os(ctx);
    match action {
        ServiceAction::Install => install(ctx, gw_paths, &spec, &target),
        ServiceAction::Uninstall => uninstall(ctx, &target),
        ServiceAction::Status => status(ctx, &target),
    }
}

/// Where the definition goes and how the manager is driven.
struct Target {
    path: PathBuf,
    systemd: bool,
}

impl Target {
    fn for_this_os(ctx: &Context) -> Target {
        if cfg!(target_os = "macos") {
            Target {
                path: service::launchd_plist_path(&ctx.home),
                systemd: false,
            }
        } else {
            Target {
                path: service::systemd_unit_dir(paths::process_env, &ctx.home)
                    .join(service::SYSTEMD_UNIT_NAME),
                systemd: true,
            }
        }
    }
}

/// A user systemd manager we can talk to: `systemctl` on `PATH` and a user
/// bus socket (none in containers, over plain `su`, or without lingering).
fn user_manager_reachable() -> bool {
    let has_systemctl = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("systemctl").is_file()));
    let bus = paths::process_env("DBUS_SESSION_BUS_ADDRESS").is_some()
        || paths::process_env("XDG_RUNTIME_DIR")
            .is_some_and(|d| Path::new(&d).join("bus").exists());
    has_systemctl && bus
}

fn systemctl(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .output()
        .map_err(|e| format!("systemctl --user {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl --user {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn linger_enabled() -> bool {
    let user = paths::process_env("USER").unwrap_or_default();
    !user.is_empty() && Path::new("/var/lib/systemd/linger").join(&user).exists()
}

fn install(
    ctx: &Context,
    gw_paths: &paths::GatewayPaths,
    spec: &ServiceSpec,
    target: &Target,
) -> Result<()> {
    let out = &ctx.out;
    if !gw_paths.config_path.exists() {
        return Err(GatewayError::cli(
            "This gateway is not paired yet.",
            "Pair it first (panorama-gateway pair <CODE>), then install the service.".to_string(),
        ));
    }
    if let Some(pid) = crate::pidfile::live_gateway(&gw_paths.pid_path) {
        return Err(GatewayError::cli(
            format!("A gateway is already running (PID {pid})."),
            "Stop it with \"panorama-gateway stop\" first; the service then runs the gateway."
                .to_string(),
        ));
    }
    let text = if target.systemd {
        service::systemd_unit(spec)
    } else {
        service::launchd_plist(spec, &gw_paths.log_path)
    };
    if let Some(dir) = target.path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| GatewayError::io("Could not create", dir, e))?;
    }
    std::fs::write(&target.path, text)
        .map_err(|e| GatewayError::io("Could not write", &target.path, e))?;
    let file = out.path(&target.path);
    if !target.systemd {
        out.success(
            "Service definition written",
            &[
                Row::new("File", Some(file)),
                Row::new(
                    "Next",
                    Some(format!(
                        "launchctl bootstrap gui/$(id -u) {}",
                        target.path.display()
                    )),
                ),
            ],
        );
        return Ok(());
    }
    let linger = (!linger_enabled()).then(|| {
        Row::new(
            "Hint",
            Some(
                "to keep it running while you are logged out: loginctl enable-linger $USER"
                    .to_string(),
            ),
        )
    });
    if user_manager_reachable() {
        systemctl(&["daemon-reload"])
            .and_then(|()| systemctl(&["enable", "--now", service::SYSTEMD_UNIT_NAME]))
            .map_err(|e| {
                GatewayError::cli(
                    "The unit was written but systemd did not start it.",
                    format!("{e}. Unit: {file}"),
                )
            })?;
        let mut rows = vec![Row::new("Unit", Some(file))];
        rows.extend(linger);
        out.success("Service installed and started", &rows);
    } else {
        let mut rows = vec![
            Row::new("Unit", Some(file)),
            Row::new(
                "Next",
                Some(format!(
                    "no systemd user manager is reachable from here; run: systemctl --user daemon-reload && systemctl --user enable --now {}",
                    service::SYSTEMD_UNIT_NAME
                )),
            ),
        ];
        rows.extend(linger);
        out.success("Service unit written", &rows);
    }
    Ok(())
}

fn uninstall(ctx: &Context, target: &Target) -> Result<()> {
    let out = &ctx.out;
    if !target.path.exists() {
        out.info(
            "No service installed",
            &[Row::new("Looked for", Some(out.path(&target.path)))],
        );
        return Ok(());
    }
    if target.systemd && user_manager_reachable() {
        if let Err(e) = systemctl(&["disable", "--now", service::SYSTEMD_UNIT_NAME]) {
            tracing::warn!(error = %e, "Could not stop the service");
        }
    }
    std::fs::remove_file(&target.path)
        .map_err(|e| GatewayError::io("Could not remove", &target.path, e))?;
    if target.systemd && user_manager_reachable() {
        let _ = systemctl(&["daemon-reload"]);
    }
    out.success(
        "Service removed",
        &[Row::new("Removed", Some(out.path(&target.path)))],
    );
    Ok(())
}

fn status(ctx: &Context, target: &Target) -> Result<()> {
    let out = &ctx.out;
    let installed = target.path.exists();
    let mut rows = vec![
        Row::new(
            "Installed",
            Some(if installed { "Yes" } else { "No" }.to_string()),
        ),
        Row::new("File", Some(out.path(&target.path))),
    ];
    if installed && target.systemd && user_manager_reachable() {
        let state = |verb: &str| {
            Command::new("systemctl")
                .args(["--user", verb, service::SYSTEMD_UNIT_NAME])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|e| e.to_string())
        };
        rows.push(Row::new("Enabled", Some(state("is-enabled"))));
        rows.push(Row::new("Active", Some(state("is-active"))));
    }
    out.info("Gateway service", &rows);
    Ok(())
}
