//! Shell jobs against real shells on real pseudo-terminals, without a hub:
//! the control plane is a [`ShellControlState`] test double.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use panorama_gateway::contain::pid_alive;
use panorama_gateway::shell::{
    handle_shell_exec_job, handle_shell_session_job, shell_outcome, GateInputs, ShellContext,
    ShellControlState, ShellIdentity, ShellJobError, ShellSessions, ShellSessionsConfig,
};
use panorama_protocol::capabilities::{
    Capabilities, HostCapability, ProviderCapability, Providers,
};
use panorama_protocol::jobs::ShellSessionJob;
use panorama_protocol::rows::TeamResourceRow;
use panorama_protocol::shell_gate::ControlState;
use serde_json::{json, Value};

// ------------------------------------------------------------------ harness

struct TestControl {
    inputs: Mutex<GateInputs>,
    resources: Mutex<HashMap<String, TeamResourceRow>>,
    resource_load_error: Mutex<bool>,
    cancelled: Mutex<bool>,
    /// The answer of `resolve_secret_placeholders_for_job`; `None`: the
    /// control plane does not offer it.
    secret_answer: Mutex<Option<Value>>,
}

#[async_trait]
impl ShellControlState for TestControl {
    async fn job_cancelled(&self, _job_id: &str) -> bool {
        *self.cancelled.lock().unwrap()
    }
    async fn load_gate_inputs(&self) -> GateInputs {
        self.inputs.lock().unwrap().clone()
    }
    async fn load_resource(&self, resource_id: &str) -> Result<Option<TeamResourceRow>, String> {
        if *self.resource_load_error.lock().unwrap() {
            return Err("connection refused".into());
        }
        Ok(self.resources.lock().unwrap().get(resource_id).cloned())
    }
    async fn resolve_secret_placeholders(&self, _job_id: &str) -> Result<Value, String> {
        self.secret_answer.lock().unwrap().clone().ok_or_else(|| {
            "Could not find the function public.resolve_secret_placeholders_for_job(p_job_id)"
                .into()
        })
    }
}

fn capabilities(machine_control: bool) -> Capabilities {
    let p = ProviderCapability::available(None);
    Capabilities::assemble(
        Providers {
            claude_code: p.clone(),
            codex: p.clone(),
            gemini: p,
        },
        HostCapability::gateway(None, machine_control),
        None,
    )
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn fresh_state() -> ControlState {
    ControlState {
        full_control_enabled: true,
        status: "ready".into(),
        last_seen_at: Some(iso(Utc::now())),
        capabilities: Some(capabilities(true)),
    }
}

fn resource(id: &str, rtype: &str, level: &str, metadata: Value) -> TeamResourceRow {
    serde_json::from_value(
        json!({"id": id, "team_id": "team-1", "resource_type": rtype,
        "max_access_level": level, "metadata": metadata}),
    )
    .unwrap()
}

fn good_resource() -> TeamResourceRow {
    resource(
        "res-1",
        "remote_shell",
        "editor",
        json!({"gateway_id": "gw-1", "full_control": true}),
    )
}

struct Harness {
    ctx: ShellContext,
    control: Arc<TestControl>,
    _tmp: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    fn with_config(tweak: impl FnOnce(&mut ShellSessionsConfig)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ShellSessionsConfig {
            tmp_dir: Some(tmp.path().to_path_buf()),
            base_env: Some(vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("HOME".into(), tmp.path().display().to_string()),
                ("PANORAMA_GATEWAY_SECRET".into(), "leak".into()),
                ("SUPABASE_SERVICE_ROLE_KEY".into(), "leak".into()),
                ("KEEP_ME".into(), "kept".into()),
            ]),
            ..Default::default()
        };
        tweak(&mut config);
        let control = Arc::new(TestControl {
            inputs: Mutex::new(GateInputs {
                install_full_control: true,
                control_state: Some(fresh_state()),
                gateway_vm_id: None,
            }),
            resources: Mutex::new(HashMap::from([("res-1".to_string(), good_resource())])),
            resource_load_error: Mutex::new(false),
            cancelled: Mutex::new(false),
            secret_answer: Mutex::new(None),
        });
        let ctx = ShellContext {
            sessions: Arc::new(ShellSessions::new(config)),
            control: control.clone(),
            job_id: "job-1".into(),
            identity: ShellIdentity {
                team_id: "team-1".into(),
                gateway_id: "gw-1".into(),
            },
        };
        Harness {
            ctx,
            control,
            _tmp: tmp,
        }
    }

    fn tmp(&self) -> PathBuf {
        self._tmp.path().to_path_buf()
    }

    async fn job(&self, payload: Value) -> Result<Value, ShellJobError> {
        handle_shell_session_job(&self.ctx, &ShellSessionJob::parse(&payload)).await
    }

    async fn open(&self, extra: Value) -> String {
        let mut payload = json!({"action": "open", "resource_id": "res-1",
            "shell": "/bin/bash", "shell_args": ["--norc", "--noprofile"], "env": {"PS1": "$ "}});
        if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
            p.extend(e);
        }
        let opened = self.job(payload).await.expect("open");
        opened["session_id"].as_str().unwrap().to_string()
    }

    async fn write(&self, sid: &str, input: &str) -> Value {
        self.job(
            json!({"action": "write", "resource_id": "res-1", "session_id": sid, "input": input}),
        )
        .await
        .expect("write")
    }

    async fn read(&self, sid: &str, since: u64, max: i64) -> Value {
        self.job(
            json!({"action": "read", "resource_id": "res-1", "session_id": sid,
            "since_sequence": since, "max_events": max}),
        )
        .await
        .expect("read")
    }

    /// Reads from `since` until the stdout text contains `needle`; returns
    /// the text and the last sequence seen.
    async fn read_until(&self, sid: &str, since: u64, needle: &str) -> (String, u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut text = String::new();
        let mut seq = since;
        loop {
            let page = self.read(sid, seq, 1000).await;
            for e in page["events"].as_array().unwrap() {
                seq = e["sequence"].as_u64().unwrap();
                if e["stream"] == "stdout" {
                    text.push_str(e["data"].as_str().unwrap());
                }
            }
            if text.contains(needle) {
                return (text, seq);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; got {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    fn set_resource(&self, r: TeamResourceRow) {
        self.control
            .resources
            .lock()
            .unwrap()
            .insert(r.id.clone(), r);
    }

    fn leader(&self, sid: &str) -> i32 {
        self.ctx.sessions.get(sid).unwrap().leader_pid
    }
}

async fn wait_dead(pids: &[i32], within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn err_message(e: &ShellJobError) -> &str {
    e.result["message"].as_str().unwrap()
}

// ------------------------------------------------------------------ sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_program_through_the_pty_with_paged_reads_and_close() {
    let h = Harness::new();
    let opened = h
        .job(
            json!({"action": "OPEN ", "resource_id": " res-1 ", "shell": "/bin/bash",
            "shell_args": ["--norc", "--noprofile"], "env": {"PS1": "$ "}}),
        )
        .await
        .unwrap();
    assert_eq!(opened["message"], "Shell session opened");
    assert_eq!(opened["status"], "running");
    assert_eq!(opened["resource_id"], "res-1");
    assert_eq!(opened["shell"], "/bin/bash");
    assert_eq!(opened["shell_args"], json!(["--norc", "--noprofile"]));
    assert_eq!(opened["cwd"], Value::Null);
    assert_eq!(opened["exit_code"], Value::Null);
    assert_eq!(opened["default_columns"], 120);
    assert_eq!(opened["default_rows"], 40);
    let sid = opened["session_id"].as_str().unwrap().to_string();
    assert_eq!(sid.len(), 36, "a random UUID");
    assert_eq!(h.ctx.sessions.running_count(), 1);

    let w = h
        .job(
            json!({"action": "write", "resource_id": "res-1", "session_id": sid,
            "input": "read -p 'name? ' n; echo \"hi $n\"", "append_newline": true}),
        )
        .await
        .unwrap();
    assert_eq!(w["message"], "Shell session input sent");
    assert_eq!(w["append_newline"], true);
    assert_eq!(
        w["bytes_written"],
        "read -p 'name? ' n; echo \"hi $n\"\n".len()
    );
    let (_, seq) = h.read_until(&sid, 0, "name? ").await;
    h.write(&sid, "alice\n").await;
    let (text, _) = h.read_until(&sid, seq, "hi alice").await;
    assert!(text.contains("alice"), "{text:?}");

    // Paging one event at a time yields exactly the full read.
    let all = h.read(&sid, 0, 1000).await;
    assert_eq!(all["message"], "Shell session output");
    assert_eq!(all["has_more"], false);
    let all_events = all["events"].as_array().unwrap().clone();
    let seqs: Vec<u64> = all_events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs[0], 1);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(all_events
        .iter()
        .any(|e| e["stream"] == "system"
            && e["data"] == "Session opened (/bin/bash --norc --noprofile)"));
    assert!(all_events
        .iter()
        .all(|e| e["stream"] != "stderr" && e["timestamp"].as_str().unwrap().ends_with('Z')));
    let mut since = 0;
    let mut paged = Vec::new();
    loop {
        let page = h.read(&sid, since, 1).await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["has_more"], false);
            break;
        }
        assert_eq!(events.len(), 1);
        assert_eq!(page["max_events"], 1);
        assert_eq!(page["since_sequence"], since);
        since = events[0]["sequence"].as_u64().unwrap();
        paged.push(events[0]["sequence"].as_u64().unwrap());
        if since < *seqs.last().unwrap() {
            assert_eq!(page["has_more"], true);
        }
    }
    assert_eq!(&paged[..seqs.len()], &seqs[..]);
    // Defaults and clamping: bad values fall back, max_events is clamped.
    let d = h
        .job(
            json!({"action": "read", "resource_id": "res-1", "session_id": sid,
            "since_sequence": "junk", "max_events": 5000}),
        )
        .await
        .unwrap();
    assert_eq!(d["since_sequence"], 0);
    assert_eq!(d["max_events"], 1000);
    assert!(d["latest_sequence"].as_u64().unwrap() >= *seqs.last().unwrap());

    let pid = h.leader(&sid);
    let closed = h
        .job(json!({"action": "close", "resource_id": "res-1", "session_id": sid}))
        .await
        .unwrap();
    assert_eq!(closed["message"], "Shell session closed");
    assert_eq!(closed["status"], "closed");
    assert_eq!(h.ctx.sessions.running_count(), 0);
    assert!(wait_dead(&[pid], Duration::from_secs(5)).await.is_empty());
    // Still readable; closing again succeeds; writing does not.
    let (text, _) = h.read_until(&sid, 0, "").await;
    assert!(text.contains("hi alice"));
    let events = h.read(&sid, 0, 1000).await["events"].clone();
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["data"] == "Session closed by request"));
    let again = h
        .job(json!({"action": "close", "resource_id": "res-1", "session_id": sid}))
        .await
        .unwrap();
    assert_eq!(again["status"], "closed");
    let e = h
        .job(json!({"action": "write", "resource_id": "res-1", "session_id": sid, "input": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session is not writable (status: closed)");
    assert_eq!(e.result["session_id"], sid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_defaults_scrubbing_and_cwd() {
    let h = Harness::new();
    let cwd = h.tmp().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let sid = h
        .open(json!({"cwd": cwd.display().to_string(), "env": {"PS1": "$ ", "N": 3, "B": true}}))
        .await;
    assert_eq!(
        h.ctx.sessions.get(&sid).unwrap().summary().cwd.as_deref(),
        Some(cwd.to_str().unwrap())
    );
    h.write(
        &sid,
        "echo \"T=$TERM C=$COLUMNS L=$LINES N=$N B=$B S=[$PANORAMA_GATEWAY_SECRET$SUPABASE_SERVICE_ROLE_KEY] K=$KEEP_ME\"; pwd; echo \"TMP=$TMPDIR\"\n",
    )
    .await;
    let (text, _) = h.read_until(&sid, 0, "TMP=/").await;
    assert!(
        text.contains("T=xterm-256color C=120 L=40 N=3 B=true S=[] K=kept"),
        "{text:?}"
    );
    assert!(text.contains(cwd.to_str().unwrap()), "{text:?}");
    assert!(
        text.contains(&format!("TMP={}", h.tmp().display())),
        "{text:?}"
    );
    h.ctx.sessions.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_changes_the_terminal_size() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    h.write(&sid, "stty size\n").await;
    let (_, seq) = h.read_until(&sid, 0, "40 120").await;
    let r = h
        .job(json!({"action": "resize", "resource_id": "res-1", "session_id": sid, "cols": 100, "rows": 30}))
        .await
        .unwrap();
    assert_eq!(r["message"], "Shell session resized");
    assert_eq!(
        (r["columns"].clone(), r["rows"].clone()),
        (json!(100), json!(30))
    );
    h.write(&sid, "stty size\n").await;
    h.read_until(&sid, seq, "30 100").await;
    let bad = h
        .job(json!({"action": "resize", "resource_id": "res-1", "session_id": sid, "cols": 0, "rows": 30}))
        .await
        .unwrap_err();
    assert_eq!(
        bad.error,
        "Invalid resize dimensions in payload (expected cols and rows from 1 to 1000)"
    );
    // Env COLUMNS/LINES set the initial size.
    let sid2 = h
        .open(json!({"env": {"PS1": "$ ", "COLUMNS": "90", "LINES": "20"}}))
        .await;
    h.write(&sid2, "stty size\n").await;
    h.read_until(&sid2, 0, "20 90").await;
    h.ctx.sessions.close_all().await;
    let e = h
        .job(json!({"action": "resize", "resource_id": "res-1", "session_id": sid, "cols": 10, "rows": 10}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session is not resizable (status: closed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_is_recorded_and_session_becomes_unwritable() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    h.write(&sid, "exit 7\n").await;
    h.read_until(&sid, 0, "").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h
            .job(json!({"action": "status", "resource_id": "res-1", "session_id": sid}))
            .await
            .unwrap();
        if s["status"] == "exited" {
            assert_eq!(s["message"], "Shell session status");
            assert_eq!(s["exit_code"], 7);
            break;
        }
        assert!(Instant::now() < deadline, "never exited: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = h.read(&sid, 0, 1000).await["events"].clone();
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["stream"] == "system" && e["data"] == "Session exited with code 7"));
    let e = h
        .job(json!({"action": "write", "resource_id": "res-1", "session_id": sid, "input": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session is not writable (status: exited)");
    assert_eq!(h.ctx.sessions.running_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_running_sessions_at_most_and_close_all() {
    let h = Harness::new();
    let mut ids = Vec::new();
    for _ in 0..64 {
        let sid = h
            .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh"}))
            .await
            .unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        ids.push(sid);
    }
    assert_eq!(h.ctx.sessions.running_count(), 64);
    let e = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Too many active shell sessions (max 64)");
    assert_eq!(
        e.result,
        json!({"message": "Too many active shell sessions (max 64)", "max_active_sessions": 64})
    );
    // Closed sessions do not count.
    h.job(json!({"action": "close", "resource_id": "res-1", "session_id": ids[0]}))
        .await
        .unwrap();
    h.job(
        json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh", "session_id": "mine"}),
    )
    .await
    .unwrap();
    let dup = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh", "session_id": "mine"}))
        .await;
    // The cap is checked first.
    assert_eq!(
        dup.unwrap_err().error,
        "Too many active shell sessions (max 64)"
    );
    let pids: Vec<i32> = ids
        .iter()
        .chain(std::iter::once(&"mine".to_string()))
        .map(|s| h.leader(s))
        .collect();
    h.ctx.sessions.close_all().await;
    assert_eq!(h.ctx.sessions.running_count(), 0);
    assert!(wait_dead(&pids, Duration::from_secs(1)).await.is_empty());
    let dup = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh", "session_id": "mine"}))
        .await
        .unwrap_err();
    assert_eq!(dup.error, "Shell session ID already exists");
    assert_eq!(dup.result["session_id"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_buffer_is_capped_by_events_and_bytes() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    h.write(
        &sid,
        "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo DONE-$((40+2))\n",
    )
    .await;
    h.read_until(&sid, 0, "DONE-42").await;
    let (events, bytes, first) = h.ctx.sessions.get(&sid).unwrap().buffer_stats();
    assert!(events <= 800, "{events}");
    assert!(bytes <= 1_000_000, "{bytes}");
    assert!(bytes > 900_000, "{bytes}");
    let first = first.unwrap();
    assert!(first > 1, "old events were evicted");
    let page = h.read(&sid, 0, 5).await;
    assert_eq!(page["events"][0]["sequence"].as_u64().unwrap(), first);
    assert_eq!(page["has_more"], true);
    // Many small events: capped at 800.
    h.write(
        &sid,
        "for i in $(seq 1 3000); do echo line$i; sleep 0.0005; done; echo END\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = h.read(&sid, 0, 1000).await;
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 800);
        if events
            .iter()
            .any(|e| e["data"].as_str().unwrap().contains("END"))
        {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.ctx.sessions.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_running_sessions_expire_after_fifteen_minutes() {
    let now = Arc::new(Mutex::new(Utc::now()));
    let clock_now = now.clone();
    let h = Harness::with_config(move |c| {
        c.clock = Arc::new(move || *clock_now.lock().unwrap());
    });
    let advance = |mins: i64| {
        let mut t = now.lock().unwrap();
        *t += chrono::Duration::minutes(mins);
        // Keep the heartbeat fresh relative to the moved clock.
        let mut inputs = h.control.inputs.lock().unwrap();
        inputs.control_state.as_mut().unwrap().last_seen_at = Some(iso(*t));
    };
    let closed = h.open(json!({})).await;
    let running = h.open(json!({})).await;
    h.job(json!({"action": "close", "resource_id": "res-1", "session_id": closed}))
        .await
        .unwrap();
    h.ctx.sessions.wait_for_terminations().await;
    // Let the exit event land, then restart the clock from there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.ctx
        .sessions
        .get(&closed)
        .unwrap()
        .set_updated_at(&iso(*now.lock().unwrap()));
    advance(14);
    let s = h
        .job(json!({"action": "status", "resource_id": "res-1", "session_id": closed}))
        .await
        .unwrap();
    assert_eq!(s["status"], "closed");
    advance(1);
    let e = h
        .job(json!({"action": "status", "resource_id": "res-1", "session_id": closed}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session not found or expired");
    assert_eq!(e.result["session_id"], closed.as_str());
    // Running sessions never expire.
    advance(600);
    let s = h
        .job(json!({"action": "status", "resource_id": "res-1", "session_id": running}))
        .await
        .unwrap();
    assert_eq!(s["status"], "running");
    // An unparsable updated_at is purged at once (once not running).
    h.job(json!({"action": "close", "resource_id": "res-1", "session_id": running}))
        .await
        .unwrap();
    h.ctx.sessions.wait_for_terminations().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.ctx
        .sessions
        .get(&running)
        .unwrap()
        .set_updated_at("not a date");
    let e = h
        .job(json!({"action": "read", "resource_id": "res-1", "session_id": running}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session not found or expired");
    assert!(h.ctx.sessions.is_empty());
}

// ------------------------------------------------------------------ denials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_control_denials_in_order() {
    let h = Harness::new();
    let open = json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh"});
    let set = |f: &dyn Fn(&mut GateInputs)| f(&mut h.control.inputs.lock().unwrap());

    set(&|i| i.install_full_control = false);
    let e = h.job(open.clone()).await.unwrap_err();
    assert_eq!(e.error, "Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host.");
    assert_eq!(e.result, json!({"message": e.error}));

    set(&|i| {
        i.install_full_control = true;
        i.control_state.as_mut().unwrap().full_control_enabled = false;
    });
    let e = h.job(open.clone()).await.unwrap_err();
    assert_eq!(
        e.error,
        "Gateway connection full control is disabled by team settings."
    );

    set(&|i| {
        let s = i.control_state.as_mut().unwrap();
        s.full_control_enabled = true;
        s.last_seen_at = Some(iso(Utc::now() - chrono::Duration::seconds(120)));
    });
    let e = h.job(open.clone()).await.unwrap_err();
    assert_eq!(e.error, "Gateway is offline or heartbeat is stale");

    set(&|i| {
        let s = i.control_state.as_mut().unwrap();
        s.last_seen_at = Some(iso(Utc::now()));
        s.status = "pending".into();
    });
    assert_eq!(
        h.job(open.clone()).await.unwrap_err().error,
        "Gateway is offline or heartbeat is stale"
    );

    set(&|i| i.control_state = None);
    assert_eq!(
        h.job(open.clone()).await.unwrap_err().error,
        "Gateway control state unavailable"
    );

    set(&|i| i.control_state = Some(fresh_state()));
    *h.control.cancelled.lock().unwrap() = true;
    let e = h.job(open.clone()).await.unwrap_err();
    assert_eq!(
        e.result,
        json!({"message": "Gateway shell session job was cancelled before execution", "cancelled": true})
    );
    let outcome = shell_outcome(Err(e));
    assert!(!outcome.ok);
    assert_eq!(
        outcome.error.as_deref(),
        Some("Gateway shell session job was cancelled before execution")
    );
    *h.control.cancelled.lock().unwrap() = false;

    // Action and resource_id come after the gate.
    let e = h
        .job(json!({"action": "exec", "resource_id": "res-1"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Invalid shell session action");
    let e = h
        .job(json!({"action": "read", "resource_id": "  "}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Missing resource_id in payload");
    assert_eq!(h.ctx.sessions.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_denials_on_open() {
    let h = Harness::new();
    let cases: Vec<(TeamResourceRow, &str)> = vec![
        (
            resource("res-1", "database", "editor", json!({"gateway_id": "gw-1", "full_control": true})),
            "Resource is not a remote shell target (found database)",
        ),
        (
            resource("res-1", "remote_shell", "viewer", json!({"gateway_id": "gw-1", "full_control": true})),
            "Remote shell resource is configured for viewer access. Full access is required for this action.",
        ),
        (
            resource("res-1", "remote_shell", "editor", json!({"gateway_id": "gw-2", "full_control": true})),
            "Remote shell resource targets a different gateway",
        ),
        (
            resource("res-1", "remote_shell", "editor", json!({"full_control": true})),
            "Remote shell resource is missing metadata.gateway_id",
        ),
        (
            resource("res-1", "remote_shell", "editor", json!({"gateway_id": "gw-1", "full_control": false})),
            "Remote shell resource machine control is disabled",
        ),
    ];
    for (row, message) in cases {
        h.set_resource(row);
        let e = h
            .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh"}))
            .await
            .unwrap_err();
        assert_eq!(e.error, message);
        assert_eq!(
            e.result,
            json!({"message": message, "resource_id": "res-1"})
        );
    }
    let mut other_team = good_resource();
    other_team.team_id = "team-2".into();
    h.set_resource(other_team);
    assert_eq!(
        h.job(json!({"action": "open", "resource_id": "res-1"}))
            .await
            .unwrap_err()
            .error,
        "Remote shell resource belongs to another team"
    );
    assert_eq!(
        h.job(json!({"action": "open", "resource_id": "res-404"}))
            .await
            .unwrap_err()
            .error,
        "Remote shell resource not found"
    );
    *h.control.resource_load_error.lock().unwrap() = true;
    assert_eq!(
        h.job(json!({"action": "open", "resource_id": "res-1"}))
            .await
            .unwrap_err()
            .error,
        "Failed to load remote shell resource"
    );
    assert_eq!(h.ctx.sessions.running_count(), 0, "nothing was spawned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_may_read_but_a_write_revokes_the_session() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    let pid = h.leader(&sid);
    h.set_resource(resource(
        "res-1",
        "remote_shell",
        "viewer",
        json!({"gateway_id": "gw-1", "full_control": true}),
    ));
    let s = h
        .job(json!({"action": "status", "resource_id": "res-1", "session_id": sid}))
        .await
        .unwrap();
    assert_eq!(s["status"], "running");
    h.read(&sid, 0, 10).await;
    let e = h
        .job(json!({"action": "write", "resource_id": "res-1", "session_id": sid, "input": "ls\n"}))
        .await
        .unwrap_err();
    let msg = "Remote shell resource is configured for viewer access. Full access is required for this action.";
    assert_eq!(e.error, msg);
    assert_eq!(err_message(&e), msg);
    assert_eq!(e.result["status"], "closed");
    assert_eq!(e.result["session_id"], sid.as_str());
    assert!(wait_dead(&[pid], Duration::from_secs(5)).await.is_empty());
    let events = h.read(&sid, 0, 1000).await["events"].clone();
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["data"] == format!("Session closed: {msg}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_mid_session_kills_the_whole_tree() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    let pidfile = h.tmp().join("bg.pid");
    // A background job that ignores SIGTERM and SIGHUP, in its own process
    // group (bash job control), plus a nohup'd one.
    h.write(
        &sid,
        &format!(
            "(trap '' TERM HUP; sleep 300) & echo $! > {p}; nohup sleep 300 >/dev/null 2>&1 & echo $! >> {p}; echo STARTED\n",
            p = pidfile.display()
        ),
    )
    .await;
    h.read_until(&sid, 0, "STARTED\r\n").await;
    let mut pids: Vec<i32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    pids.push(h.leader(&sid));
    assert!(pids.iter().all(|p| pid_alive(*p)));

    h.set_resource(resource(
        "res-1",
        "remote_shell",
        "editor",
        json!({"gateway_id": "gw-1", "full_control": false}),
    ));
    let e = h.read_until_err(&sid).await;
    assert_eq!(e.error, "Remote shell resource machine control is disabled");
    assert_eq!(e.result["status"], "closed");
    assert_eq!(h.ctx.sessions.running_count(), 0);
    assert_eq!(
        wait_dead(&pids, Duration::from_secs(6)).await,
        Vec::<i32>::new(),
        "no process of the tree survives"
    );
}

impl Harness {
    async fn read_until_err(&self, sid: &str) -> ShellJobError {
        self.job(json!({"action": "read", "resource_id": "res-1", "session_id": sid}))
            .await
            .unwrap_err()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_session_checks_and_open_failures() {
    let h = Harness::new();
    let sid = h.open(json!({})).await;
    let e = h
        .job(json!({"action": "read", "resource_id": "res-1"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Missing session_id in payload");
    let e = h
        .job(json!({"action": "read", "resource_id": "res-1", "session_id": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.result,
        json!({"message": "Shell session not found or expired", "session_id": "nope"})
    );
    h.set_resource(resource(
        "res-2",
        "remote_shell",
        "editor",
        json!({"gateway_id": "gw-1", "full_control": true}),
    ));
    let e = h
        .job(json!({"action": "read", "resource_id": "res-2", "session_id": sid}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Shell session resource mismatch");
    let other = ShellContext {
        identity: ShellIdentity {
            team_id: "team-1".into(),
            gateway_id: "gw-other".into(),
        },
        ..h.ctx.clone()
    };
    let e = handle_shell_session_job(
        &other,
        &ShellSessionJob::parse(
            &json!({"action": "status", "resource_id": "res-1", "session_id": sid}),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "Shell session belongs to another gateway context");
    let e = h
        .job(json!({"action": "write", "resource_id": "res-1", "session_id": sid, "input": 5}))
        .await
        .unwrap_err();
    assert_eq!(
        e.result,
        json!({"message": "Missing input in payload", "session_id": sid})
    );
    // Empty input is valid.
    assert_eq!(h.write(&sid, "").await["bytes_written"], 0);

    let e = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell": "/nonexistent/zsh"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.error,
        "Failed to open shell session: spawn /nonexistent/zsh ENOENT"
    );
    let e = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh", "cwd": "/nonexistent/dir"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.error,
        "Failed to open shell session: spawn /bin/sh ENOENT"
    );
    // The startup check is best-effort by design (runtime.md §3.3: a
    // process that exits a moment after the short startup turn counts as
    // started). On a loaded machine `sh -c "exit 3"` can outlive that turn,
    // so try a few times: the check must catch it when it exits in time,
    // and a miss must be an ordinary opened session (closed again here).
    let mut caught = None;
    for _ in 0..10 {
        match h
            .job(json!({"action": "open", "resource_id": "res-1", "shell": "/bin/sh", "shell_args": ["-c", "exit 3"]}))
            .await
        {
            Err(e) => {
                caught = Some(e.error);
                break;
            }
            Ok(opened) => {
                assert_eq!(opened["message"], "Shell session opened");
                let session_id = opened["session_id"].as_str().unwrap();
                let _ = h
                    .job(json!({"action": "close", "resource_id": "res-1", "session_id": session_id}))
                    .await;
            }
        }
    }
    assert_eq!(
        caught.as_deref(),
        Some("Failed to open shell session: Process exited during startup (code 3)")
    );
    let e = h
        .job(json!({"action": "open", "resource_id": "res-1", "shell_args": "-l"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Invalid shell_args in payload");
    assert_eq!(
        err_message(&e),
        "Invalid shell_args in payload (expected string array)"
    );
    let e = h
        .job(json!({"action": "open", "resource_id": "res-1", "env": {"A": [1]}}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Invalid env in payload");
    assert_eq!(
        err_message(&e),
        "Invalid env in payload (expected string/number/boolean map)"
    );
    assert_eq!(h.ctx.sessions.running_count(), 1);
    h.ctx.sessions.close_all().await;
}

// ------------------------------------------------------------------ shell_exec

async fn exec(h: &Harness, payload: Value) -> Result<Value, ShellJobError> {
    let job = panorama_protocol::jobs::ShellExecJob::parse(&payload);
    handle_shell_exec_job(&h.ctx, &job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_output_exit_code_and_truncation() {
    let h = Harness::new();
    let r = exec(
        &h,
        json!({"resource_id": "res-1", "command": "pwd; echo \"K=$KEEP_ME S=$PANORAMA_GATEWAY_SECRET\"; echo oops >&2; exit 3"}),
    )
    .await
    .unwrap();
    assert_eq!(
        r["message"],
        "Remote shell command completed with a non-zero exit status"
    );
    assert_eq!(r["stdout"], "/\nK=kept S=\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["success"], false);
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["cwd"], "/");
    assert_eq!(r["resource_id"], "res-1");
    assert_eq!(r["shell"], "/bin/bash");
    // True where the command ran in a cgroup of its own (contain module).
    assert_eq!(
        r["process_tree_contained"],
        panorama_gateway::contain::current().is_cgroup()
    );
    // As the later generation writes it: `error` is only a spawn error.
    assert_eq!(r["error"], Value::Null);

    let ok = exec(&h, json!({"resource_id": "res-1", "command": "echo hello"}))
        .await
        .unwrap();
    assert_eq!(ok["message"], "Remote shell command completed");
    assert_eq!(ok["success"], true);
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["stdout"], "hello\n");

    let big = exec(
        &h,
        json!({"resource_id": "res-1", "command": "head -c 6000000 /dev/zero | tr '\\0' x; echo small >&2"}),
    )
    .await
    .unwrap();
    assert_eq!(big["stdout"].as_str().unwrap().len(), 5_000_000);
    assert_eq!(big["stdout_truncated"], true);
    assert_eq!(big["stderr_truncated"], false);
    assert_eq!(big["output_truncated"], true);
    assert_eq!(big["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_timeout_kills_a_tree_that_ignores_sigterm() {
    let h = Harness::with_config(|c| c.kill_grace = Duration::from_millis(500));
    let f = h.tmp().join("tree.pids");
    let command = format!(
        "trap '' TERM; echo $$ >> {f}; \
         for i in 1 2; do (trap '' TERM; sh -c 'trap \"\" TERM; echo $$ >> {f}; sleep 300' & echo $! >> {f}; wait) & echo $! >> {f}; done; \
         (setsid sh -c 'trap \"\" TERM; echo $$ >> {f}; sleep 300' &); \
         echo started; wait",
        f = f.display()
    );
    let started = Instant::now();
    let r = exec(
        &h,
        json!({"resource_id": "res-1", "command": command, "timeout_ms": 700}),
    )
    .await
    .unwrap();
    assert_eq!(r["message"], "Remote shell command timed out");
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["success"], false);
    assert_eq!(r["stdout"], "started\n");
    assert_eq!(r["error"], Value::Null);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pids: Vec<i32> = std::fs::read_to_string(&f)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.len() >= 6, "{pids:?}");
    assert_eq!(
        wait_dead(&pids, Duration::from_secs(2)).await,
        Vec::<i32>::new(),
        "no PID of the tree survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_gate_and_payload_denials() {
    let h = Harness::new();
    let e = exec(&h, json!({"resource_id": "res-1", "command": "  "}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Missing command in payload");
    // As 2.32.167 writes it: the checked resource beside the message.
    assert_eq!(
        e.result,
        json!({"message": "Missing command in payload", "resource_id": "res-1"})
    );
    let e = exec(&h, json!({"command": "true"})).await.unwrap_err();
    assert_eq!(e.error, "Missing resource_id in payload");
    // secret_env: the control plane must resolve every name, with values.
    let with_secret =
        json!({"resource_id": "res-1", "command": "true", "secret_env": {"TOKEN": "my-secret"}});
    let e = exec(&h, with_secret.clone()).await.unwrap_err();
    assert_eq!(
        e.error,
        "Failed to resolve team secrets: Could not find the function public.resolve_secret_placeholders_for_job(p_job_id)"
    );
    assert_eq!(e.result["resource_id"], "res-1");
    const P: &str = "pano_sec_0123456789abcdef0123456789abcdef0123";
    *h.control.secret_answer.lock().unwrap() =
        Some(json!([{"env_name": "TOKEN", "secret_name": "my-secret", "placeholder": P}]));
    let e = exec(&h, with_secret.clone()).await.unwrap_err();
    assert_eq!(
        e.error, "Team secrets can only be injected inside a managed VM",
        "aliases alone are useless outside a VM"
    );
    *h.control.secret_answer.lock().unwrap() = Some(json!([]));
    let e = exec(&h, with_secret.clone()).await.unwrap_err();
    assert_eq!(
        e.error,
        "Team secret alias response was incomplete or invalid"
    );
    let e = exec(
        &h,
        json!({"resource_id": "res-1", "command": "true", "secret_env": {"TOKEN": ""}}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.error,
        "Team secret request contains an invalid secret name"
    );
    // Resolved: the value is in the child's environment only; output that
    // prints it shows the placeholder.
    *h.control.secret_answer.lock().unwrap() = Some(json!([
        {"env_name": "TOKEN", "secret_name": "my-secret", "placeholder": P, "value": "hunter2-value"}
    ]));
    let seen = h.tmp().join("seen-token");
    let r = exec(
        &h,
        json!({"resource_id": "res-1", "secret_env": {"TOKEN": "my-secret"},
               "command": format!("printf %s \"$TOKEN\" > {}; echo \"T=$TOKEN\"; echo \"$TOKEN\" >&2", seen.display())}),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "hunter2-value");
    assert_eq!(r["stdout"], format!("T={P}\n"));
    assert_eq!(r["stderr"], format!("{P}\n"));
    assert!(!r.to_string().contains("hunter2-value"), "{r}");
    h.set_resource(resource(
        "res-1",
        "remote_shell",
        "editor",
        json!({"full_control": true}),
    ));
    let e = exec(&h, json!({"resource_id": "res-1", "command": "true"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.error,
        "Remote shell resource is missing metadata.gateway_id or metadata.vm_id"
    );
    // Later gate order: stale, team, install, machine_control service.
    h.control.inputs.lock().unwrap().control_state = Some(ControlState {
        capabilities: Some(capabilities(false)),
        status: "pending".into(),
        ..fresh_state()
    });
    let e = exec(&h, json!({"resource_id": "res-1", "command": "true"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Gateway machine control service is unavailable.");
    h.control.inputs.lock().unwrap().install_full_control = false;
    let e = exec(&h, json!({"resource_id": "res-1", "command": "true"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.");
    *h.control.cancelled.lock().unwrap() = true;
    let e = exec(&h, json!({"resource_id": "res-1", "command": "true"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.result,
        json!({"message": "Gateway remote shell exec job was cancelled before execution", "cancelled": true})
    );
}
