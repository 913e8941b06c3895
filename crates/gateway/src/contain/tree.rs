//! The tree-tag fallback of [`super`]: where no cgroup hierarchy is
//! writable (or containment is off), a job's processes are found as a tree.
//!
//! Job children are started as session or process-group leaders. A tree is
//! every process in that session or process group, plus every descendant
//! of those found through parent links (which also catches a descendant
//! that called `setsid` itself). Termination sends SIGTERM (and, for PTY
//! sessions, SIGHUP as a closed terminal would), waits up to the grace, then
//! SIGKILLs whatever is left and keeps doing so until nothing of the tree is
//! alive. Zombies count as dead.
//!
//! A process that double-forks *and* calls `setsid` leaves both the session
//! and the parent chain. To catch it, every tree is also tagged with an
//! environment variable ([`TREE_TAG_ENV`] = a random id) that descendants
//! inherit: any process whose initial environment carries the tag (and
//! that started no earlier than the leader) belongs to the tree. **Known
//! escape:** a descendant that clears its environment (`env -i`) *and*
//! leaves the session and the parent chain (`setsid`, double fork) is not
//! found; only cgroup containment catches it.
//!
//! On Linux the tree is found through `/proc`; elsewhere only the process
//! group is signalled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Environment variable that tags every process of a job's tree (a random
/// id per job; not a secret, and not `PANORAMA_*`: children see no
/// gateway-internal variable).
pub const TREE_TAG_ENV: &str = "GATEWAY_JOB_TREE_ID";

/// A process tree: its leader, its environment tag, and the leader's start
/// time (a tagged process that started earlier is not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeId {
    pub leader: i32,
    /// The value of [`TREE_TAG_ENV`] given to the leader, if any.
    pub tag: Option<String>,
    /// The leader's start time in clock ticks (0 = unknown).
    pub min_start: u64,
}

impl TreeId {
    pub fn new(leader: i32, tag: Option<String>) -> Self {
        #[cfg(target_os = "linux")]
        let min_start = read_stat(leader).map_or(0, |s| s.start_time);
        #[cfg(not(target_os = "linux"))]
        let min_start = 0;
        TreeId {
            leader,
            tag,
            min_start,
        }
    }
}

/// A fresh tag value.
pub fn new_tree_tag() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: char,
    /// Start time in clock ticks since boot: tells a reused PID apart.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name may contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let pid = line.split_whitespace().next()?.parse().ok()?;
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] = state (field 3), ppid 4, pgrp 5, session 6, ..., starttime 22.
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(target_os = "linux")]
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(target_os = "linux")]
fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

#[cfg(target_os = "linux")]
fn has_tag(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle))
        .unwrap_or(false)
}

/// The tree of `leader` within `procs`: same session or process group as
/// `leader`, tagged (`tagged(pid)`), or a descendant of any of those.
/// Zombies excluded.
pub fn tree_members(
    leader: i32,
    procs: &[ProcStat],
    tagged: impl Fn(i32) -> bool,
) -> Vec<ProcStat> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut members: BTreeSet<i32> = procs
        .iter()
        .filter(|p| p.pid == leader || p.sid == leader || p.pgid == leader || tagged(p.pid))
        .map(|p| p.pid)
        .collect();
    let mut stack: Vec<i32> = members.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if members.insert(child) {
                stack.push(child);
            }
        }
    }
    procs
        .iter()
        .filter(|p| members.contains(&p.pid) && !p.is_zombie())
        .copied()
        .collect()
}

/// The live members of the tree right now.
pub fn live_tree(tree: &TreeId) -> Vec<ProcStat> {
    let leader = tree.leader;
    #[cfg(target_os = "linux")]
    {
        let needle = tree
            .tag
            .as_ref()
            .map(|t| format!("{TREE_TAG_ENV}={t}").into_bytes());
        let own = std::process::id() as i32;
        let procs = all_processes();
        let started: BTreeMap<i32, u64> = procs.iter().map(|p| (p.pid, p.start_time)).collect();
        tree_members(leader, &procs, |pid| {
            pid != own
                && started.get(&pid).is_some_and(|s| *s >= tree.min_start)
                && needle.as_deref().is_some_and(|n| has_tag(pid, n))
        })
        .into_iter()
        .filter(|p| p.pid != own)
        .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Only the group is known: report the leader while it answers.
        if unsafe { libc::kill(leader, 0) } == 0 {
            vec![ProcStat {
                pid: leader,
                ppid: 0,
                pgid: leader,
                sid: leader,
                state: 'R',
                start_time: 0,
            }]
        } else {
            Vec::new()
        }
    }
}

/// Whether `pid` is alive (not a zombie). Used by tests too.
pub fn pid_alive(pid: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        read_stat(pid).is_some_and(|s| !s.is_zombie())
    }
    #[cfg(not(target_os = "linux"))]
    {
        unsafe { libc::kill(pid, 0) == 0 }
    }
}

pub(crate) fn signal_members(leader: i32, members: &[ProcStat], signal: libc::c_int) {
    signal_group(leader, signal);
    for m in members {
        #[cfg(target_os = "linux")]
        {
            // Skip a PID that was reused since the scan.
            match read_stat(m.pid) {
                Some(now) if now.start_time == m.start_time && !now.is_zombie() => {}
                _ => continue,
            }
        }
        // SAFETY: kill(2) on a member of a tree we started.
        unsafe {
            libc::kill(m.pid, signal);
        }
    }
}

/// `signal` to every process of group `pgid` (errors such as ESRCH — the
/// group is gone — are ignored).
pub fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg(2) on a group we created; no memory is touched.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// What [`terminate_tree`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Termination {
    /// Every PID seen in the tree.
    pub pids: BTreeSet<i32>,
    /// SIGKILL was needed.
    pub killed: bool,
    /// PIDs still alive at the end (empty unless a process is unkillable).
    pub survivors: Vec<i32>,
}

/// SIGTERM (plus `extra`) to the whole tree, SIGKILL after `grace` (at
/// once for a zero grace). Blocks; call it from a blocking thread.
pub fn terminate_tree(tree: &TreeId, grace: Duration, extra: &[libc::c_int]) -> Termination {
    let leader = tree.leader;
    let mut report = Termination::default();
    if grace.is_zero() {
        // A kill: the group at once, before the (slower) scan.
        signal_group(leader, libc::SIGKILL);
    }
    let mut members = live_tree(tree);
    report.pids.extend(members.iter().map(|m| m.pid));
    if !grace.is_zero() {
        for signal in std::iter::once(libc::SIGTERM).chain(extra.iter().copied()) {
            signal_members(leader, &members, signal);
        }
        let deadline = Instant::now() + grace;
        loop {
            std::thread::sleep(Duration::from_millis(25));
            members = live_tree(tree);
            report.pids.extend(members.iter().map(|m| m.pid));
            if members.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
    }
    // SIGKILL until nothing is left; new children may appear while we scan.
    let kill_deadline = Instant::now() + Duration::from_secs(5);
    while !members.is_empty() {
        report.killed = true;
        signal_members(leader, &members, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
        members = live_tree(tree);
        report.pids.extend(members.iter().map(|m| m.pid));
        if Instant::now() >= kill_deadline {
            break;
        }
    }
    report.survivors = members.iter().map(|m| m.pid).collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgid: i32, sid: i32, state: char) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgid,
            sid,
            state,
            start_time: 1,
        }
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (we(ird) name) S 1 4242 4242 34816 4242 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.pid, s.ppid, s.pgid, s.sid, s.state),
            (4242, 1, 4242, 4242, 'S')
        );
        assert_eq!(s.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn tree_includes_session_group_and_descendants_but_not_zombies() {
        let procs = [
            p(10, 1, 10, 10, 'S'),  // leader
            p(11, 10, 11, 10, 'S'), // own group (job control), same session
            p(12, 11, 12, 12, 'S'), // setsid'd grandchild: found through ppid
            p(13, 1, 13, 10, 'S'),  // orphan still in the session
            p(14, 10, 10, 10, 'Z'), // zombie
            p(20, 1, 20, 20, 'S'),  // unrelated
        ];
        let members: Vec<i32> = tree_members(10, &procs, |_| false)
            .iter()
            .map(|m| m.pid)
            .collect();
        assert_eq!(members, [10, 11, 12, 13]);
        // A tagged double-forked daemon and its children join the tree.
        let mut procs = procs.to_vec();
        procs.push(p(30, 1, 30, 30, 'S'));
        procs.push(p(31, 30, 30, 30, 'S'));
        let members: Vec<i32> = tree_members(10, &procs, |pid| pid == 30)
            .iter()
            .map(|m| m.pid)
            .collect();
        assert_eq!(members, [10, 11, 12, 13, 30, 31]);
    }
}
