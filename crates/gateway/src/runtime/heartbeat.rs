//! Heartbeats (runtime.md §4.6, control-plane.md §5.2, §12): capabilities
//! v1, the operational status, the 30 s loop and status-change syncs.

use std::sync::Arc;
use std::time::Duration;

use panorama_protocol::capabilities::{
    Capabilities, HostCapability, ProviderCapability, Providers, RuntimeInfo,
};
use panorama_protocol::status::GatewayStatus;
use serde_json::json;

use super::gateway::Gateway;
use crate::timestamp::now_ms;

pub const HEARTBEAT_INTERVAL: Duration =
    Duration::from_millis(panorama_protocol::operational::HEARTBEAT_INTERVAL_MS as u64);
/// Per-request timeout (later version; keeps a hung request from blocking
/// the next sync forever).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why providers show as unavailable in this build.
pub const HOST_ONLY_NOTE: &str =
    "No providers validated: provider support is not in this gateway build yet (host-only mode).";

/// `runtime` block: Node-style platform and arch names; `node_version`
/// (required by the v1 validator) carries a Rust marker.
pub fn runtime_info() -> RuntimeInfo {
    let platform = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        other => other,
    };
    RuntimeInfo {
        platform: platform.to_string(),
        arch: arch.to_string(),
        node_version: "rust".to_string(),
        gateway_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        image_reference: None,
    }
}

/// Capabilities v1 for a host-only gateway: every provider unavailable,
/// the gateway host available, services derived.
pub fn build_capabilities(device_name: &str, install_full_control_enabled: bool) -> Capabilities {
    let none = || ProviderCapability::unavailable(HOST_ONLY_NOTE);
    Capabilities::assemble(
        Providers {
            claude_code: none(),
            codex: none(),
            gemini: none(),
        },
        HostCapability::gateway(
            Some(device_name.to_string()).filter(|n| !n.is_empty()),
            install_full_control_enabled,
        ),
        Some(runtime_info()),
    )
}

/// Capabilities v1 with the providers this gateway detected.
pub fn capabilities(
    providers: &crate::delegated::providers::ProviderState,
    device_name: &str,
    install_full_control_enabled: bool,
) -> Capabilities {
    Capabilities::assemble(
        providers.providers(),
        HostCapability::gateway(
            Some(device_name.to_string()).filter(|n| !n.is_empty()),
            install_full_control_enabled,
        ),
        Some(runtime_info()),
    )
}

/// A job changed a provider's health: rebuild the capabilities and send a
/// heartbeat with the status they give (runtime.md §4.6 item 4).
pub async fn after_provider_health_change(gw: &Gateway) {
    let enabled = gw.lock().full_control_enabled;
    rebuild_capabilities(gw, enabled);
    let status = gw.compute_status();
    send(gw, status).await;
}

/// Records the install full-control flag and rebuilds the capabilities
/// from it and the providers' current state.
fn rebuild_capabilities(gw: &Gateway, enabled: bool) {
    let caps = capabilities(&gw.delegated.providers, &gw.device_name, enabled);
    let mut st = gw.lock();
    if enabled != st.full_control_enabled {
        tracing::info!(enabled, "Reloaded gateway install full-control setting");
    }
    st.full_control_enabled = enabled;
    st.capabilities = Some(caps);
}

/// `{id: {available, version, health}}` for the startup log line.
pub fn providers_summary(gw: &Gateway) -> serde_json::Value {
    let st = gw.lock();
    let Some(caps) = st.capabilities.as_ref() else {
        return json!({});
    };
    let mut map = serde_json::Map::new();
    for (id, p) in caps.providers.iter() {
        map.insert(
            id.as_str().to_string(),
            json!({"available": p.available, "version": p.version, "health": p.health.as_ref().map(|h| h.status.as_str())}),
        );
    }
    serde_json::Value::Object(map)
}

/// Send one heartbeat with `status` and the current capabilities. Errors
/// are logged (`Failed to send gateway heartbeat`); the caller carries on.
pub async fn send(gw: &Gateway, status: GatewayStatus) -> bool {
    let mut last = gw.last_sent.lock().await;
    send_locked(gw, status, &mut last).await
}

async fn send_locked(
    gw: &Gateway,
    status: GatewayStatus,
    last: &mut Option<GatewayStatus>,
) -> bool {
    let mut capabilities = gw
        .lock()
        .capabilities
        .as_ref()
        .map(Capabilities::to_value)
        .unwrap_or_else(|| json!({}));
    // Extension (issue 15): this gateway serves `terminal_open` streams,
    // unless the operator turned the stream off.
    if gw.shell_sessions.terminals().enabled {
        if let Some(caps) = capabilities.as_object_mut() {
            caps.insert(
                panorama_protocol::terminal::CAPABILITY_KEY.into(),
                json!({
                    "version": panorama_protocol::terminal::PROTOCOL_VERSION,
                    "idle_timeout_secs": gw.shell_sessions.terminals().idle_timeout.as_secs_f64(),
                }),
            );
        }
    }
    // An extra key in the host's free-form metadata: v1's shape is kept.
    if let Some(meta) = capabilities
        .pointer_mut("/hosts/gateway/metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.insert(
            crate::contain::CAPABILITY_KEY.to_string(),
            crate::contain::current().report_value(),
        );
    }
    let body = json!({
        "status": status.as_str(),
        "capabilities": capabilities,
        "device_name": gw.device_name,
    });
    *last = Some(status);
    match tokio::time::timeout(HEARTBEAT_TIMEOUT, gw.control.heartbeat(body)).await {
        Ok(Ok(_)) => {
            crate::metrics::heartbeat_ok();
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Failed to send gateway heartbeat");
            false
        }
        Err(_) => {
            tracing::error!(
                error = "request timed out after 20 s",
                "Failed to send gateway heartbeat"
            );
            false
        }
    }
}

/// Status-change sync: send at once if the computed status differs from
/// the last one sent.
pub async fn sync_if_changed(gw: &Gateway) {
    let mut last = gw.last_sent.lock().await;
    let status = gw.compute_status();
    if *last != Some(status) {
        send_locked(gw, status, &mut last).await;
    }
}

/// The 30 s refresh (§4.6 item 3): re-read the install flag, rebuild
/// capabilities, recompute, send.
pub async fn refresh(gw: &Gateway) {
    let enabled = crate::config::install_full_control(&gw.paths.config_path);
    gw.delegated.providers.light_refresh(&gw.paths).await;
    rebuild_capabilities(gw, enabled);
    let status = gw.compute_status();
    send_and_calibrate(gw, status).await;
}

/// Send a heartbeat, then measure the server clock from the `last_seen_at`
/// it just set (control-plane.md §17 item 14; see [`super::clock`]).
pub async fn send_and_calibrate(gw: &Gateway, status: GatewayStatus) -> bool {
    let sent = now_ms();
    if !send(gw, status).await {
        return false;
    }
    let recv = now_ms();
    let row = gw.control.gateway_row("last_seen_at").await;
    match row {
        Ok(Some(row)) => {
            let seen = row.get("last_seen_at").and_then(serde_json::Value::as_str);
            if let Some(seen) = seen {
                // Only a value our heartbeat could have set can calibrate.
                if gw.clock.observe_timestamp(seen, sent, recv) {
                    tracing::debug!(
                        offset_ms = gw.clock.offset_ms(),
                        "Measured the control-plane clock offset"
                    );
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, "Could not read last_seen_at to measure the clock offset")
        }
    }
    true
}

/// The heartbeat task: every 30 s until shutdown begins.
pub async fn run_loop(gw: Arc<Gateway>) {
    let mut shutdown = gw.shutdown_tx.subscribe();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_INTERVAL,
        HEARTBEAT_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => refresh(&gw).await,
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use panorama_protocol::capabilities::validate_capabilities_v1;
    use panorama_protocol::operational::{
        compute_operational_status, IngressState, OperationalStatusRule,
    };

    #[test]
    fn host_only_capabilities_are_valid_v1_and_ready() {
        let caps = build_capabilities("box", true);
        let value = caps.to_value();
        let parsed = validate_capabilities_v1(&value).expect("valid v1");
        assert_eq!(value["schema_version"], "v1");
        assert_eq!(value["hosts"]["gateway"]["label"], "box");
        assert_eq!(
            value["hosts"]["gateway"]["metadata"]["install_full_control_enabled"],
            true
        );
        assert_eq!(value["services"]["model_execution"]["ready"], false);
        assert_eq!(value["services"]["machine_control"]["ready"], true);
        assert_eq!(value["providers"]["claude_code"]["available"], false);
        let ready = IngressState {
            pending: false,
            ready: true,
        };
        assert_eq!(
            compute_operational_status(
                Some(&parsed),
                Some(ready),
                true,
                OperationalStatusRule::HostAvailability
            ),
            GatewayStatus::Ready
        );
    }
}
