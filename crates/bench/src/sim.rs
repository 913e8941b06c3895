//! P6: lightweight simulated gateways against the hub's replicas. Each is
//! a task with one realtime socket (joined with its own gateway token,
//! bound like the real gateway: `INSERT gateway_jobs team_id=eq.<team>`), a
//! Phoenix heartbeat every 25 s and a `gateway-heartbeat` call every 30 s.
//!
//! The sims live in worker processes (`panorama-bench __sims SPEC`), not
//! in the bench itself: one process may hold at most `ulimit -Hn` sockets
//! (20,000 on the benchmark machine, whose container cannot raise it), and
//! 30,000 gateways need more. Each worker serves one replica, directly —
//! as gateways spread by a load balancer would stay on theirs — and at
//! most [`SIMS_PER_WORKER`] sims. The bench drives the workers over
//! stdin/stdout in JSON lines: `connect N` → `{"connected":…}`, and every
//! job a sim receives → `{"pick":id,"at":µs}` (wall clock, comparable
//! across processes).

use crate::hub::{Hub, Paired};
use crate::phx::{self, now_us};
use crate::{procs, stats};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

pub const GATEWAYS_PER_TEAM: usize = 10;

/// Sockets one worker holds, below the 20,000 open files a process may
/// have here (the rest: heartbeat connections, the runtime).
pub const SIMS_PER_WORKER: usize = 15_000;

pub struct Step {
    pub connected: usize,
    pub hub_rss_kib: u64,
    pub per_conn_kib: f64,
    pub pickup: Option<stats::Summary>,
    pub missed: usize,
    /// CPU of all replicas (and of the database server, when there is
    /// one) over the pickup window, % of one core.
    pub hub_cpu: Option<f64>,
    pub db_cpu: Option<f64>,
    /// The sims' heartbeats during the pickup window.
    pub heartbeats: Heartbeats,
    pub heartbeat_ms: Option<stats::Summary>,
    pub window_secs: f64,
    /// The database server's memory (PSS: shared buffers counted once).
    pub db_pss_kib: Option<u64>,
}

pub struct P6 {
    pub target: usize,
    pub reached: usize,
    pub stop_reason: Option<String>,
    pub baseline_kib: u64,
    pub steps: Vec<Step>,
    pub pair_secs: f64,
    pub workers: usize,
}

/// Which worker serves sim `i`, and which replica worker `w` talks to.
pub fn worker_count(target: usize, replicas: usize) -> usize {
    replicas.max(target.div_ceil(SIMS_PER_WORKER)).max(1)
}

/// How many of the first `n` sims worker `w` of `workers` serves (sim `i`
/// goes to worker `i % workers`).
pub fn share(n: usize, w: usize, workers: usize) -> usize {
    n / workers + usize::from(w < n % workers)
}

async fn pair_all(hubs: &[Arc<Hub>], n: usize) -> Result<Vec<Paired>> {
    let hub = &hubs[0];
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
    // Exchanges spread over the replicas, as a load balancer would.
    let results: Vec<Result<Paired>> = futures_util::stream::iter(codes.into_iter().enumerate())
        .map(|(i, (code, _))| {
            let hub = hubs[i % hubs.len()].clone();
            async move { hub.exchange(&code, &format!("sim-{i}")).await }
        })
        .buffered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A worker's orders: its replica, and its sims in connection order.
#[derive(Serialize, Deserialize)]
struct WorkerSpec {
    url: String,
    anon_key: String,
    caps: Value,
    sims: Vec<Paired>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(untagged)]
enum WorkerLine {
    Pick {
        pick: String,
        at: i64,
    },
    Connected {
        connected: usize,
        failed: Vec<String>,
        error: Option<String>,
    },
    Heartbeats(Heartbeats),
}

/// A worker's `gateway-heartbeat` calls since the last `stats` order.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Heartbeats {
    pub hb_sent: u64,
    pub hb_failed: u64,
    /// Heartbeats not sent because the sim's previous one had not been
    /// answered yet (a gateway heartbeats one at a time): the hub falling
    /// behind.
    pub hb_skipped: u64,
    /// Request → answer, ms.
    pub hb_ms: Vec<f64>,
}

impl Heartbeats {
    fn merge(&mut self, other: Heartbeats) {
        self.hb_sent += other.hb_sent;
        self.hb_failed += other.hb_failed;
        self.hb_skipped += other.hb_skipped;
        self.hb_ms.extend(other.hb_ms);
    }
}

/// A running worker process.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    replies: mpsc::UnboundedReceiver<WorkerLine>,
}

impl Worker {
    async fn spawn(
        self_exe: &Path,
        dir: &Path,
        index: usize,
        spec: &WorkerSpec,
        picked: mpsc::UnboundedSender<(String, i64)>,
    ) -> Result<Worker> {
        let spec_path = dir.join(format!("sims-{index}.json"));
        std::fs::write(&spec_path, serde_json::to_vec(spec)?)?;
        let mut child = tokio::process::Command::new(self_exe)
            .arg("__sims")
            .arg(&spec_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a simulated-gateway worker")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (reply_tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerLine>(&line) {
                    Ok(WorkerLine::Pick { pick, at }) => {
                        let _ = picked.send((pick, at));
                    }
                    Ok(reply) => {
                        let _ = reply_tx.send(reply);
                    }
                    Err(_) => eprintln!("[bench] P6 worker {index}: {line}"),
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            replies,
        })
    }

    async fn order(&mut self, order: &str) -> Result<WorkerLine> {
        self.stdin
            .write_all(format!("{order}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.replies
            .recv()
            .await
            .ok_or_else(|| anyhow!("a simulated-gateway worker exited"))
    }

    async fn connect(&mut self, n: usize) -> Result<(usize, Vec<String>, Option<String>)> {
        match self.order(&format!("connect {n}")).await? {
            WorkerLine::Connected {
                connected,
                failed,
                error,
            } => Ok((connected, failed, error)),
            other => bail!("a worker answered {other:?} to `connect`"),
        }
    }

    async fn heartbeats(&mut self) -> Result<Heartbeats> {
        match self.order("stats").await? {
            WorkerLine::Heartbeats(h) => Ok(h),
            other => bail!("a worker answered {other:?} to `stats`"),
        }
    }

    async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| procs::tree_cpu_secs(p)).sum()
}

fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| procs::tree_rss_kib(p)).sum()
}

/// Runs P6 against `hubs` (the replicas, with their process ids);
/// `db_pid` is the database server's, for its CPU and memory.
pub async fn run(
    hubs: &[Arc<Hub>],
    db_pid: Option<u32>,
    steps: &[usize],
    final_jobs: usize,
    step_jobs: usize,
    caps: Value,
    self_exe: &Path,
) -> Result<P6> {
    let target = *steps.last().unwrap_or(&0);
    let hub_pids: Vec<u32> = hubs.iter().filter_map(|h| h.pid()).collect();
    let db_pids: Vec<u32> = db_pid.into_iter().collect();
    let t_pair = Instant::now();
    eprintln!(
        "[bench] P6: pairing {target} simulated gateways through {} replica(s)",
        hubs.len()
    );
    let paired = pair_all(hubs, target).await?;
    let pair_secs = t_pair.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_kib = rss_of(&hub_pids);

    let workers_n = worker_count(target, hubs.len());
    let dir = tempfile::tempdir()?;
    let (picked_tx, mut picked_rx) = mpsc::unbounded_channel::<(String, i64)>();
    let mut workers = Vec::new();
    for w in 0..workers_n {
        let hub = &hubs[w % hubs.len()];
        let spec = WorkerSpec {
            url: hub.url.clone(),
            anon_key: hub.anon_key.clone(),
            caps: caps.clone(),
            sims: paired.iter().skip(w).step_by(workers_n).cloned().collect(),
        };
        workers.push(Worker::spawn(self_exe, dir.path(), w, &spec, picked_tx.clone()).await?);
    }
    drop(picked_tx);

    let mut out = P6 {
        target,
        reached: 0,
        stop_reason: None,
        baseline_kib,
        steps: Vec::new(),
        pair_secs,
        workers: workers_n,
    };
    let mut failed: HashSet<String> = HashSet::new();
    for &step in steps {
        eprintln!("[bench] P6: ramping to {step}");
        let t_ramp = Instant::now();
        let asks = workers
            .iter_mut()
            .enumerate()
            .map(|(w, worker)| worker.connect(share(step, w, workers_n)));
        let replies = futures_util::future::join_all(asks).await;
        let mut connected = 0;
        let mut failure = None;
        for r in replies {
            let (n, f, e) = r?;
            connected += n;
            failed.extend(f);
            failure = failure.or(e);
        }
        eprintln!(
            "[bench] P6: {connected} connected in {:.1} s",
            t_ramp.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_of(&hub_pids);
        let jobs = if step == target {
            final_jobs
        } else {
            step_jobs
        };
        let live: Vec<&Paired> = paired[..step]
            .iter()
            .filter(|p| !failed.contains(&p.gateway_id))
            .collect();
        // CPU over the pickup window (heartbeats of every connected sim
        // included): the fan-out's cost shows here before it shows in
        // pickup latency.
        for w in workers.iter_mut() {
            w.heartbeats().await?;
        }
        let (hub_cpu0, db_cpu0, t0) = (cpu_of(&hub_pids), cpu_of(&db_pids), Instant::now());
        let (pickup, missed) = pickup(hubs, &live, jobs, &mut picked_rx).await?;
        let secs = t0.elapsed().as_secs_f64();
        let mut heartbeats = Heartbeats::default();
        for w in workers.iter_mut() {
            heartbeats.merge(w.heartbeats().await?);
        }
        let hb = stats::summarize(&heartbeats.hb_ms);
        let hub_cpu = stats::cpu_percent(cpu_of(&hub_pids) - hub_cpu0, secs);
        let db_cpu = db_pid.and_then(|_| stats::cpu_percent(cpu_of(&db_pids) - db_cpu0, secs));
        let db_pss_kib = db_pid.map(procs::tree_pss_kib);
        eprintln!(
            "[bench] P6: {connected} connected, hub RSS {} MiB, pickup p50 {:?} p99 {:?} ms, missed {missed}, hub CPU {:.0} %, database CPU {:?} % during pickups; heartbeats {} sent ({:.0}/s), {} failed, {} skipped, p50 {:?} p99 {:?} ms",
            rss / 1024,
            pickup.map(|s| s.p50),
            pickup.map(|s| s.p99),
            hub_cpu.unwrap_or_default(),
            db_cpu,
            heartbeats.hb_sent,
            heartbeats.hb_sent as f64 / secs,
            heartbeats.hb_failed,
            heartbeats.hb_skipped,
            hb.map(|s| s.p50),
            hb.map(|s| s.p99),
        );
        out.steps.push(Step {
            connected,
            hub_rss_kib: rss,
            per_conn_kib: stats::per_connection_kib(baseline_kib, rss, connected)
                .unwrap_or_default(),
            pickup,
            missed,
            hub_cpu,
            db_cpu,
            db_pss_kib,
            heartbeats: Heartbeats {
                hb_ms: Vec::new(),
                ..heartbeats
            },
            heartbeat_ms: hb,
            window_secs: secs,
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
    for w in workers {
        w.stop().await;
    }
    Ok(out)
}

/// Pickup (ms): just before a job INSERT request → the target simulated
/// gateway receiving it on its socket. Jobs go to random connected sims,
/// one at a time, 20 ms apart, inserted through the replicas in turn (so
/// with several replicas most jobs cross from one replica to another).
async fn pickup(
    hubs: &[Arc<Hub>],
    sims: &[&Paired],
    jobs: usize,
    picked: &mut mpsc::UnboundedReceiver<(String, i64)>,
) -> Result<(Option<stats::Summary>, usize)> {
    if sims.is_empty() {
        return Ok((None, 0));
    }
    while picked.try_recv().is_ok() {}
    let mut samples = Vec::new();
    let mut missed = 0;
    for j in 0..jobs {
        let p = sims[(rand_u64() % sims.len() as u64) as usize];
        let hub = &hubs[j % hubs.len()];
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
                Ok(None) => bail!("all simulated-gateway workers are gone"),
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

fn rand_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

// ------------------------------------------------------------ the worker

/// `panorama-bench __sims SPEC`: serves the sims of `SPEC` until stdin
/// closes. Returns the process exit code.
pub fn worker_main(args: &[String]) -> i32 {
    procs::raise_nofile(u64::MAX);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("panorama-bench __sims: no runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(worker(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("panorama-bench __sims: {e:#}");
            1
        }
    }
}

async fn worker(args: &[String]) -> Result<()> {
    let path = args
        .first()
        .ok_or_else(|| anyhow!("usage: panorama-bench __sims SPEC.json"))?;
    let spec: WorkerSpec = serde_json::from_slice(&std::fs::read(path)?)?;
    let hub = Arc::new(Hub::remote(&spec.url, &spec.anon_key, "")?);
    let ws_url = hub.ws_url(&hub.anon_key);
    let caps = Arc::new(spec.caps);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let (picked_tx, mut picked_rx) = mpsc::unbounded_channel::<(String, i64)>();
    let forward = {
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some((id, at)) = picked_rx.recv().await {
                let line =
                    serde_json::to_string(&WorkerLine::Pick { pick: id, at }).unwrap_or_default();
                let _ = out.send(line + "\n");
            }
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut next = 0usize;
    let mut connected = 0usize;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let hb = Arc::new(HbShared {
        permits: tokio::sync::Semaphore::new(HEARTBEAT_CONNECTIONS),
        stats: std::sync::Mutex::new(Heartbeats::default()),
    });
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "stats" {
            let taken = std::mem::take(&mut *hb.stats.lock().expect("stats lock"));
            let _ = out_tx.send(serde_json::to_string(&WorkerLine::Heartbeats(taken))? + "\n");
            continue;
        }
        let Some(n) = line
            .strip_prefix("connect ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            bail!("unknown order {line:?} (expected `connect N` or `stats`)");
        };
        let batch: Vec<Paired> = spec.sims[next..n.min(spec.sims.len())].to_vec();
        next += batch.len();
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
        let mut failed = Vec::new();
        let mut error = None;
        for (p, ws) in results {
            match ws {
                Ok(ws) => {
                    connected += 1;
                    tasks.push(tokio::spawn(sim_task(
                        hub.clone(),
                        hb.clone(),
                        ws,
                        p,
                        caps.clone(),
                        picked_tx.clone(),
                        stop_rx.clone(),
                    )));
                }
                Err(e) => {
                    failed.push(p.gateway_id);
                    error = error.or(Some(format!("{e:#}")));
                }
            }
        }
        let reply = WorkerLine::Connected {
            connected,
            failed,
            error,
        };
        let _ = out_tx.send(serde_json::to_string(&reply)? + "\n");
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop((picked_tx, out_tx));
    let _ = forward.await;
    let _ = writer.await;
    Ok(())
}

/// HTTP connections a worker's sims share for their heartbeats (a real
/// gateway keeps its own; 10,000 of those would cost each replica another
/// 10,000 open files, which this machine's 20,000 per process cannot hold).
const HEARTBEAT_CONNECTIONS: usize = 128;

struct HbShared {
    permits: tokio::sync::Semaphore,
    stats: std::sync::Mutex<Heartbeats>,
}

/// One simulated gateway until `stop` flips or its socket closes.
async fn sim_task(
    hub: Arc<Hub>,
    hb: Arc<HbShared>,
    mut ws: phx::Ws,
    p: Paired,
    caps: Arc<Value>,
    picked: mpsc::UnboundedSender<(String, i64)>,
    mut stop: watch::Receiver<bool>,
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
    let in_flight = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
                if in_flight.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    hb.stats.lock().expect("stats lock").hb_skipped += 1;
                    continue;
                }
                let (hub, hb, in_flight) = (hub.clone(), hb.clone(), in_flight.clone());
                let (token, body) = (p.access_token.clone(), body.clone());
                tokio::spawn(async move {
                    let Ok(_permit) = hb.permits.acquire().await else { return };
                    let t0 = Instant::now();
                    let ok = hub.heartbeat(&token, &body).await.is_ok();
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    {
                        let mut s = hb.stats.lock().expect("stats lock");
                        s.hb_sent += 1;
                        s.hb_failed += u64::from(!ok);
                        s.hb_ms.push(ms);
                    }
                    in_flight.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            _ = stop.changed() => break,
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sims_spread_over_workers_and_replicas() {
        assert_eq!(worker_count(10_000, 1), 1);
        assert_eq!(worker_count(30_000, 3), 3);
        assert_eq!(worker_count(30_000, 1), 2);
        assert_eq!(worker_count(100, 3), 3);
        // The first n sims, dealt round-robin, add up to n.
        for (n, workers) in [(10, 3), (30_000, 3), (7, 1), (2, 3)] {
            let total: usize = (0..workers).map(|w| share(n, w, workers)).sum();
            assert_eq!(total, n);
        }
        assert_eq!(share(10, 0, 3), 4);
        assert_eq!(share(10, 2, 3), 3);
    }

    #[test]
    fn worker_lines_round_trip() {
        let pick = serde_json::to_string(&WorkerLine::Pick {
            pick: "j1".into(),
            at: 7,
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str(&pick).unwrap(),
            WorkerLine::Pick { at: 7, .. }
        ));
        let reply: WorkerLine =
            serde_json::from_str(r#"{"connected":3,"failed":["g"],"error":"x"}"#).unwrap();
        assert!(matches!(reply, WorkerLine::Connected { connected: 3, .. }));
    }
}
