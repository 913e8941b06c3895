//! `shell_session` and `shell_exec` jobs end to end: a real hub process, the
//! real `panorama-gateway` binary (paired with install full control), a
//! team flag set through the REST API with the service key and a
//! `remote_shell` resource bound to the gateway. Every network call is on
//! 127.0.0.1.

use std::time::{Duration, Instant};

use panorama_testkit::{GatewayHost, Hub, RunningGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const MSG_INSTALL_OFF: &str = "Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
const MSG_TEAM_OFF: &str = "Gateway connection full control is disabled by team settings.";
const MSG_STALE: &str = "Gateway is offline or heartbeat is stale";
const MSG_EXEC_TEAM_OFF: &str = "Gateway machine control is disabled in Team Integrations.";
const MSG_EXEC_INSTALL_OFF: &str = "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
const MSG_NOT_FOUND: &str = "Remote shell resource not found";
const MSG_VIEWER: &str = "Remote shell resource is configured for viewer access. Full access is required for this action.";
const MSG_OTHER_GATEWAY: &str = "Remote shell resource targets a different gateway";
const MSG_MISSING_GATEWAY_ID: &str = "Remote shell resource is missing metadata.gateway_id";
const MSG_RESOURCE_CONTROL_OFF: &str = "Remote shell resource machine control is disabled";

/// A gateway host whose only agent CLI is a `claude` that prints a
/// version. Sessions open the user's `$SHELL`: pinned, so the test does not
/// depend on the runner's.
fn machine() -> GatewayHost {
    let mut host = GatewayHost::bare();
    host.device_name = "shell-box".into();
    host.write_script("claude", "echo '2.0.14 (Claude Code)'");
    host.env.push(("SHELL".into(), "/bin/bash".into()));
    host
}

/// A hub, a gateway paired with `--full-control true` and running in the
/// foreground, and a `remote_shell` resource bound to it.
struct Setup {
    hub: Hub,
    machine: GatewayHost,
    running: RunningGateway,
    gateway_id: String,
    team_id: String,
    resource_id: String,
}

impl Setup {
    /// Team flag on.
    fn new() -> Setup {
        let s = Self::with_team_flag(false);
        s.set_team_flag(true);
        s
    }

    fn with_team_flag(team_flag: bool) -> Setup {
        let hub = Hub::start();
        let machine = machine();
        let team_id = hub.create_team("shell-team");
        let code = hub.create_pairing_code(&team_id);
        let running = machine.spawn(machine.command(
            &hub,
            &["pair", &code, "--full-control", "true", "--foreground"],
        ));
        let config = hub.wait_for("paired config", WAIT, || {
            std::fs::read_to_string(machine.config_path())
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|c| c["gatewayId"].as_str().is_some_and(|s| !s.is_empty()))
        });
        assert_eq!(config["full_control_enabled"], true, "config: {config}");
        let gateway_id = config["gatewayId"].as_str().unwrap().to_string();
        let mut setup = Setup {
            hub,
            machine,
            running,
            gateway_id,
            team_id,
            resource_id: String::new(),
        };
        setup.hub.wait_for("gateway ready", WAIT, || {
            setup.gateway_row().filter(|r| r["status"] == "ready")
        });
        if team_flag {
            setup.set_team_flag(true);
        }
        setup.resource_id = setup.create_resource(json!({
            "max_access_level": "editor",
            "metadata": {"gateway_id": setup.gateway_id, "full_control": true},
        }));
        setup
    }

    fn gateway_row(&self) -> Option<Value> {
        self.hub
            .select(
                "team_gateways",
                &format!("id=eq.{}&select=*", self.gateway_id),
            )
            .into_iter()
            .next()
    }

    fn rest(
        &self,
        method: reqwest::Method,
        table: &str,
        query: &str,
        body: Option<Value>,
    ) -> Vec<Value> {
        let mut req = self
            .hub
            .req(
                method.clone(),
                &format!("/rest/v1/{table}?{query}"),
                &self.hub.service_key,
            )
            .header("prefer", "return=representation");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().expect("REST request");
        let status = res.status();
        let body: Value = res.json().unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{method} {table}?{query} failed: {status} {body}"
        );
        body.as_array().cloned().unwrap_or_default()
    }

    fn patch(&self, table: &str, id: &str, body: Value) -> Value {
        let rows = self.rest(
            reqwest::Method::PATCH,
            table,
            &format!("id=eq.{id}"),
            Some(body),
        );
        assert_eq!(rows.len(), 1, "PATCH {table} {id}: {rows:?}");
        rows[0].clone()
    }

    fn set_team_flag(&self, on: bool) {
        let row = self.patch(
            "team_gateways",
            &self.gateway_id,
            json!({"full_control_enabled": on}),
        );
        assert_eq!(row["full_control_enabled"], on);
    }

    /// A resource row with `fields` over `{team_id, resource_type: remote_shell}`.
    fn create_resource(&self, fields: Value) -> String {
        let mut row = json!({
            "team_id": self.team_id,
            "resource_type": "remote_shell",
            "title": "test shell",
        });
        for (k, v) in fields.as_object().unwrap() {
            row[k] = v.clone();
        }
        self.hub.insert("team_resources", row)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Queues a job and waits until it is terminal; returns the row.
    fn job(&self, job_type: &str, payload: Value) -> Value {
        let id = self.hub.insert(
            "gateway_jobs",
            json!({"team_id": self.team_id, "gateway_id": self.gateway_id,
                "job_type": job_type, "status": "queued", "payload": payload}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        self.hub
            .wait_for(&format!("{job_type} job {id}"), WAIT, || {
                let row = self
                    .hub
                    .select("gateway_jobs", &format!("id=eq.{id}&select=*"))
                    .into_iter()
                    .next()?;
                matches!(
                    row["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
                .then_some(row)
            })
    }

    /// A `shell_session` action on `resource`; returns the job row.
    fn session_on(&self, resource: &str, action: &str, mut payload: Value) -> Value {
        payload["action"] = json!(action);
        payload["resource_id"] = json!(resource);
        self.job("shell_session", payload)
    }

    /// A `shell_session` action that must complete; returns its result.
    fn ok(&self, action: &str, payload: Value) -> Value {
        let row = self.session_on(&self.resource_id, action, payload);
        assert_eq!(row["status"], "completed", "{action}: {row}");
        assert_eq!(row["error"], Value::Null);
        row["result"].clone()
    }

    /// A job that must fail with `message` as the job error and
    /// `result.message`; returns the result.
    fn denied(&self, row: Value, message: &str) -> Value {
        assert_eq!(row["status"], "failed", "row: {row}");
        assert_eq!(row["error"], message, "row: {row}");
        assert_eq!(row["result"]["message"], message, "row: {row}");
        row["result"].clone()
    }

    fn open_bash(&self, resource: &str, extra_env: Value) -> Value {
        let mut env = json!({"PS1": "$ "});
        for (k, v) in extra_env.as_object().unwrap() {
            env[k] = v.clone();
        }
        self.session_on(
            resource,
            "open",
            json!({"shell": "/bin/bash", "shell_args": ["--norc", "--noprofile"], "env": env}),
        )
    }

    /// Every `stdout` event's data so far, read from sequence 0.
    fn output_on(&self, resource: &str, session_id: &str) -> (String, Value) {
        let row = self.session_on(
            resource,
            "read",
            json!({"session_id": session_id, "since_sequence": 0, "max_events": 1000}),
        );
        assert_eq!(row["status"], "completed", "read: {row}");
        let result = row["result"].clone();
        let text = result["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["stream"] == "stdout")
            .map(|e| e["data"].as_str().unwrap().to_string())
            .collect::<String>();
        (text, result)
    }

    /// Reads until the terminal output contains `needle`.
    fn wait_output_on(&self, resource: &str, session_id: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let (text, _) = self.output_on(resource, session_id);
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in the session output: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_line(&self, resource: &str, session_id: &str, line: &str) -> Value {
        let row = self.session_on(
            resource,
            "write",
            json!({"session_id": session_id, "input": line, "append_newline": true}),
        );
        assert_eq!(row["status"], "completed", "write: {row}");
        row["result"].clone()
    }

    /// The shell's PID, as the shell itself reports it.
    fn shell_pid(&self, resource: &str, session_id: &str) -> i32 {
        self.write_line(resource, session_id, "echo \"pid=[$$]\"");
        let text = self.wait_output_on(resource, session_id, "pid=[");
        let start = text.rfind("pid=[").unwrap() + 5;
        let end = start + text[start..].find(']').unwrap();
        text[start..end].parse().expect("a PID")
    }
}

fn session_id(open_result: &Value) -> String {
    open_result["session_id"].as_str().unwrap().to_string()
}

fn process_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_process_gone(pid: i32) {
    let deadline = Instant::now() + WAIT;
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
}

panorama_testkit::on_both_backends! {
fn interactive_session_through_the_pty_with_paging_resize_and_close() {
    let s = Setup::new();
    let row = s.open_bash(&s.resource_id, json!({"COLUMNS": "90", "LINES": "25"}));
    assert_eq!(row["status"], "completed", "open: {row}");
    let opened = row["result"].clone();
    assert_eq!(opened["message"], "Shell session opened");
    assert_eq!(opened["status"], "running");
    assert_eq!(opened["resource_id"], s.resource_id.as_str());
    assert_eq!(opened["shell"], "/bin/bash");
    assert_eq!(opened["default_columns"], 120);
    assert_eq!(opened["default_rows"], 40);
    let sid = session_id(&opened);
    let r = s.resource_id.clone();

    // An interactive program: it prints a prompt and reads the answer from
    // the terminal. The echoed command line shows `$p> ` and `-$n-`, so the
    // expanded texts can only come from the program.
    s.wait_output_on(&r, &sid, "$ ");
    let written = s.write_line(&r, &sid, "p=ready; read -p \"$p> \" n; echo \"hi-$n-done\"");
    assert_eq!(written["message"], "Shell session input sent");
    assert_eq!(written["append_newline"], true);
    assert_eq!(
        written["bytes_written"],
        "p=ready; read -p \"$p> \" n; echo \"hi-$n-done\"\n".len()
    );
    s.wait_output_on(&r, &sid, "ready> ");
    s.write_line(&r, &sid, "alice");
    s.wait_output_on(&r, &sid, "hi-alice-done");

    // The terminal size comes from COLUMNS/LINES at open, then `resize`.
    s.write_line(&r, &sid, "echo \"size=[$(stty size)]\"");
    s.wait_output_on(&r, &sid, "size=[25 90]");
    let resized = s.ok(
        "resize",
        json!({"session_id": sid, "cols": 100, "rows": 30}),
    );
    assert_eq!(resized["message"], "Shell session resized");
    assert_eq!(resized["columns"], 100);
    assert_eq!(resized["rows"], 30);
    s.write_line(&r, &sid, "echo \"size2=[$(stty size)]\"");
    s.wait_output_on(&r, &sid, "size2=[30 100]");
    let bad = s.session_on(
        &r,
        "resize",
        json!({"session_id": sid, "cols": 0, "rows": 30}),
    );
    s.denied(
        bad,
        "Invalid resize dimensions in payload (expected cols and rows from 1 to 1000)",
    );

    // Read by sequence: one full page, then small pages with has_more.
    let (_, full) = s.output_on(&r, &sid);
    assert_eq!(full["message"], "Shell session output");
    assert_eq!(full["has_more"], false);
    let all: Vec<Value> = full["events"].as_array().unwrap().clone();
    assert!(all.len() >= 4, "events: {all:?}");
    assert_eq!(all[0]["sequence"], 1);
    // Output that arrived before registration can precede the open event.
    assert!(
        all.iter().any(|e| e["stream"] == "system"
            && e["data"] == "Session opened (/bin/bash --norc --noprofile)"),
        "events: {all:?}"
    );
    let latest = full["latest_sequence"].as_u64().unwrap();
    assert_eq!(all.last().unwrap()["sequence"].as_u64().unwrap(), latest);

    let mut since = 0u64;
    let mut paged: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.ok(
            "read",
            json!({"session_id": sid, "since_sequence": since.to_string(), "max_events": 2}),
        );
        pages += 1;
        assert_eq!(page["since_sequence"], since);
        assert_eq!(page["max_events"], 2);
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= 2);
        for e in &events {
            let seq = e["sequence"].as_u64().unwrap();
            assert_eq!(seq, since + 1, "contiguous sequences: {events:?}");
            since = seq;
        }
        paged.extend(events);
        if page["has_more"] == false {
            break;
        }
        assert!(pages < 1000, "paging does not end");
    }
    assert!(pages >= 2, "several pages");
    assert_eq!(
        &paged[..all.len()],
        &all[..],
        "the pages match the full read"
    );
    // Reading past the end: nothing, and no more.
    let past = s.ok(
        "read",
        json!({"session_id": sid, "since_sequence": since, "max_events": 5}),
    );
    assert_eq!(past["events"], json!([]));
    assert_eq!(past["has_more"], false);

    let status = s.ok("status", json!({"session_id": sid}));
    assert_eq!(status["message"], "Shell session status");
    assert_eq!(status["status"], "running");

    // Close: the shell's tree is terminated, the session stays readable.
    let pid = s.shell_pid(&r, &sid);
    assert!(process_alive(pid));
    let closed = s.ok("close", json!({"session_id": sid}));
    assert_eq!(closed["message"], "Shell session closed");
    assert_eq!(closed["status"], "closed");
    wait_process_gone(pid);
    let after = s.ok("status", json!({"session_id": sid}));
    assert_eq!(after["status"], "closed");
    let (_, tail) = s.output_on(&r, &sid);
    let system: Vec<&str> = tail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "system")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert!(system.contains(&"Session closed by request"), "{system:?}");
    let write = s.session_on(&r, "write", json!({"session_id": sid, "input": "x"}));
    s.denied(write, "Shell session is not writable (status: closed)");
    // Closing again succeeds.
    assert_eq!(
        s.ok("close", json!({"session_id": sid}))["status"],
        "closed"
    );
    let unknown = s.session_on(&r, "status", json!({"session_id": "no-such-session"}));
    let result = s.denied(unknown, "Shell session not found or expired");
    assert_eq!(result["session_id"], "no-such-session");
}
}

panorama_testkit::on_both_backends! {
fn shell_exec_returns_output_and_exit_code() {
    let s = Setup::new();
    let ok = s.job(
        "shell_exec",
        json!({"resource_id": s.resource_id, "command": "pwd; echo out; echo err >&2", "timeout_ms": 20000}),
    );
    assert_eq!(ok["status"], "completed", "row: {ok}");
    assert_eq!(ok["error"], Value::Null);
    let r = &ok["result"];
    assert_eq!(r["message"], "Remote shell command completed");
    assert_eq!(r["stdout"], "/\nout\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["success"], true);
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["cwd"], "/");
    assert_eq!(r["resource_id"], s.resource_id.as_str());
    assert_eq!(r["command"], "pwd; echo out; echo err >&2");
    assert!(r["duration_ms"].is_u64());

    // A failing command still completes the job.
    let failed = s.job(
        "shell_exec",
        json!({"resource_id": s.resource_id, "command": "echo partial; exit 3"}),
    );
    assert_eq!(failed["status"], "completed", "row: {failed}");
    let r = &failed["result"];
    assert_eq!(
        r["message"],
        "Remote shell command completed with a non-zero exit status"
    );
    assert_eq!(r["stdout"], "partial\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["success"], false);

    let slow = s.job(
        "shell_exec",
        json!({"resource_id": s.resource_id, "command": "sleep 20", "timeout_ms": 300}),
    );
    assert_eq!(slow["status"], "completed", "row: {slow}");
    assert_eq!(slow["result"]["message"], "Remote shell command timed out");
    assert_eq!(slow["result"]["timed_out"], true);

    let missing = s.job("shell_exec", json!({"resource_id": s.resource_id}));
    assert_eq!(missing["status"], "failed", "row: {missing}");
    assert_eq!(missing["error"], "Missing command in payload");
}
}

/// Runs `job` until its job error is `message`: the gateway's own
/// heartbeat may refresh `last_seen_at` between `stale()` and the job.
fn denied_after(s: &Setup, stale: impl Fn(), job: impl Fn() -> Value, message: &str) {
    for _ in 0..3 {
        stale();
        let row = job();
        if row["error"] == message {
            s.denied(row, message);
            return;
        }
    }
    panic!("never denied with {message:?}");
}

panorama_testkit::on_both_backends! {
fn machine_control_denials_use_the_spec_messages() {
    let s = Setup::with_team_flag(false);
    let open = || s.open_bash(&s.resource_id, json!({}));
    let exec = || {
        s.job(
            "shell_exec",
            json!({"resource_id": s.resource_id, "command": "echo no"}),
        )
    };

    // Team flag off (the default).
    s.denied(open(), MSG_TEAM_OFF);
    s.denied(exec(), MSG_EXEC_TEAM_OFF);
    s.set_team_flag(true);

    // Install flag off: re-read from gateway.json on every job.
    let out = s.machine.run(&s.hub, &["full-control", "disable"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.machine.config()["full_control_enabled"], false);
    s.denied(open(), MSG_INSTALL_OFF);
    s.denied(exec(), MSG_EXEC_INSTALL_OFF);
    let out = s.machine.run(&s.hub, &["full-control", "enable"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opened = open();
    assert_eq!(opened["status"], "completed", "open: {opened}");
    let sid = session_id(&opened["result"]);

    // A stale heartbeat denies new sessions, actions on open ones and exec.
    let stale = || {
        s.patch(
            "team_gateways",
            &s.gateway_id,
            json!({"last_seen_at": "2020-01-01T00:00:00.000Z"}),
        );
    };
    denied_after(&s, stale, open, MSG_STALE);
    denied_after(&s, stale, exec, MSG_STALE);
    denied_after(
        &s,
        stale,
        || s.session_on(&s.resource_id, "status", json!({"session_id": sid})),
        MSG_STALE,
    );
    // Not `ready`: the same message.
    s.patch(
        "team_gateways",
        &s.gateway_id,
        json!({"status": "offline", "last_seen_at": "2999-01-01T00:00:00.000Z"}),
    );
    s.denied(open(), MSG_STALE);

    assert!(
        s.machine.log().contains("Processing gateway job"),
        "log: {}",
        s.machine.log()
    );
}
}

panorama_testkit::on_both_backends! {
fn resource_denials_use_the_spec_messages() {
    let s = Setup::new();
    let gw = s.gateway_id.clone();
    let open_on = |resource: &str| s.open_bash(resource, json!({}));
    let exec_on = |resource: &str| {
        s.job(
            "shell_exec",
            json!({"resource_id": resource, "command": "echo no"}),
        )
    };

    // No such row.
    let missing = "00000000-0000-4000-8000-000000000000";
    let result = s.denied(open_on(missing), MSG_NOT_FOUND);
    assert_eq!(result["resource_id"], missing);
    s.denied(exec_on(missing), MSG_NOT_FOUND);

    // Wrong type: the gateway may only read `remote_shell` rows of its team
    // (control-plane §16.5), so through the hub the row does not exist.
    let database = s.create_resource(json!({
        "resource_type": "database",
        "metadata": {"gateway_id": gw, "full_control": true},
    }));
    s.denied(open_on(&database), MSG_NOT_FOUND);
    // Another team's row: invisible for the same reason.
    let other_team = s.hub.create_team("other-team");
    let foreign = s.hub.insert(
        "team_resources",
        json!({"team_id": other_team, "resource_type": "remote_shell",
                "metadata": {"gateway_id": gw, "full_control": true}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.denied(open_on(&foreign), MSG_NOT_FOUND);

    // Viewer access: no write action.
    let viewer = s.create_resource(json!({
        "max_access_level": "viewer",
        "metadata": {"gateway_id": gw, "full_control": true},
    }));
    s.denied(open_on(&viewer), MSG_VIEWER);
    s.denied(exec_on(&viewer), MSG_VIEWER);

    // Another gateway's resource.
    let other_gw = s.hub.pair(&s.team_id, "other-box");
    let theirs = s.create_resource(json!({
        "metadata": {"gateway_id": other_gw.gateway_id, "full_control": true},
    }));
    s.denied(open_on(&theirs), MSG_OTHER_GATEWAY);
    s.denied(exec_on(&theirs), MSG_OTHER_GATEWAY);

    // No gateway binding; machine control off on the resource.
    let unbound = s.create_resource(json!({"metadata": {"full_control": true}}));
    s.denied(open_on(&unbound), MSG_MISSING_GATEWAY_ID);
    let off = s.create_resource(json!({"metadata": {"gateway_id": gw, "full_control": "true"}}));
    s.denied(open_on(&off), MSG_RESOURCE_CONTROL_OFF);
    s.denied(exec_on(&off), MSG_RESOURCE_CONTROL_OFF);

    // Payload errors.
    let no_resource = s.job("shell_session", json!({"action": "open"}));
    s.denied(no_resource, "Missing resource_id in payload");
    let bad_action = s.session_on(&s.resource_id, "explode", json!({}));
    s.denied(bad_action, "Invalid shell session action");
    let no_session = s.session_on(&s.resource_id, "read", json!({}));
    s.denied(no_session, "Missing session_id in payload");
}
}

panorama_testkit::on_both_backends! {
fn a_resource_revoked_mid_session_closes_the_session() {
    let s = Setup::new();
    let r = s.resource_id.clone();
    let opened = s.open_bash(&r, json!({}));
    assert_eq!(opened["status"], "completed", "open: {opened}");
    let sid = session_id(&opened["result"]);
    let pid = s.shell_pid(&r, &sid);

    // Downgraded to viewer: reading is still allowed, writing revokes.
    s.patch("team_resources", &r, json!({"max_access_level": "viewer"}));
    let (text, _) = s.output_on(&r, &sid);
    assert!(text.contains("pid=["));
    let write = s.session_on(
        &r,
        "write",
        json!({"session_id": sid, "input": "echo hi\n"}),
    );
    let result = s.denied(write, MSG_VIEWER);
    assert_eq!(result["session_id"], sid.as_str());
    assert_eq!(result["status"], "closed");
    wait_process_gone(pid);
    let (_, page) = s.output_on(&r, &sid);
    assert_eq!(page["status"], "closed");
    let system: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "system")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert!(
        system.contains(&format!("Session closed: {MSG_VIEWER}").as_str()),
        "{system:?}"
    );

    // Deleted: the next read fails and revokes the session.
    let second = s.create_resource(json!({
        "metadata": {"gateway_id": s.gateway_id, "full_control": true},
    }));
    let opened = s.open_bash(&second, json!({}));
    assert_eq!(opened["status"], "completed", "open: {opened}");
    let sid2 = session_id(&opened["result"]);
    let pid2 = s.shell_pid(&second, &sid2);
    let deleted = s.rest(
        reqwest::Method::DELETE,
        "team_resources",
        &format!("id=eq.{second}"),
        None,
    );
    assert_eq!(deleted.len(), 1);
    let read = s.session_on(&second, "read", json!({"session_id": sid2}));
    let result = s.denied(read, MSG_NOT_FOUND);
    assert_eq!(result["status"], "closed");
    wait_process_gone(pid2);
    // The session is bound to its resource: another id is a mismatch.
    let mismatch = s.session_on(&r, "status", json!({"session_id": sid2}));
    s.denied(mismatch, "Shell session resource mismatch");
}
}

panorama_testkit::on_both_backends! {
fn shutdown_closes_running_sessions() {
    let mut s = Setup::new();
    let r = s.resource_id.clone();
    let opened = s.open_bash(&r, json!({}));
    assert_eq!(opened["status"], "completed", "open: {opened}");
    let sid = session_id(&opened["result"]);
    let pid = s.shell_pid(&r, &sid);
    let status = s.running.terminate(WAIT);
    assert!(status.success(), "gateway exit status {status:?}");
    assert!(!process_alive(pid), "the shell outlived the gateway");
    assert_eq!(s.gateway_row().unwrap()["status"], "offline");
}
}
