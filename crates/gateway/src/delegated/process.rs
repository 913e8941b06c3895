//! Agent processes: spawned in their own process group with a scrubbed
//! environment, as a contained job ([`crate::contain`]: its own cgroup
//! where the host allows, else the process tree with its environment
//! tag); stdout streamed to a callback; a stop request or timeout sends
//! SIGTERM to the whole job and SIGKILL after the grace; leftovers of the
//! job are always killed before the run returns, and its resource usage is
//! read then.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contain::{Job, LimitHit, ResourceUsage};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Captured stdout/stderr cap (runtime.md §3.4).
pub const MAX_CAPTURE_BYTES: usize = 5_000_000;
/// Grace after SIGTERM for cancels and shutdown.
pub const CANCEL_KILL_GRACE: Duration = Duration::from_millis(5_000);
/// Grace after SIGTERM for timeouts and model runs.
pub const PROCESS_KILL_GRACE: Duration = Duration::from_millis(2_000);
/// How long stdout may stay open after the agent exited (a leftover holding the pipe).
const STDOUT_DRAIN: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Grace between SIGTERM and SIGKILL for a stop request.
    pub stop_grace: Duration,
    /// Written to the child's stdin, which is then closed (a prompt too
    /// large for argv, see `panorama_providers::delivery`); `None` means
    /// stdin is `/dev/null`.
    pub stdin: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessResult {
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// A stop request arrived (cancel or shutdown).
    pub stopped: bool,
    pub spawn_error: Option<String>,
    /// The spawn failed because the command line was too long (`E2BIG`):
    /// the job's input, not the provider, is at fault.
    pub input_too_large: bool,
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stderr: String,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// What the agent's processes cost (`resource_usage` in run metadata).
    pub resource_usage: Option<ResourceUsage>,
    /// The limit that stopped the agent, if one did.
    pub limit_hit: Option<LimitHit>,
}

impl ProcessResult {
    pub fn success(&self) -> bool {
        self.spawn_error.is_none() && !self.timed_out && self.exit_code == Some(0)
    }

    /// Short failure description (no provider wording).
    pub fn failure_detail(&self, timeout_ms: u64) -> Option<String> {
        if let Some(e) = &self.spawn_error {
            return Some(e.clone());
        }
        if let Some(hit) = &self.limit_hit {
            return Some(hit.message());
        }
        if self.timed_out {
            return Some(format!("Process timed out after {timeout_ms} ms"));
        }
        match (self.exit_code, self.signal) {
            (Some(0), _) => None,
            (code, signal) => {
                let tail = stderr_tail(&self.stderr);
                let what = match (code, signal) {
                    (Some(c), _) => format!("Process exited with code {c}"),
                    (None, Some(s)) => format!("Process terminated by signal {s}"),
                    (None, None) => "Process ended without an exit status".to_string(),
                };
                Some(if tail.is_empty() {
                    what
                } else {
                    format!("{what}: {tail}")
                })
            }
        }
    }
}

/// The last non-empty stderr lines, whitespace collapsed, at most 500 chars.
pub fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let joined = lines[start..].join(" ");
    let collapsed = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(500).collect()
}

/// The agent jobs alive now, by the leader's process group, for
/// [`stop_requested`] and [`kill_group`].
static JOBS: std::sync::Mutex<BTreeMap<i32, Arc<Job>>> = std::sync::Mutex::new(BTreeMap::new());

fn jobs() -> std::sync::MutexGuard<'static, BTreeMap<i32, Arc<Job>>> {
    JOBS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stop was requested for the agent of group `pgid` (a cancel or the
/// shutdown): SIGTERM the whole job now and start the grace from now,
/// however late the run's task (which then escalates) gets to run.
pub fn stop_requested(pgid: i32) {
    let job = jobs().get(&pgid).cloned();
    if let Some(job) = job {
        job.request_stop();
    }
}

/// Whether any process of the group is still alive (zombies excluded).
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1
        && crate::contain::tree::live_tree(&crate::contain::tree::TreeId {
            leader: pgid,
            tag: None,
            min_start: 0,
        })
        .iter()
        .any(|p| p.pgid == pgid)
}

/// SIGKILL the whole job of group `pgid` now (shutdown of an aborted run).
pub fn kill_group(pgid: i32) {
    let job = jobs().remove(&pgid);
    match job {
        Some(job) => {
            job.finish();
        }
        None => crate::contain::tree::signal_group(pgid, libc::SIGKILL),
    }
}

/// `signal` to the leader's group at once and to the rest of the job from
/// a blocking thread (the fallback's `/proc` scan must not stall the
/// runtime when many runs stop together).
fn signal_now(job: &Arc<Job>, signal: i32) {
    let j = Arc::clone(job);
    tokio::task::spawn_blocking(move || j.signal(signal));
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_CAPTURE_BYTES.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, truncated)
}

/// Runs one process to completion. `on_spawn` gets the pid (= pgid);
/// `on_stdout` every stdout chunk as it arrives. `stop` carries a stop
/// request (`Some(reason)`); one already set before the spawn means the
/// process is not started at all.
pub async fn run_process(
    spec: &ProcessSpec,
    mut stop: watch::Receiver<Option<String>>,
    on_spawn: &mut (dyn FnMut(u32) + Send),
    on_stdout: &mut (dyn FnMut(&[u8]) + Send),
) -> ProcessResult {
    let started = Instant::now();
    let mut result = ProcessResult::default();
    if stop.borrow().is_some() {
        result.stopped = true;
        return result;
    }
    let job = crate::contain::job("agent_process");
    let mut cmd = tokio::process::Command::new(&spec.command);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    job.prepare(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.input_too_large = e.raw_os_error() == Some(libc::E2BIG);
            result.spawn_error = Some(panorama_providers::probe::spawn_error_message(
                &spec.command,
                &e,
            ));
            result.duration_ms = started.elapsed().as_millis() as u64;
            return result;
        }
    };
    let pid = child.id().unwrap_or(0);
    result.pid = Some(pid);
    let pgid = pid as i32;
    job.started(pgid);
    jobs().insert(pgid, Arc::clone(&job));
    on_spawn(pid);
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), spec.stdin.clone()) {
        // Written on its own task so a child that reads slowly (or not at
        // all) cannot stall the stdout loop; dropping the pipe closes it.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    let mut stdout = child.stdout.take();
    let stderr_task = child.stderr.take().map(|e| tokio::spawn(read_capped(e)));

    let timeout = tokio::time::sleep(spec.timeout);
    tokio::pin!(timeout);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut exited_at: Option<tokio::time::Instant> = None;
    let mut stop_open = true;
    let mut captured: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];

    loop {
        if status.is_some() && stdout.is_none() {
            break;
        }
        let kill_deadline =
            kill_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        let drain_deadline = exited_at
            .map(|t| t + STDOUT_DRAIN)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            read = async { stdout.as_mut().expect("guarded").read(&mut buf).await }, if stdout.is_some() => {
                match read {
                    Ok(0) | Err(_) => stdout = None,
                    Ok(n) => {
                        let room = MAX_CAPTURE_BYTES.saturating_sub(captured.len());
                        if n > room {
                            result.stdout_truncated = true;
                        }
                        captured.extend_from_slice(&buf[..n.min(room)]);
                        on_stdout(&buf[..n]);
                    }
                }
            }
            waited = child.wait(), if status.is_none() => {
                match waited {
                    Ok(s) => status = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, pid, "Failed to wait for agent process");
                        status = Some(std::os::unix::process::ExitStatusExt::from_raw(0x7f00));
                    }
                }
                exited_at = Some(tokio::time::Instant::now());
            }
            _ = &mut timeout, if !result.timed_out && status.is_none() && kill_at.is_none() => {
                result.timed_out = true;
                signal_now(&job, libc::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + PROCESS_KILL_GRACE);
            }
            changed = stop.changed(), if stop_open && kill_at.is_none() => {
                match changed {
                    Ok(()) if stop.borrow().is_some() => {
                        result.stopped = true;
                        signal_now(&job, libc::SIGTERM);
                        let requested = job.stop_requested_at()
                            .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
                        kill_at = Some(requested + spec.stop_grace);
                    }
                    Ok(()) => {}
                    Err(_) => stop_open = false,
                }
            }
            _ = tokio::time::sleep_until(kill_deadline), if kill_at.is_some() && !killed => {
                let j = Arc::clone(&job);
                tokio::task::spawn_blocking(move || j.kill());
                killed = true;
            }
            _ = tokio::time::sleep_until(drain_deadline), if exited_at.is_some() && stdout.is_some() => {
                stdout = None;
            }
        }
    }
    // Reap the rest of the tree: after a stop or timeout wait out the grace
    // (SIGKILL then), otherwise leftovers of a finished agent (also those
    // that left the group) are killed now.
    if let Some(at) = kill_at.filter(|_| !killed) {
        while tokio::time::Instant::now() < at && job.alive_async().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let done = job.finish_async().await;
    jobs().remove(&pgid);
    result.resource_usage = Some(done.usage);
    result.limit_hit = done.limit_hit;
    if let Some(task) = stderr_task {
        // Leftovers holding stderr are dead now, so this ends promptly.
        match tokio::time::timeout(Duration::from_secs(2), task).await {
            Ok(Ok((bytes, truncated))) => {
                result.stderr = String::from_utf8_lossy(&bytes).into_owned();
                result.stderr_truncated = truncated;
            }
            _ => tracing::warn!(pid, "Agent stderr was not closed in time"),
        }
    }
    if let Some(s) = status {
        use std::os::unix::process::ExitStatusExt;
        result.exit_code = s.code();
        result.signal = s.signal();
    }
    result.stdout = String::from_utf8_lossy(&captured).into_owned();
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, timeout_ms: u64) -> ProcessSpec {
        ProcessSpec {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: std::env::vars().collect(),
            timeout: Duration::from_millis(timeout_ms),
            stdin: None,
            stop_grace: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn streams_stdout_and_reports_exit() {
        let (_tx, rx) = watch::channel(None);
        let mut chunks = Vec::new();
        let r = run_process(
            &spec("echo one; echo two >&2; exit 3", 5_000),
            rx,
            &mut |_| {},
            &mut |c| chunks.extend_from_slice(c),
        )
        .await;
        assert_eq!(String::from_utf8(chunks).unwrap(), "one\n");
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stderr, "two\n");
        assert_eq!(
            r.failure_detail(1).as_deref(),
            Some("Process exited with code 3: two")
        );
    }

    #[tokio::test]
    async fn stdin_input_is_written_and_closed() {
        let (_tx, rx) = watch::channel(None);
        let input = "p".repeat(3 * 1024 * 1024);
        let mut with_input = spec("wc -c", 10_000);
        with_input.stdin = Some(input.clone());
        let r = run_process(&with_input, rx, &mut |_| {}, &mut |_| {}).await;
        assert_eq!(r.stdout.trim(), input.len().to_string());
        assert!(r.success(), "{r:?}");
    }

    #[tokio::test]
    async fn an_argument_list_too_long_is_an_input_error() {
        let (_tx, rx) = watch::channel(None);
        let mut huge = spec("true", 5_000);
        huge.args.push("a".repeat(200 * 1024));
        let r = run_process(&huge, rx, &mut |_| {}, &mut |_| {}).await;
        assert!(r.input_too_large, "{r:?}");
        assert!(r.spawn_error.is_some());
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_including_term_ignoring_children() {
        let (tx, rx) = watch::channel(None);
        let pid = std::sync::Arc::new(std::sync::Mutex::new(0u32));
        let pid2 = pid.clone();
        let handle = tokio::spawn(async move {
            run_process(
                &spec("trap '' TERM; sleep 30 & sleep 30", 60_000),
                rx,
                &mut move |p| *pid2.lock().unwrap() = p,
                &mut |_| {},
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(Some("stop".into())).unwrap();
        let r = handle.await.unwrap();
        assert!(r.stopped);
        let pgid = *pid.lock().unwrap() as i32;
        assert!(!group_alive(pgid), "group {pgid} still alive");
    }

    #[tokio::test]
    async fn timeout_is_reported() {
        let (_tx, rx) = watch::channel(None);
        let r = run_process(&spec("sleep 5", 200), rx, &mut |_| {}, &mut |_| {}).await;
        assert!(r.timed_out);
        assert!(!r.success());
        assert_eq!(
            r.failure_detail(200).as_deref(),
            Some("Process timed out after 200 ms")
        );
    }
}
