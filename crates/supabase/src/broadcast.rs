//! One Realtime broadcast channel (Supabase Realtime's `broadcast`
//! extension), on its own socket: join (optionally private, with an access
//! token), send `{type: "broadcast", event, payload}` pushes, receive the
//! other members' pushes. The terminal stream rides on it.
//!
//! The socket lives in a task; [`BroadcastChannel::recv`] returns `None`
//! once it ended (closed by the server, failed, or the heartbeat went
//! unanswered), and the caller decides whether to join again.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::error::{Error, Result};
use crate::realtime::{websocket_url, Frame, Vsn};

/// Phoenix heartbeat interval (realtime-js: 25 s).
const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long a join may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes waiting to be sent, and received pushes waiting to be read.
const QUEUE: usize = 1024;

/// Where and as whom to join.
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// The project URL (`http://127.0.0.1:54321`).
    pub url: String,
    pub apikey: String,
    /// A user or gateway JWT for the join; `None`: the API key's role.
    pub access_token: Option<String>,
    /// The full topic, `realtime:<name>`.
    pub topic: String,
    pub private: bool,
}

/// A joined channel.
pub struct BroadcastChannel {
    out: mpsc::Sender<Value>,
    inbox: mpsc::Receiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

fn transport(context: &str, message: impl ToString) -> Error {
    Error::Transport {
        context: context.to_string(),
        message: message.to_string(),
    }
}

impl BroadcastChannel {
    /// Connects and joins; `Err` carries the server's refusal reason.
    pub async fn join(opts: &BroadcastOptions) -> Result<BroadcastChannel> {
        let url = websocket_url(&opts.url, &opts.apikey, &[], Vsn::V2);
        // Nagle off: keystrokes and echoes are small frames that must not
        // wait for the previous one's acknowledgement (~40 ms each way).
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .map_err(|e| transport("the realtime connection", e))?;
        let mut payload = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": [],
                "private": opts.private
            }
        });
        if let Some(t) = &opts.access_token {
            payload["access_token"] = json!(t);
        }
        let join = Frame {
            join_ref: Some("1".into()),
            ref_: Some("1".into()),
            topic: opts.topic.clone(),
            event: "phx_join".into(),
            payload,
        };
        ws.send(Message::text(join.encode(Vsn::V2)))
            .await
            .map_err(|e| transport("joining a realtime channel", e))?;
        let reply = tokio::time::timeout(JOIN_TIMEOUT, async {
            while let Some(msg) = ws.next().await {
                let msg = msg.map_err(|e| transport("joining a realtime channel", e))?;
                let Message::Text(text) = msg else { continue };
                let frame = Frame::decode(text.as_str())?;
                if frame.event == "phx_reply" && frame.ref_.as_deref() == Some("1") {
                    return Ok(frame.payload);
                }
            }
            Err(transport(
                "joining a realtime channel",
                "the server closed the socket",
            ))
        })
        .await
        .map_err(|_| transport("joining a realtime channel", "no answer within 10 s"))??;
        if reply["status"] != "ok" {
            let reason = reply["response"]["reason"]
                .as_str()
                .unwrap_or("refused")
                .to_string();
            return Err(Error::Http {
                context: format!("joining {}", opts.topic),
                status: 403,
                message: reason,
                body: Some(reply),
            });
        }
        let (out_tx, mut out_rx) = mpsc::channel::<Value>(QUEUE);
        let (in_tx, in_rx) = mpsc::channel::<Value>(QUEUE);
        let topic = opts.topic.clone();
        let task = tokio::spawn(async move {
            let mut next_ref: u64 = 2;
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            heartbeat.tick().await;
            let mut awaiting_heartbeat: Option<String> = None;
            loop {
                tokio::select! {
                    push = out_rx.recv() => {
                        let Some(push) = push else { break };
                        let frame = Frame {
                            join_ref: Some("1".into()),
                            ref_: Some(next_ref.to_string()),
                            topic: topic.clone(),
                            event: "broadcast".into(),
                            payload: push,
                        };
                        next_ref += 1;
                        if ws.send(Message::text(frame.encode(Vsn::V2))).await.is_err() {
                            break;
                        }
                    }
                    msg = ws.next() => {
                        let Some(Ok(msg)) = msg else { break };
                        // supabase-js (vsn 2.0.0) sends its broadcasts as binary
                        // frames; the server relays them to us as binary too.
                        if let Message::Binary(bytes) = &msg {
                            if let Some((t, push)) = decode_user_broadcast(bytes) {
                                if t == topic && in_tx.send(push).await.is_err() {
                                    break;
                                }
                            }
                            continue;
                        }
                        let Message::Text(text) = msg else {
                            if matches!(msg, Message::Close(_)) { break }
                            continue;
                        };
                        let Ok(frame) = Frame::decode(text.as_str()) else { continue };
                        if frame.topic == "phoenix" {
                            if frame.ref_ == awaiting_heartbeat {
                                awaiting_heartbeat = None;
                            }
                            continue;
                        }
                        if frame.topic != topic {
                            continue;
                        }
                        match frame.event.as_str() {
                            "broadcast" if in_tx.send(frame.payload).await.is_err() => break,
                            "phx_close" | "phx_error" => break,
                            _ => {}
                        }
                    }
                    _ = heartbeat.tick() => {
                        if awaiting_heartbeat.is_some() {
                            tracing::debug!(%topic, "realtime heartbeat unanswered; the broadcast channel ends");
                            break;
                        }
                        let r = next_ref.to_string();
                        next_ref += 1;
                        let frame = Frame { join_ref: None, ref_: Some(r.clone()), topic: "phoenix".into(), event: "heartbeat".into(), payload: json!({}) };
                        if ws.send(Message::text(frame.encode(Vsn::V2))).await.is_err() {
                            break;
                        }
                        awaiting_heartbeat = Some(r);
                    }
                }
            }
            let _ = ws.close(None).await;
        });
        Ok(BroadcastChannel {
            out: out_tx,
            inbox: in_rx,
            task,
        })
    }

    /// Queues a push (`{type: "broadcast", event, payload}`); waits while
    /// the queue is full. `false` once the channel ended.
    pub async fn send(&self, push: Value) -> bool {
        self.out.send(push).await.is_ok()
    }

    /// A sender that can be moved to another task.
    pub fn sender(&self) -> mpsc::Sender<Value> {
        self.out.clone()
    }

    /// The next push from another member; `None` once the channel ended.
    pub async fn recv(&mut self) -> Option<Value> {
        self.inbox.recv().await
    }

    /// Whether the socket task ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for BroadcastChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A vsn 2.0.0 binary user broadcast from the server (kind 4: `u8` lengths
/// of topic, event and metadata, `u8` encoding, the three fields, then the
/// payload) as `(topic, {type: "broadcast", event, payload})`. Only JSON
/// payloads (encoding 1) have that form; anything else is `None`.
pub fn decode_user_broadcast(bytes: &[u8]) -> Option<(String, Value)> {
    let (&kind, rest) = bytes.split_first()?;
    if kind != 4 || rest.len() < 4 {
        return None;
    }
    let (topic_len, event_len, meta_len, encoding) = (
        rest[0] as usize,
        rest[1] as usize,
        rest[2] as usize,
        rest[3],
    );
    let body = &rest[4..];
    if encoding != 1 || body.len() < topic_len + event_len + meta_len {
        return None;
    }
    let (topic, body) = body.split_at(topic_len);
    let (event, body) = body.split_at(event_len);
    let payload: Value = serde_json::from_slice(&body[meta_len..]).ok()?;
    let topic = std::str::from_utf8(topic).ok()?.to_string();
    let event = std::str::from_utf8(event).ok()?;
    Some((
        topic,
        json!({"type": "broadcast", "event": event, "payload": payload}),
    ))
}

#[cfg(test)]
mod binary_tests {
    use super::*;

    fn frame(topic: &str, event: &str, meta: &str, encoding: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![
            4,
            topic.len() as u8,
            event.len() as u8,
            meta.len() as u8,
            encoding,
        ];
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(meta.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_json_user_broadcast_reads_as_its_push() {
        let bytes = frame("realtime:t", "input", "", 1, br#"{"seq":1,"data":"aGk="}"#);
        assert_eq!(
            decode_user_broadcast(&bytes),
            Some((
                "realtime:t".into(),
                json!({"type": "broadcast", "event": "input", "payload": {"seq": 1, "data": "aGk="}})
            ))
        );
        let with_meta = frame("realtime:t", "ping", r#"{"id":"x"}"#, 1, b"{}");
        assert_eq!(
            decode_user_broadcast(&with_meta).unwrap().1["event"],
            "ping"
        );
    }

    #[test]
    fn binary_payloads_other_kinds_and_short_frames_are_ignored() {
        assert_eq!(
            decode_user_broadcast(&frame("t", "e", "", 0, b"\x00\x01")),
            None
        );
        assert_eq!(decode_user_broadcast(&[3, 0, 0, 0, 1]), None);
        assert_eq!(decode_user_broadcast(&[4, 9, 0, 0, 1, b'a']), None);
        assert_eq!(decode_user_broadcast(&[]), None);
        assert_eq!(
            decode_user_broadcast(&frame("t", "e", "", 1, b"not json")),
            None
        );
    }
}
