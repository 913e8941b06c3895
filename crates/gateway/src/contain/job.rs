//! One job's processes ([`Job`]): placed, signalled, stopped, killed,
//! measured and removed; and the watcher that stops a job at its limits.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::cgroupfs::{
    is_empty, kill_dirs, members, place_self, remove_cgroup, signal_pid, JobDir,
};
use super::limits::{LimitHit, Limits, ResourceUsage};
use super::tree::{self, Termination, TREE_TAG_ENV};
use super::{lock, v1, v2, Containment, Version, LIMIT_POLL, LIVE_JOBS, PROBE_LABEL};

/// `$0` of the trampoline shell (how its process is told apart).
const TRAMPOLINE_ARG0: &str = "panorama-job";

#[derive(Debug, Default)]
pub(super) struct JobState {
    /// The leader (the spawned child) as a tree: pid, tag, start time.
    leader: Option<tree::TreeId>,
    stop_at: Option<Instant>,
    limit_hit: Option<LimitHit>,
    finished: Option<Finished>,
    /// Tree-tag fallback: the members found by the last signal (each
    /// checked by start time before it is killed).
    last_seen: Vec<tree::ProcStat>,
}

/// What a job's processes did, once they are all gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub usage: ResourceUsage,
    pub limit_hit: Option<LimitHit>,
    /// PIDs still alive after the kill (empty unless one is unkillable).
    pub survivors: Vec<i32>,
}

/// One job's processes: its cgroup(s), or its tree tag.
#[derive(Debug)]
pub struct Job {
    pub(super) label: String,
    pub(super) name: String,
    pub(super) containment: &'static Containment,
    pub(super) dirs: Vec<JobDir>,
    pub(super) procs_files: Arc<Vec<CString>>,
    pub(super) tag: Option<String>,
    pub(super) limits: Limits,
    pub(super) state: Mutex<JobState>,
}

impl Job {
    /// The job runs in cgroups (not the tree-tag fallback).
    pub fn is_cgroup(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// `cgroup_v2`, `cgroup_v1`, `cgroup_hybrid` or `tree_tag`.
    pub fn mode(&self) -> &'static str {
        if self.is_cgroup() {
            self.containment.report.mode
        } else {
            "tree_tag"
        }
    }

    /// The job's main cgroup directory (v2 where used).
    pub fn cgroup_path(&self) -> Option<String> {
        self.dirs.first().map(|d| d.path.display().to_string())
    }

    /// The `(name, value)` to add to the child's environment: the tree tag
    /// in the fallback, nothing in a cgroup.
    pub fn env_tag(&self) -> Option<(String, String)> {
        self.tag
            .as_ref()
            .map(|t| (TREE_TAG_ENV.to_string(), t.clone()))
    }

    /// The hook that places the child in the job cgroup between fork and
    /// exec, so it never runs outside it.
    fn placement(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let files = Arc::clone(&self.procs_files);
        move || place_self(&files)
    }

    /// Prepare `cmd` to start inside the job: placed in its cgroup before
    /// exec, or tagged in the fallback.
    pub fn prepare(&self, cmd: &mut tokio::process::Command) {
        if let Some((k, v)) = self.env_tag() {
            cmd.env(k, v);
        }
        if self.is_cgroup() {
            // SAFETY: the hook only makes async-signal-safe calls.
            unsafe {
                cmd.pre_exec(self.placement());
            }
        }
    }

    /// [`Job::prepare`] for a `std::process::Command`.
    pub fn prepare_std(&self, cmd: &mut std::process::Command) {
        if let Some((k, v)) = self.env_tag() {
            cmd.env(k, v);
        }
        if self.is_cgroup() {
            // SAFETY: the hook only makes async-signal-safe calls.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, self.placement());
            }
        }
    }

    /// Waits (bounded) until the trampolined process `pid` has placed
    /// itself and executed the real program (or exited), so that startup
    /// checks measure the program, not the placement.
    pub async fn trampoline_done(&self, pid: i32) {
        if !self.is_cgroup() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let marker = TRAMPOLINE_ARG0.as_bytes();
        while Instant::now() < deadline {
            let still = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == marker))
                .unwrap_or(false);
            if !still || !tree::pid_alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// For spawners without a `pre_exec` hook (the PTY library): the
    /// program and arguments that first place the process in the job
    /// cgroup, then `exec` `program args…` in the same process.
    pub fn trampoline(&self, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
        if !self.is_cgroup() {
            return (program.to_path_buf(), args.to_vec());
        }
        let script: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo 0 > '{}'", d.path.join("cgroup.procs").display()))
            .chain(std::iter::once("exec \"$@\"".to_string()))
            .collect();
        let mut argv = vec![
            "-c".to_string(),
            script.join(" && "),
            TRAMPOLINE_ARG0.to_string(),
            program.display().to_string(),
        ];
        argv.extend(args.iter().cloned());
        (PathBuf::from("/bin/sh"), argv)
    }

    /// The child `pid` started: it leads the job (and its own process group
    /// or session). Starts the limit watch where limits are set.
    pub fn started(self: &Arc<Self>, pid: i32) {
        lock(&self.state).leader = Some(tree::TreeId::new(pid, self.tag.clone()));
        if self.is_cgroup() && !self.limits.is_empty() {
            watch_limits(self);
        }
    }

    fn leader(&self) -> Option<tree::TreeId> {
        lock(&self.state).leader.clone()
    }

    /// The job's live processes.
    pub fn members(&self) -> Vec<i32> {
        if self.is_cgroup() {
            members(&self.dirs)
        } else {
            match self.leader() {
                Some(t) => tree::live_tree(&t).iter().map(|p| p.pid).collect(),
                None => Vec::new(),
            }
        }
    }

    /// Anything of the job is alive (zombies do not count).
    pub fn alive(&self) -> bool {
        if self.is_cgroup() {
            !is_empty(&self.dirs)
        } else {
            !self.members().is_empty()
        }
    }

    /// `signal` to the leader's group and to every process of the job.
    /// Blocking in the fallback (reads `/proc`).
    pub fn signal(&self, signal: libc::c_int) {
        let leader = self.leader();
        if let Some(t) = &leader {
            tree::signal_group(t.leader, signal);
        }
        if self.is_cgroup() {
            for pid in members(&self.dirs) {
                signal_pid(pid, signal);
            }
        } else if let Some(t) = leader {
            let found = tree::live_tree(&t);
            tree::signal_members(t.leader, &found, signal);
            lock(&self.state).last_seen = found;
        }
    }

    /// A stop (cancel, shutdown) was requested: SIGTERM the job now and
    /// remember when, so the SIGKILL deadline counts from here however late
    /// the job's task gets to it. False when one was already requested.
    pub fn request_stop(self: &Arc<Self>) -> bool {
        {
            let mut st = lock(&self.state);
            if st.stop_at.is_some() {
                return false;
            }
            st.stop_at = Some(Instant::now());
        }
        let job = Arc::clone(self);
        let term = move || job.signal(libc::SIGTERM);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(term)),
            Err(_) => drop(std::thread::spawn(term)),
        }
        true
    }

    /// When a stop was requested, if one was.
    pub fn stop_requested_at(&self) -> Option<Instant> {
        lock(&self.state).stop_at
    }

    /// SIGKILL everything of the job now and wait until it is gone;
    /// returns the survivors. Blocking.
    pub fn kill(&self) -> Vec<i32> {
        if self.is_cgroup() {
            kill_dirs(&self.dirs, self.containment.report.kill)
        } else {
            match self.leader() {
                Some(t) => {
                    // The members seen at the last signal die at once; the
                    // (slow) `/proc` scan then finds the rest.
                    let seen = std::mem::take(&mut lock(&self.state).last_seen);
                    tree::signal_members(t.leader, &seen, libc::SIGKILL);
                    tree::terminate_tree(&t, Duration::ZERO, &[]).survivors
                }
                None => Vec::new(),
            }
        }
    }

    /// SIGTERM (plus `extra`) to the whole job, SIGKILL after `grace`
    /// (counted from a requested stop, if earlier), wait until empty.
    /// Blocking.
    pub fn terminate(&self, grace: Duration, extra: &[libc::c_int]) -> Termination {
        let started = self.stop_requested_at().unwrap_or_else(Instant::now);
        let mut report = Termination::default();
        if !self.is_cgroup() {
            if let Some(t) = self.leader() {
                let left = grace.saturating_sub(started.elapsed());
                return tree::terminate_tree(&t, left, extra);
            }
            return report;
        }
        report.pids.extend(self.members());
        for signal in std::iter::once(libc::SIGTERM).chain(extra.iter().copied()) {
            self.signal(signal);
        }
        let deadline = started + grace;
        while Instant::now() < deadline {
            if is_empty(&self.dirs) {
                return report;
            }
            report.pids.extend(self.members());
            std::thread::sleep(Duration::from_millis(10));
        }
        report.pids.extend(self.members());
        report.killed = !is_empty(&self.dirs);
        report.survivors = self.kill();
        report
    }

    /// The limit the job ran into, if any.
    pub fn limit_hit(&self) -> Option<LimitHit> {
        lock(&self.state).limit_hit
    }

    fn check_limits(&self) -> Option<LimitHit> {
        self.dirs.iter().find_map(|d| match d.version {
            Version::V2 => v2::limit_hit(&d.path, &self.limits),
            Version::V1 => v1::limit_hit(&d.path, &d.controllers, &self.limits),
        })
    }

    fn usage(&self) -> ResourceUsage {
        let mut usage = ResourceUsage {
            containment: self.mode(),
            ..ResourceUsage::default()
        };
        for d in &self.dirs {
            let (mem, cpu_us, procs) = match d.version {
                Version::V2 => v2::usage(&d.path),
                Version::V1 => v1::usage(&d.path, &d.controllers),
            };
            usage.peak_memory_bytes = usage.peak_memory_bytes.or(mem);
            usage.cpu_time_ms = usage.cpu_time_ms.or(cpu_us.map(|us| us / 1_000));
            usage.max_processes = usage.max_processes.or(procs);
        }
        usage
    }

    /// The job is over: kill what is left of it, read its usage, remove its
    /// cgroups (logged). Idempotent; blocking.
    pub fn finish(&self) -> Finished {
        if let Some(done) = lock(&self.state).finished.clone() {
            return done;
        }
        let survivors = if self.alive() {
            self.kill()
        } else {
            Vec::new()
        };
        let hit = {
            let mut st = lock(&self.state);
            if st.limit_hit.is_none() {
                st.limit_hit = self.check_limits();
            }
            st.limit_hit
        };
        let mut usage = self.usage();
        usage.limit_exceeded = hit.map(|h| h.name());
        for d in &self.dirs {
            if let Err(e) = remove_cgroup(&d.path) {
                tracing::warn!(job = %self.label, cgroup = %d.path.display(), error = %e, "Could not remove a job cgroup");
            }
        }
        if !survivors.is_empty() {
            tracing::error!(job = %self.label, survivors = ?survivors, "Job processes survived the kill");
        }
        if self.label == PROBE_LABEL {
            // Every 30 s per provider: not worth an info line each.
            tracing::debug!(job = %self.label, cgroup = %self.name, resource_usage = %usage.to_value(), "Job processes ended");
        } else {
            tracing::info!(job = %self.label, cgroup = %self.name, resource_usage = %usage.to_value(), "Job processes ended");
        }
        super::record_usage(&self.label, &usage);
        let done = Finished {
            usage,
            limit_hit: hit,
            survivors,
        };
        lock(&self.state).finished = Some(done.clone());
        lock(&LIVE_JOBS).remove(&self.name);
        done
    }

    /// [`Job::finish`] off the async runtime.
    pub async fn finish_async(self: &Arc<Self>) -> Finished {
        let job = Arc::clone(self);
        match tokio::task::spawn_blocking(move || job.finish()).await {
            Ok(done) => done,
            Err(_) => self.finish(),
        }
    }

    /// [`Job::terminate`] off the async runtime.
    pub async fn terminate_async(self: &Arc<Self>, grace: Duration) -> Termination {
        let job = Arc::clone(self);
        tokio::task::spawn_blocking(move || job.terminate(grace, &[]))
            .await
            .unwrap_or_default()
    }

    /// [`Job::alive`] off the async runtime (the fallback scans `/proc`).
    pub async fn alive_async(self: &Arc<Self>) -> bool {
        let job = Arc::clone(self);
        tokio::task::spawn_blocking(move || job.alive())
            .await
            .unwrap_or(true)
    }
}

impl Drop for Job {
    /// A job dropped without [`Job::finish`] (its task was aborted) is
    /// killed and removed now.
    fn drop(&mut self) {
        let unfinished = lock(&self.state).finished.is_none();
        if unfinished && (self.is_cgroup() || self.leader().is_some()) {
            self.finish();
        }
    }
}

// ------------------------------------------------------ limit watching

static WATCHED: Mutex<Vec<Weak<Job>>> = Mutex::new(Vec::new());
static WATCHER: OnceLock<()> = OnceLock::new();

/// Check `job` for a limit hit every [`LIMIT_POLL`] until it finishes;
/// on a hit, remember it and kill the job (the job's own task then sees
/// its child end and reports [`Job::limit_hit`]).
fn watch_limits(job: &Arc<Job>) {
    lock(&WATCHED).push(Arc::downgrade(job));
    WATCHER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("job-limits".into())
            .spawn(|| loop {
                std::thread::sleep(LIMIT_POLL);
                let jobs: Vec<Arc<Job>> = {
                    let mut w = lock(&WATCHED);
                    w.retain(|j| {
                        j.upgrade()
                            .is_some_and(|j| lock(&j.state).finished.is_none())
                    });
                    w.iter().filter_map(Weak::upgrade).collect()
                };
                for job in jobs {
                    if job.limit_hit().is_some() {
                        continue;
                    }
                    if let Some(hit) = job.check_limits() {
                        lock(&job.state).limit_hit = Some(hit);
                        tracing::warn!(job = %job.label, cgroup = %job.name, limit = hit.name(), "{}", hit.message());
                        job.kill();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Could not start the job limit watcher; limits are enforced by the kernel only");
        }
    });
}
