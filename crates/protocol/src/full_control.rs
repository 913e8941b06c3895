//! Subagent full-control layering (control-plane §13.2, §13.3; runtime §4.9).
//!
//! Four layers must all agree before a subagent runs with elevated provider
//! flags: the subagent config asks for it, the host install flag is on, the
//! team toggle is on, and the provider CLI exposes elevated flags. A denied
//! request is not downgraded silently: the gateway fails the run with the
//! denial reason, so the exact texts matter.

use serde_json::Value;
use std::collections::BTreeMap;

/// Which wording and layer order to use for denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullControlWording {
    /// Seed 2.29.14: install → team → provider, "full control" texts. Default.
    #[default]
    Seed,
    /// Later 2.32.x: team → install → provider, "machine control" texts.
    Later,
}

pub const SEED_INSTALL_DISABLED: &str =
    "Gateway install full control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
pub const SEED_TEAM_DISABLED: &str =
    "Gateway connection full control is disabled by team settings.";
pub const SEED_PROVIDER_UNAVAILABLE: &str = "Gateway provider full control is unavailable.";
pub const SEED_FALLBACK: &str = "Gateway full control is unavailable.";

pub const LATER_TEAM_DISABLED: &str = "Gateway machine control is disabled in Team Integrations.";
pub const LATER_INSTALL_DISABLED: &str =
    "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
pub const LATER_FALLBACK: &str = "Gateway elevated provider mode is unavailable.";

impl FullControlWording {
    pub fn install_disabled(self) -> &'static str {
        match self {
            FullControlWording::Seed => SEED_INSTALL_DISABLED,
            FullControlWording::Later => LATER_INSTALL_DISABLED,
        }
    }

    pub fn team_disabled(self) -> &'static str {
        match self {
            FullControlWording::Seed => SEED_TEAM_DISABLED,
            FullControlWording::Later => LATER_TEAM_DISABLED,
        }
    }

    /// Used when the provider layer fails without its own reason. The later
    /// version has no distinct text for this; it uses its general fallback.
    pub fn provider_unavailable(self) -> &'static str {
        match self {
            FullControlWording::Seed => SEED_PROVIDER_UNAVAILABLE,
            FullControlWording::Later => LATER_FALLBACK,
        }
    }

    /// Used when a denial carries no specific reason at all.
    pub fn fallback(self) -> &'static str {
        match self {
            FullControlWording::Seed => SEED_FALLBACK,
            FullControlWording::Later => LATER_FALLBACK,
        }
    }
}

/// `parseBooleanInput`: booleans as is; strings trimmed and case-insensitive
/// (`true/1/yes/on`, `false/0/no/off`); everything else — numbers included —
/// is "not given".
pub fn parse_boolean_input(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `requested` = parse of `config.full_control`, else of `config.fullControl`,
/// else false. An explicit, parseable `full_control: false` wins over
/// `fullControl: true` (JavaScript `??` only skips null).
pub fn full_control_requested(config: &Value) -> bool {
    parse_boolean_input(config.get("full_control"))
        .or_else(|| parse_boolean_input(config.get("fullControl")))
        .unwrap_or(false)
}

/// Result of the provider layer (`evaluateGatewayProviderFullControlSupport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFullControlSupport {
    pub supported: bool,
    pub reason: Option<String>,
}

pub const CLAUDE_ELEVATED_UNAVAILABLE: &str = "Claude CLI does not expose elevated permission flags on this host (missing --permission-mode bypassPermissions and --dangerously-skip-permissions).";
pub const CODEX_ELEVATED_UNAVAILABLE: &str = "Codex CLI does not expose elevated permission flags on this host (missing --dangerously-bypass-approvals-and-sandbox and --sandbox danger-full-access).";
pub const GEMINI_ELEVATED_UNAVAILABLE: &str =
    "Gemini CLI does not expose elevated approval flags on this host (missing --approval-mode yolo and --yolo).";

/// §13.3. `supported_flags` is the provider's detected flag map; pass an empty
/// map when detection has not run (Claude's defaults have both flags off).
pub fn provider_full_control_support(
    provider_id: &str,
    supported_flags: &BTreeMap<String, bool>,
) -> ProviderFullControlSupport {
    let flag = |name: &str| supported_flags.get(name) == Some(&true);
    let (supported, reason) = match provider_id {
        "claude_code" => (
            flag("permissionModeFlag") || flag("dangerouslySkipPermissionsFlag"),
            CLAUDE_ELEVATED_UNAVAILABLE.to_string(),
        ),
        "codex" => (
            flag("dangerouslyBypassApprovalsAndSandboxFlag") || flag("sandboxFlag"),
            CODEX_ELEVATED_UNAVAILABLE.to_string(),
        ),
        "gemini" => (
            flag("approvalModeFlag") || flag("yoloFlag"),
            GEMINI_ELEVATED_UNAVAILABLE.to_string(),
        ),
        other => (
            false,
            format!("Unsupported gateway provider for elevated provider mode: {other}"),
        ),
    };
    ProviderFullControlSupport {
        supported,
        reason: (!supported).then_some(reason),
    }
}

/// Keeps only the entries whose value is boolean `true`/`false`; a flag counts
/// only when it is boolean `true`, so anything else is dropped.
pub fn flags_from_json(value: &Value) -> BTreeMap<String, bool> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_bool().map(|b| (k.clone(), b)))
                .collect()
        })
        .unwrap_or_default()
}

/// The four layers as seen at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullControlLayers {
    pub requested: bool,
    pub install_enabled: bool,
    pub team_enabled: bool,
    pub provider: ProviderFullControlSupport,
}

/// Outcome, written to run metadata as `full_control_requested`,
/// `full_control_effective` and `full_control_denied_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullControlDecision {
    pub requested: bool,
    pub effective: bool,
    /// Set only when requested and not effective.
    pub denied_reason: Option<String>,
}

impl FullControlDecision {
    /// True when the run must fail (after `run_started`) with [`Self::denial_message`].
    pub fn is_denied(&self) -> bool {
        self.requested && !self.effective
    }

    /// The message a denied run fails with.
    pub fn denial_message(&self, wording: FullControlWording) -> String {
        self.denied_reason
            .clone()
            .unwrap_or_else(|| wording.fallback().to_string())
    }
}

/// §13.2: `effective` = requested ∧ install ∧ team ∧ provider; the denial
/// reason is the first failing layer in the wording's order.
pub fn resolve_full_control(
    layers: &FullControlLayers,
    wording: FullControlWording,
) -> FullControlDecision {
    let effective = layers.requested
        && layers.install_enabled
        && layers.team_enabled
        && layers.provider.supported;
    let denied_reason = if layers.requested && !effective {
        let install = (!layers.install_enabled).then(|| wording.install_disabled());
        let team = (!layers.team_enabled).then(|| wording.team_disabled());
        let host_layer = match wording {
            FullControlWording::Seed => install.or(team),
            FullControlWording::Later => team.or(install),
        };
        Some(match host_layer {
            Some(message) => message.to_string(),
            None => layers
                .provider
                .reason
                .clone()
                .unwrap_or_else(|| wording.provider_unavailable().to_string()),
        })
    } else {
        None
    };
    FullControlDecision {
        requested: layers.requested,
        effective,
        denied_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn boolean_input_parsing() {
        let rows = [
            (json!(true), Some(true)),
            (json!(false), Some(false)),
            (json!("true"), Some(true)),
            (json!(" YES "), Some(true)),
            (json!("On"), Some(true)),
            (json!("1"), Some(true)),
            (json!("FALSE"), Some(false)),
            (json!(" no"), Some(false)),
            (json!("off"), Some(false)),
            (json!("0"), Some(false)),
            (json!("maybe"), None),
            (json!(""), None),
            (json!(1), None),
            (json!(0), None),
            (json!(null), None),
            (json!({}), None),
        ];
        for (value, expected) in rows {
            assert_eq!(parse_boolean_input(Some(&value)), expected, "{value}");
        }
        assert_eq!(parse_boolean_input(None), None);
    }

    #[test]
    fn requested_reads_full_control_then_full_control_camel() {
        assert!(full_control_requested(&json!({"full_control": "on"})));
        assert!(full_control_requested(&json!({"fullControl": true})));
        assert!(full_control_requested(
            &json!({"full_control": "junk", "fullControl": "yes"})
        ));
        assert!(!full_control_requested(
            &json!({"full_control": false, "fullControl": true})
        ));
        assert!(!full_control_requested(&json!({"full_control": 1})));
        assert!(!full_control_requested(&json!({})));
        assert!(!full_control_requested(&json!(null)));
    }

    fn flags(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    type SupportRow = (&'static str, &'static [(&'static str, bool)], bool);

    #[test]
    fn provider_support_rows() {
        let rows: [SupportRow; 11] = [
            ("claude_code", &[("permissionModeFlag", true)], true),
            (
                "claude_code",
                &[("dangerouslySkipPermissionsFlag", true)],
                true,
            ),
            (
                "claude_code",
                &[("permissionModeFlag", false), ("jsonSchemaFlag", true)],
                false,
            ),
            (
                "codex",
                &[("dangerouslyBypassApprovalsAndSandboxFlag", true)],
                true,
            ),
            ("codex", &[("sandboxFlag", true)], true),
            ("codex", &[], false),
            ("gemini", &[("approvalModeFlag", true)], true),
            ("gemini", &[("yoloFlag", true)], true),
            ("gemini", &[("sandboxFlag", true)], false),
            ("openai", &[("permissionModeFlag", true)], false),
            ("claude_code", &[], false),
        ];
        for (provider, pairs, supported) in rows {
            let support = provider_full_control_support(provider, &flags(pairs));
            assert_eq!(support.supported, supported, "{provider} {pairs:?}");
            assert_eq!(support.reason.is_none(), supported);
        }
        let reason = |p: &str| {
            provider_full_control_support(p, &BTreeMap::new())
                .reason
                .unwrap()
        };
        assert_eq!(reason("claude_code"), CLAUDE_ELEVATED_UNAVAILABLE);
        assert_eq!(reason("codex"), CODEX_ELEVATED_UNAVAILABLE);
        assert_eq!(reason("gemini"), GEMINI_ELEVATED_UNAVAILABLE);
        assert_eq!(
            reason("openai"),
            "Unsupported gateway provider for elevated provider mode: openai"
        );
    }

    #[test]
    fn flags_from_json_keeps_only_booleans() {
        let map =
            flags_from_json(&json!({"permissionModeFlag": "true", "yoloFlag": true, "x": false}));
        assert_eq!(map, flags(&[("yoloFlag", true), ("x", false)]));
        assert!(flags_from_json(&json!([])).is_empty());
    }

    fn layers(requested: bool, install: bool, team: bool, provider: bool) -> FullControlLayers {
        FullControlLayers {
            requested,
            install_enabled: install,
            team_enabled: team,
            provider: ProviderFullControlSupport {
                supported: provider,
                reason: (!provider).then(|| CODEX_ELEVATED_UNAVAILABLE.to_string()),
            },
        }
    }

    #[test]
    fn seed_denials_in_seed_order() {
        let w = FullControlWording::Seed;
        let rows: [(&str, FullControlLayers, bool, Option<&str>); 7] = [
            (
                "not requested → no denial",
                layers(false, false, false, false),
                false,
                None,
            ),
            (
                "all layers on → effective",
                layers(true, true, true, true),
                true,
                None,
            ),
            (
                "1. install off (wins over team)",
                layers(true, false, false, false),
                false,
                Some(SEED_INSTALL_DISABLED),
            ),
            (
                "1. install off alone",
                layers(true, false, true, true),
                false,
                Some(SEED_INSTALL_DISABLED),
            ),
            (
                "2. team off",
                layers(true, true, false, false),
                false,
                Some(SEED_TEAM_DISABLED),
            ),
            (
                "3. provider unsupported",
                layers(true, true, true, false),
                false,
                Some(CODEX_ELEVATED_UNAVAILABLE),
            ),
            (
                "not requested, all on",
                layers(false, true, true, true),
                false,
                None,
            ),
        ];
        for (name, l, effective, reason) in rows {
            let d = resolve_full_control(&l, w);
            assert_eq!(d.effective, effective, "{name}");
            assert_eq!(d.denied_reason.as_deref(), reason, "{name}");
            assert_eq!(d.is_denied(), reason.is_some(), "{name}");
        }
    }

    #[test]
    fn seed_provider_layer_without_reason_and_fallback() {
        let mut l = layers(true, true, true, false);
        l.provider.reason = None;
        let d = resolve_full_control(&l, FullControlWording::Seed);
        assert_eq!(d.denied_reason.as_deref(), Some(SEED_PROVIDER_UNAVAILABLE));
        let bare = FullControlDecision {
            requested: true,
            effective: false,
            denied_reason: None,
        };
        assert_eq!(bare.denial_message(FullControlWording::Seed), SEED_FALLBACK);
        assert_eq!(
            bare.denial_message(FullControlWording::Later),
            LATER_FALLBACK
        );
    }

    #[test]
    fn later_denials_put_team_first() {
        let w = FullControlWording::Later;
        let rows: [(FullControlLayers, &str); 3] = [
            (layers(true, false, false, true), LATER_TEAM_DISABLED),
            (layers(true, false, true, true), LATER_INSTALL_DISABLED),
            (layers(true, true, true, false), CODEX_ELEVATED_UNAVAILABLE),
        ];
        for (l, reason) in rows {
            assert_eq!(
                resolve_full_control(&l, w).denied_reason.as_deref(),
                Some(reason)
            );
        }
    }
}
