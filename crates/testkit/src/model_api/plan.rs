//! What the loopback model answers: a pure function of the request body
//! and the test's [`Script`].

use serde_json::{json, Map, Value};

/// Which API a request speaks, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/messages` (Claude Code).
    Anthropic,
    /// `POST /v1/messages/count_tokens`.
    AnthropicCountTokens,
    /// `POST /v1/responses` (Codex).
    OpenAiResponses,
    /// `POST /v1beta/models/<m>:generateContent` (Gemini CLI side calls).
    GeminiGenerate,
    /// `POST /v1beta/models/<m>:streamGenerateContent` (Gemini CLI turns).
    GeminiStream,
}

impl Wire {
    pub fn from_path(path: &str) -> Option<Wire> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/messages/count_tokens") {
            Some(Wire::AnthropicCountTokens)
        } else if path.ends_with("/messages") {
            Some(Wire::Anthropic)
        } else if path.ends_with("/responses") {
            Some(Wire::OpenAiResponses)
        } else if path.ends_with(":streamGenerateContent") {
            Some(Wire::GeminiStream)
        } else if path.ends_with(":generateContent") {
            Some(Wire::GeminiGenerate)
        } else {
            None
        }
    }
}

/// `gemini-x` out of `/v1beta/models/gemini-x:generateContent`.
pub fn gemini_model_from_path(path: &str) -> Option<String> {
    let rest = path.split("/models/").nth(1)?;
    Some(rest.split(':').next()?.to_string())
}

/// What a test wants the model to do.
#[derive(Debug, Clone)]
pub struct Script {
    /// The final prose answer.
    pub reply: String,
    /// When set, the first turn after a prompt calls the CLI's shell tool
    /// with this command (Claude `Bash`, Codex `exec_command`/`shell`,
    /// Gemini `run_shell_command`).
    pub tool_command: Option<String>,
    /// Structured output to return when the CLI asks for one (Claude's
    /// `StructuredOutput` tool, Codex `text.format` json_schema, a Gemini
    /// "matching this schema" prompt). `None` → a value made up from the
    /// request's schema.
    pub structured: Option<Value>,
    /// Wait this long before a final text answer (a run that stays live).
    pub answer_delay_ms: u64,
    /// How many shell-tool calls a turn makes before answering (≥ 1 when
    /// `tool_command` is set).
    pub tool_repeats: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            reply: "Loopback answer: all done.".into(),
            tool_command: None,
            structured: None,
            answer_delay_ms: 0,
            tool_repeats: 1,
        }
    }
}

/// One model turn's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text(String),
    /// A tool call: the CLI's tool name and its arguments.
    ToolCall {
        name: String,
        args: Value,
    },
}

/// The phrase our gateway puts in prompts when the CLI has no schema flag.
const SCHEMA_PROMPT: &str = "Return STRICT JSON matching this schema: ";

/// Decides the answer to one request.
pub fn plan_reply(wire: Wire, body: &Value, script: &Script) -> Reply {
    match wire {
        Wire::Anthropic => plan_anthropic(body, script),
        Wire::AnthropicCountTokens => Reply::Text(String::new()),
        Wire::OpenAiResponses => plan_openai(body, script),
        Wire::GeminiGenerate | Wire::GeminiStream => plan_gemini(body, script),
    }
}

fn structured_text(script: &Script, schema: &Value) -> String {
    script
        .structured
        .clone()
        .unwrap_or_else(|| instance_of(schema))
        .to_string()
}

fn plan_anthropic(body: &Value, script: &Script) -> Reply {
    let tools = names(body.get("tools"), |t| t.get("name"));
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Tool calls since the last real prompt (a user message without tool results).
    let is_prompt = |m: &Value| {
        m.get("role").and_then(Value::as_str) == Some("user")
            && !blocks(m)
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    };
    let start = messages.iter().rposition(is_prompt).unwrap_or(0);
    let called: Vec<String> = messages[start..]
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .flat_map(blocks)
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .filter_map(|b| b.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if let Some(cmd) = &script.tool_command {
        if tools.iter().any(|t| t == "Bash")
            && called.iter().filter(|c| *c == "Bash").count() < script.tool_repeats.max(1)
        {
            return Reply::ToolCall {
                name: "Bash".into(),
                args: json!({"command": cmd, "description": "Run a command"}),
            };
        }
    }
    let structured_tool = body.get("tools").and_then(Value::as_array).and_then(|ts| {
        ts.iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("StructuredOutput"))
    });
    if let Some(tool) = structured_tool {
        if !called.iter().any(|c| c == "StructuredOutput") {
            let schema = tool.get("input_schema").cloned().unwrap_or(Value::Null);
            return Reply::ToolCall {
                name: "StructuredOutput".into(),
                args: script
                    .structured
                    .clone()
                    .unwrap_or_else(|| instance_of(&schema)),
            };
        }
    }
    if let Some(schema) = last_prompt_schema(&messages_text(&messages[start..])) {
        return Reply::Text(structured_text(script, &schema));
    }
    Reply::Text(script.reply.clone())
}

fn plan_openai(body: &Value, script: &Script) -> Reply {
    let tools = names(body.get("tools"), |t| t.get("name"));
    let input = body
        .get("input")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_prompt = |i: &Value| {
        i.get("type").and_then(Value::as_str) == Some("message")
            && i.get("role").and_then(Value::as_str) == Some("user")
    };
    let start = input.iter().rposition(is_prompt).unwrap_or(0);
    let shell_calls = input[start..]
        .iter()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("function_call"))
        .count();
    if let Some(cmd) = &script.tool_command {
        if shell_calls < script.tool_repeats.max(1) {
            if tools.iter().any(|t| t == "exec_command") {
                return Reply::ToolCall {
                    name: "exec_command".into(),
                    args: json!({"cmd": cmd}),
                };
            }
            if tools.iter().any(|t| t == "shell") {
                return Reply::ToolCall {
                    name: "shell".into(),
                    args: json!({"command": ["bash", "-lc", cmd]}),
                };
            }
        }
    }
    let format = body.pointer("/text/format");
    if format.and_then(|f| f.get("type")).and_then(Value::as_str) == Some("json_schema") {
        let schema = format
            .and_then(|f| f.get("schema"))
            .cloned()
            .unwrap_or(Value::Null);
        return Reply::Text(structured_text(script, &schema));
    }
    let text: String = input[start..]
        .iter()
        .filter(|i| is_prompt(i))
        .flat_map(blocks)
        .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(schema) = last_prompt_schema(&text) {
        return Reply::Text(structured_text(script, &schema));
    }
    Reply::Text(script.reply.clone())
}

fn plan_gemini(body: &Value, script: &Script) -> Reply {
    let tools: Vec<String> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
                .flatten()
                .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // Side calls (routing, next-speaker checks) ask for JSON by schema.
    let config_schema = body
        .pointer("/generationConfig/responseJsonSchema")
        .or_else(|| body.pointer("/generationConfig/responseSchema"));
    if let Some(schema) = config_schema {
        return Reply::Text(instance_of(schema).to_string());
    }
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts = |c: &Value| -> Vec<Value> {
        c.get("parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let is_prompt = |c: &Value| {
        c.get("role").and_then(Value::as_str) == Some("user")
            && !parts(c).iter().any(|p| p.get("functionResponse").is_some())
    };
    let start = contents.iter().rposition(is_prompt).unwrap_or(0);
    let calls = contents[start..]
        .iter()
        .flat_map(parts)
        .filter(|p| p.get("functionCall").is_some())
        .count();
    if let Some(cmd) = &script.tool_command {
        if calls < script.tool_repeats.max(1) && tools.iter().any(|t| t == "run_shell_command") {
            return Reply::ToolCall {
                name: "run_shell_command".into(),
                args: json!({"command": cmd, "description": "Run a command"}),
            };
        }
    }
    let text: String = contents
        .iter()
        .filter(|c| is_prompt(c))
        .flat_map(parts)
        .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(schema) = last_prompt_schema(&text) {
        return Reply::Text(structured_text(script, &schema));
    }
    Reply::Text(script.reply.clone())
}

fn blocks(message: &Value) -> Vec<Value> {
    match message.get("content") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        _ => Vec::new(),
    }
}

fn messages_text(messages: &[Value]) -> String {
    messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .flat_map(blocks)
        .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n")
}

fn names(list: Option<&Value>, key: impl Fn(&Value) -> Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|t| key(t).and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The schema after the last "Return STRICT JSON matching this schema: ".
pub fn last_prompt_schema(text: &str) -> Option<Value> {
    let at = text.rfind(SCHEMA_PROMPT)? + SCHEMA_PROMPT.len();
    let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
    stream.next()?.ok()
}

/// A small value that satisfies `schema` (objects with their required
/// properties, first enum value, type defaults). Enough for the CLIs'
/// validation and side-call schemas.
pub fn instance_of(schema: &Value) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return instance_of(first);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_ascii_lowercase(),
        _ if schema.get("properties").is_some() => "object".into(),
        _ => "string".into(),
    };
    match ty.as_str() {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_else(|| props.keys().map(String::as_str).collect());
                for (name, sub) in props {
                    if required.contains(&name.as_str()) {
                        out.insert(name.clone(), instance_of(sub));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => Value::Array(Vec::new()),
        "integer" | "number" => {
            let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(1);
            json!(min.max(1))
        }
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("hi"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_with_tool() -> Script {
        Script {
            tool_command: Some("ls".into()),
            ..Script::default()
        }
    }

    #[test]
    fn anthropic_calls_bash_then_answers() {
        let first = json!({"tools": [{"name": "Bash"}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list"}]}]});
        assert_eq!(
            plan_reply(Wire::Anthropic, &first, &script_with_tool()),
            Reply::ToolCall {
                name: "Bash".into(),
                args: json!({"command": "ls", "description": "Run a command"})
            }
        );
        let second = json!({"tools": [{"name": "Bash"}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a\nb"}]}]});
        assert_eq!(
            plan_reply(Wire::Anthropic, &second, &script_with_tool()),
            Reply::Text(Script::default().reply)
        );
    }

    #[test]
    fn anthropic_structured_output_tool_gets_a_schema_instance() {
        let body = json!({"tools": [{"name": "StructuredOutput", "input_schema":
            {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}],
            "messages": [{"role": "user", "content": "Say hi."}]});
        assert_eq!(
            plan_reply(Wire::Anthropic, &body, &Script::default()),
            Reply::ToolCall {
                name: "StructuredOutput".into(),
                args: json!({"message": "hi"})
            }
        );
    }

    #[test]
    fn openai_json_schema_format_and_tool_call() {
        let body = json!({"tools": [{"type": "function", "name": "exec_command"}],
            "text": {"format": {"type": "json_schema", "schema": {"type": "object",
                "properties": {"n": {"type": "integer"}}, "required": ["n"]}}},
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}]});
        assert_eq!(
            plan_reply(Wire::OpenAiResponses, &body, &script_with_tool()),
            Reply::ToolCall {
                name: "exec_command".into(),
                args: json!({"cmd": "ls"})
            }
        );
        assert_eq!(
            plan_reply(Wire::OpenAiResponses, &body, &Script::default()),
            Reply::Text(json!({"n": 1}).to_string())
        );
    }

    #[test]
    fn gemini_prompt_schema_and_side_calls() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text":
            "Say hi.\n\nReturn STRICT JSON matching this schema: {\"type\":\"object\",\"properties\":{\"message\":{\"type\":\"string\"}},\"required\":[\"message\"]}"}]}]});
        assert_eq!(
            plan_reply(Wire::GeminiStream, &body, &Script::default()),
            Reply::Text(json!({"message": "hi"}).to_string())
        );
        let router = json!({"generationConfig": {"responseJsonSchema": {"type": "object",
            "properties": {"complexity_score": {"type": "integer", "minimum": 1}}}}});
        assert_eq!(
            plan_reply(Wire::GeminiGenerate, &router, &Script::default()),
            Reply::Text(json!({"complexity_score": 1}).to_string())
        );
    }

    #[test]
    fn wire_from_path() {
        assert_eq!(Wire::from_path("/v1/messages"), Some(Wire::Anthropic));
        assert_eq!(
            Wire::from_path("/v1/responses"),
            Some(Wire::OpenAiResponses)
        );
        assert_eq!(
            Wire::from_path("/v1beta/models/gemini-x:streamGenerateContent"),
            Some(Wire::GeminiStream)
        );
        assert_eq!(Wire::from_path("/v1/models"), None);
        assert_eq!(
            gemini_model_from_path("/v1beta/models/gemini-x:generateContent").as_deref(),
            Some("gemini-x")
        );
    }
}
