//! Process containment: the one place where job processes are placed,
//! stopped, killed, limited and measured — for agent runs, model runs,
//! `shell_exec`, shell sessions and diagnostics.
//!
//! Every job that spawns processes gets a [`Job`]. Where the host offers a
//! writable cgroup hierarchy, the job's child is placed in a fresh cgroup of
//! its own *before it executes* (a `pre_exec` hook writes the child into
//! `cgroup.procs`; PTY children go through a `/bin/sh` trampoline that does
//! the same before `exec`), so every descendant — also one that scrubs its
//! environment and calls `setsid` — stays in it. Stopping a job signals
//! every process of the cgroup; killing it uses `cgroup.kill` (v2), else
//! freeze + SIGKILL + thaw (v1 freezer or v2 `cgroup.freeze`), else SIGKILL
//! in a loop, and waits
//! until the cgroup is empty before removing it.
//!
//! One parent cgroup per gateway (named from its config directory), job
//! cgroups `job-<uuid>` below it. At start the gateway empties and removes
//! the job cgroups a previous process left (a `kill -9`), see [`init`].
//!
//! Detection ([`Containment::detect`]) prefers v2 for membership and kill
//! and adds the v1 hierarchies of controllers v2 does not have here
//! (memory, pids, cpu, cpuacct, freezer: a "hybrid" host). With no writable
//! hierarchy, or with `PANORAMA_GATEWAY_CONTAINMENT=off`, jobs fall back to
//! the [`tree`] tag: process group/session + descendants + an environment
//! tag (which a process that clears its environment and calls `setsid`
//! escapes).
//!
//! Optional limits (memory, processes, CPU weight; [`limits`]) are written
//! into each job cgroup; a watcher stops a job that ran into one, and the
//! job ends with an error naming the limit. [`Job::finish`] reads the
//! job's [`ResourceUsage`] before the cgroup is removed.

pub mod detect;
pub mod limits;
pub mod tree;
mod v1;
mod v2;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use detect::Version;
pub use limits::{LimitHit, Limits, ResourceUsage, Setting, SettingError};
pub use tree::{pid_alive, Termination, TREE_TAG_ENV};

/// The key of the containment report in the heartbeat's
/// `hosts.gateway.metadata`.
pub const CAPABILITY_KEY: &str = "process_containment";
/// The file in the config directory where the running gateway records its
/// containment for `status --json`.
pub const STATE_FILE: &str = "containment.json";

/// The job label of provider `--version`/`--help` probes.
pub const PROBE_LABEL: &str = "provider_probe";

/// SIGTERM → SIGKILL grace for timeouts and shutdown of job children (the
/// spec's `PROCESS_KILL_GRACE_MS`, control-plane.md §15.2).
pub const KILL_GRACE: Duration = Duration::from_millis(2_000);
/// How long a kill may take to empty a job (then its survivors are reported).
const EMPTY_WAIT: Duration = Duration::from_secs(5);
/// How often running jobs with limits are checked for a limit hit.
const LIMIT_POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- files

/// Write `value` to a cgroup file (one `write(2)`, as the kernel wants).
pub(crate) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// A file holding one number (`max` and unreadable → `None`).
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`cgroup.events`,
/// `memory.events`, `cpu.stat`, `memory.oom_control`).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The PIDs in `dir/cgroup.procs` and in every sub-cgroup below it (a job
/// running as root may create some), zombies excluded.
fn procs_recursive(dir: &Path) -> Vec<i32> {
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
fn remove_cgroup(dir: &Path) -> io::Result<()> {
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

fn signal_pid(pid: i32, signal: libc::c_int) {
    if pid > 1 && pid != std::process::id() as i32 {
        // SAFETY: kill(2) on a member of a job cgroup we created.
        unsafe { libc::kill(pid, signal) };
    }
}

// ----------------------------------------------------------- detection

/// One hierarchy in use: where this gateway's parent cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    version: Version,
    controllers: Vec<String>,
    parent: PathBuf,
}

/// How job processes are found and killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillMethod {
    /// v2 `cgroup.kill`.
    CgroupKill,
    /// Freeze (v1 freezer, else v2 `cgroup.freeze`), SIGKILL every task,
    /// thaw.
    Freezer,
    /// SIGKILL every task of the cgroup until it is empty.
    SignalLoop,
    /// The tree-tag fallback (process group, descendants, env tag).
    TreeTag,
}

/// What [`Containment::detect`] chose, as reported by `doctor`,
/// `status --json` and the heartbeat (`hosts.gateway.metadata.process_containment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `cgroup_v2`, `cgroup_v1`, `cgroup_hybrid` or `tree_tag`.
    pub mode: &'static str,
    pub kill: KillMethod,
    /// Why this mode (and, for `tree_tag`, why no cgroup hierarchy).
    pub reason: String,
    /// `auto` or `off` (`PANORAMA_GATEWAY_CONTAINMENT`).
    pub setting: &'static str,
    /// The gateway's parent cgroup in each hierarchy in use.
    pub parents: Vec<String>,
    /// Controllers available to job cgroups.
    pub controllers: Vec<String>,
    /// Limits applied to every job.
    pub limits: Limits,
    /// Limits set but not enforceable here (no controller).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits_unavailable: Vec<&'static str>,
}

/// The containment in force for this gateway process.
#[derive(Debug)]
pub struct Containment {
    places: Vec<Place>,
    report: Report,
}

/// Place the calling process's future child into each `cgroup.procs`.
/// Runs between `fork` and `exec`: only async-signal-safe calls.
fn place_self(files: &[CString]) -> io::Result<()> {
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

fn cstring(path: &Path) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).ok()
}

/// Prove `dirs` usable: a real `/bin/true` placed in a probe cgroup under
/// each before exec must run and exit 0. Removes the probe cgroups.
fn probe(parents: &[&Path]) -> Result<(), String> {
    let name = format!("probe-{}", std::process::id());
    let dirs: Vec<PathBuf> = parents.iter().map(|p| p.join(&name)).collect();
    let result = (|| {
        let mut files = Vec::new();
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            files.push(cstring(&d.join("cgroup.procs")).ok_or("path with NUL")?);
        }
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: place_self only makes async-signal-safe calls.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || place_self(&files));
        }
        let status = cmd
            .status()
            .map_err(|e| format!("placing a process failed: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("probe process ended with {status}"))
        }
    })();
    for d in &dirs {
        let _ = remove_cgroup(d);
    }
    result
}

impl Containment {
    /// The tree-tag fallback, for `reason`.
    fn tree_tag(setting: Setting, limits: Limits, reason: String) -> Self {
        let mut limits_unavailable = Vec::new();
        if limits.memory_bytes.is_some() {
            limits_unavailable.push("memory");
        }
        if limits.max_processes.is_some() {
            limits_unavailable.push("processes");
        }
        if limits.cpu_weight.is_some() {
            limits_unavailable.push("cpu_weight");
        }
        Containment {
            places: Vec::new(),
            report: Report {
                mode: "tree_tag",
                kill: KillMethod::TreeTag,
                reason,
                setting: setting.as_str(),
                parents: Vec::new(),
                controllers: Vec::new(),
                limits,
                limits_unavailable,
            },
        }
    }

    /// Find and prove the best writable hierarchy for a gateway whose
    /// config directory is `identity`. Never fails: the fallback is the
    /// tree tag, with the reason.
    pub fn detect(identity: &str, setting: Setting, limits: Limits) -> Self {
        if setting == Setting::Off {
            return Self::tree_tag(setting, limits, format!("{}=off", limits::CONTAINMENT_ENV));
        }
        if !cfg!(target_os = "linux") {
            return Self::tree_tag(setting, limits, "cgroups exist only on Linux".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let hierarchies = detect::hierarchies(&mountinfo, &own);
        if hierarchies.is_empty() {
            return Self::tree_tag(setting, limits, "no cgroup hierarchy is mounted".into());
        }
        let name = detect::parent_name(identity);
        let mut problems = Vec::new();
        let mut v2_place = None;
        let mut v1_places = Vec::new();
        for h in &hierarchies {
            let label = match h.version {
                Version::V2 => format!("cgroup v2 at {}", h.mount_point.display()),
                Version::V1 => format!("cgroup v1 {}", h.controllers.join(",")),
            };
            if !h.rw {
                problems.push(format!("{label} is mounted read-only"));
                continue;
            }
            let parent = h.own_dir.join(&name);
            if !detect::is_plain_path(&parent) {
                problems.push(format!("{label}: unusual path {}", parent.display()));
                continue;
            }
            let mut controllers = h.controllers.clone();
            if h.version == Version::V2 {
                let is_root = h.own_dir == h.mount_point;
                controllers = v2::delegate_controllers(&h.own_dir, is_root);
            }
            if let Err(e) = std::fs::create_dir_all(&parent) {
                problems.push(format!("{label}: cannot create {}: {e}", parent.display()));
                continue;
            }
            if h.version == Version::V2 {
                v2::enable_for_children(&parent);
            }
            if let Err(e) = probe(&[&parent]) {
                problems.push(format!("{label}: {e}"));
                continue;
            }
            let place = Place {
                version: h.version,
                controllers,
                parent,
            };
            match h.version {
                Version::V2 => v2_place = Some(place),
                Version::V1 => v1_places.push(place),
            }
        }
        let mut places = Vec::new();
        let v2_controllers = v2_place
            .as_ref()
            .map(|p| p.controllers.clone())
            .unwrap_or_default();
        if let Some(p) = v2_place {
            places.push(p);
        }
        // v1 hierarchies only for what v2 does not offer here.
        for p in v1_places {
            if p.controllers.iter().any(|c| !v2_controllers.contains(c)) {
                places.push(p);
            }
        }
        if places.is_empty() {
            return Self::tree_tag(
                setting,
                limits,
                format!("no writable cgroup hierarchy: {}", problems.join("; ")),
            );
        }
        let has_v2 = places.iter().any(|p| p.version == Version::V2);
        let has_v1 = places.iter().any(|p| p.version == Version::V1);
        let has = |c: &str| places.iter().any(|p| p.controllers.iter().any(|x| x == c));
        let kill = if has_v2
            && places
                .iter()
                .any(|p| p.version == Version::V2 && p.parent.join("cgroup.kill").exists())
        {
            KillMethod::CgroupKill
        } else if has("freezer")
            || places
                .iter()
                .any(|p| p.version == Version::V2 && p.parent.join("cgroup.freeze").exists())
        {
            KillMethod::Freezer
        } else {
            KillMethod::SignalLoop
        };
        let mode = match (has_v2, has_v1) {
            (true, true) => "cgroup_hybrid",
            (true, false) => "cgroup_v2",
            _ => "cgroup_v1",
        };
        let mut limits_unavailable = Vec::new();
        for (set, controller, name) in [
            (limits.memory_bytes.is_some(), "memory", "memory"),
            (limits.max_processes.is_some(), "pids", "processes"),
            (limits.cpu_weight.is_some(), "cpu", "cpu_weight"),
        ] {
            if set && !has(controller) {
                limits_unavailable.push(name);
            }
        }
        let mut controllers: Vec<String> =
            places.iter().flat_map(|p| p.controllers.clone()).collect();
        controllers.sort();
        controllers.dedup();
        let reason = match mode {
            "cgroup_hybrid" => {
                "cgroup v2 for membership and kill, cgroup v1 for the controllers v2 lacks here"
                    .to_string()
            }
            "cgroup_v2" => "cgroup v2 is writable".to_string(),
            _ => "only cgroup v1 controllers are writable".to_string(),
        };
        let reason = if problems.is_empty() {
            reason
        } else {
            format!("{reason} (not used: {})", problems.join("; "))
        };
        Containment {
            report: Report {
                mode,
                kill,
                reason,
                setting: setting.as_str(),
                parents: places
                    .iter()
                    .map(|p| p.parent.display().to_string())
                    .collect(),
                controllers,
                limits,
                limits_unavailable,
            },
            places,
        }
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn report_value(&self) -> serde_json::Value {
        serde_json::to_value(&self.report).unwrap_or(serde_json::Value::Null)
    }

    pub fn is_cgroup(&self) -> bool {
        !self.places.is_empty()
    }

    fn dirs_named(&self, name: &str) -> Vec<JobDir> {
        self.places
            .iter()
            .map(|p| JobDir {
                version: p.version,
                controllers: p.controllers.clone(),
                path: p.parent.join(name),
            })
            .collect()
    }

    /// Empty and remove every job cgroup under this gateway's parents: the
    /// leftovers of a previous process of this gateway (killed with
    /// SIGKILL, or crashed). Only call it while no job of this process
    /// runs. Returns `(job cgroups, processes killed)`.
    pub fn sweep_leftovers(&self) -> (usize, usize) {
        let mut names: Vec<String> = Vec::new();
        for p in &self.places {
            if let Ok(entries) = std::fs::read_dir(&p.parent) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let leftover =
                        name.starts_with(detect::JOB_PREFIX) || name.starts_with("probe-");
                    if leftover && e.file_type().is_ok_and(|t| t.is_dir()) && !names.contains(&name)
                    {
                        names.push(name);
                    }
                }
            }
        }
        let mut killed = 0;
        for name in &names {
            let dirs = self.dirs_named(name);
            let pids = members(&dirs);
            killed += pids.len();
            let survivors = kill_dirs(&dirs, self.report.kill);
            if !survivors.is_empty() {
                tracing::error!(cgroup = %name, survivors = ?survivors, "Leftover job cgroup of an earlier gateway process could not be emptied");
            }
            for d in &dirs {
                if let Err(e) = remove_cgroup(&d.path) {
                    tracing::warn!(cgroup = %d.path.display(), error = %e, "Could not remove a leftover job cgroup");
                }
            }
            tracing::info!(cgroup = %name, pids = ?pids, "Reaped a job cgroup left by an earlier gateway process");
        }
        (names.len(), killed)
    }

    /// At the end of a shutdown: empty and remove job cgroups still there
    /// (a job whose task was aborted), then this gateway's parent cgroups
    /// (left in place if something else is in them).
    pub fn release(&self) {
        if !self.is_cgroup() {
            return;
        }
        // Only this process's jobs: another live process of this gateway
        // (refused to take over) keeps its own.
        let names: Vec<String> = lock(&LIVE_JOBS).iter().cloned().collect();
        for name in names {
            let dirs = self.dirs_named(&name);
            let survivors = kill_dirs(&dirs, self.report.kill);
            if !survivors.is_empty() {
                tracing::error!(cgroup = %name, survivors = ?survivors, "Job processes survived the shutdown kill");
            }
            for d in &dirs {
                let _ = remove_cgroup(&d.path);
            }
            lock(&LIVE_JOBS).remove(&name);
        }
        for p in &self.places {
            if let Err(e) = std::fs::remove_dir(&p.parent) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(cgroup = %p.parent.display(), error = %e, "Parent cgroup kept");
                }
            }
        }
    }

    /// A new job: its own cgroup (or a tree tag where there is none, or
    /// where creating the cgroup fails — logged).
    pub fn job(&'static self, label: &str) -> Arc<Job> {
        self.job_with_limits(label, self.report.limits)
    }

    pub fn job_with_limits(&'static self, label: &str, limits: Limits) -> Arc<Job> {
        let name = format!("{}{}", detect::JOB_PREFIX, uuid::Uuid::new_v4().simple());
        let mut job = Job {
            label: label.to_string(),
            name,
            containment: self,
            dirs: Vec::new(),
            procs_files: Arc::new(Vec::new()),
            tag: None,
            limits,
            state: Mutex::new(JobState::default()),
        };
        if self.is_cgroup() {
            let dirs = self.dirs_named(&job.name);
            let mut created = Vec::new();
            let mut failure = None;
            for d in &dirs {
                match std::fs::create_dir(&d.path) {
                    Ok(()) => created.push(d.path.clone()),
                    Err(e) => {
                        failure = Some(format!("{}: {e}", d.path.display()));
                        break;
                    }
                }
                let missing = match d.version {
                    Version::V2 => v2::set_limits(&d.path, &limits),
                    Version::V1 => v1::set_limits(&d.path, &d.controllers, &limits),
                };
                if d.version == Version::V2 && !missing.is_empty() && !limits.is_empty() {
                    tracing::debug!(cgroup = %d.path.display(), missing = ?missing, "Limits not set in the v2 job cgroup (controller elsewhere or absent)");
                }
            }
            let files: Option<Vec<CString>> = dirs
                .iter()
                .map(|d| cstring(&d.path.join("cgroup.procs")))
                .collect();
            match (failure, files) {
                (None, Some(files)) => {
                    job.dirs = dirs;
                    job.procs_files = Arc::new(files);
                    lock(&LIVE_JOBS).insert(job.name.clone());
                }
                (failure, _) => {
                    for p in created {
                        let _ = remove_cgroup(&p);
                    }
                    tracing::warn!(job = %label, error = ?failure, "Could not create the job's cgroup; this job falls back to the process-tree tag");
                }
            }
        }
        if job.dirs.is_empty() {
            job.tag = Some(tree::new_tree_tag());
        }
        Arc::new(job)
    }
}

// ---------------------------------------------------------- the global

static CURRENT: OnceLock<Containment> = OnceLock::new();
/// Names of the job cgroups this process created and has not removed yet.
static LIVE_JOBS: Mutex<std::collections::BTreeSet<String>> =
    Mutex::new(std::collections::BTreeSet::new());

fn settings_from_env() -> Result<(Setting, Limits), SettingError> {
    let env = crate::paths::process_env;
    let setting = limits::parse_setting(env(limits::CONTAINMENT_ENV).as_deref())?;
    let limits = Limits::from_env(env)?;
    Ok((setting, limits))
}

/// Detect the containment for the gateway whose config directory is
/// `config_dir` (settings from the environment) and, with `sweep`, reap
/// what an earlier process of this gateway left. Call once at start,
/// before any job; a bad setting is an error the operator must fix.
pub fn init(config_dir: &Path, sweep: bool) -> Result<&'static Containment, SettingError> {
    let (setting, limits) = settings_from_env()?;
    let identity = std::fs::canonicalize(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let c = CURRENT
        .get_or_init(|| Containment::detect(&identity.display().to_string(), setting, limits));
    if sweep && c.is_cgroup() {
        let (cgroups, pids) = c.sweep_leftovers();
        if cgroups > 0 {
            tracing::warn!(
                cgroups,
                pids,
                "Reaped job cgroups left by an earlier gateway process"
            );
        }
    }
    Ok(c)
}

/// The containment in force ([`init`]'s, or — outside the gateway's
/// runtime, e.g. in unit tests — one detected for the default identity
/// with the environment's settings; a bad setting falls back to the tree
/// tag with the error as the reason).
pub fn current() -> &'static Containment {
    CURRENT.get_or_init(|| {
        let identity = std::env::var("HOME").unwrap_or_default();
        match settings_from_env() {
            Ok((setting, limits)) => Containment::detect(&identity, setting, limits),
            Err(e) => Containment::tree_tag(Setting::Auto, Limits::default(), e.to_string()),
        }
    })
}

/// The containment report for the gateway of `config_dir` as a start
/// would choose it now (for `doctor` and `status`); a bad setting is
/// reported as `{"mode": null, "error": …}`.
pub fn describe(config_dir: &Path) -> serde_json::Value {
    match init(config_dir, false) {
        Ok(c) => c.report_value(),
        Err(e) => serde_json::json!({"mode": null, "error": e.to_string()}),
    }
}

/// A new job in the current containment.
pub fn job(label: &str) -> Arc<Job> {
    current().job(label)
}

// ---------------------------------------------------------------- jobs

#[derive(Debug, Clone, PartialEq, Eq)]
struct JobDir {
    version: Version,
    controllers: Vec<String>,
    path: PathBuf,
}

fn members(dirs: &[JobDir]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs.iter().flat_map(|d| procs_recursive(&d.path)).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn is_empty(dirs: &[JobDir]) -> bool {
    match dirs.iter().find(|d| d.version == Version::V2) {
        // `populated` also counts sub-cgroups; a missing file means gone.
        Some(d) => !v2::populated(&d.path).unwrap_or(false) && members(dirs).is_empty(),
        None => members(dirs).is_empty(),
    }
}

fn wait_empty(dirs: &[JobDir], limit: Duration) -> bool {
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
fn kill_dirs(dirs: &[JobDir], method: KillMethod) -> Vec<i32> {
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

#[derive(Debug, Default)]
struct JobState {
    /// The leader (the spawned child) as a tree: pid, tag, start time.
    leader: Option<tree::TreeId>,
    stop_at: Option<Instant>,
    limit_hit: Option<LimitHit>,
    finished: Option<Finished>,
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
    label: String,
    name: String,
    containment: &'static Containment,
    dirs: Vec<JobDir>,
    procs_files: Arc<Vec<CString>>,
    tag: Option<String>,
    limits: Limits,
    state: Mutex<JobState>,
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
            "panorama-job".to_string(),
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
            tree::signal_members(t.leader, &tree::live_tree(&t), signal);
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
                Some(t) => tree::terminate_tree(&t, Duration::ZERO, &[]).survivors,
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

#[cfg(test)]
mod process_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let events = "populated 1\nfrozen 0\n";
        assert_eq!(keyed_value(events, "populated"), Some(1));
        assert_eq!(keyed_value(events, "frozen"), Some(0));
        assert_eq!(keyed_value(events, "missing"), None);
        let cpu = "usage_usec 12345\nuser_usec 10000\n";
        assert_eq!(keyed_value(cpu, "usage_usec"), Some(12345));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
    }

    #[test]
    fn off_setting_is_the_tree_tag_with_its_reason() {
        let c = Containment::detect("/x", Setting::Off, Limits::default());
        assert!(!c.is_cgroup());
        assert_eq!(c.report().mode, "tree_tag");
        assert_eq!(c.report().reason, "PANORAMA_GATEWAY_CONTAINMENT=off");
        let v = c.report_value();
        assert_eq!(v["kill"], "tree_tag");
        assert_eq!(v["setting"], "off");
    }
}
