//! The PID file (runtime.md §2.5): `<pid>\n`, mode 0600, and the lock
//! that makes "one gateway per identity" atomic.
//!
//! Checking the PID file and then writing it is a race: two `start`s at the
//! same instant both see no live gateway. So the process that runs the
//! gateway first takes an exclusive `flock` on `<pid file>.lock` (a
//! separate file, because the PID file itself is replaced by rename) and
//! holds it for its lifetime. The kernel drops the lock when the process
//! dies or execs (the descriptor is close-on-exec), so a crash never leaves
//! a stale lock and the upgrade re-exec takes it again. The lock file is
//! never removed: removing it would let a third process lock a fresh inode
//! while the second still holds the old one.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::paths;

/// Read the PID in `path`. Missing, unreadable or non-numeric means `None`.
/// Values ≤ 0 are rejected (`kill(0, …)` would target our process group).
pub fn read_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    text.trim().parse::<i32>().ok().filter(|pid| *pid > 0)
}

/// Write `pid` to `path` (owner-only, atomically).
pub fn write_pid(path: &Path, pid: u32) -> Result<()> {
    paths::write_owner_only_atomic(path, format!("{pid}\n").as_bytes())
}

/// Is a process with this PID alive? Signal 0 must succeed; any error,
/// including EPERM, counts as dead (Node semantics). PID reuse is not
/// detected. On Linux a zombie (exited, not yet reaped) also counts as dead.
pub fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence; no signal is sent.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: `pid (comm) S ...`; comm may contain spaces and parentheses.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// The PID of another live gateway that holds the PID file at `path`, if
/// any: alive, not this process, and (where `/proc` tells) running a
/// program with this executable's name, so a PID reused by an unrelated
/// process after a reboot does not count.
pub fn live_gateway(path: &Path) -> Option<i32> {
    let pid = read_pid(path)?;
    if pid == std::process::id() as i32 || !is_alive(pid) {
        return None;
    }
    let ours = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let Some(ours) = ours else { return Some(pid) };
    let names = program_names(pid);
    if names.is_empty() || names.contains(&ours) {
        Some(pid)
    } else {
        None
    }
}

/// The file names `pid` runs under (Linux `/proc`: argv[0] and the
/// executable, which an upgrade may have replaced); empty when unknown.
fn program_names(pid: i32) -> Vec<String> {
    let base = |p: &str| {
        Path::new(p.trim_end_matches(" (deleted)"))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let mut names = Vec::new();
    if let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) {
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        names.extend(base(&String::from_utf8_lossy(argv0)));
    }
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        names.extend(base(&exe.to_string_lossy()));
    }
    names
}

/// The lock file beside a PID file: `<pid file>.lock`.
pub fn lock_path(pid_path: &Path) -> PathBuf {
    let mut name = pid_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Proof that this process is the one gateway for a PID file; dropping it
/// releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    _file: fs::File,
}

/// Why [`claim`] failed.
#[derive(Debug)]
pub enum ClaimError {
    /// Another process holds the lock; its PID when the PID file names a
    /// live one already.
    Held(Option<i32>),
    Io(std::io::Error),
}

/// Take the instance lock for `pid_path` without waiting.
pub fn claim(pid_path: &Path) -> std::result::Result<InstanceLock, ClaimError> {
    let path = lock_path(pid_path);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(ClaimError::Io)?;
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(ClaimError::Io)?
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(InstanceLock { _file: file });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let holder =
            read_pid(pid_path).filter(|pid| *pid != std::process::id() as i32 && is_alive(*pid));
        Err(ClaimError::Held(holder))
    } else {
        Err(ClaimError::Io(err))
    }
}

/// Remove the PID file only if it still holds `pid`. Returns whether it was
/// removed. Protects a replacement process's PID file (auto-restart).
pub fn remove_if_holds(path: &Path, pid: i32) -> Result<bool> {
    if read_pid(path) != Some(pid) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(crate::error::GatewayError::io(
            "Could not remove PID file",
            path,
            e,
        )),
    }
}

/// Remove the PID file if it holds this process's PID (runtime shutdown).
pub fn remove_own(path: &Path) -> Result<bool> {
    remove_if_holds(path, std::process::id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_remove_only_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.pid");
        assert_eq!(read_pid(&path), None);
        write_pid(&path, 4242).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "4242\n");
        assert_eq!(read_pid(&path), Some(4242));
        assert!(!remove_own(&path).unwrap());
        assert!(path.exists());
        assert!(remove_if_holds(&path, 4242).unwrap());
        assert!(!path.exists());
        fs::write(&path, "garbage").unwrap();
        assert_eq!(read_pid(&path), None);
        fs::write(&path, "0\n").unwrap();
        assert_eq!(read_pid(&path), None);
    }

    #[test]
    fn the_instance_lock_admits_one_holder_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.pid");
        assert_eq!(lock_path(&path), tmp.path().join("gateway.pid.lock"));
        let first = claim(&path).expect("first claim");
        // flock locks belong to the open file description, so a second
        // open in the same process conflicts just like another process.
        assert!(matches!(claim(&path), Err(ClaimError::Held(None))));
        write_pid(&path, std::process::id()).unwrap();
        // Our own PID is never reported as "the other holder".
        assert!(matches!(claim(&path), Err(ClaimError::Held(None))));
        drop(first);
        // Another test thread that forks a child at this moment hands the
        // child a copy of every descriptor until the child execs (that is
        // when close-on-exec applies), and a copy of ours keeps the lock.
        // So the release is visible once such a child has exec'd: retry
        // briefly instead of expecting it on the first try.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match claim(&path) {
                Ok(lock) => break lock,
                Err(ClaimError::Held(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("claim after release: {e:?}"),
            }
        };
        drop(again);
        assert!(lock_path(&path).exists(), "the lock file is never removed");
    }

    #[test]
    fn liveness() {
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(0));
        assert!(!is_alive(-1));
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn only_another_live_gateway_holds_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.pid");
        assert_eq!(live_gateway(&path), None);
        // This process: never "another".
        write_pid(&path, std::process::id()).unwrap();
        assert_eq!(live_gateway(&path), None);
        // A live process running another program (a reused PID).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write_pid(&path, sleeper.id()).unwrap();
        assert_eq!(live_gateway(&path), None);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
