//! Containment with real processes: the escape the tree tag cannot catch,
//! limits, usage, and the fallback's known escape. Tests that need a
//! cgroup say so and return early where the host has none.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A containment of its own per test (`Box::leak`: jobs borrow it for the
/// process lifetime), so limits and modes do not leak between tests.
fn containment(setting: Setting, limits: Limits) -> &'static Containment {
    let id = format!("unit-test-{}", uuid::Uuid::new_v4());
    let c = Box::leak(Box::new(Containment::detect(&id, setting, limits)));
    c
}

/// Remove the test containment's parent cgroups (they are empty by now).
fn remove_parents(c: &Containment) {
    for p in &c.report().parents {
        let _ = remove_cgroup(Path::new(p));
    }
}

/// `(pid, start)` of every PID listed in `file` once it has `n` lines.
fn wait_pids(file: &Path, n: usize) -> Vec<(i32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            std::thread::sleep(Duration::from_millis(100));
            return pids
                .into_iter()
                .filter_map(|p| tree::read_stat(p).map(|s| (p, s.start_time)))
                .collect();
        }
        assert!(Instant::now() < deadline, "processes did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive_since(pid: i32, start: u64) -> bool {
    tree::read_stat(pid).is_some_and(|s| s.start_time == start && !s.is_zombie())
}

/// The hostile tree of issue 17, each escapee writing its own PID: a plain
/// background child, a `setsid` one, and two that also clear their
/// environment (one double-forked through a subshell). All ignore SIGTERM
/// (inherited `SIG_IGN`), so only the kill ends them.
fn hostile_script(pids: &Path) -> String {
    let f = pids.display();
    format!(
        "trap '' TERM; echo $$ >> {f}; sh -c 'echo $$ >> {f}; exec sleep 771' & \
         setsid sh -c 'echo $$ >> {f}; exec sleep 772' & \
         (env -i setsid /bin/sh -c 'echo $$ >> {f}; exec sleep 773' &); \
         (env -i /bin/sh -c 'setsid /bin/sh -c \"echo \\$\\$ >> {f}; exec sleep 774\" &' &); \
         sleep 30"
    )
}

fn spawn(job: &Arc<Job>, script: &str) -> std::process::Child {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    job.prepare_std(&mut cmd);
    let child = cmd.spawn().expect("spawn /bin/sh");
    job.started(child.id() as i32);
    child
}

/// The detected cgroup containment; `None` (said loudly) where the host
/// has no writable hierarchy.
fn cgroup_containment() -> Option<&'static Containment> {
    let c = containment(Setting::Auto, Limits::default());
    if !c.is_cgroup() {
        eprintln!(
            "SKIPPED: no writable cgroup hierarchy here: {}",
            c.report().reason
        );
        return None;
    }
    Some(c)
}

#[test]
fn a_cgroup_job_kills_what_left_the_tree_and_cleared_its_environment() {
    let Some(c) = cgroup_containment() else {
        return;
    };
    hostile_tree_is_killed(c);
}

/// The detected containment reduced to its v1 hierarchies, killing with
/// the freezer: the path of a host without cgroup v2 (or without
/// `cgroup.kill`). `None` where there is no v1 freezer.
fn v1_freezer_only() -> Option<&'static Containment> {
    let id = format!("unit-test-{}", uuid::Uuid::new_v4());
    let mut c = Containment::detect(&id, Setting::Auto, Limits::default());
    remove_parents(&c); // the v2 parent is not used; v1 ones are re-made
    c.places.retain(|p| p.version == Version::V1);
    if !c
        .places
        .iter()
        .any(|p| p.controllers.iter().any(|x| x == "freezer"))
    {
        return None;
    }
    for p in &c.places {
        std::fs::create_dir_all(&p.parent).unwrap();
    }
    c.report.parents = c
        .places
        .iter()
        .map(|p| p.parent.display().to_string())
        .collect();
    c.report.kill = KillMethod::Freezer;
    c.report.mode = "cgroup_v1";
    Some(Box::leak(Box::new(c)))
}

/// The detected containment reduced to cgroup v2, killing with
/// `cgroup.freeze` (a kernel without `cgroup.kill`).
fn v2_freeze_only() -> Option<&'static Containment> {
    let id = format!("unit-test-{}", uuid::Uuid::new_v4());
    let mut c = Containment::detect(&id, Setting::Auto, Limits::default());
    remove_parents(&c);
    c.places.retain(|p| p.version == Version::V2);
    let p = c.places.first()?;
    std::fs::create_dir_all(&p.parent).unwrap();
    if !p.parent.join("cgroup.freeze").exists() {
        return None;
    }
    c.report.parents = vec![p.parent.display().to_string()];
    c.report.kill = KillMethod::Freezer;
    c.report.mode = "cgroup_v2";
    Some(Box::leak(Box::new(c)))
}

#[test]
fn the_v2_freeze_kill_also_gets_every_escapee() {
    let Some(c) = v2_freeze_only() else {
        eprintln!("SKIPPED: no cgroup v2 with cgroup.freeze here");
        return;
    };
    hostile_tree_is_killed(c);
}

#[test]
fn the_v1_freezer_kill_also_gets_every_escapee() {
    let Some(c) = v1_freezer_only() else {
        eprintln!("SKIPPED: no cgroup v1 freezer here");
        return;
    };
    hostile_tree_is_killed(c);
}

fn hostile_tree_is_killed(c: &'static Containment) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pids");
    let job = c.job("unit-hostile");
    let mut child = spawn(&job, &hostile_script(&file));
    let pids = wait_pids(&file, 5);
    assert_eq!(pids.len(), 5, "all five processes alive: {pids:?}");
    let members = job.members();
    for (pid, _) in &pids {
        assert!(members.contains(pid), "{pid} is in the job's cgroup");
    }
    let started = Instant::now();
    let report = job.terminate(Duration::from_millis(300), &[]);
    let took = started.elapsed();
    let _ = child.wait();
    assert!(report.survivors.is_empty(), "{report:?}");
    assert!(report.killed, "SIGTERM is ignored: the kill path ran");
    let alive: Vec<_> = pids.iter().filter(|(p, s)| alive_since(*p, *s)).collect();
    assert!(alive.is_empty(), "survivors: {alive:?}");
    assert!(
        took < Duration::from_millis(300) + Duration::from_secs(1),
        "{took:?}"
    );
    let done = job.finish();
    assert!(done.survivors.is_empty());
    assert!(done.usage.cpu_time_ms.is_some(), "{:?}", done.usage);
    let path = job.cgroup_path().unwrap();
    assert!(!Path::new(&path).exists(), "{path} removed");
    remove_parents(c);
}

#[test]
fn the_tree_tag_fallback_reaps_the_tree_but_not_an_env_scrubbed_setsid_escapee() {
    let c = containment(Setting::Off, Limits::default());
    assert_eq!(c.report().mode, "tree_tag");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pids");
    let job = c.job("unit-fallback");
    assert!(job.env_tag().is_some());
    let mut child = spawn(&job, &hostile_script(&file));
    let pids = wait_pids(&file, 5);
    job.terminate(Duration::from_millis(300), &[]);
    let _ = child.wait();
    let alive: Vec<(i32, u64)> = pids
        .iter()
        .copied()
        .filter(|(p, s)| alive_since(*p, *s))
        .collect();
    // Known escape of the fallback: the two `env -i` + `setsid` sleepers
    // (773, 774). Everything else is reaped.
    for (p, s) in &alive {
        if alive_since(*p, *s) {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
    }
    let reaped: Vec<(i32, u64)> = pids
        .iter()
        .copied()
        .filter(|p| !alive.contains(p))
        .collect();
    assert_eq!(
        reaped.len(),
        3,
        "shell, 771 and 772 reaped: {pids:?} alive {alive:?}"
    );
    assert_eq!(
        alive.len(),
        2,
        "the documented escape (773, 774): {alive:?}"
    );
}

fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

#[test]
fn a_memory_limited_job_is_stopped_with_the_limit_named() {
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    };
    let c = containment(Setting::Auto, limits);
    if !c.is_cgroup() || !c.report().limits_unavailable.is_empty() {
        eprintln!("SKIPPED: no memory controller: {:?}", c.report());
        return;
    }
    let Some(py) = python() else {
        eprintln!("SKIPPED: python3 not installed");
        return;
    };
    let job = c.job("unit-memory");
    let mut child = spawn(
        &job,
        &format!("{py} -c \"x = b'a' * (256 << 20); print(len(x))\"; sleep 30"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the job was not stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = job.finish();
    assert_eq!(
        done.limit_hit,
        Some(LimitHit::Memory {
            limit_bytes: 64 << 20
        })
    );
    assert_eq!(done.usage.limit_exceeded, Some("memory"));
    let peak = done.usage.peak_memory_bytes.unwrap();
    assert!(
        peak <= (64 << 20) + (1 << 20) && peak > 32 << 20,
        "peak {peak}"
    );
    remove_parents(c);
}

#[test]
fn a_process_limited_fork_loop_is_stopped_and_the_machine_stays_usable() {
    let limits = Limits {
        max_processes: Some(50),
        ..Limits::default()
    };
    let c = containment(Setting::Auto, limits);
    if !c.is_cgroup() || !c.report().limits_unavailable.is_empty() {
        eprintln!("SKIPPED: no pids controller: {:?}", c.report());
        return;
    }
    let job = c.job("unit-pids");
    // Bounded: 200 sleepers at most, never an unbounded bomb.
    let mut child = spawn(
        &job,
        "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; wait",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the job was not stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = job.finish();
    assert_eq!(done.limit_hit, Some(LimitHit::Processes { limit: 50 }));
    assert!(done.survivors.is_empty());
    assert_eq!(done.usage.max_processes, Some(50));
    // The machine still forks.
    assert!(std::process::Command::new("/bin/true")
        .status()
        .unwrap()
        .success());
    remove_parents(c);
}

#[test]
fn the_pty_trampoline_places_the_program_in_the_job_cgroup_before_it_runs() {
    let Some(c) = cgroup_containment() else {
        return;
    };
    let job = c.job("unit-trampoline");
    // The program reports its own cgroups: it must already be in the job's.
    let (program, args) = job.trampoline(Path::new("/bin/cat"), &["/proc/self/cgroup".into()]);
    assert_eq!(program, Path::new("/bin/sh"));
    let out = std::process::Command::new(&program)
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let in_job = text.lines().filter(|l| l.ends_with(&job.name)).count();
    assert_eq!(
        in_job,
        c.report().parents.len(),
        "one line per hierarchy in use:\n{text}"
    );
    job.finish();
    remove_parents(c);
    // The fallback leaves the command as it is.
    let off = containment(Setting::Off, Limits::default()).job("unit-trampoline-off");
    let (program, args) = off.trampoline(Path::new("/bin/cat"), &["x".into()]);
    assert_eq!(
        (program.as_path(), args),
        (Path::new("/bin/cat"), vec!["x".to_string()])
    );
}

#[test]
fn the_cpu_weight_and_limits_are_written_into_the_job_cgroups() {
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        max_processes: Some(50),
        cpu_weight: Some(200),
    };
    let c = containment(Setting::Auto, limits);
    if !c.is_cgroup() || !c.report().limits_unavailable.is_empty() {
        eprintln!("SKIPPED: not every controller here: {:?}", c.report());
        remove_parents(c);
        return;
    }
    let job = c.job("unit-limits-written");
    let read = |file: &str| -> Option<String> {
        job.dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.path.join(file)).ok())
            .map(|t| t.trim().to_string())
    };
    // v2 names where the controller is there, else v1 names.
    let cpu = read("cpu.weight").or_else(|| read("cpu.shares"));
    assert!(
        cpu.as_deref() == Some("200") || cpu.as_deref() == Some("2048"),
        "{cpu:?}"
    );
    let mem = read("memory.max").or_else(|| read("memory.limit_in_bytes"));
    assert_eq!(mem.as_deref(), Some("67108864"));
    assert_eq!(read("pids.max").as_deref(), Some("50"));
    job.finish();
    remove_parents(c);
}
