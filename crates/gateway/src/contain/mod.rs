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

mod cgroup_file;
mod cgroupfs;
pub mod detect;
mod job;
pub mod limits;
pub mod tree;
mod v1;
mod v2;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use cgroupfs::{cstring, kill_dirs, members, place_self, remove_cgroup, JobDir};
pub use detect::Version;
use job::JobState;
pub use job::{Finished, Job};
pub use limits::{LimitHit, Limits, ResourceUsage, Setting, SettingError, UsageTotals};
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
/// What ended jobs cost, by kind (the label a job was made with); read by
/// the gateway's `/metrics`.
static USAGE_TOTALS: Mutex<std::collections::BTreeMap<String, UsageTotals>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Adds an ended job's usage to its kind's totals.
pub(crate) fn record_usage(kind: &str, usage: &ResourceUsage) {
    lock(&USAGE_TOTALS)
        .entry(kind.to_string())
        .or_default()
        .add(usage);
}

/// The usage totals by job kind since this process started.
pub fn usage_totals() -> std::collections::BTreeMap<String, UsageTotals> {
    lock(&USAGE_TOTALS).clone()
}

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

#[cfg(test)]
mod process_tests;

#[cfg(test)]
mod tests {
    use super::cgroup_file::keyed_value;
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
