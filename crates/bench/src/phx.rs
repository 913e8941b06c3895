//! A minimal Phoenix-channel (`vsn` 1.0.0) client for realtime
//! `postgres_changes`: the bench's listener and the P6 simulated gateways.

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Wall-clock microseconds since the epoch (comparable across processes).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// One delivered change, stamped on receipt.
#[derive(Debug, Clone)]
pub struct Change {
    pub at_us: i64,
    pub table: String,
    pub kind: String,
    pub record: Value,
}

pub fn binding(event: &str, table: &str, filter: Option<&str>) -> Value {
    let mut b = json!({"event": event, "schema": "public", "table": table});
    if let Some(f) = filter {
        b["filter"] = json!(f);
    }
    b
}

pub fn frame(topic: &str, event: &str, payload: Value, ref_: &str) -> Message {
    Message::Text(
        json!({"topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": ref_})
            .to_string()
            .into(),
    )
}

/// Parses a `postgres_changes` frame into a [`Change`] stamped `at_us`.
pub fn parse_change(text: &str, at_us: i64) -> Option<Change> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v["event"] != "postgres_changes" {
        return None;
    }
    let data = &v["payload"]["data"];
    Some(Change {
        at_us,
        table: data["table"].as_str()?.to_string(),
        kind: data["type"].as_str()?.to_string(),
        record: data.get("record").cloned().unwrap_or(Value::Null),
    })
}

/// Connects and joins `topic` with `bindings`; returns once the join is
/// acknowledged (bounded by `timeout`).
pub async fn connect_and_join(
    url: &str,
    topic: &str,
    bindings: Vec<Value>,
    access_token: Option<&str>,
    timeout: Duration,
) -> Result<Ws> {
    tokio::time::timeout(timeout, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut payload = json!({"config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false},
            "postgres_changes": bindings,
            "private": false
        }});
        if let Some(t) = access_token {
            payload["access_token"] = json!(t);
        }
        ws.send(frame(topic, "phx_join", payload, "1")).await?;
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["event"] == "phx_reply" && v["ref"] == "1" {
                    if v["payload"]["status"] == "ok" {
                        return Ok(ws);
                    }
                    bail!("join refused: {}", v["payload"]);
                }
            }
        }
        Err(anyhow!("socket closed before the join reply"))
    })
    .await
    .map_err(|_| anyhow!("join timed out after {timeout:?}"))?
}

/// A service-key listener: every change on `bindings` goes to the
/// returned receiver, stamped on receipt. Heartbeats every 20 s; ends when
/// the receiver is dropped or the socket closes.
pub async fn listen(
    url: &str,
    bindings: Vec<Value>,
) -> Result<(mpsc::UnboundedReceiver<Change>, tokio::task::JoinHandle<()>)> {
    let mut ws = connect_and_join(
        url,
        "realtime:bench-listener",
        bindings,
        None,
        Duration::from_secs(10),
    )
    .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut hb = tokio::time::interval(Duration::from_secs(20));
        hb.tick().await;
        let mut n = 1u64;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(c) = parse_change(t.as_str(), now_us()) {
                            if tx.send(c).is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = hb.tick() => {
                    n += 1;
                    if ws.send(frame("phoenix", "heartbeat", json!({}), &n.to_string())).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
        let _ = ws.close(None).await;
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_changes_frames_only() {
        let text = r#"{"topic":"realtime:x","event":"postgres_changes","ref":null,"join_ref":null,
            "payload":{"ids":[1],"data":{"schema":"public","table":"gateway_jobs","type":"UPDATE",
            "record":{"id":"j1","status":"running"},"errors":null}}}"#;
        let c = parse_change(text, 42).unwrap();
        assert_eq!(
            (c.at_us, c.table.as_str(), c.kind.as_str()),
            (42, "gateway_jobs", "UPDATE")
        );
        assert_eq!(c.record["status"], "running");
        assert!(parse_change(r#"{"event":"phx_reply","payload":{}}"#, 1).is_none());
        assert!(parse_change("not json", 1).is_none());
    }
}
