//! `panorama-bench`: starts a hub, pairs our gateway and the reference Node
//! gateway (`@panorama-ai/gateway`, installed with npm into a temp dir) to
//! it, runs the P1–P6 workloads of issue 7 and prints one table (also
//! written to `target/bench/last.json`). `--backend postgres --replicas N`
//! runs the hub on a throwaway PostgreSQL cluster with N replicas;
//! `--matrix` runs the chosen scenarios on SQLite, PostgreSQL with one
//! replica and with three, and prints one table. Loopback traffic only;
//! every loop is bounded in count and time.

mod deploy;
mod gateway;
mod hub;
mod peer;
mod phx;
mod procs;
mod report;
mod scenarios;
mod shim;
mod sim;
mod stats;
mod terminal;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use deploy::{Backend, Setup};
use gateway::{Flavor, Gateway};
use report::{Report, Target};
use scenarios::{Env, P3};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "panorama-bench",
    about = "Benchmarks panorama-gateway and panorama-hub against the reference Node gateway"
)]
struct Args {
    /// Small counts and short windows (a smoke run).
    #[arg(long)]
    quick: bool,
    /// Comma-separated scenarios to run (P1,P2,P3,P4,P5,P6,P8); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Do not install or run the reference Node gateway.
    #[arg(long)]
    no_peer: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/last.json")]
    json: PathBuf,
    /// The hub's database: sqlite (one hub, the default) or postgres (a
    /// throwaway PostgreSQL cluster the bench starts).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Hub replicas on the one PostgreSQL database (P1–P5 reach them
    /// through a round-robin proxy, P6's simulated gateways directly).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Run the scenarios on SQLite, PostgreSQL ×1 and PostgreSQL ×3 in one
    /// run and print one table with the ratios (our gateway only).
    #[arg(long)]
    matrix: bool,
    /// P6's ramp (connected simulated gateways per step), e.g.
    /// 10000,20000,30000; default 1,000 → 10,000 (→ 30,000 with several
    /// replicas).
    #[arg(long, value_delimiter = ',')]
    p6_steps: Vec<usize>,
    /// PostgreSQL's synchronous_commit (on: every commit waits for its WAL
    /// flush; off, the default: the durability class of the hub's SQLite).
    #[arg(long)]
    pg_synchronous_commit: bool,
}

/// P6's default ramp on one hub process: its sockets stay under the
/// 20,000 open files a process may have on the benchmark machine.
const P6_STEPS: [usize; 4] = [1000, 2500, 5000, 10_000];
/// With several replicas: the goal of 30,000 across three.
const P6_STEPS_REPLICATED: [usize; 5] = [1000, 5000, 10_000, 20_000, 30_000];

struct Counts {
    p1_jobs: usize,
    p1_budget: Duration,
    floor: usize,
    p2_jobs: usize,
    p4_window: Duration,
    p5_runs: usize,
    p6_steps: Vec<usize>,
    p6_final_jobs: usize,
    p6_step_jobs: usize,
    p8_stream: usize,
    p8_session: usize,
}

impl Counts {
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                p1_jobs: 50,
                p1_budget: Duration::from_secs(60),
                floor: 100,
                p2_jobs: 50,
                p4_window: Duration::from_secs(10),
                p5_runs: 5,
                p6_steps: vec![100, 300],
                p6_final_jobs: 30,
                p6_step_jobs: 10,
                p8_stream: 100,
                p8_session: 10,
            }
        } else {
            Counts {
                p1_jobs: 1000,
                p1_budget: Duration::from_secs(600),
                floor: 1000,
                p2_jobs: 500,
                p4_window: Duration::from_secs(60),
                p5_runs: 20,
                p6_steps: P6_STEPS.to_vec(),
                p6_final_jobs: 300,
                p6_step_jobs: 50,
                p8_stream: 1000,
                p8_session: 100,
            }
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__agent-shim") {
        std::process::exit(shim::run(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some("__sims") {
        std::process::exit(sim::worker_main(&argv[2..]));
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("panorama-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

/// target/release next to this binary (target/release/panorama-bench).
fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .ok_or_else(|| anyhow!("no exe dir"))?
        .to_path_buf())
}

fn locate_binaries(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let names = ["panorama-hub", "panorama-gateway", "panorama-fake-agent"];
    if names.iter().any(|n| !dir.join(n).exists()) {
        eprintln!(
            "[bench] release binaries missing in {}: building them",
            dir.display()
        );
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "-p",
                    "panorama-hub",
                    "-p",
                    "panorama-gateway",
                    "-p",
                    "panorama-providers",
                    "--bins",
                ])
                .status()
                .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release failed");
        }
    }
    let [a, b, c] = names.map(|n| dir.join(n));
    Ok((a, b, c))
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = mem
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .unwrap_or("")
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total": mem_total.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        "kernel": kernel.trim(),
        "loadavg_at_start": load.trim(),
    })
}

/// What every setup's scenarios share.
struct Ctx {
    args: Args,
    counts: Counts,
    hub_bin: PathBuf,
    fake_agent: PathBuf,
    work: tempfile::TempDir,
    /// `claude` for diagnostics: a symlink to the fake agent.
    claude: PathBuf,
    ours: Flavor,
    peer: Option<Flavor>,
    /// The bench's PostgreSQL cluster, when a setup needs it.
    cluster: Option<panorama_testkit::postgres::Cluster>,
}

impl Ctx {
    fn want(&self, p: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|o| o.eq_ignore_ascii_case(p))
    }

    fn p6_steps(&self, setup: Setup) -> Vec<usize> {
        if !self.args.p6_steps.is_empty() {
            self.args.p6_steps.clone()
        } else if setup.replicas > 1 && !self.args.quick {
            P6_STEPS_REPLICATED.to_vec()
        } else {
            self.counts.p6_steps.clone()
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let setups = if args.matrix {
        Setup::matrix()
    } else {
        vec![Setup::parse(&args.backend, args.replicas)?]
    };
    let nofile = procs::raise_nofile(65_536);
    let dir = release_dir()?;
    let (hub_bin, gw_bin, fake_agent) = locate_binaries(&dir)?;
    let machine = machine();
    eprintln!("[bench] machine: {machine}; open-file limit {nofile}");
    let mut general = Report::default();
    let started = Instant::now();

    let work = tempfile::tempdir()?;
    let claude = work.path().join("claude");
    std::os::unix::fs::symlink(&fake_agent, &claude)?;
    let mut ctx = Ctx {
        counts: Counts::new(args.quick),
        args,
        hub_bin,
        fake_agent,
        work,
        claude,
        ours: Flavor::Ours { bin: gw_bin },
        peer: None,
        cluster: None,
    };

    let needs_gateways = ["P1", "P2", "P3", "P4", "P5", "P8"]
        .iter()
        .any(|p| ctx.want(p));
    let peer = if ctx.args.no_peer || ctx.args.matrix || !needs_gateways {
        if ctx.args.no_peer || ctx.args.matrix {
            general.note("peer: not run (--no-peer or --matrix)");
        }
        None
    } else {
        match tokio::task::spawn_blocking(peer::install).await? {
            Ok(p) => {
                general.note(format!(
                    "peer: {} on Node {}",
                    peer::PEER_PACKAGE,
                    p.node_version
                ));
                Some(p)
            }
            Err(e) => {
                general.note(format!(
                    "peer: could not be installed ({e:#}); reporting our figures alone"
                ));
                None
            }
        }
    };
    ctx.peer = peer.as_ref().map(|p| p.flavor.clone());
    if setups.iter().any(|s| s.backend == Backend::Postgres) {
        let sync = ctx.args.pg_synchronous_commit;
        eprintln!("[bench] starting a throwaway PostgreSQL cluster");
        let cluster = tokio::task::spawn_blocking(move || deploy::start_cluster(sync)).await??;
        general.note(format!(
            "PostgreSQL: throwaway cluster on 127.0.0.1:{}, {}",
            cluster.port,
            deploy::pg_settings(sync)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        ctx.cluster = Some(cluster);
    }

    let mut reports = Vec::new();
    for &setup in &setups {
        eprintln!("[bench] === {} ===", setup.label());
        let mut report = Report::default();
        report.note(format!(
            "setup: {}{}",
            setup.label(),
            if setup.replicas > 1 {
                " (P1–P5 through a round-robin proxy; P6 sims connect to their replica directly)"
            } else {
                ""
            }
        ));
        run_setup(&ctx, setup, &mut report).await?;
        reports.push((setup, report));
    }

    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let table = if let [(_, report)] = reports.as_slice() {
        report.table()
    } else {
        let columns: Vec<(String, &Report)> = reports.iter().map(|(s, r)| (s.label(), r)).collect();
        report::matrix_table(&columns)
    };
    println!("\n{table}");
    for n in &general.notes {
        println!("- {n}");
    }
    for (setup, report) in &reports {
        for n in &report.notes {
            println!("- [{}] {n}", setup.label());
        }
    }
    println!(
        "- machine: {machine}; loadavg at end {}; run took {:.0} s",
        load_end.trim(),
        started.elapsed().as_secs_f64()
    );
    let doc = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": ctx.args.quick,
        "machine": machine,
        "loadavg_at_end": load_end.trim(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "notes": general.notes,
        "setups": reports.iter().map(|(s, r)| json!({
            "setup": s.label(),
            "rows": r.rows,
            "notes": r.notes,
        })).collect::<Vec<_>>(),
        "table_markdown": table,
    });
    if let Some(parent) = ctx.args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&ctx.args.json, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("[bench] wrote {}", ctx.args.json.display());
    drop(peer);
    Ok(())
}

/// The largest capabilities object a gateway of `hub` reported (the
/// gateways of P1–P5 have stopped by now: their rows are offline, and
/// still carry what they heartbeated).
async fn gateway_capabilities(hub: &hub::Hub) -> Option<serde_json::Value> {
    let rows = hub
        .select("team_gateways", "select=capabilities&limit=100")
        .await
        .ok()?;
    rows.into_iter()
        .map(|mut r| r["capabilities"].take())
        .filter(|c| c.is_object())
        .max_by_key(|c| c.to_string().len())
}

/// The chosen scenarios on one setup's hubs (fresh ones for P1–P5 and
/// for P6), figures into `report`.
async fn run_setup(ctx: &Ctx, setup: Setup, report: &mut Report) -> Result<()> {
    let counts = &ctx.counts;
    let want = |p: &str| ctx.want(p);
    let ours = &ctx.ours;
    let peer_flavor = ctx.peer.clone();
    let needs_gateways = ["P1", "P2", "P3", "P4", "P5", "P8"].iter().any(|p| want(p));
    let mut caps = json!({"schema_version": "v1"});

    if needs_gateways {
        let deployment = deploy::Deployment::start(&ctx.hub_bin, setup, ctx.cluster.as_ref())?;
        let hub: &hub::Hub = &deployment.front;
        let env = Env {
            hub,
            quick: ctx.args.quick,
            claude: ctx.claude.clone(),
            fake_agent: ctx.fake_agent.clone(),
            self_exe: std::env::current_exe()?,
            work: ctx.work.path().to_path_buf(),
        };
        // Runs `f` for ours and the peer; a peer failure is noted, not fatal.
        macro_rules! both {
            ($name:expr, $f:ident => $body:expr) => {{
                eprintln!("[bench] {}: ours", $name);
                let o = {
                    let $f: &Flavor = ours;
                    $body.await
                };
                let p = match &peer_flavor {
                    Some(pf) => {
                        eprintln!("[bench] {}: peer", $name);
                        let $f: &Flavor = pf;
                        Some($body.await)
                    }
                    None => None,
                };
                (o, p)
            }};
        }
        fn peer_ok<T>(report: &mut Report, what: &str, p: Option<Result<T>>) -> Option<T> {
            match p {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    report.note(format!("peer {what} failed: {e:#}"));
                    None
                }
                None => None,
            }
        }

        if want("P1") {
            let floor = scenarios::floor(&env, counts.floor).await?;
            let fl = stats::summarize(&floor).ok_or_else(|| anyhow!("no floor samples"))?;
            let (o, p) = both!("P1", f => scenarios::p1(&env, f, counts.p1_jobs, counts.p1_budget));
            let p = peer_ok(report, "P1", p).and_then(|v| stats::summarize(&v));
            report.add(
                "P1",
                "floor p50 (WS push + PATCH)",
                "ms",
                Some(fl.p50),
                None,
                Target::None,
                &format!("n={}", fl.n),
            );
            match o.map(|v| stats::summarize(&v)) {
                Ok(Some(s)) => {
                    let note = format!(
                        "n={} ours{}",
                        s.n,
                        p.map(|p| format!(", n={} peer", p.n)).unwrap_or_default()
                    );
                    report.add(
                        "P1",
                        "dispatch p50 vs floor",
                        "ms",
                        Some(s.p50),
                        None,
                        Target::AtMostRef(5.0, fl.p50),
                        &note,
                    );
                    report.add(
                        "P1",
                        "dispatch p50 vs peer",
                        "ms",
                        Some(s.p50),
                        p.map(|p| p.p50),
                        Target::AtMostPeer(0.2),
                        "INSERT → running, listener clock",
                    );
                    report.add(
                        "P1",
                        "dispatch p99",
                        "ms",
                        Some(s.p99),
                        p.map(|p| p.p99),
                        Target::None,
                        "",
                    );
                }
                Ok(None) => report.skip("P1", "dispatch", "no samples"),
                Err(e) => report.skip("P1", "dispatch", &format!("{e:#}")),
            }
        }
        if want("P2") {
            let (o, p) = both!("P2", f => scenarios::p2(&env, f, counts.p2_jobs));
            let p = peer_ok(report, "P2", p);
            match o {
                Ok((tput, ok, failed)) => report.add(
                    "P2",
                    "throughput (diagnostic)",
                    "jobs/s",
                    Some(tput),
                    p.map(|p| p.0),
                    Target::AtLeastPeer(10.0),
                    &format!(
                        "{} jobs, {ok} completed, {failed} failed{}",
                        counts.p2_jobs,
                        p.map(|p| format!("; peer {} completed, {} failed", p.1, p.2))
                            .unwrap_or_default()
                    ),
                ),
                Err(e) => report.skip("P2", "throughput", &format!("{e:#}")),
            }
        }
        if want("P3") {
            let (o, p) = both!("P3", f => scenarios::p3(&env, f));
            let p = match peer_ok(report, "P3", p) {
                Some(P3::Done {
                    exit_to_terminal_ms,
                    lag,
                    events,
                    matched,
                    run_status,
                }) => {
                    report.note(format!(
                        "peer P3: {events} event rows, {matched} matched, run {run_status}"
                    ));
                    Some((exit_to_terminal_ms, lag))
                }
                Some(P3::Skipped(why)) => {
                    report.note(format!("peer P3 skipped: {why}"));
                    None
                }
                None => None,
            };
            match o {
                Ok(P3::Done {
                    exit_to_terminal_ms,
                    lag,
                    events,
                    matched,
                    run_status,
                }) => {
                    let note = format!("{events} event rows, {matched} matched, run {run_status}");
                    report.add(
                        "P3",
                        "agent exit → run terminal",
                        "ms",
                        Some(exit_to_terminal_ms),
                        p.map(|p| p.0),
                        Target::AtMostPeer(0.05),
                        &note,
                    );
                    report.add(
                        "P3",
                        "live lag p50",
                        "ms",
                        Some(lag.p50),
                        p.map(|p| p.1.p50),
                        Target::None,
                        "line written → event row seen",
                    );
                    report.add(
                        "P3",
                        "live lag p99",
                        "ms",
                        Some(lag.p99),
                        p.map(|p| p.1.p99),
                        Target::AtMost(250.0),
                        "",
                    );
                }
                Ok(P3::Skipped(why)) => {
                    report.skip("P3", "event persistence", &why);
                    if let Some(p) = p {
                        report.add(
                            "P3",
                            "agent exit → run terminal",
                            "ms",
                            None,
                            Some(p.0),
                            Target::None,
                            "peer only",
                        );
                        report.add(
                            "P3",
                            "live lag p99",
                            "ms",
                            None,
                            Some(p.1.p99),
                            Target::None,
                            "peer only",
                        );
                    }
                }
                Err(e) => report.skip("P3", "event persistence", &format!("{e:#}")),
            }
        }
        if want("P4") || want("P5") {
            let (o, p) =
                both!("P4/P5", f => scenarios::p4_p5(&env, f, counts.p4_window, counts.p5_runs));
            let p = peer_ok(report, "P4/P5", p);
            match o {
                Ok(f) => {
                    let w = format!("{} s window", counts.p4_window.as_secs());
                    if want("P4") {
                        report.add(
                            "P4",
                            "idle RSS (mean)",
                            "MiB",
                            Some(f.rss_mib),
                            p.as_ref().map(|p| p.rss_mib),
                            Target::AtMostPeer(0.125),
                            &format!(
                                "{w}; max ours {:.1}{}",
                                f.rss_max_mib,
                                p.as_ref()
                                    .map(|p| format!(", peer {:.1}", p.rss_max_mib))
                                    .unwrap_or_default()
                            ),
                        );
                        report.add(
                            "P4",
                            "idle CPU",
                            "%",
                            Some(f.cpu_percent),
                            p.as_ref().map(|p| p.cpu_percent),
                            Target::Below(0.1),
                            &w,
                        );
                    }
                    if want("P5") {
                        report.add(
                            "P5",
                            "`status` wall",
                            "ms",
                            Some(f.status_ms),
                            p.as_ref().map(|p| p.status_ms),
                            Target::AtMostPeer(0.05),
                            &format!("median of {}", counts.p5_runs),
                        );
                        report.add(
                            "P5",
                            "`--help` wall",
                            "ms",
                            Some(f.help_ms),
                            p.as_ref().map(|p| p.help_ms),
                            Target::AtMostPeer(0.05),
                            &format!("median of {}", counts.p5_runs),
                        );
                    }
                }
                Err(e) => report.skip("P4/P5", "footprint and CLI", &format!("{e:#}")),
            }
        }
        if want("P8") {
            eprintln!("[bench] P8: ours (stream, then shell_session)");
            match terminal::p8(hub, ours, &ctx.claude, counts.p8_stream, counts.p8_session).await {
                Ok((stream, session)) => {
                    let (st, se) = (stats::summarize(&stream), stats::summarize(&session));
                    let note = |s: &Option<stats::Summary>| {
                        s.as_ref().map(|s| format!("n={}", s.n)).unwrap_or_default()
                    };
                    report.add(
                        "P8",
                        "keystroke → echo p50, stream",
                        "ms",
                        st.as_ref().map(|s| s.p50),
                        None,
                        Target::None,
                        &note(&st),
                    );
                    report.add(
                        "P8",
                        "keystroke → echo p99, stream",
                        "ms",
                        st.as_ref().map(|s| s.p99),
                        None,
                        Target::AtMost(20.0),
                        "input broadcast → output broadcast",
                    );
                    report.add(
                        "P8",
                        "keystroke → echo p50, shell_session",
                        "ms",
                        se.as_ref().map(|s| s.p50),
                        None,
                        Target::None,
                        &note(&se),
                    );
                    report.add(
                        "P8",
                        "keystroke → echo p99, shell_session",
                        "ms",
                        se.as_ref().map(|s| s.p99),
                        None,
                        Target::None,
                        "write job, then read jobs until the echo",
                    );
                }
                Err(e) => report.skip("P8", "keystroke echo", &format!("{e:#}")),
            }
        }
        if let Some(c) = gateway_capabilities(hub).await {
            caps = c;
        }
    }

    if want("P6") {
        let deployment = deploy::Deployment::start(&ctx.hub_bin, setup, ctx.cluster.as_ref())?;
        if !needs_gateways {
            // The sims heartbeat what a real gateway does: its
            // capabilities are most of each heartbeat's row.
            eprintln!("[bench] P6: one real gateway, for the capabilities the sims report");
            let gw = Gateway::start(ours, &deployment.front, &ctx.claude, 0).await?;
            if let Some(c) = gateway_capabilities(&deployment.front).await {
                caps = c;
            }
            drop(gw);
        }
        report.note(format!(
            "P6: the sims heartbeat capabilities of {} bytes",
            caps.to_string().len()
        ));
        let steps = ctx.p6_steps(setup);
        match sim::run(
            &deployment.replicas,
            ctx.cluster
                .as_ref()
                .filter(|_| setup.backend == Backend::Postgres)
                .map(|c| c.pid()),
            &steps,
            counts.p6_final_jobs,
            counts.p6_step_jobs,
            caps,
            &std::env::current_exe()?,
        )
        .await
        {
            Ok(r) => {
                report.note(format!(
                    "P6: paired {} simulated gateways in {:.1} s; hub RSS before sockets {} MiB; {} sim worker process(es)",
                    r.target,
                    r.pair_secs,
                    r.baseline_kib / 1024,
                    r.workers
                ));
                for s in &r.steps {
                    let last = s.connected == r.reached && std::ptr::eq(s, r.steps.last().unwrap());
                    let label = format!("{} sims: pickup p99", s.connected);
                    let target = if last {
                        Target::AtMost(50.0)
                    } else {
                        Target::None
                    };
                    report.add(
                        "P6",
                        &label,
                        "ms",
                        s.pickup.map(|p| p.p99),
                        None,
                        target,
                        &format!(
                            "p50 {}; missed {}; hub RSS {} MiB, {:.1} KiB/conn; hub CPU {}{}{}",
                            s.pickup
                                .map(|p| report::fmt_num(p.p50))
                                .unwrap_or("-".into()),
                            s.missed,
                            s.hub_rss_kib / 1024,
                            s.per_conn_kib,
                            s.hub_cpu.map(|c| format!("{c:.0} %")).unwrap_or("-".into()),
                            match (s.db_cpu, s.db_pss_kib) {
                                (Some(c), Some(m)) =>
                                    format!("; PostgreSQL CPU {c:.0} %, PSS {} MiB", m / 1024),
                                _ => String::new(),
                            },
                            format_args!(
                                "; heartbeats {:.0}/s answered, p99 {} ms, {} failed, {} skipped (previous unanswered)",
                                s.heartbeats.hb_sent as f64 / s.window_secs.max(0.001),
                                s.heartbeat_ms
                                    .map(|h| report::fmt_num(h.p99))
                                    .unwrap_or("-".into()),
                                s.heartbeats.hb_failed,
                                s.heartbeats.hb_skipped
                            )
                        ),
                    );
                }
                if let Some(s) = r.steps.last() {
                    report.add(
                        "P6",
                        "hub memory per connection",
                        "KiB",
                        Some(s.per_conn_kib),
                        None,
                        Target::None,
                        &format!("at {} connections", s.connected),
                    );
                }
                report.add(
                    "P6",
                    "simulated gateways reached",
                    "",
                    Some(r.reached as f64),
                    None,
                    Target::AtLeast(r.target as f64),
                    r.stop_reason.as_deref().unwrap_or(""),
                );
            }
            Err(e) => report.skip("P6", "hub scale", &format!("{e:#}")),
        }
    }

    Ok(())
}
