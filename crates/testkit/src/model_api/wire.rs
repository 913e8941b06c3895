//! Encoders: one [`Reply`] as each API's SSE stream or JSON body.

use serde_json::{json, Value};

use super::plan::{Reply, Wire};

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The whole SSE body for one reply (`n` numbers ids uniquely).
pub fn sse_events(wire: Wire, reply: &Reply, model: &str, n: u64) -> String {
    match wire {
        Wire::Anthropic | Wire::AnthropicCountTokens => anthropic_sse(reply, model, n),
        Wire::OpenAiResponses => openai_sse(reply, model, n),
        Wire::GeminiGenerate | Wire::GeminiStream => sse(None, &gemini_response(reply, model)),
    }
}

/// The plain JSON body for one reply.
pub fn json_body(wire: Wire, reply: &Reply, model: &str, n: u64) -> Value {
    match wire {
        Wire::Anthropic => anthropic_message(reply, model, n),
        Wire::AnthropicCountTokens => json!({"input_tokens": 10}),
        Wire::OpenAiResponses => json!({
            "id": format!("resp_{n}"), "object": "response", "status": "completed",
            "model": model, "output": [openai_item(reply, n)], "usage": openai_usage(),
        }),
        Wire::GeminiGenerate | Wire::GeminiStream => gemini_response(reply, model),
    }
}

fn anthropic_block(reply: &Reply, n: u64) -> Value {
    match reply {
        Reply::Text(t) => json!({"type": "text", "text": t}),
        Reply::ToolCall { name, args } => {
            json!({"type": "tool_use", "id": format!("toolu_loopback_{n}"), "name": name, "input": args})
        }
    }
}

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text(_) => "end_turn",
        Reply::ToolCall { .. } => "tool_use",
    }
}

fn anthropic_usage() -> Value {
    json!({"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
}

fn anthropic_message(reply: &Reply, model: &str, n: u64) -> Value {
    json!({
        "id": format!("msg_loopback_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": [anthropic_block(reply, n)], "stop_reason": stop_reason(reply),
        "stop_sequence": null, "usage": anthropic_usage(),
    })
}

fn anthropic_sse(reply: &Reply, model: &str, n: u64) -> String {
    let mut out = String::new();
    let mut start = anthropic_message(reply, model, n);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    out += &sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": start}),
    );
    let (block_start, delta) = match reply {
        Reply::Text(t) => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": t}),
        ),
        Reply::ToolCall { name, args } => (
            json!({"type": "tool_use", "id": format!("toolu_loopback_{n}"), "name": name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": args.to_string()}),
        ),
    };
    out += &sse(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": block_start}),
    );
    out += &sse(
        Some("content_block_delta"),
        &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
    );
    out += &sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    );
    out += &sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
            "usage": {"output_tokens": 7}}),
    );
    out += &sse(Some("message_stop"), &json!({"type": "message_stop"}));
    out
}

fn openai_usage() -> Value {
    json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19})
}

fn openai_item(reply: &Reply, n: u64) -> Value {
    match reply {
        Reply::Text(t) => json!({
            "type": "message", "id": format!("msg_loopback_{n}"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": t, "annotations": []}],
        }),
        Reply::ToolCall { name, args } => json!({
            "type": "function_call", "id": format!("fc_loopback_{n}"), "status": "completed",
            "name": name, "arguments": args.to_string(), "call_id": format!("call_loopback_{n}"),
        }),
    }
}

fn openai_sse(reply: &Reply, model: &str, n: u64) -> String {
    let id = format!("resp_loopback_{n}");
    let item = openai_item(reply, n);
    let mut out = sse(
        Some("response.created"),
        &json!({"type": "response.created", "response": {"id": id, "model": model, "status": "in_progress"}}),
    );
    out += &sse(
        Some("response.output_item.added"),
        &json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
    );
    if let Reply::Text(t) = reply {
        out += &sse(
            Some("response.output_text.delta"),
            &json!({"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                "content_index": 0, "delta": t}),
        );
    }
    out += &sse(
        Some("response.output_item.done"),
        &json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    );
    out += &sse(
        Some("response.completed"),
        &json!({"type": "response.completed", "response": {"id": id, "model": model, "status": "completed",
            "output": [item], "usage": openai_usage()}}),
    );
    out
}

fn gemini_response(reply: &Reply, model: &str) -> Value {
    let part = match reply {
        Reply::Text(t) => json!({"text": t}),
        Reply::ToolCall { name, args } => json!({"functionCall": {"name": name, "args": args}}),
    };
    json!({
        "candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19},
        "modelVersion": model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_stream_is_a_complete_message() {
        let body = sse_events(Wire::Anthropic, &Reply::Text("hello".into()), "m", 1);
        let events: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            events,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(body.contains("\"text_delta\""));
    }

    #[test]
    fn openai_stream_ends_with_completed() {
        let reply = Reply::ToolCall {
            name: "exec_command".into(),
            args: json!({"cmd": "ls"}),
        };
        let body = sse_events(Wire::OpenAiResponses, &reply, "m", 2);
        assert!(body
            .trim_end()
            .lines()
            .next_back()
            .unwrap()
            .contains("response.completed"));
        assert!(body.contains("\"call_id\":\"call_loopback_2\""));
    }
}
