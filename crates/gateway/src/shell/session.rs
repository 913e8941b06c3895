//! In-memory shell sessions on real pseudo-terminals (runtime.md §5.4–§5.6).
//!
//! Differences from the seed, by design: the shell runs on a PTY (so there
//! is job control, a prompt and `resize`); all terminal output is reported
//! on the `stdout` stream; termination reaches the whole contained job
//! ([`crate::contain`]: the session's cgroup, or its process tree) instead
//! of the direct child only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use panorama_protocol::jobs::{
    PayloadError, ShellOpenPayload, ShellReadPayload, ShellResizePayload, ShellWritePayload,
    MSG_MISSING_INPUT,
};
use panorama_protocol::results::{
    ShellOpenResult, ShellReadResult, ShellSessionState, ShellSessionSummary, ShellStream,
    ShellSummaryResult, ShellWriteResult, DEFAULT_SHELL_COLUMNS, DEFAULT_SHELL_ROWS,
    MAX_ACTIVE_SHELL_SESSIONS,
};
use panorama_protocol::time::parse_timestamp_ms;
use portable_pty::{MasterPty, PtySize};
use serde_json::{json, Value};

use super::buffer::{EventBuffer, Utf8Chunker};
use super::error::ShellJobError;
use super::gate::ShellIdentity;
use super::spawn::{default_shell, Clock, ShellSessionsConfig, DEFAULT_SHELL_TERM};
use super::spawn::{resolve_program, signal_name, spawn_pty};
use crate::contain::{self, Job, Termination};

/// Retention of non-running sessions after `updated_at`.
pub const SHELL_SESSION_RETENTION_MS: i64 = 15 * 60_000;
/// How long `write` waits for the PTY to accept the input.
pub const SHELL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted `resize` dimension.
pub use panorama_protocol::jobs::MAX_RESIZE_DIMENSION;
/// How long after the shell exits its remaining output may still arrive
/// before `Session exited with code …` is appended.
const EXIT_DRAIN: Duration = Duration::from_millis(300);
/// `waitForChildStartup`: one short turn before checking for an early exit.
const STARTUP_CHECK_DELAY: Duration = Duration::from_millis(20);

pub const MSG_TOO_MANY_SESSIONS: &str = "Too many active shell sessions (max 64)";
pub const MSG_SESSION_ID_EXISTS: &str = "Shell session ID already exists";
pub const MSG_SESSION_ID_ALLOCATION: &str = "Failed to allocate unique shell session ID";
pub const MSG_SESSION_NOT_FOUND: &str = "Shell session not found or expired";
pub const MSG_SESSION_OTHER_CONTEXT: &str = "Shell session belongs to another gateway context";
pub const MSG_SESSION_RESOURCE_MISMATCH: &str = "Shell session resource mismatch";
pub const MSG_INVALID_RESIZE: &str =
    "Invalid resize dimensions in payload (expected cols and rows from 1 to 1000)";

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct SessionState {
    status: ShellSessionState,
    updated_at: String,
    exit_code: Option<i32>,
    error: Option<String>,
    buffer: EventBuffer,
    /// Set once the shell has been reaped.
    exit: Option<ExitInfo>,
}

#[derive(Debug, Clone, Copy)]
struct ExitInfo {
    code: Option<i32>,
    signal: Option<&'static str>,
}

struct SessionIo {
    /// The live shell (`session.child` in the seed); `None` once it exited
    /// or was detached by cleanup.
    child_pid: Option<i32>,
    writer: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    master: Option<Box<dyn MasterPty + Send>>,
}

/// One shell session.
pub struct Session {
    pub id: String,
    pub team_id: String,
    pub gateway_id: String,
    pub resource_id: String,
    pub shell: String,
    pub shell_args: Vec<String>,
    pub cwd: Option<String>,
    pub created_at: String,
    /// The shell's PID: session and process-group leader of its tree.
    pub leader_pid: i32,
    /// The shell's contained job (its cgroup or process tree).
    pub job: Arc<Job>,
    state: Mutex<SessionState>,
    io: Mutex<SessionIo>,
    clock: Clock,
}

impl Session {
    fn now(&self) -> String {
        iso((self.clock)())
    }

    /// Appends an event (empty data is dropped) and refreshes `updated_at`.
    fn append(&self, stream: ShellStream, data: &str) {
        let now = self.now();
        let mut st = lock(&self.state);
        if st.buffer.append(stream, data, &now) {
            st.updated_at = now;
        }
    }

    pub fn status(&self) -> ShellSessionState {
        lock(&self.state).status
    }

    pub fn summary(&self) -> ShellSessionSummary {
        let st = lock(&self.state);
        self.summary_locked(&st)
    }

    fn summary_locked(&self, st: &SessionState) -> ShellSessionSummary {
        ShellSessionSummary {
            session_id: self.id.clone(),
            resource_id: self.resource_id.clone(),
            status: st.status,
            shell: self.shell.clone(),
            shell_args: self.shell_args.clone(),
            cwd: self.cwd.clone(),
            created_at: self.created_at.clone(),
            updated_at: st.updated_at.clone(),
            exit_code: st.exit_code,
            error: st.error.clone(),
            latest_sequence: st.buffer.latest_sequence(),
        }
    }

    /// `(buffered events, buffered byte estimate, oldest sequence)`.
    pub fn buffer_stats(&self) -> (usize, usize, Option<u64>) {
        let st = lock(&self.state);
        (
            st.buffer.len(),
            st.buffer.buffered_bytes(),
            st.buffer.first_sequence(),
        )
    }

    /// The shell was reaped: record it and append the exit event.
    fn on_exit(&self, exit: ExitInfo) {
        {
            let mut io = lock(&self.io);
            io.child_pid = None;
            io.writer = None;
        }
        let now = self.now();
        let mut st = lock(&self.state);
        st.exit = Some(exit);
        st.exit_code = exit.code;
        if st.status == ShellSessionState::Running {
            st.status = ShellSessionState::Exited;
        }
        st.updated_at = now.clone();
        let code = exit
            .code
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        st.buffer.append(
            ShellStream::System,
            &format!("Session exited with code {code}"),
            &now,
        );
    }

    fn set_updated_now(&self) {
        let now = self.now();
        lock(&self.state).updated_at = now;
    }

    /// Rewinds `updated_at` (tests of retention and purge).
    pub fn set_updated_at(&self, updated_at: &str) {
        lock(&self.state).updated_at = updated_at.to_string();
    }
}

/// The session manager: at most 64 running sessions, kept in memory only.
pub struct ShellSessions {
    config: ShellSessionsConfig,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Serializes `open` so the 64-session cap cannot be overshot.
    open_lock: tokio::sync::Mutex<()>,
    terminations: Mutex<Vec<std::thread::JoinHandle<Termination>>>,
    /// The streamed terminals (`terminal_open`), which share the shell
    /// sessions' environment and shutdown.
    terminals: Arc<super::terminal::Terminals>,
}

impl Default for ShellSessions {
    fn default() -> Self {
        ShellSessions::new(ShellSessionsConfig::default())
    }
}

impl ShellSessions {
    pub fn new(config: ShellSessionsConfig) -> Self {
        ShellSessions {
            config,
            sessions: Mutex::new(HashMap::new()),
            open_lock: tokio::sync::Mutex::new(()),
            terminations: Mutex::new(Vec::new()),
            terminals: Arc::new(super::terminal::Terminals::default()),
        }
    }

    /// The streamed terminals of this process.
    pub fn terminals(&self) -> &Arc<super::terminal::Terminals> {
        &self.terminals
    }

    pub fn config(&self) -> &ShellSessionsConfig {
        &self.config
    }

    pub fn now_ms(&self) -> i64 {
        (self.config.clock)().timestamp_millis()
    }

    /// Sessions with status `running` (the 64 cap and restart blocking).
    pub fn running_count(&self) -> usize {
        lock(&self.sessions)
            .values()
            .filter(|s| s.status() == ShellSessionState::Running)
            .count()
    }

    pub fn get(&self, session_id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(session_id).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Preamble step 1: drop every non-running session whose `updated_at`
    /// does not parse or is at least 15 minutes old.
    pub fn purge_expired(&self) {
        let now = self.now_ms();
        lock(&self.sessions).retain(|_, s| {
            let st = lock(&s.state);
            if st.status == ShellSessionState::Running {
                return true;
            }
            match parse_timestamp_ms(&st.updated_at) {
                Some(updated) => now - updated < SHELL_SESSION_RETENTION_MS,
                None => false,
            }
        });
    }

    /// `open` after resource validation: the cap, the payload, the spawn.
    pub async fn open(
        &self,
        owner: &ShellIdentity,
        resource_id: &str,
        open: &Result<ShellOpenPayload, PayloadError>,
    ) -> Result<Value, ShellJobError> {
        let _guard = self.open_lock.lock().await;
        if self.running_count() >= MAX_ACTIVE_SHELL_SESSIONS {
            return Err(ShellJobError::with_fields(
                MSG_TOO_MANY_SESSIONS,
                json!({ "max_active_sessions": MAX_ACTIVE_SHELL_SESSIONS }),
            ));
        }
        let parsed = open.as_ref().map_err(ShellJobError::from_payload)?;
        let shell = parsed.shell.clone().unwrap_or_else(default_shell);
        let session_id = match &parsed.session_id {
            Some(requested) => {
                if self.get(requested).is_some() {
                    return Err(ShellJobError::with_fields(
                        MSG_SESSION_ID_EXISTS,
                        json!({ "session_id": requested }),
                    ));
                }
                requested.clone()
            }
            None => {
                let mut id = uuid::Uuid::new_v4().to_string();
                let mut retries = 0;
                while self.get(&id).is_some() && retries < 5 {
                    id = uuid::Uuid::new_v4().to_string();
                    retries += 1;
                }
                if self.get(&id).is_some() {
                    return Err(ShellJobError::message(MSG_SESSION_ID_ALLOCATION));
                }
                id
            }
        };

        let mut session_env = parsed.env.clone();
        session_env
            .entry("TERM".into())
            .or_insert_with(|| DEFAULT_SHELL_TERM.into());
        session_env
            .entry("COLUMNS".into())
            .or_insert_with(|| DEFAULT_SHELL_COLUMNS.to_string());
        session_env
            .entry("LINES".into())
            .or_insert_with(|| DEFAULT_SHELL_ROWS.to_string());
        let size = PtySize {
            cols: dimension(session_env.get("COLUMNS"), DEFAULT_SHELL_COLUMNS),
            rows: dimension(session_env.get("LINES"), DEFAULT_SHELL_ROWS),
            pixel_width: 0,
            pixel_height: 0,
        };
        let job = contain::job("shell_session");
        let mut overrides: Vec<(String, Option<String>)> =
            session_env.into_iter().map(|(k, v)| (k, Some(v))).collect();
        if let Some((k, v)) = job.env_tag() {
            overrides.push((k, Some(v)));
        }
        let env = self.config.child_env(&overrides);

        let fail = |message: String| {
            let message = format!("Failed to open shell session: {message}");
            ShellJobError::message(message)
        };
        let cwd = match &parsed.cwd {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_dir().map_err(|e| fail(format!("cwd: {e}")))?,
        };
        let program = resolve_program(&shell, &env, &cwd).map_err(fail)?;

        let now = iso((self.config.clock)());
        // Placed in the job's cgroup before the shell executes.
        let (program, args) = job.trampoline(&program, &parsed.shell_args);
        let spawned = spawn_pty(&program, &args, &env, &cwd, size)
            .map_err(|e| fail(format!("spawn {shell} {e}")))?;
        job.started(spawned.pid);
        job.trampoline_done(spawned.pid).await;
        let session = Arc::new(Session {
            id: session_id.clone(),
            team_id: owner.team_id.clone(),
            gateway_id: owner.gateway_id.clone(),
            resource_id: resource_id.to_string(),
            shell: shell.clone(),
            shell_args: parsed.shell_args.clone(),
            cwd: parsed.cwd.clone(),
            created_at: now.clone(),
            leader_pid: spawned.pid,
            job,
            state: Mutex::new(SessionState {
                status: ShellSessionState::Running,
                updated_at: now,
                exit_code: None,
                error: None,
                buffer: EventBuffer::default(),
                exit: None,
            }),
            io: Mutex::new(SessionIo {
                child_pid: Some(spawned.pid),
                writer: Some(Arc::new(Mutex::new(spawned.writer))),
                master: Some(spawned.master),
            }),
            clock: self.config.clock.clone(),
        });
        start_io_threads(&session, spawned.reader, spawned.child);

        // waitForChildStartup: a short turn, then an early exit is an error.
        tokio::time::sleep(STARTUP_CHECK_DELAY).await;
        let (status, exit) = {
            let st = lock(&session.state);
            (st.status, st.exit)
        };
        if let Some(exit) = exit {
            let detail = match (exit.code, exit.signal) {
                (_, Some(sig)) => format!("signal {sig}"),
                (Some(code), None) => format!("code {code}"),
                (None, None) => "code null".to_string(),
            };
            return Err(fail(format!("Process exited during startup ({detail})")));
        }
        if status != ShellSessionState::Running {
            // Secondary guard (unreachable with a PTY: no `error` event).
            let st = lock(&session.state);
            let message = st.error.clone().unwrap_or_else(|| match st.exit_code {
                Some(code) => format!("Shell session exited during startup with code {code}"),
                None => "Shell session exited during startup".to_string(),
            });
            let summary = session.summary_locked(&st);
            return Err(ShellJobError::with_fields(
                message,
                serde_json::to_value(summary).unwrap_or(Value::Null),
            ));
        }
        lock(&self.sessions).insert(session_id, session.clone());
        let opened = if parsed.shell_args.is_empty() {
            format!("Session opened ({shell})")
        } else {
            format!("Session opened ({shell} {})", parsed.shell_args.join(" "))
        };
        session.append(ShellStream::System, &opened);
        Ok(to_value(ShellOpenResult::new(session.summary())))
    }

    /// Shared checks 2–4 for actions on an existing session.
    pub fn lookup(
        &self,
        owner: &ShellIdentity,
        resource_id: &str,
        session_id: &str,
    ) -> Result<Arc<Session>, ShellJobError> {
        let with_id = |m: &str| ShellJobError::with_fields(m, json!({ "session_id": session_id }));
        let session = self
            .get(session_id)
            .ok_or_else(|| with_id(MSG_SESSION_NOT_FOUND))?;
        if session.team_id != owner.team_id || session.gateway_id != owner.gateway_id {
            return Err(with_id(MSG_SESSION_OTHER_CONTEXT));
        }
        if session.resource_id != resource_id {
            return Err(with_id(MSG_SESSION_RESOURCE_MISMATCH));
        }
        Ok(session)
    }

    /// Cleanup(reason): terminate and detach the child, `running` → `closed`.
    pub fn cleanup(&self, session: &Session, reason: &str) {
        let (had_child, writer, master) = {
            let mut io = lock(&session.io);
            (io.child_pid.take(), io.writer.take(), io.master.take())
        };
        drop(writer);
        // Mark it closed first, so the exit the signals cause keeps `closed`.
        {
            let now = session.now();
            let mut st = lock(&session.state);
            if st.status == ShellSessionState::Running {
                st.status = ShellSessionState::Closed;
            }
            st.updated_at = now;
        }
        let tree_alive = session.job.alive();
        if had_child.is_some() || tree_alive {
            let job = Arc::clone(&session.job);
            let grace = self.config.kill_grace;
            let session_id = session.id.clone();
            let reason = reason.to_string();
            let handle = std::thread::spawn(move || {
                let report = job.terminate(grace, &[libc::SIGHUP]);
                job.finish();
                if !report.survivors.is_empty() {
                    tracing::error!(
                        context = "shell_session_cleanup",
                        session_id = %session_id,
                        reason = %reason,
                        survivors = ?report.survivors,
                        "Failed to send child process termination signal"
                    );
                }
                // The master outlives the tree so the shell never sees a
                // half-closed terminal while it is being signalled.
                drop(master);
                report
            });
            let mut pending = lock(&self.terminations);
            pending.retain(|h| !h.is_finished());
            pending.push(handle);
        }
        let now = session.now();
        let mut st = lock(&session.state);
        if st.status == ShellSessionState::Running {
            st.status = ShellSessionState::Closed;
        }
        st.updated_at = now;
    }

    /// Revocation after a failed re-validation.
    pub fn revoke(&self, session: &Session, message: &str) {
        session.append(ShellStream::System, &format!("Session closed: {message}"));
        self.cleanup(session, "shell_session_resource_revoked");
        let now = session.now();
        let mut st = lock(&session.state);
        st.status = ShellSessionState::Closed;
        st.updated_at = now;
    }

    pub fn status(&self, session: &Session) -> Value {
        to_value(ShellSummaryResult::status(session.summary()))
    }

    pub fn read(&self, session: &Session, p: ShellReadPayload) -> Value {
        let st = lock(&session.state);
        let page = st.buffer.read(p.since_sequence, p.max_events);
        to_value(ShellReadResult::new(
            session.summary_locked(&st),
            p.since_sequence,
            p.max_events,
            page.has_more,
            page.events,
        ))
    }

    pub async fn write(
        &self,
        session: &Session,
        p: &Result<ShellWritePayload, PayloadError>,
    ) -> Result<Value, ShellJobError> {
        let p = p.as_ref().map_err(|_| {
            ShellJobError::with_fields(MSG_MISSING_INPUT, json!({ "session_id": session.id }))
        })?;
        let writer = {
            let io = lock(&session.io);
            match (session.status(), &io.writer) {
                (ShellSessionState::Running, Some(w)) => w.clone(),
                (status, _) => {
                    return Err(summary_error(
                        session,
                        format!("Shell session is not writable (status: {status})"),
                    ))
                }
            }
        };
        let data = p.data();
        let bytes = data.clone().into_bytes();
        let written = tokio::time::timeout(
            SHELL_WRITE_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut w = lock(&writer);
                w.write_all(&bytes)?;
                w.flush()
            }),
        )
        .await;
        let failure = match written {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(join)) => Some(join.to_string()),
            Err(_) => Some(format!(
                "write timed out after {} ms",
                SHELL_WRITE_TIMEOUT.as_millis()
            )),
        };
        if let Some(e) = failure {
            return Err(summary_error(
                session,
                format!("Failed to write to shell session: {e}"),
            ));
        }
        session.set_updated_now();
        Ok(to_value(ShellWriteResult::new(
            session.summary(),
            data.len() as u64,
            p.append_newline,
        )))
    }

    /// `resize` (extension): `cols` (or `columns`) and `rows`, 1..=1000
    /// (`None`: the payload's dimensions were missing or out of range).
    pub fn resize(
        &self,
        session: &Session,
        size: Option<ShellResizePayload>,
    ) -> Result<Value, ShellJobError> {
        let Some(ShellResizePayload { cols, rows }) = size else {
            return Err(ShellJobError::with_fields(
                MSG_INVALID_RESIZE,
                json!({ "session_id": session.id }),
            ));
        };
        {
            let io = lock(&session.io);
            let master = match (session.status(), &io.master, io.child_pid) {
                (ShellSessionState::Running, Some(m), Some(_)) => m,
                (status, _, _) => {
                    drop(io);
                    return Err(summary_error(
                        session,
                        format!("Shell session is not resizable (status: {status})"),
                    ));
                }
            };
            let size = PtySize {
                cols,
                rows,
                pixel_width: 0,
                pixel_height: 0,
            };
            if let Err(e) = master.resize(size) {
                drop(io);
                return Err(summary_error(
                    session,
                    format!("Failed to resize shell session: {e}"),
                ));
            }
        }
        session.set_updated_now();
        let mut result = to_value(session.summary());
        if let Value::Object(map) = &mut result {
            map.insert("message".into(), json!("Shell session resized"));
            map.insert("columns".into(), json!(cols));
            map.insert("rows".into(), json!(rows));
        }
        Ok(result)
    }

    pub fn close(&self, session: &Session) -> Value {
        if session.status() == ShellSessionState::Running {
            self.cleanup(session, "shell_session_close");
            session.append(ShellStream::System, "Session closed by request");
        }
        {
            let now = session.now();
            let mut st = lock(&session.state);
            st.status = ShellSessionState::Closed;
            st.updated_at = now;
        }
        to_value(ShellSummaryResult::closed(session.summary()))
    }

    /// Shutdown: close every running session and wait until each tree is
    /// gone (SIGTERM, then SIGKILL after the grace).
    pub async fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for s in &sessions {
            if s.status() == ShellSessionState::Running {
                self.cleanup(s, "shell_session_shutdown");
                s.append(ShellStream::System, "Session closed: gateway shutting down");
            }
        }
        self.wait_for_terminations().await;
        self.terminals
            .close_all("the gateway is shutting down")
            .await;
    }

    /// Waits for every termination started so far.
    pub async fn wait_for_terminations(&self) {
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.terminations));
        let _ = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn summary_error(session: &Session, message: String) -> ShellJobError {
    ShellJobError::with_fields(message, to_value(session.summary()))
}

fn dimension(raw: Option<&String>, default: u32) -> u16 {
    raw.and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default as u16)
}

/// The reader thread turns terminal output into `stdout` events; the waiter
/// thread reaps the shell and appends the exit event once the output has
/// drained (or after a short bound, when a background process keeps the
/// terminal open).
fn start_io_threads(
    session: &Arc<Session>,
    mut reader: Box<dyn Read + Send>,
    mut child: Box<dyn portable_pty::Child + Send + Sync>,
) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let s = session.clone();
    std::thread::spawn(move || {
        let mut chunker = Utf8Chunker::default();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => s.append(ShellStream::Stdout, &chunker.push(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EIO once every slave fd is closed
            }
        }
        s.append(ShellStream::Stdout, &chunker.finish());
        let _ = done_tx.send(());
    });
    let s = session.clone();
    std::thread::spawn(move || {
        let exit = match child.wait() {
            Ok(status) => match status.signal() {
                Some(sig) => ExitInfo {
                    code: None,
                    signal: Some(signal_name(sig)),
                },
                None => ExitInfo {
                    code: Some(status.exit_code() as i32),
                    signal: None,
                },
            },
            Err(_) => ExitInfo {
                code: None,
                signal: None,
            },
        };
        let _ = done_rx.recv_timeout(EXIT_DRAIN);
        s.on_exit(exit);
    });
}
