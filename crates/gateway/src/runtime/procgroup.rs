//! Whole-process-group termination for job children (runtime.md §4.8,
//! control-plane.md §14): every child a job spawns leads its own process
//! group, so a timeout or a shutdown can stop the child *and* whatever it
//! spawned: SIGTERM to the group, then SIGKILL to the group after the kill
//! grace.

use std::time::Duration;

/// SIGTERM → SIGKILL grace for job children (timeouts, shutdown), the
/// spec's process kill grace (control-plane.md §15.2).
pub const KILL_GRACE: Duration = Duration::from_millis(2_000);

/// Send `signal` to every process of group `pgid`. Errors (the group is
/// gone) are ignored.
pub fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg(2) with a group id we created; no memory is touched.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Whether group `pgid` still has a member (zombies included: they are
/// reaped by their parent, so a short wait is enough).
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: killpg with signal 0 only checks for existence.
    pgid > 1 && unsafe { libc::killpg(pgid, 0) } == 0
}

/// Stop `child`'s whole process group: SIGTERM, wait up to `grace` for the
/// group to empty (reaping the leader meanwhile), then SIGKILL the group
/// and reap the leader.
pub async fn terminate_group(child: &mut tokio::process::Child, pgid: i32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let _ = child.try_wait();
        if !group_alive(pgid) {
            let _ = child.wait().await;
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait().await;
}

/// SIGKILLs a process group when dropped while armed: the last resort when
/// a job task is aborted before it could stop its child gracefully.
pub struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    pub fn new(pgid: Option<i32>) -> Self {
        GroupGuard { pgid }
    }

    /// The group was stopped (or its leader exited normally).
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terminate_group_kills_a_grandchild_that_ignores_sigterm() {
        let tmp = tempfile::tempdir().unwrap();
        let pids = tmp.path().join("pids");
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "trap '' TERM; sleep 30 & echo $! >> '{0}'; echo $$ >> '{0}'; wait",
                pids.display()
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&pids).map_or(0, |s| s.lines().count()) < 2 {
            assert!(std::time::Instant::now() < deadline, "script did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        terminate_group(&mut child, pgid, Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_some());
        // The orphaned grandchild may linger as a zombie until it is reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while group_alive(pgid) && !all_zombies(&pids) {
            assert!(std::time::Instant::now() < deadline, "group survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn all_zombies(pids: &std::path::Path) -> bool {
        std::fs::read_to_string(pids).unwrap().lines().all(|p| {
            std::fs::read_to_string(format!("/proc/{}/stat", p.trim())).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
    }
}
