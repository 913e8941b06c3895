//! Operations on the cgroups of a job, whatever the hierarchy: place a
//! child before `exec`, list, kill and remove a job's cgroups. The files of
//! each version are in [`super::v1`] and [`super::v2`]; the way one file is
//! read or written, in [`super::cgroup_file`], below all three.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::tree::pid_alive;
use super::{v1, v2, KillMethod, Version, EMPTY_WAIT};

/// The PIDs in `dir/cgroup.procs` and in every sub-cgroup below it (a job
/// running as root may create some), zombies excluded.
pub(super) fn procs_recursive(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| pid_alive(*pid))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(procs_recursive(&e.path()));
            }
        }
    }
    out
}

/// rmdir `dir` and the sub-cgroups below it, retrying briefly while the
/// kernel still counts an exiting task. A missing directory is fine.
pub(super) fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

pub(super) fn signal_pid(pid: i32, signal: libc::c_int) {
    if pid > 1 && pid != std::process::id() as i32 {
        // SAFETY: kill(2) on a member of a job cgroup we created.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Place the calling process's future child into each `cgroup.procs`.
/// Runs between `fork` and `exec`: only async-signal-safe calls.
pub(super) fn place_self(files: &[CString]) -> io::Result<()> {
    for file in files {
        // SAFETY: open/write/close on a NUL-terminated path; no allocation.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

pub(super) fn cstring(path: &Path) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobDir {
    pub(super) version: Version,
    pub(super) controllers: Vec<String>,
    pub(super) path: PathBuf,
}

pub(super) fn members(dirs: &[JobDir]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs.iter().flat_map(|d| procs_recursive(&d.path)).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

pub(super) fn is_empty(dirs: &[JobDir]) -> bool {
    match dirs.iter().find(|d| d.version == Version::V2) {
        // `populated` also counts sub-cgroups; a missing file means gone.
        Some(d) => !v2::populated(&d.path).unwrap_or(false) && members(dirs).is_empty(),
        None => members(dirs).is_empty(),
    }
}

pub(super) fn wait_empty(dirs: &[JobDir], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if is_empty(dirs) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kill every process of the job cgroups and wait until they are empty;
/// returns the survivors (empty unless something is unkillable).
pub(super) fn kill_dirs(dirs: &[JobDir], method: KillMethod) -> Vec<i32> {
    if is_empty(dirs) {
        return Vec::new();
    }
    let v2_dir = dirs.iter().find(|d| d.version == Version::V2);
    let freezer = dirs
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "freezer"));
    // Frozen, no process of the job runs (or forks) while it is signalled.
    let frozen_kill = |freeze: &dyn Fn(bool) -> io::Result<()>, path: &Path| match freeze(true) {
        Ok(()) => {
            for pid in members(dirs) {
                signal_pid(pid, libc::SIGKILL);
            }
            freeze(false).is_ok()
        }
        Err(e) => {
            let _ = freeze(false);
            tracing::warn!(cgroup = %path.display(), error = %e, "Could not freeze a job cgroup; killing its processes one by one");
            false
        }
    };
    let done = match (method, v2_dir, freezer) {
        (KillMethod::CgroupKill, Some(d), _) => v2::kill(&d.path).unwrap_or(false),
        (KillMethod::Freezer, _, Some(f)) => {
            frozen_kill(&|on| v1::set_frozen(&f.path, on), &f.path)
        }
        (KillMethod::Freezer, Some(d), None) => {
            frozen_kill(&|on| v2::set_frozen(&d.path, on), &d.path)
        }
        _ => false,
    };
    if done && wait_empty(dirs, EMPTY_WAIT) {
        return Vec::new();
    }
    // SIGKILL in a loop (also the safety net of the methods above).
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        let pids = members(dirs);
        if pids.is_empty() && is_empty(dirs) {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return pids;
        }
        for pid in pids {
            signal_pid(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
