//! `diagnostic` jobs (runtime.md §6, control-plane.md §8.1): run
//! `<claude command> --version` directly (no shell) with a 10 s timeout in
//! the scrubbed child environment. The child runs as a contained job
//! ([`crate::contain`]); a timeout or a cancellation (shutdown) stops the
//! whole job: SIGTERM, then SIGKILL after [`KILL_GRACE`].

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use panorama_protocol::jobs::HandlerOutcome;
use panorama_protocol::results::{DiagnosticResult, DIAGNOSTIC_TIMEOUT_MS};
use tokio::io::AsyncReadExt;

use crate::child_env;
use crate::contain::{self, KILL_GRACE};

/// Env var holding the Claude CLI override (`--claude-cli`).
pub const CLAUDE_CLI_ENV: &str = "PANORAMA_CLAUDE_CLI";
/// Command used when no override is set.
pub const DEFAULT_CLAUDE_COMMAND: &str = "claude";
/// Per-stream capture cap (runtime.md §3.4).
const MAX_CAPTURE_BYTES: usize = 5_000_000;

/// The Claude command: `PANORAMA_CLAUDE_CLI` (trimmed), else `claude`.
/// Full CLI discovery belongs to the providers work.
pub fn claude_command(env: impl Fn(&str) -> Option<String>) -> String {
    env(CLAUDE_CLI_ENV)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_CLAUDE_COMMAND.to_string())
}

async fn read_capped<R: AsyncReadExt + Unpin>(reader: Option<R>) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_CAPTURE_BYTES.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// How long the output readers may lag behind the child's exit (a
/// process that escaped the group could hold the pipes open forever).
const READER_GRACE: Duration = Duration::from_secs(2);

async fn join_reader(task: tokio::task::JoinHandle<String>) -> String {
    let abort = task.abort_handle();
    match tokio::time::timeout(READER_GRACE, task).await {
        Ok(out) => out.unwrap_or_default(),
        Err(_) => {
            abort.abort();
            String::new()
        }
    }
}

/// Run the check with `command` and return the handler outcome; `None`
/// when `cancel` completed first (the child's process group was stopped).
pub async fn run_diagnostic(
    command: &str,
    tmp_dir: Option<&Path>,
    timeout: Duration,
    cancel: impl Future<Output = ()>,
) -> Option<HandlerOutcome> {
    let label = format!("{command} --version");
    let started = Instant::now();
    let elapsed = |s: Instant| s.elapsed().as_millis() as u64;
    let mut cmd = tokio::process::Command::new(command);
    cmd.arg("--version")
        .env_clear()
        .envs(child_env::child_env_from_process(tmp_dir, &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Dropped (an aborted task) or finished, the job leaves nothing behind.
    let job = contain::job("diagnostic");
    job.prepare(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = match e.kind() {
                std::io::ErrorKind::NotFound => format!("spawn {command} ENOENT"),
                _ => format!("spawn {command} failed: {e}"),
            };
            return Some(failure(
                label,
                String::new(),
                String::new(),
                None,
                elapsed(started),
                message,
            ));
        }
    };
    if let Some(pid) = child.id() {
        job.started(pid as i32);
    }
    let stdout = tokio::spawn(read_capped(child.stdout.take()));
    let stderr = tokio::spawn(read_capped(child.stderr.take()));
    let waited = tokio::select! {
        waited = tokio::time::timeout(timeout, child.wait()) => Some(waited),
        () = cancel => None,
    };
    let stop = !matches!(waited, Some(Ok(_)));
    if stop {
        job.terminate_async(KILL_GRACE).await;
        let _ = child.wait().await;
    }
    job.finish_async().await;
    let stdout = join_reader(stdout).await;
    let stderr = join_reader(stderr).await;
    let duration_ms = elapsed(started);
    let waited = waited?;
    Some(match waited {
        Err(_) => failure(
            label.clone(),
            stdout,
            stderr,
            None,
            duration_ms,
            format!(
                "Command timed out after {} ms: {label}",
                timeout.as_millis()
            ),
        ),
        Ok(Err(e)) => failure(label, stdout, stderr, None, duration_ms, e.to_string()),
        Ok(Ok(status)) if status.success() => {
            let result = DiagnosticResult::success(label, stdout, stderr, duration_ms);
            HandlerOutcome::success(serde_json::to_value(result).unwrap_or_default())
        }
        Ok(Ok(status)) => {
            let mut message = format!("Command failed: {label}");
            if !stderr.trim().is_empty() {
                message.push('\n');
                message.push_str(stderr.trim_end());
            }
            failure(label, stdout, stderr, status.code(), duration_ms, message)
        }
    })
}

fn failure(
    command: String,
    stdout: String,
    stderr: String,
    exit_code: Option<i32>,
    duration_ms: u64,
    error: String,
) -> HandlerOutcome {
    let result =
        DiagnosticResult::failure(command, stdout, stderr, exit_code, duration_ms, Some(error));
    let job_error = result.error.clone().unwrap_or_default();
    HandlerOutcome::failure(serde_json::to_value(result).unwrap_or_default(), job_error)
}

/// The diagnostic handler as the runtime calls it; `None` when cancelled.
pub async fn handle(
    tmp_dir: Option<&Path>,
    cancel: impl Future<Output = ()>,
) -> Option<HandlerOutcome> {
    let command = claude_command(crate::paths::process_env);
    run_diagnostic(
        &command,
        tmp_dir,
        Duration::from_millis(DIAGNOSTIC_TIMEOUT_MS),
        cancel,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn command_resolution() {
        assert_eq!(claude_command(|_| None), "claude");
        assert_eq!(claude_command(|_| Some("  ".into())), "claude");
        assert_eq!(claude_command(|_| Some(" /x/claude ".into())), "/x/claude");
    }

    #[tokio::test]
    async fn success_failure_missing_and_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = script(tmp.path(), "ok", "echo '2.0.14 (Claude Code)'");
        let never = std::future::pending::<()>;
        let out = run_diagnostic(&ok, None, Duration::from_secs(5), never())
            .await
            .unwrap();
        assert!(out.ok);
        let r = out.result.unwrap();
        assert_eq!(r["command"], format!("{ok} --version"));
        assert_eq!(r["version"], "2.0.14 (Claude Code)");
        assert_eq!(r["exit_code"], 0);
        assert!(r.get("error").is_none());

        let bad = script(tmp.path(), "bad", "echo oops >&2; exit 3");
        let out = run_diagnostic(&bad, None, Duration::from_secs(5), never())
            .await
            .unwrap();
        assert!(!out.ok);
        let r = out.result.unwrap();
        assert_eq!(r["exit_code"], 3);
        assert_eq!(r["stderr"], "oops\n");
        assert!(out.error.unwrap().contains("Command failed"));

        let missing = tmp.path().join("nope").display().to_string();
        let out = run_diagnostic(&missing, None, Duration::from_secs(5), never())
            .await
            .unwrap();
        assert_eq!(
            out.error.as_deref(),
            Some(format!("spawn {missing} ENOENT").as_str())
        );
        assert_eq!(out.result.unwrap()["exit_code"], serde_json::Value::Null);

        // A grandchild holding stdout open does not keep a timed-out run
        // waiting: the whole group is stopped.
        let slow = script(tmp.path(), "slow", "sleep 30 & sleep 30");
        let began = Instant::now();
        let out = run_diagnostic(&slow, None, Duration::from_millis(200), never())
            .await
            .unwrap();
        assert!(out.error.unwrap().contains("timed out"));
        assert!(began.elapsed() < Duration::from_secs(5));

        let cancelled = run_diagnostic(
            &slow,
            None,
            Duration::from_secs(10),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await;
        assert!(cancelled.is_none());
    }
}
