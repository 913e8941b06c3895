//! `gateway.json` (runtime.md §2.4, control-plane.md §2.3).
//!
//! The file format is the Node gateway's: camelCase keys except
//! `full_control_enabled`, pretty JSON with 2-space indent and no trailing
//! newline, unknown keys preserved. Saving is a three-way merge: the file is
//! re-read under an exclusive lock, only the keys this process changed since
//! it loaded the file are overlaid, and the result replaces the file
//! atomically (temp file + rename, 0600). Two writers (say the runtime and
//! `full-control enable`) therefore never lose each other's keys.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{GatewayError, Result};
use crate::paths;

pub const KEY_SUPABASE_URL: &str = "supabaseUrl";
pub const KEY_SUPABASE_ANON_KEY: &str = "supabaseAnonKey";
pub const KEY_ACCESS_TOKEN: &str = "accessToken";
pub const KEY_REFRESH_TOKEN: &str = "refreshToken";
pub const KEY_GATEWAY_ID: &str = "gatewayId";
pub const KEY_TEAM_ID: &str = "teamId";
pub const KEY_FULL_CONTROL: &str = "full_control_enabled";
pub const KEY_DEVICE_NAME: &str = "deviceName";
pub const KEY_PROVIDER_HEALTH: &str = "providerHealth";

/// Health of one provider as stored under `providerHealth.<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderHealth {
    /// `healthy|unhealthy|unknown|unavailable`
    pub status: String,
    /// `full|light`
    pub check_type: String,
    /// ISO timestamp.
    pub checked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Fields this version does not know; kept as-is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The parsed `gateway.json`. String keys default to `""`,
/// `full_control_enabled` is true only for a JSON `true`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayConfig {
    pub supabase_url: String,
    pub supabase_anon_key: String,
    pub access_token: String,
    pub refresh_token: String,
    pub gateway_id: String,
    pub team_id: String,
    pub full_control_enabled: bool,
    pub device_name: Option<String>,
    /// Every other key (including `providerHealth`, `vmGuest`, unknown keys),
    /// in file order.
    pub extra: Map<String, Value>,
    /// The document as last read from / written to disk; the base of the
    /// three-way merge. `None` for a config that was never on disk.
    base: Option<Map<String, Value>>,
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> String {
    match map.shift_remove(key) {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl GatewayConfig {
    /// Build from a JSON object (the file contents).
    pub fn from_map(doc: Map<String, Value>) -> Self {
        let mut rest = doc.clone();
        let mut config = GatewayConfig {
            supabase_url: take_string(&mut rest, KEY_SUPABASE_URL),
            supabase_anon_key: take_string(&mut rest, KEY_SUPABASE_ANON_KEY),
            access_token: take_string(&mut rest, KEY_ACCESS_TOKEN),
            refresh_token: take_string(&mut rest, KEY_REFRESH_TOKEN),
            gateway_id: take_string(&mut rest, KEY_GATEWAY_ID),
            team_id: take_string(&mut rest, KEY_TEAM_ID),
            full_control_enabled: rest.shift_remove(KEY_FULL_CONTROL) == Some(Value::Bool(true)),
            device_name: None,
            extra: Map::new(),
            base: Some(doc),
        };
        config.device_name = match rest.shift_remove(KEY_DEVICE_NAME) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        config.extra = rest;
        config
    }

    /// The JSON object this config serializes to.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let strings = [
            (KEY_SUPABASE_URL, &self.supabase_url),
            (KEY_SUPABASE_ANON_KEY, &self.supabase_anon_key),
            (KEY_ACCESS_TOKEN, &self.access_token),
            (KEY_REFRESH_TOKEN, &self.refresh_token),
            (KEY_GATEWAY_ID, &self.gateway_id),
            (KEY_TEAM_ID, &self.team_id),
        ];
        for (key, value) in strings {
            map.insert(key.to_string(), Value::String(value.clone()));
        }
        map.insert(
            KEY_FULL_CONTROL.to_string(),
            Value::Bool(self.full_control_enabled),
        );
        if let Some(name) = &self.device_name {
            map.insert(KEY_DEVICE_NAME.to_string(), Value::String(name.clone()));
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        map
    }

    /// Parse file contents. A JSON `null` means defaults.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Self::from_map(map)),
            Ok(Value::Null) => Ok(Self::from_map(Map::new())),
            Ok(_) => Err("gateway config must be a JSON object".to_string()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        }
    }

    /// Load `path`. Like the Node gateway, this first makes the file 0600.
    pub fn load(path: &Path) -> Result<Self> {
        paths::ensure_owner_only_file(path)?;
        let text = fs::read_to_string(path)
            .map_err(|e| GatewayError::io("Could not read gateway config", path, e))?;
        Self::parse(&text).map_err(|e| {
            GatewayError::cli(
                format!("Gateway config at {} could not be parsed.", path.display()),
                format!("{e}. Fix the file or run \"pair\" again."),
            )
        })
    }

    /// Load `path` if it exists.
    pub fn load_optional(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::load(path).map(Some)
    }

    /// Typed view of `providerHealth`; malformed entries are skipped.
    pub fn provider_health(&self) -> BTreeMap<String, ProviderHealth> {
        let Some(Value::Object(map)) = self.extra.get(KEY_PROVIDER_HEALTH) else {
            return BTreeMap::new();
        };
        map.iter()
            .filter_map(|(k, v)| {
                serde_json::from_value(v.clone())
                    .ok()
                    .map(|h| (k.clone(), h))
            })
            .collect()
    }

    /// Replace `providerHealth`.
    pub fn set_provider_health(&mut self, health: &BTreeMap<String, ProviderHealth>) {
        let value = serde_json::to_value(health).unwrap_or(Value::Object(Map::new()));
        self.extra.insert(KEY_PROVIDER_HEALTH.to_string(), value);
    }

    /// Save with a three-way merge against the file currently on disk (see
    /// the module docs). Afterwards `self` reflects the merged file, so keys
    /// another writer changed become visible.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let _lock = ConfigLock::acquire(path)?;
        let mut merged = read_doc(path).unwrap_or_default();
        let current = self.to_map();
        for (key, value) in &current {
            let changed = match &self.base {
                Some(base) => base.get(key) != Some(value),
                None => true,
            };
            if changed {
                merged.insert(key.clone(), value.clone());
            }
        }
        if let Some(base) = &self.base {
            for key in base.keys() {
                if !current.contains_key(key) {
                    merged.shift_remove(key);
                }
            }
        }
        write_doc(path, &merged)?;
        *self = Self::from_map(merged);
        Ok(())
    }

    /// Replace the file with exactly this config, dropping every other key.
    /// Used by `pair`, which writes a fresh config (runtime.md §1.6.1 step 7).
    pub fn save_fresh(&mut self, path: &Path) -> Result<()> {
        let _lock = ConfigLock::acquire(path)?;
        let doc = self.to_map();
        write_doc(path, &doc)?;
        self.base = Some(doc);
        Ok(())
    }
}

/// Read the file as a JSON object; `None` when missing or not an object.
fn read_doc(path: &Path) -> Option<Map<String, Value>> {
    let text = fs::read_to_string(path).ok()?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Some(map),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Existing gateway config is not valid JSON; replacing it");
            None
        }
    }
}

fn write_doc(path: &Path, doc: &Map<String, Value>) -> Result<()> {
    let text = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_string());
    paths::write_owner_only_atomic(path, text.as_bytes())
}

/// An exclusive `flock` on `.<config name>.lock` next to the config, held
/// while a writer reads, merges and replaces the file.
struct ConfigLock {
    _file: fs::File,
}

impl ConfigLock {
    fn acquire(config_path: &Path) -> Result<Self> {
        let parent = config_path.parent().unwrap_or(Path::new("."));
        paths::ensure_owner_only_dir(parent)?;
        let name = config_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lock_path: PathBuf = parent.join(format!(".{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| GatewayError::io("Could not open config lock", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; released when the file closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(GatewayError::io(
                "Could not lock",
                &lock_path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(ConfigLock { _file: file })
    }
}

/// The install full-control flag as `gateway.json` says right now — the one
/// reader of it (heartbeat refresh, shell gate, subagent runs).
///
/// Error policy: a config that cannot be read or parsed counts as **off**
/// (fail closed), logged each time. Why this one: the flag only ever grants
/// power (machine control, agents with full permissions), so an unreadable
/// file must not grant it — not even by keeping an earlier `true` that the
/// operator may have been turning off when the file broke; and reading it as
/// off stops nothing that does not need full control (failing every
/// subagent run instead would turn a typo in `gateway.json` into an outage).
pub fn install_full_control(config_path: &Path) -> bool {
    match GatewayConfig::load(config_path) {
        Ok(config) => config.full_control_enabled,
        Err(e) => {
            tracing::error!(error = %e, path = %config_path.display(), "Cannot read the install full-control setting from the gateway config; treating it as off until the file is fixed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_strict_bool() {
        let c =
            GatewayConfig::parse(r#"{"full_control_enabled":"true","gatewayId":null}"#).unwrap();
        assert!(!c.full_control_enabled);
        assert_eq!(c.gateway_id, "");
        assert_eq!(c.supabase_url, "");
        let c = GatewayConfig::parse("null").unwrap();
        assert_eq!(c.access_token, "");
        assert!(GatewayConfig::parse("[1]").is_err());
        assert!(GatewayConfig::parse("{").is_err());
    }

    #[test]
    fn unknown_keys_round_trip_in_order() {
        let text = r#"{"vmGuest":{"vmId":"v"},"gatewayId":"g","zeta":1}"#;
        let c = GatewayConfig::parse(text).unwrap();
        assert_eq!(c.gateway_id, "g");
        let map = c.to_map();
        assert_eq!(map["vmGuest"]["vmId"], "v");
        assert_eq!(map["zeta"], 1);
    }

    #[test]
    fn save_merges_concurrent_writers() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.json");
        fs::write(
            &path,
            r#"{"gatewayId":"g","full_control_enabled":false,"custom":"keep"}"#,
        )
        .unwrap();
        let mut runtime = GatewayConfig::load(&path).unwrap();
        let mut cli = GatewayConfig::load(&path).unwrap();
        cli.full_control_enabled = true;
        cli.save(&path).unwrap();
        // The runtime saves its stale in-memory copy with a different change.
        runtime.access_token = "new-token".into();
        runtime.save(&path).unwrap();
        let on_disk = GatewayConfig::load(&path).unwrap();
        assert!(on_disk.full_control_enabled, "CLI change must survive");
        assert_eq!(on_disk.access_token, "new-token");
        assert_eq!(on_disk.extra["custom"], "keep");
        assert!(
            runtime.full_control_enabled,
            "save refreshes in-memory copy"
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"gatewayId\""));
        assert!(!text.ends_with('\n'));
    }

    #[test]
    fn provider_health_typed_view() {
        let mut c = GatewayConfig::default();
        let mut map = BTreeMap::new();
        map.insert(
            "codex".to_string(),
            ProviderHealth {
                status: "healthy".into(),
                check_type: "full".into(),
                checked_at: "2025-01-01T00:00:00Z".into(),
                last_full_checked_at: None,
                last_full_status: None,
                error: None,
                model: None,
                duration_ms: Some(12.0),
                extra: Map::new(),
            },
        );
        c.set_provider_health(&map);
        assert_eq!(c.provider_health(), map);
        assert_eq!(c.to_map()["providerHealth"]["codex"]["status"], "healthy");
    }

    #[test]
    fn an_unreadable_config_turns_install_full_control_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.json");
        std::fs::write(&path, r#"{"full_control_enabled":true}"#).unwrap();
        assert!(install_full_control(&path));
        std::fs::write(&path, "{not json").unwrap();
        assert!(!install_full_control(&path));
        std::fs::remove_file(&path).unwrap();
        assert!(!install_full_control(&path));
    }
}
