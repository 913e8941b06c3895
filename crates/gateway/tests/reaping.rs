//! Process reaping under load (issue 6, part 3): 100+ agent and shell
//! process trees stopped by `subagent_cancel`, run timeouts, `shell_exec`
//! timeouts and gateway SIGTERM shutdowns, on several gateways at once,
//! against a real hub with the real gateway binary.
//!
//! Every tree is hostile: the fake agent ignores SIGTERM and spawns two
//! grandchildren that inherit that (on some gateways the grandchildren
//! also leave the process group and session with `setsid`, as a
//! daemonizing MCP server would); the shell command traps TERM and starts
//! background children, one of them in its own session. Every PID of every
//! tree is recorded (the fake agent's log, the command's own PID file, and
//! `/proc` descendants of each gateway sampled every 100 ms, all with
//! their start times) and must be gone within the grace period + 1 s after
//! the stop was reported. Prints: trees, pids tracked, survivors, max
//! time-to-reap.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use panorama_testkit::procs::{self, Stat};
use panorama_testkit::Hub;
use serde_json::json;
use support::*;

/// SIGTERM → SIGKILL grace of a cancel (and of agent runs at shutdown).
const CANCEL_GRACE: Duration = Duration::from_millis(5_000);
/// SIGTERM → SIGKILL grace of a run or `shell_exec` timeout.
const TIMEOUT_GRACE: Duration = Duration::from_millis(2_000);
const SLACK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Cancel,
    RunTimeout,
    ExecTimeout,
    Shutdown,
    ExecShutdown,
}

/// A tree whose stop was reported: its PIDs and its deadline.
struct Stopped {
    kind: Kind,
    label: String,
    pids: Vec<(i32, u64)>,
    reported: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct Outcome {
    kind: Kind,
    label: String,
    pids: usize,
    survivors: Vec<i32>,
    time_to_reap: Option<Duration>,
}

/// Samples the descendants of every registered gateway every 100 ms.
#[derive(Default)]
struct Sampler {
    /// Gateway `(pid, start)`s.
    roots: Mutex<Vec<(i32, u64)>>,
    /// `(pid, start) → ppid`, every descendant ever seen.
    seen: Mutex<HashMap<(i32, u64), i32>>,
    stop: AtomicBool,
}

impl Sampler {
    fn add_root(&self, pid: i32) {
        let start = procs::stat(pid).expect("gateway process").start;
        self.roots.lock().unwrap().push((pid, start));
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.sample();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sample(&self) {
        let roots = self.roots.lock().unwrap().clone();
        let table = procs::table();
        let mut found = Vec::new();
        // Only gateways still alive as themselves (PIDs are reused).
        let mut frontier: Vec<i32> = roots
            .iter()
            .filter(|(p, s)| table.iter().any(|t| t.pid == *p && t.start == *s))
            .map(|(p, _)| *p)
            .collect();
        while let Some(parent) = frontier.pop() {
            for p in &table {
                if p.ppid == parent
                    && p.state != 'Z'
                    && !found.iter().any(|f: &Stat| f.pid == p.pid)
                {
                    found.push(*p);
                    frontier.push(p.pid);
                }
            }
        }
        let mut seen = self.seen.lock().unwrap();
        for p in found {
            seen.insert((p.pid, p.start), p.ppid);
        }
    }

    /// `roots` and every sampled descendant of them (a child counts when
    /// it started after its parent: PIDs are reused).
    fn closure(&self, roots: &[(i32, u64)]) -> Vec<(i32, u64)> {
        self.sample();
        let seen = self.seen.lock().unwrap();
        let mut out: Vec<(i32, u64)> = roots.to_vec();
        let mut i = 0;
        while i < out.len() {
            let (parent, pstart) = out[i];
            for (&(pid, start), &ppid) in seen.iter() {
                if ppid == parent && start >= pstart && !out.contains(&(pid, start)) {
                    out.push((pid, start));
                }
            }
            i += 1;
        }
        out
    }
}

/// Watches stopped trees until they are gone or their deadline passes.
fn checker(rx: mpsc::Receiver<Stopped>, done: &AtomicBool, outcomes: &Mutex<Vec<Outcome>>) {
    let mut pending: Vec<Stopped> = Vec::new();
    loop {
        // `done` first: every report sent before it is then in the channel.
        let finished = done.load(Ordering::SeqCst);
        pending.extend(rx.try_iter());
        if finished && pending.is_empty() {
            return;
        }
        let now = Instant::now();
        pending.retain(|t| {
            let live: Vec<i32> = t
                .pids
                .iter()
                .filter(|(p, s)| procs::alive_since(*p, *s))
                .map(|(p, _)| *p)
                .collect();
            if live.is_empty() {
                outcomes.lock().unwrap().push(Outcome {
                    kind: t.kind,
                    label: t.label.clone(),
                    pids: t.pids.len(),
                    survivors: Vec::new(),
                    time_to_reap: Some(now.saturating_duration_since(t.reported)),
                });
                return false;
            }
            if now > t.deadline {
                for (p, s) in &t.pids {
                    procs::kill_if_same(*p, *s);
                }
                outcomes.lock().unwrap().push(Outcome {
                    kind: t.kind,
                    label: t.label.clone(),
                    pids: t.pids.len(),
                    survivors: live,
                    time_to_reap: None,
                });
                return false;
            }
            true
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Ctx<'a> {
    hub: &'a Hub,
    sampler: &'a Sampler,
    tx: mpsc::Sender<Stopped>,
    hold: String,
    /// `PANORAMA_GATEWAY_CONTAINMENT` of every gateway: `auto` (cgroups on
    /// a host that has them) or `off` (the tree-tag fallback).
    containment: &'static str,
}

impl Ctx<'_> {
    fn report(&self, kind: Kind, label: String, pids: Vec<(i32, u64)>, grace: Duration) {
        let reported = Instant::now();
        self.tx
            .send(Stopped {
                kind,
                label,
                pids,
                reported,
                deadline: reported + grace + SLACK,
            })
            .unwrap();
    }
}

/// Waits for the agent whose prompt carries `label` and its
/// `grandchildren`; returns their `(pid, start)`.
fn agent_tree(node: &Node, label: &str, grandchildren: usize) -> Vec<(i32, u64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = node.agent_log();
        let agent = log
            .iter()
            .find(|l| l["role"] == "agent" && l["argv"].to_string().contains(label))
            .and_then(|l| l["pid"].as_i64())
            .map(|p| p as i32);
        if let Some(agent) = agent {
            let kids: Vec<i32> = log
                .iter()
                .filter(|l| l["role"] == "grandchild" && l["ppid"].as_i64() == Some(agent as i64))
                .filter_map(|l| l["pid"].as_i64().map(|p| p as i32))
                .collect();
            if kids.len() >= grandchildren {
                let pids: Vec<(i32, u64)> = std::iter::once(agent)
                    .chain(kids)
                    .filter_map(procs::stat)
                    .filter(|p| p.state != 'Z')
                    .map(|p| (p.pid, p.start))
                    .collect();
                assert_eq!(
                    pids.len(),
                    grandchildren + 1,
                    "tree {label} is not fully alive before the stop"
                );
                return pids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent {label} did not start; log tail:\n{}",
            node.host.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A `shell_exec` command that traps TERM and leaves background children
/// (one in a subshell, one in its own session); it writes every PID to
/// `pid_file`.
fn hostile_command(pid_file: &std::path::Path) -> String {
    let f = pid_file.display();
    format!(
        "trap '' TERM; echo $$ >> '{f}'; sleep 300 & echo $! >> '{f}'; \
         (trap '' TERM; sleep 300; :) & echo $! >> '{f}'; \
         setsid sleep 300 & echo $! >> '{f}'; wait"
    )
}

/// Waits for the command's PID file to list 4 PIDs; returns them alive.
fn exec_tree(pid_file: &std::path::Path) -> Vec<(i32, u64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(pid_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= 4 {
            // Let the subshell start its sleep.
            std::thread::sleep(Duration::from_millis(100));
            return pids
                .into_iter()
                .filter_map(procs::stat)
                .filter(|p| p.state != 'Z')
                .map(|p| (p.pid, p.start))
                .collect();
        }
        assert!(Instant::now() < deadline, "shell command did not start");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn hostile_env(setsid: bool, containment: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("PANORAMA_GATEWAY_CONTAINMENT", containment),
        ("FAKE_AGENT_IGNORE_TERM", "1"),
        ("FAKE_AGENT_GRANDCHILDREN", "2"),
        (
            "FAKE_AGENT_GRANDCHILD_SETSID",
            if setsid { "1" } else { "0" },
        ),
        ("PANORAMA_GATEWAY_CONCURRENCY", "40"),
    ]
}

/// `n` runs, cancelled mid-run in waves of `wave`.
fn cancels(ctx: &Ctx, name: &str, setsid: bool, n: usize, wave: usize) {
    let mut node = Node::new(ctx.hub, name, false, &hostile_env(setsid, ctx.containment));
    ctx.sampler.add_root(node.start());
    let mut run_jobs = Vec::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<usize> = (i..(i + wave).min(n)).collect();
        i += batch.len();
        let mut started = Vec::new();
        for &k in &batch {
            let (subagent_type, _) = PROVIDERS[k % 3];
            let label = format!("{name}-tree-{k}");
            let sid = node.subagent(
                subagent_type,
                json!({}),
                &format!("{label} [[fake:{}]]", ctx.hold),
            );
            let run_id = new_id();
            let job = node.job(
                "subagent_run",
                json!({"subagent_id": sid, "run_id": run_id}),
            );
            started.push((label, sid, run_id, job));
        }
        let mut cancels = Vec::new();
        for (label, sid, run_id, job) in started {
            let pids = agent_tree(&node, &label, 2);
            let cancel = node.job(
                "subagent_cancel",
                json!({"subagent_id": sid, "run_id": run_id, "reason": "reaping test"}),
            );
            cancels.push((label, pids, cancel));
            run_jobs.push(job);
        }
        for (label, pids, cancel) in cancels {
            let row = node.wait_job(&cancel);
            let pids = ctx.sampler.closure(&pids);
            ctx.report(Kind::Cancel, label.clone(), pids, CANCEL_GRACE);
            assert_eq!(row["result"]["cancel_result"], "accepted", "{label}: {row}");
            assert_eq!(
                row["result"]["cancelled_active_run"], true,
                "{label}: {row}"
            );
        }
    }
    for job in run_jobs {
        let row = node.wait_job(&job);
        assert_eq!(row["result"]["status"], "cancelled", "{row}");
    }
    node.terminate();
}

/// `agents` run timeouts and `execs` `shell_exec` timeouts.
fn timeouts(ctx: &Ctx, name: &str, agents: usize, execs: usize) {
    let mut node = Node::new(ctx.hub, name, true, &hostile_env(true, ctx.containment));
    ctx.sampler.add_root(node.start());
    let resource = node.resource();
    let mut pending = Vec::new();
    for k in 0..agents {
        let (subagent_type, _) = PROVIDERS[k % 3];
        let label = format!("{name}-tree-{k}");
        let sid = node.subagent(
            subagent_type,
            json!({"timeout_ms": 2500}),
            &format!("{label} [[fake:{}]]", ctx.hold),
        );
        let job = node.job("subagent_run", json!({"subagent_id": sid}));
        pending.push((Kind::RunTimeout, label, job, None));
    }
    for k in 0..execs {
        let label = format!("{name}-exec-{k}");
        let pid_file = node.file(&format!("{label}.pids"));
        let job = node.job(
            "shell_exec",
            json!({"resource_id": resource, "command": hostile_command(&pid_file), "timeout_ms": 2500}),
        );
        pending.push((Kind::ExecTimeout, label, job, Some(pid_file)));
    }
    let mut trees = Vec::new();
    for (kind, label, job, pid_file) in pending {
        let pids = match &pid_file {
            Some(f) => exec_tree(f),
            None => agent_tree(&node, &label, 2),
        };
        trees.push((kind, label, job, pids));
    }
    for (kind, label, job, pids) in trees {
        let row = node.wait_job(&job);
        let pids = ctx.sampler.closure(&pids);
        ctx.report(kind, label.clone(), pids, TIMEOUT_GRACE);
        match kind {
            Kind::ExecTimeout => {
                assert_eq!(row["status"], "completed", "{label}: {row}");
                assert_eq!(row["result"]["timed_out"], true, "{label}: {row}");
            }
            _ => {
                assert_eq!(row["result"]["status"], "failed", "{label}: {row}");
                assert!(
                    row.to_string().contains("timed out"),
                    "{label} did not time out: {row}"
                );
            }
        }
    }
    node.terminate();
}

/// `rounds` gateway starts, each stopped by SIGTERM with an agent run (and,
/// with `exec`, a `shell_exec`) in flight.
fn shutdowns(ctx: &Ctx, name: &str, setsid: bool, exec: bool, rounds: usize) {
    let mut env = hostile_env(setsid, ctx.containment);
    // A running shell_exec holds the shutdown for the whole grace.
    env.push(("PANORAMA_GATEWAY_SHUTDOWN_GRACE_MS", "1500"));
    let mut node = Node::new(ctx.hub, name, exec, &env);
    for round in 0..rounds {
        ctx.sampler.add_root(node.start());
        let (subagent_type, _) = PROVIDERS[round % 3];
        let label = format!("{name}-round-{round}");
        let sid = node.subagent(
            subagent_type,
            json!({}),
            &format!("{label} [[fake:{}]]", ctx.hold),
        );
        let run_job = node.job("subagent_run", json!({"subagent_id": sid}));
        let exec_job = exec.then(|| {
            let pid_file = node.file(&format!("{label}.pids"));
            let resource = node.resource();
            let job = node.job(
                "shell_exec",
                json!({"resource_id": resource, "command": hostile_command(&pid_file), "timeout_ms": 120000}),
            );
            (job, pid_file)
        });
        let agent = agent_tree(&node, &label, 2);
        let exec_tree = exec_job.as_ref().map(|(_, f)| exec_tree(f));
        let agent = ctx.sampler.closure(&agent);
        let exec_tree = exec_tree.map(|t| ctx.sampler.closure(&t));
        node.terminate();
        // Reported: the gateway has exited (after reporting every job).
        ctx.report(Kind::Shutdown, label.clone(), agent, Duration::ZERO);
        if let Some(t) = exec_tree {
            ctx.report(
                Kind::ExecShutdown,
                format!("{label}-exec"),
                t,
                Duration::ZERO,
            );
        }
        // Cancelled by the run itself, or (when finalizing outlasted the
        // residual wait) as a residual job.
        let row = node.wait_job(&run_job);
        assert!(
            row["result"]["status"] == "cancelled" || row["status"] == "cancelled",
            "{label}: {row}"
        );
        if let Some((job, _)) = exec_job {
            let row = node.wait_job(&job);
            assert_eq!(row["status"], "cancelled", "{label} exec: {row}");
            assert_eq!(row["result"]["cancelled"], true, "{label} exec: {row}");
        }
    }
}

#[test]
fn hundred_hostile_trees_are_reaped_after_cancels_timeouts_and_shutdowns() {
    suite("auto");
}

/// The same trees with containment forced off: the tree-tag fallback
/// still reaps all of them (none clears its environment).
#[test]
fn hundred_hostile_trees_are_reaped_with_containment_off() {
    suite("off");
}

/// One suite at a time: two in parallel (the test harness's default)
/// overload the host so much that agents time out before they are seen.
static ONE_SUITE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn suite(containment: &'static str) {
    let _one = ONE_SUITE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let hub = Hub::start();
    let transcripts = tempfile::tempdir().unwrap();
    let hold = hold_transcript(transcripts.path()).display().to_string();
    let sampler = Sampler::default();
    let outcomes = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let ctx = Ctx {
        hub: &hub,
        sampler: &sampler,
        tx,
        hold,
        containment,
    };
    std::thread::scope(|s| {
        s.spawn(|| sampler.run());
        let check = s.spawn(|| checker(rx, &done, &outcomes));
        let ctx = &ctx;
        let workers = vec![
            s.spawn(move || cancels(ctx, "cancel-group", false, 30, 10)),
            s.spawn(move || cancels(ctx, "cancel-setsid", true, 30, 10)),
            s.spawn(move || timeouts(ctx, "timeout", 20, 5)),
            s.spawn(move || shutdowns(ctx, "shutdown-a", false, false, 5)),
            s.spawn(move || shutdowns(ctx, "shutdown-b", true, false, 5)),
            s.spawn(move || shutdowns(ctx, "shutdown-exec", true, true, 5)),
        ];
        let mut panics = Vec::new();
        for w in workers {
            if let Err(e) = w.join() {
                panics.push(e);
            }
        }
        done.store(true, Ordering::SeqCst);
        check.join().unwrap();
        sampler.stop.store(true, Ordering::Relaxed);
        if let Some(e) = panics.pop() {
            std::panic::resume_unwind(e);
        }
    });
    // Every process ever seen under a gateway is gone (all gateways exited).
    std::thread::sleep(SLACK);
    let seen: Vec<(i32, u64)> = sampler.seen.lock().unwrap().keys().copied().collect();
    let leaked: Vec<(i32, u64)> = seen
        .iter()
        .copied()
        .filter(|(p, s)| procs::alive_since(*p, *s))
        .collect();
    for (p, s) in &leaked {
        procs::kill_if_same(*p, *s);
    }

    let outcomes = outcomes.into_inner().unwrap();
    let mut by_kind: BTreeMap<Kind, (usize, usize, usize, Duration)> = BTreeMap::new();
    for o in &outcomes {
        let e = by_kind.entry(o.kind).or_default();
        e.0 += 1;
        e.1 += o.pids;
        e.2 += o.survivors.len();
        e.3 = e.3.max(o.time_to_reap.unwrap_or_default());
    }
    let pids: usize = outcomes.iter().map(|o| o.pids).sum();
    let survivors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.survivors.is_empty())
        .collect();
    let max_ttr = outcomes
        .iter()
        .filter_map(|o| o.time_to_reap)
        .max()
        .unwrap_or_default();
    eprintln!(
        "reaping summary, containment={containment} ({:.1} s):",
        started.elapsed().as_secs_f64()
    );
    for (kind, (trees, pids, surv, ttr)) in &by_kind {
        eprintln!(
            "  {kind:?}: trees={trees} pids={pids} survivors={surv} max_time_to_reap={} ms",
            ttr.as_millis()
        );
    }
    eprintln!(
        "  total: trees={} pids tracked={} (sampled under gateways: {}) survivors={} \
         leaked after all gateways exited={} max_time_to_reap={} ms",
        outcomes.len(),
        pids,
        seen.len(),
        survivors.iter().map(|o| o.survivors.len()).sum::<usize>(),
        leaked.len(),
        max_ttr.as_millis()
    );
    assert!(outcomes.len() >= 100, "only {} trees", outcomes.len());
    assert!(
        survivors.is_empty(),
        "survivors past grace + 1 s: {:?}",
        survivors
            .iter()
            .map(|o| (o.kind, &o.label, &o.survivors))
            .collect::<Vec<_>>()
    );
    assert!(leaked.is_empty(), "processes left behind: {leaked:?}");
}
