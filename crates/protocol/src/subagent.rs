//! Small subagent-run helpers both sides must agree on: the output envelope
//! (control-plane §10.6), run-event payload trimming (§10.7) and the provider
//! failure message (§8.2).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::capabilities::ProviderId;
use crate::status::wire_enum;

/// `schema_version` of output envelopes and run metadata (a number, not the
/// capabilities `"v1"`).
pub const SUBAGENT_SCHEMA_VERSION: u32 = 1;
/// Run-event payloads longer than this many characters of JSON are replaced.
pub const MAX_EVENT_PAYLOAD_CHARS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Markdown,
    Text,
    Json,
}
wire_enum!(ContentType { Markdown => "markdown", Text => "text", Json => "json" });

/// `subagents.output` / `subagent_runs.output`. Later server-side overflow
/// fields are not modelled; unknown keys are ignored on read.
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
    /// The envelope used for failures and cancellations.
    pub fn error(message: &str) -> Self {
        OutputEnvelope {
            schema_version: SUBAGENT_SCHEMA_VERSION,
            content: Value::String(message.to_string()),
            content_type: ContentType::Text,
            summary: None,
            sources: None,
            errors: Some(vec![message.to_string()]),
        }
    }
}

/// §10.7 trimming. Lengths count UTF-16 code units, like JavaScript's
/// `String.length`; the preview never splits a character.
pub fn trim_event_payload(payload: Value) -> Value {
    let serialized = payload.to_string();
    let length: usize = serialized.encode_utf16().count();
    if length <= MAX_EVENT_PAYLOAD_CHARS {
        return payload;
    }
    let mut units = 0;
    let preview: String = serialized
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= MAX_EVENT_PAYLOAD_CHARS
        })
        .collect();
    json!({ "truncated": true, "original_bytes": length, "preview": preview })
}

/// `Gateway provider <label> is unhealthy. Try another provider or run
/// "panorama-gateway doctor". Details: <summary>` (the suffix only when a
/// summary exists).
pub fn provider_failure_message(provider: ProviderId, detail: Option<&str>) -> String {
    let suffix = detail
        .filter(|d| !d.is_empty())
        .map(|d| format!(" Details: {d}"))
        .unwrap_or_default();
    format!(
        "Gateway provider {} is unhealthy. Try another provider or run \"panorama-gateway doctor\".{suffix}",
        provider.label()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_shape() {
        assert_eq!(
            serde_json::to_value(OutputEnvelope::error("Cancelled")).unwrap(),
            json!({"schema_version": 1, "content": "Cancelled", "content_type": "text", "errors": ["Cancelled"]})
        );
    }

    #[test]
    fn small_payloads_are_kept_and_large_ones_replaced() {
        let small = json!({"reason": "x"});
        assert_eq!(trim_event_payload(small.clone()), small);

        // {"c":"…"} is 8 characters of framing.
        let exact = json!({"c": "a".repeat(MAX_EVENT_PAYLOAD_CHARS - 8)});
        assert_eq!(exact.to_string().len(), MAX_EVENT_PAYLOAD_CHARS);
        assert_eq!(trim_event_payload(exact.clone()), exact);

        let big = json!({"c": "a".repeat(MAX_EVENT_PAYLOAD_CHARS)});
        let trimmed = trim_event_payload(big);
        assert_eq!(trimmed["truncated"], true);
        assert_eq!(trimmed["original_bytes"], MAX_EVENT_PAYLOAD_CHARS + 8);
        let preview = trimmed["preview"].as_str().unwrap();
        assert_eq!(preview.len(), MAX_EVENT_PAYLOAD_CHARS);
        assert!(preview.starts_with("{\"c\":\"aaa"));
    }

    #[test]
    fn trimming_counts_utf16_units_and_keeps_characters_whole() {
        // Each 😀 is 2 UTF-16 units.
        let big = json!({"c": "😀".repeat(MAX_EVENT_PAYLOAD_CHARS / 2)});
        let trimmed = trim_event_payload(big);
        assert_eq!(trimmed["original_bytes"], MAX_EVENT_PAYLOAD_CHARS + 8);
        let preview = trimmed["preview"].as_str().unwrap();
        assert!(preview.encode_utf16().count() <= MAX_EVENT_PAYLOAD_CHARS);
        assert!(preview.ends_with('😀'));
    }

    #[test]
    fn provider_failure_messages() {
        assert_eq!(
            provider_failure_message(ProviderId::Codex, Some("exit 1")),
            "Gateway provider Codex is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: exit 1"
        );
        assert_eq!(
            provider_failure_message(ProviderId::ClaudeCode, None),
            "Gateway provider Claude is unhealthy. Try another provider or run \"panorama-gateway doctor\"."
        );
    }
}
