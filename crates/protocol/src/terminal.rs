//! The terminal stream (issue 15): a PTY byte stream between a gateway and
//! its clients over one private Realtime broadcast channel,
//! `realtime:terminal:<session_id>`, where the session id is the id of the
//! `terminal_open` job that opened it.
//!
//! Every message is a Realtime broadcast `{type: "broadcast", event,
//! payload}`; bytes travel base64-encoded in `data`. Pure types and the
//! bookkeeping both ends share (output ring, input ordering, the window);
//! no I/O.
//!
//! * gateway → client: `output {seq, data}` (seq counts chunks from 1),
//!   `ack {input_seq}` (every input up to it is written to the PTY),
//!   `attached {next_seq, oldest_seq}` (answer to `attach`; a `oldest_seq`
//!   above the client's `resume_from` means output was lost to the ring),
//!   `exit {code, signal, reason}` (the session ended; its tree is reaped).
//! * client → gateway: `attach {client_id, resume_from}` (replay from that
//!   seq, then live), `input {seq, data}` (seq counts from 1 per client;
//!   duplicates are ignored, a gap is answered with `ack` so the client
//!   resends), `ack {seq}` (output received up to seq), `resize {cols,
//!   rows}`, `ping {}` (keeps the session attached), `close {}`, `probe
//!   {}` (answered with `alive {next_seq, idle_ms}`; does not keep the
//!   session attached: `shell list` asks with it).
//!
//! Backpressure: the gateway stops reading the PTY while more than
//! [`WINDOW_CHUNKS`] output chunks are unacknowledged, so a slow client
//! slows the program, as a local terminal does.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// The job that opens a session.
pub const JOB_TERMINAL_OPEN: &str = "terminal_open";
/// The job that closes one when no client can (the operator's `shell close`).
pub const JOB_TERMINAL_CLOSE: &str = "terminal_close";
/// The heartbeat capability key a gateway announces the stream with.
pub const CAPABILITY_KEY: &str = "terminal_stream";
pub const PROTOCOL_VERSION: u64 = 1;
/// Unacknowledged output chunks before the gateway stops reading the PTY.
pub const WINDOW_CHUNKS: u64 = 64;
/// Largest output chunk, bytes (before base64).
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;
/// Output kept for resume, bytes.
pub const RING_BYTES: usize = 1 << 20;
/// How often an attached client pings.
pub const CLIENT_PING_MS: u64 = 1_000;
/// The default idle timeout: no client message for this long ends the
/// session.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;

/// The topic (with Realtime's `realtime:` prefix) of a session.
pub fn topic(session_id: &str) -> String {
    format!("realtime:terminal:{session_id}")
}

/// The `terminal_open` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPayload {
    pub resource_id: String,
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default = "default_rows")]
    pub rows: u16,
    /// A working directory; `None`: the resource's `metadata.cwd`, else
    /// `$HOME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `TERM` for the shell (the client's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

fn default_cols() -> u16 {
    80
}
fn default_rows() -> u16 {
    24
}

impl OpenPayload {
    pub fn parse(payload: &Value) -> Result<OpenPayload, String> {
        let p: OpenPayload = serde_json::from_value(payload.clone())
            .map_err(|e| format!("Invalid terminal_open payload: {e}"))?;
        if p.resource_id.trim().is_empty() {
            return Err("Invalid terminal_open payload: resource_id is empty".into());
        }
        if p.cols == 0 || p.rows == 0 || p.cols > 1000 || p.rows > 1000 {
            return Err(
                "Invalid terminal_open payload: cols and rows must be from 1 to 1000".into(),
            );
        }
        Ok(p)
    }
}

/// One stream message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Output {
        seq: u64,
        data: Vec<u8>,
    },
    Ack {
        input_seq: u64,
    },
    Attached {
        next_seq: u64,
        oldest_seq: u64,
    },
    Exit {
        code: Option<i32>,
        signal: Option<String>,
        reason: String,
    },
    Attach {
        client_id: String,
        resume_from: u64,
    },
    Input {
        client_id: String,
        seq: u64,
        data: Vec<u8>,
    },
    OutputAck {
        client_id: String,
        seq: u64,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
    Ping {
        client_id: String,
    },
    Close {
        client_id: String,
    },
    /// Is the session alive? Answered with `alive`; unlike every other
    /// client message it does not count as a client being attached.
    Probe {
        client_id: String,
    },
    /// The answer to `probe`: output so far, and milliseconds since the
    /// last client message.
    Alive {
        next_seq: u64,
        idle_ms: u64,
    },
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Message {
    /// The broadcast push payload `{type: "broadcast", event, payload}`.
    pub fn to_broadcast(&self) -> Value {
        let (event, payload) = match self {
            Message::Output { seq, data } => {
                ("output", json!({"seq": seq, "data": b64().encode(data)}))
            }
            Message::Ack { input_seq } => ("ack", json!({"input_seq": input_seq})),
            Message::Attached {
                next_seq,
                oldest_seq,
            } => (
                "attached",
                json!({"next_seq": next_seq, "oldest_seq": oldest_seq}),
            ),
            Message::Exit {
                code,
                signal,
                reason,
            } => (
                "exit",
                json!({"code": code, "signal": signal, "reason": reason}),
            ),
            Message::Attach {
                client_id,
                resume_from,
            } => (
                "attach",
                json!({"client_id": client_id, "resume_from": resume_from}),
            ),
            Message::Input {
                client_id,
                seq,
                data,
            } => (
                "input",
                json!({"client_id": client_id, "seq": seq, "data": b64().encode(data)}),
            ),
            Message::OutputAck { client_id, seq } => {
                ("output_ack", json!({"client_id": client_id, "seq": seq}))
            }
            Message::Resize { cols, rows } => ("resize", json!({"cols": cols, "rows": rows})),
            Message::Ping { client_id } => ("ping", json!({"client_id": client_id})),
            Message::Close { client_id } => ("close", json!({"client_id": client_id})),
            Message::Probe { client_id } => ("probe", json!({"client_id": client_id})),
            Message::Alive { next_seq, idle_ms } => {
                ("alive", json!({"next_seq": next_seq, "idle_ms": idle_ms}))
            }
        };
        json!({"type": "broadcast", "event": event, "payload": payload})
    }

    /// Reads a broadcast push payload; `Err` says what is wrong with it.
    pub fn from_broadcast(msg: &Value) -> Result<Message, String> {
        let event = msg
            .get("event")
            .and_then(Value::as_str)
            .ok_or("a terminal message has no event")?;
        let p = msg.get("payload").cloned().unwrap_or(Value::Null);
        let u = |k: &str| {
            p.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("terminal {event}: {k} is not a non-negative integer"))
        };
        let s = |k: &str| {
            p.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("terminal {event}: {k} is not a string"))
        };
        let bytes = |k: &str| {
            b64()
                .decode(s(k)?)
                .map_err(|e| format!("terminal {event}: {k} is not base64: {e}"))
        };
        let dim = |k: &str| {
            u(k).and_then(|n| {
                u16::try_from(n)
                    .ok()
                    .filter(|d| (1..=1000).contains(d))
                    .ok_or_else(|| format!("terminal {event}: {k} must be from 1 to 1000"))
            })
        };
        Ok(match event {
            "output" => Message::Output {
                seq: u("seq")?,
                data: bytes("data")?,
            },
            "ack" => Message::Ack {
                input_seq: u("input_seq")?,
            },
            "attached" => Message::Attached {
                next_seq: u("next_seq")?,
                oldest_seq: u("oldest_seq")?,
            },
            "exit" => Message::Exit {
                code: p.get("code").and_then(Value::as_i64).map(|c| c as i32),
                signal: p.get("signal").and_then(Value::as_str).map(str::to_string),
                reason: s("reason").unwrap_or_default(),
            },
            "attach" => Message::Attach {
                client_id: s("client_id")?,
                resume_from: u("resume_from")?,
            },
            "input" => Message::Input {
                client_id: s("client_id")?,
                seq: u("seq")?,
                data: bytes("data")?,
            },
            "output_ack" => Message::OutputAck {
                client_id: s("client_id")?,
                seq: u("seq")?,
            },
            "resize" => Message::Resize {
                cols: dim("cols")?,
                rows: dim("rows")?,
            },
            "ping" => Message::Ping {
                client_id: s("client_id")?,
            },
            "close" => Message::Close {
                client_id: s("client_id")?,
            },
            "probe" => Message::Probe {
                client_id: s("client_id")?,
            },
            "alive" => Message::Alive {
                next_seq: u("next_seq")?,
                idle_ms: u("idle_ms")?,
            },
            other => return Err(format!("unknown terminal event {other:?}")),
        })
    }
}

/// Recent output for resume: chunks with their seq, at most `cap` bytes
/// (the newest chunk is always kept).
#[derive(Debug)]
pub struct OutputRing {
    chunks: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    cap: usize,
    next_seq: u64,
}

impl OutputRing {
    pub fn new(cap: usize) -> OutputRing {
        OutputRing {
            chunks: VecDeque::new(),
            bytes: 0,
            cap,
            next_seq: 1,
        }
    }

    /// Stores a chunk; returns its seq.
    pub fn push(&mut self, data: Vec<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += data.len();
        self.chunks.push_back((seq, data));
        while self.bytes > self.cap && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
        seq
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest seq still held (`next_seq` when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.chunks.front().map_or(self.next_seq, |(s, _)| *s)
    }

    /// Chunks from `from` on (those still held).
    pub fn since(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks
            .iter()
            .filter(move |(s, _)| *s >= from)
            .map(|(s, d)| (*s, d.as_slice()))
    }
}

/// What to do with an input message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputVerdict {
    /// The next one: write it.
    Apply,
    /// Already written (a resend).
    Duplicate,
    /// Some before it were lost: answer with `ack` so the client resends.
    Gap,
}

/// Input ordering for one client: `last` is the highest seq written.
#[derive(Debug, Default, Clone, Copy)]
pub struct InputOrder {
    pub last: u64,
}

impl InputOrder {
    pub fn accept(&mut self, seq: u64) -> InputVerdict {
        if seq <= self.last {
            InputVerdict::Duplicate
        } else if seq == self.last + 1 {
            self.last = seq;
            InputVerdict::Apply
        } else {
            InputVerdict::Gap
        }
    }
}

/// What a principal may do on a terminal channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAccess {
    /// Watch and type: every message.
    Full,
    /// Watch only: `attach`, `output_ack`, `ping` and `probe` (see
    /// [`watcher_may_send`]); `input`, `resize` and `close` are refused.
    Watch,
}

/// The resource metadata flag that lets team viewers watch its terminals.
pub const VIEWERS_MAY_WATCH: &str = "viewers_may_watch";

/// What a signed-in team member with `role` may do on a terminal of a
/// resource (`max_access_level`, `metadata`): owners, admins and members
/// type where the resource grants full access and watch where it is
/// configured for viewer access; viewers watch where the resource's
/// metadata sets [`VIEWERS_MAY_WATCH`], and are refused otherwise.
pub fn person_access(
    role: &str,
    max_access_level: Option<&str>,
    metadata: Option<&Value>,
) -> Option<ChannelAccess> {
    let viewer_resource = max_access_level.is_some_and(|l| l.eq_ignore_ascii_case("viewer"));
    match role {
        "owner" | "admin" | "member" if viewer_resource => Some(ChannelAccess::Watch),
        "owner" | "admin" | "member" => Some(ChannelAccess::Full),
        "viewer"
            if metadata
                .and_then(|m| m.get(VIEWERS_MAY_WATCH))
                .and_then(Value::as_bool)
                == Some(true) =>
        {
            Some(ChannelAccess::Watch)
        }
        _ => None,
    }
}

/// Whether a watcher may send a broadcast with this event: only what
/// reading needs (replay, acknowledgements, keep-alive).
pub fn watcher_may_send(event: &str) -> bool {
    matches!(event, "attach" | "output_ack" | "ping" | "probe")
}

/// What a client does with an output chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputVerdict {
    /// The next one: show it (and acknowledge it).
    Apply,
    /// Already shown (a replay overlapping live output).
    Duplicate,
    /// One or more before it are missing: drop it; when `resume_from` is
    /// set, send `attach {resume_from}` so the gateway replays from there
    /// (set once per gap, so a burst of early chunks asks once).
    Gap { resume_from: Option<u64> },
}

/// Output ordering on the client: chunks are shown in seq order, exactly
/// once. Live chunks can overtake the replay an `attach` asked for (they
/// were broadcast before the gateway read the `attach`); they are dropped
/// and come again in the replay.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutputOrder {
    /// The highest seq shown.
    pub last: u64,
    /// The `resume_from` of an `attach` not yet answered by its chunk.
    asked: Option<u64>,
}

impl OutputOrder {
    /// Records an `attach {resume_from}` sent (the first one, or after a
    /// reconnect); returns `resume_from`.
    pub fn request_resume(&mut self) -> u64 {
        let from = self.last + 1;
        self.asked = Some(from);
        from
    }

    /// The `resume_from` still awaited, if any (for a caller that asks
    /// again when a replay never came).
    pub fn awaiting(&self) -> Option<u64> {
        self.asked
    }

    /// `attached {next_seq, oldest_seq}`: output before the ring's oldest
    /// chunk is gone for good (continue from there), and with nothing to
    /// replay no replay is awaited.
    pub fn attached(&mut self, next_seq: u64, oldest_seq: u64) {
        if oldest_seq > self.last + 1 {
            self.last = oldest_seq - 1;
            if self.asked.is_some() {
                self.asked = Some(oldest_seq);
            }
        }
        if next_seq <= self.last + 1 {
            self.asked = None;
        }
    }

    pub fn accept(&mut self, seq: u64) -> OutputVerdict {
        if seq <= self.last {
            OutputVerdict::Duplicate
        } else if seq == self.last + 1 {
            self.last = seq;
            if self.asked.is_some_and(|a| a <= seq) {
                self.asked = None;
            }
            OutputVerdict::Apply
        } else if self.asked == Some(self.last + 1) {
            OutputVerdict::Gap { resume_from: None }
        } else {
            OutputVerdict::Gap {
                resume_from: Some(self.request_resume()),
            }
        }
    }
}

/// Whether the gateway may read (and send) more output: fewer than
/// `window` chunks after the highest acknowledgement.
pub fn window_open(next_seq: u64, acked: u64, window: u64) -> bool {
    next_seq.saturating_sub(acked + 1) < window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_its_broadcast_form() {
        let all: Vec<u8> = (0..=255u8).collect();
        for m in [
            Message::Output {
                seq: 7,
                data: all.clone(),
            },
            Message::Ack { input_seq: 3 },
            Message::Attached {
                next_seq: 9,
                oldest_seq: 2,
            },
            Message::Exit {
                code: Some(0),
                signal: None,
                reason: "closed".into(),
            },
            Message::Exit {
                code: None,
                signal: Some("SIGKILL".into()),
                reason: "idle".into(),
            },
            Message::Attach {
                client_id: "c".into(),
                resume_from: 1,
            },
            Message::Input {
                client_id: "c".into(),
                seq: 1,
                data: b"\x1b[>c\x03".to_vec(),
            },
            Message::OutputAck {
                client_id: "c".into(),
                seq: 4,
            },
            Message::Resize {
                cols: 120,
                rows: 40,
            },
            Message::Ping {
                client_id: "c".into(),
            },
            Message::Close {
                client_id: "c".into(),
            },
            Message::Probe {
                client_id: "c".into(),
            },
            Message::Alive {
                next_seq: 4,
                idle_ms: 1500,
            },
        ] {
            let wire = m.to_broadcast();
            assert_eq!(wire["type"], "broadcast");
            assert_eq!(Message::from_broadcast(&wire).unwrap(), m);
        }
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let e =
            Message::from_broadcast(&json!({"event": "resize", "payload": {"cols": 0, "rows": 5}}))
                .unwrap_err();
        assert!(e.contains("cols"), "{e}");
        let e = Message::from_broadcast(
            &json!({"event": "input", "payload": {"client_id": "c", "seq": 1, "data": "!!"}}),
        )
        .unwrap_err();
        assert!(e.contains("base64"), "{e}");
        assert!(Message::from_broadcast(&json!({"event": "nope"}))
            .unwrap_err()
            .contains("nope"));
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes_and_replays_from_a_seq() {
        let mut r = OutputRing::new(10);
        assert_eq!(r.oldest_seq(), 1);
        for i in 0..5u8 {
            assert_eq!(r.push(vec![i; 4]), u64::from(i) + 1);
        }
        assert_eq!((r.oldest_seq(), r.next_seq()), (4, 6));
        let replay: Vec<u64> = r.since(2).map(|(s, _)| s).collect();
        assert_eq!(replay, vec![4, 5]);
        let mut big = OutputRing::new(1);
        big.push(vec![0; 100]);
        assert_eq!(
            big.since(1).count(),
            1,
            "the newest chunk is kept whatever its size"
        );
    }

    #[test]
    fn input_order_applies_once_and_spots_gaps() {
        let mut o = InputOrder::default();
        assert_eq!(o.accept(1), InputVerdict::Apply);
        assert_eq!(o.accept(1), InputVerdict::Duplicate);
        assert_eq!(o.accept(3), InputVerdict::Gap);
        assert_eq!(o.accept(2), InputVerdict::Apply);
        assert_eq!(o.accept(3), InputVerdict::Apply);
    }

    #[test]
    fn output_order_asks_once_per_gap_and_takes_the_replay() {
        let mut o = OutputOrder::default();
        assert_eq!(o.request_resume(), 1);
        // Live chunks overtake the replay: dropped, no second request.
        assert_eq!(o.accept(3), OutputVerdict::Gap { resume_from: None });
        assert_eq!(o.accept(4), OutputVerdict::Gap { resume_from: None });
        // The replay.
        assert_eq!(o.accept(1), OutputVerdict::Apply);
        assert_eq!(o.awaiting(), None);
        assert_eq!(o.accept(2), OutputVerdict::Apply);
        assert_eq!(o.accept(2), OutputVerdict::Duplicate);
        // A chunk lost mid-stream: one request, then quiet.
        assert_eq!(
            o.accept(4),
            OutputVerdict::Gap {
                resume_from: Some(3)
            }
        );
        assert_eq!(o.accept(5), OutputVerdict::Gap { resume_from: None });
        assert_eq!(o.awaiting(), Some(3));
        assert_eq!(o.accept(3), OutputVerdict::Apply);
        // Output older than the ring is skipped.
        o.request_resume();
        o.attached(12, 10);
        assert_eq!(o.awaiting(), Some(10));
        assert_eq!(o.accept(11), OutputVerdict::Gap { resume_from: None });
        assert_eq!(o.accept(10), OutputVerdict::Apply);
        // Nothing to replay: nothing awaited.
        let mut fresh = OutputOrder::default();
        fresh.request_resume();
        fresh.attached(1, 1);
        assert_eq!(fresh.awaiting(), None);
    }

    #[test]
    fn people_type_watch_or_are_refused_by_role_and_resource() {
        let watchable = json!({ VIEWERS_MAY_WATCH: true });
        for role in ["owner", "admin", "member"] {
            assert_eq!(
                person_access(role, Some("editor"), None),
                Some(ChannelAccess::Full)
            );
            assert_eq!(person_access(role, None, None), Some(ChannelAccess::Full));
            assert_eq!(
                person_access(role, Some("Viewer"), None),
                Some(ChannelAccess::Watch)
            );
        }
        assert_eq!(person_access("viewer", Some("editor"), None), None);
        assert_eq!(
            person_access("viewer", Some("editor"), Some(&json!({}))),
            None
        );
        assert_eq!(
            person_access("viewer", Some("editor"), Some(&watchable)),
            Some(ChannelAccess::Watch)
        );
        assert_eq!(person_access("stranger", None, Some(&watchable)), None);
        for e in ["attach", "output_ack", "ping", "probe"] {
            assert!(watcher_may_send(e));
        }
        for e in ["input", "resize", "close", "output", "exit"] {
            assert!(!watcher_may_send(e), "{e}");
        }
    }

    #[test]
    fn the_window_closes_after_window_unacked_chunks() {
        assert!(window_open(1, 0, 2));
        assert!(window_open(2, 0, 2));
        assert!(!window_open(3, 0, 2));
        assert!(window_open(3, 1, 2));
    }

    #[test]
    fn open_payload_defaults_and_refusals() {
        let p = OpenPayload::parse(&json!({"resource_id": "r"})).unwrap();
        assert_eq!((p.cols, p.rows, p.cwd), (80, 24, None));
        assert!(OpenPayload::parse(&json!({"resource_id": " "})).is_err());
        assert!(OpenPayload::parse(&json!({"resource_id": "r", "cols": 0})).is_err());
    }
}
