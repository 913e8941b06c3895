//! P8 (issue 15): keystroke → echo on loopback, the terminal stream
//! against the `shell_session` job path, on one gateway in one run.
//!
//! Both sessions run the gateway's shell at a prompt; a sample types one
//! letter and waits until the terminal's echo of it comes back.
//! * stream: `input` broadcast → `output` broadcast carrying the letter;
//! * shell_session: a `write` job until it completes, then `read` jobs
//!   until one returns the letter (what `shell attach --mode session`
//!   does per keystroke).
//!
//! The line is cleared with Ctrl-U (untimed) every 20 letters.

use crate::gateway::{wait_terminal, Flavor, Gateway};
use crate::hub::Hub;
use anyhow::{anyhow, bail, Result};
use panorama_protocol::terminal::{Message, JOB_TERMINAL_OPEN};
use panorama_supabase::broadcast::{BroadcastChannel, BroadcastOptions};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Milliseconds per keystroke: (stream, shell_session).
pub async fn p8(
    hub: &Hub,
    flavor: &Flavor,
    claude: &Path,
    stream_samples: usize,
    session_samples: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let gw = Gateway::start_with(flavor, hub, claude, 1, &["--full-control", "true"]).await?;
    hub.patch(
        "team_gateways",
        &format!("id=eq.{}", gw.gateway_id),
        json!({"full_control_enabled": true}),
    )
    .await?;
    let resource = hub
        .insert(
            "team_resources",
            json!({"team_id": gw.team_id, "resource_type": "remote_shell",
                   "metadata": {"gateway_id": gw.gateway_id, "full_control": true}}),
        )
        .await?;
    let resource_id = crate::hub::id_of(resource.first())?;
    let stream = stream_samples_ms(hub, &gw, &resource_id, stream_samples).await?;
    let session = session_samples_ms(hub, &gw, &resource_id, session_samples).await?;
    Ok((stream, session))
}

async fn completed(hub: &Hub, gw: &Gateway, job_type: &str, payload: Value) -> Result<Value> {
    let id = gw.insert_job(hub, job_type, payload).await?;
    let row = wait_terminal(hub, &id, WAIT).await?;
    if row["status"] != "completed" {
        bail!("{job_type} job did not complete: {row}");
    }
    Ok(row)
}

fn letter(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

async fn stream_samples_ms(
    hub: &Hub,
    gw: &Gateway,
    resource_id: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let row = completed(
        hub,
        gw,
        JOB_TERMINAL_OPEN,
        json!({"resource_id": resource_id, "cols": 120, "rows": 40}),
    )
    .await?;
    let topic = row["result"]["topic"]
        .as_str()
        .ok_or_else(|| anyhow!("terminal_open without a topic: {row}"))?
        .to_string();
    let mut chan = BroadcastChannel::join(&BroadcastOptions {
        url: hub.url.clone(),
        apikey: hub.service_key.clone(),
        access_token: None,
        topic,
        private: true,
    })
    .await
    .map_err(|e| anyhow!("joining the terminal stream: {e}"))?;
    let cid = || "bench".to_string();
    chan.send(
        Message::Attach {
            client_id: cid(),
            resume_from: 1,
        }
        .to_broadcast(),
    )
    .await;
    let mut seq = 0u64;
    let mut samples = Vec::with_capacity(n);
    // Settle: the prompt is out once the echo of a first letter returns.
    for i in 0..n + 1 {
        if i % 20 == 0 {
            seq += 1;
            chan.send(
                Message::Input {
                    client_id: cid(),
                    seq,
                    data: vec![0x15],
                }
                .to_broadcast(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain(&mut chan).await;
        }
        let key = letter(i);
        seq += 1;
        let t0 = Instant::now();
        chan.send(
            Message::Input {
                client_id: cid(),
                seq,
                data: vec![key],
            }
            .to_broadcast(),
        )
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, chan.recv())
                .await
                .map_err(|_| anyhow!("no echo of keystroke {i} within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("the terminal stream ended"))?;
            if let Ok(Message::Output { seq: out, data }) = Message::from_broadcast(&msg) {
                chan.send(
                    Message::OutputAck {
                        client_id: cid(),
                        seq: out,
                    }
                    .to_broadcast(),
                )
                .await;
                if data.contains(&key) {
                    break;
                }
            }
        }
        if i > 0 {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    chan.send(Message::Close { client_id: cid() }.to_broadcast())
        .await;
    Ok(samples)
}

/// Takes whatever output is waiting (after a Ctrl-U) without timing it.
async fn drain(chan: &mut BroadcastChannel) {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(20), chan.recv()).await {
        if let Ok(Message::Output { seq, .. }) = Message::from_broadcast(&msg) {
            chan.send(
                Message::OutputAck {
                    client_id: "bench".into(),
                    seq,
                }
                .to_broadcast(),
            )
            .await;
        }
    }
}

/// One `shell_session` action, waited for.
async fn session_call(
    hub: &Hub,
    gw: &Gateway,
    resource_id: &str,
    action: &str,
    mut payload: Value,
) -> Result<Value> {
    payload["action"] = json!(action);
    payload["resource_id"] = json!(resource_id);
    completed(hub, gw, "shell_session", payload).await
}

/// `read`s after `since` until an event carries `key` (`None`: one read);
/// returns the new `since`.
async fn read_until(
    hub: &Hub,
    gw: &Gateway,
    resource_id: &str,
    sid: &str,
    mut since: u64,
    key: Option<u8>,
) -> Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = session_call(
            hub,
            gw,
            resource_id,
            "read",
            json!({"session_id": sid, "since_sequence": since, "max_events": 1000}),
        )
        .await?;
        let mut seen = false;
        for e in page["result"]["events"].as_array().into_iter().flatten() {
            since = since.max(e["sequence"].as_u64().unwrap_or(0));
            let data = e["data"].as_str().unwrap_or_default();
            seen |= key.is_some_and(|k| data.as_bytes().contains(&k));
        }
        if key.is_none() || seen {
            return Ok(since);
        }
        if Instant::now() > deadline {
            bail!("no echo in the shell_session reads within {WAIT:?}");
        }
    }
}

async fn session_samples_ms(
    hub: &Hub,
    gw: &Gateway,
    resource_id: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let opened = session_call(hub, gw, resource_id, "open", json!({})).await?;
    let sid = opened["result"]["session_id"]
        .as_str()
        .ok_or_else(|| anyhow!("shell_session open without a session_id: {opened}"))?
        .to_string();
    let write = |input: String| {
        session_call(
            hub,
            gw,
            resource_id,
            "write",
            json!({"session_id": sid, "input": input}),
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut since = read_until(hub, gw, resource_id, &sid, 0, None).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        if i % 20 == 0 {
            write("\u{15}".into()).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            since = read_until(hub, gw, resource_id, &sid, since, None).await?;
        }
        let key = letter(i);
        let t0 = Instant::now();
        write((key as char).to_string()).await?;
        since = read_until(hub, gw, resource_id, &sid, since, Some(key)).await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    session_call(hub, gw, resource_id, "close", json!({"session_id": sid})).await?;
    Ok(samples)
}
