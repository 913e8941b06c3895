//! Reliability of the gateway runtime against a real hub process: the hub
//! dying mid-job, the gateway killed with SIGKILL, SIGTERM past the grace
//! (whole process groups stopped), expiring and revoked sessions,
//! auto-restart on upgrade, and exactly-once job runs under a burst.
//! Every network call is on 127.0.0.1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use panorama_testkit::{GatewayHost, Hub, PairedGateway, RunningGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const FAKE_VERSION: &str = "2.0.14 (Claude Code)";
const RESTART_MESSAGE: &str = "gateway restarted while the job was running";

/// A gateway host whose only agent CLI is a shell-script `claude`.
struct Machine {
    host: GatewayHost,
}

impl std::ops::Deref for Machine {
    type Target = GatewayHost;
    fn deref(&self) -> &GatewayHost {
        &self.host
    }
}

impl std::ops::DerefMut for Machine {
    fn deref_mut(&mut self) -> &mut GatewayHost {
        &mut self.host
    }
}

impl Machine {
    /// A fake `claude --version` that sleeps `delay_s` seconds and records
    /// each call in `claude-calls`.
    fn with_claude_delay(delay_s: u32) -> Machine {
        let m = Machine {
            host: GatewayHost::bare(),
        };
        m.write_claude(&format!(
            "sleep {delay_s}\necho \"$$\" >> '{}'\necho '{FAKE_VERSION}'",
            m.path("claude-calls").display()
        ));
        m
    }

    /// The fake `claude` runs `body` once the machine is armed; before
    /// that (the gateway's startup CLI discovery and provider validation)
    /// it only prints the version.
    fn write_claude(&self, body: &str) {
        self.write_script(
            "claude",
            &format!(
                "if [ ! -f '{}' ]; then echo '{FAKE_VERSION}'; exit 0; fi\n{body}",
                self.path("armed").display()
            ),
        );
    }

    /// From now on the fake `claude` behaves as the test wants (diagnostic
    /// jobs); startup probes are done.
    fn arm(&self) {
        std::fs::write(self.path("armed"), b"").unwrap();
    }

    fn disarm(&self) {
        let _ = std::fs::remove_file(self.path("armed"));
    }

    fn outbox_log(&self) -> PathBuf {
        self.config_dir().join("outbox").join("outbox.jsonl")
    }

    fn claude_calls(&self) -> usize {
        std::fs::read_to_string(self.path("claude-calls"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn start_plain(&self, hub: &Hub) -> RunningGateway {
        self.spawn(self.command(hub, &["start", "--foreground"]))
    }
}

fn gateway_row(hub: &Hub, gateway_id: &str) -> Value {
    hub.select("team_gateways", &format!("id=eq.{gateway_id}&select=*"))
        .into_iter()
        .next()
        .expect("gateway row")
}

fn wait_status(hub: &Hub, gateway_id: &str, status: &str) -> Value {
    hub.wait_for(&format!("gateway {status}"), WAIT, || {
        Some(gateway_row(hub, gateway_id)).filter(|r| r["status"] == status)
    })
}

fn job(hub: &Hub, id: &str) -> Value {
    hub.select("gateway_jobs", &format!("id=eq.{id}&select=*"))
        .into_iter()
        .next()
        .expect("job row")
}

fn wait_job_status(hub: &Hub, id: &str, status: &str) -> Value {
    hub.wait_for(&format!("job {id} {status}"), WAIT, || {
        Some(job(hub, id)).filter(|r| r["status"] == status)
    })
}

fn wait_job_terminal(hub: &Hub, id: &str) -> Value {
    hub.wait_for(&format!("job {id} to finish"), WAIT, || {
        let row = job(hub, id);
        matches!(
            row["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(row)
    })
}

fn wait_log(hub: &Hub, machine: &Machine, what: &str) -> String {
    hub.wait_for(&format!("log line {what:?}"), WAIT, || {
        let log = machine.log();
        log.contains(what).then_some(log)
    })
}

fn pair(hub: &Hub, machine: &Machine) -> PairedGateway {
    let team = hub.create_team("reliability-team");
    let gw = hub.pair(&team, "test-box");
    machine.write_config(hub, &gw, false);
    gw
}

/// Pair, start `start --foreground` (with `env`), wait until `ready` and
/// the PID file exists.
fn started(hub: &Hub, machine: &Machine, env: &[(&str, &str)]) -> (PairedGateway, RunningGateway) {
    let gw = pair(hub, machine);
    let mut cmd = machine.command(hub, &["start", "--foreground"]);
    cmd.envs(env.iter().copied());
    let running = machine.spawn(cmd);
    wait_status(hub, &gw.gateway_id, "ready");
    hub.wait_for("pid file", WAIT, || {
        machine.pid_path().exists().then_some(())
    });
    machine.arm();
    (gw, running)
}

fn insert_job(hub: &Hub, gw: &PairedGateway) -> String {
    hub.insert(
        "gateway_jobs",
        json!({"team_id": gw.team_id, "gateway_id": gw.gateway_id, "job_type": "diagnostic", "payload": {}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ts_ms(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"))
        .timestamp_millis()
}

/// Alive and not a zombie (an orphan may wait to be reaped by init).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

fn outbox_empty(machine: &Machine) -> bool {
    std::fs::metadata(machine.outbox_log()).map_or(true, |m| m.len() == 0)
}

panorama_testkit::on_both_backends! {
fn hub_killed_mid_job_the_job_completes_and_the_outbox_drains_after_it_returns() {
    let hub = Hub::start();
    let machine = Machine::with_claude_delay(2);
    let (gw, mut running) = started(&hub, &machine, &[]);
    let id = insert_job(&hub, &gw);
    wait_job_status(&hub, &id, "running");

    let seen_before = ts_ms(&gateway_row(&hub, &gw.gateway_id)["last_seen_at"]);
    let port = port_of(&hub.url);
    let data = hub.kill();
    // The job finishes while the hub is down: its completion waits in the
    // outbox, the reconcile keeps failing (logged), the process carries on.
    let deadline = Instant::now() + WAIT;
    while !(machine.claude_calls() == 1
        && machine
            .log()
            .contains("Failed to reconcile queued gateway jobs"))
    {
        assert!(Instant::now() < deadline, "log: {}", machine.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        running.is_running(),
        "gateway exited while the hub was down"
    );
    assert!(
        !outbox_empty(&machine),
        "the completion waits in the outbox"
    );
    // Once ingress has failed for longer than its 15 s window the status
    // changes and a heartbeat is attempted (and fails, logged).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !machine.log().contains("Failed to send gateway heartbeat") {
        assert!(Instant::now() < deadline, "log: {}", machine.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        running.is_running(),
        "gateway exited while the hub was down"
    );

    let hub = Hub::start_in(data, &format!("127.0.0.1:{port}"), &[]);
    let row = wait_job_terminal(&hub, &id);
    assert_eq!(row["status"], "completed", "row: {row}");
    assert_eq!(row["result"]["version"], FAKE_VERSION);
    hub.wait_for("outbox drained", WAIT, || {
        outbox_empty(&machine).then_some(())
    });
    assert!(!machine
        .config_dir()
        .join("outbox")
        .join("dead-letters.jsonl")
        .exists());
    // Heartbeats land again: the recovered `ready` status is reported.
    hub.wait_for("a heartbeat after the hub returned", WAIT, || {
        let row = gateway_row(&hub, &gw.gateway_id);
        (row["status"] == "ready" && ts_ms(&row["last_seen_at"]) > seen_before).then_some(())
    });
    // The realtime channel reconnects too (the reconcile alone would hide
    // a dead channel).
    hub.wait_for("realtime resubscribed", WAIT, || {
        (machine
            .log()
            .matches("Gateway subscribed to job queue")
            .count()
            >= 2)
            .then_some(())
    });
    // Ingress recovered: a new job runs.
    let next = insert_job(&hub, &gw);
    assert_eq!(wait_job_terminal(&hub, &next)["status"], "completed");
    assert!(running.is_running());
    let status = running.terminate(WAIT);
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(gateway_row(&hub, &gw.gateway_id)["status"], "offline");
}
}

panorama_testkit::on_both_backends! {
fn sigkill_mid_job_then_start_finalizes_the_orphan_before_claiming_new_work() {
    let hub = Hub::start();
    let machine = Machine::with_claude_delay(2);
    let (gw, mut running) = started(&hub, &machine, &[]);
    let orphan = insert_job(&hub, &gw);
    wait_job_status(&hub, &orphan, "running");
    running.sigkill();
    let queued = insert_job(&hub, &gw);
    assert!(machine.pid_path().exists(), "a SIGKILL leaves the PID file");
    // Keep the new process's startup probes fast.
    machine.disarm();

    let mut running = machine.start_plain(&hub);
    let orphan_row = wait_job_terminal(&hub, &orphan);
    assert_eq!(orphan_row["status"], "failed", "row: {orphan_row}");
    assert_eq!(orphan_row["error"], RESTART_MESSAGE);
    assert_eq!(orphan_row["result"]["recovered"], true);
    let new_row = wait_job_terminal(&hub, &queued);
    assert_eq!(new_row["status"], "completed", "row: {new_row}");
    assert!(
        ts_ms(&orphan_row["completed_at"]) <= ts_ms(&new_row["started_at"]),
        "orphan finalized at {} after the new job started at {}",
        orphan_row["completed_at"],
        new_row["started_at"]
    );
    assert!(machine
        .log()
        .contains("Recovered jobs interrupted by an earlier gateway process"));
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn sigterm_past_the_grace_cancels_the_job_and_kills_its_whole_process_group() {
    let hub = Hub::start();
    let machine = Machine {
        host: GatewayHost::bare(),
    };
    let pids = machine.path("pids");
    // Ignores SIGTERM, and so does its grandchild.
    machine.write_claude(&format!(
        "trap '' TERM\nsleep 60 &\necho $! >> '{0}'\necho $$ >> '{0}'\nwait",
        pids.display()
    ));
    let (gw, mut running) = started(
        &hub,
        &machine,
        &[("PANORAMA_GATEWAY_SHUTDOWN_GRACE_MS", "1000")],
    );
    let id = insert_job(&hub, &gw);
    wait_job_status(&hub, &id, "running");
    let recorded: Vec<i32> = hub.wait_for("child pids", WAIT, || {
        let list: Vec<i32> = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (list.len() == 2).then_some(list)
    });
    assert!(recorded.iter().all(|p| pid_alive(*p)));

    let began = Instant::now();
    let status = running.terminate(WAIT);
    assert!(status.success(), "exit status {status:?}");
    // Grace (1 s) + SIGTERM→SIGKILL (2 s), not the 10 s diagnostic timeout.
    assert!(
        began.elapsed() < Duration::from_secs(9),
        "{:?}",
        began.elapsed()
    );
    let row = job(&hub, &id);
    assert_eq!(row["status"], "cancelled", "row: {row}");
    assert_eq!(row["error"], "Gateway shutting down (SIGTERM)");
    assert_eq!(
        row["result"],
        json!({"message": "Gateway shutting down (SIGTERM)", "cancelled": true})
    );
    assert!(row["completed_at"].is_string());
    assert_eq!(gateway_row(&hub, &gw.gateway_id)["status"], "offline");
    assert!(!machine.pid_path().exists(), "PID file removed");
    let survivors: Vec<i32> = recorded.into_iter().filter(|p| pid_alive(*p)).collect();
    assert!(survivors.is_empty(), "still alive: {survivors:?}");
}
}

panorama_testkit::on_both_backends! {
fn expiring_access_tokens_are_refreshed_rotated_and_persisted() {
    let hub = Hub::start_with_env(&[("PANORAMA_HUB_ACCESS_TOKEN_TTL", "3")]);
    let machine = Machine::with_claude_delay(0);
    let (gw, mut running) = started(&hub, &machine, &[]);
    let first_refresh = machine.config()["refreshToken"]
        .as_str()
        .unwrap()
        .to_string();
    // Jobs keep completing across several token lifetimes (3 s each):
    // after each job, wait for the gateway to rotate its session again
    // (observed in the persisted gateway.json), then run the next.
    let began = Instant::now();
    let mut seen = first_refresh.clone();
    let mut done = 0;
    while began.elapsed() < Duration::from_secs(10) || done < 4 {
        done += 1;
        let id = insert_job(&hub, &gw);
        let row = wait_job_terminal(&hub, &id);
        assert_eq!(row["status"], "completed", "row: {row}");
        seen = hub.wait_for("the next session rotation", WAIT, || {
            machine.config()["refreshToken"]
                .as_str()
                .filter(|r| *r != seen)
                .map(str::to_string)
        });
    }
    assert!(running.is_running());
    let config = machine.config();
    assert_ne!(config["refreshToken"], first_refresh.as_str());
    assert_ne!(config["refreshToken"], gw.refresh_token.as_str());
    assert!(machine.log().contains("Gateway session refreshed"));
    // The persisted (rotated) session is the live one: a fresh start works.
    assert!(running.terminate(WAIT).success());
    let mut again = machine.start_plain(&hub);
    wait_status(&hub, &gw.gateway_id, "ready");
    let id = insert_job(&hub, &gw);
    assert_eq!(wait_job_terminal(&hub, &id)["status"], "completed");
    assert!(again.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn start_with_a_revoked_gateway_fails_and_says_pair_again() {
    let hub = Hub::start();
    let machine = Machine::with_claude_delay(0);
    let gw = pair(&hub, &machine);
    let res = hub
        .req(
            reqwest::Method::PATCH,
            &format!("/rest/v1/team_gateways?id=eq.{}", gw.gateway_id),
            &hub.service_key,
        )
        .json(&json!({"revoked_at": "2025-01-01T00:00:00Z"}))
        .send()
        .unwrap();
    assert!(res.status().is_success(), "revoke: {}", res.status());
    let started = Instant::now();
    let out = machine.run(&hub, &["start", "--foreground"]);
    assert!(!out.status.success(), "a revoked gateway must not start");
    assert!(started.elapsed() < WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Failed to authenticate gateway session."),
        "stderr: {stderr}"
    );
    // The details (verbose-only, runtime.md §1.5) say what to do.
    let out = machine.run(&hub, &["--verbose", "start", "--foreground"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("revoked") && stderr.contains("panorama-gateway pair <CODE>\" again"),
        "stderr: {stderr}"
    );
    assert!(!machine.pid_path().exists());
}
}

panorama_testkit::on_both_backends! {
fn replacing_the_executable_drains_then_re_execs_in_place_and_keeps_working() {
    let hub = Hub::start();
    let mut machine = Machine::with_claude_delay(2);
    let bin_dir = machine.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join("panorama-gateway");
    std::fs::copy(&machine.program, &exe).unwrap();
    machine.program = exe.clone();
    let (gw, mut running) = started(
        &hub,
        &machine,
        &[
            ("PANORAMA_GATEWAY_AUTO_RESTART", "1"),
            ("PANORAMA_GATEWAY_RESTART_CHECK_MS", "200"),
        ],
    );
    wait_log(&hub, &machine, "Gateway auto-restart enabled");
    let pid = running.pid();
    // A job is running when the upgrade lands: the restart waits for it.
    let busy = insert_job(&hub, &gw);
    wait_job_status(&hub, &busy, "running");

    // An "upgrade": new bytes renamed over the installed path.
    let mut bytes = std::fs::read(&exe).unwrap();
    bytes.extend_from_slice(b"\0reliability-upgrade\0");
    let staged = bin_dir.join("panorama-gateway.new");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &exe).unwrap();

    wait_log(
        &hub,
        &machine,
        "Gateway update detected; draining before restart",
    );
    let row = wait_job_terminal(&hub, &busy);
    assert_eq!(row["status"], "completed", "drained, not cancelled: {row}");
    wait_log(&hub, &machine, "Gateway restarting");
    let log = hub.wait_for("second startup", WAIT, || {
        let log = machine.log();
        (log.matches("Gateway running").count() >= 2).then_some(log)
    });
    assert!(
        log.contains("Gateway update detected; draining before restart"),
        "log: {log}"
    );
    assert!(!log.contains("Gateway shutting down {"), "log: {log}");
    assert!(running.is_running(), "the process was replaced in place");
    assert_eq!(running.pid(), pid);
    let pid_file = hub.wait_for("pid file", WAIT, || {
        std::fs::read_to_string(machine.pid_path()).ok()
    });
    assert_eq!(pid_file.trim(), pid.to_string());
    wait_status(&hub, &gw.gateway_id, "ready");
    let id = insert_job(&hub, &gw);
    let row = wait_job_terminal(&hub, &id);
    assert_eq!(row["status"], "completed", "row: {row}");
    assert!(running.terminate(WAIT).success());
    assert_eq!(gateway_row(&hub, &gw.gateway_id)["status"], "offline");
    assert!(!Path::new(&machine.pid_path()).exists());
}
}

panorama_testkit::on_both_backends! {
fn a_burst_of_thirty_jobs_runs_each_exactly_once() {
    let hub = Hub::start();
    let machine = Machine::with_claude_delay(0);
    let (gw, mut running) = started(&hub, &machine, &[]);
    let ids: Vec<String> = (0..30).map(|_| insert_job(&hub, &gw)).collect();
    for id in &ids {
        let row = wait_job_terminal(&hub, id);
        assert_eq!(row["status"], "completed", "row: {row}");
    }
    // A sentinel inserted after the burst went through the same realtime
    // and reconcile paths; a duplicate run of a burst job would be in the
    // call log by now.
    let sentinel = insert_job(&hub, &gw);
    assert_eq!(wait_job_terminal(&hub, &sentinel)["status"], "completed");
    assert_eq!(machine.claude_calls(), 31, "each job ran exactly once");
    assert!(running.terminate(WAIT).success());
}
}

panorama_testkit::on_both_backends! {
fn a_replacement_that_cannot_be_executed_makes_the_gateway_exit_non_zero() {
    let hub = Hub::start();
    let mut machine = Machine::with_claude_delay(0);
    let bin_dir = machine.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join("panorama-gateway");
    std::fs::copy(&machine.program, &exe).unwrap();
    machine.program = exe.clone();
    let (gw, mut running) = started(
        &hub,
        &machine,
        &[
            ("PANORAMA_GATEWAY_AUTO_RESTART", "true"),
            ("PANORAMA_GATEWAY_RESTART_CHECK_MS", "200"),
        ],
    );
    wait_log(&hub, &machine, "Gateway auto-restart enabled");
    // A broken "upgrade": the new file lost its execute permission.
    let staged = bin_dir.join("panorama-gateway.new");
    std::fs::write(&staged, std::fs::read(&exe).unwrap()).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&staged, &exe).unwrap();

    let status = running.wait_exit(WAIT).expect("gateway exit");
    assert!(!status.success(), "exit status {status:?}");
    let log = machine.log();
    assert!(log.contains("Gateway restart failed"), "log: {log}");
    assert!(!machine.pid_path().exists(), "PID file removed");
    assert_eq!(gateway_row(&hub, &gw.gateway_id)["status"], "offline");
}
}

panorama_testkit::on_both_backends! {
fn a_symlink_swapped_to_a_new_version_is_re_executed() {
    let hub = Hub::start();
    let mut machine = Machine::with_claude_delay(0);
    let bin_dir = machine.path("bin");
    for version in ["v1", "v2"] {
        std::fs::create_dir_all(bin_dir.join(version)).unwrap();
        std::fs::copy(
            &machine.program,
            bin_dir.join(version).join("panorama-gateway"),
        )
        .unwrap();
    }
    let link = bin_dir.join("panorama-gateway");
    std::os::unix::fs::symlink(bin_dir.join("v1").join("panorama-gateway"), &link).unwrap();
    machine.program = link.clone();
    let (gw, mut running) = started(
        &hub,
        &machine,
        &[
            ("PANORAMA_GATEWAY_AUTO_RESTART", "on"),
            ("PANORAMA_GATEWAY_RESTART_CHECK_MS", "200"),
        ],
    );
    wait_log(&hub, &machine, "Gateway auto-restart enabled");
    let pid = running.pid();
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe_of(pid), bin_dir.join("v1").join("panorama-gateway"));

    // The installer points the stable path at the new version (atomically).
    let staged = bin_dir.join("panorama-gateway.next");
    std::os::unix::fs::symlink(bin_dir.join("v2").join("panorama-gateway"), &staged).unwrap();
    std::fs::rename(&staged, &link).unwrap();

    hub.wait_for("re-exec of v2", WAIT, || {
        (exe_of(pid) == bin_dir.join("v2").join("panorama-gateway")).then_some(())
    });
    hub.wait_for("second startup", WAIT, || {
        (machine.log().matches("Gateway running").count() >= 2).then_some(())
    });
    assert!(running.is_running());
    let id = insert_job(&hub, &gw);
    assert_eq!(wait_job_terminal(&hub, &id)["status"], "completed");
    assert!(running.terminate(WAIT).success());
}
}
