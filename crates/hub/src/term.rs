//! `panorama-hub shell attach` on the terminal stream (issue 15): one
//! `terminal_open` job, then bytes both ways over the session's private
//! broadcast channel (wire: [`panorama_protocol::terminal`]).
//!
//! Standard input is read as raw bytes and sent verbatim (so terminal
//! replies such as the answers to `ESC[>c` and `ESC[6n` arrive intact);
//! output is written to standard output verbatim. The only byte kept back
//! is Ctrl-] (0x1d), which closes the session. The terminal is restored
//! on every exit path: normal, error, panic (a drop guard), and
//! SIGTERM/SIGHUP/SIGINT/SIGQUIT (handled here, ending the loop).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use panorama_protocol::terminal::{
    Message, OutputOrder, OutputVerdict, CLIENT_PING_MS, JOB_TERMINAL_CLOSE, JOB_TERMINAL_OPEN,
};
use panorama_supabase::broadcast::{BroadcastChannel, BroadcastOptions};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::HubClient;
use crate::shell_jobs::ShellJobs;

/// Ctrl-]: close the session and exit.
pub const DETACH_BYTE: u8 = 0x1d;
/// Input not acknowledged within this is sent again.
const RESEND_AFTER: Duration = Duration::from_millis(500);

/// Whether a gateway's heartbeat capabilities announce the stream.
pub fn announces_stream(capabilities: &Value) -> bool {
    capabilities
        .get(panorama_protocol::terminal::CAPABILITY_KEY)
        .and_then(|c| c.get("version"))
        .and_then(Value::as_u64)
        .is_some_and(|v| v >= 1)
}

/// Splits typed bytes at the detach key: the bytes to send, and whether
/// the key was pressed (what follows it is dropped).
pub fn split_detach(bytes: &[u8]) -> (&[u8], bool) {
    match bytes.iter().position(|b| *b == DETACH_BYTE) {
        Some(i) => (&bytes[..i], true),
        None => (bytes, false),
    }
}

/// Input sent and not yet acknowledged, for resending.
#[derive(Debug, Default)]
pub struct Unacked {
    pending: VecDeque<(u64, Vec<u8>, Instant)>,
    next_seq: u64,
}

impl Unacked {
    /// Registers new input; returns its seq.
    pub fn push(&mut self, data: Vec<u8>, now: Instant) -> u64 {
        self.next_seq += 1;
        self.pending.push_back((self.next_seq, data, now));
        self.next_seq
    }

    /// Drops everything up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        while self.pending.front().is_some_and(|(s, _, _)| *s <= seq) {
            self.pending.pop_front();
        }
    }

    /// Everything still pending when the oldest was sent `after` ago.
    pub fn due(&mut self, now: Instant, after: Duration) -> Vec<(u64, Vec<u8>)> {
        if self
            .pending
            .front()
            .is_none_or(|(_, _, t)| now.duration_since(*t) < after)
        {
            return Vec::new();
        }
        self.pending
            .iter_mut()
            .map(|(s, d, t)| {
                *t = now;
                (*s, d.clone())
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Puts the terminal back when dropped.
struct RawMode;

impl RawMode {
    fn enable() -> Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Opens a session on the gateway (one job) and returns its id and topic.
pub async fn open(jobs: &ShellJobs<'_>, cols: u16, rows: u16) -> Result<(String, String)> {
    let mut payload = json!({"cols": cols, "rows": rows});
    if let Ok(term) = std::env::var("TERM") {
        payload["term"] = json!(term);
    }
    let result = jobs.job(JOB_TERMINAL_OPEN, "open", payload).await?;
    let id = result["session_id"]
        .as_str()
        .ok_or_else(|| anyhow!("terminal_open completed without a session_id: {result}"))?;
    let topic = result["topic"]
        .as_str()
        .ok_or_else(|| anyhow!("terminal_open completed without a topic: {result}"))?;
    Ok((id.to_string(), topic.to_string()))
}

/// `shell close`: one `terminal_close` job.
pub async fn close(jobs: &ShellJobs<'_>, session_id: &str) -> Result<bool> {
    let result = jobs
        .job(
            JOB_TERMINAL_CLOSE,
            "close",
            json!({"session_id": session_id}),
        )
        .await?;
    Ok(result["closed"].as_bool().unwrap_or(false))
}

/// Whether session `session_id` is alive on its gateway: joins its stream
/// and asks with `probe` (which does not keep the session attached).
/// `Some(idle_ms)` when the gateway answered within `wait`.
pub async fn probe(client: &HubClient, session_id: &str, wait: Duration) -> Option<u64> {
    let mut chan = BroadcastChannel::join(&BroadcastOptions {
        url: client.url.clone(),
        apikey: client.service_key().to_string(),
        access_token: None,
        topic: panorama_protocol::terminal::topic(session_id),
        private: true,
    })
    .await
    .ok()?;
    chan.send(
        Message::Probe {
            client_id: uuid::Uuid::new_v4().to_string(),
        }
        .to_broadcast(),
    )
    .await;
    let answer = async {
        while let Some(raw) = chan.recv().await {
            if let Ok(Message::Alive { idle_ms, .. }) = Message::from_broadcast(&raw) {
                return Some(idle_ms);
            }
        }
        None
    };
    tokio::time::timeout(wait, answer).await.ok().flatten()
}

/// How an attach ended.
#[derive(Debug)]
pub enum Ended {
    /// The session ended on the gateway (`exit`).
    Exited { reason: String, code: Option<i32> },
    /// Ctrl-]: the client closed it.
    Detached,
    /// A signal to this process; the session was closed.
    Signalled(&'static str),
}

/// Attaches the terminal to an open session until it ends. Standard input
/// must be a terminal (checked by the caller before opening anything).
pub async fn attach(jobs: &ShellJobs<'_>, session_id: &str, topic: &str) -> Result<Ended> {
    let opts = BroadcastOptions {
        url: jobs.client.url.clone(),
        apikey: jobs.client.service_key().to_string(),
        access_token: None,
        topic: topic.to_string(),
        private: true,
    };
    let mut chan = BroadcastChannel::join(&opts)
        .await
        .with_context(|| format!("joining the terminal stream of session {session_id}"))?;
    let client_id = uuid::Uuid::new_v4().to_string();
    let raw = RawMode::enable()?;
    let ended = pump(&mut chan, &opts, &client_id).await;
    drop(raw);
    if !matches!(ended, Ok(Ended::Exited { .. })) {
        // Best effort: the gateway also ends it after the idle timeout.
        chan.send(
            Message::Close {
                client_id: client_id.clone(),
            }
            .to_broadcast(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ended
}

fn stdin_bytes() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

async fn pump(
    chan: &mut BroadcastChannel,
    opts: &BroadcastOptions,
    client_id: &str,
) -> Result<Ended> {
    let mut stdin = stdin_bytes();
    let mut stdout = std::io::stdout();
    let mut unacked = Unacked::default();
    let mut output = OutputOrder::default();
    let mut asked_at = Instant::now();
    let mut winch = signal(SignalKind::window_change())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut tick = tokio::time::interval(Duration::from_millis(CLIENT_PING_MS.min(250)));
    let mut last_ping = Instant::now();
    let cid = || client_id.to_string();
    chan.send(
        Message::Attach {
            client_id: cid(),
            resume_from: output.request_resume(),
        }
        .to_broadcast(),
    )
    .await;
    if let Ok((cols, rows)) = crossterm::terminal::size() {
        chan.send(Message::Resize { cols, rows }.to_broadcast())
            .await;
    }
    loop {
        tokio::select! {
            typed = stdin.recv() => {
                let Some(typed) = typed else {
                    // Standard input closed: nothing more can be typed.
                    return Ok(Ended::Detached);
                };
                let (send, detach) = split_detach(&typed);
                if !send.is_empty() {
                    let seq = unacked.push(send.to_vec(), Instant::now());
                    chan.send(Message::Input { client_id: cid(), seq, data: send.to_vec() }.to_broadcast()).await;
                }
                if detach {
                    return Ok(Ended::Detached);
                }
            }
            msg = chan.recv() => {
                let Some(raw) = msg else {
                    // The socket dropped: join again and resume.
                    *chan = rejoin(opts).await?;
                    asked_at = Instant::now();
                    chan.send(Message::Attach { client_id: cid(), resume_from: output.request_resume() }.to_broadcast()).await;
                    continue;
                };
                let Ok(msg) = Message::from_broadcast(&raw) else { continue };
                match msg {
                    Message::Output { seq, data } => match output.accept(seq) {
                        OutputVerdict::Apply => {
                            stdout.write_all(&data).context("writing to the terminal")?;
                            stdout.flush().context("writing to the terminal")?;
                            chan.send(Message::OutputAck { client_id: cid(), seq }.to_broadcast()).await;
                        }
                        OutputVerdict::Duplicate | OutputVerdict::Gap { resume_from: None } => {}
                        OutputVerdict::Gap { resume_from: Some(from) } => {
                            asked_at = Instant::now();
                            chan.send(Message::Attach { client_id: cid(), resume_from: from }.to_broadcast()).await;
                        }
                    },
                    // Output older than the ring cannot come back.
                    Message::Attached { next_seq, oldest_seq } => output.attached(next_seq, oldest_seq),
                    Message::Ack { input_seq } => unacked.ack(input_seq),
                    Message::Exit { reason, code, .. } => return Ok(Ended::Exited { reason, code }),
                    _ => {}
                }
            }
            _ = winch.recv() => {
                if let Ok((cols, rows)) = crossterm::terminal::size() {
                    chan.send(Message::Resize { cols, rows }.to_broadcast()).await;
                }
            }
            _ = term.recv() => return Ok(Ended::Signalled("SIGTERM")),
            _ = hup.recv() => return Ok(Ended::Signalled("SIGHUP")),
            _ = int.recv() => return Ok(Ended::Signalled("SIGINT")),
            _ = quit.recv() => return Ok(Ended::Signalled("SIGQUIT")),
            _ = tick.tick() => {
                // A replay that never came (its attach or chunks lost): ask again.
                if output.awaiting().is_some() && asked_at.elapsed() >= RESEND_AFTER * 2 {
                    asked_at = Instant::now();
                    chan.send(Message::Attach { client_id: cid(), resume_from: output.request_resume() }.to_broadcast()).await;
                }
                for (seq, data) in unacked.due(Instant::now(), RESEND_AFTER) {
                    chan.send(Message::Input { client_id: cid(), seq, data }.to_broadcast()).await;
                }
                if last_ping.elapsed() >= Duration::from_millis(CLIENT_PING_MS) {
                    last_ping = Instant::now();
                    chan.send(Message::Ping { client_id: cid() }.to_broadcast()).await;
                }
            }
        }
    }
}

async fn rejoin(opts: &BroadcastOptions) -> Result<BroadcastChannel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match BroadcastChannel::join(opts).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "rejoining the terminal stream");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => {
                bail!("lost the terminal stream and could not join it again within 10 s: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detach_key_splits_input() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_detach(b"\x1b[>c"), (&b"\x1b[>c"[..], false));
    }

    #[test]
    fn unacked_input_is_resent_until_acknowledged() {
        let t0 = Instant::now();
        let mut u = Unacked::default();
        assert_eq!(u.push(b"a".to_vec(), t0), 1);
        assert_eq!(u.push(b"b".to_vec(), t0), 2);
        assert!(u.due(t0, RESEND_AFTER).is_empty());
        let later = t0 + RESEND_AFTER;
        assert_eq!(u.due(later, RESEND_AFTER).len(), 2);
        assert!(u.due(later, RESEND_AFTER).is_empty(), "not again at once");
        u.ack(1);
        assert_eq!(
            u.due(later + RESEND_AFTER, RESEND_AFTER),
            vec![(2, b"b".to_vec())]
        );
        u.ack(2);
        assert!(u.is_empty());
    }

    #[test]
    fn the_capability_is_read_from_the_heartbeat() {
        assert!(announces_stream(
            &json!({"terminal_stream": {"version": 1}})
        ));
        assert!(!announces_stream(&json!({"runtime": {}})));
    }
}
