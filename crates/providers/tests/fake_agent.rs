//! Process-level tests: probes and runs against `panorama-fake-agent`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use panorama_providers::argv::{build_claude_subagent_plan, build_gemini_subagent_plan, RunPlan};
use panorama_providers::collector::StreamJsonCollector;
use panorama_providers::config::{RunContext, SubagentConfig};
use panorama_providers::flags::SupportedFlags;
use panorama_providers::normalize::{ClaudeNormalizer, NormalizedEvent, StreamNormalizer};
use panorama_providers::output::{parse_subagent_output, ContentType};
use panorama_providers::probe::{detect_provider, run_probe, ProbeOptions};
use panorama_providers::registry::{resolve_command, CliOverrides, CommandSource};
use panorama_providers::{ProviderError, ProviderId};
use serde_json::{json, Value};

const FAKE: &str = env!("CARGO_BIN_EXE_panorama-fake-agent");

/// A dir with `claude`, `codex`, `gemini` symlinks to the fake agent.
fn bin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["claude", "codex", "gemini"] {
        std::os::unix::fs::symlink(FAKE, dir.path().join(name)).unwrap();
    }
    dir
}

fn env_with(pairs: &[(&str, String)]) -> std::collections::BTreeMap<String, String> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("FAKE_AGENT_"))
        .collect();
    for (k, v) in pairs {
        env.insert(k.to_string(), v.clone());
    }
    env
}

async fn run_plan(plan: &RunPlan, extra: &[(&str, String)]) -> (i32, String, String) {
    for f in &plan.files {
        std::fs::write(plan.cwd.join(&f.relative_path), &f.contents).unwrap();
    }
    let mut env = env_with(extra);
    env.extend(plan.env.clone());
    let out = tokio::process::Command::new(&plan.command)
        .args(&plan.args)
        .current_dir(&plan.cwd)
        .env_clear()
        .envs(env)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn detection_through_argv0_and_all_flags() {
    let dir = bin_dir();
    // Versions are the semver parsed out of the `--version` text.
    for (id, version) in [
        (ProviderId::ClaudeCode, "2.0.14"),
        (ProviderId::Codex, "0.50.0"),
        (ProviderId::Gemini, "0.9.0"),
    ] {
        let overrides = CliOverrides::default();
        let bin = dir
            .path()
            .join(panorama_providers::registry::spec(id).binary);
        let env = |k: &str| {
            (k == panorama_providers::registry::spec(id).env_keys[0])
                .then(|| bin.to_string_lossy().into_owned())
        };
        let resolved = resolve_command(id, &overrides, env);
        assert!(matches!(resolved.source, CommandSource::Env(_)));
        let d = detect_provider(
            &resolved,
            &ProbeOptions {
                env: Some(env_with(&[])),
                timeout: None,
                contain: None,
            },
        )
        .await;
        assert!(d.available, "{id:?}: {:?}", d.error);
        assert_eq!(d.version.as_deref(), Some(version));
        assert_eq!(d.supported_flags, SupportedFlags::all_true(id), "{id:?}");
        let cap = d.to_capability();
        assert!(cap.available && cap.supports.stream_json);
    }
}

#[tokio::test]
async fn missing_cli_omitted_flags_and_timeouts() {
    let d = detect_provider(
        &resolve_command(
            ProviderId::Codex,
            &CliOverrides {
                codex_cli: Some("/nonexistent/codex".into()),
                ..Default::default()
            },
            |_| None,
        ),
        &ProbeOptions::default(),
    )
    .await;
    assert!(!d.available);
    assert_eq!(d.error.as_deref(), Some("spawn /nonexistent/codex ENOENT"));
    assert_eq!(
        d.to_capability().error.as_deref(),
        Some("spawn /nonexistent/codex ENOENT")
    );

    let dir = bin_dir();
    let claude = dir.path().join("claude").to_string_lossy().into_owned();
    let opts = ProbeOptions {
        env: Some(env_with(&[(
            "FAKE_AGENT_HELP_OMIT",
            "--permission-mode,--dangerously-skip-permissions".into(),
        )])),
        timeout: None,
        contain: None,
    };
    let d = detect_provider(
        &resolve_command(
            ProviderId::ClaudeCode,
            &CliOverrides {
                claude_cli: Some(claude.clone()),
                ..Default::default()
            },
            |_| None,
        ),
        &opts,
    )
    .await;
    assert!(!d.supported_flags.has("permissionModeFlag"));
    assert!(!d.supported_flags.has("dangerouslySkipPermissionsFlag"));
    assert!(
        !panorama_providers::argv::full_control_support(ProviderId::ClaudeCode, &d.supported_flags)
            .supported
    );

    let opts = ProbeOptions {
        env: Some(env_with(&[("FAKE_AGENT_HOLD_MS", "5000".into())])),
        timeout: Some(Duration::from_millis(300)),
        contain: None,
    };
    let started = std::time::Instant::now();
    let err = run_probe(&claude, &["-p", "hi"], &opts).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    let opts = ProbeOptions {
        env: Some(env_with(&[("FAKE_AGENT_VERSION_FAIL", "1".into())])),
        timeout: None,
        contain: None,
    };
    let d = detect_provider(
        &resolve_command(
            ProviderId::ClaudeCode,
            &CliOverrides {
                claude_cli: Some(claude),
                ..Default::default()
            },
            |_| None,
        ),
        &opts,
    )
    .await;
    assert!(!d.available);
}

#[tokio::test]
async fn claude_stream_run_is_logged_and_normalized() {
    let dir = bin_dir();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("agent.log");
    let dump = work.path().join("env.json");
    let ctx = RunContext {
        command: dir.path().join("claude").to_string_lossy().into_owned(),
        prompt: "Summarize".into(),
        full_control: false,
        previous_session_id: None,
        work_dir: work.path().to_path_buf(),
        ..RunContext::default()
    };
    let cfg = SubagentConfig::from_value(&json!({"output_format": "stream-json"}));
    let plan = build_claude_subagent_plan(
        &cfg,
        &ctx,
        &SupportedFlags::all_true(ProviderId::ClaudeCode),
    )
    .unwrap();
    let (code, stdout, _) = run_plan(
        &plan,
        &[
            ("FAKE_AGENT_LOG", log.to_string_lossy().into_owned()),
            ("FAKE_AGENT_ENV_DUMP", dump.to_string_lossy().into_owned()),
            ("MARKER_VAR", "42".into()),
        ],
    )
    .await;
    assert_eq!(code, 0);
    let mut collector = StreamJsonCollector::default();
    collector.append(stdout.as_bytes());
    let (result, _) = collector.finalize();
    let mut n = ClaudeNormalizer::default();
    let mut events = Vec::new();
    for e in &result.events {
        events.extend(n.push_line(&e.raw));
    }
    events.extend(n.finish());
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.event_type().map_or("unknown", |t| t.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            "message",
            "tool_call",
            "tool_result",
            "unknown",
            "tool_call",
            "tool_result",
            "unknown",
            "message"
        ]
    );
    assert!(matches!(&events[3], NormalizedEvent::Unknown { raw } if raw.starts_with("[debug]")));
    let out = parse_subagent_output(ProviderId::ClaudeCode, plan.output_format, &stdout);
    assert_eq!(out.output.content_type, ContentType::Markdown);

    let entry: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["role"], "agent");
    assert_eq!(entry["provider"], "claude");
    assert!(entry["pid"].as_u64().unwrap() > 0);
    assert!(entry["ts_ms"].as_u64().unwrap() > 0);
    let argv: Vec<String> = serde_json::from_value(entry["argv"].clone()).unwrap();
    assert_eq!(&argv[1..], &plan.args[..]);
    let env: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(env["MARKER_VAR"], "42");
}

#[tokio::test]
async fn claude_json_gemini_json_resume_failure_and_exit_codes() {
    let dir = bin_dir();
    let work = tempfile::tempdir().unwrap();
    let mut ctx = RunContext {
        command: dir.path().join("claude").to_string_lossy().into_owned(),
        prompt: "Say hi.".into(),
        full_control: false,
        previous_session_id: None,
        work_dir: work.path().to_path_buf(),
        ..RunContext::default()
    };
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let cfg = SubagentConfig::from_value(&json!({"json_schema": {"type": "object"}}));
    let plan = build_claude_subagent_plan(&cfg, &ctx, &flags).unwrap();
    let (code, stdout, _) = run_plan(&plan, &[]).await;
    assert_eq!(code, 0);
    let out = parse_subagent_output(ProviderId::ClaudeCode, plan.output_format, &stdout);
    assert_eq!(out.output.content, json!({"message": "Hi!"}));

    ctx.previous_session_id = Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".into());
    ctx.prompt = "Continue [[fake:resume_not_found]]".into();
    let plan = build_claude_subagent_plan(&SubagentConfig::default(), &ctx, &flags).unwrap();
    let (code, stdout, stderr) = run_plan(&plan, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert!(stderr.contains("No conversation found with session ID: 0f1e2d3c"));

    let (code, _, stderr) = run_plan(
        &plan,
        &[
            ("FAKE_AGENT_EXIT_CODE", "7".into()),
            ("FAKE_AGENT_STDERR", "extra".into()),
        ],
    )
    .await;
    assert_eq!(code, 7);
    assert!(stderr.contains("extra"));

    let gctx = RunContext {
        command: dir.path().join("gemini").to_string_lossy().into_owned(),
        previous_session_id: None,
        prompt: "Files?".into(),
        gemini_sandbox_available: true,
        ..ctx.clone()
    };
    let gcfg = SubagentConfig::from_value(&json!({"system_prompt": "Sys"}));
    let plan =
        build_gemini_subagent_plan(&gcfg, &gctx, &SupportedFlags::all_true(ProviderId::Gemini))
            .unwrap();
    let dump = work.path().join("genv.json");
    let (code, stdout, _) = run_plan(
        &plan,
        &[("FAKE_AGENT_ENV_DUMP", dump.to_string_lossy().into_owned())],
    )
    .await;
    assert_eq!(code, 0);
    let out = parse_subagent_output(ProviderId::Gemini, plan.output_format, &stdout);
    assert_eq!(out.output.content, json!({"summary": "Three files."}));
    assert_eq!(out.metadata["usage"]["total_tokens"], json!(8123));
    let env: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let sys_md = env["GEMINI_SYSTEM_MD"].as_str().unwrap();
    assert!(std::fs::read_to_string(sys_md).unwrap().starts_with("Sys"));
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); check /proc state where available.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        return stat.split_whitespace().nth(2) != Some("Z");
    }
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn ignores_sigterm_and_spawns_grandchildren() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("agent.log");
    let mut child = tokio::process::Command::new(FAKE)
        .args(["--as", "codex", "exec", "--json", "x"])
        .env("FAKE_AGENT_LOG", &log)
        .env("FAKE_AGENT_IGNORE_TERM", "1")
        .env("FAKE_AGENT_GRANDCHILDREN", "2")
        .env("FAKE_AGENT_GRANDCHILD_SLEEP_MS", "20000")
        .env("FAKE_AGENT_HOLD_MS", "20000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    let grandchildren = wait_for_grandchildren(&log, 2).await;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGTERM must be ignored"
    );
    child.kill().await.unwrap();
    for gpid in &grandchildren {
        assert!(alive(*gpid), "grandchild {gpid} survives the parent");
        unsafe { libc::kill(*gpid, libc::SIGKILL) };
    }
}

async fn wait_for_grandchildren(log: &Path, n: usize) -> Vec<i32> {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(log) {
            let pids: Vec<i32> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["role"] == "grandchild")
                .filter_map(|v| v["pid"].as_i64().map(|p| p as i32))
                .collect();
            if pids.len() >= n {
                return pids;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "grandchildren never logged in {}",
        PathBuf::from(log).display()
    );
}
