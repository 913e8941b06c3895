//! Argument-by-argument checks of the pure argv builders against providers.md §3–5, §9–10.

use std::path::PathBuf;

use panorama_protocol::jobs::{ModelRunPayload, OutputFormat, ReasoningEffort};
use panorama_providers::argv::*;
use panorama_providers::config::{
    RunContext, RunOutputFormat, SubagentConfig, SAFE_MODE_APPEND_PROMPT,
};
use panorama_providers::flags::SupportedFlags;
use panorama_providers::{ProviderError, ProviderId};
use serde_json::json;

fn ctx(full_control: bool) -> RunContext {
    RunContext {
        command: "claude".into(),
        prompt: "Do it".into(),
        full_control,
        previous_session_id: None,
        work_dir: PathBuf::from("/w"),
        ..RunContext::default()
    }
}

fn cfg(v: serde_json::Value) -> SubagentConfig {
    SubagentConfig::from_value(&v)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn claude_restricted_defaults() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let plan = build_claude_subagent_plan(&cfg(json!({})), &ctx(false), &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print",
            "--output-format",
            "json",
            "--allowedTools",
            "WebSearch",
            "--permission-mode",
            "dontAsk",
            "--setting-sources",
            "local",
            "--disable-slash-commands",
            "-p",
            "Do it",
        ])
    );
    assert_eq!(plan.output_format, RunOutputFormat::Json);
    assert_eq!(plan.timeout_ms, 30 * 60_000);
    assert_eq!(plan.cwd, PathBuf::from("/w"));
    assert!(plan.env.is_empty() && plan.files.is_empty());
}

#[test]
fn claude_every_option_in_order() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let config = cfg(json!({
        "output_format": "stream", "include_partial_messages": true, "model": "opus",
        "allowed_tools": ["Read", "Grep"], "disallowed_tools": "Bash,Write",
        "append_system_prompt": "Be brief.", "system_prompt": "You are X.",
        "json_schema": {"type": "object"}, "permission_mode": "plan",
        "max_budget_usd": 1.5, "input_format": "text", "betas": ["b1", "b2"],
        "no_session_persistence": true, "session_id": "sid", "resume_session_id": "rid",
        "timeout_ms": 5000
    }));
    let plan = build_claude_subagent_plan(&config, &ctx(false), &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--model",
            "opus",
            "--allowedTools",
            "Read,Grep",
            "--disallowedTools",
            "Bash,Write",
            "--append-system-prompt",
            "Be brief.",
            "--system-prompt",
            "You are X.",
            "--json-schema",
            "{\"type\":\"object\"}",
            "--permission-mode",
            "plan",
            "--max-budget-usd",
            "1.5",
            "--input-format",
            "text",
            "--betas",
            "b1",
            "b2",
            "--no-session-persistence",
            "--session-id",
            "sid",
            "--resume",
            "rid",
            "--setting-sources",
            "local",
            "--disable-slash-commands",
            "-p",
            "Do it",
        ])
    );
    assert_eq!(plan.output_format, RunOutputFormat::StreamJson);
    assert_eq!(plan.timeout_ms, 5000);
}

#[test]
fn claude_full_control() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let config = cfg(
        json!({"allowed_tools": ["WebSearch"], "append_system_prompt": SAFE_MODE_APPEND_PROMPT, "output_format": "text"}),
    );
    let plan = build_claude_subagent_plan(&config, &ctx(true), &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print",
            "--output-format",
            "text",
            "--permission-mode",
            "bypassPermissions",
            "--dangerously-skip-permissions",
            "-p",
            "Do it"
        ])
    );
    // explicit non-default tools stay restricted under full control; explicit mode kept
    let config = cfg(json!({"allowed_tools": "Read", "permission_mode": "acceptEdits"}));
    let plan = build_claude_subagent_plan(&config, &ctx(true), &flags).unwrap();
    assert!(plan
        .args
        .windows(2)
        .any(|w| w == ["--allowedTools", "Read"]));
    assert!(plan
        .args
        .windows(2)
        .any(|w| w == ["--permission-mode", "acceptEdits"]));
    assert!(!plan.args.contains(&"--setting-sources".to_string()));
}

#[test]
fn claude_fallbacks_when_flags_missing() {
    let flags = SupportedFlags::all_false(ProviderId::ClaudeCode)
        .with("outputFormatFlag", true)
        .with("toolsFlag", true);
    let config = cfg(
        json!({"output_format": "stream-json", "append_system_prompt": "Be brief.", "system_prompt": "You are X.", "json_schema": {"type": "object"}, "model": "opus"}),
    );
    let plan = build_claude_subagent_plan(&config, &ctx(false), &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print", "--output-format", "json", "--tools", "WebSearch", "-p",
            "You are X.\n\nDo it\n\nBe brief.\n\nReturn STRICT JSON matching this schema: {\"type\":\"object\"}",
        ])
    );
    assert_eq!(plan.output_format, RunOutputFormat::Json);
    let mut c = ctx(false);
    c.previous_session_id = Some("prev".into());
    assert_eq!(
        build_claude_subagent_plan(&cfg(json!({})), &c, &flags),
        Err(ProviderError::ResumeUnsupported)
    );
    assert_eq!(
        ProviderError::ResumeUnsupported.to_string(),
        "Claude CLI does not support session continuation (--resume)"
    );
    let all = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let plan = build_claude_subagent_plan(&cfg(json!({})), &c, &all).unwrap();
    assert!(plan.args.windows(2).any(|w| w == ["--resume", "prev"]));
    // no --output-format at all → plain text
    let none = SupportedFlags::all_false(ProviderId::ClaudeCode);
    let plan = build_claude_subagent_plan(&cfg(json!({})), &ctx(false), &none).unwrap();
    assert_eq!(plan.args, s(&["--print", "-p", "Do it"]));
    assert_eq!(plan.output_format, RunOutputFormat::Text);
}

#[test]
fn codex_argv() {
    let flags = SupportedFlags::all_true(ProviderId::Codex);
    let mut c = ctx(false);
    c.command = "codex".into();
    let plan = build_codex_subagent_plan(
        &cfg(json!({"model": "gpt-5-codex", "append_system_prompt": "Be brief."})),
        &c,
        &flags,
    )
    .unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "exec",
            "--skip-git-repo-check",
            "--sandbox",
            "read-only",
            "--model",
            "gpt-5-codex",
            "-c",
            "model_reasoning_effort=\"high\"",
            "-c",
            "features.shell_tool=false",
            "-c",
            "web_search=\"live\"",
            "--json",
            "Do it\n\nBe brief.",
        ])
    );
    let plan = build_codex_subagent_plan(
        &cfg(
            json!({"allowed_tools": ["Read"], "output_format": "text", "reasoning_effort": "low"}),
        ),
        &c,
        &flags,
    )
    .unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "exec",
            "--skip-git-repo-check",
            "--sandbox",
            "read-only",
            "-c",
            "model_reasoning_effort=\"low\"",
            "-c",
            "features.shell_tool=false",
            "-c",
            "web_search=\"disabled\"",
            "Do it"
        ])
    );
    assert_eq!(plan.output_format, RunOutputFormat::Text);
    c.full_control = true;
    let plan = build_codex_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    assert_eq!(
        &plan.args[..3],
        &s(&[
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox"
        ])[..]
    );
    assert!(plan.args.contains(&"features.shell_tool=true".to_string()));
    assert!(plan.args.contains(&"web_search=\"live\"".to_string()));
    let no_bypass = flags
        .clone()
        .with("dangerouslyBypassApprovalsAndSandboxFlag", false);
    let plan = build_codex_subagent_plan(&cfg(json!({})), &c, &no_bypass).unwrap();
    assert_eq!(
        &plan.args[..4],
        &s(&[
            "exec",
            "--skip-git-repo-check",
            "--sandbox",
            "danger-full-access"
        ])[..]
    );
    // Continuation: `exec [options] resume <id> <prompt>` (Codex 0.171.0).
    c.previous_session_id = Some("thread-1".into());
    let plan = build_codex_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    let n = plan.args.len();
    assert_eq!(&plan.args[n - 3..n - 1], &s(&["resume", "thread-1"])[..]);
    assert_eq!(
        build_codex_subagent_plan(
            &cfg(json!({})),
            &c,
            &flags.clone().with("resumeFlag", false)
        ),
        Err(ProviderError::ContinuationUnsupported)
    );
}

#[test]
fn gemini_resumes_with_its_flag() {
    let flags = SupportedFlags::all_true(ProviderId::Gemini);
    let mut c = ctx(true);
    c.previous_session_id = Some("sess-1".into());
    let plan = build_gemini_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    let n = plan.args.len();
    assert_eq!(&plan.args[n - 3..n - 1], &s(&["--resume", "sess-1"])[..]);
    assert_eq!(
        build_gemini_subagent_plan(&cfg(json!({})), &c, &flags.with("resumeFlag", false)),
        Err(ProviderError::ContinuationUnsupported)
    );
}

#[test]
fn gemini_argv_env_and_files() {
    let flags = SupportedFlags::all_true(ProviderId::Gemini);
    let mut c = ctx(false);
    c.command = "gemini".into();
    let gemini_cfg = cfg(
        json!({"model": "gemini-2.5-pro", "extensions": ["a", "b"], "system_prompt": "Sys", "append_system_prompt": "App"}),
    );
    // Restricted runs need a sandbox: refused with a reason where none exists.
    assert_eq!(
        build_gemini_subagent_plan(&gemini_cfg, &c, &flags),
        Err(ProviderError::SandboxUnavailable)
    );
    c.gemini_sandbox_available = true;
    let plan = build_gemini_subagent_plan(&gemini_cfg, &c, &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--output-format",
            "json",
            "--skip-trust",
            "--approval-mode",
            "plan",
            "--sandbox",
            "--model",
            "gemini-2.5-pro",
            "--extensions",
            "a,b",
            "Do it"
        ])
    );
    assert_eq!(
        plan.files,
        vec![PlanFile {
            relative_path: "system.md".into(),
            contents: format!("Sys\n\nApp\n\n{GEMINI_STRICT_JSON_NOTE}")
        }]
    );
    assert_eq!(
        plan.env.get(GEMINI_SYSTEM_MD_ENV).map(String::as_str),
        Some("/w/system.md")
    );
    c.full_control = true;
    let plan =
        build_gemini_subagent_plan(&cfg(json!({"output_format": "text"})), &c, &flags).unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--output-format",
            "text",
            "--skip-trust",
            "--approval-mode",
            "yolo",
            "Do it"
        ])
    );
    assert!(plan.files.is_empty() && plan.env.is_empty());
    // Without --skip-trust the work dir is trusted through the environment;
    // --yolo only when the CLI has it.
    let yolo_only = SupportedFlags::all_false(ProviderId::Gemini).with("yoloFlag", true);
    let plan =
        build_gemini_subagent_plan(&cfg(json!({"output_format": "text"})), &c, &yolo_only).unwrap();
    assert_eq!(
        plan.args,
        s(&["--output-format", "text", "--yolo", "Do it"])
    );
    assert_eq!(
        plan.env.get(GEMINI_TRUST_ENV).map(String::as_str),
        Some("true")
    );
    let neither = SupportedFlags::all_false(ProviderId::Gemini);
    let plan =
        build_gemini_subagent_plan(&cfg(json!({"output_format": "text"})), &c, &neither).unwrap();
    assert_eq!(plan.args, s(&["--output-format", "text", "Do it"]));
}

#[test]
fn full_control_support_reasons() {
    let none = |id| SupportedFlags::all_false(id);
    assert_eq!(
        full_control_support(ProviderId::ClaudeCode, &none(ProviderId::ClaudeCode)).reason.as_deref(),
        Some("Claude CLI does not expose elevated permission flags on this host (missing --permission-mode bypassPermissions and --dangerously-skip-permissions).")
    );
    assert_eq!(
        full_control_support(ProviderId::Codex, &none(ProviderId::Codex)).reason.as_deref(),
        Some("Codex CLI does not expose elevated permission flags on this host (missing --dangerously-bypass-approvals-and-sandbox and --sandbox danger-full-access).")
    );
    assert_eq!(
        full_control_support(ProviderId::Gemini, &none(ProviderId::Gemini)).reason.as_deref(),
        Some("Gemini CLI does not expose elevated approval flags on this host (missing --approval-mode yolo and --yolo).")
    );
    assert!(
        full_control_support(
            ProviderId::ClaudeCode,
            &none(ProviderId::ClaudeCode).with("permissionModeFlag", true)
        )
        .supported
    );
    assert!(
        full_control_support(
            ProviderId::Codex,
            &none(ProviderId::Codex).with("sandboxFlag", true)
        )
        .supported
    );
    assert!(
        full_control_support(
            ProviderId::Gemini,
            &none(ProviderId::Gemini).with("yoloFlag", true)
        )
        .supported
    );
}

fn payload(
    provider: ProviderId,
    format: OutputFormat,
    schema: Option<serde_json::Value>,
) -> ModelRunPayload {
    ModelRunPayload {
        prompt: "Q".into(),
        model: "m1".into(),
        provider,
        output_format: format,
        json_schema: schema,
        append_system_prompt: Some("S".into()),
        reasoning_effort: Some(ReasoningEffort::Medium),
        timeout_ms: 110_000,
    }
}

#[test]
fn model_run_argv() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let plan = build_model_run_plan(
        &payload(
            ProviderId::ClaudeCode,
            OutputFormat::Json,
            Some(json!({"type":"object"})),
        ),
        "claude",
        "/w".into(),
        &flags,
    )
    .unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print",
            "--model",
            "m1",
            "--output-format",
            "json",
            "--json-schema",
            "{\"type\":\"object\"}",
            "--tools",
            "",
            "--input-format",
            "text",
            "--no-session-persistence",
            "--permission-mode",
            "dontAsk",
            "--setting-sources",
            "local",
            "--disable-slash-commands",
            "--append-system-prompt",
            "S",
            "-p",
            "Q"
        ])
    );
    assert_eq!(plan.timeout_ms, 110_000);
    let plan = build_model_run_plan(
        &payload(ProviderId::ClaudeCode, OutputFormat::Text, None),
        "claude",
        "/w".into(),
        &SupportedFlags::all_false(ProviderId::ClaudeCode),
    )
    .unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "--print",
            "--model",
            "m1",
            "--output-format",
            "text",
            "--allowedTools",
            "",
            "--append-system-prompt",
            "S",
            "-p",
            "Q"
        ])
    );
    assert_eq!(
        build_model_run_plan(
            &payload(ProviderId::ClaudeCode, OutputFormat::Json, None),
            "claude",
            "/w".into(),
            &flags
        ),
        Err(ProviderError::ModelRunRequiresSchema)
    );
    let codex_flags = SupportedFlags::all_true(ProviderId::Codex);
    let plan = build_model_run_plan(
        &payload(
            ProviderId::Codex,
            OutputFormat::Json,
            Some(json!({"type":"object"})),
        ),
        "codex",
        "/w".into(),
        &codex_flags,
    )
    .unwrap();
    assert_eq!(
        plan.args,
        s(&[
            "exec",
            "--sandbox",
            "read-only",
            "--skip-git-repo-check",
            "--model",
            "m1",
            "-c",
            "model_reasoning_effort=\"medium\"",
            "--output-schema",
            "/w/output-schema.json",
            "-o",
            "/w/last-message.txt",
            "--json",
            "S\n\nQ"
        ])
    );
    assert_eq!(
        plan.files,
        vec![PlanFile {
            relative_path: "output-schema.json".into(),
            contents: "{\"type\":\"object\",\"properties\":{},\"required\":[],\"additionalProperties\":false}".into()
        }]
    );
    let v = build_validation_plan(ProviderId::ClaudeCode, "claude", "/v".into(), &flags).unwrap();
    assert_eq!(v.timeout_ms, 30_000);
    assert_eq!(v.args.last().map(String::as_str), Some("Say hi."));
    assert!(!v.args.contains(&"--model".to_string()));
    assert!(v
        .args
        .contains(&panorama_providers::health::validation_schema().to_string()));
}

#[test]
fn display_command_redacts_prompts() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let plan = build_claude_subagent_plan(
        &cfg(json!({"append_system_prompt": "secret"})),
        &ctx(false),
        &flags,
    )
    .unwrap();
    let shown = display_command(&plan);
    assert!(!shown.contains("secret") && !shown.contains("Do it"));
    assert!(shown.starts_with("claude --print --output-format json"));
}

#[test]
fn claude_full_control_as_root_sets_is_sandbox_in_the_child_env_only() {
    let flags = SupportedFlags::all_true(ProviderId::ClaudeCode);
    let mut c = ctx(true);
    c.running_as_root = true;
    let plan = build_claude_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    assert_eq!(
        plan.env.get(CLAUDE_IS_SANDBOX_ENV).map(String::as_str),
        Some("1")
    );
    c.full_control = false;
    let plan = build_claude_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    assert!(plan.env.is_empty(), "restricted runs never claim a sandbox");
    c.full_control = true;
    c.running_as_root = false;
    let plan = build_claude_subagent_plan(&cfg(json!({})), &c, &flags).unwrap();
    assert!(plan.env.is_empty());
}

#[test]
fn codex_text_model_run_has_no_json_and_schema_is_strict() {
    let flags = SupportedFlags::all_true(ProviderId::Codex);
    let mut payload = ModelRunPayload {
        prompt: "Q".into(),
        model: "default".into(),
        provider: ProviderId::Codex,
        output_format: OutputFormat::Text,
        json_schema: None,
        append_system_prompt: None,
        reasoning_effort: None,
        timeout_ms: 1000,
    };
    let plan = build_model_run_plan(&payload, "codex", PathBuf::from("/w"), &flags).unwrap();
    assert!(
        !plan.args.contains(&"--json".to_string()),
        "{:?}",
        plan.args
    );
    assert_eq!(plan.answer_file, None);
    payload.output_format = OutputFormat::Json;
    payload.json_schema = Some(
        json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}),
    );
    let plan = build_model_run_plan(&payload, "codex", PathBuf::from("/w"), &flags).unwrap();
    assert_eq!(plan.answer_file, Some(PathBuf::from("/w/last-message.txt")));
    let schema: serde_json::Value = serde_json::from_str(&plan.files[0].contents).unwrap();
    assert_eq!(
        schema,
        json!({"type": "object", "additionalProperties": false, "required": ["a", "b"],
            "properties": {"a": {"type": "string"}, "b": {"type": ["integer", "null"]}}})
    );
}

#[test]
fn strict_schema_turns_free_form_args_into_args_json() {
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "args": {"type": "object"}},
        "required": ["name", "args"]});
    assert_eq!(
        strict_json_schema(&schema),
        json!({"type": "object", "additionalProperties": false, "required": ["name", "args_json"],
            "properties": {"name": {"type": "string"},
                "args_json": {"type": "string", "description": "The args object, JSON-encoded."}}})
    );
}

#[test]
fn gemini_model_run_trusts_its_work_dir() {
    let payload = ModelRunPayload {
        prompt: "Q".into(),
        model: "default".into(),
        provider: ProviderId::Gemini,
        output_format: OutputFormat::Text,
        json_schema: None,
        append_system_prompt: None,
        reasoning_effort: None,
        timeout_ms: 1000,
    };
    let flags = SupportedFlags::all_true(ProviderId::Gemini);
    let plan = build_model_run_plan(&payload, "gemini", PathBuf::from("/w"), &flags).unwrap();
    assert!(plan.args.contains(&"--skip-trust".to_string()));
}
