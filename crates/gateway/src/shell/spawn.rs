//! How shells start, shared by `shell_session` sessions and the streamed
//! terminals: the child environment settings, the shell to run and the
//! PTY spawn. A leaf: it knows neither kind of session.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use portable_pty::{native_pty_system, CommandBuilder, MasterPty, PtySize};

use crate::child_env::build_child_env;
use crate::contain::KILL_GRACE as PROCESS_KILL_GRACE;

/// `TERM` for a shell whose client does not say.
pub const DEFAULT_SHELL_TERM: &str = "xterm-256color";

/// The time source (tests move it forward to exercise retention).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Settings of a [`super::ShellSessions`] manager (and of the streamed
/// terminals).
#[derive(Clone)]
pub struct ShellSessionsConfig {
    /// `<config dir>/tmp`: children get `TMPDIR`, `TMP` and `TEMP` set to it.
    pub tmp_dir: Option<PathBuf>,
    /// Base environment; `None` means the gateway's own.
    pub base_env: Option<Vec<(String, String)>>,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    pub clock: Clock,
}

impl Default for ShellSessionsConfig {
    fn default() -> Self {
        ShellSessionsConfig {
            tmp_dir: None,
            base_env: None,
            kill_grace: PROCESS_KILL_GRACE,
            clock: Arc::new(Utc::now),
        }
    }
}

impl ShellSessionsConfig {
    /// The scrubbed child environment with `overrides` applied last.
    pub fn child_env(&self, overrides: &[(String, Option<String>)]) -> Vec<(String, String)> {
        let base: Vec<(String, String)> = match &self.base_env {
            Some(env) => env.clone(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        build_child_env(base, self.tmp_dir.as_deref(), overrides)
            .into_iter()
            .collect()
    }
}

/// `$SHELL` (trimmed), else `/bin/bash`.
pub fn default_shell() -> String {
    std::env::var("SHELL")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/bash".into())
}

/// Node-style spawn checks, so errors read `spawn <shell> ENOENT`: the
/// program must resolve (through the child's `PATH` when it has no slash)
/// and the cwd must exist. Returns the program to run.
pub(crate) fn resolve_program(
    shell: &str,
    env: &[(String, String)],
    cwd: &Path,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let enoent = || format!("spawn {shell} ENOENT");
    if !cwd.is_dir() {
        return Err(enoent());
    }
    let executable = |p: &Path| {
        std::fs::metadata(p).map(|m| m.is_file().then_some(m.permissions().mode() & 0o111 != 0))
    };
    if shell.contains('/') {
        let path = if Path::new(shell).is_absolute() {
            PathBuf::from(shell)
        } else {
            cwd.join(shell)
        };
        return match executable(&path) {
            Ok(Some(true)) => Ok(path),
            Ok(_) => Err(format!("spawn {shell} EACCES")),
            Err(_) => Err(enoent()),
        };
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path_var) {
        let candidate = cwd.join(dir).join(shell);
        if let Ok(Some(true)) = executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(enoent())
}

pub(crate) struct SpawnedPty {
    pub(crate) pid: i32,
    pub(crate) master: Box<dyn MasterPty + Send>,
    pub(crate) writer: Box<dyn Write + Send>,
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) child: Box<dyn portable_pty::Child + Send + Sync>,
}

pub(crate) fn spawn_pty(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
    size: PtySize,
) -> Result<SpawnedPty, String> {
    let pair = native_pty_system()
        .openpty(size)
        .map_err(|e| format!("EPTY ({e})"))?;
    let mut cmd = CommandBuilder::new(program);
    cmd.args(args);
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.cwd(cwd);
    let child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| format!("ENOEXEC ({e})"))?;
    drop(pair.slave);
    let pid = child
        .process_id()
        .map(|p| p as i32)
        .ok_or_else(|| "ESRCH (no process id)".to_string())?;
    let reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| format!("EIO ({e})"))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|e| format!("EIO ({e})"))?;
    Ok(SpawnedPty {
        pid,
        master: pair.master,
        writer,
        reader,
        child,
    })
}

/// Signal names for `strsignal` texts portable-pty reports.
pub(crate) fn signal_name(text: &str) -> &'static str {
    match text {
        "Hangup" => "SIGHUP",
        "Interrupt" => "SIGINT",
        "Quit" => "SIGQUIT",
        "Killed" => "SIGKILL",
        "Terminated" => "SIGTERM",
        "Aborted" => "SIGABRT",
        "Segmentation fault" => "SIGSEGV",
        "Broken pipe" => "SIGPIPE",
        _ => "SIGUNKNOWN",
    }
}
