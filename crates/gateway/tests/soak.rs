//! Soak and outage tests: a real hub, the real gateway binary and the fake
//! agents, under injected faults. Every network call is on 127.0.0.1.
//!
//! * `soak_mixed_jobs_under_faults` submits `SOAK_JOBS` jobs of every type
//!   (diagnostic, model_run, subagent_run — half of the stream runs with the
//!   later recipe, pre-accepted by the control plane — subagent_cancel, shell_exec)
//!   while `SOAK_FAULTS` faults are injected at seeded random points:
//!   kill -9 of the gateway (then a restart) and kill -9 of the hub (then a
//!   restart on the same data dir and port). At the end every job must be
//!   terminal, no job may have executed twice, a job reported as completed
//!   must have executed, and every run's events must be dense from 0, in
//!   order, end with exactly one terminal event, and be complete for a run
//!   that completed. `SOAK_SEED` replays a run.
//! * `soak_across_three_replicas` is the same soak against three hub
//!   replicas on one PostgreSQL (the testkit's cluster) behind the testkit's
//!   round-robin balancer, with two machines whose gateways connect through
//!   it (their requests and realtime sockets spread over the replicas and
//!   move when one dies; the test's writes go to the replicas in turn, so
//!   most jobs reach their gateway through another replica's change feed), and one more fault kind: kill
//!   -9 of one replica, restarted on its port after 0.1–2.5 s while the
//!   others serve. `hub_restart` there kills and restarts all three. The
//!   first faults of either soak are each kind once.
//! * `hub_outage_during_streaming_run` stops the hub for `OUTAGE_SECS`
//!   (default 8; the long form uses 60) while a subagent run streams, and
//!   checks every event and the terminal state land after the hub returns.
//! * Regression tests for what the soak found, with a loopback proxy that
//!   drops the hub's answer after the hub applied a write (claim, run-row
//!   insert, "mark subagent running"), and a recovery killed between its
//!   writes.
//!
//! CI: `cargo test -p panorama-gateway --test soak` (200 jobs, 12 faults;
//! across replicas 150 jobs, 10 faults; 8 s outage). Long form:
//! `SOAK_JOBS=1000 SOAK_FAULTS=50 cargo test --release -p panorama-gateway
//! --test soak soak_mixed -- --nocapture` (`soak_across` for the replicas),
//! and
//! `OUTAGE_SECS=60 cargo test -p panorama-gateway --test soak hub_outage --
//! --nocapture`. Other knobs: `SOAK_SEED`, `SOAK_LINES`,
//! `SOAK_LINE_DELAY_MS`, `SOAK_SETTLE_SECS`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use panorama_testkit::{
    on_backend, Backend, GatewayHost, Hub, PairedGateway, RoundRobinProxy, RunningGateway,
};
use serde_json::{json, Value};

/// Seeded splitmix64: reproducible fault schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

const TERMINAL_EVENTS: [&str; 3] = ["run_completed", "run_failed", "run_cancelled"];
const RESTART_MESSAGE: &str = "gateway restarted while the job was running";

/// A Claude stream-json transcript: init, `lines` tool calls, result.
/// Normalized, a completed run has `lines + 3` events: run_started,
/// run_progress, `lines` × tool_call, run_completed.
fn write_stream_transcript(path: &Path, lines: usize) {
    let mut body = String::from(
        "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"sess-soak\",\"model\":\"m\"}\n",
    );
    for i in 0..lines {
        body.push_str(&format!(
            "{{\"type\":\"assistant\",\"message\":{{\"id\":\"msg_{i}\",\"role\":\"assistant\",\"content\":[{{\"type\":\"tool_use\",\"id\":\"tu_{i}\",\"name\":\"Read\",\"input\":{{\"file_path\":\"/f{i}\"}}}}]}}}}\n"
        ));
    }
    body.push_str("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"Done.\",\"session_id\":\"sess-soak\",\"total_cost_usd\":0.01,\"usage\":{\"input_tokens\":1}}\n");
    std::fs::write(path, body).expect("write transcript");
}

/// One machine of the world: a gateway host, its paired gateway, the
/// running gateway process (when up) and its `remote_shell` resource.
struct Machine {
    host: GatewayHost,
    gw: PairedGateway,
    running: Option<RunningGateway>,
    resource_id: String,
}

/// How the control plane is deployed in a world.
#[derive(Debug, Clone, Copy)]
enum Deployment {
    /// One hub, on the backend `PANORAMA_TEST_BACKEND` chooses, optionally
    /// behind a rule-driven proxy.
    Single,
    /// `n` hub replicas on one PostgreSQL database behind the testkit's
    /// round-robin proxy; gateways connect through the proxy, the test's
    /// own writes go to the replicas in turn.
    Replicas(usize),
}

/// The world under test: hubs that can be killed and restarted on the same
/// ports and data dirs, and machines whose gateways can be killed and
/// restarted.
struct World {
    /// The hub replicas (one for [`Deployment::Single`]); `None` while down.
    hubs: Vec<Option<Hub>>,
    /// Each replica's listen address, reused by its restarts.
    listens: Vec<String>,
    /// The replicas' shared PostgreSQL database.
    database: Option<String>,
    /// Where gateways reach the control plane.
    url: String,
    /// The round-robin balancer in front of the replicas.
    _balancer: Option<RoundRobinProxy>,
    anon_key: String,
    machines: Vec<Machine>,
    gateway_env: Vec<(String, String)>,
    /// Where the test's next write goes (replicas in turn).
    next_hub: std::cell::Cell<usize>,
    /// Gateways started again by [`World::supervise`].
    supervisor_restarts: usize,
}

impl World {
    fn new(gateway_env: Vec<(String, String)>) -> World {
        World::build(gateway_env, None)
    }

    /// A world whose gateway talks to the hub through `proxy` (started
    /// here, in front of the new hub) instead of directly.
    fn build(gateway_env: Vec<(String, String)>, proxy: Option<Arc<ProxyRules>>) -> World {
        World::deploy(gateway_env, proxy, Deployment::Single, 1)
    }

    fn deploy(
        gateway_env: Vec<(String, String)>,
        proxy: Option<Arc<ProxyRules>>,
        deployment: Deployment,
        machines: usize,
    ) -> World {
        let (hubs, database) = match deployment {
            Deployment::Single => (vec![Hub::start()], None),
            Deployment::Replicas(n) => {
                let first = on_backend(Backend::Postgres, Hub::start);
                let database =
                    std::fs::read_to_string(first.data_dir.path().join("test-database-url"))
                        .expect("the first replica's database")
                        .trim()
                        .to_string();
                let mut hubs = vec![first];
                for _ in 1..n {
                    hubs.push(hubs[0].replica());
                }
                (hubs, Some(database))
            }
        };
        let listens: Vec<String> = hubs
            .iter()
            .map(|h| {
                h.url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        let hub = &hubs[0];
        let team = hub.create_team("soak-team");
        let machines: Vec<Machine> = (0..machines)
            .map(|m| {
                let gw = hub.pair(&team, &format!("soak-box-{m}"));
                hub.set_full_control(&gw.gateway_id, true);
                let resource_id = hub.insert(
                    "team_resources",
                    json!({"team_id": gw.team_id, "resource_type": "remote_shell",
                           "title": format!("soak shell {m}"), "max_access_level": "editor",
                           "metadata": {"gateway_id": gw.gateway_id, "full_control": true}}),
                )["id"]
                    .as_str()
                    .expect("resource id")
                    .to_string();
                let host = GatewayHost::new();
                host.write_config(hub, &gw, true);
                Machine {
                    host,
                    gw,
                    running: None,
                    resource_id,
                }
            })
            .collect();
        let (url, balancer) = match (deployment, proxy) {
            (Deployment::Replicas(_), _) => {
                let urls: Vec<&str> = hubs.iter().map(|h| h.url.as_str()).collect();
                let balancer = RoundRobinProxy::start(&urls);
                (balancer.url.clone(), Some(balancer))
            }
            (Deployment::Single, Some(rules)) => (start_proxy(&listens[0], rules), None),
            (Deployment::Single, None) => (hub.url.clone(), None),
        };
        let mut world = World {
            url,
            _balancer: balancer,
            anon_key: hub.anon_key.clone(),
            hubs: hubs.into_iter().map(Some).collect(),
            listens,
            database,
            machines,
            gateway_env,
            next_hub: std::cell::Cell::new(0),
            supervisor_restarts: 0,
        };
        for m in 0..world.machines.len() {
            world.start_gateway_on(m);
        }
        for m in &world.machines {
            world
                .hub()
                .wait_gateway_status(&m.gw.gateway_id, "ready", Duration::from_secs(60));
        }
        world
    }

    /// A hub that is up (the first live replica).
    fn hub(&self) -> &Hub {
        self.hubs.iter().flatten().next().expect("a hub is up")
    }

    /// The next live replica in turn, for the test's writes: with replicas,
    /// a job inserted through one reaches a gateway whose realtime socket
    /// is on another only through the cross-replica change feed.
    fn write_hub(&self) -> &Hub {
        let live: Vec<&Hub> = self.hubs.iter().flatten().collect();
        let i = self.next_hub.get();
        self.next_hub.set(i.wrapping_add(1));
        live[i % live.len()]
    }

    /// The first machine's gateway (the single-machine tests').
    fn gw(&self) -> &PairedGateway {
        &self.machines[0].gw
    }

    fn agent_log_path_of(&self, m: usize) -> PathBuf {
        self.machines[m].host.path("agent-log.jsonl")
    }

    /// One shell log for every machine (appends of one short line each).
    fn shell_log_path(&self) -> PathBuf {
        self.machines[0].host.path("shell-exec.log")
    }

    fn start_gateway(&mut self) {
        for m in 0..self.machines.len() {
            self.start_gateway_on(m);
        }
    }

    /// Starts machine `m`'s gateway; works while the hub is down (the
    /// gateway must then wait for it), so it does not go through a live
    /// [`Hub`].
    fn start_gateway_on(&mut self, m: usize) {
        let host = &self.machines[m].host;
        let mut cmd = std::process::Command::new(panorama_testkit::gateway_binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("PANORAMA_")
                || key.starts_with("SUPABASE_")
                || key.starts_with("FAKE_AGENT")
            {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", host.home())
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", host.bin_dir().display()),
            )
            .env("PANORAMA_GATEWAY_LOG", "info")
            .env("FAKE_AGENT_LOG", self.agent_log_path_of(m))
            .current_dir(host.home())
            .arg("--config-dir")
            .arg(host.config_dir())
            .args(["--supabase-url", &self.url, "--anon-key", &self.anon_key])
            .args(["--device-name", &host.device_name])
            .args(["start", "--foreground"])
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.gateway_env {
            cmd.env(k, v);
        }
        let running = host.spawn(cmd);
        self.machines[m].running = Some(running);
    }

    /// Plays the service manager (systemd `Restart=always`): a gateway that
    /// exited on its own is started again. (A gateway started while the hub
    /// is down waits for it with backoff instead of exiting.)
    fn supervise(&mut self) {
        for m in 0..self.machines.len() {
            if let Some(g) = self.machines[m].running.as_mut() {
                if !g.is_running() {
                    self.supervisor_restarts += 1;
                    self.start_gateway_on(m);
                }
            }
        }
    }

    fn kill_gateway(&mut self) {
        for m in 0..self.machines.len() {
            self.kill_gateway_on(m);
        }
    }

    fn kill_gateway_on(&mut self, m: usize) {
        if let Some(mut g) = self.machines[m].running.take() {
            g.sigkill();
        }
    }

    /// Kills every hub replica (SIGKILL); hands back their data dirs.
    fn stop_hub(&mut self) -> Vec<tempfile::TempDir> {
        (0..self.hubs.len()).map(|r| self.kill_replica(r)).collect()
    }

    fn start_hub(&mut self, dirs: Vec<tempfile::TempDir>) {
        for (r, dir) in dirs.into_iter().enumerate() {
            self.start_replica(r, dir);
        }
    }

    /// Kills replica `r` (SIGKILL); hands back its data dir.
    fn kill_replica(&mut self, r: usize) -> tempfile::TempDir {
        self.hubs[r].take().expect("the replica is up").kill()
    }

    /// Starts replica `r` again on its port and data dir (and database).
    fn start_replica(&mut self, r: usize, dir: tempfile::TempDir) {
        let listen = &self.listens[r];
        self.hubs[r] = Some(match &self.database {
            Some(db) => Hub::start_on(dir, listen, Some(db), &[]),
            None => Hub::start_in(dir, listen, &[]),
        });
    }

    /// POST with the service key; `Err` when the hub cannot be reached.
    fn try_insert(&self, table: &str, row: &Value) -> Result<Value, String> {
        let hub = self.write_hub();
        let res = hub
            .req(
                reqwest::Method::POST,
                &format!("/rest/v1/{table}"),
                &hub.service_key,
            )
            .header("prefer", "return=representation")
            .json(row)
            .send()
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let body: Value = res.json().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("insert into {table}: {status} {body}"));
        }
        Ok(body[0].clone())
    }

    fn insert(&self, table: &str, row: Value) -> Value {
        let mut tries = 0;
        loop {
            match self.try_insert(table, &row) {
                Ok(v) => return v,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("soak: insert into {table} retried: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn job(&self, job_type: &str, payload: Value) -> String {
        self.job_on(0, job_type, payload)
    }

    fn job_on(&self, m: usize, job_type: &str, payload: Value) -> String {
        let gw = &self.machines[m].gw;
        self.insert(
            "gateway_jobs",
            json!({"team_id": gw.team_id, "gateway_id": gw.gateway_id,
                   "job_type": job_type, "payload": payload}),
        )["id"]
            .as_str()
            .expect("job id")
            .to_string()
    }

    fn subagent(&self, subagent_type: &str, config: Value, prompt: &str) -> String {
        self.subagent_on(0, subagent_type, config, prompt)
    }

    fn subagent_on(&self, m: usize, subagent_type: &str, config: Value, prompt: &str) -> String {
        let gw = &self.machines[m].gw;
        let id = new_id();
        self.insert(
            "subagents",
            json!({"id": id, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
                   "subagent_type": subagent_type, "status": "idle", "config": config,
                   "input": {"prompt": prompt}, "metadata": {}}),
        );
        id
    }

    /// The later protocol's recipe (control-plane §16.10): the control plane
    /// accepted the run before the job — a `running` run row (sequence 1)
    /// and the subagent `running` on it. Returns (subagent id, run id).
    fn accepted_subagent_on(
        &self,
        m: usize,
        subagent_type: &str,
        config: Value,
        prompt: &str,
    ) -> (String, String) {
        let gw = &self.machines[m].gw;
        let (sid, run_id) = (new_id(), new_id());
        self.insert(
            "subagents",
            json!({"id": sid, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
                   "subagent_type": subagent_type, "status": "running", "config": config,
                   "input": {"prompt": prompt, "run_id": run_id, "run_sequence": 1},
                   "metadata": {"current_run_id": run_id, "current_run_sequence": 1}}),
        );
        self.insert(
            "subagent_runs",
            json!({"id": run_id, "subagent_id": sid, "team_id": gw.team_id,
                   "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running",
                   "prompt": prompt, "metadata": {}}),
        );
        (sid, run_id)
    }

    fn events(&self, run_id: &str) -> Vec<Value> {
        self.hub().select(
            "subagent_run_events",
            &format!("run_id=eq.{run_id}&select=*&order=sequence.asc"),
        )
    }

    /// Every job of the team's gateways, by id.
    fn jobs_by_id(&self) -> HashMap<String, Value> {
        self.hub()
            .select(
                "gateway_jobs",
                &format!("team_id=eq.{}&select=*", self.gw().team_id),
            )
            .into_iter()
            .filter_map(|r| Some((r["id"].as_str()?.to_string(), r)))
            .collect()
    }

    /// The fake agents' executions on every machine, and how many log
    /// lines did not parse (a torn line would hide an execution).
    fn agent_executions(&self) -> (Vec<Value>, usize) {
        let mut torn = 0;
        let mut out = Vec::new();
        for m in 0..self.machines.len() {
            let text = std::fs::read_to_string(self.agent_log_path_of(m)).unwrap_or_default();
            for line in text.lines() {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) if v["role"] == "agent" => out.push(v),
                    Ok(_) => {}
                    Err(_) => torn += 1,
                }
            }
        }
        (out, torn)
    }

    fn dump_on_panic(&self) {
        if std::thread::panicking() {
            for (m, machine) in self.machines.iter().enumerate() {
                let keep = std::env::temp_dir()
                    .join(format!("soak-gateway-{}-{m}.log", std::process::id()));
                let _ = std::fs::copy(machine.host.log_path(), &keep);
                let _ = std::fs::copy(
                    self.agent_log_path_of(m),
                    keep.with_extension("agents.jsonl"),
                );
                eprintln!("soak: gateway {m} log kept at {}", keep.display());
                eprintln!(
                    "--- gateway {m} log (last 60 lines) ---\n{}",
                    machine.host.log_tail(60)
                );
            }
            if let Some(hub) = self.hubs.iter().flatten().next() {
                let db = std::env::temp_dir().join(format!("soak-hub-{}", std::process::id()));
                let _ = std::fs::create_dir_all(&db);
                for entry in std::fs::read_dir(hub.data_dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = std::fs::copy(entry.path(), db.join(entry.file_name()));
                }
                eprintln!("soak: hub data kept in {}", db.display());
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.dump_on_panic();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Diagnostic,
    ModelRun,
    StreamRun,
    CodexRun,
    ShellExec,
    Cancel,
}

#[derive(Debug)]
struct Job {
    id: String,
    kind: Kind,
    marker: String,
    /// subagent_run: (subagent id, run id).
    run: Option<(String, String)>,
    /// The machine whose gateway it was queued for.
    machine: usize,
}

/// What the checks found.
#[derive(Default, Debug)]
struct Findings {
    lost: Vec<String>,
    duplicated: Vec<String>,
    phantom: Vec<String>,
    missing_events: usize,
    event_defects: Vec<String>,
}

impl Findings {
    fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.phantom.is_empty()
            && self.missing_events == 0
            && self.event_defects.is_empty()
    }
}

/// Checks one run's events: dense from 0 (no gap, no duplicate), exactly
/// one terminal event, last; with `expected` (a completed run), exactly
/// that many events. Returns the number of missing events and defects.
fn check_run_events(
    run_id: &str,
    events: &[Value],
    expected: Option<usize>,
    stream_lines: Option<usize>,
) -> (usize, Vec<String>) {
    let mut defects = Vec::new();
    let mut missing = 0;
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap_or(-1))
        .collect();
    for (i, s) in seqs.iter().enumerate() {
        if *s != i as i64 {
            defects.push(format!(
                "run {run_id}: sequences not dense from 0: {seqs:?}"
            ));
            missing += seqs
                .last()
                .map_or(0, |l| (*l + 1) as usize)
                .saturating_sub(seqs.len());
            break;
        }
    }
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or(""))
        .collect();
    let terminals = types.iter().filter(|t| TERMINAL_EVENTS.contains(t)).count();
    if !events.is_empty() {
        if terminals != 1 || !TERMINAL_EVENTS.contains(types.last().unwrap()) {
            defects.push(format!(
                "run {run_id}: expected exactly one terminal event, last: {types:?}"
            ));
        }
        if types.iter().filter(|t| **t == "run_started").count() > 1 {
            defects.push(format!("run {run_id}: run_started twice: {types:?}"));
        }
    }
    if let Some(lines) = stream_lines {
        // Tool calls arrive in transcript order, each once.
        let ids: Vec<&str> = events
            .iter()
            .filter(|e| e["event_type"] == "tool_call")
            .filter_map(|e| e["payload"]["tool_use_id"].as_str())
            .collect();
        let want: Vec<String> = (0..ids.len().min(lines))
            .map(|i| format!("tu_{i}"))
            .collect();
        if ids.len() > lines || ids.iter().zip(&want).any(|(a, b)| a != b) {
            defects.push(format!(
                "run {run_id}: tool calls out of order or repeated: {ids:?}"
            ));
        }
    }
    if let Some(n) = expected {
        if events.len() < n {
            missing += n - events.len();
            defects.push(format!(
                "run {run_id}: completed with {} of {n} events: {types:?}",
                events.len()
            ));
        } else if events.len() > n {
            defects.push(format!(
                "run {run_id}: {} events, expected {n}: {types:?}",
                events.len()
            ));
        }
    }
    (missing, defects)
}

/// Extracts `soak-<n>-<seed>` markers from a logged argv.
fn markers_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("soakjob-") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// A fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9 of one machine's gateway, started again after up to 0.8 s.
    GatewayKill9,
    /// kill -9 of every hub process, restarted on the same data dirs and
    /// ports after 0.1–2.5 s.
    HubRestart,
    /// Both: a gateway dies and starts again while the hubs are down.
    HubAndGateway,
    /// kill -9 of one hub replica, restarted after 0.1–2.5 s while the
    /// others serve (the balancer sends new connections to them).
    ReplicaKill9,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::GatewayKill9 => "gateway_kill9",
            Fault::HubRestart => "hub_restart",
            Fault::HubAndGateway => "hub_and_gateway",
            Fault::ReplicaKill9 => "replica_kill9",
        }
    }

    /// The kinds a deployment gets, with their weights (percent).
    fn mix(deployment: Deployment) -> &'static [(Fault, u64)] {
        match deployment {
            Deployment::Single => &[
                (Fault::GatewayKill9, 55),
                (Fault::HubRestart, 35),
                (Fault::HubAndGateway, 10),
            ],
            Deployment::Replicas(_) => &[
                (Fault::GatewayKill9, 40),
                (Fault::ReplicaKill9, 35),
                (Fault::HubRestart, 15),
                (Fault::HubAndGateway, 10),
            ],
        }
    }
}

/// The `k`-th fault of a soak: the first ones are each kind once, so that
/// a short run covers them all; then drawn by weight.
fn pick_fault(k: usize, mix: &[(Fault, u64)], rng: &mut Rng) -> Fault {
    if k < mix.len() {
        return mix[k].0;
    }
    let mut roll = rng.range(0, mix.iter().map(|(_, w)| w).sum());
    for (fault, weight) in mix {
        if roll < *weight {
            return *fault;
        }
        roll -= weight;
    }
    unreachable!("the roll is below the weights' sum")
}

fn inject_fault(world: &mut World, fault: Fault, rng: &mut Rng) {
    let machine = rng.range(0, world.machines.len() as u64) as usize;
    match fault {
        Fault::GatewayKill9 => {
            world.kill_gateway_on(machine);
            std::thread::sleep(Duration::from_millis(rng.range(0, 800)));
            world.start_gateway_on(machine);
        }
        Fault::HubRestart => {
            let dirs = world.stop_hub();
            std::thread::sleep(Duration::from_millis(rng.range(100, 2500)));
            world.start_hub(dirs);
        }
        Fault::HubAndGateway => {
            let dirs = world.stop_hub();
            std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
            world.kill_gateway_on(machine);
            world.start_gateway_on(machine);
            std::thread::sleep(Duration::from_millis(rng.range(100, 1500)));
            world.start_hub(dirs);
        }
        Fault::ReplicaKill9 => {
            let replica = rng.range(0, world.hubs.len() as u64) as usize;
            let dir = world.kill_replica(replica);
            std::thread::sleep(Duration::from_millis(rng.range(100, 2500)));
            world.start_replica(replica, dir);
        }
    }
}

/// One hub (the backend `PANORAMA_TEST_BACKEND` chooses), one machine.
#[test]
fn soak_mixed_jobs_under_faults() {
    soak(Deployment::Single, 1, 200, 12);
}

/// Three hub replicas on one PostgreSQL behind a round-robin balancer, two
/// machines whose gateways connect through it (so their realtime sockets
/// and requests spread over the replicas, and most jobs reach them
/// through another replica's change feed); one more fault kind: kill -9 of
/// a replica.
#[test]
fn soak_across_three_replicas() {
    soak(Deployment::Replicas(3), 2, 150, 10);
}

/// Submits `SOAK_JOBS` (default `jobs`) mixed jobs while `SOAK_FAULTS`
/// (default `faults`) faults hit the deployment, then checks every job and
/// run (see the module's doc).
fn soak(deployment: Deployment, machines: usize, jobs: u64, faults: u64) {
    let started = Instant::now();
    let jobs_n = env_u64("SOAK_JOBS", jobs) as usize;
    let faults_n = env_u64("SOAK_FAULTS", faults) as usize;
    let lines = env_u64("SOAK_LINES", 30) as usize;
    let line_delay = env_u64("SOAK_LINE_DELAY_MS", 10);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                & 0xFFFF_FFFF
        });
    eprintln!(
        "soak: {deployment:?} machines={machines} seed={seed} jobs={jobs_n} faults={faults_n} lines={lines} line_delay_ms={line_delay} (replay with SOAK_SEED={seed})"
    );
    let mut rng = Rng(seed);

    let transcripts = tempfile::tempdir().unwrap();
    let stream = transcripts.path().join("soak-stream.jsonl");
    write_stream_transcript(&stream, lines);

    let mut world = World::deploy(
        vec![(
            "FAKE_AGENT_LINE_DELAY_MS".to_string(),
            line_delay.to_string(),
        )],
        None,
        deployment,
        machines,
    );
    let shell_log = world.shell_log_path();
    let fault_mix = Fault::mix(deployment);

    // Fault points: job indices before which a fault is injected.
    let mut fault_at: Vec<usize> = (0..faults_n)
        .map(|_| rng.range(1, jobs_n as u64) as usize)
        .collect();
    fault_at.sort();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fault_rng = Rng(seed ^ 0xFA17);
    let mut inject = |world: &mut World| {
        let fault = pick_fault(faults.values().sum(), fault_mix, &mut fault_rng);
        inject_fault(world, fault, &mut fault_rng);
        *faults.entry(fault.name()).or_default() += 1;
    };
    let mut jobs: Vec<Job> = Vec::new();
    // Runs a cancel will be sent for later: (due at job index, job index).
    let mut pending_cancels: Vec<(usize, usize)> = Vec::new();
    let mut next_fault = 0;
    let mut accepted_runs = 0usize;

    let mut i = 0;
    while i < jobs_n {
        world.supervise();
        while next_fault < fault_at.len() && fault_at[next_fault] <= i {
            next_fault += 1;
            inject(&mut world);
        }

        // Cancels that are due.
        let due: Vec<usize> = pending_cancels
            .iter()
            .filter(|(at, _)| *at <= i)
            .map(|(_, j)| *j)
            .collect();
        pending_cancels.retain(|(at, _)| *at > i);
        for j in due {
            if i >= jobs_n {
                break;
            }
            let (sid, run_id) = jobs[j].run.clone().unwrap();
            let machine = jobs[j].machine;
            let marker = format!("soakjob-{i}-{seed}");
            let id = world.job_on(
                machine,
                "subagent_cancel",
                json!({"subagent_id": sid, "run_id": run_id, "reason": format!("stop {marker}")}),
            );
            jobs.push(Job {
                id,
                kind: Kind::Cancel,
                marker,
                run: Some((sid, run_id)),
                machine,
            });
            i += 1;
        }
        if i >= jobs_n {
            break;
        }

        let marker = format!("soakjob-{i}-{seed}");
        let machine = if world.machines.len() > 1 {
            rng.range(0, world.machines.len() as u64) as usize
        } else {
            0
        };
        let roll = rng.range(0, 100);
        let job = if roll < 15 {
            let id = world.job_on(machine, "diagnostic", json!({"note": marker}));
            Job {
                id,
                kind: Kind::Diagnostic,
                marker,
                run: None,
                machine,
            }
        } else if roll < 30 {
            let (model, extra) = match rng.range(0, 3) {
                0 => (
                    "__default__",
                    json!({"provider": "claude", "json_schema": {"type": "object"}}),
                ),
                1 => (
                    "__default__",
                    json!({"provider": "codex", "output_format": "text"}),
                ),
                _ => (
                    "__default__",
                    json!({"provider": "gemini", "output_format": "text"}),
                ),
            };
            let mut payload = json!({"prompt": format!("Say hi {marker}."), "model": model});
            for (k, v) in extra.as_object().unwrap() {
                payload[k] = v.clone();
            }
            let id = world.job_on(machine, "model_run", payload);
            Job {
                id,
                kind: Kind::ModelRun,
                marker,
                run: None,
                machine,
            }
        } else if roll < 70 {
            let prompt = format!("{marker} [[fake:{}]]", stream.display());
            let config = json!({"output_format": "stream-json"});
            // Both protocol generations, mixed: the seed recipe (the gateway
            // creates the run) and the later one (the run is pre-accepted).
            let (sid, run_id) = if rng.chance(50) {
                accepted_runs += 1;
                world.accepted_subagent_on(machine, "claude_code_gateway", config, &prompt)
            } else {
                (
                    world.subagent_on(machine, "claude_code_gateway", config, &prompt),
                    new_id(),
                )
            };
            let id = world.job_on(
                machine,
                "subagent_run",
                json!({"subagent_id": sid, "run_id": run_id}),
            );
            if rng.chance(30) {
                pending_cancels.push((i + rng.range(0, 6) as usize, jobs.len()));
            }
            Job {
                id,
                kind: Kind::StreamRun,
                marker,
                run: Some((sid, run_id)),
                machine,
            }
        } else if roll < 80 {
            let sid = world.subagent_on(
                machine,
                "codex_gateway",
                json!({}),
                &format!("Summarize {marker}"),
            );
            let run_id = new_id();
            let id = world.job_on(
                machine,
                "subagent_run",
                json!({"subagent_id": sid, "run_id": run_id}),
            );
            Job {
                id,
                kind: Kind::CodexRun,
                marker,
                run: Some((sid, run_id)),
                machine,
            }
        } else {
            let id = world.job_on(
                machine,
                "shell_exec",
                json!({"resource_id": world.machines[machine].resource_id,
                       "command": format!("echo {marker} >> '{}'", shell_log.display()),
                       "timeout_ms": 20000}),
            );
            Job {
                id,
                kind: Kind::ShellExec,
                marker,
                run: None,
                machine,
            }
        };
        jobs.push(job);
        i += 1;
        std::thread::sleep(Duration::from_millis(rng.range(0, 60)));
    }
    // Faults whose point a run of cancels skipped over.
    while next_fault < fault_at.len() {
        next_fault += 1;
        inject(&mut world);
    }
    let submitted_in = started.elapsed();

    // Every job terminal.
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(env_u64("SOAK_SETTLE_SECS", 120));
    let rows = loop {
        world.supervise();
        let rows = world.jobs_by_id();
        let open: Vec<&String> = ids
            .iter()
            .filter(|id| {
                !matches!(
                    rows.get(*id).and_then(|r| r["status"].as_str()),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .collect();
        if open.is_empty() || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // Terminal run events land after the job completion in some paths:
    // let the outbox drain (terminal events of every started run).
    let run_ids: Vec<String> = jobs
        .iter()
        .filter(|j| matches!(j.kind, Kind::StreamRun | Kind::CodexRun))
        .map(|j| j.run.as_ref().unwrap().1.clone())
        .collect();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unfinished = run_ids.iter().any(|r| {
            let ev = world.events(r);
            !ev.is_empty()
                && !ev
                    .iter()
                    .any(|e| TERMINAL_EVENTS.contains(&e["event_type"].as_str().unwrap_or("")))
        });
        world.supervise();
        if !unfinished || Instant::now() > drain_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let mut f = Findings::default();
    let (executions, torn) = world.agent_executions();
    assert_eq!(torn, 0, "torn lines in the fake agents' execution log");
    let mut exec_count: HashMap<String, usize> = HashMap::new();
    for e in &executions {
        for m in markers_in(&e["argv"].to_string()) {
            *exec_count.entry(m).or_default() += 1;
        }
    }
    let shell_text = std::fs::read_to_string(&shell_log).unwrap_or_default();
    for line in shell_text.lines() {
        *exec_count.entry(line.trim().to_string()).or_default() += 1;
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut restarted = 0;
    let mut other_errors: BTreeMap<String, usize> = BTreeMap::new();
    for job in &jobs {
        let Some(row) = rows.get(&job.id) else {
            f.lost
                .push(format!("{} ({:?}): row missing", job.id, job.kind));
            continue;
        };
        let status = row["status"].as_str().unwrap_or("").to_string();
        *by_status
            .entry(format!("{:?}/{status}", job.kind))
            .or_default() += 1;
        if !matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            f.lost
                .push(format!("{} ({:?}): still {status}", job.id, job.kind));
            continue;
        }
        if row["error"] == RESTART_MESSAGE {
            restarted += 1;
        } else if let Some(e) = row["error"].as_str() {
            let e: String = e.chars().take(90).collect();
            *other_errors
                .entry(format!("{:?}: {e}", job.kind))
                .or_default() += 1;
        }
        let n = exec_count.get(&job.marker).copied().unwrap_or(0);
        let executes = matches!(
            job.kind,
            Kind::ModelRun | Kind::StreamRun | Kind::CodexRun | Kind::ShellExec
        );
        if executes && n > 1 {
            f.duplicated
                .push(format!("{} ({:?}) executed {n} times", job.id, job.kind));
        }
        // A job reported as having run to completion must have executed.
        let ran_ok = status == "completed"
            && match job.kind {
                Kind::ModelRun => row["result"]["exit_code"] == 0,
                Kind::StreamRun | Kind::CodexRun => row["result"]["status"] == "completed",
                Kind::ShellExec => row["result"]["exit_code"] == 0,
                _ => false,
            };
        if ran_ok && n == 0 {
            f.phantom.push(format!(
                "{} ({:?}) completed but never executed: {row}",
                job.id, job.kind
            ));
        }
        if let (Kind::StreamRun | Kind::CodexRun, Some((_, run_id))) = (job.kind, &job.run) {
            let events = world.events(run_id);
            let completed = row["result"]["status"] == "completed";
            let expected = (job.kind == Kind::StreamRun && completed).then_some(lines + 3);
            let stream = (job.kind == Kind::StreamRun).then_some(lines);
            let (missing, defects) = check_run_events(run_id, &events, expected, stream);
            f.missing_events += missing;
            let context = format!(
                " [job {} {:?} status={status} error={} result.status={} subagent={}]",
                job.id,
                job.kind,
                row["error"],
                row["result"]["status"],
                job.run.as_ref().unwrap().0
            );
            f.event_defects
                .extend(defects.iter().map(|d| d.clone() + &context));
            if !defects.is_empty() {
                let run = world.hub().row("subagent_runs", run_id);
                let sub = world.hub().row("subagents", &job.run.as_ref().unwrap().0);
                eprintln!(
                    "soak: defective run {run_id}: run row {} / subagent {}",
                    run.map_or("none".into(), |r| format!(
                        "status={} error={} metadata={}",
                        r["status"], r["error"], r["metadata"]
                    )),
                    sub.map_or("none".into(), |r| format!(
                        "status={} metadata={}",
                        r["status"], r["metadata"]
                    ))
                );
            }
            let sid = &job.run.as_ref().unwrap().0;
            if let Some(sub) = world.hub().row("subagents", sid) {
                if sub["status"] == "running" {
                    f.event_defects.push(format!(
                        "subagent {sid}: job {} is {status} but the subagent is still running",
                        job.id
                    ));
                }
            }
            if let Some(run) = world.hub().row("subagent_runs", run_id) {
                if run["status"] == "running" || run["status"] == "queued" {
                    f.event_defects.push(format!(
                        "run {run_id}: job is {status} but the run is still {}",
                        run["status"]
                    ));
                }
            }
        }
    }

    let faults_total: usize = faults.values().sum();
    // From insert to claim: realtime's pickup, or the reconcile's for a job
    // queued while its gateway or the hubs were down.
    let mut pickup_ms: Vec<i64> = jobs
        .iter()
        .filter_map(|j| {
            let row = rows.get(&j.id)?;
            let at = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(row[k].as_str()?)
                    .ok()
                    .map(|t| t.timestamp_millis())
            };
            Some(at("started_at")? - at("created_at")?)
        })
        .collect();
    pickup_ms.sort();
    let pct = |p: usize| {
        pickup_ms
            .get(pickup_ms.len() * p / 100)
            .copied()
            .unwrap_or(-1)
    };
    eprintln!("soak: outcomes by kind/status: {by_status:?}; failed by restart: {restarted}; other errors: {other_errors:#?}; agent executions: {}", executions.len());
    println!(
        "SOAK {deployment:?} machines={machines} seed={seed} jobs={} accepted_runs={accepted_runs} faults={faults_total} {:?} supervisor_restarts={} lost={} duplicated={} phantom={} missing_events={} event_defects={} pickup_ms_p50={} p90={} submitted_in={:.1}s elapsed={:.1}s",
        jobs.len(),
        faults,
        world.supervisor_restarts,
        f.lost.len(),
        f.duplicated.len(),
        f.phantom.len(),
        f.missing_events,
        f.event_defects.len(),
        pct(50),
        pct(90),
        submitted_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(jobs.len() >= jobs_n, "submitted {} jobs", jobs.len());
    assert_eq!(faults_total, faults_n, "faults injected");
    assert!(
        f.is_clean(),
        "soak found defects (seed {seed}):\nlost: {:#?}\nduplicated: {:#?}\nphantom: {:#?}\nevents: {:#?}",
        f.lost,
        f.duplicated,
        f.phantom,
        f.event_defects
    );
}

/// What the loopback proxy in front of the hub does to requests.
#[derive(Default)]
struct ProxyRules {
    /// `(request line prefix, text the request line contains, count)`: the
    /// answers of the next `count` matching requests are dropped after the
    /// hub applied them (the client connection is closed instead).
    drops: std::sync::Mutex<Vec<(String, String, usize)>>,
    /// Answers dropped so far.
    dropped: AtomicUsize,
}

impl ProxyRules {
    fn drop_answers(&self, prefix: &str, contains: &str, count: usize) {
        self.drops
            .lock()
            .unwrap()
            .push((prefix.into(), contains.into(), count));
    }

    /// Whether to drop the answer to a request with this request line.
    fn take(&self, line: &str) -> bool {
        let mut drops = self.drops.lock().unwrap();
        for (prefix, contains, count) in drops.iter_mut() {
            if *count > 0 && line.starts_with(prefix.as_str()) && line.contains(contains.as_str()) {
                *count -= 1;
                self.dropped.fetch_add(1, Ordering::SeqCst);
                return true;
            }
        }
        false
    }
}

/// Starts an HTTP/1 proxy on a free loopback port forwarding to
/// `upstream` (`host:port`); returns its base URL. One request per client
/// connection (the request is forwarded with `Connection: close`);
/// WebSocket upgrades are piped both ways.
fn start_proxy(upstream: &str, rules: Arc<ProxyRules>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = upstream.clone();
            let rules = Arc::clone(&rules);
            std::thread::spawn(move || {
                let _ = proxy_one(client, &upstream, &rules);
            });
        }
    });
    url
}

fn proxy_one(client: TcpStream, upstream: &str, rules: &ProxyRules) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let lower: Vec<String> = head.iter().map(|l| l.to_ascii_lowercase()).collect();
    let length: usize = lower
        .iter()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut up = TcpStream::connect(upstream)?;
    if lower.iter().any(|l| l.starts_with("upgrade:")) {
        up.write_all(head.concat().as_bytes())?;
        up.write_all(&body)?;
        let buffered = reader.buffer().to_vec();
        up.write_all(&buffered)?;
        let (mut c_read, mut u_write) = (reader.into_inner(), up.try_clone()?);
        let (mut u_read, mut c_write) = (up, client);
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_read, &mut u_write);
            let _ = u_write.shutdown(Shutdown::Both);
        });
        let _ = std::io::copy(&mut u_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = t.join();
        return Ok(());
    }
    let mut out = String::new();
    for (line, l) in head.iter().zip(&lower) {
        if !l.starts_with("connection:") && line != "\r\n" {
            out.push_str(line);
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    if rules.take(&head[0]) {
        return client.shutdown(Shutdown::Both);
    }
    let mut client = client;
    client.write_all(&response)?;
    client.shutdown(Shutdown::Both)
}

/// Regression (soak): a claim the hub applied but whose answer was lost
/// left the job `running` with nobody running it (the queue never offers
/// a handed-out job again). The claim is now retried with the same
/// `started_at` and a 0-row answer is checked against the row.
#[test]
fn claim_whose_answer_is_lost_still_runs_the_job_once() {
    let rules = Arc::new(ProxyRules::default());
    rules.drop_answers("PATCH /rest/v1/gateway_jobs?", "status=eq.queued", 2);
    let world = World::build(Vec::new(), Some(Arc::clone(&rules)));
    let log = world.shell_log_path();
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(world.job(
            "shell_exec",
            json!({"resource_id": world.machines[0].resource_id,
                   "command": format!("echo lost-answer-{i} >> '{}'", log.display())}),
        ));
    }
    for id in &ids {
        let row = world.hub().wait_job_terminal(id, Duration::from_secs(30));
        assert_eq!(row["status"], "completed", "{row}");
        assert_eq!(row["result"]["exit_code"], 0, "{row}");
    }
    assert_eq!(
        rules.dropped.load(Ordering::SeqCst),
        2,
        "claim answers dropped"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["lost-answer-0", "lost-answer-1"],
        "each job ran once"
    );
}

/// The hub is down for `OUTAGE_SECS` (default 8; the long form uses 60)
/// while a Claude stream-json run streams one line every 50 ms through
/// the whole outage. After the hub returns, every event and the terminal
/// state land: dense from 0, in transcript order, none lost or duplicated.
#[test]
fn hub_outage_during_streaming_run() {
    let outage = Duration::from_secs(env_u64("OUTAGE_SECS", 8));
    const DELAY_MS: u64 = 50;
    // The agent streams for the outage plus ~6 s on either side.
    let lines = ((outage.as_millis() as u64 + 6_000) / DELAY_MS) as usize;
    let transcripts = tempfile::tempdir().unwrap();
    let stream = transcripts.path().join("outage-stream.jsonl");
    write_stream_transcript(&stream, lines);
    let mut world = World::new(vec![(
        "FAKE_AGENT_LINE_DELAY_MS".to_string(),
        DELAY_MS.to_string(),
    )]);
    let sid = world.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        &format!("outage [[fake:{}]]", stream.display()),
    );
    let run_id = new_id();
    let job = world.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    let before = world.hub().wait_for(
        "live events before the outage",
        Duration::from_secs(60),
        || {
            let n = world.events(&run_id).len();
            (n >= 20).then_some(n)
        },
    );
    let dir = world.stop_hub();
    let down_at = Instant::now();
    std::thread::sleep(outage);
    // The agent is still streaming when the hub comes back.
    let agent = world
        .agent_executions()
        .0
        .into_iter()
        .find(|l| l["argv"].to_string().contains("outage-stream"))
        .expect("agent execution");
    assert!(
        panorama_testkit::procs::alive(agent["pid"].as_i64().unwrap() as i32),
        "the agent finished during the outage; the run must stream through it"
    );
    world.start_hub(dir);
    let up_at = Instant::now();
    let row = world
        .hub()
        .wait_job_terminal(&job, Duration::from_secs(120) + outage);
    let job_landed = up_at.elapsed();
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["status"], "completed", "{row}");
    let events = world
        .hub()
        .wait_for("terminal event", Duration::from_secs(60), || {
            let ev = world.events(&run_id);
            ev.iter()
                .any(|e| TERMINAL_EVENTS.contains(&e["event_type"].as_str().unwrap_or("")))
                .then_some(ev)
        });
    let (missing, defects) = check_run_events(&run_id, &events, Some(lines + 3), Some(lines));
    assert!(defects.is_empty() && missing == 0, "{defects:#?}");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "run_started");
    assert_eq!(types[lines + 2], "run_completed");
    let run = world.hub().row("subagent_runs", &run_id).expect("run row");
    assert_eq!(run["status"], "completed", "{run}");
    let sub = world.hub().row("subagents", &sid).expect("subagent row");
    assert_eq!(sub["status"], "completed", "{sub}");
    assert_eq!(
        world
            .agent_executions()
            .0
            .iter()
            .filter(|l| l["argv"].to_string().contains("outage-stream"))
            .count(),
        1,
        "the run executed once"
    );
    println!(
        "OUTAGE outage={}s lines={lines} events={} at_hub_before_stop>={before} landed_after={} job_terminal_after_return={:.1}s total={:.1}s",
        outage.as_secs(),
        events.len(),
        events.len() - before,
        job_landed.as_secs_f64(),
        down_at.elapsed().as_secs_f64()
    );
}

/// Regression (soak): when the hub's answer to the run-row insert or to
/// "mark the subagent running" was lost, the job failed at once and left
/// its run row `running` forever with no terminal event. Both writes are
/// now retried while the hub gives no answer, and an insert that had in
/// fact landed is recognized as this run's own row.
#[test]
fn run_start_writes_whose_answers_are_lost_still_run_once() {
    let rules = Arc::new(ProxyRules::default());
    rules.drop_answers("POST /rest/v1/subagent_runs", "", 1);
    rules.drop_answers("PATCH /rest/v1/subagents?", "", 1);
    let world = World::build(Vec::new(), Some(Arc::clone(&rules)));
    let transcripts = tempfile::tempdir().unwrap();
    let stream = transcripts.path().join("lost-answers.jsonl");
    const LINES: usize = 5;
    write_stream_transcript(&stream, LINES);
    let sid = world.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        &format!("lost answers [[fake:{}]]", stream.display()),
    );
    let run_id = new_id();
    let job = world.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    let row = world.hub().wait_job_terminal(&job, Duration::from_secs(60));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["status"], "completed", "{row}");
    assert_eq!(rules.dropped.load(Ordering::SeqCst), 2, "answers dropped");
    let events = world
        .hub()
        .wait_for("terminal event", Duration::from_secs(30), || {
            let ev = world.events(&run_id);
            (ev.len() == LINES + 3).then_some(ev)
        });
    let (missing, defects) = check_run_events(&run_id, &events, Some(LINES + 3), Some(LINES));
    assert!(defects.is_empty() && missing == 0, "{defects:#?}");
    assert_eq!(
        world.hub().row("subagent_runs", &run_id).unwrap()["status"],
        "completed"
    );
    let runs = world.agent_executions().0;
    assert_eq!(
        runs.iter()
            .filter(|l| l["argv"].to_string().contains("lost-answers"))
            .count(),
        1,
        "the agent ran once"
    );
}

/// Regression (soak): a recovery killed between its writes left a run
/// `failed` without its `run_failed` event, and the next recovery skipped
/// the run because it was no longer `running`; the terminal event now
/// goes first and a later recovery adds a missing one, never a second.
#[test]
fn recovery_finishes_what_a_killed_recovery_started() {
    let mut world = World::new(Vec::new());
    world.kill_gateway();
    let hub = world.hub();
    // Two interrupted runs: one already failed by a recovery that died
    // before queuing its event, one whose event landed but not the updates.
    let mut cases = Vec::new();
    for (run_status, events) in [
        ("failed", vec!["run_started", "run_progress"]),
        ("running", vec!["run_started", "run_failed"]),
    ] {
        let sid = world.subagent("claude_code_gateway", json!({}), "x");
        let restart = json!({"reason": RESTART_MESSAGE, "source": "gateway_restart"});
        let events: Vec<(&str, Value)> = events.iter().map(|k| (*k, restart.clone())).collect();
        let run_id = running_run_with_events(&world, &sid, &events);
        if run_status == "failed" {
            hub.patch(
                "subagent_runs",
                &format!("id=eq.{run_id}"),
                json!({"status": "failed", "error": RESTART_MESSAGE}),
            );
        }
        let job = running_job(&world, &sid, &run_id);
        cases.push((job, run_id));
    }
    world.start_gateway();
    for (job, run_id) in &cases {
        let row = world.hub().wait_job_terminal(job, Duration::from_secs(60));
        assert_eq!(row["error"], RESTART_MESSAGE, "{row}");
        let events = world
            .hub()
            .wait_for("terminal event", Duration::from_secs(30), || {
                let ev = world.events(run_id);
                (ev.len() >= 2 && ev.last().unwrap()["event_type"] == "run_failed").then_some(ev)
            });
        let (missing, defects) = check_run_events(run_id, &events, None, None);
        assert!(defects.is_empty() && missing == 0, "{defects:#?}");
        let types: Vec<&str> = events
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types.iter().filter(|t| **t == "run_failed").count(),
            1,
            "{types:?}"
        );
        let run = world.hub().row("subagent_runs", run_id).unwrap();
        assert_eq!(run["status"], "failed", "{run}");
        let sid = run["subagent_id"].as_str().unwrap();
        let sub = world
            .hub()
            .wait_for("subagent failed", Duration::from_secs(30), || {
                world
                    .hub()
                    .row("subagents", sid)
                    .filter(|s| s["status"] == "failed")
            });
        assert_eq!(sub["error"], RESTART_MESSAGE, "{sub}");
    }
}

/// Inserts a run row `running` for `sid` (marked running, this run
/// current) with `events` at sequences 0.., as a previous gateway process
/// left it. Returns the run id.
fn running_run_with_events(world: &World, sid: &str, events: &[(&str, Value)]) -> String {
    let hub = world.hub();
    let gw = world.gw();
    let run_id = new_id();
    hub.patch(
        "subagents",
        &format!("id=eq.{sid}"),
        json!({"status": "running", "metadata": {"current_run_id": run_id}}),
    );
    hub.insert(
        "subagent_runs",
        json!({"id": run_id, "subagent_id": sid, "team_id": gw.team_id,
               "gateway_id": gw.gateway_id, "run_sequence": 1, "status": "running",
               "prompt": "x", "metadata": {"runner": "gateway", "run_id": run_id}}),
    );
    for (seq, (kind, payload)) in events.iter().enumerate() {
        hub.insert(
            "subagent_run_events",
            json!({"run_id": run_id, "subagent_id": sid, "team_id": gw.team_id,
                   "gateway_id": gw.gateway_id, "sequence": seq, "event_type": kind,
                   "payload": payload}),
        );
    }
    run_id
}

/// A `subagent_run` job row for the run, `running` as an earlier process
/// claimed it; returns the job id.
fn running_job(world: &World, sid: &str, run_id: &str) -> String {
    let gw = world.gw();
    world.hub().insert(
        "gateway_jobs",
        json!({"team_id": gw.team_id, "gateway_id": gw.gateway_id, "job_type": "subagent_run",
               "status": "running", "payload": {"subagent_id": sid, "run_id": run_id}}),
    )["id"]
        .as_str()
        .expect("job id")
        .to_string()
}

/// Sequences and types of a run's events once it has `n` of them.
fn wait_events(world: &World, run_id: &str, n: usize) -> (Vec<i64>, Vec<String>) {
    let events = world
        .hub()
        .wait_for(&format!("{n} events"), Duration::from_secs(30), || {
            let ev = world.events(run_id);
            (ev.len() >= n).then_some(ev)
        });
    // Nothing else arrives late (a duplicate would be a unique violation,
    // so only more rows could show up).
    std::thread::sleep(Duration::from_millis(500));
    let events = if world.events(run_id).len() == events.len() {
        events
    } else {
        world.events(run_id)
    };
    (
        events
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect(),
        events
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// Lost answers that make one GET fail: the gateway's client retries a
/// read 3 times on a network error before it reports one.
const READ_FAILS: usize = 4;

/// A `subagent_run` job ended `completed` with its run cancelled for
/// `reason`.
fn assert_run_job_cancelled(world: &World, job: &str, reason: &str) {
    let row = world.hub().wait_job_terminal(job, Duration::from_secs(60));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["status"], "cancelled", "{row}");
    assert_eq!(row["result"]["error"], reason, "{row}");
}

fn wait_subagent_status(world: &World, sid: &str, status: &str) {
    world.hub().wait_for(
        &format!("subagent {status}"),
        Duration::from_secs(30),
        || {
            world
                .hub()
                .row("subagents", sid)
                .filter(|s| s["status"] == status)
        },
    );
}

/// Regression (soak): an out-of-band event (a cancel job's, a cancel
/// before start's) was written at `max(sequence) + 1` read from the hub, or
/// at 0 when that read failed; sequence 0 is taken, the 23505 counts as
/// delivered and the event was silently lost. The read is now retried while
/// the hub gives no answer (and skipped when this process has the run's
/// counter), so the events land dense, after the run's earlier ones.
#[test]
fn out_of_band_events_survive_a_failed_sequence_read() {
    let rules = Arc::new(ProxyRules::default());
    let mut world = World::build(Vec::new(), Some(Arc::clone(&rules)));
    let sid = world.subagent("claude_code_gateway", json!({}), "x");
    // A run an earlier process started: three events at the hub.
    let run_id = running_run_with_events(
        &world,
        &sid,
        &[
            ("run_started", json!({"runner": "gateway"})),
            ("run_progress", json!({"attempt": 1})),
            ("message", json!({"text": "hi"})),
        ],
    );
    // The cancel job's read of the run's last sequence fails: the client
    // retries a GET 3 times itself, so READ_FAILS lost answers make one read
    // fail, and one more is lost on the gateway's own retry.
    rules.drop_answers("GET /rest/v1/subagent_run_events?", &run_id, READ_FAILS + 1);
    let cancel = world.job(
        "subagent_cancel",
        json!({"subagent_id": sid, "reason": "Stop it"}),
    );
    let row = world
        .hub()
        .wait_job_terminal(&cancel, Duration::from_secs(60));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["cancel_result"], "accepted", "{row}");
    assert_eq!(row["result"]["run_id"], run_id.as_str(), "{row}");
    assert_eq!(row["result"]["cancelled_active_run"], false, "{row}");
    let (seqs, types) = wait_events(&world, &run_id, 4);
    assert_eq!(seqs, vec![0, 1, 2, 3], "{types:?}");
    assert_eq!(
        rules.dropped.load(Ordering::SeqCst),
        READ_FAILS + 1,
        "reads dropped"
    );
    assert_eq!(types[3], "cancellation_requested", "{types:?}");
    let ev = world.events(&run_id);
    assert_eq!(ev[3]["payload"]["source"], "gateway_cancel_job", "{ev:?}");

    // A new process (no counter for the run) runs the cancelled run's job:
    // cancelled before start, its three events after the cancel's, though
    // its sequence read is dropped too.
    world.kill_gateway();
    rules.drop_answers("GET /rest/v1/subagent_run_events?", &run_id, READ_FAILS + 1);
    world.start_gateway();
    let job = world.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    assert_run_job_cancelled(&world, &job, "Stop it");
    assert_eq!(
        rules.dropped.load(Ordering::SeqCst),
        2 * (READ_FAILS + 1),
        "reads dropped"
    );
    let (seqs, types) = wait_events(&world, &run_id, 7);
    assert_eq!(seqs, (0..7).collect::<Vec<i64>>(), "{types:?}");
    assert_eq!(
        types[3..],
        [
            "cancellation_requested",
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ],
        "{types:?}"
    );
    let (missing, defects) = check_run_events(&run_id, &world.events(&run_id), None, None);
    assert!(defects.is_empty() && missing == 0, "{defects:#?}");
    assert_eq!(
        world.hub().row("subagent_runs", &run_id).unwrap()["status"],
        "cancelled"
    );
    wait_subagent_status(&world, &sid, "cancelled");
}

/// Regression (soak, 1 in 1000 jobs): a `subagent_cancel` whose hub read or
/// write got no answer (hub down or restarting) was failed and the run went
/// on. Its reads and writes are now retried until the hub answers; here
/// its first read fails and its writes lose their answers (they were
/// applied), and the cancel still goes through once.
#[test]
fn cancel_whose_hub_answers_are_lost_still_goes_through() {
    let rules = Arc::new(ProxyRules::default());
    let world = World::build(
        vec![("FAKE_AGENT_LINE_DELAY_MS".to_string(), "50".to_string())],
        Some(Arc::clone(&rules)),
    );
    let transcripts = tempfile::tempdir().unwrap();
    let stream = transcripts.path().join("cancel-lost.jsonl");
    // ~30 s of streaming: the cancel lands long before the end.
    write_stream_transcript(&stream, 600);
    let sid = world.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        &format!("cancel lost answers [[fake:{}]]", stream.display()),
    );
    let run_id = new_id();
    let job = world.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    world
        .hub()
        .wait_for("live events", Duration::from_secs(60), || {
            (world.events(&run_id).len() >= 10).then_some(())
        });
    // The cancel's first read fails (READ_FAILS lost answers), its CAS on
    // the subagent and its run-metadata write are applied but unanswered.
    rules.drop_answers("GET /rest/v1/subagents?", "", READ_FAILS);
    rules.drop_answers("PATCH /rest/v1/subagents?", "", 2);
    rules.drop_answers("PATCH /rest/v1/subagent_runs?", "", 1);
    let cancel = world.job(
        "subagent_cancel",
        json!({"subagent_id": sid, "run_id": run_id, "reason": "User stopped the task"}),
    );
    let row = world
        .hub()
        .wait_job_terminal(&cancel, Duration::from_secs(60));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["cancel_result"], "accepted", "{row}");
    assert_eq!(row["result"]["cancelled_active_run"], true, "{row}");
    assert_eq!(
        rules.dropped.load(Ordering::SeqCst),
        READ_FAILS + 3,
        "answers dropped"
    );
    assert_run_job_cancelled(&world, &job, "User stopped the task");
    let events = world
        .hub()
        .wait_for("terminal event", Duration::from_secs(30), || {
            let ev = world.events(&run_id);
            ev.iter()
                .any(|e| TERMINAL_EVENTS.contains(&e["event_type"].as_str().unwrap_or("")))
                .then_some(ev)
        });
    let (missing, defects) = check_run_events(&run_id, &events, None, Some(600));
    assert!(defects.is_empty() && missing == 0, "{defects:#?}");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    // The agent may still stream a line between the request and its stop.
    assert_eq!(
        types[types.len() - 2..],
        ["cancellation_acknowledged", "run_cancelled"],
        "{types:?}"
    );
    let requested: Vec<usize> = (0..types.len())
        .filter(|i| types[*i] == "cancellation_requested")
        .collect();
    assert_eq!(requested.len(), 1, "requested once: {types:?}");
    let run = world.hub().row("subagent_runs", &run_id).unwrap();
    assert_eq!(run["status"], "cancelled", "{run}");
    wait_subagent_status(&world, &sid, "cancelled");
}

/// Regression (soak): a gateway killed after queueing a run's terminal
/// event but before the run-row update landed left, after recovery, a run
/// `failed` whose last event is `run_completed`. Recovery now finalizes the
/// row (and the subagent) to the status of the terminal event, adds no
/// event; and a subagent left `running` on a run whose row did land takes
/// that run's outcome (a completed run's output, no restart error).
#[test]
fn recovery_matches_rows_to_a_terminal_event_that_landed() {
    let mut world = World::new(Vec::new());
    world.kill_gateway();
    let hub = world.hub();
    let started = json!({"runner": "gateway"});
    // (last event, its payload, expected status, expected error)
    let cases = [
        (
            "run_completed",
            json!({"duration_ms": 5}),
            "completed",
            None,
        ),
        (
            "run_failed",
            json!({"reason": "Claude Code failed: boom"}),
            "failed",
            Some("Claude Code failed: boom"),
        ),
        (
            "run_cancelled",
            json!({"reason": "User stopped the task", "source": "gateway"}),
            "cancelled",
            Some("User stopped the task"),
        ),
    ];
    let mut runs = Vec::new();
    for (kind, payload, status, error) in cases {
        let sid = world.subagent("claude_code_gateway", json!({}), "x");
        let run_id = running_run_with_events(
            &world,
            &sid,
            &[("run_started", started.clone()), (kind, payload)],
        );
        let job = running_job(&world, &sid, &run_id);
        runs.push((job, sid, run_id, status, error));
    }
    // The run row's completion landed, the subagent's did not.
    let landed_sid = world.subagent("claude_code_gateway", json!({}), "x");
    let landed_run = running_run_with_events(
        &world,
        &landed_sid,
        &[
            ("run_started", started.clone()),
            ("run_completed", json!({})),
        ],
    );
    let output = json!({"schema_version": 1, "content": "Done.", "content_type": "text"});
    hub.patch(
        "subagent_runs",
        &format!("id=eq.{landed_run}"),
        json!({"status": "completed", "output": output}),
    );
    let landed_job = running_job(&world, &landed_sid, &landed_run);
    world.start_gateway();

    for (job, sid, run_id, status, error) in &runs {
        let row = world.hub().wait_job_terminal(job, Duration::from_secs(60));
        assert_eq!(row["error"], RESTART_MESSAGE, "{row}");
        let run = world
            .hub()
            .wait_for("run finalized", Duration::from_secs(30), || {
                world
                    .hub()
                    .row("subagent_runs", run_id)
                    .filter(|r| r["status"] != "running")
            });
        assert_eq!(run["status"], *status, "{run}");
        assert_eq!(run["error"].as_str(), *error, "{run}");
        assert_eq!(run["metadata"]["recovered_after_restart"], true, "{run}");
        assert!(run["completed_at"].is_string(), "{run}");
        let sub = world
            .hub()
            .wait_for("subagent finalized", Duration::from_secs(30), || {
                world
                    .hub()
                    .row("subagents", sid)
                    .filter(|s| s["status"] != "running")
            });
        assert_eq!(sub["status"], *status, "{sub}");
        assert_eq!(sub["error"].as_str(), *error, "{sub}");
        // The events already ended with the terminal event: none added.
        std::thread::sleep(Duration::from_millis(300));
        let events = world.events(run_id);
        assert_eq!(events.len(), 2, "{events:?}");
        let (missing, defects) = check_run_events(run_id, &events, None, None);
        assert!(defects.is_empty() && missing == 0, "{defects:#?}");
    }

    let row = world
        .hub()
        .wait_job_terminal(&landed_job, Duration::from_secs(60));
    assert_eq!(row["error"], RESTART_MESSAGE, "{row}");
    let sub = world
        .hub()
        .wait_for("subagent completed", Duration::from_secs(30), || {
            world
                .hub()
                .row("subagents", &landed_sid)
                .filter(|s| s["status"] != "running")
        });
    assert_eq!(sub["status"], "completed", "{sub}");
    assert_eq!(sub["error"], Value::Null, "{sub}");
    assert_eq!(sub["output"], output, "{sub}");
    assert_eq!(world.events(&landed_run).len(), 2);
}
