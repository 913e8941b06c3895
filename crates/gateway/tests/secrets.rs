//! Secret handling end to end (issue 6, part 6): a gateway with its real
//! tokens in `gateway.json` and the hub's real service key, anon key, its
//! own tokens and other internal `SUPABASE_*` / `PANORAMA_*` variables in
//! its environment runs subagent runs and model runs on all three agent
//! CLIs (the fake agent dumps its environment), a shell session and a
//! `shell_exec` that run `env`. Then every place a secret could end up is
//! scanned: the agents' environments, the shell output, the gateway's log
//! file and stderr, the hub's log, and every row the gateway wrote at the
//! hub (jobs and their results, subagents, runs, run events, gateway
//! events, the gateway row).

mod support;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use panorama_testkit::Hub;
use serde_json::{json, Value};
use support::*;

/// Starts a hub whose stderr (its log, at debug level) goes to `log`.
fn hub_logging_to(log: &std::path::Path) -> Hub {
    let file = std::fs::File::create(log).unwrap();
    // The hub inherits our stderr: point fd 2 at the file for the spawn.
    // SAFETY: dup/dup2 on descriptors this process owns.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0);
    unsafe { libc::dup2(file.as_raw_fd(), 2) };
    let hub = std::panic::catch_unwind(|| Hub::start_with_env(&[("PANORAMA_HUB_LOG", "debug")]));
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    hub.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One place that was scanned.
struct Scanned {
    place: String,
    bytes: usize,
}

struct Scan {
    /// `(name, value)` of every secret.
    needles: Vec<(String, String)>,
    scanned: Vec<Scanned>,
    findings: Vec<String>,
}

impl Scan {
    fn text(&mut self, place: &str, text: &str) {
        for (name, value) in &self.needles {
            if text.contains(value.as_str()) {
                self.findings.push(format!("{name} found in {place}"));
            }
        }
        self.scanned.push(Scanned {
            place: place.to_string(),
            bytes: text.len(),
        });
    }

    /// A child environment: the secret values, and no internal variable.
    fn env(&mut self, place: &str, env: &BTreeMap<String, String>) {
        for key in env.keys() {
            if key.starts_with("SUPABASE_") || key.starts_with("PANORAMA_") {
                self.findings
                    .push(format!("internal variable {key} in {place}"));
            }
        }
        let text = env
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>();
        self.text(place, &text);
    }
}

/// `KEY=value` lines of `env` output (a PTY may add `\r`).
fn parse_env_output(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn session(node: &Node, resource: &str, action: &str, mut payload: Value) -> Value {
    payload["action"] = json!(action);
    payload["resource_id"] = json!(resource);
    let row = node.wait_job(&node.job("shell_session", payload));
    assert_eq!(row["status"], "completed", "{action}: {row}");
    row["result"].clone()
}

#[test]
fn no_gateway_secret_reaches_children_logs_or_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub_log = dir.path().join("hub.log");
    let hub = hub_logging_to(&hub_log);
    let dump = dir.path().join("env.json");
    let marker = new_id();
    // The gateway's environment: the real keys and tokens, and other
    // internal variables (each with a unique value to look for).
    let gw_probe = hub.pair(&hub.create_team("probe"), "probe");
    let env_file = dir.path().join("gateway.env");
    let env_file_secret = format!("envfile-{marker}");
    std::fs::write(
        &env_file,
        format!(
            "SUPABASE_ENV_FILE_SECRET={env_file_secret}\nPANORAMA_FILE_TOKEN={env_file_secret}-2\n"
        ),
    )
    .unwrap();
    let internal: Vec<(String, String)> = vec![
        ("SUPABASE_SERVICE_ROLE_KEY".into(), hub.service_key.clone()),
        ("SUPABASE_ANON_KEY".into(), hub.anon_key.clone()),
        ("SUPABASE_URL".into(), hub.url.clone()),
        ("SUPABASE_SERVICE_KEY".into(), format!("svc-{marker}")),
        ("SUPABASE_ACCESS_TOKEN".into(), format!("sbp_{marker}")),
        ("SUPABASE_JWT_SECRET".into(), format!("jwt-secret-{marker}")),
        ("SUPABASE_DB_PASSWORD".into(), format!("db-pw-{marker}")),
        ("PANORAMA_SUPABASE_ANON_KEY".into(), hub.anon_key.clone()),
        ("PANORAMA_SUPABASE_URL".into(), hub.url.clone()),
        (
            "PANORAMA_GATEWAY_ACCESS_TOKEN".into(),
            gw_probe.access_token.clone(),
        ),
        (
            "PANORAMA_HUB_SERVICE_KEY".into(),
            format!("hub-svc-{marker}"),
        ),
        ("PANORAMA_API_TOKEN".into(), format!("pano-api-{marker}")),
        ("PANORAMA_ENV_FILE".into(), env_file.display().to_string()),
        (
            "DATABASE_URL".into(),
            format!("postgres://u:pw-{marker}@db/x"),
        ),
        ("OPENROUTER_API_KEY".into(), format!("or-{marker}")),
        ("BRAVE_SEARCH_API_KEY".into(), format!("brave-{marker}")),
    ];
    let mut node = Node::new(
        &hub,
        "secrets-box",
        true,
        &[("FAKE_AGENT_ENV_DUMP", dump.to_str().unwrap())],
    );
    // A user credential the agent CLIs need passes through on purpose.
    let user_key = format!("sk-ant-user-{marker}");
    node.env
        .push(("ANTHROPIC_API_KEY".into(), user_key.clone()));
    // Gateway secrets under names the scrub list cannot know.
    node.env
        .push(("MY_GATEWAY_TOKEN".into(), node.gw.access_token.clone()));
    node.env
        .push(("BACKUP_REFRESH".into(), node.gw.refresh_token.clone()));
    node.env.extend(internal.iter().cloned());
    let gateway_pid = node.start();

    let mut children: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let take_dump = |what: &str, children: &mut Vec<(String, BTreeMap<String, String>)>| {
        let env: BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(&dump).expect("env dump")).unwrap();
        let _ = std::fs::remove_file(&dump);
        children.push((what.to_string(), env));
    };
    // Subagent runs and model runs on each provider, one at a time (one
    // dump file).
    let mut run_ids = Vec::new();
    for (subagent_type, provider) in PROVIDERS {
        let _ = std::fs::remove_file(&dump);
        let sid = node.subagent(subagent_type, json!({}), "Summarize the repo");
        let run_id = new_id();
        let row = node.wait_job(&node.job(
            "subagent_run",
            json!({"subagent_id": sid, "run_id": run_id}),
        ));
        assert_eq!(row["status"], "completed", "{provider} run: {row}");
        assert_eq!(
            row["result"]["status"], "completed",
            "{provider} run: {row}"
        );
        take_dump(&format!("{provider} subagent_run agent env"), &mut children);
        run_ids.push(run_id);

        let row = node.wait_job(&node.job(
            "model_run",
            json!({"prompt": "Say hi.", "model": "__default__", "provider": provider,
                   "output_format": "text"}),
        ));
        assert_eq!(row["status"], "completed", "{provider} model_run: {row}");
        take_dump(&format!("{provider} model_run agent env"), &mut children);
    }
    // The user's provider credential reached the agents.
    for (what, env) in &children {
        assert_eq!(
            env.get("ANTHROPIC_API_KEY"),
            Some(&user_key),
            "{what}: a user credential must pass through"
        );
    }

    // shell_exec `env`.
    let resource = node.resource();
    let row = node.wait_job(&node.job(
        "shell_exec",
        json!({"resource_id": resource, "command": "env", "timeout_ms": 20000}),
    ));
    assert_eq!(row["status"], "completed", "shell_exec: {row}");
    let exec_env = parse_env_output(row["result"]["stdout"].as_str().unwrap());
    assert!(exec_env.contains_key("HOME"), "env output: {row}");
    children.push(("shell_exec env".into(), exec_env));

    // A shell session running `env`.
    let opened = session(
        &node,
        &resource,
        "open",
        json!({"shell": "/bin/bash", "shell_args": ["--norc", "--noprofile"], "env": {"PS1": "$ "}}),
    );
    let sid = opened["session_id"].as_str().unwrap().to_string();
    session(
        &node,
        &resource,
        "write",
        json!({"session_id": sid, "input": "env; echo END-OF-ENV", "append_newline": true}),
    );
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let read = session(
            &node,
            &resource,
            "read",
            json!({"session_id": sid, "since_sequence": 0, "max_events": 1000}),
        );
        let text: String = read["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["stream"] == "stdout")
            .filter_map(|e| e["data"].as_str())
            .collect();
        if text.matches("END-OF-ENV").count() >= 2 {
            break text;
        }
        assert!(Instant::now() < deadline, "no env output: {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let session_env = parse_env_output(&text);
    assert!(session_env.contains_key("HOME"), "session output: {text:?}");
    children.push(("shell session env".into(), session_env));
    session(&node, &resource, "close", json!({"session_id": sid}));

    // Every live process under the gateway now (provider probes may run).
    for pid in panorama_testkit::procs::descendants(gateway_pid) {
        if let Some(env) = panorama_testkit::procs::environ(pid) {
            children.push((format!("/proc/{pid}/environ"), env.into_iter().collect()));
        }
    }
    node.terminate();

    // Once more as a daemon, which logs to its log file: a run and `env`.
    let mut cmd = node.host.command(&hub, &["start", "--daemon"]);
    for (k, v) in &node.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "start --daemon: {out:?}");
    node.wait_ready();
    let _ = std::fs::remove_file(&dump);
    let sid = node.subagent("claude_code_gateway", json!({}), "Summarize again");
    let row = node.wait_job(&node.job("subagent_run", json!({"subagent_id": sid})));
    assert_eq!(row["status"], "completed", "daemon run: {row}");
    take_dump("daemon subagent_run agent env", &mut children);
    let row = node.wait_job(&node.job(
        "shell_exec",
        json!({"resource_id": resource, "command": "env", "timeout_ms": 20000}),
    ));
    assert_eq!(row["status"], "completed", "daemon shell_exec: {row}");
    children.push((
        "daemon shell_exec env".into(),
        parse_env_output(row["result"]["stdout"].as_str().unwrap()),
    ));
    let out = node.host.run(&hub, &["stop"]);
    assert!(out.status.success(), "stop: {out:?}");
    hub.wait_gateway_status(&node.gw.gateway_id, "offline", WAIT);

    // The secrets: the tokens it was paired with and the ones it holds now
    // (a refresh may have rotated them), the hub's keys, every value above.
    let config = node.host.config();
    let mut needles: Vec<(String, String)> = vec![
        ("paired access token".into(), node.gw.access_token.clone()),
        ("paired refresh token".into(), node.gw.refresh_token.clone()),
        ("anon key".into(), hub.anon_key.clone()),
        ("service key".into(), hub.service_key.clone()),
    ];
    for key in ["accessToken", "refreshToken"] {
        if let Some(v) = config[key].as_str() {
            needles.push((format!("current {key}"), v.to_string()));
        }
    }
    needles.push(("env-file secret".into(), env_file_secret.clone()));
    for (k, v) in &internal {
        if k != "SUPABASE_URL" && k != "PANORAMA_SUPABASE_URL" {
            needles.push((k.clone(), v.clone()));
        }
    }
    let mut scan = Scan {
        needles,
        scanned: Vec::new(),
        findings: Vec::new(),
    };
    for (what, env) in &children {
        scan.env(what, env);
    }
    // Logs.
    let gateway_log =
        std::fs::read_to_string(node.host.config_dir().join("gateway.log")).unwrap_or_default();
    assert!(
        gateway_log.contains("Gateway running"),
        "gateway log file: {gateway_log}"
    );
    scan.text("gateway log file", &gateway_log);
    scan.text("gateway stderr", &node.host.log());
    let hub_text = std::fs::read_to_string(&hub_log).unwrap_or_default();
    scan.text("hub log", &hub_text);
    // What the gateway wrote at the hub.
    let team = &node.gw.team_id;
    for (table, query) in [
        ("gateway_jobs", format!("team_id=eq.{team}&select=*")),
        ("subagents", format!("team_id=eq.{team}&select=*")),
        ("subagent_runs", format!("team_id=eq.{team}&select=*")),
        ("subagent_run_events", format!("team_id=eq.{team}&select=*")),
        ("gateway_events", format!("team_id=eq.{team}&select=*")),
        (
            "team_gateways",
            format!("id=eq.{}&select=*", node.gw.gateway_id),
        ),
    ] {
        let rows = hub.select(table, &query);
        assert!(!rows.is_empty(), "no {table} rows");
        scan.text(
            &format!("hub {table} ({} rows)", rows.len()),
            &Value::Array(rows).to_string(),
        );
    }
    let events = hub.select(
        "subagent_run_events",
        &format!("run_id=in.({})&select=id", run_ids.join(",")),
    );
    assert!(events.len() >= 6, "run events: {events:?}");

    eprintln!(
        "secret scan: {} secrets x {} places",
        scan.needles.len(),
        scan.scanned.len()
    );
    for s in &scan.scanned {
        eprintln!("  {:>9} bytes  {}", s.bytes, s.place);
    }
    eprintln!("  findings: {}", scan.findings.len());
    for f in &scan.findings {
        eprintln!("    {f}");
    }
    assert!(scan.scanned.len() >= 15, "too few places scanned");
    assert!(scan.findings.is_empty(), "leaks: {:#?}", scan.findings);
}

/// Every regular file under `dir` (the gateway's state: config, outbox,
/// claim ledger, logs), as text.
fn files_under(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn team_secrets_reach_only_the_shell_exec_child() {
    let dir = tempfile::tempdir().unwrap();
    let hub_log = dir.path().join("hub.log");
    let hub = hub_logging_to(&hub_log);
    let mut node = Node::new(&hub, "secret-env-box", true, &[]);
    node.start();
    let resource = node.resource();
    let value = format!("deploy-token-{}", new_id());
    let stored = hub.insert(
        "team_secrets",
        json!({"team_id": node.gw.team_id, "name": "deploy-token", "value": value}),
    );
    assert!(stored.get("value").is_none(), "{stored}");

    // The value reaches the command's environment; what it prints is
    // reported with the placeholder instead.
    let seen = dir.path().join("seen");
    let row = node.wait_job(&node.job(
        "shell_exec",
        json!({"resource_id": resource, "secret_env": {"API_TOKEN": "deploy-token"}, "timeout_ms": 20000,
               "command": format!("printf %s \"$API_TOKEN\" > {}; echo \"token=$API_TOKEN\"; echo \"$API_TOKEN\" >&2", seen.display())}),
    ));
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), value);
    let stdout = row["result"]["stdout"].as_str().unwrap();
    let placeholder = stdout
        .trim_end()
        .strip_prefix("token=")
        .unwrap_or_else(|| panic!("stdout: {stdout:?}"));
    assert!(
        panorama_protocol::secrets::is_placeholder(placeholder),
        "{stdout:?}"
    );
    assert_eq!(row["result"]["stderr"], format!("{placeholder}\n"));

    // Fail closed: a secret the team does not have runs nothing.
    let never = dir.path().join("never");
    let row = node.wait_job(&node.job(
        "shell_exec",
        json!({"resource_id": resource, "secret_env": {"API_TOKEN": "deploy-token", "OTHER": "missing"},
               "command": format!("touch {}", never.display())}),
    ));
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(
        row["error"],
        "Team secret alias response was incomplete or invalid"
    );
    assert!(!never.exists(), "the command ran without its secrets");
    node.terminate();

    // Nowhere else: the gateway's stderr and every file of its state, the
    // hub's log, every row of the team.
    let mut scan = Scan {
        needles: vec![("team secret".into(), value.clone())],
        scanned: Vec::new(),
        findings: Vec::new(),
    };
    scan.text("gateway stderr", &node.host.log());
    for (path, text) in files_under(&node.host.config_dir()) {
        scan.text(&path, &text);
    }
    scan.text(
        "hub log",
        &std::fs::read_to_string(&hub_log).unwrap_or_default(),
    );
    let team = &node.gw.team_id;
    for table in ["gateway_jobs", "gateway_events", "team_secrets"] {
        let rows = hub.select(table, &format!("team_id=eq.{team}&select=*"));
        scan.text(&format!("hub {table}"), &Value::Array(rows).to_string());
    }
    eprintln!(
        "team secret scan: {} places, {} findings",
        scan.scanned.len(),
        scan.findings.len()
    );
    assert!(scan.scanned.len() >= 5, "too few places scanned");
    assert!(scan.findings.is_empty(), "leaks: {:#?}", scan.findings);
}
