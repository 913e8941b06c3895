//! Pure argv/environment builders (providers.md §3–5, §9, §10).

use std::collections::BTreeMap;
use std::path::PathBuf;

use panorama_protocol::capabilities::ProviderId;
use panorama_protocol::full_control::{provider_full_control_support, ProviderFullControlSupport};
use panorama_protocol::jobs::{ModelRunPayload, OutputFormat};
use serde_json::Value;

use crate::config::{
    RunContext, RunOutputFormat, SubagentConfig, DEFAULT_ALLOWED_TOOLS,
    DEFAULT_CLAUDE_PERMISSION_MODE, DEFAULT_CODEX_REASONING_EFFORT, SAFE_MODE_APPEND_PROMPT,
};
use crate::error::ProviderError;
use crate::flags::SupportedFlags;

/// Gemini's system-prompt file variable.
pub const GEMINI_SYSTEM_MD_ENV: &str = "GEMINI_SYSTEM_MD";
/// Gemini's system prompt file name inside the work dir.
pub const GEMINI_SYSTEM_MD_FILE: &str = "system.md";
/// Codex model-run output schema file inside the work dir.
pub const CODEX_OUTPUT_SCHEMA_FILE: &str = "output-schema.json";
/// Codex's last message (`-o`) inside the work dir.
pub const CODEX_LAST_MESSAGE_FILE: &str = "last-message.txt";
/// Gemini's trust variable for CLIs without `--skip-trust`.
pub const GEMINI_TRUST_ENV: &str = "GEMINI_CLI_TRUST_WORKSPACE";
/// Claude's "this is a sandbox" variable: needed as root for bypass permissions.
pub const CLAUDE_IS_SANDBOX_ENV: &str = "IS_SANDBOX";
/// What replaces secret or prompt values in printable command lines.
pub const REDACTED: &str = "[REDACTED]";
/// Appended to Gemini's system prompt in json mode.
pub const GEMINI_STRICT_JSON_NOTE: &str = "Return STRICT JSON only. Do not wrap in code fences.";

/// A file the runner writes (0600) into the work dir before spawning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFile {
    /// Relative to the work dir (check with the gateway's safe-path rules).
    pub relative_path: String,
    pub contents: String,
}

/// Everything needed to spawn one provider run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub provider: ProviderId,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Overrides applied on top of the child env (runtime §3.1 step 3).
    pub env: BTreeMap<String, String>,
    pub files: Vec<PlanFile>,
    /// The format the output will actually be in.
    pub output_format: RunOutputFormat,
    pub timeout_ms: u64,
    /// A file the CLI writes its final answer to (Codex `-o`); read it
    /// after the run instead of digging the answer out of stdout.
    pub answer_file: Option<PathBuf>,
    /// JSON output was asked for with a schema: a prose answer is an error.
    /// Without a schema (non-strict) prose completes as markdown.
    pub strict_json: bool,
}

/// Full-control support of a provider given its detected flags (§10 / control-plane §13.3).
pub fn full_control_support(id: ProviderId, flags: &SupportedFlags) -> ProviderFullControlSupport {
    provider_full_control_support(id.as_str(), flags.as_map())
}

/// `"Return STRICT JSON matching this schema: <json>"`.
pub fn schema_instruction(schema: &Value) -> String {
    format!("Return STRICT JSON matching this schema: {schema}")
}

fn join_prompt(parts: &[Option<&str>]) -> String {
    parts
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The append prompt after the full-control rule (default safe-mode text dropped).
fn effective_append(config: &SubagentConfig, full_control: bool) -> Option<&str> {
    config
        .append_system_prompt
        .as_deref()
        .filter(|p| !(full_control && p.trim() == SAFE_MODE_APPEND_PROMPT))
}

/// Tool restriction: `None` = unrestricted.
fn allowed_tools(config: &SubagentConfig, full_control: bool) -> Option<Vec<String>> {
    let default: Vec<String> = DEFAULT_ALLOWED_TOOLS
        .iter()
        .map(|s| s.to_string())
        .collect();
    match &config.allowed_tools {
        Some(list) if full_control && *list == default => None,
        Some(list) => Some(list.clone()),
        None if full_control => None,
        None => Some(default),
    }
}

/// §3: Claude Code subagent argv.
pub fn build_claude_subagent_plan(
    config: &SubagentConfig,
    ctx: &RunContext,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    let fc = ctx.full_control;
    let mut args: Vec<String> = vec!["--print".into()];
    let mut prompt_extra: Vec<String> = Vec::new();
    // 1. output format
    let requested = config.output_format();
    let output_format = if !flags.has("outputFormatFlag") {
        RunOutputFormat::Text
    } else {
        let f = match requested {
            RunOutputFormat::StreamJson if flags.has("streamJsonFlag") => {
                RunOutputFormat::StreamJson
            }
            RunOutputFormat::Text => RunOutputFormat::Text,
            _ => RunOutputFormat::Json,
        };
        args.extend(["--output-format".into(), f.as_str().into()]);
        if f == RunOutputFormat::StreamJson {
            if flags.has("verboseFlag") {
                args.push("--verbose".into());
            }
            if config.include_partial_messages && flags.has("includePartialMessagesFlag") {
                args.push("--include-partial-messages".into());
            }
        }
        f
    };
    // 2. model
    if let Some(model) = &config.model {
        if flags.has("modelFlag") {
            args.extend(["--model".into(), model.clone()]);
        }
    }
    // 3. tools
    if let Some(tools) = allowed_tools(config, fc) {
        let joined = tools.join(",");
        if flags.has("allowedToolsFlag") {
            args.extend(["--allowedTools".into(), joined]);
        } else if flags.has("toolsFlag") {
            args.extend(["--tools".into(), joined]);
        }
    }
    if !config.disallowed_tools.is_empty() && flags.has("disallowedToolsFlag") {
        args.extend([
            "--disallowedTools".into(),
            config.disallowed_tools.join(","),
        ]);
    }
    // 4. prompts
    if let Some(append) = effective_append(config, fc) {
        if flags.has("appendSystemPromptFlag") {
            args.extend(["--append-system-prompt".into(), append.to_string()]);
        } else {
            prompt_extra.push(append.to_string());
        }
    }
    let mut prompt_prefix: Option<String> = None;
    if let Some(system) = &config.system_prompt {
        if flags.has("systemPromptFlag") {
            args.extend(["--system-prompt".into(), system.clone()]);
        } else {
            prompt_prefix = Some(system.clone());
        }
    }
    // 5. schema
    if let Some(schema) = &config.json_schema {
        if flags.has("jsonSchemaFlag") {
            args.extend(["--json-schema".into(), schema.to_string()]);
        } else {
            prompt_extra.push(schema_instruction(schema));
        }
    }
    // 6. permissions
    let mut mode = config
        .permission_mode
        .clone()
        .unwrap_or_else(|| DEFAULT_CLAUDE_PERMISSION_MODE.to_string());
    if fc && (mode.is_empty() || mode == "dontAsk") {
        mode = "bypassPermissions".into();
    }
    let bypass = mode == "bypassPermissions";
    if flags.has("permissionModeFlag") {
        args.extend(["--permission-mode".into(), mode]);
    }
    if fc && flags.has("dangerouslySkipPermissionsFlag") {
        args.push("--dangerously-skip-permissions".into());
    }
    // Claude refuses bypass permissions as root unless told it runs in a
    // sandbox; a full-control run is the owner's explicit choice, so say so
    // in the child env only (never for restricted runs).
    let mut env = BTreeMap::new();
    if fc && ctx.running_as_root && (bypass || flags.has("dangerouslySkipPermissionsFlag")) {
        env.insert(CLAUDE_IS_SANDBOX_ENV.to_string(), "1".to_string());
    }
    // 7. pass-through options
    if let Some(budget) = &config.max_budget_usd {
        if flags.has("maxBudgetFlag") {
            args.extend(["--max-budget-usd".into(), budget.clone()]);
        }
    }
    if let Some(input_format) = &config.input_format {
        if flags.has("inputFormatFlag") {
            args.extend(["--input-format".into(), input_format.clone()]);
        }
    }
    if !config.betas.is_empty() && flags.has("betasFlag") {
        args.push("--betas".into());
        args.extend(config.betas.iter().cloned());
    }
    if config.no_session_persistence && flags.has("noSessionPersistenceFlag") {
        args.push("--no-session-persistence".into());
    }
    if let Some(session_id) = &config.session_id {
        if flags.has("sessionIdFlag") {
            args.extend(["--session-id".into(), session_id.clone()]);
        }
    }
    // 8. resume
    if let Some(resume) = config.resume_session_id.clone().or_else(|| {
        ctx.previous_session_id
            .clone()
            .filter(|s| !s.trim().is_empty())
    }) {
        if !flags.has("resumeFlag") {
            return Err(ProviderError::ResumeUnsupported);
        }
        args.extend(["--resume".into(), resume]);
    }
    // 9. isolation (restricted only)
    if !fc {
        if flags.has("settingSourcesFlag") {
            args.extend(["--setting-sources".into(), "local".into()]);
        }
        if flags.has("disableSlashCommandsFlag") {
            args.push("--disable-slash-commands".into());
        }
    }
    // 10. prompt last
    let mut parts: Vec<Option<&str>> = vec![prompt_prefix.as_deref(), Some(ctx.prompt.as_str())];
    parts.extend(prompt_extra.iter().map(|s| Some(s.as_str())));
    args.extend(["-p".into(), join_prompt(&parts)]);
    Ok(RunPlan {
        provider: ProviderId::ClaudeCode,
        command: ctx.command.clone(),
        args,
        cwd: ctx.work_dir.clone(),
        env,
        files: Vec::new(),
        output_format,
        timeout_ms: config.timeout_ms(),
        answer_file: None,
        strict_json: config.json_schema.is_some(),
    })
}

fn mentions_web_search(tools: &[String]) -> bool {
    tools.iter().any(|t| {
        let n: String = t
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        n == "websearch" || n == "websearchrequest"
    })
}

/// The session to continue: the config's `resume_session_id`, else the
/// previous run's session id.
fn resume_id(config: &SubagentConfig, ctx: &RunContext) -> Option<String> {
    config.resume_session_id.clone().or_else(|| {
        ctx.previous_session_id
            .clone()
            .filter(|s| !s.trim().is_empty())
    })
}

/// §4: Codex subagent argv; a session continues with `exec … resume <id>`.
pub fn build_codex_subagent_plan(
    config: &SubagentConfig,
    ctx: &RunContext,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    let resume = resume_id(config, ctx);
    if resume.is_some() && !flags.has("resumeFlag") {
        return Err(ProviderError::ContinuationUnsupported);
    }
    let fc = ctx.full_control;
    let mut args: Vec<String> = vec!["exec".into(), "--skip-git-repo-check".into()];
    if !fc {
        args.extend(["--sandbox".into(), "read-only".into()]);
    } else if flags.has("dangerouslyBypassApprovalsAndSandboxFlag") {
        args.push("--dangerously-bypass-approvals-and-sandbox".into());
    } else {
        args.extend(["--sandbox".into(), "danger-full-access".into()]);
    }
    if let Some(model) = &config.model {
        args.extend(["--model".into(), model.clone()]);
    }
    let effort = config
        .reasoning_effort
        .as_deref()
        .unwrap_or(DEFAULT_CODEX_REASONING_EFFORT);
    args.extend(["-c".into(), format!("model_reasoning_effort=\"{effort}\"")]);
    let (shell, web) = if fc {
        (true, true)
    } else {
        let tools = allowed_tools(config, fc).unwrap_or_default();
        (false, mentions_web_search(&tools))
    };
    args.extend(["-c".into(), format!("features.shell_tool={shell}")]);
    // `[features].web_search_request` is deprecated (Codex ≥ 0.1xx ignores it
    // and reports an error item); the current key is top-level `web_search`.
    let web = if web { "live" } else { "disabled" };
    args.extend(["-c".into(), format!("web_search=\"{web}\"")]);
    let output_format = config.output_format();
    if output_format != RunOutputFormat::Text {
        args.push("--json".into());
    }
    let schema = config.json_schema.as_ref().map(schema_instruction);
    // `codex exec [exec options] resume <id> <prompt>`.
    if let Some(id) = resume {
        args.extend(["resume".into(), id]);
    }
    args.push(join_prompt(&[
        config.system_prompt.as_deref(),
        Some(ctx.prompt.as_str()),
        effective_append(config, fc),
        schema.as_deref(),
    ]));
    Ok(RunPlan {
        provider: ProviderId::Codex,
        command: ctx.command.clone(),
        args,
        cwd: ctx.work_dir.clone(),
        env: BTreeMap::new(),
        files: Vec::new(),
        output_format,
        timeout_ms: config.timeout_ms(),
        answer_file: None,
        strict_json: config.json_schema.is_some(),
    })
}

fn gemini_system_file(
    system: Option<&str>,
    append: Option<&str>,
    json_mode: bool,
    ctx_work_dir: &std::path::Path,
    env: &mut BTreeMap<String, String>,
    files: &mut Vec<PlanFile>,
) {
    let contents = join_prompt(&[system, append, json_mode.then_some(GEMINI_STRICT_JSON_NOTE)]);
    if contents.is_empty() {
        return;
    }
    files.push(PlanFile {
        relative_path: GEMINI_SYSTEM_MD_FILE.into(),
        contents,
    });
    env.insert(
        GEMINI_SYSTEM_MD_ENV.into(),
        ctx_work_dir
            .join(GEMINI_SYSTEM_MD_FILE)
            .to_string_lossy()
            .into_owned(),
    );
}

/// §5: Gemini subagent argv and env; a session continues with `--resume <id>`.
pub fn build_gemini_subagent_plan(
    config: &SubagentConfig,
    ctx: &RunContext,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    let resume = resume_id(config, ctx);
    if resume.is_some() && !flags.has("resumeFlag") {
        return Err(ProviderError::ContinuationUnsupported);
    }
    let fc = ctx.full_control;
    let output_format = match config.output_format() {
        RunOutputFormat::Text => RunOutputFormat::Text,
        // Gemini CLI ≥ 0.1x has `--output-format stream-json` (live events).
        RunOutputFormat::StreamJson if flags.has("streamJsonFlag") => RunOutputFormat::StreamJson,
        _ => RunOutputFormat::Json,
    };
    let mut args: Vec<String> = vec!["--output-format".into(), output_format.as_str().into()];
    let mut env = BTreeMap::new();
    gemini_trust(flags, &mut args, &mut env);
    if flags.has("approvalModeFlag") {
        args.extend([
            "--approval-mode".into(),
            if fc { "yolo" } else { "plan" }.into(),
        ]);
    } else if fc && flags.has("yoloFlag") {
        args.push("--yolo".into());
    }
    if !fc && flags.has("sandboxFlag") {
        // `--sandbox` without docker/podman dies with FatalSandboxError:
        // refuse up front with a reason instead.
        if !ctx.gemini_sandbox_available {
            return Err(ProviderError::SandboxUnavailable);
        }
        args.push("--sandbox".into());
    }
    if let Some(model) = &config.model {
        args.extend(["--model".into(), model.clone()]);
    }
    if !config.extensions.is_empty() {
        args.extend(["--extensions".into(), config.extensions.join(",")]);
    }
    if let Some(id) = resume {
        args.extend(["--resume".into(), id]);
    }
    let mut files = Vec::new();
    gemini_system_file(
        config.system_prompt.as_deref(),
        effective_append(config, fc),
        output_format == RunOutputFormat::Json,
        &ctx.work_dir,
        &mut env,
        &mut files,
    );
    let schema = config.json_schema.as_ref().map(schema_instruction);
    args.push(join_prompt(&[Some(ctx.prompt.as_str()), schema.as_deref()]));
    Ok(RunPlan {
        provider: ProviderId::Gemini,
        command: ctx.command.clone(),
        args,
        cwd: ctx.work_dir.clone(),
        env,
        files,
        output_format,
        timeout_ms: config.timeout_ms(),
        answer_file: None,
        strict_json: config.json_schema.is_some(),
    })
}

/// Gemini refuses an untrusted working directory (exit 55) in headless
/// runs: trust the run's own work dir with `--skip-trust` where the CLI has
/// it, else with its environment variable.
fn gemini_trust(
    flags: &SupportedFlags,
    args: &mut Vec<String>,
    env: &mut BTreeMap<String, String>,
) {
    if flags.has("skipTrustFlag") {
        args.push("--skip-trust".into());
    } else {
        env.insert(GEMINI_TRUST_ENV.into(), "true".into());
    }
}

/// OpenAI strict structured output: every object closed
/// (`additionalProperties: false`) with all its properties required; a
/// property that was optional becomes nullable so it may still be absent in
/// meaning. Applied recursively (properties, items, `$defs`, combinators).
pub fn strict_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        let v = match k.as_str() {
            "properties" | "$defs" | "definitions" => match v {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, sub)| (name.clone(), strict_json_schema(sub)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "items" => strict_json_schema(v),
            "anyOf" | "oneOf" | "allOf" => match v {
                Value::Array(items) => Value::Array(items.iter().map(strict_json_schema).collect()),
                other => other.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    let is_object =
        out.get("type").and_then(Value::as_str) == Some("object") || out.contains_key("properties");
    if is_object {
        if let Some(Value::Object(props)) = out.get_mut("properties") {
            // A free-form `args` object cannot be strict (every object needs
            // its properties listed): ask for it JSON-encoded as `args_json`
            // (see `output::decode_args_json`).
            if props.get("args").is_some_and(is_free_form_object) {
                props.remove("args");
                props.insert(
                    ARGS_JSON.into(),
                    serde_json::json!({"type": "string", "description": "The args object, JSON-encoded."}),
                );
                if let Some(Value::Array(req)) = out.get_mut("required") {
                    for r in req.iter_mut() {
                        if r == "args" {
                            *r = Value::String(ARGS_JSON.into());
                        }
                    }
                }
            }
            let required: Vec<String> = out
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let Some(Value::Object(props)) = out.get_mut("properties") else {
                unreachable!("checked above");
            };
            for (name, sub) in props.iter_mut() {
                if !required.contains(name) {
                    if let Some(Value::String(t)) = sub.get("type").cloned() {
                        sub["type"] = serde_json::json!([t, "null"]);
                    }
                }
            }
            let all: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
            out.insert("required".into(), Value::Array(all));
        } else {
            out.insert("properties".into(), serde_json::json!({}));
            out.insert("required".into(), serde_json::json!([]));
        }
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// The strict-schema stand-in for a free-form `args` object.
pub const ARGS_JSON: &str = "args_json";

fn is_free_form_object(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
        && schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|p| p.is_empty())
}

/// Dispatches to the provider's subagent builder.
pub fn build_subagent_plan(
    provider: ProviderId,
    config: &SubagentConfig,
    ctx: &RunContext,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    match provider {
        ProviderId::ClaudeCode => build_claude_subagent_plan(config, ctx, flags),
        ProviderId::Codex => build_codex_subagent_plan(config, ctx, flags),
        ProviderId::Gemini => build_gemini_subagent_plan(config, ctx, flags),
    }
}

/// §9: model-run argv (also used by full provider validation).
pub fn build_model_run_plan(
    payload: &ModelRunPayload,
    command: &str,
    work_dir: PathBuf,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    let model = payload.model_flag();
    let json_mode = payload.output_format == OutputFormat::Json;
    let mut env = BTreeMap::new();
    let mut files = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut answer_file = None;
    match payload.provider {
        ProviderId::ClaudeCode => {
            args.push("--print".into());
            if let Some(m) = model {
                args.extend(["--model".into(), m.to_string()]);
            }
            if json_mode {
                let schema = payload
                    .json_schema
                    .as_ref()
                    .ok_or(ProviderError::ModelRunRequiresSchema)?;
                args.extend(["--output-format".into(), "json".into()]);
                args.extend(["--json-schema".into(), schema.to_string()]);
            } else {
                args.extend(["--output-format".into(), "text".into()]);
            }
            if flags.has("toolsFlag") {
                args.extend(["--tools".into(), String::new()]);
            } else {
                args.extend(["--allowedTools".into(), String::new()]);
            }
            if flags.has("inputFormatFlag") {
                args.extend(["--input-format".into(), "text".into()]);
            }
            if flags.has("noSessionPersistenceFlag") {
                args.push("--no-session-persistence".into());
            }
            if flags.has("permissionModeFlag") {
                args.extend(["--permission-mode".into(), "dontAsk".into()]);
            }
            if flags.has("settingSourcesFlag") {
                args.extend(["--setting-sources".into(), "local".into()]);
            }
            if flags.has("disableSlashCommandsFlag") {
                args.push("--disable-slash-commands".into());
            }
            if let Some(system) = &payload.append_system_prompt {
                args.extend(["--append-system-prompt".into(), system.clone()]);
            }
            args.extend(["-p".into(), payload.prompt.clone()]);
        }
        ProviderId::Codex => {
            args.extend([
                "exec".into(),
                "--sandbox".into(),
                "read-only".into(),
                "--skip-git-repo-check".into(),
            ]);
            if let Some(m) = model {
                args.extend(["--model".into(), m.to_string()]);
            }
            if let Some(effort) = payload.reasoning_effort {
                args.extend(["-c".into(), format!("model_reasoning_effort=\"{effort}\"")]);
            }
            let mut prompt_schema = None;
            if let Some(schema) = payload.json_schema.as_ref().filter(|_| json_mode) {
                if flags.has("outputSchemaFlag") {
                    // The Responses API only enforces strict schemas.
                    files.push(PlanFile {
                        relative_path: CODEX_OUTPUT_SCHEMA_FILE.into(),
                        contents: strict_json_schema(schema).to_string(),
                    });
                    args.extend([
                        "--output-schema".into(),
                        work_dir
                            .join(CODEX_OUTPUT_SCHEMA_FILE)
                            .to_string_lossy()
                            .into_owned(),
                    ]);
                } else {
                    prompt_schema = Some(schema_instruction(schema));
                }
            }
            // Text mode reads stdout as the answer: no `--json` (that would
            // make it raw JSONL). JSON mode takes the answer from `-o <file>`
            // (the final message only), keeping `--json` for usage data.
            if json_mode && flags.has("outputLastMessageFlag") {
                let file = work_dir.join(CODEX_LAST_MESSAGE_FILE);
                args.extend(["-o".into(), file.to_string_lossy().into_owned()]);
                answer_file = Some(file);
            }
            if json_mode && flags.has("jsonFlag") {
                args.push("--json".into());
            }
            args.push(join_prompt(&[
                payload.append_system_prompt.as_deref(),
                Some(payload.prompt.as_str()),
                prompt_schema.as_deref(),
            ]));
        }
        ProviderId::Gemini => {
            args.extend([
                "--output-format".into(),
                if json_mode { "json" } else { "text" }.into(),
            ]);
            gemini_trust(flags, &mut args, &mut env);
            if let Some(m) = model {
                args.extend(["--model".into(), m.to_string()]);
            }
            gemini_system_file(
                None,
                payload.append_system_prompt.as_deref(),
                json_mode,
                &work_dir,
                &mut env,
                &mut files,
            );
            let schema = payload
                .json_schema
                .as_ref()
                .filter(|_| json_mode)
                .map(schema_instruction);
            args.push(join_prompt(&[
                Some(payload.prompt.as_str()),
                schema.as_deref(),
            ]));
        }
    }
    Ok(RunPlan {
        provider: payload.provider,
        command: command.to_string(),
        args,
        cwd: work_dir,
        env,
        files,
        output_format: if json_mode {
            RunOutputFormat::Json
        } else {
            RunOutputFormat::Text
        },
        timeout_ms: payload.timeout_ms,
        answer_file,
        strict_json: json_mode,
    })
}

/// The full-validation model run of a provider (§2): `Say hi.` with the
/// validation schema, default model, 30 s.
pub fn build_validation_plan(
    provider: ProviderId,
    command: &str,
    work_dir: PathBuf,
    flags: &SupportedFlags,
) -> Result<RunPlan, ProviderError> {
    let payload = ModelRunPayload {
        prompt: crate::health::VALIDATION_PROMPT.into(),
        model: panorama_protocol::jobs::DEFAULT_MODEL_SENTINEL.into(),
        provider,
        output_format: OutputFormat::Json,
        json_schema: Some(crate::health::validation_schema()),
        append_system_prompt: None,
        reasoning_effort: None,
        timeout_ms: crate::health::VALIDATION_TIMEOUT_MS,
    };
    build_model_run_plan(&payload, command, work_dir, flags)
}

/// Redacted, printable command line for the `command` metadata key: the
/// prompt-carrying values are replaced by `<prompt>`/`<system prompt>`.
pub fn display_command(plan: &RunPlan) -> String {
    let mut out = vec![plan.command.clone()];
    let mut redact_next = false;
    let last = plan.args.len().saturating_sub(1);
    for (i, arg) in plan.args.iter().enumerate() {
        if redact_next {
            out.push(REDACTED.into());
            redact_next = false;
            continue;
        }
        let positional_prompt = plan.provider != ProviderId::ClaudeCode && i == last;
        if positional_prompt {
            out.push("<prompt>".into());
            continue;
        }
        redact_next = matches!(
            arg.as_str(),
            "-p" | "--append-system-prompt" | "--system-prompt" | "--json-schema"
        );
        out.push(if arg.contains(char::is_whitespace) || arg.is_empty() {
            format!("{arg:?}")
        } else {
            arg.clone()
        });
    }
    out.join(" ")
}
