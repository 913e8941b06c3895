//! cgroup v2 files of one job cgroup: `cgroup.kill`, `cgroup.events`, the
//! limits (`memory.max`, `pids.max`, `cpu.weight`), their events and the
//! usage counters. v2 offers `cgroup.kill` and `cpu.stat` even with no
//! controller enabled, so it is preferred for the kill wherever it exists.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cgroup_file::{keyed_value, read_u64, write_file};
use super::limits::{LimitHit, Limits};

/// `cgroup.kill`: SIGKILL every process of the cgroup, atomically (no
/// fork escapes it). `Ok(false)` when the kernel has no `cgroup.kill`.
pub fn kill(dir: &Path) -> io::Result<bool> {
    let file = dir.join("cgroup.kill");
    if !file.exists() {
        return Ok(false);
    }
    write_file(&file, "1")?;
    Ok(true)
}

/// `cgroup.freeze` (kernels 5.2–5.13 have it but no `cgroup.kill`):
/// freeze (`true`) or thaw, waiting (bounded) for `frozen` in
/// `cgroup.events` when freezing.
pub fn set_frozen(dir: &Path, frozen: bool) -> io::Result<()> {
    write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    if !frozen {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if keyed_value(&events, "frozen") == Some(1) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other("cgroup did not freeze within 2 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `populated` of `cgroup.events`; `None` when it cannot be read (gone).
pub fn populated(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
    keyed_value(&text, "populated").map(|v| v != 0)
}

/// Apply `limits` where the controller files exist; returns the limits
/// that could not be set (their controller is not enabled here).
pub fn set_limits(dir: &Path, limits: &Limits) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let mut set = |file: &str, value: Option<u64>, name: &'static str| {
        if let Some(v) = value {
            if write_file(&dir.join(file), &v.to_string()).is_err() {
                missing.push(name);
            }
        }
    };
    set("memory.max", limits.memory_bytes, "memory");
    set("pids.max", limits.max_processes, "processes");
    set("cpu.weight", limits.cpu_weight, "cpu_weight");
    // One OOM kill stops the whole job, like the gateway does for v1.
    if limits.memory_bytes.is_some() {
        let _ = write_file(&dir.join("memory.oom.group"), "1");
    }
    missing
}

/// A limit the job ran into: an OOM kill under `memory.max`, or a fork
/// refused at `pids.max`.
pub fn limit_hit(dir: &Path, limits: &Limits) -> Option<LimitHit> {
    if let Some(limit_bytes) = limits.memory_bytes {
        let events = std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
        if keyed_value(&events, "oom_kill").is_some_and(|n| n > 0) {
            return Some(LimitHit::Memory { limit_bytes });
        }
    }
    if let Some(limit) = limits.max_processes {
        let events = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
        if keyed_value(&events, "max").is_some_and(|n| n > 0) {
            return Some(LimitHit::Processes { limit });
        }
    }
    None
}

/// `(peak memory bytes, cpu time µs, peak processes)` where offered.
pub fn usage(dir: &Path) -> (Option<u64>, Option<u64>, Option<u64>) {
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|t| keyed_value(&t, "usage_usec"));
    (
        read_u64(&dir.join("memory.peak")),
        cpu_usec,
        read_u64(&dir.join("pids.peak")),
    )
}

/// Controllers of `dir` (`cgroup.controllers`).
pub fn controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Make `memory`, `pids` and `cpu` (those `dir` offers) available to the
/// children of `dir`. v2's "no internal processes" rule forbids that while
/// `dir` itself holds processes, which is how a systemd service with
/// `Delegate=yes` starts: then this process moves into the leaf
/// `dir/supervisor` first (systemd's documented pattern). Returns the
/// controllers now delegated.
pub fn delegate_controllers(dir: &Path, is_root: bool) -> Vec<String> {
    let wanted: Vec<String> = controllers(dir)
        .into_iter()
        .filter(|c| ["memory", "pids", "cpu"].contains(&c.as_str()))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let line = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let subtree = dir.join("cgroup.subtree_control");
    if write_file(&subtree, &line).is_err() && !is_root {
        let supervisor = dir.join("supervisor");
        let moved = std::fs::create_dir_all(&supervisor).is_ok()
            && write_file(&supervisor.join("cgroup.procs"), "0").is_ok();
        if !moved || write_file(&subtree, &line).is_err() {
            return Vec::new();
        }
    }
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    wanted
        .into_iter()
        .filter(|c| enabled.split_whitespace().any(|e| e == c))
        .collect()
}

/// Enable every controller `parent` has for its own children (the job
/// cgroups). Errors are left to [`set_limits`] to report.
pub fn enable_for_children(parent: &Path) {
    let line = controllers(parent)
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if !line.is_empty() {
        let _ = write_file(&parent.join("cgroup.subtree_control"), &line);
    }
}
