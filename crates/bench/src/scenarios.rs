//! P1–P5 against one gateway flavour (ours or the peer), and the P1 floor.

use crate::gateway::{is_terminal, Flavor, Gateway};
use crate::hub::Hub;
use crate::phx::{self, now_us, Change};
use crate::{procs, shim, stats};
use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;

pub struct Env<'a> {
    pub hub: &'a Hub,
    pub quick: bool,
    /// `claude` for diagnostics: a symlink to panorama-fake-agent.
    pub claude: PathBuf,
    pub fake_agent: PathBuf,
    pub self_exe: PathBuf,
    pub work: PathBuf,
}

fn job_bindings(gateway_id: &str) -> Vec<Value> {
    vec![phx::binding(
        "*",
        "gateway_jobs",
        Some(&format!("gateway_id=eq.{gateway_id}")),
    )]
}

/// Waits for the first change matching `pred`, bounded by `timeout`.
async fn next_matching(
    rx: &mut UnboundedReceiver<Change>,
    timeout: Duration,
    mut pred: impl FnMut(&Change) -> bool,
) -> Option<Change> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(c)) if pred(&c) => return Some(c),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn rec_str<'v>(c: &'v Change, k: &str) -> &'v str {
    c.record[k].as_str().unwrap_or("")
}

// ---------------------------------------------------------------- P1

/// Dispatch latency samples (ms): INSERT seen by the listener → UPDATE to
/// `running` seen by the same listener. One job at a time; the next is
/// inserted only after the previous one is terminal.
pub async fn p1(env: &Env<'_>, flavor: &Flavor, jobs: usize, budget: Duration) -> Result<Vec<f64>> {
    let hub = env.hub;
    let gw = Gateway::start(flavor, hub, &env.claude, 3).await?;
    let (mut rx, task) =
        phx::listen(&hub.ws_url(&hub.service_key), job_bindings(&gw.gateway_id)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(jobs);
    for i in 0..jobs {
        if started.elapsed() > budget {
            eprintln!("[bench] P1: time budget spent after {i} jobs");
            break;
        }
        let id = gw.insert_job(hub, "diagnostic", json!({})).await?;
        let ins = next_matching(&mut rx, Duration::from_secs(10), |c| {
            c.kind == "INSERT" && rec_str(c, "id") == id
        })
        .await
        .ok_or_else(|| anyhow!("listener did not see job {id} inserted"))?;
        let run = next_matching(&mut rx, Duration::from_secs(20), |c| {
            c.kind == "UPDATE" && rec_str(c, "id") == id && rec_str(c, "status") != "queued"
        })
        .await
        .ok_or_else(|| anyhow!("job {id} was not claimed within 20 s: {}", gw.log_tail()))?;
        samples.push((run.at_us - ins.at_us) as f64 / 1000.0);
        if !is_terminal(rec_str(&run, "status")) {
            next_matching(&mut rx, Duration::from_secs(20), |c| {
                rec_str(c, "id") == id && is_terminal(rec_str(c, "status"))
            })
            .await
            .ok_or_else(|| anyhow!("job {id} did not finish within 20 s"))?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    drop(gw);
    Ok(samples)
}

/// The floor (ms): a raw loopback WebSocket push from a tiny
/// tokio-tungstenite server, plus one PATCH (return=representation)
/// against the hub.
pub async fn floor(env: &Env<'_>, n: usize) -> Result<Vec<f64>> {
    let hub = env.hub;
    let team = hub.create_team("bench-floor").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        Ok::<_, anyhow::Error>(tokio_tungstenite::accept_async(tcp).await?)
    });
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
    let mut server = server.await??;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        server
            .send(Message::Text(format!("{{\"push\":{i}}}").into()))
            .await?;
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => bail!("floor push not received: {other:?}"),
        }
        hub.patch(
            "teams",
            &format!("id=eq.{team}"),
            json!({"name": format!("floor-{i}")}),
        )
        .await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

// ---------------------------------------------------------------- P2

/// Throughput (jobs/s): `n` diagnostic jobs inserted in one request; time
/// from just before the insert to the listener seeing the last terminal
/// UPDATE. Returns (jobs/s, completed, failed).
pub async fn p2(env: &Env<'_>, flavor: &Flavor, n: usize) -> Result<(f64, usize, usize)> {
    let hub = env.hub;
    let gw = Gateway::start(flavor, hub, &env.claude, 2).await?;
    let (mut rx, task) =
        phx::listen(&hub.ws_url(&hub.service_key), job_bindings(&gw.gateway_id)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: Vec<Value> = (0..n)
        .map(|_| gw.job_row("diagnostic", json!({})))
        .collect();
    let t0 = now_us();
    let inserted = hub.insert("gateway_jobs", Value::Array(rows)).await?;
    let ids: std::collections::HashSet<String> = inserted
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let mut done: HashMap<String, String> = HashMap::new();
    let mut last = t0;
    let deadline = Duration::from_secs(if env.quick { 120 } else { 600 });
    let start = Instant::now();
    while done.len() < ids.len() && start.elapsed() < deadline {
        let Some(c) = next_matching(&mut rx, deadline.saturating_sub(start.elapsed()), |c| {
            is_terminal(rec_str(c, "status"))
        })
        .await
        else {
            break;
        };
        let id = rec_str(&c, "id").to_string();
        if ids.contains(&id) && !done.contains_key(&id) {
            done.insert(id, rec_str(&c, "status").to_string());
            last = c.at_us;
        }
    }
    task.abort();
    if done.len() < ids.len() {
        bail!(
            "only {} of {} jobs finished within {deadline:?}",
            done.len(),
            ids.len()
        );
    }
    let failed = done.values().filter(|s| *s != "completed").count();
    let secs = (last - t0) as f64 / 1e6;
    Ok((n as f64 / secs, n - failed, failed))
}

// ---------------------------------------------------------------- P3

pub enum P3 {
    Skipped(String),
    Done {
        exit_to_terminal_ms: f64,
        lag: stats::Summary,
        events: usize,
        matched: usize,
        run_status: String,
    },
}

pub const P3_EVENTS: usize = 2000;
const P3_LINE_DELAY_MS: u64 = 2;

fn write_transcript(path: &Path, n: usize) -> Result<()> {
    let sid = "bench-session-0000";
    let mut t = format!(
        "{}\n",
        json!({"type":"system","subtype":"init","cwd":"/tmp","session_id":sid,"tools":[],"mcp_servers":[],
               "model":"claude-sonnet-4-5","permissionMode":"dontAsk","apiKeySource":"none","claude_code_version":"2.0.14"})
    );
    for i in 0..n {
        t.push_str(&json!({"type":"assistant","message":{"model":"claude-sonnet-4-5","id":format!("msg_{i}"),"type":"message","role":"assistant",
            "content":[{"type":"text","text":format!("bench-line-{i:05}")}],"stop_reason":null},
            "parent_tool_use_id":null,"session_id":sid}).to_string());
        t.push('\n');
    }
    t.push_str(
        &json!({"type":"result","subtype":"success","is_error":false,"duration_ms":1,"num_turns":1,
        "result":"bench done","session_id":sid,"total_cost_usd":0.0})
        .to_string(),
    );
    t.push('\n');
    std::fs::write(path, t)?;
    Ok(())
}

/// Marker index `k` from `bench-line-NNNNN` anywhere in the record.
fn marker(record: &Value) -> Option<usize> {
    let s = record.to_string();
    let at = s.find("bench-line-")? + "bench-line-".len();
    s.get(at..at + 5)?.parse().ok()
}

pub async fn p3(env: &Env<'_>, flavor: &Flavor) -> Result<P3> {
    use std::os::unix::fs::PermissionsExt;
    let hub = env.hub;
    let dir = tempfile::tempdir_in(&env.work)?;
    // The run's transcript is picked by a `[[fake:bench]]` marker in the
    // prompt; probes and validation runs get the providers' own fixtures.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers/fixtures/claude");
    for f in ["structured.jsonl", "success.jsonl"] {
        std::fs::copy(fixtures.join(f), dir.path().join(f))?;
    }
    write_transcript(&dir.path().join("bench.jsonl"), P3_EVENTS)?;
    let shim_out = dir.path().join("shim.tsv");
    let claude = dir.path().join("claude");
    std::fs::write(
        &claude,
        format!(
            "#!/bin/sh\nexport FAKE_AGENT_PROVIDER=claude FAKE_AGENT_TRANSCRIPT_DIR='{}' FAKE_AGENT_LINE_DELAY_MS={P3_LINE_DELAY_MS} BENCH_SHIM_AGENT='{}' BENCH_SHIM_OUT='{}'\nexec '{}' __agent-shim \"$@\"\n",
            dir.path().display(),
            env.fake_agent.display(),
            shim_out.display(),
            env.self_exe.display()
        ),
    )?;
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755))?;
    let gw = Gateway::start(flavor, hub, &claude, 1).await?;
    let g = &gw.gateway_id;
    let (mut rx, task) = phx::listen(
        &hub.ws_url(&hub.service_key),
        vec![
            phx::binding("*", "gateway_jobs", Some(&format!("gateway_id=eq.{g}"))),
            phx::binding("*", "subagent_runs", Some(&format!("gateway_id=eq.{g}"))),
            phx::binding(
                "INSERT",
                "subagent_run_events",
                Some(&format!("gateway_id=eq.{g}")),
            ),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let subagent_id = uuid::Uuid::new_v4().to_string();
    let run_id = uuid::Uuid::new_v4().to_string();
    let prompt = "bench P3 [[fake:bench]]";
    hub.insert(
        "subagents",
        json!({"id": subagent_id, "team_id": gw.team_id, "gateway_id": g,
               "subagent_type": "claude_code_gateway", "status": "running",
               "config": {"output_format": "stream-json"},
               "input": {"prompt": prompt, "schema_version": 1, "run_id": run_id, "run_sequence": 1,
                         "prompt_at": chrono::Utc::now().to_rfc3339()},
               "metadata": {"current_run_id": run_id, "current_run_sequence": 1}}),
    )
    .await?;
    // The peer speaks a later protocol in which the control plane accepts
    // the run atomically (the `subagent_runs` row exists, `running`, with
    // the input's run_sequence and prompt) before the job is sent; it
    // cancels a job without one ("Gateway job has no atomically accepted
    // subagent run"). Ours follows the spec's SEED flow and creates the run
    // row itself (a pre-existing row would be a conflict), so each gets the
    // protocol it speaks; the measured path (lines → event rows → terminal
    // run) is the same for both.
    if matches!(flavor, Flavor::Peer { .. }) {
        hub.insert(
            "subagent_runs",
            json!({"id": run_id, "subagent_id": subagent_id, "team_id": gw.team_id, "gateway_id": g,
                   "run_sequence": 1, "status": "running", "prompt": prompt}),
        )
        .await?;
    }
    let job_id = gw
        .insert_job(
            hub,
            "subagent_run",
            json!({"subagent_id": subagent_id, "run_id": run_id, "subagent_type": "claude_code_gateway"}),
        )
        .await?;
    let mut events: Vec<Change> = Vec::new();
    let mut run_terminal: Option<Change> = None;
    let mut job_terminal: Option<Change> = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline {
        let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else {
            if run_terminal.is_some() || job_terminal.is_some() {
                break; // quiet for 1 s after the end
            }
            continue;
        };
        match c.table.as_str() {
            "subagent_run_events" => events.push(c),
            "subagent_runs" if is_terminal(rec_str(&c, "status")) && run_terminal.is_none() => {
                run_terminal = Some(c)
            }
            "gateway_jobs" if rec_str(&c, "id") == job_id && is_terminal(rec_str(&c, "status")) => {
                job_terminal = Some(c)
            }
            _ => {}
        }
    }
    task.abort();
    if let Some(j) = &job_terminal {
        let err = rec_str(j, "error");
        if run_terminal.is_none() && err.contains("not supported by this gateway yet") {
            return Ok(P3::Skipped(format!(
                "the gateway answered the subagent_run job with: {err}"
            )));
        }
    }
    let run = run_terminal.ok_or_else(|| {
        anyhow!(
            "the run did not become terminal (job: {:?}); {}",
            job_terminal.map(|j| j.record),
            gw.log_tail()
        )
    })?;
    let rec = shim::parse(&std::fs::read_to_string(&shim_out).unwrap_or_default());
    let exit_us = rec
        .exit_us
        .ok_or_else(|| anyhow!("the agent shim left no exit record (was the agent run?)"))?;
    let mut lags = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        if let Some(k) = marker(&e.record) {
            // Line 0 is the init line; marker k is stdout line k + 1.
            if let Some(w) = rec.lines.get(k + 1) {
                if seen.insert(k) {
                    lags.push((e.at_us - w) as f64 / 1000.0);
                }
            }
        }
    }
    let lag = stats::summarize(&lags).ok_or_else(|| {
        anyhow!(
            "no event row carried a line marker ({} events seen, status {})",
            events.len(),
            rec_str(&run, "status")
        )
    })?;
    Ok(P3::Done {
        exit_to_terminal_ms: (run.at_us - exit_us) as f64 / 1000.0,
        lag,
        events: events.len(),
        matched: lags.len(),
        run_status: rec_str(&run, "status").to_string(),
    })
}

// ---------------------------------------------------------------- P4 + P5

pub struct Footprint {
    pub rss_mib: f64,
    pub rss_max_mib: f64,
    pub cpu_percent: f64,
    pub status_ms: f64,
    pub help_ms: f64,
}

fn time_cli(flavor: &Flavor, home: &Path, args: &[&str], n: usize) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let out = flavor
            .command(home, None)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        if !out.success() {
            bail!("`{}` exited with {out}", args.join(" "));
        }
    }
    stats::median(&samples).ok_or_else(|| anyhow!("no samples"))
}

/// P4: a started, idle gateway over `window`; P5: `status` and `--help`.
pub async fn p4_p5(
    env: &Env<'_>,
    flavor: &Flavor,
    window: Duration,
    cli_runs: usize,
) -> Result<Footprint> {
    let gw = Gateway::start(flavor, env.hub, &env.claude, 1).await?;
    let pid = gw.pid().ok_or_else(|| anyhow!("no pid"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0 = procs::tree_cpu_secs(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < window {
        rss.push(procs::tree_rss_kib(pid) as f64 / 1024.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = procs::tree_cpu_secs(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let home = gw.home.path().to_path_buf();
    let cfg = Gateway::config_dir(&home);
    let cfg = cfg.to_string_lossy().to_string();
    let status_ms = time_cli(flavor, &home, &["status", "--config-dir", &cfg], cli_runs)?;
    let help_ms = time_cli(flavor, &home, &["--help"], cli_runs)?;
    Ok(Footprint {
        rss_mib: stats::mean(&rss).unwrap_or_default(),
        rss_max_mib: stats::percentile(&rss, 100.0).unwrap_or_default(),
        cpu_percent: stats::cpu_percent(cpu, wall).unwrap_or_default(),
        status_ms,
        help_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_markers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        write_transcript(&p, 3).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        let v: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(marker(&v), Some(1));
        assert_eq!(
            marker(&json!({"payload": {"text": "x bench-line-00042 y"}})),
            Some(42)
        );
        assert_eq!(marker(&json!({"text": "nothing"})), None);
    }
}
