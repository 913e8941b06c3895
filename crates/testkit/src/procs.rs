//! Process inspection through `/proc`, for tests that prove no child,
//! grandchild or process group outlives a cancel, timeout or shutdown.

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match stat(pid) {
        Some(s) => s.state != 'Z' && s.state != 'X',
        None => false,
    }
}

/// The fields of `/proc/<pid>/stat` the tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// Start time in clock ticks since boot: with it, `(pid, start)` names
    /// one process even after its PID is reused.
    pub start: u64,
}

/// `/proc/<pid>/stat`, or `None` when the process is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the fields
    // we want follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every live process's stat.
pub fn table() -> Vec<Stat> {
    all_pids().into_iter().filter_map(stat).collect()
}

/// Whether the process `(pid, start)` is still alive (not a zombie): false
/// once it exited, even if its PID now belongs to another process.
pub fn alive_since(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && s.state != 'Z' && s.state != 'X')
}

/// SIGKILLs `(pid, start)` if it is still that process (test cleanup).
pub fn kill_if_same(pid: i32, start: u64) {
    if alive_since(pid, start) {
        // SAFETY: kill(2) on a process the test identified by pid and
        // start time.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Every live pid on the machine.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

/// Live descendants of `root` (children, grandchildren, …), not `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let table = table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for s in &table {
            if s.ppid == parent && s.state != 'Z' && !out.contains(&s.pid) {
                out.push(s.pid);
                frontier.push(s.pid);
            }
        }
    }
    out
}

/// The environment of a live process (`/proc/<pid>/environ`).
pub fn environ(pid: i32) -> Option<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                }
            })
            .collect(),
    )
}

/// The argv of a live process (`/proc/<pid>/cmdline`).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Live processes whose argv is exactly `argv` and that started at or
/// after `min_start` (clock ticks since boot), as `(pid, start)`.
pub fn find_by_argv(argv: &[&str], min_start: u64) -> Vec<(i32, u64)> {
    table()
        .into_iter()
        .filter(|s| s.state != 'Z' && s.start >= min_start)
        .filter(|s| cmdline(s.pid).is_some_and(|a| a == argv))
        .map(|s| (s.pid, s.start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        let s = stat(me).expect("own stat");
        assert!(s.ppid > 0);
        assert!(alive_since(me, s.start));
        assert!(!alive_since(me, s.start + 1));
        assert!(group_members(s.pgid).contains(&me));
        assert!(environ(me).is_some_and(|env| !env.is_empty()));
    }

    #[test]
    fn finds_a_child_and_a_grandchild() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let d = descendants(me);
            if d.len() >= 2 || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "child in {found:?}");
        assert!(found.len() >= 2, "grandchild sleep in {found:?}");
        for pid in found {
            // SAFETY: kill(2) on the sleep we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
