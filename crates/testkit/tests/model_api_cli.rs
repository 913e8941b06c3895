//! Each real agent CLI, run directly (no gateway) against the loopback
//! model API: it calls its shell tool (`ls` in a folder holding a marker
//! file), gets the output back to the model, and prints the scripted
//! answer. Proves the loopback API speaks enough of each wire.

use std::process::{Command, Stdio};

use panorama_testkit::agents::real_agents;
use panorama_testkit::model_api::{ModelApi, Script};
use serde_json::Value;

const MARKER: &str = "loopback-marker-file.txt";

fn run_cli(name: &str, args: &[&str]) {
    let Some(agents) = real_agents(name) else {
        return;
    };
    let api = ModelApi::start();
    api.set_script(Script {
        reply: "The folder holds one marker file.".into(),
        tool_command: Some("ls".into()),
        ..Script::default()
    });
    let home = tempfile::tempdir().unwrap();
    api.configure_home(home.path());
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(MARKER), "x").unwrap();
    let out = Command::new(agents.cli(name))
        .args(args)
        .current_dir(&work)
        .env("HOME", home.path())
        .envs(api.cli_env())
        // Claude refuses bypass permissions as root unless told it is sandboxed.
        .env("IS_SANDBOX", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // PANORAMA_RECORD_FIXTURES=1 records the output into the providers
    // crate's fixtures (`fixtures/<cli>/<version>/tool-turn.jsonl`).
    if std::env::var_os("PANORAMA_RECORD_FIXTURES").is_some() && out.status.success() {
        let version = agents.version(name);
        let version = version
            .split_whitespace()
            .find(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .unwrap_or("unknown")
            .to_string();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../providers/fixtures")
            .join(name)
            .join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tool-turn.jsonl"), stdout.as_bytes()).unwrap();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let paths: Vec<String> = api.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        out.status.success(),
        "{name} failed ({}):\nstdout: {stdout}\nstderr: {stderr}\nrequests: {paths:?}",
        out.status
    );
    assert!(
        stdout.contains("The folder holds one marker file."),
        "{name} did not print the scripted answer:\n{stdout}\nstderr: {stderr}"
    );
    // The shell tool really ran: its output (the marker's name) went back to the model.
    let sent_back = api
        .requests()
        .iter()
        .any(|r| r.body.to_string().contains(MARKER) && r.body != Value::Null);
    assert!(
        sent_back,
        "{name} never sent the `ls` output back to the model; requests: {paths:?}\nstdout: {stdout}"
    );
}

#[test]
fn claude_code_runs_a_tool_turn_on_the_loopback_api() {
    run_cli(
        "claude",
        &[
            "-p",
            "List the files.",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
            "--dangerously-skip-permissions",
        ],
    );
}

#[test]
fn codex_runs_a_tool_turn_on_the_loopback_api() {
    run_cli(
        "codex",
        &[
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--json",
            "List the files.",
        ],
    );
}

#[test]
fn gemini_runs_a_tool_turn_on_the_loopback_api() {
    run_cli(
        "gemini",
        &[
            "--skip-trust",
            "--approval-mode",
            "yolo",
            "--output-format",
            "stream-json",
            "List the files.",
        ],
    );
}

/// Runs `first`, takes the session id out of its JSON output with
/// `session_of`, runs `second(id)`, and checks the model saw the first
/// prompt again: the CLI really resumed the conversation.
fn resume_cli(name: &str, first: &[&str], session_key: &str, second: impl Fn(&str) -> Vec<String>) {
    let Some(agents) = real_agents(name) else {
        return;
    };
    let api = ModelApi::start();
    let home = tempfile::tempdir().unwrap();
    api.configure_home(home.path());
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let run = |args: &[String]| {
        let out = Command::new(agents.cli(name))
            .args(args)
            .current_dir(&work)
            .env("HOME", home.path())
            .envs(api.cli_env())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let stdout = run(&first);
    let session = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v.get(session_key)
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {session_key} in {name} output: {stdout}"));
    let before = api.requests().len();
    run(&second(&session));
    let resumed = api.requests()[before..]
        .iter()
        .any(|r| r.body.to_string().contains("Remember the word pelican."));
    assert!(
        resumed,
        "{name} did not carry the first turn into the resumed run"
    );
}

#[test]
fn codex_resumes_a_session() {
    resume_cli(
        "codex",
        &[
            "exec",
            "--skip-git-repo-check",
            "--json",
            "Remember the word pelican.",
        ],
        "thread_id",
        |id| {
            [
                "exec",
                "--skip-git-repo-check",
                "--json",
                "resume",
                id,
                "Which word?",
            ]
            .map(String::from)
            .to_vec()
        },
    );
}

#[test]
fn gemini_resumes_a_session() {
    resume_cli(
        "gemini",
        &[
            "--skip-trust",
            "--output-format",
            "stream-json",
            "Remember the word pelican.",
        ],
        "session_id",
        |id| {
            [
                "--skip-trust",
                "--output-format",
                "stream-json",
                "--resume",
                id,
                "Which word?",
            ]
            .map(String::from)
            .to_vec()
        },
    );
}

#[test]
fn claude_resumes_a_session() {
    resume_cli(
        "claude",
        &[
            "-p",
            "Remember the word pelican.",
            "--output-format",
            "json",
        ],
        "session_id",
        |id| {
            [
                "-p",
                "Which word?",
                "--output-format",
                "json",
                "--resume",
                id,
            ]
            .map(String::from)
            .to_vec()
        },
    );
}
