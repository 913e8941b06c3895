//! Stream normalization → run events (providers.md §6, §11; control-plane §10.7).
//!
//! Each normalizer is a pure state machine over stdout lines. Events that the
//! reference gateway emits come out as [`NormalizedEvent::Run`]; lines that
//! are not JSON objects or have an unrecognized `type` come out as
//! [`NormalizedEvent::Unknown`] with the raw line (the reference gateway drops
//! them; a caller that wants to keep them stores them as `system`). Known
//! lines without an event mapping (Claude `system`/`result`, Codex
//! `turn.completed`, …) produce nothing but feed the [`RunSummary`].

use std::collections::{HashMap, HashSet};

pub use panorama_protocol::status::RunEventType;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::registry::ProviderId;

/// Event payload cap (characters of the JSON serialization).
pub const MAX_EVENT_PAYLOAD_CHARS: usize = 200_000;
/// Length cap of a `tool_call` summary.
pub const TOOL_SUMMARY_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NormalizedEvent {
    Run {
        event_type: RunEventType,
        payload: Value,
    },
    Unknown {
        raw: String,
    },
}

impl NormalizedEvent {
    fn run(event_type: RunEventType, payload: Value) -> Self {
        NormalizedEvent::Run {
            event_type,
            payload: trim_event_payload(payload),
        }
    }

    pub fn event_type(&self) -> Option<RunEventType> {
        match self {
            NormalizedEvent::Run { event_type, .. } => Some(*event_type),
            NormalizedEvent::Unknown { .. } => None,
        }
    }

    pub fn payload(&self) -> Option<&Value> {
        match self {
            NormalizedEvent::Run { payload, .. } => Some(payload),
            NormalizedEvent::Unknown { .. } => None,
        }
    }
}

/// Replaces a payload whose serialization exceeds 200,000 characters with
/// `{"truncated": true, "original_bytes": n, "preview": "<first 200000 chars>"}`.
pub fn trim_event_payload(payload: Value) -> Value {
    let serialized = payload.to_string();
    if serialized.chars().count() <= MAX_EVENT_PAYLOAD_CHARS {
        return payload;
    }
    json!({
        "truncated": true,
        "original_bytes": serialized.len(),
        "preview": serialized.chars().take(MAX_EVENT_PAYLOAD_CHARS).collect::<String>(),
    })
}

/// What a run reported about itself, gathered while normalizing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// Final answer text (Claude `result`, Codex last `agent_message`,
    /// Gemini concatenated assistant messages).
    pub result_text: Option<String>,
    /// Claude `structured_output`.
    pub structured_output: Option<Value>,
    pub usage: Option<Value>,
    pub total_cost_usd: Option<f64>,
    pub model_usage: Option<Value>,
    pub permission_denials: Option<Value>,
    pub num_turns: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The run reported failure (Claude `is_error`, Codex `turn.failed`,
    /// Gemini `result.status == "error"`).
    pub is_error: bool,
    /// Claude result `subtype` / Gemini result `status`.
    pub result_subtype: Option<String>,
    /// Error texts reported in-band, in order.
    pub errors: Vec<String>,
    /// The raw final result object (Claude `result` line, Gemini `result`).
    pub result_event: Option<Value>,
}

/// Line-oriented normalizer of one provider's stream.
pub trait StreamNormalizer {
    /// Feeds one stdout line (trimmed internally; blank lines yield nothing).
    fn push_line(&mut self, line: &str) -> Vec<NormalizedEvent>;
    /// Flushes buffered state at end of stream.
    fn finish(&mut self) -> Vec<NormalizedEvent>;
    fn summary(&self) -> &RunSummary;
}

/// A boxed normalizer for a provider.
pub fn normalizer_for(provider: ProviderId) -> Box<dyn StreamNormalizer + Send> {
    match provider {
        ProviderId::ClaudeCode => Box::new(ClaudeNormalizer::default()),
        ProviderId::Codex => Box::new(CodexNormalizer::default()),
        ProviderId::Gemini => Box::new(GeminiNormalizer::default()),
    }
}

/// Runs a normalizer over a whole transcript.
pub fn normalize_all(normalizer: &mut dyn StreamNormalizer, text: &str) -> Vec<NormalizedEvent> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        out.extend(normalizer.push_line(line));
    }
    out.extend(normalizer.finish());
    out
}

enum Parsed {
    Blank,
    Unknown,
    Object(Map<String, Value>),
}

fn parse(line: &str) -> Parsed {
    let t = line.trim();
    if t.is_empty() {
        return Parsed::Blank;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(map)) => Parsed::Object(map),
        _ => Parsed::Unknown,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<&Value>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        map.insert(key.into(), v.clone());
    }
}

/// Text of a content value: a string, or the `text` of every text block.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b {
                Value::String(s) => Some(s.as_str()),
                _ if matches!(str_of(b, "type"), None | Some("text")) => str_of(b, "text"),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A one-line summary of a tool call: the tool name plus the most telling input field.
pub fn tool_summary(tool_name: &str, input: &Value) -> String {
    const KEYS: &[&str] = &[
        "command",
        "file_path",
        "pattern",
        "path",
        "url",
        "query",
        "description",
        "prompt",
    ];
    let detail = KEYS.iter().find_map(|k| str_of(input, k)).map(|s| {
        let first_line = s.lines().next().unwrap_or("");
        first_line.trim().to_string()
    });
    let text = match detail.filter(|d| !d.is_empty()) {
        Some(d) => format!("{tool_name}: {d}"),
        None => tool_name.to_string(),
    };
    if text.chars().count() > TOOL_SUMMARY_MAX_CHARS {
        let mut cut: String = text.chars().take(TOOL_SUMMARY_MAX_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

// ------------------------------------------------------------------ Claude

#[derive(Debug, Clone)]
struct PendingMessage {
    id: String,
    content: String,
    model: Option<Value>,
    stop_reason: Option<Value>,
}

/// Claude Code `--output-format stream-json` normalizer.
#[derive(Debug, Default)]
pub struct ClaudeNormalizer {
    pending: Option<PendingMessage>,
    emitted_messages: HashMap<String, String>,
    tool_uses: HashMap<String, (String, Option<String>)>,
    seen_calls: HashSet<String>,
    seen_results: HashSet<String>,
    summary: RunSummary,
}

fn message_payload(
    content: &str,
    id: Option<&str>,
    model: Option<&Value>,
    stop: Option<&Value>,
) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert("content".into(), json!(content));
    if let Some(id) = id {
        m.insert("message_id".into(), json!(id));
    }
    insert_opt(&mut m, "model", model);
    insert_opt(&mut m, "stop_reason", stop);
    Value::Object(m)
}

impl ClaudeNormalizer {
    fn flush(&mut self) -> Vec<NormalizedEvent> {
        let Some(p) = self.pending.take() else {
            return Vec::new();
        };
        if self.emitted_messages.get(&p.id) == Some(&p.content) {
            return Vec::new();
        }
        self.emitted_messages
            .insert(p.id.clone(), p.content.clone());
        vec![NormalizedEvent::run(
            RunEventType::Message,
            message_payload(
                &p.content,
                Some(&p.id),
                p.model.as_ref(),
                p.stop_reason.as_ref(),
            ),
        )]
    }

    fn on_assistant(&mut self, line: &Map<String, Value>) -> Vec<NormalizedEvent> {
        let mut out = Vec::new();
        let Some(message) = line.get("message") else {
            return out;
        };
        let id = str_of(message, "id").map(str::to_string);
        if self
            .pending
            .as_ref()
            .is_some_and(|p| Some(&p.id) != id.as_ref())
        {
            out.extend(self.flush());
        }
        let blocks: &[Value] = message
            .get("content")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let text = content_text(message.get("content").unwrap_or(&Value::Null));
        let model = message.get("model").filter(|v| !v.is_null()).cloned();
        let stop = message.get("stop_reason").filter(|v| !v.is_null()).cloned();
        if !text.trim().is_empty() {
            match &id {
                Some(id) => {
                    let p = self.pending.get_or_insert_with(|| PendingMessage {
                        id: id.clone(),
                        content: String::new(),
                        model: None,
                        stop_reason: None,
                    });
                    p.content = text;
                    p.model = model.or(p.model.take());
                    p.stop_reason = stop.or(p.stop_reason.take());
                }
                None => out.push(NormalizedEvent::run(
                    RunEventType::Message,
                    message_payload(&text, None, model.as_ref(), stop.as_ref()),
                )),
            }
        } else if let Some(p) = self.pending.as_mut() {
            // same id, no text: only refresh the stop reason
            if stop.is_some() {
                p.stop_reason = stop;
            }
        }
        for block in blocks
            .iter()
            .filter(|b| str_of(b, "type") == Some("tool_use"))
        {
            let Some(tool_id) = str_of(block, "id") else {
                continue;
            };
            let name = str_of(block, "name").unwrap_or("").to_string();
            self.tool_uses
                .insert(tool_id.to_string(), (name.clone(), id.clone()));
            if !self.seen_calls.insert(tool_id.to_string()) {
                continue;
            }
            out.extend(self.flush());
            let input = block.get("input").cloned().unwrap_or(json!({}));
            out.push(NormalizedEvent::run(
                RunEventType::ToolCall,
                json!({
                    "tool_name": name,
                    "tool_use_id": tool_id,
                    "tool_input": input,
                    "summary": tool_summary(&name, &input),
                    "message_id": id,
                }),
            ));
        }
        out
    }

    fn on_user(&mut self, line: &Map<String, Value>) -> Vec<NormalizedEvent> {
        let mut out = self.flush();
        let Some(message) = line.get("message") else {
            return out;
        };
        let Some(blocks) = message.get("content").and_then(Value::as_array) else {
            return out;
        };
        for block in blocks
            .iter()
            .filter(|b| str_of(b, "type") == Some("tool_result"))
        {
            let Some(tool_id) = str_of(block, "tool_use_id") else {
                continue;
            };
            let content = content_text(block.get("content").unwrap_or(&Value::Null));
            if content.trim().is_empty() || self.seen_results.contains(tool_id) {
                continue;
            }
            self.seen_results.insert(tool_id.to_string());
            let (name, message_id) = match self.tool_uses.get(tool_id) {
                Some((n, m)) => (Some(n.clone()), m.clone()),
                None => (None, None),
            };
            out.push(NormalizedEvent::run(
                RunEventType::ToolResult,
                json!({
                    "tool_use_id": tool_id,
                    "tool_name": name,
                    "content": content,
                    "is_error": block.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    "message_id": message_id,
                }),
            ));
        }
        out
    }

    fn on_result(&mut self, line: &Map<String, Value>) {
        let v = Value::Object(line.clone());
        let s = &mut self.summary;
        if let Some(id) = str_of(&v, "session_id") {
            s.session_id = Some(id.to_string());
        }
        s.result_text = str_of(&v, "result")
            .map(str::to_string)
            .or(s.result_text.take());
        s.structured_output = v.get("structured_output").filter(|x| !x.is_null()).cloned();
        s.usage = v.get("usage").cloned().or(s.usage.take());
        s.total_cost_usd = v.get("total_cost_usd").and_then(Value::as_f64);
        s.model_usage = v.get("modelUsage").cloned();
        s.permission_denials = v.get("permission_denials").cloned();
        s.num_turns = v.get("num_turns").and_then(Value::as_u64);
        s.duration_ms = v.get("duration_ms").and_then(Value::as_u64);
        s.result_subtype = str_of(&v, "subtype").map(str::to_string);
        let subtype_error = s
            .result_subtype
            .as_deref()
            .is_some_and(|t| t.starts_with("error"));
        s.is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false) || subtype_error;
        if s.is_error {
            if let Some(text) = str_of(&v, "result") {
                s.errors.push(text.to_string());
            }
            if let Some(Value::Array(errs)) = v.get("errors") {
                s.errors
                    .extend(errs.iter().filter_map(Value::as_str).map(str::to_string));
            }
        }
        s.result_event = Some(v);
    }
}

impl StreamNormalizer for ClaudeNormalizer {
    fn push_line(&mut self, line: &str) -> Vec<NormalizedEvent> {
        let map = match parse(line) {
            Parsed::Blank => return Vec::new(),
            Parsed::Unknown => {
                return vec![NormalizedEvent::Unknown {
                    raw: line.trim().into(),
                }]
            }
            Parsed::Object(map) => map,
        };
        match map.get("type").and_then(Value::as_str) {
            Some("system") => {
                if let Some(id) = map.get("session_id").and_then(Value::as_str) {
                    self.summary.session_id = Some(id.to_string());
                }
                if let Some(model) = map.get("model").and_then(Value::as_str) {
                    self.summary.model = Some(model.to_string());
                }
                Vec::new()
            }
            Some("assistant") => self.on_assistant(&map),
            Some("user") => self.on_user(&map),
            Some("result") => {
                let out = self.flush();
                self.on_result(&map);
                out
            }
            Some("stream_event" | "rate_limit_event") => Vec::new(),
            _ => vec![NormalizedEvent::Unknown {
                raw: line.trim().into(),
            }],
        }
    }

    fn finish(&mut self) -> Vec<NormalizedEvent> {
        self.flush()
    }

    fn summary(&self) -> &RunSummary {
        &self.summary
    }
}

// ------------------------------------------------------------------- Codex

/// Codex `exec --json` normalizer.
#[derive(Debug, Default)]
pub struct CodexNormalizer {
    summary: RunSummary,
}

fn error_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        obj @ Value::Object(_) => str_of(obj, "message")
            .map(str::to_string)
            .or_else(|| Some(obj.to_string())),
        _ => None,
    }
}

impl StreamNormalizer for CodexNormalizer {
    fn push_line(&mut self, line: &str) -> Vec<NormalizedEvent> {
        let map = match parse(line) {
            Parsed::Blank => return Vec::new(),
            Parsed::Unknown => {
                return vec![NormalizedEvent::Unknown {
                    raw: line.trim().into(),
                }]
            }
            Parsed::Object(map) => map,
        };
        let s = &mut self.summary;
        match map.get("type").and_then(Value::as_str) {
            Some("thread.started") => {
                s.session_id = map
                    .get("thread_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                Vec::new()
            }
            Some("item.started") => match map.get("item") {
                // Codex ≥ 0.1xx: its shell tool is a `command_execution` item.
                Some(item) if str_of(item, "type") == Some("command_execution") => {
                    let command = str_of(item, "command").unwrap_or("");
                    vec![NormalizedEvent::run(
                        RunEventType::ToolCall,
                        json!({
                            "tool_name": "shell",
                            "tool_use_id": str_of(item, "id"),
                            "tool_input": {"command": command},
                            "summary": command,
                        }),
                    )]
                }
                _ => Vec::new(),
            },
            Some("turn.started" | "item.updated") => Vec::new(),
            Some("turn.completed") => {
                s.usage = map.get("usage").cloned();
                Vec::new()
            }
            Some("turn.failed") => {
                s.is_error = true;
                s.errors.extend(error_text(map.get("error")));
                Vec::new()
            }
            Some("error") => {
                s.errors.extend(
                    error_text(map.get("message")).or_else(|| error_text(map.get("error"))),
                );
                Vec::new()
            }
            Some("item.completed") => {
                let Some(item) = map.get("item") else {
                    return Vec::new();
                };
                let text = str_of(item, "text").unwrap_or("");
                match str_of(item, "type") {
                    Some("agent_message") if !text.trim().is_empty() => {
                        s.result_text = Some(text.to_string());
                        vec![NormalizedEvent::run(
                            RunEventType::Message,
                            json!({"role": "assistant", "content": text}),
                        )]
                    }
                    Some("reasoning") if !text.trim().is_empty() => vec![NormalizedEvent::run(
                        RunEventType::Message,
                        json!({"role": "assistant", "content": text, "kind": "reasoning"}),
                    )],
                    Some("error") => {
                        s.errors.extend(error_text(item.get("message")));
                        Vec::new()
                    }
                    Some("command_execution") => {
                        let exit_code = item.get("exit_code").and_then(Value::as_i64);
                        vec![NormalizedEvent::run(
                            RunEventType::ToolResult,
                            json!({
                                "tool_use_id": str_of(item, "id"),
                                "tool_name": "shell",
                                "content": str_of(item, "aggregated_output").unwrap_or(""),
                                "is_error": exit_code.is_some_and(|c| c != 0),
                                "exit_code": exit_code,
                            }),
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            _ => vec![NormalizedEvent::Unknown {
                raw: line.trim().into(),
            }],
        }
    }

    fn finish(&mut self) -> Vec<NormalizedEvent> {
        Vec::new()
    }

    fn summary(&self) -> &RunSummary {
        &self.summary
    }
}

// ------------------------------------------------------------------ Gemini

/// Gemini `--output-format stream-json` normalizer.
#[derive(Debug, Default)]
pub struct GeminiNormalizer {
    summary: RunSummary,
    /// tool id → tool name, for the results.
    tool_names: std::collections::HashMap<String, String>,
}

impl StreamNormalizer for GeminiNormalizer {
    fn push_line(&mut self, line: &str) -> Vec<NormalizedEvent> {
        let map = match parse(line) {
            Parsed::Blank => return Vec::new(),
            Parsed::Unknown => {
                return vec![NormalizedEvent::Unknown {
                    raw: line.trim().into(),
                }]
            }
            Parsed::Object(map) => map,
        };
        let s = &mut self.summary;
        match map.get("type").and_then(Value::as_str) {
            Some("init") => {
                s.session_id = map
                    .get("session_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                s.model = map.get("model").and_then(Value::as_str).map(str::to_string);
                Vec::new()
            }
            Some("message") => {
                let (Some(role), Some(content)) = (
                    map.get("role").and_then(Value::as_str),
                    map.get("content").and_then(Value::as_str),
                ) else {
                    return Vec::new();
                };
                if role == "assistant" {
                    s.result_text
                        .get_or_insert_with(String::new)
                        .push_str(content);
                }
                vec![NormalizedEvent::run(
                    RunEventType::Message,
                    json!({"role": role, "content": content}),
                )]
            }
            Some("tool_use") => {
                let name = map.get("tool_name").and_then(Value::as_str).unwrap_or("");
                let id = map.get("tool_id").and_then(Value::as_str).unwrap_or("");
                let input = map.get("parameters").cloned().unwrap_or(json!({}));
                self.tool_names.insert(id.to_string(), name.to_string());
                vec![NormalizedEvent::run(
                    RunEventType::ToolCall,
                    json!({
                        "tool_name": name,
                        "tool_use_id": id,
                        "tool_input": input,
                        "summary": tool_summary(name, &input),
                    }),
                )]
            }
            Some("tool_result") => {
                let id = map.get("tool_id").and_then(Value::as_str).unwrap_or("");
                let status = map.get("status").and_then(Value::as_str).unwrap_or("");
                let content = match map.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Null) | None => map
                        .get("error")
                        .map(|e| error_text(Some(e)).unwrap_or_default())
                        .unwrap_or_default(),
                    Some(other) => other.to_string(),
                };
                vec![NormalizedEvent::run(
                    RunEventType::ToolResult,
                    json!({
                        "tool_use_id": id,
                        "tool_name": self.tool_names.get(id),
                        "content": content,
                        "is_error": status != "success",
                    }),
                )]
            }
            Some("error") => {
                s.errors.extend(error_text(map.get("message")));
                Vec::new()
            }
            Some("result") => {
                let v = Value::Object(map.clone());
                s.result_subtype = str_of(&v, "status").map(str::to_string);
                s.is_error = s.result_subtype.as_deref() == Some("error");
                s.usage = v.get("stats").cloned();
                s.duration_ms = v
                    .get("stats")
                    .and_then(|st| st.get("duration_ms"))
                    .and_then(Value::as_u64);
                if s.is_error {
                    s.errors.extend(error_text(v.get("error")));
                }
                s.result_event = Some(v);
                Vec::new()
            }
            _ => vec![NormalizedEvent::Unknown {
                raw: line.trim().into(),
            }],
        }
    }

    fn finish(&mut self) -> Vec<NormalizedEvent> {
        Vec::new()
    }

    fn summary(&self) -> &RunSummary {
        &self.summary
    }
}
