//! The PID file (runtime.md §2.5): `<pid>\n`, mode 0600.

use std::fs;
use std::path::Path;

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
