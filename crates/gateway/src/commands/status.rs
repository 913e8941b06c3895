//! `status [--json]` (runtime.md §1.6.4): local state only, no side
//! effects except the config chmod that every config load does.

use serde::Serialize;

use super::Context;
use crate::config::GatewayConfig;
use crate::error::Result;
use crate::output::Row;
use crate::pidfile;

/// Parse `ps -o etime=` output (`[[D-]HH:]MM:SS`) into seconds.
pub fn parse_etime(text: &str) -> Option<u64> {
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, text),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = match parts.as_slice() {
        [m, s] => (0, *m, *s),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    Some(((days * 24 + h) * 60 + m) * 60 + s)
}

/// `2h 5m`, `7m` or `42s`.
pub fn format_uptime(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// Seconds since `pid` started, read from `/proc` the way `ps -o etime`
/// computes it (whole seconds since boot minus whole seconds of the start
/// tick). Spawning `ps` cost ~10 ms, most of `status`'s wall time.
#[cfg(target_os = "linux")]
fn proc_elapsed(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, starttime field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/uptime").ok()?;
    let since_boot: f64 = boot.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some((since_boot as u64).saturating_sub(start_ticks / hz as u64))
}

#[cfg(not(target_os = "linux"))]
fn proc_elapsed(_pid: i32) -> Option<u64> {
    None
}

/// Uptime of `pid` from `/proc`, else via `ps`; `None` if both fail.
/// Unparsable `ps` output is returned raw.
fn uptime(pid: i32) -> Option<(String, Option<u64>)> {
    if let Some(secs) = proc_elapsed(pid) {
        return Some((format_uptime(secs), Some(secs)));
    }
    let output = std::process::Command::new("ps")
        .args(["-p", &pid.to_string(), "-o", "etime="])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let raw = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if raw.is_empty() {
        return None;
    }
    match parse_etime(&raw) {
        Some(secs) => Some((format_uptime(secs), Some(secs))),
        None => Some((raw, None)),
    }
}

/// The `status --json` document.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub running: bool,
    pub version: &'static str,
    pub pid: Option<i32>,
    pub stale_pid: Option<i32>,
    pub uptime: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub paired: bool,
    /// Why an existing config could not be read (then `paired` is false).
    pub config_error: Option<String>,
    /// `null` when the config is missing or unreadable.
    pub full_control_enabled: Option<bool>,
    pub device_name: Option<String>,
    pub gateway_id: Option<String>,
    pub team_id: Option<String>,
    pub config_dir: String,
    pub config_path: String,
    pub log_path: String,
    pub pid_path: String,
    /// The process containment in force (the running gateway's record), or
    /// the one a start would choose now (`"source": "detected"`).
    pub process_containment: serde_json::Value,
}

pub fn collect(ctx: &Context) -> StatusReport {
    let paths = ctx.paths();
    let pid = pidfile::read_pid(&paths.pid_path);
    let running = pid.is_some_and(pidfile::is_alive);
    let (uptime_text, uptime_seconds) = match pid.filter(|_| running).and_then(uptime) {
        Some((text, secs)) => (Some(text), secs),
        None => (None, None),
    };
    // Paired means a readable config with a gateway id, not just a file.
    let (config, config_error) = if paths.config_path.exists() {
        match GatewayConfig::load(&paths.config_path) {
            Ok(c) => (Some(c), None),
            Err(e) => (
                None,
                Some(match e.details() {
                    Some(d) if matches!(e, crate::error::GatewayError::Cli { .. }) => {
                        format!("{e} {d}")
                    }
                    _ => e.to_string(),
                }),
            ),
        }
    } else {
        (None, None)
    };
    let paired = config.as_ref().is_some_and(|c| !c.gateway_id.is_empty());
    let non_empty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    StatusReport {
        running,
        version: env!("CARGO_PKG_VERSION"),
        pid: pid.filter(|_| running),
        stale_pid: pid.filter(|_| !running),
        uptime: uptime_text,
        uptime_seconds,
        paired,
        config_error,
        full_control_enabled: config.as_ref().map(|c| c.full_control_enabled),
        device_name: config.as_ref().and_then(|c| c.device_name.clone()),
        gateway_id: config.as_ref().and_then(|c| non_empty(&c.gateway_id)),
        team_id: config.as_ref().and_then(|c| non_empty(&c.team_id)),
        config_dir: paths.config_dir.display().to_string(),
        config_path: paths.config_path.display().to_string(),
        log_path: paths.log_path.display().to_string(),
        pid_path: paths.pid_path.display().to_string(),
        process_containment: containment_status(&paths.config_dir, running),
    }
}

/// The running gateway's containment record, else a fresh detection.
fn containment_status(config_dir: &std::path::Path, running: bool) -> serde_json::Value {
    let recorded = std::fs::read_to_string(config_dir.join(crate::contain::STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let (mut value, source) = match recorded.filter(|_| running) {
        Some(v) => (v, "running_gateway"),
        None => (crate::contain::describe(config_dir), "detected"),
    };
    if let Some(obj) = value.as_object_mut() {
        obj.insert("source".into(), serde_json::json!(source));
    }
    value
}

pub fn run(ctx: &Context, json: bool) -> Result<()> {
    let report = collect(ctx);
    if json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".to_string());
        println!("{text}");
        return Ok(());
    }
    let out = &ctx.out;
    let path = |p: &str| Some(out.path(std::path::Path::new(p)));
    out.info(
        &format!(
            "Gateway Status: {}",
            if report.running { "Running" } else { "Stopped" }
        ),
        &[
            Row::new("Version", Some(report.version.to_string())),
            Row::new("Uptime", report.uptime.clone()),
            Row::new(
                "Paired",
                Some(match (&report.config_error, report.paired) {
                    (Some(e), _) => format!("No (config unreadable: {e})"),
                    (None, true) => "Yes".to_string(),
                    (None, false) => "No".to_string(),
                }),
            ),
            Row::new(
                "Install full control",
                report
                    .full_control_enabled
                    .map(|on| if on { "Enabled" } else { "Disabled" }.to_string()),
            ),
            Row::verbose(
                "Process containment",
                report.process_containment["mode"]
                    .as_str()
                    .map(str::to_string),
            ),
            Row::verbose("Device", report.device_name.clone()),
            Row::verbose("Gateway ID", report.gateway_id.clone()),
            Row::verbose("Team ID", report.team_id.clone()),
            Row::verbose("PID", report.pid.map(|p| p.to_string())),
            Row::verbose("Stale PID", report.stale_pid.map(|p| p.to_string())),
            Row::verbose("Config Path", path(&report.config_path)),
            Row::verbose("Log Path", path(&report.log_path)),
            Row::verbose("PID Path", path(&report.pid_path)),
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etime_parsing_and_formatting() {
        assert_eq!(parse_etime("00:42"), Some(42));
        assert_eq!(parse_etime(" 07:03 "), Some(423));
        assert_eq!(parse_etime("02:05:00"), Some(7500));
        assert_eq!(parse_etime("1-01:00:00"), Some(90000));
        assert_eq!(parse_etime("garbage"), None);
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(423), "7m");
        assert_eq!(format_uptime(7500), "2h 5m");
        assert_eq!(format_uptime(90000), "25h 0m");
    }

    /// `/proc` gives what `ps -o etime=` printed before (±1 s for the
    /// second boundary between the two reads).
    #[cfg(target_os = "linux")]
    #[test]
    fn proc_elapsed_matches_ps() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let pid = child.id() as i32;
        let ours = proc_elapsed(pid).expect("readable /proc");
        let ps = std::process::Command::new("ps")
            .args(["-p", &pid.to_string(), "-o", "etime="])
            .output()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let theirs = parse_etime(&String::from_utf8_lossy(&ps.stdout)).expect("ps etime");
        assert!(ours.abs_diff(theirs) <= 1, "proc {ours} s vs ps {theirs} s");
        assert!((1..=3).contains(&ours), "{ours} s for a process 1.1 s old");
        assert_eq!(proc_elapsed(i32::MAX), None, "no such process");
    }
}
