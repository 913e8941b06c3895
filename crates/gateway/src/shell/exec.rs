//! One-shot `shell_exec` execution (runtime.md §5.7): `<shell> -lc <cmd>`
//! in `/`, its own session and process group, in a contained job
//! ([`crate::contain`]: its own cgroup where the host allows), output
//! captured inline (5 MB per stream), the whole job killed on timeout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use panorama_protocol::jobs::ShellExecPayload;
use panorama_protocol::results::{ShellExecMessage, ShellExecResult};
use panorama_protocol::secrets::{
    check_resolution, redact_values, requested_secret_env, ResolvedSecret,
    MSG_RESOLVE_FAILED_PREFIX,
};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::contain::{self, LimitHit, ResourceUsage, KILL_GRACE as PROCESS_KILL_GRACE};

/// Resolves `secret_env` (§8.6 step 6) through the control plane: nothing
/// requested → nothing to do; otherwise every requested variable must come
/// back with a value, or the job fails closed with the reference's
/// message. No message ever carries a value.
pub async fn resolve_secret_env(
    ctx: &super::ShellContext,
    payload: &ShellExecPayload,
) -> Result<Vec<ResolvedSecret>, String> {
    let requested = requested_secret_env(payload.secret_env.as_ref())?;
    if requested.is_empty() {
        return Ok(Vec::new());
    }
    let data = ctx
        .control
        .resolve_secret_placeholders(&ctx.job_id)
        .await
        .map_err(|e| format!("{MSG_RESOLVE_FAILED_PREFIX}: {e}"))?;
    // A host gateway is never a managed-VM guest: aliases alone are useless.
    check_resolution(&requested, &data, false).map_err(|e| e.to_string())
}

/// Per-stream capture cap.
pub const SHELL_EXEC_OUTPUT_CAP: usize = 5_000_000;
pub const SHELL_EXEC_CWD: &str = "/";

/// `/bin/bash` if it exists, else `/bin/sh`, else `$SHELL`, else `/bin/bash`.
pub fn exec_shell() -> String {
    for candidate in ["/bin/bash", "/bin/sh"] {
        if Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    std::env::var("SHELL")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/bash".into())
}

/// What running the command produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRun {
    pub shell: String,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub exit_code: Option<i32>,
    /// The terminating signal number, when there was one.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The spawn error, when the command could not start.
    pub spawn_error: Option<String>,
    pub duration_ms: u64,
    /// The shell's PID (leader of its session and process group).
    pub pid: Option<i32>,
    /// The stop reason, when a stop request (gateway shutdown) ended the
    /// command: its whole tree was terminated like on a timeout.
    pub stopped: Option<String>,
    /// The job's cgroup, when it ran in one.
    pub cgroup: Option<String>,
    /// What the command cost (read from its cgroup).
    pub resource_usage: Option<ResourceUsage>,
    /// The limit that stopped the command, if one did.
    pub limit_hit: Option<LimitHit>,
    /// PIDs of the command that survived the final kill.
    pub survivors: Vec<i32>,
}

impl ExecRun {
    /// The run with every resolved secret value in its output replaced by
    /// the secret's placeholder (what a VM child would have printed): a
    /// value reaches the child's environment and nothing else.
    pub fn redacted(mut self, secrets: &[ResolvedSecret]) -> ExecRun {
        if !secrets.is_empty() {
            self.stdout = redact_values(&self.stdout, secrets);
            self.stderr = redact_values(&self.stderr, secrets);
        }
        self
    }

    /// The job result as the later generation writes it (§8.6): `error`
    /// is the spawn error and nothing else (a timeout or an exit status
    /// is told by `message`, `timed_out` and `exit_code`).
    pub fn into_result(self, resource_id: &str, command: &str) -> ShellExecResult {
        let message =
            ShellExecMessage::classify(self.spawn_error.is_some(), self.timed_out, self.exit_code);
        // As the later generation writes it, `error` is only a spawn error;
        // ours adds the message of a containment limit that stopped the job.
        let error = match message {
            ShellExecMessage::FailedToStart => self.spawn_error.clone(),
            ShellExecMessage::NonZeroExit => self.limit_hit.map(|hit| hit.message()),
            ShellExecMessage::Completed | ShellExecMessage::TimedOut => None,
        };
        ShellExecResult {
            message,
            resource_id: resource_id.to_string(),
            command: command.to_string(),
            shell: self.shell,
            exec_user: None,
            workload_id: None,
            process_tree_contained: self.cgroup.is_some(),
            cgroup: self.cgroup,
            cgroup_termination_error: (!self.survivors.is_empty())
                .then(|| format!("Processes survived the kill: {:?}", self.survivors)),
            cwd: SHELL_EXEC_CWD.to_string(),
            output_truncated: self.stdout_truncated || self.stderr_truncated,
            stdout: self.stdout,
            stderr: self.stderr,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            timed_out: self.timed_out,
            success: message == ShellExecMessage::Completed,
            readiness_evidence: None,
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            error,
            resource_usage: self.resource_usage.map(|u| u.to_value()),
        }
    }
}

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
}

fn spawn_reader<R>(mut stream: R, sink: Arc<Mutex<Capture>>) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut c = sink.lock().unwrap_or_else(|p| p.into_inner());
                    let room = SHELL_EXEC_OUTPUT_CAP.saturating_sub(c.bytes.len());
                    if n > room {
                        c.truncated = true;
                    }
                    c.bytes.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    })
}

fn spawn_error_text(shell: &str, e: &std::io::Error) -> String {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOEXEC) => "ENOEXEC",
        Some(libc::E2BIG) => "E2BIG",
        _ => return format!("spawn {shell} failed: {e}"),
    };
    format!("spawn {shell} {code}")
}

/// Runs `<shell> -lc <command>` in `/` with `env`, for at most `timeout`.
/// On timeout the whole tree gets SIGTERM, then SIGKILL after `kill_grace`.
pub async fn run_command(
    shell: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
    kill_grace: Duration,
) -> ExecRun {
    run_command_until(shell, command, env, timeout, kill_grace, None).await
}

/// Resolves with the stop reason once `stop` carries one; never without a
/// receiver (or once its sender is gone).
async fn stop_reason(stop: Option<watch::Receiver<Option<String>>>) -> String {
    if let Some(mut rx) = stop {
        if let Ok(reason) = rx.wait_for(Option::is_some).await {
            return reason.clone().unwrap_or_default();
        }
    }
    std::future::pending().await
}

/// [`run_command`] that also ends, terminating the whole tree the same
/// way, when `stop` carries a reason (the gateway's shutdown).
pub async fn run_command_until(
    shell: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
    kill_grace: Duration,
    stop: Option<watch::Receiver<Option<String>>>,
) -> ExecRun {
    let started = Instant::now();
    let job = contain::job("shell_exec");
    let mut cmd = Command::new(shell);
    cmd.arg("-lc")
        .arg(command)
        .current_dir(SHELL_EXEC_CWD)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setsid is async-signal-safe; the child becomes the leader of a
    // new session and process group, so its whole tree can be found.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    job.prepare(&mut cmd);
    let mut run = ExecRun {
        shell: shell.to_string(),
        ..Default::default()
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            run.spawn_error = Some(spawn_error_text(shell, &e));
            run.duration_ms = started.elapsed().as_millis() as u64;
            return run;
        }
    };
    let pid = child.id().map(|p| p as i32);
    run.pid = pid;
    if let Some(pid) = pid {
        job.started(pid);
    }
    let out = Arc::new(Mutex::new(Capture::default()));
    let err = Arc::new(Mutex::new(Capture::default()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(spawn_reader(s, out.clone()));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(spawn_reader(s, err.clone()));
    }

    // Like Node's `close`: the exit status and the end of both streams.
    let finished = tokio::select! {
        finished = tokio::time::timeout(timeout, async {
            let status = child.wait().await;
            for r in readers.iter_mut() {
                let _ = r.await;
            }
            status
        }) => finished.map_err(|_| None),
        reason = stop_reason(stop) => Err(Some(reason)),
    };
    let status = match finished {
        Ok(status) => status.ok(),
        Err(stopped) => {
            match stopped {
                Some(reason) => run.stopped = Some(reason),
                None => run.timed_out = true,
            }
            if pid.is_some() {
                job.terminate_async(kill_grace).await;
            }
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            for r in readers {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
            status
        }
    };
    if let Some(status) = status {
        use std::os::unix::process::ExitStatusExt;
        run.exit_code = status.code();
        run.signal = status.signal();
    }
    // Whatever the command left running is killed with it.
    let done = job.finish_async().await;
    run.cgroup = job.cgroup_path();
    run.limit_hit = done.limit_hit;
    run.survivors = done.survivors;
    run.resource_usage = Some(done.usage);
    let take = |c: &Arc<Mutex<Capture>>| {
        let c = c.lock().unwrap_or_else(|p| p.into_inner());
        (String::from_utf8_lossy(&c.bytes).into_owned(), c.truncated)
    };
    (run.stdout, run.stdout_truncated) = take(&out);
    (run.stderr, run.stderr_truncated) = take(&err);
    run.duration_ms = started.elapsed().as_millis() as u64;
    run
}

/// [`run_command`] with the default grace.
pub async fn run_command_default(
    shell: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> ExecRun {
    run_command(shell, command, env, timeout, PROCESS_KILL_GRACE).await
}
