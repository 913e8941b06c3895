//! Final output extraction (providers.md §3–5 "Output", §9; control-plane §10.5–10.6).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::RunOutputFormat;
use crate::error::ProviderError;
use crate::normalize::{
    normalize_all, ClaudeNormalizer, CodexNormalizer, RunSummary, StreamNormalizer,
};
use crate::registry::ProviderId;

pub const OUTPUT_SCHEMA_VERSION: u32 = 1;
/// Parse-error texts (our wording; the reference texts are not in the spec).
pub const PARSE_ERR_NOT_JSON: &str = "Failed to parse provider JSON output";
pub const PARSE_ERR_NO_RESULT: &str = "Provider output has no result";
pub const PARSE_ERR_NO_JSON_IN_TEXT: &str = "Provider response did not contain valid JSON";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Markdown,
    Text,
    Json,
}

/// `subagents.output` / `subagent_runs.output` (control-plane §10.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEnvelope {
    pub schema_version: u32,
    pub content: Value,
    pub content_type: ContentType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl OutputEnvelope {
    pub fn new(content: Value, content_type: ContentType) -> Self {
        OutputEnvelope {
            schema_version: OUTPUT_SCHEMA_VERSION,
            content,
            content_type,
            summary: None,
            sources: None,
            errors: None,
        }
    }

    /// `{"schema_version":1,"content":msg,"content_type":"text","errors":[msg]}`.
    pub fn error(message: &str) -> Self {
        let mut e = Self::new(json!(message), ContentType::Text);
        e.errors = Some(vec![message.to_string()]);
        e
    }
}

/// What an adapter makes of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterOutput {
    pub output: OutputEnvelope,
    /// Adapter metadata merged into the run metadata (`adapter_id`, `session_id`, `usage`, …).
    pub metadata: Map<String, Value>,
    pub parse_error: Option<String>,
    /// An in-band error the provider reported (Claude `is_error`, Codex `turn.failed`…).
    pub provider_error: Option<String>,
}

/// Lenient JSON extraction from model text: the whole text, a fenced
/// ```` ```json ```` block, or the outermost `{…}`/`[…]` span.
pub fn extract_json_lenient(text: &str) -> Option<Value> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Some(v);
    }
    if let Some(start) = t.find("```") {
        let after = &t[start + 3..];
        let body_start = after.find('\n').map_or(0, |i| i + 1);
        if let Some(end) = after[body_start..].find("```") {
            if let Ok(v) = serde_json::from_str::<Value>(after[body_start..body_start + end].trim())
            {
                return Some(v);
            }
        }
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        if let (Some(a), Some(b)) = (t.find(open), t.rfind(close)) {
            if a < b {
                if let Ok(v) = serde_json::from_str::<Value>(&t[a..=b]) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// The last line of `stdout` that parses as a JSON object (or the whole text).
fn last_json_object(stdout: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
        return Some(v);
    }
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(Value::is_object)
}

fn base_metadata(provider: ProviderId) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("adapter_id".into(), json!(provider.as_str()));
    m
}

fn text_output(stdout: &str, provider: ProviderId) -> AdapterOutput {
    AdapterOutput {
        output: OutputEnvelope::new(json!(stdout.trim()), ContentType::Markdown),
        metadata: base_metadata(provider),
        parse_error: None,
        provider_error: None,
    }
}

/// Claude: a `result` object (json mode: stdout; stream-json: the final
/// `result` line) → output. `structured_output` object → json envelope, else
/// string `result` → markdown; metadata `session_id`, `total_cost_usd`,
/// `usage`, `model_usage`, `permission_denials`.
pub fn claude_result_output(result: &Value) -> AdapterOutput {
    let mut metadata = base_metadata(ProviderId::ClaudeCode);
    for (from, to) in [
        ("session_id", "session_id"),
        ("total_cost_usd", "total_cost_usd"),
        ("usage", "usage"),
        ("modelUsage", "model_usage"),
        ("permission_denials", "permission_denials"),
    ] {
        if let Some(v) = result.get(from).filter(|v| !v.is_null()) {
            metadata.insert(to.into(), v.clone());
        }
    }
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || result
            .get("subtype")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("error"));
    let text = result.get("result").and_then(Value::as_str);
    let provider_error = is_error.then(|| {
        text.map(str::to_string).unwrap_or_else(|| {
            result
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string()
        })
    });
    let (output, parse_error) = match (result.get("structured_output"), text) {
        (Some(obj @ Value::Object(_)), _) => {
            (OutputEnvelope::new(obj.clone(), ContentType::Json), None)
        }
        (_, Some(t)) => (OutputEnvelope::new(json!(t), ContentType::Markdown), None),
        _ => (
            OutputEnvelope::new(json!(""), ContentType::Text),
            Some(PARSE_ERR_NO_RESULT.to_string()),
        ),
    };
    AdapterOutput {
        output,
        metadata,
        parse_error,
        provider_error,
    }
}

/// Claude run output for a given format.
pub fn parse_claude_output(format: RunOutputFormat, stdout: &str) -> AdapterOutput {
    match format {
        RunOutputFormat::Text => text_output(stdout, ProviderId::ClaudeCode),
        RunOutputFormat::Json => match last_json_object(stdout) {
            Some(v)
                if v.get("type").and_then(Value::as_str) == Some("result")
                    || v.get("result").is_some() =>
            {
                claude_result_output(&v)
            }
            _ => AdapterOutput {
                output: OutputEnvelope::new(json!(stdout.trim()), ContentType::Text),
                metadata: base_metadata(ProviderId::ClaudeCode),
                parse_error: Some(PARSE_ERR_NOT_JSON.into()),
                provider_error: None,
            },
        },
        RunOutputFormat::StreamJson => {
            let mut n = ClaudeNormalizer::default();
            normalize_all(&mut n, stdout);
            claude_stream_output(n.summary())
        }
    }
}

/// Claude stream-json output from a normalizer's summary.
pub fn claude_stream_output(summary: &RunSummary) -> AdapterOutput {
    match &summary.result_event {
        Some(result) => claude_result_output(result),
        None => {
            let mut metadata = base_metadata(ProviderId::ClaudeCode);
            if let Some(id) = &summary.session_id {
                metadata.insert("session_id".into(), json!(id));
            }
            AdapterOutput {
                output: OutputEnvelope::new(
                    json!(summary.result_text.clone().unwrap_or_default()),
                    ContentType::Text,
                ),
                metadata,
                parse_error: Some(PARSE_ERR_NO_RESULT.into()),
                provider_error: None,
            }
        }
    }
}

/// Answer text → envelope: in json mode the JSON extracted from it, else markdown.
fn answer_output(
    provider: ProviderId,
    answer: Option<&str>,
    json_mode: bool,
    usage: Option<&Value>,
) -> AdapterOutput {
    let mut metadata = base_metadata(provider);
    if let Some(u) = usage.filter(|u| !u.is_null()) {
        metadata.insert("usage".into(), u.clone());
    }
    let Some(answer) = answer else {
        return AdapterOutput {
            output: OutputEnvelope::new(json!(""), ContentType::Text),
            metadata,
            parse_error: Some(PARSE_ERR_NO_RESULT.into()),
            provider_error: None,
        };
    };
    if json_mode {
        if let Some(v) = extract_json_lenient(answer) {
            return AdapterOutput {
                output: OutputEnvelope::new(v, ContentType::Json),
                metadata,
                parse_error: None,
                provider_error: None,
            };
        }
        return AdapterOutput {
            output: OutputEnvelope::new(json!(answer), ContentType::Markdown),
            metadata,
            parse_error: Some(PARSE_ERR_NO_JSON_IN_TEXT.into()),
            provider_error: None,
        };
    }
    AdapterOutput {
        output: OutputEnvelope::new(json!(answer), ContentType::Markdown),
        metadata,
        parse_error: None,
        provider_error: None,
    }
}

/// Codex: the last `agent_message` is the answer; usage from `turn.completed`.
pub fn parse_codex_output(format: RunOutputFormat, stdout: &str) -> AdapterOutput {
    if format == RunOutputFormat::Text {
        return text_output(stdout, ProviderId::Codex);
    }
    let mut n = CodexNormalizer::default();
    normalize_all(&mut n, stdout);
    let s = n.summary();
    let mut out = answer_output(
        ProviderId::Codex,
        s.result_text.as_deref(),
        format == RunOutputFormat::Json,
        s.usage.as_ref(),
    );
    if s.is_error || (s.result_text.is_none() && !s.errors.is_empty()) {
        out.provider_error = s
            .errors
            .last()
            .cloned()
            .or(Some("Codex turn failed".into()));
    }
    out
}

/// Gemini `--output-format json`: `response` text, JSON extracted from it; `stats` → usage.
pub fn parse_gemini_output(format: RunOutputFormat, stdout: &str) -> AdapterOutput {
    if format == RunOutputFormat::Text {
        return text_output(stdout, ProviderId::Gemini);
    }
    let Some(v) = last_json_object(stdout) else {
        return AdapterOutput {
            output: OutputEnvelope::new(json!(stdout.trim()), ContentType::Text),
            metadata: base_metadata(ProviderId::Gemini),
            parse_error: Some(PARSE_ERR_NOT_JSON.into()),
            provider_error: None,
        };
    };
    let mut out = answer_output(
        ProviderId::Gemini,
        v.get("response").and_then(Value::as_str),
        true,
        v.get("stats"),
    );
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        out.provider_error = Some(
            err.get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string()),
        );
    }
    out
}

/// Dispatch by provider.
pub fn parse_subagent_output(
    provider: ProviderId,
    format: RunOutputFormat,
    stdout: &str,
) -> AdapterOutput {
    match provider {
        ProviderId::ClaudeCode => parse_claude_output(format, stdout),
        ProviderId::Codex => parse_codex_output(format, stdout),
        ProviderId::Gemini => parse_gemini_output(format, stdout),
    }
}

/// §9 model-run extraction. Claude: `structured_output` → `structuredOutput`
/// → `output` → `tool_call` → JSON parsed from `result`. Codex: JSON from the
/// last agent message (JSONL) or from plain stdout. Gemini: JSON from `response`.
pub fn extract_model_run_output(
    provider: ProviderId,
    stdout: &str,
) -> Result<Value, ProviderError> {
    let missing = ProviderError::MissingStructuredPayload;
    match provider {
        ProviderId::ClaudeCode => {
            let v = last_json_object(stdout).ok_or(missing.clone())?;
            for key in [
                "structured_output",
                "structuredOutput",
                "output",
                "tool_call",
            ] {
                if let Some(found) = v.get(key).filter(|x| x.is_object() || x.is_array()) {
                    return Ok(found.clone());
                }
            }
            v.get("result")
                .and_then(Value::as_str)
                .and_then(extract_json_lenient)
                .ok_or(missing)
        }
        ProviderId::Codex => {
            let mut n = CodexNormalizer::default();
            normalize_all(&mut n, stdout);
            let answer = n
                .summary()
                .result_text
                .clone()
                .unwrap_or_else(|| stdout.to_string());
            extract_json_lenient(&answer).ok_or(missing)
        }
        ProviderId::Gemini => last_json_object(stdout)
            .and_then(|v| {
                v.get("response")
                    .and_then(Value::as_str)
                    .and_then(extract_json_lenient)
            })
            .ok_or(missing),
    }
}

/// Text output of a model run (text mode): Claude/Codex/Gemini print the answer as is.
pub fn extract_model_run_text(stdout: &str) -> String {
    stdout.trim().to_string()
}
