//! Delegated runs end to end: a real hub, the real gateway binary and
//! `panorama-fake-agent` symlinked as `claude`/`codex`/`gemini` on a temp
//! PATH. Every network call is on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use panorama_testkit::{procs, GatewayHost, Hub, PairedGateway, RunningGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(40);

/// `start --foreground` on `host` (the fake agent as every CLI), with
/// secrets in the gateway's environment that no child may see.
fn start(host: &GatewayHost, hub: &Hub, env: &[(&str, String)]) -> RunningGateway {
    let mut cmd = host.command(hub, &["start", "--foreground"]);
    cmd.env("SUPABASE_SERVICE_ROLE_KEY", "service-role-secret")
        .env("OPENROUTER_API_KEY", "openrouter-secret")
        .env("PANORAMA_SUPABASE_ANON_KEY", hub.anon_key.as_str())
        .env("FAKE_AGENT_LOG", host.path("agent-log.jsonl"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    host.spawn(cmd)
}

/// Every run the fake agent logged on `host`.
fn agent_log(host: &GatewayHost) -> Vec<Value> {
    std::fs::read_to_string(host.path("agent-log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

struct Setup {
    hub: Hub,
    machine: GatewayHost,
    gw: PairedGateway,
    running: RunningGateway,
}

fn setup(full_control: bool, env: &[(&str, String)]) -> Setup {
    let hub = Hub::start();
    let mut machine = GatewayHost::new();
    machine.device_name = "agent-box".into();
    let team = hub.create_team("delegated-team");
    let gw = hub.pair(&team, "agent-box");
    if full_control {
        hub.set_full_control(&gw.gateway_id, true);
    }
    machine.write_config(&hub, &gw, full_control);
    let running = start(&machine, &hub, env);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    Setup {
        hub,
        machine,
        gw,
        running,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.machine.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- gateway log (last lines, newest first) ---\n{}",
                tail.join("\n")
            );
            let agents =
                std::fs::read_to_string(self.machine.path("agent-log.jsonl")).unwrap_or_default();
            eprintln!("--- agent log ---\n{agents}");
        }
    }
}

impl Setup {
    fn subagent(
        &self,
        subagent_type: &str,
        config: Value,
        input: Value,
        metadata: Value,
    ) -> String {
        let id = new_id();
        self.hub.insert(
            "subagents",
            json!({"id": id, "team_id": self.gw.team_id, "gateway_id": self.gw.gateway_id,
                   "subagent_type": subagent_type, "status": "idle", "config": config,
                   "input": input, "metadata": metadata}),
        );
        id
    }

    fn job(&self, job_type: &str, payload: Value) -> String {
        self.hub.insert(
            "gateway_jobs",
            json!({"team_id": self.gw.team_id, "gateway_id": self.gw.gateway_id, "job_type": job_type, "payload": payload}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn job_row(&self, id: &str) -> Value {
        self.hub
            .select("gateway_jobs", &format!("id=eq.{id}&select=*"))
            .remove(0)
    }

    fn wait_job(&self, id: &str) -> Value {
        self.hub.wait_for(&format!("job {id}"), WAIT, || {
            let row = self.job_row(id);
            matches!(
                row["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
            .then_some(row)
        })
    }

    fn events(&self, run_id: &str) -> Vec<Value> {
        self.hub.select(
            "subagent_run_events",
            &format!("run_id=eq.{run_id}&select=*&order=sequence.asc"),
        )
    }

    fn types(&self, run_id: &str) -> Vec<String> {
        self.events(run_id)
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect()
    }

    fn row(&self, table: &str, id: &str) -> Value {
        self.hub
            .select(table, &format!("id=eq.{id}&select=*"))
            .remove(0)
    }

    /// Waits for the terminal event of a run and returns the event types.
    fn wait_terminal_events(&self, run_id: &str) -> Vec<String> {
        self.hub.wait_for("terminal run event", WAIT, || {
            let t = self.types(run_id);
            t.iter()
                .any(|t| matches!(t.as_str(), "run_completed" | "run_failed" | "run_cancelled"))
                .then_some(t)
        })
    }
}

fn assert_dense(events: &[Value]) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "sequences must be dense from 0 without duplicates"
    );
}

fn iso_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("timestamp")
        .timestamp_millis()
}

/// Held by the live-lag measurement: its twin on the other backend would
/// otherwise run at the same time (adjacent names) and, on a 2-core box,
/// the two would measure each other rather than the gateway and the hub.
static LAG_MEASUREMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

panorama_testkit::on_both_backends! {
fn claude_stream_run_is_live_in_order_and_completes() {
    let _alone = LAG_MEASUREMENT.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: usize = 200;
    const DELAY_MS: i64 = 20;
    let transcripts = tempfile::tempdir().unwrap();
    let mut body = String::from(
        "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"sess-live\",\"model\":\"m\"}\n",
    );
    for i in 0..LINES {
        body.push_str(&format!(
            "{{\"type\":\"assistant\",\"message\":{{\"id\":\"msg_{i}\",\"role\":\"assistant\",\"content\":[{{\"type\":\"tool_use\",\"id\":\"tu_{i}\",\"name\":\"Read\",\"input\":{{\"file_path\":\"/f{i}\"}}}}]}}}}\n"
        ));
    }
    body.push_str("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"All read.\",\"session_id\":\"sess-live\",\"total_cost_usd\":0.01,\"usage\":{\"input_tokens\":1}}\n");
    std::fs::write(transcripts.path().join("slow.jsonl"), body).unwrap();
    let s = setup(
        false,
        &[
            (
                "FAKE_AGENT_TRANSCRIPT_DIR",
                transcripts.path().display().to_string(),
            ),
            ("FAKE_AGENT_LINE_DELAY_MS", DELAY_MS.to_string()),
        ],
    );
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "Read every file [[fake:slow]]"}),
        json!({}),
    );
    let run_id = new_id();
    let job = s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    // Events show up while the agent (and the job) is still running.
    s.hub.wait_for("live events", WAIT, || {
        let n = s.events(&run_id).len();
        (n > 20 && s.job_row(&job)["status"] == "running").then_some(())
    });
    let row = s.wait_job(&job);
    assert_eq!(row["status"], "completed", "job: {row}");
    assert_eq!(row["result"]["status"], "completed");
    assert_eq!(row["result"]["output"]["content"], "All read.");
    assert_eq!(row["result"]["output"]["content_type"], "markdown");
    let types = s.wait_terminal_events(&run_id);
    let events = s.events(&run_id);
    assert_dense(&events);
    assert_eq!(types.len(), LINES + 3, "types: {types:?}");
    assert_eq!(types[0], "run_started");
    assert_eq!(types[1], "run_progress");
    assert!(types[2..2 + LINES].iter().all(|t| t == "tool_call"));
    assert_eq!(types[LINES + 2], "run_completed");
    for (i, e) in events[2..2 + LINES].iter().enumerate() {
        assert_eq!(e["payload"]["tool_use_id"], format!("tu_{i}"));
    }
    let run = s.hub.wait_for("run completed", WAIT, || {
        Some(s.row("subagent_runs", &run_id)).filter(|r| r["status"] == "completed")
    });
    assert_eq!(run["metadata"]["session_id"], "sess-live");
    assert_eq!(run["metadata"]["output_format"], "stream-json");
    assert_eq!(run["metadata"]["adapter_id"], "claude_code");
    let sub = s.hub.wait_for("subagent completed", WAIT, || {
        Some(s.row("subagents", &sid)).filter(|r| r["status"] == "completed")
    });
    assert_eq!(sub["metadata"]["current_run_id"], run_id.as_str());

    // Lag: line i is written at agent start + i·delay (an upper bound on
    // the real write time is later, so this over-estimates the lag).
    let start = agent_log(&s.machine)
        .into_iter()
        .find(|l| l["role"] == "agent" && l["argv"].to_string().contains("stream-json"))
        .expect("agent log")["ts_ms"]
        .as_i64()
        .unwrap();
    let mut lags: Vec<i64> = events[2..2 + LINES]
        .iter()
        .enumerate()
        .map(|(i, e)| iso_ms(e["created_at"].as_str().unwrap()) - (start + i as i64 * DELAY_MS))
        .collect();
    lags.sort();
    let p50 = lags[LINES / 2];
    let p99 = lags[(LINES * 99) / 100 - 1];
    eprintln!(
        "live-event lag over {LINES} lines: p50={p50} ms p99={p99} ms max={} ms",
        lags[LINES - 1]
    );
    assert!(p99 <= 250, "p99 lag {p99} ms > 250 ms (lags: {lags:?})");
}
}

panorama_testkit::on_both_backends! {
/// runtime.md §3.4 / providers.md §7: the stream keeps the LAST 2,000
/// entries, oldest dropped. Live rows cannot be taken back, so the first
/// 2,000 lines are live and of the later ones the newest 2,000 are stored
/// when the stream ends; the lines in between are the dropped ones.
fn stream_past_the_event_cap_keeps_the_last_lines() {
    const CAP: usize = 2_000;
    const LINES: usize = 4_500;
    let transcripts = tempfile::tempdir().unwrap();
    let mut body = String::from(
        "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"sess-cap\",\"model\":\"m\"}\n",
    );
    for i in 0..LINES {
        body.push_str(&format!(
            "{{\"type\":\"assistant\",\"message\":{{\"id\":\"msg_{i}\",\"role\":\"assistant\",\"content\":[{{\"type\":\"tool_use\",\"id\":\"tu_{i}\",\"name\":\"Read\",\"input\":{{\"file_path\":\"/f{i}\"}}}}]}}}}\n"
        ));
    }
    body.push_str("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"Last answer.\",\"session_id\":\"sess-cap\",\"total_cost_usd\":0.01}\n");
    std::fs::write(transcripts.path().join("long.jsonl"), body).unwrap();
    let s = setup(
        false,
        &[(
            "FAKE_AGENT_TRANSCRIPT_DIR",
            transcripts.path().display().to_string(),
        )],
    );
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "Read everything [[fake:long]]"}),
        json!({}),
    );
    let run_id = new_id();
    let row = s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    ));
    assert_eq!(row["status"], "completed", "job: {row}");
    assert_eq!(row["result"]["output"]["content"], "Last answer.");
    s.wait_terminal_events(&run_id);
    let events = s.events(&run_id);
    assert_dense(&events);
    let stored: Vec<usize> = events
        .iter()
        .filter(|e| e["event_type"] == "tool_call")
        .map(|e| {
            e["payload"]["tool_use_id"].as_str().unwrap()["tu_".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    // Stdout lines: init (line 1), tu_i (line i + 2), result (last). Lines
    // 1..=CAP are live: init plus tu_0..tu_{CAP-2}. The last CAP lines are
    // tu_{LINES-CAP+1}..tu_{LINES-1} plus the result line.
    let total_lines = LINES + 2;
    let dropped = total_lines - 2 * CAP;
    let expected: Vec<usize> = (0..CAP - 1).chain(LINES - CAP + 1..LINES).collect();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(stored, expected, "tool calls stored, in sequence order");
    assert_eq!(
        *stored.last().unwrap(),
        LINES - 1,
        "the newest line is never dropped"
    );
    let notice = events
        .iter()
        .find(|e| e["payload"]["kind"] == "stream_truncated")
        .expect("a stream_truncated system event");
    assert_eq!(notice["event_type"], "system");
    assert_eq!(notice["payload"]["dropped_lines"], dropped as u64);
    assert_eq!(notice["payload"]["max_events"], CAP as u64);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.last(), Some(&"run_completed"));
    let run = s.hub.wait_for("run completed", WAIT, || {
        Some(s.row("subagent_runs", &run_id)).filter(|r| r["status"] == "completed")
    });
    assert_eq!(run["metadata"]["stream_events_truncated"], true);
}
}

panorama_testkit::on_both_backends! {
fn codex_gemini_model_run_and_scrubbed_environment() {
    let dumps = tempfile::tempdir().unwrap();
    let dump = dumps.path().join("env.json");
    let s = setup(
        false,
        &[
            ("FAKE_AGENT_ENV_DUMP", dump.display().to_string()),
            // Restricted Gemini runs need a sandbox; say there is one.
            ("GEMINI_SANDBOX", "docker".to_string()),
        ],
    );
    let codex = s.subagent(
        "codex_gateway",
        json!({}),
        json!({"prompt": "Summarize"}),
        json!({}),
    );
    let gemini = s.subagent(
        "gemini_gateway",
        json!({}),
        json!({"prompt": "Summarize"}),
        json!({}),
    );
    let j1 = s.job("subagent_run", json!({"subagent_id": codex}));
    let j2 = s.job("subagent_run", json!({"subagentId": gemini}));
    let r1 = s.wait_job(&j1);
    assert_eq!(r1["status"], "completed", "codex: {r1}");
    assert_eq!(r1["result"]["output"]["content_type"], "json");
    assert_eq!(r1["result"]["output"]["content"]["files"], 3);
    let r2 = s.wait_job(&j2);
    assert_eq!(r2["status"], "completed", "gemini: {r2}");
    assert_eq!(r2["result"]["status"], "completed");

    let m = s.job(
        "model_run",
        json!({"prompt": "Say hi.", "model": "__default__", "json_schema": {"type": "object"}}),
    );
    let row = s.wait_job(&m);
    assert_eq!(row["status"], "completed", "model_run: {row}");
    assert_eq!(row["result"]["output"], json!({"message": "Hi!"}));
    assert_eq!(row["result"]["exit_code"], 0);
    assert!(row["result"]["command"]
        .as_str()
        .unwrap()
        .contains("--json-schema [REDACTED]"));
    // gateway_jobs.debug (§3.2.5): launch facts and outcome, sanitized.
    let debug = &row["debug"];
    assert_eq!(debug["provider_id"], "claude_code", "{debug}");
    assert!(
        debug["command"].as_str().unwrap().ends_with("claude"),
        "{debug}"
    );
    assert_eq!(debug["prompt_chars"], "Say hi.".len());
    assert_eq!(
        debug["json_schema_chars"],
        json!({"type": "object"}).to_string().len()
    );
    assert_eq!(debug["output_mode"], "stdout-json");
    assert_eq!(debug["exit_code"], 0);
    assert_eq!(debug["timed_out"], false);
    assert!(debug["duration_ms"].is_u64(), "{debug}");
    assert!(debug["stdout"].as_str().unwrap().contains("Hi!"), "{debug}");
    assert_eq!(debug["stdout_truncated"], false);
    assert!(debug["work_dir"].is_string(), "{debug}");
    assert!(
        !debug["args"].to_string().contains("Say hi."),
        "the prompt argument is redacted: {debug}"
    );
    let allowed = [
        "provider_id",
        "command",
        "args",
        "command_line",
        "work_dir",
        "prompt_chars",
        "json_schema_chars",
        "timeout_ms",
        "output_mode",
        "output_path",
        "files",
        "stdout",
        "stdout_truncated",
        "stdout_bytes",
        "stderr",
        "stderr_truncated",
        "stderr_bytes",
        "exit_code",
        "duration_ms",
        "timed_out",
        "error_summary",
    ];
    for key in debug.as_object().unwrap().keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "debug key {key} is not in §3.2.5"
        );
    }

    // Malformed payloads fail with clear errors.
    let bad_model = s.wait_job(&s.job("model_run", json!({"prompt": "x"})));
    assert_eq!(bad_model["status"], "failed");
    assert_eq!(bad_model["error"], "Missing prompt or model");
    let bad_schema = s.wait_job(&s.job("model_run", json!({"prompt": "x", "model": "m"})));
    assert_eq!(bad_schema["error"], "Missing json_schema");
    let bad_run = s.wait_job(&s.job("subagent_run", json!({"run_id": "x"})));
    assert_eq!(bad_run["status"], "failed");
    assert_eq!(
        bad_run["result"]["message"],
        "Missing subagent_id in payload"
    );
    let bad_cancel = s.wait_job(&s.job("subagent_cancel", json!({"subagent_id": 5})));
    assert_eq!(bad_cancel["status"], "failed");
    assert_eq!(
        bad_cancel["result"]["message"],
        "Missing subagent_id in payload"
    );

    let env: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let env = env.as_object().unwrap();
    let tmp = s.machine.config_dir().join("tmp");
    assert_eq!(env["TMPDIR"], tmp.display().to_string());
    for (k, v) in env {
        let v = v.as_str().unwrap_or_default();
        assert!(!k.starts_with("SUPABASE_"), "leaked {k}");
        assert!(
            !k.starts_with("PANORAMA_") || k.ends_with("_CLI"),
            "leaked internal variable {k}"
        );
        assert!(!k.contains("OPENROUTER"), "leaked {k}");
        for secret in [&s.gw.access_token, &s.gw.refresh_token, &s.hub.anon_key] {
            assert!(!v.contains(secret.as_str()), "{k} carries a gateway secret");
        }
    }
}
}

panorama_testkit::on_both_backends! {
fn retries_resume_fallback_denials_and_limits() {
    let transcripts = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers/fixtures/claude");
    for f in [
        "rate_limited.jsonl",
        "resume_not_found.jsonl",
        "success.jsonl",
    ] {
        std::fs::copy(fixtures.join(f), transcripts.path().join(f)).unwrap();
    }
    // Past every collector limit: 4,100 lines (more than the live head plus
    // the kept tail, 2 × 2,000), > 5 MB, a 300,000-char unterminated tail.
    let mut big = String::new();
    for i in 0..4_100 {
        big.push_str(&format!("{{\"type\":\"assistant\",\"message\":{{\"id\":\"m{i}\",\"content\":[{{\"type\":\"tool_use\",\"id\":\"t{i}\",\"name\":\"Read\",\"input\":{{\"pad\":\"{}\"}}}}]}}}}\n", "x".repeat(1_300)));
    }
    big.push_str(&"y".repeat(300_000));
    std::fs::write(transcripts.path().join("huge.jsonl"), big).unwrap();
    let s = setup(
        false,
        &[(
            "FAKE_AGENT_TRANSCRIPT_DIR",
            transcripts.path().display().to_string(),
        )],
    );

    // A successful run first: Claude becomes healthy (startup validation failed).
    let ok_sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "go [[fake:success]]"}),
        json!({}),
    );
    let row = s.wait_job(&s.job("subagent_run", json!({"subagent_id": ok_sid})));
    assert_eq!(row["status"], "completed", "{row}");

    // A retryable error is retried (and stays failing here: 2 attempts).
    let retry_cfg = json!({"output_format": "stream-json", "retry": {"max_attempts": 2, "backoff_ms": 10, "retry_on_capacity": true}});
    let sid = s.subagent(
        "claude_code_gateway",
        retry_cfg,
        json!({"prompt": "go [[fake:rate_limited]]"}),
        json!({}),
    );
    let run_id = new_id();
    let row = s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    ));
    assert_eq!(row["status"], "failed", "{row}");
    let error = row["error"].as_str().unwrap();
    assert!(
        error.starts_with("Gateway provider Claude is unhealthy."),
        "{error}"
    );
    let types = s.wait_terminal_events(&run_id);
    let progress: Vec<Value> = s
        .events(&run_id)
        .into_iter()
        .filter(|e| e["event_type"] == "run_progress")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(progress[0]["phase"], "attempt_started");
    assert_eq!(progress[1]["phase"], "retry_scheduled");
    assert_eq!(progress[1]["reason"], "capacity");
    assert_eq!(progress[2]["attempt"], 2);
    assert_eq!(types.last().unwrap(), "run_failed");
    assert_dense(&s.events(&run_id));

    // Gateway events: startup validation (the custom transcript dir has no
    // validation transcript) and the runtime transition to unhealthy.
    let events = s.hub.wait_for("provider events", WAIT, || {
        let rows = s.hub.select(
            "gateway_events",
            &format!("gateway_id=eq.{}&select=*", s.gw.gateway_id),
        );
        rows.iter()
            .any(|r| r["code"] == "provider_unhealthy")
            .then_some(rows)
    });
    let validation = events
        .iter()
        .find(|r| r["code"] == "provider_validation" && r["provider"] == "claude_code")
        .expect("provider_validation event");
    assert_eq!(validation["details"]["context"], "startup");
    assert_eq!(validation["level"], "error");
    let unhealthy = events
        .iter()
        .find(|r| r["code"] == "provider_unhealthy")
        .unwrap();
    assert_eq!(unhealthy["message"], "Claude provider marked unhealthy.");
    assert_eq!(unhealthy["details"]["context"], "subagent_run");

    // Resume failure falls back to a fresh session and says so.
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "continue [[fake:resume_not_found]]"}),
        json!({"session_id": "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"}),
    );
    let run_id = new_id();
    let row = s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    ));
    let types = s.wait_terminal_events(&run_id);
    let system = s
        .events(&run_id)
        .into_iter()
        .find(|e| e["event_type"] == "system")
        .expect("system event");
    assert_eq!(system["payload"]["kind"], "resume_fallback");
    let argvs: Vec<String> = agent_log(&s.machine)
        .iter()
        .map(|l| l["argv"].to_string())
        .collect();
    assert!(argvs
        .iter()
        .any(|a| a.contains("--resume") && a.contains("resume_not_found")));
    // The fresh attempt ran without --resume.
    assert!(argvs
        .iter()
        .any(|a| !a.contains("--resume") && a.contains("resume_not_found")));
    assert!(types.contains(&"system".to_string()), "{types:?} {row}");

    // Full control requested but the install layer is off: exact seed reason.
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"full_control": true}),
        json!({"prompt": "x"}),
        json!({}),
    );
    let run_id = new_id();
    let row = s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    ));
    let reason = "Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
    assert_eq!(row["status"], "failed");
    assert_eq!(row["error"], reason);
    assert_eq!(
        row["result"],
        json!({"message": reason, "subagent_id": sid})
    );
    assert_eq!(
        s.wait_terminal_events(&run_id),
        vec!["run_started", "run_failed"]
    );
    let run = s.hub.wait_for("run failed", WAIT, || {
        Some(s.row("subagent_runs", &run_id)).filter(|r| r["status"] == "failed")
    });
    assert_eq!(run["metadata"]["full_control_denied_reason"], reason);

    // Output past every collector limit is truncated with flags.
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "x [[fake:huge]]"}),
        json!({}),
    );
    let run_id = new_id();
    s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    ));
    let run = s.hub.wait_for("huge run terminal", WAIT, || {
        Some(s.row("subagent_runs", &run_id)).filter(|r| r["status"] != "running")
    });
    assert_eq!(
        run["metadata"]["stdout_truncated"], true,
        "{}",
        run["metadata"]
    );
    assert_eq!(run["metadata"]["stream_events_truncated"], true);
    let types = s.wait_terminal_events(&run_id);
    let calls = types.iter().filter(|t| *t == "tool_call").count();
    assert!(calls <= 4_000, "{calls} tool calls stored");
    assert!(types.contains(&"system".to_string()));
}
}

panorama_testkit::on_both_backends! {
fn cancels_before_start_during_run_and_unknown() {
    let transcripts = tempfile::tempdir().unwrap();
    std::fs::write(
        transcripts.path().join("hold.jsonl"),
        "{\"type\":\"assistant\",\"message\":{\"id\":\"m1\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{\"command\":\"make\"}}]}}\n#!fake sleep 60000\n",
    )
    .unwrap();
    let s = setup(
        true,
        &[
            ("FAKE_AGENT_IGNORE_TERM", "1".to_string()),
            ("FAKE_AGENT_GRANDCHILDREN", "2".to_string()),
            (
                "FAKE_AGENT_TRANSCRIPT_DIR",
                transcripts.path().display().to_string(),
            ),
        ],
    );
    // Unknown subagent.
    let unknown = new_id();
    let row = s.wait_job(&s.job(
        "subagent_cancel",
        json!({"subagent_id": unknown, "reason": "  "}),
    ));
    assert_eq!(row["status"], "completed");
    assert_eq!(row["result"]["status"], "not_found");
    assert_eq!(row["result"]["reason"], "Cancelled");
    assert_eq!(
        row["result"]["message"],
        "Subagent not found; no active run to cancel."
    );
    // Idle subagent: nothing to cancel.
    let idle = s.subagent(
        "claude_code_gateway",
        json!({}),
        json!({"prompt": "x"}),
        json!({}),
    );
    let row = s.wait_job(&s.job("subagent_cancel", json!({"subagent_id": idle})));
    assert_eq!(row["result"]["cancel_result"], "no_active_run");
    assert_eq!(row["result"]["active_run_id"], Value::Null);

    // Cancelled before start (the control plane recorded the cancel).
    let pre_run = new_id();
    let pre = s.subagent(
        "claude_code_gateway",
        json!({}),
        json!({"prompt": "x"}),
        json!({"cancel_run_id": pre_run, "cancel_reason": "Stopped early"}),
    );
    let row = s.wait_job(&s.job(
        "subagent_run",
        json!({"subagent_id": pre, "run_id": pre_run}),
    ));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["status"], "cancelled");
    assert_eq!(row["result"]["error"], "Stopped early");
    let types = s.wait_terminal_events(&pre_run);
    assert_eq!(
        types,
        vec![
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    assert_eq!(s.row("subagent_runs", &pre_run)["status"], "cancelled");
    s.hub.wait_for("subagent cancelled", WAIT, || {
        (s.row("subagents", &pre)["status"] == "cancelled").then_some(())
    });

    // Cancel accepted for a run this gateway does not run yet (the run row
    // exists upstream): remembered, then applied when the run job starts.
    let up = s.subagent(
        "claude_code_gateway",
        json!({}),
        json!({"prompt": "x"}),
        json!({}),
    );
    let up_run = new_id();
    let res = s
        .hub
        .req(
            reqwest::Method::PATCH,
            &format!("/rest/v1/subagents?id=eq.{up}"),
            &s.hub.service_key,
        )
        .json(&json!({"status": "running"}))
        .send()
        .unwrap();
    assert!(res.status().is_success());
    s.hub.insert(
        "subagent_runs",
        json!({"id": up_run, "subagent_id": up, "team_id": s.gw.team_id, "gateway_id": s.gw.gateway_id,
               "run_sequence": 1, "status": "running", "prompt": "x"}),
    );
    let row = s.wait_job(&s.job(
        "subagent_cancel",
        json!({"subagent_id": up, "reason": "Not now"}),
    ));
    assert_eq!(row["result"]["cancel_result"], "accepted", "{row}");
    assert_eq!(row["result"]["run_id"], up_run.as_str());
    assert_eq!(row["result"]["cancelled_active_run"], false);
    let sub = s.row("subagents", &up);
    assert_eq!(sub["metadata"]["cancel_run_id"], up_run.as_str());
    assert_eq!(sub["metadata"]["cancel_state"], "requested");
    let row = s.wait_job(&s.job("subagent_run", json!({"subagent_id": up, "run_id": up_run})));
    assert_eq!(row["result"]["status"], "cancelled", "{row}");
    assert_eq!(row["result"]["error"], "Not now");
    let events = s.events(&up_run);
    assert_dense(&events);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "cancellation_requested",
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    assert_eq!(events[0]["payload"]["source"], "gateway_cancel_job");
    assert_eq!(events[1]["payload"]["source"], "pending_cancel");
    assert_eq!(s.row("subagent_runs", &up_run)["status"], "cancelled");
    s.hub.wait_for("upstream subagent cancelled", WAIT, || {
        (s.row("subagents", &up)["status"] == "cancelled").then_some(())
    });

    // Cancel during a run whose agent ignores SIGTERM and has grandchildren.
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "work [[fake:hold]]"}),
        json!({}),
    );
    let run_id = new_id();
    let job = s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    let pids: Vec<i32> = s.hub.wait_for("agent and grandchildren", WAIT, || {
        let log = agent_log(&s.machine);
        let agent = log
            .iter()
            .find(|l| l["role"] == "agent" && l["argv"].to_string().contains("fake:hold"))?["pid"]
            .as_i64()?;
        // The whole process group of the agent (lines of concurrent log
        // writers can interleave, so /proc is the source of truth).
        let mut pids = procs::group_members(agent as i32);
        pids.extend(
            log.iter()
                .filter(|l| l["role"] == "grandchild" && l["ppid"].as_i64() == Some(agent))
                .filter_map(|l| l["pid"].as_i64().map(|p| p as i32)),
        );
        pids.sort();
        pids.dedup();
        // Events are live: the first message is at the hub before the cancel.
        (pids.len() >= 3 && s.types(&run_id).contains(&"tool_call".to_string())).then_some(pids)
    });
    let cancel = s.job(
        "subagent_cancel",
        json!({"subagent_id": sid, "run_id": run_id, "reason": "User stopped the task"}),
    );
    let row = s.wait_job(&cancel);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["cancel_result"], "accepted");
    assert_eq!(row["result"]["cancelled_active_run"], true);
    assert_eq!(
        row["result"]["message"],
        "Cancel requested and forwarded to gateway."
    );
    let cancelled_at = Instant::now();
    let run_row = s.wait_job(&job);
    assert_eq!(run_row["status"], "completed");
    assert_eq!(run_row["result"]["status"], "cancelled");
    assert_eq!(run_row["result"]["error"], "User stopped the task");
    // Grace is 5 s; one second later nothing of the tree is alive.
    let settle = Duration::from_secs(6).saturating_sub(cancelled_at.elapsed());
    std::thread::sleep(settle);
    for pid in &pids {
        assert!(
            !procs::alive(*pid),
            "pid {pid} of the agent tree is still alive"
        );
    }
    let types = s.wait_terminal_events(&run_id);
    let tail: Vec<&str> = types
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        vec![
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    assert_dense(&s.events(&run_id));
    s.hub.wait_for("subagent cancelled", WAIT, || {
        (s.row("subagents", &sid)["status"] == "cancelled").then_some(())
    });
    let mut s = s;
    s.running.terminate(WAIT);
    assert!(s.machine.log_path().exists());
}
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

panorama_testkit::on_both_backends! {
fn shutdown_cancels_runs_capabilities_and_failure_fallback() {
    let transcripts = tempfile::tempdir().unwrap();
    std::fs::write(
        transcripts.path().join("hold.jsonl"),
        "{\"type\":\"assistant\",\"message\":{\"id\":\"m1\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{\"command\":\"make\"}}]}}\n#!fake sleep 60000\n",
    )
    .unwrap();
    let mut s = setup(
        false,
        &[
            ("FAKE_AGENT_IGNORE_TERM", "1".to_string()),
            ("FAKE_AGENT_GRANDCHILDREN", "1".to_string()),
            (
                "FAKE_AGENT_TRANSCRIPT_DIR",
                transcripts.path().display().to_string(),
            ),
        ],
    );
    // Per-provider capabilities in the heartbeat.
    let caps = s.hub.select(
        "team_gateways",
        &format!("id=eq.{}&select=*", s.gw.gateway_id),
    )[0]["capabilities"]
        .clone();
    let claude = &caps["providers"]["claude_code"];
    assert_eq!(claude["available"], true, "{caps}");
    // The version is the semver parsed out of `--version` (issue 12).
    assert_eq!(claude["version"], "2.0.14");
    assert_eq!(claude["supported_flags"]["permissionModeFlag"], true);
    assert_eq!(claude["health"]["check_type"], "full");
    assert_eq!(caps["providers"]["codex"]["available"], true);
    // providerHealth is cached in gateway.json.
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(s.machine.config_dir().join("gateway.json")).unwrap(),
    )
    .unwrap();
    assert!(
        config["providerHealth"]["gemini"]["status"].is_string(),
        "{config}"
    );

    // Job-failure fallback: a running subagent is failed, an idle one is left alone.
    let running = s.subagent(
        "mystery_gateway",
        json!({}),
        json!({"prompt": "x"}),
        json!({}),
    );
    s.hub
        .req(
            reqwest::Method::PATCH,
            &format!("/rest/v1/subagents?id=eq.{running}"),
            &s.hub.service_key,
        )
        .json(&json!({"status": "running"}))
        .send()
        .unwrap();
    let idle = s.subagent(
        "mystery_gateway",
        json!({}),
        json!({"prompt": "x"}),
        json!({}),
    );
    let row = s.wait_job(&s.job("subagent_run", json!({"subagent_id": running})));
    assert_eq!(row["status"], "failed");
    assert_eq!(row["error"], "Unsupported subagent type: mystery_gateway");
    let failed = s.hub.wait_for("fallback", WAIT, || {
        Some(s.row("subagents", &running)).filter(|r| r["status"] == "failed")
    });
    assert_eq!(
        failed["metadata"]["gateway_error"],
        "Unsupported subagent type: mystery_gateway"
    );
    let row = s.wait_job(&s.job("subagent_run", json!({"subagent_id": idle})));
    assert_eq!(row["status"], "failed");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.row("subagents", &idle)["status"], "idle");

    // Shutdown while an agent that ignores SIGTERM is running.
    let sid = s.subagent(
        "claude_code_gateway",
        json!({"output_format": "stream-json"}),
        json!({"prompt": "work [[fake:hold]]"}),
        json!({}),
    );
    let run_id = new_id();
    let job = s.job(
        "subagent_run",
        json!({"subagent_id": sid, "run_id": run_id}),
    );
    let agent = s.hub.wait_for("agent running", WAIT, || {
        let agent = agent_log(&s.machine)
            .iter()
            .find(|l| l["role"] == "agent" && l["argv"].to_string().contains("fake:hold"))?["pid"]
            .as_i64()? as i32;
        (s.types(&run_id).contains(&"tool_call".to_string())).then_some(agent)
    });
    let mut tree = procs::group_members(agent);
    assert!(tree.len() >= 2, "agent and grandchild: {tree:?}");
    // A model run in flight is stopped by the shutdown too.
    let model_job = s.job(
        "model_run",
        json!({"prompt": "think [[fake:hold]]", "model": "__default__", "output_format": "text"}),
    );
    let model_agent = s.hub.wait_for("model agent running", WAIT, || {
        agent_log(&s.machine).iter().find(|l| {
            l["role"] == "agent" && l["argv"].to_string().contains("think [[fake:hold]]")
        })?["pid"]
            .as_i64()
            .map(|p| p as i32)
    });
    tree.extend(procs::group_members(model_agent));
    s.running.terminate(WAIT);
    let model_row = s.job_row(&model_job);
    assert_eq!(model_row["status"], "cancelled", "{model_row}");
    assert_eq!(model_row["result"]["cancelled"], true);
    for pid in &tree {
        assert!(
            !procs::alive(*pid),
            "pid {pid} survived the gateway shutdown"
        );
    }
    let row = s.job_row(&job);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["status"], "cancelled");
    assert_eq!(row["result"]["error"], "Gateway shutting down (SIGTERM)");
    let events = s.events(&run_id);
    assert_dense(&events);
    let last: Vec<&Value> = events.iter().rev().take(2).collect();
    assert_eq!(last[1]["event_type"], "cancellation_acknowledged");
    assert_eq!(last[0]["event_type"], "run_cancelled");
    assert_eq!(last[0]["payload"]["source"], "gateway_shutdown");
    assert_eq!(s.row("subagent_runs", &run_id)["status"], "cancelled");
    assert_eq!(s.row("subagents", &sid)["status"], "cancelled");
}
}
