//! Every normalizer over its fixtures, asserting the exact event sequence.

use panorama_providers::config::RunOutputFormat;
use panorama_providers::normalize::{
    normalize_all, ClaudeNormalizer, CodexNormalizer, GeminiNormalizer, NormalizedEvent,
    StreamNormalizer,
};
use panorama_providers::output::{parse_subagent_output, ContentType};
use panorama_providers::retry::{classify_retry, AttemptOutcome, RetryConfig, RetryReason};
use panorama_providers::transcript::{exit_code, parse_transcript, stdout_text, TranscriptStep};
use panorama_providers::ProviderId;
use serde_json::{json, Value};

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// `(event_type | "unknown", payload | raw)` pairs.
fn run(n: &mut dyn StreamNormalizer, path: &str) -> Vec<(String, Value)> {
    normalize_all(n, &stdout_text(&fixture(path)))
        .into_iter()
        .map(|e| match e {
            NormalizedEvent::Run {
                event_type,
                payload,
            } => (event_type.as_str().to_string(), payload),
            NormalizedEvent::Unknown { raw } => ("unknown".to_string(), json!(raw)),
        })
        .collect()
}

fn ev(t: &str, v: Value) -> (String, Value) {
    (t.to_string(), v)
}

const MODEL: &str = "claude-sonnet-4-5-20250929";

#[test]
fn claude_success_stream() {
    let mut n = ClaudeNormalizer::default();
    let events = run(&mut n, "claude/success.jsonl");
    let expected = vec![
        ev("message", json!({"role":"assistant","content":"Let me read the README first.","message_id":"msg_01A","model":MODEL,"stop_reason":"tool_use"})),
        ev("tool_call", json!({"tool_name":"Read","tool_use_id":"toolu_01R","tool_input":{"file_path":"/tmp/panorama/work/run-1/README.md"},"summary":"Read: /tmp/panorama/work/run-1/README.md","message_id":"msg_01A"})),
        ev("tool_result", json!({"tool_use_id":"toolu_01R","tool_name":"Read","content":"     1\t# Demo\n     2\tA tiny demo project.\n","is_error":false,"message_id":"msg_01A"})),
        ev("unknown", json!("[debug] hook PreToolUse skipped: no matchers configured")),
        ev("tool_call", json!({"tool_name":"Grep","tool_use_id":"toolu_01G","tool_input":{"pattern":"TODO","path":"/tmp/panorama/work/run-1"},"summary":"Grep: TODO","message_id":"msg_01B"})),
        ev("tool_result", json!({"tool_use_id":"toolu_01G","tool_name":"Grep","content":"No files found","is_error":false,"message_id":"msg_01B"})),
        ev("unknown", json!("{\"type\":\"control_keepalive\",\"session_id\":\"8f0e6c1a-3b7d-4c55-9a51-2f4b6a0d9e11\"}")),
        ev("message", json!({"role":"assistant","content":"The README describes a tiny demo project. There are no TODOs.","message_id":"msg_01C","model":MODEL,"stop_reason":"end_turn"})),
    ];
    assert_eq!(events, expected);
    let s = n.summary();
    assert_eq!(
        s.session_id.as_deref(),
        Some("8f0e6c1a-3b7d-4c55-9a51-2f4b6a0d9e11")
    );
    assert_eq!(s.model.as_deref(), Some(MODEL));
    assert_eq!(
        s.result_text.as_deref(),
        Some("The README describes a tiny demo project. There are no TODOs.")
    );
    assert_eq!(s.total_cost_usd, Some(0.0213));
    assert_eq!(s.num_turns, Some(3));
    assert_eq!(s.usage.as_ref().unwrap()["output_tokens"], json!(168));
    assert!(!s.is_error);

    let out = parse_subagent_output(
        ProviderId::ClaudeCode,
        RunOutputFormat::StreamJson,
        &stdout_text(&fixture("claude/success.jsonl")),
    );
    assert_eq!(out.output.content_type, ContentType::Markdown);
    assert_eq!(
        out.output.content,
        json!("The README describes a tiny demo project. There are no TODOs.")
    );
    assert_eq!(out.parse_error, None);
    assert_eq!(out.provider_error, None);
    assert_eq!(out.metadata["adapter_id"], json!("claude_code"));
    assert_eq!(
        out.metadata["session_id"],
        json!("8f0e6c1a-3b7d-4c55-9a51-2f4b6a0d9e11")
    );
    assert_eq!(out.metadata["total_cost_usd"], json!(0.0213));
    assert_eq!(out.metadata["model_usage"][MODEL]["costUSD"], json!(0.0213));
    assert_eq!(out.metadata["permission_denials"], json!([]));
}

#[test]
fn claude_structured_output() {
    let mut n = ClaudeNormalizer::default();
    let events = run(&mut n, "claude/structured.jsonl");
    assert_eq!(
        events,
        vec![ev(
            "tool_call",
            json!({"tool_name":"StructuredOutput","tool_use_id":"toolu_02S","tool_input":{"message":"Hi!"},"summary":"StructuredOutput","message_id":"msg_02A"})
        )]
    );
    assert_eq!(
        n.summary().structured_output,
        Some(json!({"message":"Hi!"}))
    );
    // json mode: stdout is just the result line
    let result_line = stdout_text(&fixture("claude/structured.jsonl"))
        .lines()
        .last()
        .unwrap()
        .to_string();
    let out = parse_subagent_output(ProviderId::ClaudeCode, RunOutputFormat::Json, &result_line);
    assert_eq!(out.output.content_type, ContentType::Json);
    assert_eq!(out.output.content, json!({"message":"Hi!"}));
    assert_eq!(
        panorama_providers::output::extract_model_run_output(ProviderId::ClaudeCode, &result_line)
            .unwrap(),
        json!({"message":"Hi!"})
    );
}

#[test]
fn claude_resume_not_found_has_no_stdout() {
    let text = fixture("claude/resume_not_found.jsonl");
    let mut n = ClaudeNormalizer::default();
    assert_eq!(run(&mut n, "claude/resume_not_found.jsonl"), vec![]);
    assert_eq!(exit_code(&text), 1);
    assert!(parse_transcript(&text).iter().any(|s| matches!(s, TranscriptStep::Stderr(e) if e.starts_with("No conversation found with session ID:"))));
    let out = parse_subagent_output(
        ProviderId::ClaudeCode,
        RunOutputFormat::StreamJson,
        &stdout_text(&text),
    );
    assert!(out.parse_error.is_some());
}

#[test]
fn claude_rate_limited_is_retryable() {
    let mut n = ClaudeNormalizer::default();
    let events = run(&mut n, "claude/rate_limited.jsonl");
    let text = "API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"This request would exceed the rate limit for your organization.\"}}";
    assert_eq!(
        events,
        vec![ev(
            "message",
            json!({"role":"assistant","content":text,"message_id":"msg_synthetic_1","model":"<synthetic>","stop_reason":"stop_sequence"})
        )]
    );
    assert!(n.summary().is_error);
    assert_eq!(n.summary().errors, vec![text.to_string()]);
    let out = parse_subagent_output(
        ProviderId::ClaudeCode,
        RunOutputFormat::StreamJson,
        &stdout_text(&fixture("claude/rate_limited.jsonl")),
    );
    assert_eq!(out.provider_error.as_deref(), Some(text));
    let cfg = RetryConfig {
        max_attempts: 3,
        on_capacity: true,
        ..RetryConfig::default()
    };
    let outcome = AttemptOutcome {
        ok: false,
        error: out.provider_error.as_deref(),
        ..Default::default()
    };
    assert_eq!(
        classify_retry(&cfg, RunOutputFormat::StreamJson, &outcome),
        Some(RetryReason::Capacity)
    );
}

#[test]
fn codex_success_stream() {
    let mut n = CodexNormalizer::default();
    let events = run(&mut n, "codex/success.jsonl");
    assert_eq!(
        events,
        vec![
            ev("message", json!({"role":"assistant","content":"**Inspecting the repository layout**","kind":"reasoning"})),
            ev("tool_call", json!({"tool_name":"shell","tool_use_id":"item_1","tool_input":{"command":"bash -lc ls"},"summary":"bash -lc ls"})),
            ev("tool_result", json!({"tool_use_id":"item_1","tool_name":"shell","content":"Cargo.toml\nREADME.md\nsrc\n","is_error":false,"exit_code":0})),
            ev("unknown", json!("2025-10-28T12:00:01.123456Z ERROR codex_core::rollout::list: state db missing rollout path for thread 0199a213")),
            ev("unknown", json!("{\"type\":\"thread.compacted\",\"thread_id\":\"0199a213-81c0-7800-8aa1-bbab2a035a53\"}")),
            ev("message", json!({"role":"assistant","content":"{\"summary\":\"A Rust crate with a README.\",\"files\":3}"})),
        ]
    );
    assert_eq!(
        n.summary().session_id.as_deref(),
        Some("0199a213-81c0-7800-8aa1-bbab2a035a53")
    );
    let out = parse_subagent_output(
        ProviderId::Codex,
        RunOutputFormat::Json,
        &stdout_text(&fixture("codex/success.jsonl")),
    );
    assert_eq!(out.output.content_type, ContentType::Json);
    assert_eq!(
        out.output.content,
        json!({"summary":"A Rust crate with a README.","files":3})
    );
    assert_eq!(
        out.metadata["usage"],
        json!({"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122})
    );
    assert_eq!(out.parse_error, None);
    assert_eq!(out.provider_error, None);
}

#[test]
fn codex_rate_limited() {
    let mut n = CodexNormalizer::default();
    assert_eq!(run(&mut n, "codex/rate_limited.jsonl"), vec![]);
    let s = n.summary();
    assert!(s.is_error);
    assert_eq!(
        s.errors.last().map(String::as_str),
        Some("exceeded retry limit, last status: 429 Too Many Requests")
    );
    let out = parse_subagent_output(
        ProviderId::Codex,
        RunOutputFormat::Json,
        &stdout_text(&fixture("codex/rate_limited.jsonl")),
    );
    assert_eq!(
        out.provider_error.as_deref(),
        Some("exceeded retry limit, last status: 429 Too Many Requests")
    );
    let cfg = RetryConfig {
        max_attempts: 2,
        on_capacity: true,
        ..RetryConfig::default()
    };
    let outcome = AttemptOutcome {
        ok: false,
        error: out.provider_error.as_deref(),
        ..Default::default()
    };
    assert_eq!(
        classify_retry(&cfg, RunOutputFormat::Json, &outcome),
        Some(RetryReason::Capacity)
    );
}

#[test]
fn gemini_success_stream() {
    let mut n = GeminiNormalizer::default();
    let events = run(&mut n, "gemini/success.jsonl");
    assert_eq!(
        events,
        vec![
            ev("unknown", json!("Loaded cached credentials.")),
            ev("message", json!({"role":"user","content":"List the files and summarize."})),
            ev("tool_call", json!({"tool_name":"list_directory","tool_use_id":"list_directory-1761652801200-a1b2c3","tool_input":{"path":"."},"summary":"list_directory: ."})),
            ev("tool_result", json!({"tool_use_id":"list_directory-1761652801200-a1b2c3","tool_name":"list_directory","content":"Listed 3 item(s).","is_error":false})),
            ev("message", json!({"role":"assistant","content":"{\"summary\":"})),
            ev("message", json!({"role":"assistant","content":"\"Three files.\"}"})),
            ev("unknown", json!("{\"type\":\"telemetry\",\"timestamp\":\"2025-10-28T12:00:02.160Z\",\"event\":\"flush\"}")),
        ]
    );
    let s = n.summary();
    assert_eq!(
        s.session_id.as_deref(),
        Some("c0ffee00-1234-4abc-9def-0123456789ab")
    );
    assert_eq!(s.model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!(
        s.result_text.as_deref(),
        Some("{\"summary\":\"Three files.\"}")
    );
    assert_eq!(s.usage.as_ref().unwrap()["total_tokens"], json!(8123));
    assert!(!s.is_error);
}

#[test]
fn gemini_rate_limited() {
    let mut n = GeminiNormalizer::default();
    let events = run(&mut n, "gemini/rate_limited.jsonl");
    assert_eq!(
        events,
        vec![ev("message", json!({"role":"user","content":"Say hi."}))]
    );
    let s = n.summary();
    assert!(s.is_error);
    assert_eq!(s.result_subtype.as_deref(), Some("error"));
    assert_eq!(s.errors.len(), 2);
    let cfg = RetryConfig {
        max_attempts: 2,
        on_capacity: true,
        ..RetryConfig::default()
    };
    let joined = s.errors.join("\n");
    let outcome = AttemptOutcome {
        ok: false,
        error: Some(&joined),
        ..Default::default()
    };
    assert_eq!(
        classify_retry(&cfg, RunOutputFormat::Json, &outcome),
        Some(RetryReason::Capacity)
    );
}

#[test]
fn every_fixture_is_covered() {
    let mut seen = Vec::new();
    for dir in ["claude", "codex", "gemini"] {
        for entry in
            std::fs::read_dir(format!("{}/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.path().is_dir() {
                // Recorded from a real CLI version (see the tests below).
                for file in std::fs::read_dir(entry.path()).unwrap() {
                    let file = file.unwrap().file_name().into_string().unwrap();
                    seen.push(format!("{dir}/{name}/{file}"));
                }
                continue;
            }
            seen.push(format!("{dir}/{name}"));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "claude/2.1.197/tool-turn.jsonl",
            "claude/rate_limited.jsonl",
            "claude/resume_not_found.jsonl",
            "claude/structured.jsonl",
            "claude/success.jsonl",
            "codex/0.171.0/tool-turn.jsonl",
            "codex/rate_limited.jsonl",
            "codex/success.jsonl",
            "gemini/0.61.0/tool-turn.jsonl",
            "gemini/rate_limited.jsonl",
            "gemini/success.jsonl",
        ]
    );
}

/// Recorded from the real CLIs on the loopback model API (a turn that runs
/// `ls` through the shell tool, then answers); re-record with
/// `PANORAMA_RECORD_FIXTURES=1 cargo test -p panorama-testkit --test model_api_cli`.
fn real_tool_turn(n: &mut dyn StreamNormalizer, path: &str) -> Vec<String> {
    run(n, path)
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t != "unknown")
        .collect()
}

#[test]
fn real_cli_tool_turns_normalize_to_call_result_message() {
    const ANSWER: &str = "The folder holds one marker file.";
    let mut claude = ClaudeNormalizer::default();
    assert_eq!(
        real_tool_turn(&mut claude, "claude/2.1.197/tool-turn.jsonl"),
        ["tool_call", "tool_result", "message"]
    );
    assert_eq!(claude.summary().result_text.as_deref(), Some(ANSWER));
    let mut codex = CodexNormalizer::default();
    assert_eq!(
        real_tool_turn(&mut codex, "codex/0.171.0/tool-turn.jsonl"),
        ["tool_call", "tool_result", "message"]
    );
    assert_eq!(codex.summary().result_text.as_deref(), Some(ANSWER));
    let mut gemini = GeminiNormalizer::default();
    assert_eq!(
        real_tool_turn(&mut gemini, "gemini/0.61.0/tool-turn.jsonl"),
        ["message", "tool_call", "tool_result", "message"]
    );
    assert_eq!(gemini.summary().result_text.as_deref(), Some(ANSWER));
    for (provider, path) in [
        (ProviderId::ClaudeCode, "claude/2.1.197/tool-turn.jsonl"),
        (ProviderId::Codex, "codex/0.171.0/tool-turn.jsonl"),
        (ProviderId::Gemini, "gemini/0.61.0/tool-turn.jsonl"),
    ] {
        let out = parse_subagent_output(provider, RunOutputFormat::StreamJson, &fixture(path));
        assert_eq!(out.parse_error, None, "{path}");
        assert_eq!(out.provider_error, None, "{path}");
        assert_eq!(out.output.content, json!(ANSWER), "{path}");
    }
}
