//! Subagent adapter config (control-plane §10.1) and run context.
//!
//! Parsing is lenient, like the reference gateway: wrong types fall back to
//! defaults instead of failing. Keys are read in snake_case first, then the
//! camelCase alias; `tools` aliases `allowed_tools` and `elevated` aliases
//! `full_control`.

use std::path::PathBuf;

use panorama_protocol::full_control::parse_boolean_input;
use serde_json::Value;

/// Default subagent run timeout (30 minutes).
pub const DEFAULT_SUBAGENT_TIMEOUT_MS: u64 = 30 * 60_000;
/// Default tool restriction of a restricted run.
pub const DEFAULT_ALLOWED_TOOLS: &[&str] = &["WebSearch"];
/// Claude's default permission mode.
pub const DEFAULT_CLAUDE_PERMISSION_MODE: &str = "dontAsk";
/// Codex's default reasoning effort.
pub const DEFAULT_CODEX_REASONING_EFFORT: &str = "high";
/// Our wording of the default "safe mode" append prompt. A config whose
/// `append_system_prompt` equals it has it dropped under full control.
pub const SAFE_MODE_APPEND_PROMPT: &str = "You are running in restricted safe mode on a team member's machine. Do not modify files, run shell commands or access resources beyond the allowed tools.";

/// Requested output format of a subagent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutputFormat {
    Json,
    Text,
    StreamJson,
}

impl RunOutputFormat {
    /// `text`; `stream-json`/`stream_json`/`stream`; anything else `json`.
    pub fn from_config(raw: Option<&str>) -> Self {
        match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("text") => Self::Text,
            Some("stream-json" | "stream_json" | "stream") => Self::StreamJson,
            _ => Self::Json,
        }
    }

    /// Wire value (`output_format` metadata).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::StreamJson => "stream-json",
        }
    }
}

/// The adapter config of one subagent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubagentConfig {
    /// `None` when not configured (the default `["WebSearch"]` applies).
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Vec<String>,
    pub full_control_requested: bool,
    pub model: Option<String>,
    pub output_format_raw: Option<String>,
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    pub json_schema: Option<Value>,
    pub permission_mode: Option<String>,
    /// Kept as text so `0.5` and `"0.5"` both pass through unchanged.
    pub max_budget_usd: Option<String>,
    pub input_format: Option<String>,
    pub betas: Vec<String>,
    pub no_session_persistence: bool,
    pub session_id: Option<String>,
    pub resume_session_id: Option<String>,
    pub timeout_ms: Option<u64>,
    pub include_partial_messages: bool,
    pub reasoning_effort: Option<String>,
    pub extensions: Vec<String>,
    /// The raw config (retry settings and unknown keys).
    pub raw: Value,
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Value of `key` or its camelCase alias (or extra aliases), skipping null.
fn lookup<'a>(config: &'a Value, key: &str, extra: &[&str]) -> Option<&'a Value> {
    let camel_key = camel(key);
    std::iter::once(key)
        .chain(std::iter::once(camel_key.as_str()))
        .chain(extra.iter().copied())
        .find_map(|k| config.get(k).filter(|v| !v.is_null()))
}

fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A list given as a JSON array of strings or a comma-separated string.
pub fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Value::String(s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

impl SubagentConfig {
    /// Lenient parse of `subagents.config`.
    pub fn from_value(config: &Value) -> Self {
        let b = |key: &str| parse_boolean_input(lookup(config, key, &[])).unwrap_or(false);
        SubagentConfig {
            allowed_tools: string_list(lookup(config, "allowed_tools", &["tools"])),
            disallowed_tools: string_list(lookup(config, "disallowed_tools", &[]))
                .unwrap_or_default(),
            full_control_requested: parse_boolean_input(config.get("full_control"))
                .or_else(|| parse_boolean_input(config.get("fullControl")))
                .or_else(|| parse_boolean_input(config.get("elevated")))
                .unwrap_or(false),
            model: string_of(lookup(config, "model", &[])),
            output_format_raw: string_of(lookup(config, "output_format", &[])),
            system_prompt: string_of(lookup(config, "system_prompt", &[])),
            append_system_prompt: string_of(lookup(config, "append_system_prompt", &[])),
            json_schema: lookup(config, "json_schema", &[])
                .filter(|v| v.is_object())
                .cloned(),
            permission_mode: string_of(lookup(config, "permission_mode", &[])),
            max_budget_usd: string_of(lookup(config, "max_budget_usd", &[])),
            input_format: string_of(lookup(config, "input_format", &[])),
            betas: string_list(lookup(config, "betas", &[])).unwrap_or_default(),
            no_session_persistence: b("no_session_persistence"),
            session_id: string_of(lookup(config, "session_id", &[])),
            resume_session_id: string_of(lookup(config, "resume_session_id", &[])),
            timeout_ms: lookup(config, "timeout_ms", &[])
                .and_then(|v| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .map(|ms| ms.ceil() as u64),
            include_partial_messages: b("include_partial_messages"),
            reasoning_effort: string_of(lookup(config, "reasoning_effort", &[])),
            extensions: string_list(lookup(config, "extensions", &[])).unwrap_or_default(),
            raw: config.clone(),
        }
    }

    pub fn output_format(&self) -> RunOutputFormat {
        RunOutputFormat::from_config(self.output_format_raw.as_deref())
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_SUBAGENT_TIMEOUT_MS)
    }
}

/// The last segment of a subagent's work dir (`<work>/subagents/<id>/session`):
/// the same for every run of the subagent, because the CLIs key their saved
/// sessions by working directory and `--resume` must find them.
pub const SUBAGENT_SESSION_DIR: &str = "session";

/// Per-run inputs that do not come from the config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunContext {
    /// The resolved CLI command (see [`crate::registry::resolve_command`]).
    pub command: String,
    /// The trimmed prompt from `subagents.input`.
    pub prompt: String,
    /// The *effective* full-control state (control-plane §13.2).
    pub full_control: bool,
    /// `subagents.metadata.session_id` of the previous run, if any.
    pub previous_session_id: Option<String>,
    /// The run's work dir (cwd of the child; Gemini's `system.md` goes here).
    pub work_dir: PathBuf,
    /// The gateway runs as root (Claude then needs `IS_SANDBOX=1` to accept
    /// bypass permissions in full-control runs).
    pub running_as_root: bool,
    /// Gemini's `--sandbox` can work here (see [`gemini_sandbox_available`]).
    pub gemini_sandbox_available: bool,
}

impl RunContext {
    /// A context with this host's facts filled in (root, sandbox); the
    /// caller sets the per-run fields.
    pub fn with_host_facts() -> RunContext {
        RunContext {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            running_as_root: unsafe { libc::geteuid() } == 0,
            gemini_sandbox_available: gemini_sandbox_available(
                |k| std::env::var(k).ok(),
                |name| {
                    let path = std::env::var_os("PATH");
                    crate::registry::find_executable(name, path.as_deref()).is_some()
                },
            ),
            ..RunContext::default()
        }
    }
}

/// Whether Gemini CLI's `--sandbox` has something to run in: `GEMINI_SANDBOX`
/// names one (anything but `false`/`0`/empty), or `docker`/`podman` is on
/// `PATH` (what the CLI itself looks for on Linux).
pub fn gemini_sandbox_available(
    env: impl Fn(&str) -> Option<String>,
    on_path: impl Fn(&str) -> bool,
) -> bool {
    match env("GEMINI_SANDBOX").map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if v == "false" || v == "0" => false,
        Some(v) if !v.is_empty() => true,
        _ => on_path("docker") || on_path("podman"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_sandbox_detection() {
        let none = |_: &str| None;
        assert!(!gemini_sandbox_available(none, |_| false));
        assert!(gemini_sandbox_available(none, |n| n == "podman"));
        assert!(gemini_sandbox_available(
            |_| Some("docker".into()),
            |_| false
        ));
        assert!(!gemini_sandbox_available(
            |_| Some("false".into()),
            |_| true
        ));
    }

    #[test]
    fn parses_keys_aliases_and_defaults() {
        let c = SubagentConfig::from_value(&json!({
            "tools": "Read, Grep ,", "disallowedTools": ["Bash"], "fullControl": "yes",
            "model": "opus", "outputFormat": "stream_json", "json_schema": {"type":"object"},
            "max_budget_usd": 0.5, "betas": "a,b", "noSessionPersistence": true,
            "timeout_ms": "1500", "reasoning_effort": "low", "extensions": ["x"]
        }));
        assert_eq!(c.allowed_tools, Some(vec!["Read".into(), "Grep".into()]));
        assert_eq!(c.disallowed_tools, vec!["Bash".to_string()]);
        assert!(c.full_control_requested);
        assert_eq!(c.model.as_deref(), Some("opus"));
        assert_eq!(c.output_format(), RunOutputFormat::StreamJson);
        assert_eq!(c.json_schema, Some(json!({"type":"object"})));
        assert_eq!(c.max_budget_usd.as_deref(), Some("0.5"));
        assert_eq!(c.betas, vec!["a".to_string(), "b".to_string()]);
        assert!(c.no_session_persistence);
        assert_eq!(c.timeout_ms(), 1500);
        assert_eq!(c.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(c.extensions, vec!["x".to_string()]);

        let d = SubagentConfig::from_value(
            &json!({"elevated": true, "output_format": "yaml", "json_schema": "nope"}),
        );
        assert!(d.full_control_requested);
        assert_eq!(d.output_format(), RunOutputFormat::Json);
        assert_eq!(d.allowed_tools, None);
        assert_eq!(d.json_schema, None);
        assert_eq!(d.timeout_ms(), DEFAULT_SUBAGENT_TIMEOUT_MS);
        assert_eq!(
            RunOutputFormat::from_config(Some("stream")),
            RunOutputFormat::StreamJson
        );
        assert_eq!(
            RunOutputFormat::from_config(Some("TEXT")),
            RunOutputFormat::Text
        );
        assert_eq!(RunOutputFormat::StreamJson.as_str(), "stream-json");
        // explicit false beats the camel alias
        assert!(
            !SubagentConfig::from_value(&json!({"full_control": "off", "fullControl": true}))
                .full_control_requested
        );
    }
}
