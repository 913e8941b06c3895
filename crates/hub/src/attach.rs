//! `panorama-hub shell …`: remote shells on a gateway, driven entirely
//! through jobs queued over the REST API with the service key.
//!
//! Two job families exist (spec §8.5, §8.6): `shell_session` (seed 2.29 and
//! panorama-gateway: a persistent PTY) and `shell_exec` (later 2.30+
//! reference gateways, which reject `shell_session`: one command per job).
//! [`shell_path_for`] picks one from the gateway's heartbeat capabilities.
//!
//! - `shell attach` on a session gateway: `open` → raw mode → loop {
//!   keystrokes → `write`; window size → `resize`; `read` by sequence →
//!   print } → Ctrl-] detaches and `close`s. Jobs are serialized: the next
//!   one is queued only after the previous one is terminal, so writes
//!   arrive in order.
//! - `shell attach` on an exec-only gateway: line mode ([`line_mode`]),
//!   one `shell_exec` job per line, `cd` tracked by the client.
//! - `shell exec G -- CMD`: one `shell_exec` job, its output printed, its
//!   exit code returned.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::{json, Value};

use crate::client::HubClient;
use crate::shell_jobs::ShellJobs;

/// Default `timeout_ms` of a `shell_exec` command (the spec's default).
pub const EXEC_TIMEOUT_MS: u64 = 30_000;
/// The first reference version without `shell_session` (2.29 has it,
/// 2.32 rejects it; no 2.30/2.31 build was seen, so both count as later).
pub const EXEC_ONLY_SINCE: (u64, u64) = (2, 30);

/// Which shell jobs to use for `shell attach`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellMode {
    /// Decide from the gateway's heartbeat (runtime.gateway_version).
    Auto,
    /// A real terminal through shell_session jobs.
    Session,
    /// Line mode through shell_exec jobs (one command per line).
    Exec,
    /// The terminal stream (terminal_open, then bytes over realtime); `auto` picks it when the gateway announces it.
    Stream,
}

#[derive(Subcommand, Debug)]
pub enum ShellCmd {
    /// Attach this terminal to a shell on a gateway: a real terminal where the gateway runs shell_session (Ctrl-] detaches), line mode where it only runs shell_exec.
    Attach {
        /// Gateway id.
        #[arg(long)]
        gateway: String,
        /// remote_shell resource id bound to that gateway (default: the only one there is).
        #[arg(long)]
        resource: Option<String>,
        /// Shell to start (session mode; default: the gateway user's $SHELL).
        #[arg(long)]
        shell: Option<String>,
        /// Pause between output polls when idle, in milliseconds (session mode).
        #[arg(long, default_value_t = 150)]
        poll_ms: u64,
        /// shell_session or shell_exec; auto asks the gateway's heartbeat.
        #[arg(long, value_enum, default_value = "auto")]
        mode: ShellMode,
        /// Per-command timeout in line mode, in milliseconds (1..600000).
        #[arg(long, default_value_t = EXEC_TIMEOUT_MS)]
        timeout_ms: u64,
    },
    /// Close a terminal session (one terminal_close job).
    Close {
        /// Gateway id.
        #[arg(long)]
        gateway: String,
        /// The session id `shell attach` or `shell list` printed.
        session: String,
    },
    /// List the terminal sessions opened on a gateway (terminal_open jobs, newest first): whether each is alive (its gateway answers on its stream) and whether a close was requested.
    List {
        /// Gateway id.
        #[arg(long)]
        gateway: String,
    },
    /// Run one command on a gateway through a shell_exec job (`bash -lc` in /), print its output and exit with its exit code.
    Exec {
        /// Gateway id.
        gateway: String,
        /// remote_shell resource id bound to that gateway (default: the only one there is).
        #[arg(long)]
        resource: Option<String>,
        /// Timeout in milliseconds (1..600000); the exit code is 124 when it fires.
        #[arg(long, default_value_t = EXEC_TIMEOUT_MS)]
        timeout_ms: u64,
        /// ENV=SECRET: put team secret SECRET into the command's environment as ENV (repeatable).
        #[arg(long = "secret-env", value_name = "ENV=SECRET")]
        secret_env: Vec<String>,
        /// The command, after `--` (its words are joined with spaces and run by the gateway's shell).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

// ------------------------------------------------------------------ path

/// The shell job family a gateway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellPath {
    /// The terminal stream (`terminal_open`, then bytes over realtime),
    /// where the heartbeat announces it.
    Stream,
    /// `shell_session` (and `shell_exec` too, for panorama-gateway).
    Session,
    /// Only `shell_exec`.
    Exec,
}

/// `major.minor` of a version string such as `2.32.167`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Decides from heartbeat capabilities (§12.2 `runtime`): the terminal
/// stream where announced; panorama-gateway (`node_version: "rust"`) runs
/// both job families; a reference gateway runs `shell_session` before 2.30
/// and only `shell_exec` from then on. `None`: the heartbeat does not say
/// (no `runtime` block yet).
pub fn shell_path_for(capabilities: &Value) -> Option<ShellPath> {
    if crate::term::announces_stream(capabilities) {
        return Some(ShellPath::Stream);
    }
    let runtime = capabilities.get("runtime")?;
    if runtime.get("node_version").and_then(Value::as_str) == Some("rust") {
        return Some(ShellPath::Session);
    }
    let version = major_minor(runtime.get("gateway_version")?.as_str()?)?;
    Some(if version >= EXEC_ONLY_SINCE {
        ShellPath::Exec
    } else {
        ShellPath::Session
    })
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

/// Runs a `panorama-hub shell …` command; returns the process exit code.
pub async fn run(client: &HubClient, cmd: &ShellCmd, json_output: bool) -> Result<i32> {
    match cmd {
        ShellCmd::Attach {
            gateway,
            resource,
            shell,
            poll_ms,
            mode,
            timeout_ms,
        } => {
            let (jobs, row) = ShellJobs::for_gateway(client, gateway).await?;
            let jobs = jobs.on_resource(resource.as_deref()).await?;
            let path = match mode {
                ShellMode::Stream => ShellPath::Stream,
                ShellMode::Session => ShellPath::Session,
                ShellMode::Exec => ShellPath::Exec,
                ShellMode::Auto => match shell_path_for(&row["capabilities"]) {
                    Some(p) => p,
                    None => {
                        eprintln!("gateway {gateway} has not said which shell jobs it runs (no runtime.gateway_version in its heartbeat yet); trying shell_session");
                        ShellPath::Session
                    }
                },
            };
            if path == ShellPath::Exec {
                return line_mode(&jobs, gateway, *timeout_ms).await;
            }
            // Both terminal paths need one; checked before anything is
            // opened on the gateway.
            if !std::io::stdin().is_terminal() {
                bail!("standard input is not a terminal: `shell attach` needs one (run it in a terminal, or use `panorama-hub shell exec {gateway} -- COMMAND` for one command); nothing was opened on the gateway");
            }
            if path == ShellPath::Stream {
                return stream_mode(&jobs).await;
            }
            let (cols, rows) = crossterm::terminal::size().unwrap_or((120, 40));
            let mut open = json!({"env": {"COLUMNS": cols.to_string(), "LINES": rows.to_string()}});
            if let Some(s) = shell {
                open["shell"] = json!(s);
            }
            match jobs.call("open", open).await {
                Ok(opened) => session_mode(&jobs, gateway, poll_ms, opened).await,
                // A gateway that never learnt shell_session (2.30+).
                Err(e)
                    if *mode == ShellMode::Auto
                        && e.to_string().contains("Unsupported job type") =>
                {
                    eprintln!("gateway {gateway} does not run shell_session jobs; switching to line mode over shell_exec");
                    line_mode(&jobs, gateway, *timeout_ms).await
                }
                Err(e) => Err(e),
            }
        }
        ShellCmd::Close { gateway, session } => {
            let (jobs, _) = ShellJobs::for_gateway(client, gateway).await?;
            if crate::term::close(&jobs, session).await? {
                println!("session {session} closed");
                Ok(0)
            } else {
                eprintln!("gateway {gateway} has no open session {session} (it ended already, or idled out)");
                Ok(1)
            }
        }
        ShellCmd::List { gateway } => list_terminals(client, gateway, json_output).await,
        ShellCmd::Exec {
            gateway,
            resource,
            timeout_ms,
            secret_env,
            command,
        } => {
            let secret_env = parse_secret_env(secret_env)?;
            let (jobs, _) = ShellJobs::for_gateway(client, gateway).await?;
            let jobs = jobs.on_resource(resource.as_deref()).await?;
            let result = jobs
                .exec(&command.join(" "), *timeout_ms, &secret_env)
                .await?;
            if json_output {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            } else {
                print_exec_output(&result);
            }
            Ok(exec_exit_code(&result))
        }
    }
}

/// `ENV=SECRET` pairs as a `secret_env` object.
pub fn parse_secret_env(pairs: &[String]) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for pair in pairs {
        let (env, secret) = pair
            .split_once('=')
            .filter(|(e, s)| !e.is_empty() && !s.is_empty())
            .ok_or_else(|| anyhow!("--secret-env {pair:?}: expected ENV=SECRET, e.g. --secret-env API_TOKEN=github-token"))?;
        if !panorama_protocol::secrets::is_valid_env_name(env) {
            bail!("--secret-env {pair:?}: {env:?} is not an environment variable name");
        }
        out.insert(env.to_string(), json!(secret));
    }
    Ok(out)
}

/// The process exit code for a `shell_exec` result: the command's, 124 on
/// timeout (like `timeout(1)`), 127 when it could not start, 1 otherwise.
pub fn exec_exit_code(result: &Value) -> i32 {
    if result.get("timed_out") == Some(&Value::Bool(true)) {
        return 124;
    }
    match result.get("exit_code").and_then(Value::as_i64) {
        Some(code) => code as i32,
        None if result.get("message").and_then(Value::as_str)
            == Some("Remote shell command failed to start") =>
        {
            127
        }
        None => 1,
    }
}

/// Writes a `shell_exec` result's output where a local command's would go,
/// with a note on stderr for anything but a clean exit.
fn print_exec_output(result: &Value) {
    let text = |k: &str| result.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut out = std::io::stdout();
    let _ = out.write_all(text("stdout").as_bytes());
    let _ = out.flush();
    let mut err = std::io::stderr();
    let _ = err.write_all(text("stderr").as_bytes());
    if result.get("output_truncated") == Some(&Value::Bool(true)) {
        let _ = writeln!(err, "[output truncated by the gateway at 5 MB per stream]");
    }
    if result.get("timed_out") == Some(&Value::Bool(true)) {
        let _ = writeln!(err, "[{}]", text("message"));
    } else if let Some(e) = result.get("error").and_then(Value::as_str) {
        let _ = writeln!(err, "[{}: {e}]", text("message"));
    } else if result.get("success") != Some(&Value::Bool(true)) {
        let code = result
            .get("exit_code")
            .map(Value::to_string)
            .unwrap_or_default();
        let _ = writeln!(err, "[exit {code}]");
    }
    let _ = err.flush();
}

/// `'text'` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What one line of line mode runs, and whether its output is the new
/// directory (`cd`). Each job starts a fresh shell in `/`, so the tracked
/// directory is entered first.
pub fn line_command(cwd: &str, line: &str) -> (String, bool) {
    let line = line.trim();
    let is_cd = line == "cd"
        || (line.starts_with("cd ") && !line.contains([';', '&', '|', '\n', '`', '$', '(']));
    if is_cd {
        (format!("cd {} && {line} && pwd", shell_quote(cwd)), true)
    } else {
        (format!("cd {} && {line}", shell_quote(cwd)), false)
    }
}

/// `shell attach` on a gateway that only runs `shell_exec`: reads lines
/// from stdin and runs each as one job. Returns the last command's exit
/// code.
pub async fn line_mode(jobs: &ShellJobs<'_>, gateway: &str, timeout_ms: u64) -> Result<i32> {
    use tokio::io::AsyncBufReadExt;
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "gateway {gateway} runs shell_exec jobs only: line mode. Each line runs as one command \
         (`bash -lc`) in the directory shown; `cd` is remembered, nothing else is (variables, \
         aliases, background jobs). Not available here: interactive programs (no terminal, no \
         stdin), Ctrl-C (a command ends at its {timeout_ms} ms timeout), window resizing. \
         `exit` or Ctrl-D leaves."
    );
    let mut cwd = "/".to_string();
    let mut last = 0;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let empty = serde_json::Map::new();
    loop {
        if interactive {
            eprint!("{cwd}$ ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next_line().await.context("reading a command line")? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line, "exit" | "logout") {
            break;
        }
        let (command, is_cd) = line_command(&cwd, line);
        match jobs.exec(&command, timeout_ms, &empty).await {
            Ok(result) => {
                last = exec_exit_code(&result);
                if is_cd {
                    if last == 0 {
                        if let Some(dir) = result.get("stdout").and_then(Value::as_str) {
                            cwd = dir.trim_end_matches('\n').to_string();
                        }
                    } else {
                        let _ = std::io::stderr().write_all(
                            result
                                .get("stderr")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .as_bytes(),
                        );
                    }
                } else {
                    print_exec_output(&result);
                }
            }
            Err(e) => {
                last = 1;
                eprintln!("[{e}]");
            }
        }
    }
    Ok(last)
}

/// `shell attach` in session mode after `open` answered: runs until
/// detach or until the session ends. Returns the process exit code.
async fn session_mode(
    jobs: &ShellJobs<'_>,
    gateway: &str,
    poll_ms: &u64,
    opened: Value,
) -> Result<i32> {
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

/// `shell attach` on the terminal stream: one job opens the session, the
/// bytes flow over realtime; one line says how it ended.
async fn stream_mode(jobs: &ShellJobs<'_>) -> Result<i32> {
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    let (session_id, topic) = crate::term::open(jobs, cols, rows).await?;
    let ended = crate::term::attach(jobs, &session_id, &topic).await;
    match ended {
        Ok(crate::term::Ended::Exited { reason, code }) => {
            eprintln!("\r[session {session_id} ended: {reason}]");
            Ok(code.unwrap_or(0))
        }
        Ok(crate::term::Ended::Detached) => {
            eprintln!("\r[session {session_id} closed]");
            Ok(0)
        }
        Ok(crate::term::Ended::Signalled(sig)) => {
            eprintln!("\r[{sig}: session {session_id} closed]");
            Ok(128 + 1)
        }
        Err(e) => Err(e.context(format!(
            "session {session_id}: the gateway ends it after its idle timeout, or close it with `panorama-hub shell close --gateway {} {session_id}`",
            jobs.gateway_id
        ))),
    }
}

/// How long `shell list` waits for a session's gateway to answer.
const PROBE_WAIT: Duration = Duration::from_millis(1500);

/// `shell list`: the terminal sessions opened on a gateway.
async fn list_terminals(client: &HubClient, gateway: &str, json_output: bool) -> Result<i32> {
    use panorama_protocol::terminal::{JOB_TERMINAL_CLOSE, JOB_TERMINAL_OPEN};
    let opened = client
        .select(
            "gateway_jobs",
            &[
                ("gateway_id", format!("eq.{gateway}")),
                ("job_type", format!("eq.{JOB_TERMINAL_OPEN}")),
                ("select", "id,status,created_at,payload,error".into()),
                ("order", "created_at.desc".into()),
                ("limit", "50".into()),
            ],
        )
        .await
        .context("listing terminal_open jobs")?;
    let closes = client
        .select(
            "gateway_jobs",
            &[
                ("gateway_id", format!("eq.{gateway}")),
                ("job_type", format!("eq.{JOB_TERMINAL_CLOSE}")),
                ("select", "payload".into()),
            ],
        )
        .await
        .context("listing terminal_close jobs")?;
    let closed: Vec<&str> = closes
        .iter()
        .filter_map(|c| c.pointer("/payload/session_id").and_then(Value::as_str))
        .collect();
    // Sessions whose open job completed are asked whether they still run
    // (all at once, so a list of dead sessions takes one probe's wait).
    let alive = futures_util::future::join_all(opened.iter().map(|o| async move {
        let id = o["id"].as_str().unwrap_or_default();
        if o["status"] != "completed" {
            return None;
        }
        crate::term::probe(client, id, PROBE_WAIT).await
    }))
    .await;
    let rows: Vec<Value> = opened
        .iter()
        .zip(alive)
        .map(|(o, idle_ms)| {
            let id = o["id"].as_str().unwrap_or_default();
            json!({"session_id": id, "open_job": o["status"], "created_at": o["created_at"],
                "resource_id": o.pointer("/payload/resource_id"), "alive": idle_ms.is_some(),
                "idle_ms": idle_ms, "close_requested": closed.contains(&id), "error": o["error"]})
        })
        .collect();
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no terminal sessions were opened on gateway {gateway}");
        return Ok(0);
    }
    println!(
        "{:<36}  {:<9}  {:<5}  {:<24}  close requested",
        "SESSION", "OPEN JOB", "ALIVE", "CREATED"
    );
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    for r in &rows {
        println!(
            "{:<36}  {:<9}  {:<5}  {:<24}  {}",
            r["session_id"].as_str().unwrap_or_default(),
            r["open_job"].as_str().unwrap_or_default(),
            yes_no(r["alive"] == true),
            r["created_at"].as_str().unwrap_or_default(),
            yes_no(r["close_requested"] == true)
        );
    }
    println!("(alive: the gateway answered for it just now; a session ends when no client is attached for the gateway's idle timeout)");
    Ok(0)
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
    fn the_shell_path_follows_the_heartbeat() {
        let caps = |node: &str, version: Option<&str>| {
            let mut runtime = json!({"platform": "linux", "arch": "x64", "node_version": node});
            if let Some(v) = version {
                runtime["gateway_version"] = json!(v);
            }
            json!({"schema_version": "v1", "runtime": runtime})
        };
        assert_eq!(
            shell_path_for(&caps("rust", Some("0.1.0"))),
            Some(ShellPath::Session)
        );
        assert_eq!(
            shell_path_for(&caps("v24.3.0", Some("2.32.167"))),
            Some(ShellPath::Exec)
        );
        assert_eq!(
            shell_path_for(&caps("v24.3.0", Some("2.30.0"))),
            Some(ShellPath::Exec)
        );
        assert_eq!(
            shell_path_for(&caps("v24.3.0", Some("3.0.1"))),
            Some(ShellPath::Exec)
        );
        assert_eq!(
            shell_path_for(&caps("v22.1.0", Some("2.29.14"))),
            Some(ShellPath::Session)
        );
        assert_eq!(shell_path_for(&caps("v22.1.0", Some("junk"))), None);
        assert_eq!(shell_path_for(&caps("v22.1.0", None)), None);
        assert_eq!(shell_path_for(&json!({})), None);
        let mut streaming = caps("rust", Some("0.1.0"));
        streaming["terminal_stream"] = json!({"version": 1});
        assert_eq!(shell_path_for(&streaming), Some(ShellPath::Stream));
    }

    #[test]
    fn line_mode_tracks_cd_only() {
        assert_eq!(
            line_command("/", "ls -la"),
            ("cd '/' && ls -la".to_string(), false)
        );
        assert_eq!(
            line_command("/tmp/it's", "cd .."),
            ("cd '/tmp/it'\\''s' && cd .. && pwd".to_string(), true)
        );
        assert!(line_command("/", "cd").1);
        assert!(
            !line_command("/", "cd /tmp; ls").1,
            "a compound line is not a cd"
        );
        assert!(!line_command("/", "cdx").1);
    }

    #[test]
    fn exec_results_map_to_exit_codes() {
        assert_eq!(
            exec_exit_code(&json!({"exit_code": 0, "timed_out": false})),
            0
        );
        assert_eq!(
            exec_exit_code(&json!({"exit_code": 3, "timed_out": false})),
            3
        );
        assert_eq!(
            exec_exit_code(&json!({"exit_code": null, "timed_out": true})),
            124
        );
        assert_eq!(
            exec_exit_code(
                &json!({"exit_code": null, "message": "Remote shell command failed to start"})
            ),
            127
        );
        assert_eq!(exec_exit_code(&json!({"exit_code": null})), 1);
    }

    #[test]
    fn secret_env_flags_are_checked() {
        let m = parse_secret_env(&["API_TOKEN=gh-token".into(), "X=a=b".into()]).unwrap();
        assert_eq!(m["API_TOKEN"], "gh-token");
        assert_eq!(m["X"], "a=b");
        for bad in ["nope", "=x", "X=", "1X=y"] {
            assert!(parse_secret_env(&[bad.into()]).is_err(), "{bad}");
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
