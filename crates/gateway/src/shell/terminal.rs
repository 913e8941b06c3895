//! Interactive terminals over a realtime byte stream (issue 15; the wire is
//! in [`panorama_protocol::terminal`]).
//!
//! A `terminal_open` job spawns the shell on a PTY (in the resource's
//! working directory, else `$HOME`), joins the private broadcast channel
//! `realtime:terminal:<job id>` with the gateway's JWT, and completes with
//! the session id and topic: the bytes then flow over the channel, not
//! through jobs. One task per session pumps PTY output (sequence-numbered,
//! kept in a ring for resume, paused while the client's acknowledgements
//! lag by a window) and applies client input, resizes and closes.
//!
//! The session ends when a client sends `close`, when no client message
//! arrived for the idle timeout (clients ping every second while
//! attached), when the shell exits, or at the gateway's shutdown; its whole
//! contained job (its cgroup, or its process tree; [`crate::contain`]) is
//! then terminated with [`Job::terminate`].
//!
//! Served and announced in the heartbeat unless [`STREAM_ENABLE_ENV`] turns
//! it off; then `terminal_*` jobs are refused as unsupported, like any
//! unknown job type.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use panorama_protocol::terminal::{
    self, window_open, InputOrder, InputVerdict, Message, OpenPayload, OutputRing, MAX_CHUNK_BYTES,
    RING_BYTES, WINDOW_CHUNKS,
};
use panorama_supabase::broadcast::{BroadcastChannel, BroadcastOptions};
use portable_pty::{MasterPty, PtySize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::spawn::{
    default_shell, resolve_program, signal_name, spawn_pty, ShellSessionsConfig, SpawnedPty,
    DEFAULT_SHELL_TERM,
};
use crate::contain::{self, Job};

/// The idle-timeout setting (seconds): no client message for this long
/// ends a terminal session.
pub const IDLE_TIMEOUT_ENV: &str = "PANORAMA_TERMINAL_IDLE_TIMEOUT_SECS";
/// Turns the terminal stream off (`0`, `false`, `off`, `no`): the gateway
/// then neither announces it nor accepts `terminal_open` /
/// `terminal_close`, and `shell attach` falls back to `shell_session`.
/// On by default.
pub const STREAM_ENABLE_ENV: &str = "PANORAMA_GATEWAY_TERMINAL_STREAM";
/// Most terminals one gateway runs at once.
pub const MAX_TERMINALS: usize = 64;
/// How long to wait between joins after the channel dropped.
const REJOIN_DELAY: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The idle timeout from [`IDLE_TIMEOUT_ENV`], else the default.
pub fn idle_timeout_setting() -> Duration {
    let secs = std::env::var(IDLE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(terminal::DEFAULT_IDLE_TIMEOUT_SECS as f64);
    Duration::from_secs_f64(secs)
}

/// Whether [`STREAM_ENABLE_ENV`] leaves the stream on.
pub fn stream_enabled_setting() -> bool {
    stream_enabled(std::env::var(STREAM_ENABLE_ENV).ok().as_deref())
}

/// The stream is on unless the setting says off.
pub fn stream_enabled(setting: Option<&str>) -> bool {
    !setting.is_some_and(|v| {
        ["0", "false", "off", "no"]
            .iter()
            .any(|off| v.trim().eq_ignore_ascii_case(off))
    })
}

struct Running {
    resource_id: String,
    stop: watch::Sender<Option<String>>,
    done: watch::Receiver<bool>,
}

/// The terminals of this gateway process.
pub struct Terminals {
    sessions: Mutex<HashMap<String, Running>>,
    pub idle_timeout: Duration,
    /// The stream is served (see [`STREAM_ENABLE_ENV`]).
    pub enabled: bool,
}

impl Default for Terminals {
    fn default() -> Self {
        let mut t = Terminals::new(idle_timeout_setting());
        t.enabled = stream_enabled_setting();
        t
    }
}

/// Where a terminal starts: the payload's `cwd`, else the resource's
/// `metadata.cwd` / `metadata.working_directory`, else `$HOME`, else `/`.
pub fn start_dir(
    payload_cwd: Option<&str>,
    resource_metadata: Option<&Value>,
    home: Option<PathBuf>,
) -> PathBuf {
    let from_resource = resource_metadata.and_then(|m| {
        ["cwd", "working_directory"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_str))
    });
    payload_cwd
        .or(from_resource)
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .or(home)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl Terminals {
    pub fn new(idle_timeout: Duration) -> Self {
        Terminals {
            sessions: Mutex::new(HashMap::new()),
            idle_timeout,
            enabled: false,
        }
    }

    pub fn running_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// `(session id, resource id)` of the running terminals.
    pub fn list(&self) -> Vec<(String, String)> {
        lock(&self.sessions)
            .iter()
            .map(|(id, r)| (id.clone(), r.resource_id.clone()))
            .collect()
    }

    /// Opens a session `session_id` (the job id). The channel is joined
    /// before this returns, so a client may attach as soon as the job
    /// completes.
    pub async fn open(
        self: &Arc<Self>,
        session_id: &str,
        payload: &OpenPayload,
        cwd: PathBuf,
        config: &ShellSessionsConfig,
        channel: BroadcastOptions,
    ) -> Result<Value, String> {
        if self.running_count() >= MAX_TERMINALS {
            return Err(format!(
                "Too many terminals on this gateway (max {MAX_TERMINALS}); close one with `panorama-hub shell close`"
            ));
        }
        let shell = default_shell();
        let job = contain::job("terminal");
        let term = payload
            .term
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL_TERM.to_string());
        let mut overrides: Vec<(String, Option<String>)> = vec![
            ("TERM".into(), Some(term)),
            ("COLUMNS".into(), None),
            ("LINES".into(), None),
        ];
        if let Some((k, v)) = job.env_tag() {
            overrides.push((k, Some(v)));
        }
        let env = config.child_env(&overrides);
        let fail = |m: String| format!("Failed to open terminal: {m}");
        let program = resolve_program(&shell, &env, &cwd)
            .map_err(|e| fail(format!("{e} (working directory {})", cwd.display())))?;
        let size = PtySize {
            cols: payload.cols,
            rows: payload.rows,
            pixel_width: 0,
            pixel_height: 0,
        };
        // Placed in the job's cgroup before the shell executes.
        let (program, args) = job.trampoline(&program, &["-i".to_string()]);
        let spawned = spawn_pty(&program, &args, &env, &cwd, size)
            .map_err(|e| fail(format!("spawn {shell} {e}")))?;
        job.started(spawned.pid);
        job.trampoline_done(spawned.pid).await;
        let joined = BroadcastChannel::join(&channel).await;
        let chan = match joined {
            Ok(c) => c,
            Err(e) => {
                let j = Arc::clone(&job);
                let _ = tokio::task::spawn_blocking(move || {
                    j.terminate(Duration::from_millis(500), &[libc::SIGHUP]);
                    j.finish();
                })
                .await;
                return Err(fail(format!("joining {} failed: {e}", channel.topic)));
            }
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.sessions).insert(
            session_id.to_string(),
            Running {
                resource_id: payload.resource_id.clone(),
                stop: stop_tx,
                done: done_rx,
            },
        );
        let pump = Pump {
            session_id: session_id.to_string(),
            idle_timeout: self.idle_timeout,
            kill_grace: config.kill_grace,
            job,
            channel_opts: channel.clone(),
        };
        let terminals = Arc::clone(self);
        let id = session_id.to_string();
        tokio::spawn(async move {
            pump.run(chan, spawned, stop_rx).await;
            lock(&terminals.sessions).remove(&id);
            let _ = done_tx.send(true);
        });
        tracing::info!(sessionId = %session_id, shell = %shell, cwd = %cwd.display(), "Terminal opened");
        Ok(json!({
            "session_id": session_id,
            "topic": channel.topic,
            "resource_id": payload.resource_id,
            "shell": shell,
            "cwd": cwd.display().to_string(),
            "idle_timeout_secs": self.idle_timeout.as_secs_f64(),
        }))
    }

    /// Ends a session (its tree reaped) and waits for it. `false` when
    /// there is no such session.
    pub async fn close(&self, session_id: &str, reason: &str) -> bool {
        let done = {
            let map = lock(&self.sessions);
            let Some(r) = map.get(session_id) else {
                return false;
            };
            let _ = r.stop.send(Some(reason.to_string()));
            r.done.clone()
        };
        wait_done(done).await;
        true
    }

    /// Shutdown: end every session and wait until each tree is gone.
    pub async fn close_all(&self, reason: &str) {
        let dones: Vec<watch::Receiver<bool>> = lock(&self.sessions)
            .values()
            .map(|r| {
                let _ = r.stop.send(Some(reason.to_string()));
                r.done.clone()
            })
            .collect();
        for d in dones {
            wait_done(d).await;
        }
    }
}

async fn wait_done(mut done: watch::Receiver<bool>) {
    let _ = done.wait_for(|d| *d).await;
}

struct Pump {
    session_id: String,
    idle_timeout: Duration,
    kill_grace: Duration,
    job: Arc<Job>,
    channel_opts: BroadcastOptions,
}

/// How the shell ended.
struct Exit {
    code: Option<i32>,
    signal: Option<String>,
}

/// The PTY's blocking ends on threads: output chunks come in on a bounded
/// channel (so an unread PTY stops the program), input goes out on one.
fn start_threads(
    mut reader: Box<dyn Read + Send>,
    mut writer: Box<dyn Write + Send>,
    mut child: Box<dyn portable_pty::Child + Send + Sync>,
) -> (
    mpsc::Receiver<Vec<u8>>,
    std::sync::mpsc::Sender<Vec<u8>>,
    oneshot::Receiver<Exit>,
) {
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EIO once every slave fd is closed
            }
        }
    });
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        while let Ok(bytes) = in_rx.recv() {
            if writer
                .write_all(&bytes)
                .and_then(|()| writer.flush())
                .is_err()
            {
                break;
            }
        }
    });
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let exit = match child.wait() {
            Ok(status) => match status.signal() {
                Some(sig) => Exit {
                    code: None,
                    signal: Some(signal_name(sig).to_string()),
                },
                None => Exit {
                    code: Some(status.exit_code() as i32),
                    signal: None,
                },
            },
            Err(_) => Exit {
                code: None,
                signal: None,
            },
        };
        let _ = exit_tx.send(exit);
    });
    (out_rx, in_tx, exit_rx)
}

impl Pump {
    async fn run(
        self,
        chan: BroadcastChannel,
        spawned: SpawnedPty,
        mut stop: watch::Receiver<Option<String>>,
    ) {
        let master: Box<dyn MasterPty + Send> = spawned.master;
        let (mut output, input, mut exit_rx) =
            start_threads(spawned.reader, spawned.writer, spawned.child);
        let mut chan = Some(chan);
        let mut ring = OutputRing::new(RING_BYTES);
        let mut acked: u64 = 0;
        let mut inputs: HashMap<String, InputOrder> = HashMap::new();
        let mut last_client = Instant::now();
        let mut output_open = true;
        let mut exit: Option<Exit> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let reason: String = loop {
            let window = window_open(ring.next_seq(), acked, WINDOW_CHUNKS);
            tokio::select! {
                chunk = output.recv(), if output_open && window => match chunk {
                    Some(bytes) => {
                        let seq = ring.push(bytes.clone());
                        if let Some(c) = &chan {
                            c.send(Message::Output { seq, data: bytes }.to_broadcast()).await;
                        }
                    }
                    None => {
                        output_open = false;
                        if let Some(e) = &exit {
                            break describe_exit(e);
                        }
                    }
                },
                e = &mut exit_rx, if exit.is_none() => {
                    let e = e.unwrap_or(Exit { code: None, signal: None });
                    let reason = describe_exit(&e);
                    // Kept: `exit_rx` is spent and must not be polled again.
                    exit = Some(e);
                    // Let the last output drain (bounded: a background
                    // process may hold the terminal open).
                    if !output_open {
                        break reason;
                    }
                    let deadline = Instant::now() + Duration::from_millis(300);
                    while let Ok(Some(bytes)) = tokio::time::timeout_at(deadline, output.recv()).await {
                        let seq = ring.push(bytes.clone());
                        if let Some(c) = &chan {
                            c.send(Message::Output { seq, data: bytes }.to_broadcast()).await;
                        }
                    }
                    break reason;
                },
                msg = next_msg(&mut chan) => match msg {
                    None => {
                        tracing::debug!(sessionId = %self.session_id, "terminal channel dropped; joining again");
                        chan = None;
                    }
                    Some(raw) => {
                        let Ok(msg) = Message::from_broadcast(&raw) else {
                            tracing::debug!(sessionId = %self.session_id, "ignoring a malformed terminal message");
                            continue;
                        };
                        if !matches!(msg, Message::Probe { .. }) {
                            last_client = Instant::now();
                        }
                        let Some(c) = &chan else { continue };
                        match msg {
                            Message::Probe { .. } => {
                                c.send(Message::Alive { next_seq: ring.next_seq(), idle_ms: last_client.elapsed().as_millis() as u64 }.to_broadcast()).await;
                            }
                            Message::Attach { resume_from, .. } => {
                                acked = acked.max(resume_from.saturating_sub(1));
                                c.send(Message::Attached { next_seq: ring.next_seq(), oldest_seq: ring.oldest_seq() }.to_broadcast()).await;
                                for (seq, data) in ring.since(resume_from) {
                                    c.send(Message::Output { seq, data: data.to_vec() }.to_broadcast()).await;
                                }
                            }
                            Message::Input { client_id, seq, data } => {
                                let order = inputs.entry(client_id).or_default();
                                match order.accept(seq) {
                                    InputVerdict::Apply => {
                                        let _ = input.send(data);
                                    }
                                    InputVerdict::Duplicate | InputVerdict::Gap => {}
                                }
                                c.send(Message::Ack { input_seq: order.last }.to_broadcast()).await;
                            }
                            Message::OutputAck { seq, .. } => acked = acked.max(seq),
                            Message::Resize { cols, rows } => {
                                let _ = master.resize(PtySize { cols, rows, pixel_width: 0, pixel_height: 0 });
                            }
                            Message::Ping { .. } => {}
                            Message::Close { .. } => break "closed by the client".to_string(),
                            // Gateway-to-client messages from another gateway member: ignore.
                            Message::Output { .. } | Message::Ack { .. } | Message::Attached { .. } | Message::Exit { .. } | Message::Alive { .. } => {}
                        }
                    }
                },
                _ = stop.changed() => {
                    break stop.borrow().clone().unwrap_or_else(|| "stopped".into());
                },
                _ = tick.tick() => {
                    if last_client.elapsed() >= self.idle_timeout {
                        break format!("no client attached for {} s", self.idle_timeout.as_secs_f64());
                    }
                    if chan.is_none() {
                        match BroadcastChannel::join(&self.channel_opts).await {
                            Ok(c) => chan = Some(c),
                            Err(e) => {
                                tracing::warn!(sessionId = %self.session_id, error = %e, "Could not rejoin the terminal channel; retrying");
                                tokio::time::sleep(REJOIN_DELAY).await;
                            }
                        }
                    }
                }
            }
        };
        // Reap the whole tree first, then tell the clients.
        let job = Arc::clone(&self.job);
        let grace = self.kill_grace;
        let termination = tokio::task::spawn_blocking(move || {
            let report = job.terminate(grace, &[libc::SIGHUP]);
            job.finish();
            report
        })
        .await
        .unwrap_or_default();
        drop(master);
        let exit = match exit {
            Some(e) => e,
            None => tokio::time::timeout(Duration::from_secs(1), exit_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(Exit {
                    code: None,
                    signal: None,
                }),
        };
        tracing::info!(sessionId = %self.session_id, reason = %reason, pids = termination.pids.len(), killed = termination.killed, "Terminal closed");
        if let Some(c) = &chan {
            c.send(
                Message::Exit {
                    code: exit.code,
                    signal: exit.signal,
                    reason,
                }
                .to_broadcast(),
            )
            .await;
            // Give the socket task a moment to flush the exit.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn describe_exit(e: &Exit) -> String {
    match (&e.signal, e.code) {
        (Some(sig), _) => format!("the shell was killed by {sig}"),
        (None, Some(code)) => format!("the shell exited with code {code}"),
        (None, None) => "the shell exited".to_string(),
    }
}

async fn next_msg(chan: &mut Option<BroadcastChannel>) -> Option<Value> {
    match chan {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_on_unless_the_setting_turns_it_off() {
        assert!(stream_enabled(None));
        assert!(stream_enabled(Some("1")));
        for off in ["0", "false", " OFF ", "no"] {
            assert!(!stream_enabled(Some(off)), "{off}");
        }
    }

    #[test]
    fn the_start_dir_is_the_payload_then_the_resource_then_home() {
        let home = Some(PathBuf::from("/home/u"));
        let meta = json!({"cwd": "/srv"});
        assert_eq!(
            start_dir(Some("/tmp"), Some(&meta), home.clone()),
            PathBuf::from("/tmp")
        );
        assert_eq!(
            start_dir(None, Some(&meta), home.clone()),
            PathBuf::from("/srv")
        );
        assert_eq!(
            start_dir(
                None,
                Some(&json!({"working_directory": "/w"})),
                home.clone()
            ),
            PathBuf::from("/w")
        );
        assert_eq!(start_dir(None, None, home), PathBuf::from("/home/u"));
        assert_eq!(start_dir(Some(" "), None, None), PathBuf::from("/"));
    }
}
