//! `stop` (runtime.md §1.6.3).

use std::time::{Duration, Instant};

use super::Context;
use crate::error::{GatewayError, Result};
use crate::output::Row;
use crate::pidfile;

pub const STOP_POLL: Duration = Duration::from_millis(200);
pub const STOP_TIMEOUT: Duration = Duration::from_millis(5000);

pub fn run(ctx: &Context) -> Result<()> {
    let paths = ctx.paths();
    let out = &ctx.out;
    let Some(pid) = pidfile::read_pid(&paths.pid_path) else {
        out.info(
            "Gateway is not running",
            &[Row::verbose("PID file", Some(out.path(&paths.pid_path)))],
        );
        return Ok(());
    };
    let pid_row = || Row::verbose("PID", Some(pid.to_string()));
    if !pidfile::is_alive(pid) {
        pidfile::remove_if_holds(&paths.pid_path, pid)?;
        out.info("Gateway is not running (stale PID removed)", &[pid_row()]);
        return Ok(());
    }
    // SAFETY: sends SIGTERM to the PID recorded by the gateway.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        // Deviation: the Node gateway exits 0 here; every failure exits 1.
        let err = std::io::Error::last_os_error();
        return Err(GatewayError::cli(
            "Failed to stop gateway process",
            format!(
                "PID {pid}: {err}. Check that the gateway runs as this user, or stop it with the system tools."
            ),
        ));
    }
    out.info("Stopping gateway...", &[pid_row()]);
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(STOP_POLL);
        if !pidfile::is_alive(pid) {
            pidfile::remove_if_holds(&paths.pid_path, pid)?;
            out.success("Gateway stopped", &[pid_row()]);
            return Ok(());
        }
    }
    // The seed's text is unknown (spec §10 q1); this is the later version's.
    out.warn(
        "Gateway stop is still draining active work; process remains running",
        &[pid_row()],
    );
    Ok(())
}
