//! `gateway_events` rows (control-plane.md §3.4, §11; runtime.md §7.3).
//! Every event goes through the durable outbox.

use serde_json::{json, Map, Value};

use crate::outbox::Outbox;
use crate::port::writes;

/// Maximum message length before truncation (`...` is appended).
pub const MESSAGE_LIMIT: usize = 2_000;
pub const CODE_CONFIG_DIR_FALLBACK: &str = "config_dir_fallback";
pub const MSG_CONFIG_DIR_FALLBACK: &str =
    "Gateway config directory was not writable; using fallback location.";

/// Truncate to [`MESSAGE_LIMIT`] characters plus `...`.
pub fn truncate_message(message: &str) -> String {
    if message.chars().count() > MESSAGE_LIMIT {
        format!(
            "{}...",
            message.chars().take(MESSAGE_LIMIT).collect::<String>()
        )
    } else {
        message.to_string()
    }
}

/// A JSON-safe copy of `details`: always an object, nulls inside objects
/// dropped (the Node `undefined` case), non-finite numbers cannot occur in
/// `serde_json`.
pub fn json_safe_details(details: Value) -> Value {
    match details {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .collect::<Map<String, Value>>(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// One `gateway_events` row. It carries no client-side id: the gateway
/// may insert only the columns the control plane grants it (spec §16.5),
/// so events are at-least-once (an outbox replay after a lost
/// acknowledgement can repeat one).
pub fn event_row(
    gateway_id: &str,
    team_id: &str,
    provider: Option<&str>,
    level: &str,
    code: Option<&str>,
    message: &str,
    details: Value,
) -> Value {
    json!({
        "gateway_id": gateway_id,
        "team_id": team_id,
        "provider": provider,
        "level": level,
        "code": code,
        "message": truncate_message(message),
        "details": json_safe_details(details),
    })
}

/// Queue an event for delivery. Nothing is sent without both ids; a
/// failing push is logged (events are best-effort, §11).
pub fn emit(outbox: &Outbox, gateway_id: &str, team_id: &str, row: Value) {
    if gateway_id.is_empty() || team_id.is_empty() {
        return;
    }
    let code = row.get("code").cloned().unwrap_or(Value::Null);
    if let Err(e) = outbox.push(writes::gateway_event(row)) {
        tracing::error!(error = %e, code = %code, "Failed to record gateway event");
    }
}

/// The `config_dir_fallback` event (warn, no provider).
pub fn config_dir_fallback_row(
    gateway_id: &str,
    team_id: &str,
    previous: &std::path::Path,
    current: &std::path::Path,
) -> Value {
    event_row(
        gateway_id,
        team_id,
        None,
        "warn",
        Some(CODE_CONFIG_DIR_FALLBACK),
        MSG_CONFIG_DIR_FALLBACK,
        json!({
            "previous": previous.display().to_string(),
            "current": current.display().to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_truncated_and_json_safe() {
        let long = "x".repeat(2_100);
        let row = event_row(
            "g",
            "t",
            None,
            "warn",
            Some("c"),
            &long,
            json!({"a": 1, "b": null}),
        );
        assert_eq!(row["message"].as_str().unwrap().len(), 2_003);
        assert!(row["message"].as_str().unwrap().ends_with("..."));
        assert_eq!(row["details"], json!({"a": 1}));
        assert_eq!(row["provider"], Value::Null);
        assert!(
            row.get("id").is_none(),
            "the gateway may not write gateway_events.id"
        );
        let row = event_row("g", "t", None, "warn", None, "m", json!("not an object"));
        assert_eq!(row["details"], json!({}));
        let fb = config_dir_fallback_row(
            "g",
            "t",
            std::path::Path::new("/a"),
            std::path::Path::new("/b"),
        );
        assert_eq!(fb["code"], "config_dir_fallback");
        assert_eq!(fb["details"], json!({"previous": "/a", "current": "/b"}));
    }
}
