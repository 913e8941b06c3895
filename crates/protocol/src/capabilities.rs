//! Heartbeat capabilities document, schema `v1` (control-plane §12.2).
//!
//! The gateway fills these types and sends them with every heartbeat; the hub
//! runs [`validate_capabilities_v1`] on what it receives. Services are derived,
//! never set by hand, so the three readiness answers cannot drift from the
//! provider and host data they summarize.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::status::wire_enum;

/// The only schema version this crate understands.
pub const CAPABILITIES_SCHEMA_VERSION: &str = "v1";

/// Metadata key carrying the host install flag (seed name).
pub const INSTALL_FULL_CONTROL_METADATA_KEY: &str = "install_full_control_enabled";

/// Reasons used by the service derivation (later shared module).
pub const NO_MODEL_PROVIDER_REASON: &str = "No gateway AI model provider is healthy";
pub const HOST_UNAVAILABLE_REASON: &str = "Gateway host is unavailable";
pub const HOST_MACHINE_CONTROL_DISABLED_REASON: &str = "Gateway host machine control is disabled";

/// The three gateway AI CLI providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderId {
    ClaudeCode,
    Codex,
    Gemini,
}
wire_enum!(ProviderId { ClaudeCode => "claude_code", Codex => "codex", Gemini => "gemini" });

impl ProviderId {
    /// The human label used in messages (`Gateway provider <label> is unhealthy…`).
    pub fn label(self) -> &'static str {
        match self {
            ProviderId::ClaudeCode => "Claude",
            ProviderId::Codex => "Codex",
            ProviderId::Gemini => "Gemini",
        }
    }
}

/// `health.status` of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderHealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
    Unavailable,
}
wire_enum!(ProviderHealthStatus {
    Healthy => "healthy",
    Unhealthy => "unhealthy",
    Unknown => "unknown",
    Unavailable => "unavailable",
});

/// `health.check_type`: a full validation run or a light `--version` probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    Full,
    Light,
}
wire_enum!(CheckType { Full => "full", Light => "light" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub status: ProviderHealthStatus,
    pub check_type: CheckType,
    pub checked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_status: Option<ProviderHealthStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<serde_json::Number>,
}

impl ProviderHealth {
    pub fn new(
        status: ProviderHealthStatus,
        check_type: CheckType,
        checked_at: impl Into<String>,
    ) -> Self {
        ProviderHealth {
            status,
            check_type,
            checked_at: checked_at.into(),
            last_full_checked_at: None,
            last_full_status: None,
            error: None,
            model: None,
            duration_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSupports {
    pub output_schema: bool,
    pub stream_json: bool,
    pub tool_disable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderCapability {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Detected CLI flags, e.g. `permissionModeFlag`. Always sent (possibly `{}`).
    #[serde(default)]
    pub supported_flags: BTreeMap<String, bool>,
    pub supports: ProviderSupports,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProviderHealth>,
}

impl ProviderCapability {
    /// A detected CLI.
    pub fn available(version: Option<String>) -> Self {
        ProviderCapability {
            available: true,
            version,
            error: None,
            supported_flags: BTreeMap::new(),
            supports: ProviderSupports::default(),
            extensions: None,
            health: None,
        }
    }

    /// A CLI that could not be found or run.
    pub fn unavailable(error: impl Into<String>) -> Self {
        ProviderCapability {
            available: false,
            version: None,
            error: Some(error.into()),
            supported_flags: BTreeMap::new(),
            supports: ProviderSupports::default(),
            extensions: None,
            health: None,
        }
    }

    /// The provider readiness rule shared by the operational status (seed row 2)
    /// and `services.model_execution` (§12.2, runtime §4.5):
    /// healthy; or available with no health; or available and health neither
    /// `unavailable` nor `unhealthy`.
    pub fn is_ready(&self) -> bool {
        match &self.health {
            Some(health) if health.status == ProviderHealthStatus::Healthy => true,
            _ if !self.available => false,
            None => true,
            Some(health) => !matches!(
                health.status,
                ProviderHealthStatus::Unavailable | ProviderHealthStatus::Unhealthy
            ),
        }
    }
}

/// The `providers` block: exactly the three known providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Providers {
    pub claude_code: ProviderCapability,
    pub codex: ProviderCapability,
    pub gemini: ProviderCapability,
}

impl Providers {
    pub fn get(&self, id: ProviderId) -> &ProviderCapability {
        match id {
            ProviderId::ClaudeCode => &self.claude_code,
            ProviderId::Codex => &self.codex,
            ProviderId::Gemini => &self.gemini,
        }
    }

    pub fn get_mut(&mut self, id: ProviderId) -> &mut ProviderCapability {
        match id {
            ProviderId::ClaudeCode => &mut self.claude_code,
            ProviderId::Codex => &mut self.codex,
            ProviderId::Gemini => &mut self.gemini,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ProviderId, &ProviderCapability)> {
        ProviderId::ALL.iter().map(move |id| (*id, self.get(*id)))
    }

    pub fn any_ready(&self) -> bool {
        self.iter().any(|(_, provider)| provider.is_ready())
    }
}

/// `hosts.*.kind`; only `gateway` exists in v1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    #[default]
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCapability {
    pub kind: HostKind,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl HostCapability {
    /// The local gateway host as the seed reports it: always available, labelled
    /// with the device name, carrying the install full-control flag.
    pub fn gateway(label: Option<String>, install_full_control_enabled: bool) -> Self {
        let mut metadata = Map::new();
        metadata.insert(
            INSTALL_FULL_CONTROL_METADATA_KEY.to_string(),
            Value::Bool(install_full_control_enabled),
        );
        HostCapability {
            kind: HostKind::Gateway,
            available: true,
            label,
            error: None,
            last_checked_at: None,
            metadata: Some(metadata),
        }
    }

    /// `metadata.install_full_control_enabled === true`.
    pub fn install_full_control_enabled(&self) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get(INSTALL_FULL_CONTROL_METADATA_KEY))
            .and_then(Value::as_bool)
            == Some(true)
    }
}

/// The `hosts` block: `gateway` is required, other hosts are carried along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hosts {
    pub gateway: HostCapability,
    #[serde(flatten)]
    pub others: BTreeMap<String, HostCapability>,
}

impl Hosts {
    pub fn gateway_only(gateway: HostCapability) -> Self {
        Hosts {
            gateway,
            others: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReadiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ServiceReadiness {
    pub fn ready() -> Self {
        ServiceReadiness {
            ready: true,
            reason: None,
        }
    }

    pub fn not_ready(reason: impl Into<String>) -> Self {
        ServiceReadiness {
            ready: false,
            reason: Some(reason.into()),
        }
    }
}

/// The `services` block (later; always sent by this implementation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Services {
    pub model_execution: ServiceReadiness,
    pub remote_shell: ServiceReadiness,
    pub machine_control: ServiceReadiness,
}

impl Services {
    /// Service derivation table of §12.2.
    pub fn derive(providers: &Providers, gateway_host: &HostCapability) -> Self {
        let model_execution = if providers.any_ready() {
            ServiceReadiness::ready()
        } else {
            ServiceReadiness::not_ready(NO_MODEL_PROVIDER_REASON)
        };
        let remote_shell = if gateway_host.available {
            ServiceReadiness::ready()
        } else {
            ServiceReadiness::not_ready(
                gateway_host
                    .error
                    .clone()
                    .unwrap_or_else(|| HOST_UNAVAILABLE_REASON.to_string()),
            )
        };
        let machine_control = if !gateway_host.available {
            ServiceReadiness::not_ready(HOST_UNAVAILABLE_REASON)
        } else if !gateway_host.install_full_control_enabled() {
            ServiceReadiness::not_ready(HOST_MACHINE_CONTROL_DISABLED_REASON)
        } else {
            ServiceReadiness::ready()
        };
        Services {
            model_execution,
            remote_shell,
            machine_control,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub platform: String,
    pub arch: String,
    /// Required by the later validator; a Rust build sends a stand-in.
    pub node_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_reference: Option<String>,
}

/// The whole capabilities document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub schema_version: String,
    pub providers: Providers,
    pub hosts: Hosts,
    pub services: Services,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
}

impl Capabilities {
    /// Assembles a v1 document with services derived from the other blocks.
    pub fn assemble(
        providers: Providers,
        gateway_host: HostCapability,
        runtime: Option<RuntimeInfo>,
    ) -> Self {
        let services = Services::derive(&providers, &gateway_host);
        Capabilities {
            schema_version: CAPABILITIES_SCHEMA_VERSION.to_string(),
            providers,
            hosts: Hosts::gateway_only(gateway_host),
            services,
            runtime,
        }
    }

    /// Re-derives `services` after providers or the host changed.
    pub fn refresh_services(&mut self) {
        self.services = Services::derive(&self.providers, &self.hosts.gateway);
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("capabilities always serialize")
    }
}

/// Why a capabilities document is not valid v1. `path` points at the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct CapabilitiesError {
    pub path: String,
    pub problem: String,
}

fn invalid(path: impl Into<String>, problem: impl Into<String>) -> CapabilitiesError {
    CapabilitiesError {
        path: path.into(),
        problem: problem.into(),
    }
}

fn require_object<'a>(
    value: Option<&'a Value>,
    path: &str,
) -> Result<&'a Map<String, Value>, CapabilitiesError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        None => Err(invalid(path, "is missing")),
        Some(_) => Err(invalid(path, "must be an object")),
    }
}

fn require_bool(map: &Map<String, Value>, key: &str, path: &str) -> Result<(), CapabilitiesError> {
    match map.get(key) {
        Some(Value::Bool(_)) => Ok(()),
        None => Err(invalid(format!("{path}.{key}"), "is missing")),
        Some(_) => Err(invalid(format!("{path}.{key}"), "must be a boolean")),
    }
}

fn require_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<(), CapabilitiesError> {
    match map.get(key) {
        Some(Value::String(_)) => Ok(()),
        None => Err(invalid(format!("{path}.{key}"), "is missing")),
        Some(_) => Err(invalid(format!("{path}.{key}"), "must be a string")),
    }
}

/// Optional means absent; an explicit `null` is rejected like any other wrong type.
fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<(), CapabilitiesError> {
    match map.get(key) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(invalid(format!("{path}.{key}"), "must be a string")),
    }
}

fn require_enum(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&str],
    required: bool,
) -> Result<(), CapabilitiesError> {
    match map.get(key) {
        None if !required => Ok(()),
        None => Err(invalid(format!("{path}.{key}"), "is missing")),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(invalid(
            format!("{path}.{key}"),
            format!("must be one of {}", allowed.join(", ")),
        )),
    }
}

fn validate_health(value: &Value, path: &str) -> Result<(), CapabilitiesError> {
    let map = require_object(Some(value), path)?;
    let statuses: Vec<&str> = ProviderHealthStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let check_types: Vec<&str> = CheckType::ALL.iter().map(|s| s.as_str()).collect();
    require_enum(map, "status", path, &statuses, true)?;
    require_enum(map, "check_type", path, &check_types, true)?;
    require_string(map, "checked_at", path)?;
    optional_string(map, "last_full_checked_at", path)?;
    require_enum(map, "last_full_status", path, &statuses, false)?;
    optional_string(map, "error", path)?;
    optional_string(map, "model", path)?;
    match map.get("duration_ms") {
        None | Some(Value::Number(_)) => Ok(()),
        Some(_) => Err(invalid(format!("{path}.duration_ms"), "must be a number")),
    }
}

fn validate_provider(value: &Value, path: &str) -> Result<(), CapabilitiesError> {
    let map = require_object(Some(value), path)?;
    require_bool(map, "available", path)?;
    optional_string(map, "version", path)?;
    optional_string(map, "error", path)?;
    let supports_path = format!("{path}.supports");
    let supports = require_object(map.get("supports"), &supports_path)?;
    for key in ["output_schema", "stream_json", "tool_disable"] {
        require_bool(supports, key, &supports_path)?;
    }
    if let Some(flags) = map.get("supported_flags") {
        let flags_path = format!("{path}.supported_flags");
        let flags = require_object(Some(flags), &flags_path)?;
        for (flag, value) in flags {
            if !value.is_boolean() {
                return Err(invalid(format!("{flags_path}.{flag}"), "must be a boolean"));
            }
        }
    }
    if let Some(extensions) = map.get("extensions") {
        let all_strings = extensions
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string));
        if !all_strings {
            return Err(invalid(
                format!("{path}.extensions"),
                "must be an array of strings",
            ));
        }
    }
    if let Some(health) = map.get("health") {
        validate_health(health, &format!("{path}.health"))?;
    }
    Ok(())
}

fn validate_host(value: &Value, path: &str) -> Result<(), CapabilitiesError> {
    let map = require_object(Some(value), path)?;
    match map.get("kind") {
        Some(Value::String(kind)) if kind == "gateway" => {}
        None => return Err(invalid(format!("{path}.kind"), "is missing")),
        Some(_) => return Err(invalid(format!("{path}.kind"), "must be \"gateway\"")),
    }
    require_bool(map, "available", path)?;
    optional_string(map, "label", path)?;
    optional_string(map, "error", path)?;
    optional_string(map, "last_checked_at", path)?;
    match map.get("metadata") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(invalid(format!("{path}.metadata"), "must be an object")),
    }
}

/// The later shared v1 validator (§12.2), for the hub's heartbeat endpoint and
/// for the gateway's read of `team_gateways.capabilities` (invalid → treat as
/// null). Returns the typed document on success.
pub fn validate_capabilities_v1(value: &Value) -> Result<Capabilities, CapabilitiesError> {
    let root = require_object(Some(value), "capabilities")?;
    match root.get("schema_version") {
        Some(Value::String(v)) if v == CAPABILITIES_SCHEMA_VERSION => {}
        _ => return Err(invalid("schema_version", "must be \"v1\"")),
    }

    let providers = require_object(root.get("providers"), "providers")?;
    for key in providers.keys() {
        if ProviderId::parse(key).is_none() {
            return Err(invalid(
                format!("providers.{key}"),
                "is not a known provider",
            ));
        }
    }
    for id in ProviderId::ALL {
        let path = format!("providers.{id}");
        let provider = providers
            .get(id.as_str())
            .ok_or_else(|| invalid(&path, "is missing"))?;
        validate_provider(provider, &path)?;
    }

    let hosts = require_object(root.get("hosts"), "hosts")?;
    if !hosts.contains_key("gateway") {
        return Err(invalid("hosts.gateway", "is missing"));
    }
    for (name, host) in hosts {
        validate_host(host, &format!("hosts.{name}"))?;
    }

    let services = require_object(root.get("services"), "services")?;
    for id in ["model_execution", "remote_shell", "machine_control"] {
        let path = format!("services.{id}");
        let service = require_object(services.get(id), &path)?;
        require_bool(service, "ready", &path)?;
        optional_string(service, "reason", &path)?;
    }

    if let Some(runtime) = root.get("runtime") {
        let runtime = require_object(Some(runtime), "runtime")?;
        for key in ["platform", "arch", "node_version"] {
            require_string(runtime, key, "runtime")?;
        }
        optional_string(runtime, "gateway_version", "runtime")?;
        optional_string(runtime, "image_reference", "runtime")?;
    }

    serde_json::from_value(value.clone()).map_err(|e| invalid("capabilities", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn healthy_claude() -> ProviderCapability {
        let mut claude = ProviderCapability::available(Some("2.0.14 (Claude Code)".into()));
        claude
            .supported_flags
            .insert("permissionModeFlag".into(), true);
        claude.supports = ProviderSupports {
            output_schema: true,
            stream_json: true,
            tool_disable: true,
        };
        claude.health = Some(ProviderHealth::new(
            ProviderHealthStatus::Healthy,
            CheckType::Light,
            "2025-01-01T12:00:30.000Z",
        ));
        claude
    }

    fn sample(install: bool) -> Capabilities {
        Capabilities::assemble(
            Providers {
                claude_code: healthy_claude(),
                codex: ProviderCapability::unavailable("spawn codex ENOENT"),
                gemini: ProviderCapability::unavailable("spawn gemini ENOENT"),
            },
            HostCapability::gateway(Some("My MacBook".into()), install),
            Some(RuntimeInfo {
                platform: "linux".into(),
                arch: "x86_64".into(),
                node_version: "rust".into(),
                gateway_version: Some("0.1.0".into()),
                image_reference: None,
            }),
        )
    }

    #[test]
    fn assembled_document_has_the_spec_shape_and_validates() {
        let caps = sample(false);
        let value = caps.to_value();
        assert_eq!(value["schema_version"], "v1");
        assert_eq!(value["hosts"]["gateway"]["kind"], "gateway");
        assert_eq!(value["hosts"]["gateway"]["available"], true);
        assert_eq!(
            value["hosts"]["gateway"]["metadata"],
            json!({"install_full_control_enabled": false})
        );
        assert_eq!(value["providers"]["codex"]["supported_flags"], json!({}));
        assert!(value["providers"]["codex"].get("health").is_none());
        assert_eq!(validate_capabilities_v1(&value).unwrap(), caps);
    }

    #[test]
    fn provider_readiness_rule_rows() {
        let mut p = ProviderCapability::unavailable("x");
        assert!(!p.is_ready(), "unavailable, no health");
        p.health = Some(ProviderHealth::new(
            ProviderHealthStatus::Healthy,
            CheckType::Full,
            "t",
        ));
        assert!(p.is_ready(), "healthy wins even when unavailable");
        let mut p = ProviderCapability::available(None);
        assert!(p.is_ready(), "available, no health");
        for (status, ready) in [
            (ProviderHealthStatus::Unknown, true),
            (ProviderHealthStatus::Unavailable, false),
            (ProviderHealthStatus::Unhealthy, false),
        ] {
            p.health = Some(ProviderHealth::new(status, CheckType::Light, "t"));
            assert_eq!(p.is_ready(), ready, "available, health {status}");
        }
    }

    #[test]
    fn service_derivation_rows() {
        // model_execution: any provider ready.
        let caps = sample(false);
        assert_eq!(caps.services.model_execution, ServiceReadiness::ready());
        let mut none_ready = caps.clone();
        none_ready.providers.claude_code = ProviderCapability::unavailable("gone");
        none_ready.refresh_services();
        assert_eq!(
            none_ready.services.model_execution,
            ServiceReadiness::not_ready(NO_MODEL_PROVIDER_REASON)
        );

        // remote_shell: host available, else host error or the default reason.
        assert_eq!(caps.services.remote_shell, ServiceReadiness::ready());
        let mut host = HostCapability::gateway(None, true);
        host.available = false;
        let services = Services::derive(&caps.providers, &host);
        assert_eq!(
            services.remote_shell,
            ServiceReadiness::not_ready(HOST_UNAVAILABLE_REASON)
        );
        host.error = Some("disk full".into());
        let services = Services::derive(&caps.providers, &host);
        assert_eq!(
            services.remote_shell,
            ServiceReadiness::not_ready("disk full")
        );

        // machine_control: host unavailable first, then the install flag.
        assert_eq!(
            services.machine_control,
            ServiceReadiness::not_ready(HOST_UNAVAILABLE_REASON)
        );
        assert_eq!(
            caps.services.machine_control,
            ServiceReadiness::not_ready(HOST_MACHINE_CONTROL_DISABLED_REASON)
        );
        assert_eq!(
            sample(true).services.machine_control,
            ServiceReadiness::ready()
        );
    }

    type Mutation = Box<dyn Fn(&mut Value)>;

    #[test]
    fn validator_rejects_each_rule() {
        let good = sample(true).to_value();
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "schema_version",
                Box::new(|v| v["schema_version"] = json!("v2")),
            ),
            (
                "providers.openai",
                Box::new(|v| v["providers"]["openai"] = v["providers"]["codex"].clone()),
            ),
            (
                "providers.gemini",
                Box::new(|v| {
                    v["providers"].as_object_mut().unwrap().remove("gemini");
                }),
            ),
            (
                "providers.codex.available",
                Box::new(|v| v["providers"]["codex"]["available"] = json!("yes")),
            ),
            (
                "providers.codex.supports.stream_json",
                Box::new(|v| {
                    v["providers"]["codex"]["supports"]
                        .as_object_mut()
                        .unwrap()
                        .remove("stream_json");
                }),
            ),
            (
                "providers.claude_code.supported_flags.permissionModeFlag",
                Box::new(|v| {
                    v["providers"]["claude_code"]["supported_flags"]["permissionModeFlag"] =
                        json!(1)
                }),
            ),
            (
                "providers.gemini.extensions",
                Box::new(|v| v["providers"]["gemini"]["extensions"] = json!([1])),
            ),
            (
                "providers.claude_code.health.status",
                Box::new(|v| v["providers"]["claude_code"]["health"]["status"] = json!("fine")),
            ),
            (
                "providers.claude_code.health.checked_at",
                Box::new(|v| {
                    v["providers"]["claude_code"]["health"]
                        .as_object_mut()
                        .unwrap()
                        .remove("checked_at");
                }),
            ),
            ("hosts.gateway", Box::new(|v| v["hosts"] = json!({}))),
            (
                "hosts.gateway.kind",
                Box::new(|v| v["hosts"]["gateway"]["kind"] = json!("vm")),
            ),
            (
                "hosts.gateway.metadata",
                Box::new(|v| v["hosts"]["gateway"]["metadata"] = json!([])),
            ),
            (
                "services.remote_shell",
                Box::new(|v| {
                    v["services"]
                        .as_object_mut()
                        .unwrap()
                        .remove("remote_shell");
                }),
            ),
            (
                "services.machine_control.reason",
                Box::new(|v| v["services"]["machine_control"]["reason"] = json!(5)),
            ),
            (
                "runtime.node_version",
                Box::new(|v| {
                    v["runtime"].as_object_mut().unwrap().remove("node_version");
                }),
            ),
        ];
        assert!(validate_capabilities_v1(&good).is_ok());
        for (path, mutate) in cases {
            let mut value = good.clone();
            mutate(&mut value);
            let err = validate_capabilities_v1(&value).expect_err(path);
            assert_eq!(err.path, path, "{err}");
        }
        assert!(validate_capabilities_v1(&json!(null)).is_err());
    }

    #[test]
    fn health_duration_keeps_integer_form() {
        let mut value = sample(true).to_value();
        value["providers"]["claude_code"]["health"]["duration_ms"] = json!(412);
        let caps = validate_capabilities_v1(&value).unwrap();
        assert_eq!(
            caps.to_value()["providers"]["claude_code"]["health"]["duration_ms"],
            json!(412)
        );
    }

    #[test]
    fn runtime_block_is_optional() {
        let mut value = sample(true).to_value();
        value.as_object_mut().unwrap().remove("runtime");
        assert!(validate_capabilities_v1(&value).unwrap().runtime.is_none());
    }
}
