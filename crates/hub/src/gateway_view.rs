//! Human text for a gateway's capabilities (`panorama-hub gateways list` /
//! `gateways show`): which agent CLIs a machine has, their versions,
//! health and flags, and every full-control layer. Pure: a `team_gateways`
//! row in, text out.

use panorama_protocol::full_control::provider_full_control_support;
use serde_json::Value;

/// Provider ids in display order.
const PROVIDERS: [&str; 3] = ["claude_code", "codex", "gemini"];

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// One provider's short state: `2.1.197 healthy`, `missing`, `0.61.0 unknown`.
fn provider_state(cap: &Value) -> String {
    if cap.get("available").and_then(Value::as_bool) != Some(true) {
        return "missing".into();
    }
    let version = str_at(cap, "/version").unwrap_or("?");
    let health = str_at(cap, "/health/status").unwrap_or("unchecked");
    format!("{version} {health}")
}

/// The `providers` column of `gateways list`:
/// `claude_code 2.1.197 healthy, codex missing, gemini 0.61.0 unknown`
/// (`-` when the gateway never reported capabilities).
pub fn providers_column(row: &Value) -> String {
    let Some(providers) = row
        .pointer("/capabilities/providers")
        .filter(|p| p.is_object())
    else {
        return "-".into();
    };
    PROVIDERS
        .iter()
        .map(|id| format!("{id} {}", provider_state(&providers[*id])))
        .collect::<Vec<_>>()
        .join(", ")
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "unknown",
    }
}

/// The multi-line `gateways show` text.
pub fn describe_gateway(row: &Value) -> String {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("-");
    let caps = row.get("capabilities").filter(|c| c.is_object());
    let mut out = vec![
        format!("gateway   {}", s("id")),
        format!("device    {}", s("device_name")),
        format!("status    {}", s("status")),
        format!("last seen {}", s("last_seen_at")),
    ];
    let Some(caps) = caps else {
        out.push("capabilities: none reported yet (the gateway has not sent a heartbeat)".into());
        return out.join("\n");
    };
    let install = caps
        .pointer("/hosts/gateway/metadata/install_full_control_enabled")
        .and_then(Value::as_bool);
    let team = row.get("full_control_enabled").and_then(Value::as_bool);
    out.push("full control:".into());
    out.push(format!("  team      {}", on_off(team)));
    out.push(format!("  install   {}", on_off(install)));
    if let Some(mc) = caps.pointer("/services/machine_control") {
        let ready = mc.get("ready").and_then(Value::as_bool) == Some(true);
        let reason = str_at(mc, "/reason")
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.push(format!(
            "  machine control service {}{reason}",
            if ready { "ready" } else { "not ready" }
        ));
    }
    out.push("providers:".into());
    for id in PROVIDERS {
        let cap = caps
            .pointer(&format!("/providers/{id}"))
            .cloned()
            .unwrap_or(Value::Null);
        out.push(format!("  {id}: {}", provider_state(&cap)));
        if let Some(err) = str_at(&cap, "/health/error").or_else(|| str_at(&cap, "/error")) {
            out.push(format!("    error: {err}"));
        }
        let flags: std::collections::BTreeMap<String, bool> = cap
            .get("supported_flags")
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default();
        let on: Vec<&str> = flags
            .iter()
            .filter(|(_, v)| **v)
            .map(|(k, _)| k.as_str())
            .collect();
        let off: Vec<&str> = flags
            .iter()
            .filter(|(_, v)| !**v)
            .map(|(k, _)| k.as_str())
            .collect();
        out.push(format!(
            "    flags: {}",
            if on.is_empty() {
                "-".into()
            } else {
                on.join(" ")
            }
        ));
        if !off.is_empty() {
            out.push(format!("    missing flags: {}", off.join(" ")));
        }
        let support = provider_full_control_support(id, &flags);
        out.push(format!(
            "    full control: {}",
            if support.supported {
                "supported".to_string()
            } else {
                format!("unsupported ({})", support.reason.unwrap_or_default())
            }
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> Value {
        json!({
            "id": "g1", "device_name": "box", "status": "ready", "last_seen_at": "t",
            "full_control_enabled": true,
            "capabilities": {
                "providers": {
                    "claude_code": {"available": true, "version": "2.1.197",
                        "supported_flags": {"permissionModeFlag": true, "dangerouslySkipPermissionsFlag": true, "betasFlag": false},
                        "health": {"status": "healthy"}},
                    "codex": {"available": false, "error": "spawn codex ENOENT", "supported_flags": {}},
                    "gemini": {"available": true, "version": "0.61.0", "supported_flags": {}}
                },
                "hosts": {"gateway": {"metadata": {"install_full_control_enabled": false}}},
                "services": {"machine_control": {"ready": false, "reason": "install-level full control is off"}}
            }
        })
    }

    #[test]
    fn list_column_names_every_provider() {
        assert_eq!(
            providers_column(&row()),
            "claude_code 2.1.197 healthy, codex missing, gemini 0.61.0 unchecked"
        );
        assert_eq!(providers_column(&json!({"capabilities": null})), "-");
    }

    #[test]
    fn show_lists_layers_flags_and_support() {
        let text = describe_gateway(&row());
        assert!(text.contains("  team      on"), "{text}");
        assert!(text.contains("  install   off"), "{text}");
        assert!(
            text.contains("machine control service not ready (install-level full control is off)")
        );
        assert!(text.contains("  claude_code: 2.1.197 healthy"));
        assert!(text.contains("    flags: dangerouslySkipPermissionsFlag permissionModeFlag"));
        assert!(text.contains("    missing flags: betasFlag"));
        assert!(text.contains("    error: spawn codex ENOENT"));
        assert!(text.contains("    full control: unsupported ("), "{text}");
        assert!(describe_gateway(&json!({"id": "g2"})).contains("none reported yet"));
    }
}
