//! Auto-restart on upgrade (runtime.md §4.7, control-plane.md §14).
//!
//! At startup the runtime captures the path of its own executable and a
//! fingerprint of the file (device, inode, size, mtime). Every
//! `PANORAMA_GATEWAY_RESTART_CHECK_MS` (default 30 000) it fingerprints the
//! path again; an installer that replaces the binary (a rename over it, or
//! a rewrite) changes the fingerprint. A change must be seen on two
//! consecutive checks, so a copy still in progress is not executed.
//!
//! Then, once: stop accepting jobs and clear the pending ones, log
//! `Gateway update detected; draining before restart`, sync the heartbeat
//! (→ `pending`), and wait until no job is active (or, when
//! `PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS` > 0, until that long has passed;
//! remaining work is then stopped by the shutdown path). The runtime then
//! runs the shutdown sequence **without** the `offline` heartbeat and
//! re-executes the same path with the same arguments and environment
//! (`execve`: same PID, same stdio). If the exec fails the process exits
//! non-zero so a service manager restarts it.
//!
//! `PANORAMA_GATEWAY_AUTO_RESTART`: `1/true/yes/on` or `0/false/no/off`;
//! anything else keeps the default, which is on for release builds (the
//! shipped binary) and off for debug builds (the dev-mode analogue of
//! Node's "running from source").

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::gateway::Gateway;
use super::heartbeat;

pub const AUTO_RESTART_ENV: &str = "PANORAMA_GATEWAY_AUTO_RESTART";
pub const RESTART_CHECK_MS_ENV: &str = "PANORAMA_GATEWAY_RESTART_CHECK_MS";
pub const RESTART_MAX_WAIT_MS_ENV: &str = "PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS";
pub const DEFAULT_CHECK_MS: u64 = 30_000;
/// Floor for the check interval (keeps a typo from busy-polling).
pub const MIN_CHECK_MS: u64 = 100;
/// How often the drain re-checks for active work.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// `1/true/yes/on` → true, `0/false/no/off` → false, else `None`.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Auto-restart settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartConfig {
    pub enabled: bool,
    pub check_interval: Duration,
    /// `None`: wait for active work without a limit.
    pub max_wait: Option<Duration>,
}

impl RestartConfig {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let default_enabled = !cfg!(debug_assertions);
        let enabled = env(AUTO_RESTART_ENV)
            .and_then(|v| parse_bool(&v))
            .unwrap_or(default_enabled);
        let num = |key| {
            env(key)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n > 0)
                .map(|n| n as u64)
        };
        RestartConfig {
            enabled,
            check_interval: Duration::from_millis(
                num(RESTART_CHECK_MS_ENV)
                    .unwrap_or(DEFAULT_CHECK_MS)
                    .max(MIN_CHECK_MS),
            ),
            max_wait: num(RESTART_MAX_WAIT_MS_ENV).map(Duration::from_millis),
        }
    }
}

/// The path this process was started as (runtime.md §4.7: "a path
/// captured at startup, not /proc/self/exe"): `argv[0]` made absolute
/// against the working directory, or looked up in `PATH` when it has no
/// slash. An upgrade that swaps a symlink (`/usr/local/bin/x` → a new
/// versioned file) is then seen, and the re-exec runs the new target.
/// `None` when it cannot be determined (the caller falls back to
/// `current_exe`).
pub fn installed_exe_path(
    argv0: Option<OsString>,
    cwd: Option<PathBuf>,
    path_var: Option<OsString>,
) -> Option<PathBuf> {
    let argv0 = PathBuf::from(argv0?);
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(if argv0.is_absolute() {
            argv0
        } else {
            cwd?.join(argv0)
        });
    }
    std::env::split_paths(&path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(&argv0))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Identity of the executable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

/// Fingerprint of `path` (following symlinks); `None` when unreadable
/// (e.g. mid-replacement): the tick is skipped.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Watches the executable captured at startup.
#[derive(Debug, Clone)]
pub struct Watcher {
    pub exe: PathBuf,
    pub baseline: Fingerprint,
    pub config: RestartConfig,
}

impl Watcher {
    /// The watcher for this process, or `None` (logged) when auto-restart
    /// is disabled or the executable cannot be located.
    pub fn for_current_exe(config: RestartConfig) -> Option<Watcher> {
        if !config.enabled {
            tracing::debug!("Gateway auto-restart disabled ({AUTO_RESTART_ENV})");
            return None;
        }
        let invoked = installed_exe_path(
            std::env::args_os().next(),
            std::env::current_dir().ok(),
            std::env::var_os("PATH"),
        );
        let exe = match invoked.map(Ok).unwrap_or_else(std::env::current_exe) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "Gateway auto-restart disabled (executable not found)");
                return None;
            }
        };
        let Some(baseline) = fingerprint(&exe) else {
            tracing::warn!(entryPath = %exe.display(), "Gateway auto-restart disabled (executable not readable)");
            return None;
        };
        tracing::info!(
            entryPath = %exe.display(),
            checkMs = config.check_interval.as_millis() as u64,
            "Gateway auto-restart enabled"
        );
        Some(Watcher {
            exe,
            baseline,
            config,
        })
    }

    /// Resolves with the restart reason once a stable change is seen.
    pub async fn changed(&self) -> String {
        let mut tick = tokio::time::interval(self.config.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut candidate: Option<Fingerprint> = None;
        loop {
            tick.tick().await;
            let Some(now) = fingerprint(&self.exe) else {
                continue;
            };
            if now == self.baseline {
                candidate = None;
            } else if candidate == Some(now) {
                let name = self
                    .exe
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return format!("gateway entry changed ({name})");
            } else {
                candidate = Some(now);
            }
        }
    }
}

/// What blocks a restart: active queue jobs (subagent and model runs are
/// jobs in the active map) and running shell sessions, which outlive the
/// job that opened them (§4.7).
fn blockers(gw: &Gateway) -> (usize, usize) {
    let jobs = gw.lock().active.len();
    (jobs, gw.shell_sessions.running_count())
}

/// Drain for a restart (§4.7 "Drain"): stop intake, sync the heartbeat,
/// wait for active jobs and running shell sessions (bounded by the max
/// wait when set).
pub async fn drain(gw: &Arc<Gateway>, reason: &str, max_wait: Option<Duration>) {
    {
        let mut st = gw.lock();
        st.accepting = false;
        st.queue.clear_pending();
    }
    let (jobs, shells) = blockers(gw);
    tracing::info!(
        reason,
        active_jobs = jobs,
        active_shell_sessions = shells,
        "Gateway update detected; draining before restart"
    );
    heartbeat::sync_if_changed(gw).await;
    let started = tokio::time::Instant::now();
    loop {
        let (jobs, shells) = blockers(gw);
        if jobs == 0 && shells == 0 {
            return;
        }
        if let Some(max) = max_wait {
            if started.elapsed() >= max {
                tracing::warn!(
                    wait_ms = max.as_millis() as u64,
                    active_jobs = jobs,
                    active_shell_sessions = shells,
                    "Gateway restart max wait reached; restarting anyway"
                );
                return;
            }
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Detect a change, then drain; resolves with the reason (never, when
/// there is no watcher).
pub async fn wait_for_restart(gw: Arc<Gateway>, watcher: Option<Watcher>) -> String {
    let Some(watcher) = watcher else {
        return std::future::pending().await;
    };
    let reason = watcher.changed().await;
    drain(&gw, &reason, watcher.config.max_wait).await;
    let (jobs, shells) = blockers(&gw);
    tracing::info!(reason = %reason, active_jobs = jobs, active_shell_sessions = shells, "Gateway restarting");
    reason
}

/// Replace this process with `exe` and the same arguments and environment.
/// Returns only on failure. A "text file busy" (the new binary is still
/// open for writing somewhere) is retried for a few seconds.
pub fn exec_self(exe: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let err = std::process::Command::new(exe).args(&args).exec();
        if err.raw_os_error() == Some(libc::ETXTBSY) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        return err;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_from_env() {
        let d = RestartConfig::from_env(env(&[]));
        assert_eq!(d.enabled, !cfg!(debug_assertions));
        assert_eq!(d.check_interval, Duration::from_millis(30_000));
        assert_eq!(d.max_wait, None);
        let c = RestartConfig::from_env(env(&[
            (AUTO_RESTART_ENV, " Yes "),
            (RESTART_CHECK_MS_ENV, "200"),
            (RESTART_MAX_WAIT_MS_ENV, "5000"),
        ]));
        assert!(c.enabled);
        assert_eq!(c.check_interval, Duration::from_millis(200));
        assert_eq!(c.max_wait, Some(Duration::from_secs(5)));
        let c = RestartConfig::from_env(env(&[
            (AUTO_RESTART_ENV, "off"),
            (RESTART_CHECK_MS_ENV, "5"),
            (RESTART_MAX_WAIT_MS_ENV, "0"),
        ]));
        assert!(!c.enabled);
        assert_eq!(c.check_interval, Duration::from_millis(MIN_CHECK_MS));
        assert_eq!(c.max_wait, None);
        let c = RestartConfig::from_env(env(&[(AUTO_RESTART_ENV, "maybe")]));
        assert_eq!(c.enabled, !cfg!(debug_assertions));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("TRUE"), Some(true));
    }

    #[test]
    fn the_installed_path_comes_from_argv0() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("panorama-gateway");
        std::fs::write(&exe, b"x").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), bin.as_path()]).unwrap();
        assert_eq!(
            installed_exe_path(Some("panorama-gateway".into()), None, Some(path.clone())),
            Some(exe.clone())
        );
        assert_eq!(
            installed_exe_path(
                Some("bin/panorama-gateway".into()),
                Some(tmp.path().into()),
                None
            ),
            Some(exe.clone())
        );
        assert_eq!(
            installed_exe_path(Some(exe.clone().into()), None, None),
            Some(exe)
        );
        assert_eq!(
            installed_exe_path(Some("missing".into()), None, Some(path)),
            None
        );
        assert_eq!(installed_exe_path(None, None, None), None);
    }

    #[tokio::test]
    async fn a_replaced_file_is_reported_after_two_stable_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("bin");
        std::fs::write(&exe, b"one").unwrap();
        let watcher = Watcher {
            exe: exe.clone(),
            baseline: fingerprint(&exe).unwrap(),
            config: RestartConfig {
                enabled: true,
                check_interval: Duration::from_millis(20),
                max_wait: None,
            },
        };
        let next = tmp.path().join("bin.new");
        std::fs::write(&next, b"two, longer").unwrap();
        std::fs::rename(&next, &exe).unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("change detected");
        assert_eq!(reason, "gateway entry changed (bin)");
        // Unchanged: nothing is reported.
        let same = Watcher {
            baseline: fingerprint(&exe).unwrap(),
            ..watcher
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(200), same.changed())
                .await
                .is_err()
        );
    }
}
