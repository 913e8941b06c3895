//! `panorama-hub shell attach --gateway G --resource R`: an interactive
//! terminal on a gateway's remote shell, driven entirely through
//! `shell_session` jobs queued over the REST API with the service key.
//!
//! Flow: `open` → raw mode → loop { keystrokes → `write`; window size →
//! `resize`; `read` by sequence → print } → Ctrl-] detaches and `close`s.
//! Jobs are serialized: the next one is queued only after the previous one
//! is terminal, so writes arrive in order.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::{json, Value};

use crate::client::HubClient;

/// How long one job may take before attach gives up on it.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a queued job's row is polled.
const JOB_POLL: Duration = Duration::from_millis(50);

#[derive(Subcommand, Debug)]
pub enum ShellCmd {
    /// Attach this terminal to a new shell session on a gateway (Ctrl-] detaches and closes it).
    Attach {
        /// Gateway id.
        #[arg(long)]
        gateway: String,
        /// remote_shell resource id bound to that gateway.
        #[arg(long)]
        resource: String,
        /// Shell to start (default: the gateway user's $SHELL).
        #[arg(long)]
        shell: Option<String>,
        /// Pause between output polls when idle, in milliseconds.
        #[arg(long, default_value_t = 150)]
        poll_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("shell_session {action} job failed: {message}")]
    JobFailed { action: String, message: String },
    #[error(
        "shell_session {action} job {id} did not finish within {secs} s; is the gateway running?"
    )]
    JobTimeout {
        action: String,
        id: String,
        secs: u64,
    },
    #[error("no gateway {0}: list them with `panorama-hub gateways list`")]
    NoGateway(String),
}

// ------------------------------------------------------------------ keys

/// What a key press means for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Bytes to send to the remote terminal.
    Send(Vec<u8>),
    /// Ctrl-]: detach and close.
    Detach,
}

/// Translates a key event into terminal input (xterm sequences).
pub fn key_action(ev: &KeyEvent) -> Option<KeyAction> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
    let alt = ev.modifiers.contains(KeyModifiers::ALT);
    let bytes: Vec<u8> = match ev.code {
        KeyCode::Char(']') if ctrl => return Some(KeyAction::Detach),
        KeyCode::Char('5') if ctrl => return Some(KeyAction::Detach), // Ctrl-] on some terminals
        KeyCode::Char(c) if ctrl => {
            let lower = c.to_ascii_lowercase();
            match lower {
                'a'..='z' => vec![(lower as u8) & 0x1f],
                ' ' | '@' | '2' => vec![0],
                '[' | '3' => vec![0x1b],
                '\\' | '4' => vec![0x1c],
                '^' | '6' => vec![0x1e],
                '_' | '7' | '-' => vec![0x1f],
                _ => c.to_string().into_bytes(),
            }
        }
        KeyCode::Char(c) => c.to_string().into_bytes(),
        KeyCode::Enter => b"\r".to_vec(),
        KeyCode::Backspace => vec![0x7f],
        KeyCode::Tab => b"\t".to_vec(),
        KeyCode::BackTab => b"\x1b[Z".to_vec(),
        KeyCode::Esc => vec![0x1b],
        KeyCode::Up => b"\x1b[A".to_vec(),
        KeyCode::Down => b"\x1b[B".to_vec(),
        KeyCode::Right => b"\x1b[C".to_vec(),
        KeyCode::Left => b"\x1b[D".to_vec(),
        KeyCode::Home => b"\x1b[H".to_vec(),
        KeyCode::End => b"\x1b[F".to_vec(),
        KeyCode::Insert => b"\x1b[2~".to_vec(),
        KeyCode::Delete => b"\x1b[3~".to_vec(),
        KeyCode::PageUp => b"\x1b[5~".to_vec(),
        KeyCode::PageDown => b"\x1b[6~".to_vec(),
        KeyCode::F(n @ 1..=4) => format!("\x1bO{}", (b'P' + n - 1) as char).into_bytes(),
        KeyCode::F(n @ 5..=12) => {
            let code = [15, 17, 18, 19, 20, 21, 23, 24][(n - 5) as usize];
            format!("\x1b[{code}~").into_bytes()
        }
        _ => return None,
    };
    let bytes = if alt {
        let mut b = vec![0x1b];
        b.extend(bytes);
        b
    } else {
        bytes
    };
    Some(KeyAction::Send(bytes))
}

// ------------------------------------------------------------------ output

/// Tracks the read position in a session's event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceTracker {
    /// The last sequence consumed (`since_sequence` of the next read).
    pub since: u64,
}

/// What one `read` result contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOutput {
    /// Text to print: terminal output as is, system events on their own line.
    pub text: String,
    /// More events are waiting: read again at once.
    pub has_more: bool,
    /// The session status reported by the read.
    pub status: String,
    /// Events lost to eviction before this read (a gap in sequences).
    pub dropped: u64,
}

impl SequenceTracker {
    /// Consumes a `read` result: events at or below `since` are skipped
    /// (a duplicate or stale page), a gap is reported as dropped.
    pub fn accept(&mut self, result: &Value) -> ReadOutput {
        let mut out = ReadOutput {
            has_more: result.get("has_more") == Some(&Value::Bool(true)),
            status: result
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            ..Default::default()
        };
        let events = result.get("events").and_then(Value::as_array);
        for e in events.into_iter().flatten() {
            let Some(seq) = e.get("sequence").and_then(Value::as_u64) else {
                continue;
            };
            if seq <= self.since {
                continue;
            }
            if seq > self.since + 1 {
                out.dropped += seq - self.since - 1;
            }
            self.since = seq;
            let data = e.get("data").and_then(Value::as_str).unwrap_or("");
            match e.get("stream").and_then(Value::as_str) {
                Some("system") => out.text.push_str(&format!("\r\n[{data}]\r\n")),
                _ => out.text.push_str(data),
            }
        }
        if out.dropped > 0 {
            out.text = format!(
                "\r\n[{} earlier events were dropped]\r\n{}",
                out.dropped, out.text
            );
        }
        out
    }
}

// ------------------------------------------------------------------ jobs

/// Queues `shell_session` jobs for one gateway and waits for their results.
pub struct ShellJobs<'a> {
    pub client: &'a HubClient,
    pub team_id: String,
    pub gateway_id: String,
    pub resource_id: String,
    pub timeout: Duration,
}

impl ShellJobs<'_> {
    /// Queues one action and waits until the job is terminal. `Ok` is the
    /// result of a completed job; a failed or cancelled job is an error.
    pub async fn call(&self, action: &str, mut payload: Value) -> Result<Value> {
        if let Value::Object(map) = &mut payload {
            map.insert("action".into(), json!(action));
            map.insert("resource_id".into(), json!(self.resource_id));
        }
        let job = self
            .client
            .insert(
                "gateway_jobs",
                &json!({"team_id": self.team_id, "gateway_id": self.gateway_id,
                    "job_type": "shell_session", "status": "queued", "payload": payload,
                    "requested_via": "panorama-hub-cli"}),
            )
            .await
            .with_context(|| format!("queueing a shell_session {action} job"))?;
        let id = job
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the hub returned a job without an id: {job}"))?
            .to_string();
        let deadline = Instant::now() + self.timeout;
        loop {
            let rows = self
                .client
                .select(
                    "gateway_jobs",
                    &[
                        ("id", format!("eq.{id}")),
                        ("select", "status,result,error".into()),
                    ],
                )
                .await?;
            let row = rows.into_iter().next().unwrap_or(Value::Null);
            match row.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(row.get("result").cloned().unwrap_or(Value::Null)),
                Some("failed") | Some("cancelled") => {
                    let message = row
                        .get("error")
                        .and_then(Value::as_str)
                        .or_else(|| row.pointer("/result/message").and_then(Value::as_str))
                        .unwrap_or("unknown error")
                        .to_string();
                    return Err(AttachError::JobFailed {
                        action: action.into(),
                        message,
                    }
                    .into());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AttachError::JobTimeout {
                    action: action.into(),
                    id,
                    secs: self.timeout.as_secs(),
                }
                .into());
            }
            tokio::time::sleep(JOB_POLL).await;
        }
    }
}

/// Restores the terminal when dropped.
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

enum Input {
    Key(KeyAction),
    Resize(u16, u16),
}

fn print_raw(text: &str) {
    let mut out = std::io::stdout();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `shell attach`: runs until detach or until the session ends. Returns the
/// process exit code.
pub async fn run(client: &HubClient, cmd: &ShellCmd) -> Result<i32> {
    let ShellCmd::Attach {
        gateway,
        resource,
        shell,
        poll_ms,
    } = cmd;
    let row = client
        .select("team_gateways", &[("id", format!("eq.{gateway}"))])
        .await
        .context("looking up the gateway")?
        .into_iter()
        .next()
        .ok_or_else(|| AttachError::NoGateway(gateway.clone()))?;
    let jobs = ShellJobs {
        client,
        team_id: row
            .get("team_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        gateway_id: gateway.clone(),
        resource_id: resource.clone(),
        timeout: JOB_TIMEOUT,
    };
    let (cols, rows) = crossterm::terminal::size().unwrap_or((120, 40));
    let mut open = json!({"env": {"COLUMNS": cols.to_string(), "LINES": rows.to_string()}});
    if let Some(s) = shell {
        open["shell"] = json!(s);
    }
    let opened = jobs.call("open", open).await?;
    let session_id = opened
        .get("session_id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the open result has no session_id: {opened}"))?
        .to_string();
    eprintln!("attached to shell session {session_id} on gateway {gateway}; Ctrl-] detaches\r");

    let raw = RawMode::enable()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    std::thread::spawn(move || loop {
        let input = match crossterm::event::read() {
            Ok(Event::Key(k)) => key_action(&k).map(Input::Key),
            Ok(Event::Paste(text)) => Some(Input::Key(KeyAction::Send(text.into_bytes()))),
            Ok(Event::Resize(c, r)) => Some(Input::Resize(c, r)),
            Ok(_) => None,
            Err(_) => break,
        };
        if let Some(input) = input {
            let detach = matches!(input, Input::Key(KeyAction::Detach));
            if tx.send(input).is_err() || detach {
                break;
            }
        }
    });

    let sid = json!(session_id);
    let mut tracker = SequenceTracker::default();
    let idle = Duration::from_millis((*poll_ms).max(10));
    let mut outcome: Result<i32> = Ok(0);
    'session: loop {
        let mut pending: Vec<u8> = Vec::new();
        let mut resize: Option<(u16, u16)> = None;
        let mut detach = false;
        while let Ok(input) = rx.try_recv() {
            match input {
                Input::Key(KeyAction::Send(b)) => pending.extend(b),
                Input::Key(KeyAction::Detach) => {
                    detach = true;
                    break;
                }
                Input::Resize(c, r) => resize = Some((c, r)),
            }
        }
        if detach {
            break;
        }
        if let Some((c, r)) = resize {
            if let Err(e) = jobs
                .call("resize", json!({"session_id": sid, "cols": c, "rows": r}))
                .await
            {
                print_raw(&format!("\r\n[{e}]\r\n"));
            }
        }
        let typed = !pending.is_empty();
        if typed {
            let input = String::from_utf8_lossy(&pending).into_owned();
            if let Err(e) = jobs
                .call("write", json!({"session_id": sid, "input": input}))
                .await
            {
                outcome = Err(e);
                break;
            }
        }
        loop {
            let page = match jobs
                .call(
                    "read",
                    json!({"session_id": sid, "since_sequence": tracker.since, "max_events": 1000}),
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    outcome = Err(e);
                    break 'session;
                }
            };
            let out = tracker.accept(&page);
            print_raw(&out.text);
            if out.status != "running" && !out.has_more {
                print_raw(&format!("\r\n[session {}]\r\n", out.status));
                break 'session;
            }
            if !out.has_more {
                break;
            }
        }
        if !typed {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                Some(input) = rx.recv() => {
                    // Put it back in front of the queue by handling it next turn.
                    match input {
                        Input::Key(KeyAction::Detach) => break,
                        Input::Key(KeyAction::Send(b)) => {
                            let input = String::from_utf8_lossy(&b).into_owned();
                            if let Err(e) = jobs.call("write", json!({"session_id": sid, "input": input})).await {
                                outcome = Err(e);
                                break;
                            }
                        }
                        Input::Resize(c, r) => {
                            let _ = jobs.call("resize", json!({"session_id": sid, "cols": c, "rows": r})).await;
                        }
                    }
                }
            }
        }
    }
    drop(raw);
    let closed = jobs.call("close", json!({"session_id": sid})).await;
    match (&outcome, closed) {
        (Ok(_), Ok(_)) => eprintln!("\ndetached; shell session {session_id} closed"),
        (_, Err(e)) => eprintln!("\nclosing shell session {session_id} failed: {e}"),
        _ => {}
    }
    if let Err(e) = &outcome {
        bail!("{e}");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    fn send(code: KeyCode, m: KeyModifiers) -> Vec<u8> {
        match key_action(&key(code, m)) {
            Some(KeyAction::Send(b)) => b,
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    #[test]
    fn ctrl_right_bracket_detaches() {
        assert_eq!(
            key_action(&key(KeyCode::Char(']'), KeyModifiers::CONTROL)),
            Some(KeyAction::Detach)
        );
        assert_eq!(
            key_action(&key(KeyCode::Char(']'), KeyModifiers::NONE)),
            Some(KeyAction::Send(b"]".to_vec()))
        );
    }

    #[test]
    fn keys_become_terminal_bytes() {
        assert_eq!(send(KeyCode::Char('a'), KeyModifiers::NONE), b"a");
        assert_eq!(send(KeyCode::Char('é'), KeyModifiers::NONE), "é".as_bytes());
        assert_eq!(send(KeyCode::Char('c'), KeyModifiers::CONTROL), [3]);
        assert_eq!(send(KeyCode::Char('D'), KeyModifiers::CONTROL), [4]);
        assert_eq!(send(KeyCode::Enter, KeyModifiers::NONE), b"\r");
        assert_eq!(send(KeyCode::Backspace, KeyModifiers::NONE), [0x7f]);
        assert_eq!(send(KeyCode::Up, KeyModifiers::NONE), b"\x1b[A");
        assert_eq!(send(KeyCode::Delete, KeyModifiers::NONE), b"\x1b[3~");
        assert_eq!(send(KeyCode::F(1), KeyModifiers::NONE), b"\x1bOP");
        assert_eq!(send(KeyCode::F(5), KeyModifiers::NONE), b"\x1b[15~");
        assert_eq!(send(KeyCode::Char('b'), KeyModifiers::ALT), b"\x1bb");
        let mut release = key(KeyCode::Char('a'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key_action(&release), None);
        assert_eq!(
            key_action(&key(KeyCode::CapsLock, KeyModifiers::NONE)),
            None
        );
    }

    #[test]
    fn tracker_advances_skips_duplicates_and_reports_gaps() {
        let mut t = SequenceTracker::default();
        let page = json!({"status": "running", "has_more": true, "events": [
            {"sequence": 1, "stream": "system", "data": "Session opened (/bin/bash)"},
            {"sequence": 2, "stream": "stdout", "data": "$ "}
        ]});
        let out = t.accept(&page);
        assert_eq!(t.since, 2);
        assert!(out.has_more);
        assert_eq!(out.text, "\r\n[Session opened (/bin/bash)]\r\n$ ");
        // The same page again prints nothing.
        assert_eq!(t.accept(&page).text, "");
        // A gap: 3..=9 were evicted.
        let out = t.accept(&json!({"status": "exited", "has_more": false, "events": [
            {"sequence": 10, "stream": "stdout", "data": "x"}
        ]}));
        assert_eq!(out.dropped, 7);
        assert_eq!(out.status, "exited");
        assert!(!out.has_more);
        assert_eq!(out.text, "\r\n[7 earlier events were dropped]\r\nx");
        assert_eq!(t.since, 10);
        // Junk is ignored.
        let out = t.accept(&json!({"events": [{"data": "no sequence"}]}));
        assert_eq!(out.text, "");
        assert_eq!(out.status, "unknown");
    }
}
