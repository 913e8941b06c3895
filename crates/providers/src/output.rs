//! Final output extraction (providers.md §3–5 "Output", §9; control-plane §10.5–10.6).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::RunOutputFormat;
use crate::error::ProviderError;
use crate::normalize::{
    normalize_all, ClaudeNormalizer, CodexNormalizer, GeminiNormalizer, RunSummary,
    StreamNormalizer,
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

/// Text output format: the envelope says `text` (as 2.32.167 writes it).
fn text_output(stdout: &str, provider: ProviderId) -> AdapterOutput {
    AdapterOutput {
        output: OutputEnvelope::new(json!(stdout.trim()), ContentType::Text),
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
    strict_json: bool,
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
        // Without a schema, json output is non-strict: prose is a valid
        // (markdown) answer, not a failure that marks the provider unhealthy.
        return AdapterOutput {
            output: OutputEnvelope::new(json!(answer), ContentType::Markdown),
            metadata,
            parse_error: strict_json.then(|| PARSE_ERR_NO_JSON_IN_TEXT.into()),
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
pub fn parse_codex_output(
    format: RunOutputFormat,
    strict_json: bool,
    stdout: &str,
) -> AdapterOutput {
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
        strict_json,
        s.usage.as_ref(),
    );
    // The thread id: the next run on this subagent resumes it.
    if let Some(id) = &s.session_id {
        out.metadata.insert("session_id".into(), json!(id));
    }
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
pub fn parse_gemini_output(
    format: RunOutputFormat,
    strict_json: bool,
    stdout: &str,
) -> AdapterOutput {
    if format == RunOutputFormat::Text {
        return text_output(stdout, ProviderId::Gemini);
    }
    if format == RunOutputFormat::StreamJson {
        let mut n = GeminiNormalizer::default();
        normalize_all(&mut n, stdout);
        let s = n.summary();
        let mut out = answer_output(
            ProviderId::Gemini,
            s.result_text.as_deref(),
            false,
            false,
            s.usage.as_ref(),
        );
        if let Some(id) = &s.session_id {
            out.metadata.insert("session_id".into(), json!(id));
        }
        if s.is_error {
            out.provider_error = s
                .errors
                .last()
                .cloned()
                .or(Some("Gemini run failed".into()));
        }
        return out;
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
        strict_json,
        v.get("stats"),
    );
    if let Some(id) = v.get("session_id").and_then(Value::as_str) {
        out.metadata.insert("session_id".into(), json!(id));
    }
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

/// Dispatch by provider, strict json (a prose answer in json mode is a
/// parse error). See [`parse_plan_output`] for runs built from a plan.
pub fn parse_subagent_output(
    provider: ProviderId,
    format: RunOutputFormat,
    stdout: &str,
) -> AdapterOutput {
    parse_subagent_output_with(provider, format, true, stdout)
}

/// Dispatch by provider; `strict_json` false completes prose as markdown.
pub fn parse_subagent_output_with(
    provider: ProviderId,
    format: RunOutputFormat,
    strict_json: bool,
    stdout: &str,
) -> AdapterOutput {
    match provider {
        ProviderId::ClaudeCode => parse_claude_output(format, stdout),
        ProviderId::Codex => parse_codex_output(format, strict_json, stdout),
        ProviderId::Gemini => parse_gemini_output(format, strict_json, stdout),
    }
}

/// A finished run's output, strict only when the plan asked for a schema.
pub fn parse_plan_output(plan: &crate::argv::RunPlan, stdout: &str) -> AdapterOutput {
    parse_subagent_output_with(plan.provider, plan.output_format, plan.strict_json, stdout)
}

/// A model run's structured answer: from the plan's answer file (Codex
/// `-o`) when the CLI wrote one, else out of stdout.
pub fn extract_model_run_answer(
    provider: ProviderId,
    stdout: &str,
    answer_file: Option<&str>,
) -> Result<Value, ProviderError> {
    extract_model_run_answer_and_raw(provider, stdout, answer_file).map(|(answer, _)| answer)
}

/// The answer and what the later generation stores as `raw` beside it
/// (`None`: the parsed stdout, see [`model_run_result_shape`]): for Codex
/// the answer as the CLI wrote it, before `args_json` is decoded.
pub fn extract_model_run_answer_and_raw(
    provider: ProviderId,
    stdout: &str,
    answer_file: Option<&str>,
) -> Result<(Value, Option<Value>), ProviderError> {
    let value = match answer_file.map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => extract_json_lenient(text).ok_or(ProviderError::MissingStructuredPayload)?,
        None => extract_model_run_output(provider, stdout)?,
    };
    Ok(if provider == ProviderId::Codex {
        (decode_args_json(value.clone()), Some(value))
    } else {
        (value, None)
    })
}

/// Undoes the strict schema's `args` → `args_json` (see
/// [`crate::argv::strict_json_schema`]): a string `args_json` that holds
/// JSON becomes `args` again.
pub fn decode_args_json(mut value: Value) -> Value {
    if let Some(obj) = value.as_object_mut() {
        let decoded = obj
            .get(crate::argv::ARGS_JSON)
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        if let Some(args) = decoded {
            obj.remove(crate::argv::ARGS_JSON);
            obj.insert("args".into(), args);
        }
    }
    value
}

/// Which control-plane generation reads a result (control-plane §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolGeneration {
    /// 2.29 as our first gateway stored it: text output a bare string,
    /// `raw` the stdout string.
    Seed,
    /// 2.32.x: text output and `raw` are `{text}`; in json mode `raw` is
    /// the parsed provider output (Codex: its answer before `args_json` is
    /// decoded).
    Later,
}

/// The generation a `model_run` result is written for. A model_run job
/// carries no sign of its generation (same payload, same row in both; the
/// seed's own result is not visible), and the control plane reads only
/// `result.output`, which in json mode is the same in both; so results
/// take the shape the reference 2.32.167 writes (PROTOCOL.md, "model_run
/// result shape").
pub const MODEL_RUN_GENERATION: ProtocolGeneration = ProtocolGeneration::Later;

/// A model run's `(output, raw)` as `generation` stores them. `output` is
/// the extracted answer (a string in text mode, the structured value in
/// json mode); `raw` what the extraction says the provider answered
/// ([`extract_model_run_answer_and_raw`]; `None`: the parsed stdout);
/// `stdout` the CLI's output.
pub fn model_run_result_shape(
    generation: ProtocolGeneration,
    output: Value,
    raw: Option<Value>,
    stdout: &str,
) -> (Value, Value) {
    match generation {
        ProtocolGeneration::Seed => (output, json!(stdout)),
        ProtocolGeneration::Later => match output {
            Value::String(text) => {
                let text = json!({ "text": text });
                (text.clone(), text)
            }
            other => {
                let raw = raw
                    .or_else(|| last_json_object(stdout))
                    .unwrap_or_else(|| json!(stdout));
                (other, raw)
            }
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_strict_json_prose_completes_as_markdown() {
        let stdout = r#"{"response":"Here are the files: a, b.","stats":{}}"#;
        let lax =
            parse_subagent_output_with(ProviderId::Gemini, RunOutputFormat::Json, false, stdout);
        assert_eq!(lax.parse_error, None);
        assert_eq!(lax.output.content_type, ContentType::Markdown);
        assert_eq!(lax.output.content, json!("Here are the files: a, b."));
        let strict = parse_subagent_output(ProviderId::Gemini, RunOutputFormat::Json, stdout);
        assert_eq!(
            strict.parse_error.as_deref(),
            Some(PARSE_ERR_NO_JSON_IN_TEXT)
        );
    }

    #[test]
    fn model_run_answer_prefers_the_answer_file() {
        let jsonl = r#"{"type":"item.completed","item":{"type":"agent_message","text":"noise"}}"#;
        assert_eq!(
            extract_model_run_answer(ProviderId::Codex, jsonl, Some("{\"message\":\"hi\"}\n"))
                .unwrap(),
            json!({"message": "hi"})
        );
        assert!(extract_model_run_answer(ProviderId::Codex, jsonl, Some("  ")).is_err());
    }

    #[test]
    fn args_json_is_decoded_back_into_args() {
        let v = json!({"name": "search", "args_json": "{\"q\":\"rust\"}"});
        assert_eq!(
            decode_args_json(v),
            json!({"name": "search", "args": {"q": "rust"}})
        );
        let bad = json!({"args_json": "not json"});
        assert_eq!(decode_args_json(bad.clone()), bad);
        assert_eq!(
            extract_model_run_answer(
                ProviderId::Codex,
                "",
                Some(r#"{"name":"n","args_json":"{}"}"#)
            )
            .unwrap(),
            json!({"name": "n", "args": {}})
        );
    }

    #[test]
    fn result_shapes_by_generation() {
        let (out, raw) =
            model_run_result_shape(ProtocolGeneration::Seed, json!("hello"), None, "hello\n");
        assert_eq!((out, raw), (json!("hello"), json!("hello\n")));
        // Text mode, later: output and raw are both {text} (as 2.32.167).
        let (out, raw) =
            model_run_result_shape(ProtocolGeneration::Later, json!("hello"), None, "hello\n");
        assert_eq!(
            (out, raw),
            (json!({"text": "hello"}), json!({"text": "hello"}))
        );
        // Json mode, later: raw is the parsed stdout object…
        let stdout = "{\"type\":\"result\",\"structured_output\":{\"a\":1}}\n";
        let (out, raw) =
            model_run_result_shape(ProtocolGeneration::Later, json!({"a": 1}), None, stdout);
        assert_eq!(out, json!({"a": 1}));
        assert_eq!(raw["type"], json!("result"));
        // …or what the extraction said the provider answered (Codex).
        let (answer, raw) = extract_model_run_answer_and_raw(
            ProviderId::Codex,
            "",
            Some(r#"{"name":"n","args_json":"{}"}"#),
        )
        .unwrap();
        let (out, raw) = model_run_result_shape(ProtocolGeneration::Later, answer, raw, "");
        assert_eq!(out, json!({"name": "n", "args": {}}));
        assert_eq!(raw, json!({"name": "n", "args_json": "{}"}));
        assert_eq!(MODEL_RUN_GENERATION, ProtocolGeneration::Later);
    }
}
