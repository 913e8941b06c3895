//! cgroup v1 files of one job cgroup, one directory per controller
//! hierarchy: the freezer (`freezer.state`) for an escape-proof kill where
//! v2's `cgroup.kill` is missing, `memory.limit_in_bytes`, `pids.max`,
//! `cpu.shares`, their events and the usage counters.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cgroup_file::{keyed_value, read_u64, write_file};
use super::limits::{weight_to_shares, LimitHit, Limits};

/// Freeze (`true`) or thaw the cgroup; waits (bounded) until the state is
/// reached so no process of it runs (or forks) while it is signalled.
pub fn set_frozen(dir: &Path, frozen: bool) -> io::Result<()> {
    let (want, state) = if frozen {
        ("FROZEN", "FROZEN")
    } else {
        ("THAWED", "THAWED")
    };
    write_file(&dir.join("freezer.state"), want)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        if now.trim() == state {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "freezer state stuck at {} (wanted {state})",
                now.trim()
            )));
        }
        // Writing again nudges a FREEZING cgroup whose new tasks were
        // forked mid-freeze.
        let _ = write_file(&dir.join("freezer.state"), want);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Apply the limits whose controller this hierarchy has; returns those it
/// could not set.
pub fn set_limits(dir: &Path, controllers: &[String], limits: &Limits) -> Vec<&'static str> {
    let has = |c: &str| controllers.iter().any(|x| x == c);
    let mut missing = Vec::new();
    if let (Some(bytes), true) = (limits.memory_bytes, has("memory")) {
        if write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string()).is_err() {
            missing.push("memory");
        }
    }
    if let (Some(n), true) = (limits.max_processes, has("pids")) {
        if write_file(&dir.join("pids.max"), &n.to_string()).is_err() {
            missing.push("processes");
        }
    }
    if let (Some(w), true) = (limits.cpu_weight, has("cpu")) {
        if write_file(&dir.join("cpu.shares"), &weight_to_shares(w).to_string()).is_err() {
            missing.push("cpu_weight");
        }
    }
    missing
}

/// A limit the job ran into in this hierarchy.
pub fn limit_hit(dir: &Path, controllers: &[String], limits: &Limits) -> Option<LimitHit> {
    let has = |c: &str| controllers.iter().any(|x| x == c);
    if let (Some(limit_bytes), true) = (limits.memory_bytes, has("memory")) {
        let oom = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
        if keyed_value(&oom, "oom_kill").is_some_and(|n| n > 0) {
            return Some(LimitHit::Memory { limit_bytes });
        }
    }
    if let (Some(limit), true) = (limits.max_processes, has("pids")) {
        let events = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
        if keyed_value(&events, "max").is_some_and(|n| n > 0) {
            return Some(LimitHit::Processes { limit });
        }
    }
    None
}

/// `(peak memory bytes, cpu time µs, peak processes)` this hierarchy offers.
pub fn usage(dir: &Path, controllers: &[String]) -> (Option<u64>, Option<u64>, Option<u64>) {
    let has = |c: &str| controllers.iter().any(|x| x == c);
    (
        has("memory")
            .then(|| read_u64(&dir.join("memory.max_usage_in_bytes")))
            .flatten(),
        has("cpuacct")
            .then(|| read_u64(&dir.join("cpuacct.usage")).map(|ns| ns / 1_000))
            .flatten(),
        has("pids")
            .then(|| read_u64(&dir.join("pids.peak")))
            .flatten(),
    )
}
