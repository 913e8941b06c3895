//! P6: lightweight simulated gateways against one hub. Each is a task with
//! one realtime socket (joined with its own gateway token, bound like the
//! real gateway: `INSERT gateway_jobs team_id=eq.<team>`), a Phoenix
//! heartbeat every 25 s and a `gateway-heartbeat` call every 30 s.

use crate::hub::{Hub, Paired};
use crate::phx::{self, now_us};
use crate::{procs, stats};
use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

pub const GATEWAYS_PER_TEAM: usize = 10;

pub struct Step {
    pub connected: usize,
    pub hub_rss_kib: u64,
    pub per_conn_kib: f64,
    pub pickup: Option<stats::Summary>,
    pub missed: usize,
}

pub struct P6 {
    pub target: usize,
    pub reached: usize,
    pub stop_reason: Option<String>,
    pub baseline_kib: u64,
    pub steps: Vec<Step>,
    pub pair_secs: f64,
}

async fn pair_all(hub: &Arc<Hub>, n: usize) -> Result<Vec<Paired>> {
    let teams: Vec<Value> = (0..n.div_ceil(GATEWAYS_PER_TEAM))
        .map(|i| json!({"name": format!("sim-team-{i}")}))
        .collect();
    let mut team_ids = Vec::new();
    for chunk in teams.chunks(1000) {
        for r in hub.insert("teams", Value::Array(chunk.to_vec())).await? {
            team_ids.push(crate::hub::id_of(Some(&r))?);
        }
    }
    let codes: Vec<(String, String)> = (0..n)
        .map(|i| {
            let code =
                format!("S{}", &uuid::Uuid::new_v4().simple().to_string()[..12]).to_uppercase();
            (code, team_ids[i / GATEWAYS_PER_TEAM].clone())
        })
        .collect();
    for chunk in codes.chunks(1000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|(c, t)| json!({"code": c, "team_id": t, "expires_at": "2999-01-01T00:00:00Z"}))
            .collect();
        hub.insert("gateway_pairing_codes", Value::Array(rows))
            .await?;
    }
    let results: Vec<Result<Paired>> = futures_util::stream::iter(codes.into_iter().enumerate())
        .map(|(i, (code, _))| {
            let hub = hub.clone();
            async move { hub.exchange(&code, &format!("sim-{i}")).await }
        })
        .buffered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// One simulated gateway until `stop` flips or `until` passes.
async fn sim_task(
    hub: Arc<Hub>,
    mut ws: phx::Ws,
    p: Paired,
    caps: Arc<Value>,
    picked: mpsc::UnboundedSender<(String, i64)>,
    mut stop: watch::Receiver<bool>,
    until: tokio::time::Instant,
) {
    let jitter = Duration::from_millis(rand_u64() % 30_000);
    let mut hb_http = tokio::time::interval_at(
        tokio::time::Instant::now() + jitter,
        Duration::from_secs(30),
    );
    let mut hb_ws = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(rand_u64() % 25_000),
        Duration::from_secs(25),
    );
    let body = json!({"status": "ready", "capabilities": *caps, "device_name": "sim"});
    let mut n = 1u64;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(c) = phx::parse_change(t.as_str(), now_us()) {
                        if let Some(id) = c.record["id"].as_str() {
                            let _ = picked.send((id.to_string(), c.at_us));
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = hb_ws.tick() => {
                n += 1;
                if ws.send(phx::frame("phoenix", "heartbeat", json!({}), &n.to_string())).await.is_err() {
                    break;
                }
            }
            _ = hb_http.tick() => {
                let hub = hub.clone();
                let (token, body) = (p.access_token.clone(), body.clone());
                tokio::spawn(async move { let _ = hub.heartbeat(&token, &body).await; });
            }
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let _ = ws.close(None).await;
}

fn rand_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

pub async fn run(
    hub: Arc<Hub>,
    steps: &[usize],
    final_jobs: usize,
    step_jobs: usize,
    caps: Value,
) -> Result<P6> {
    let target = *steps.last().unwrap_or(&0);
    let t_pair = Instant::now();
    eprintln!("[bench] P6: pairing {target} simulated gateways");
    let paired = pair_all(&hub, target).await?;
    let pair_secs = t_pair.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hub_pid = hub.pid();
    let baseline_kib = procs::tree_rss_kib(hub_pid);
    let caps = Arc::new(caps);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (picked_tx, mut picked_rx) = mpsc::unbounded_channel::<(String, i64)>();
    let until = tokio::time::Instant::now() + Duration::from_secs(3600);
    let ws_url = hub.ws_url(&hub.anon_key);
    let mut out = P6 {
        target,
        reached: 0,
        stop_reason: None,
        baseline_kib,
        steps: Vec::new(),
        pair_secs,
    };
    let mut tasks = Vec::new();
    let mut connected = 0usize;
    for &step in steps {
        eprintln!("[bench] P6: ramping to {step}");
        let batch: Vec<Paired> = paired[connected..step].to_vec();
        let results: Vec<(Paired, Result<phx::Ws>)> = futures_util::stream::iter(batch)
            .map(|p| {
                let url = ws_url.clone();
                async move {
                    let topic = format!("realtime:gateway_jobs_{}", p.gateway_id);
                    let b = vec![phx::binding(
                        "INSERT",
                        "gateway_jobs",
                        Some(&format!("team_id=eq.{}", p.team_id)),
                    )];
                    let ws = phx::connect_and_join(
                        &url,
                        &topic,
                        b,
                        Some(&p.access_token),
                        Duration::from_secs(30),
                    )
                    .await;
                    (p, ws)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut failure = None;
        for (p, ws) in results {
            match ws {
                Ok(ws) => {
                    connected += 1;
                    tasks.push(tokio::spawn(sim_task(
                        hub.clone(),
                        ws,
                        p,
                        caps.clone(),
                        picked_tx.clone(),
                        stop_rx.clone(),
                        until,
                    )));
                }
                Err(e) => failure = failure.or(Some(e.to_string())),
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = procs::tree_rss_kib(hub_pid);
        let jobs = if step == target {
            final_jobs
        } else {
            step_jobs
        };
        // Hub CPU over the pickup window (heartbeats of every connected sim
        // included): the fan-out's cost shows here before it shows in
        // pickup latency.
        let (cpu0, t0) = (procs::tree_cpu_secs(hub_pid), Instant::now());
        let (pickup, missed) = pickup(&hub, &paired[..connected], jobs, &mut picked_rx).await?;
        let hub_cpu = stats::cpu_percent(
            procs::tree_cpu_secs(hub_pid) - cpu0,
            t0.elapsed().as_secs_f64(),
        );
        eprintln!(
            "[bench] P6: {connected} connected, hub RSS {} MiB, pickup p50 {:?} p99 {:?} ms, missed {missed}, hub CPU {:.0} % during pickups",
            rss / 1024,
            pickup.map(|s| s.p50),
            pickup.map(|s| s.p99),
            hub_cpu.unwrap_or_default()
        );
        out.steps.push(Step {
            connected,
            hub_rss_kib: rss,
            per_conn_kib: stats::per_connection_kib(baseline_kib, rss, connected)
                .unwrap_or_default(),
            pickup,
            missed,
        });
        out.reached = connected;
        if let Some(f) = failure {
            out.stop_reason = Some(format!(
                "{} of {step} sockets failed to join; first error: {f}",
                step - connected
            ));
            break;
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(out)
}

/// Pickup (ms): just before a job INSERT request → the target simulated
/// gateway receiving it on its socket. Jobs go to random connected sims,
/// one at a time, 20 ms apart.
async fn pickup(
    hub: &Hub,
    sims: &[Paired],
    jobs: usize,
    picked: &mut mpsc::UnboundedReceiver<(String, i64)>,
) -> Result<(Option<stats::Summary>, usize)> {
    if sims.is_empty() {
        return Ok((None, 0));
    }
    while picked.try_recv().is_ok() {}
    let mut samples = Vec::new();
    let mut missed = 0;
    for _ in 0..jobs {
        let p = &sims[(rand_u64() % sims.len() as u64) as usize];
        let t0 = now_us();
        let rows = hub
            .insert(
                "gateway_jobs",
                json!({"team_id": p.team_id, "gateway_id": p.gateway_id, "job_type": "diagnostic", "status": "queued", "payload": {}}),
            )
            .await?;
        let id = crate::hub::id_of(rows.first())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            match tokio::time::timeout_at(deadline, picked.recv()).await {
                Ok(Some((jid, at))) if jid == id => break Some(at),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(anyhow!("all simulated gateways are gone")),
                Err(_) => break None,
            }
        };
        match got {
            Some(at) => samples.push((at - t0) as f64 / 1000.0),
            None => missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((stats::summarize(&samples), missed))
}
