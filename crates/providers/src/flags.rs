//! Supported-flag detection from `--help` output (providers.md §1, control-plane §12.2).
//!
//! Detection lowercases the help text (stdout + stderr) and records one
//! boolean per flag by substring presence. A failed `--help` gives all false.

use std::collections::BTreeMap;

use panorama_protocol::capabilities::ProviderSupports;
use serde::{Deserialize, Serialize};

use crate::registry::ProviderId;

/// `(supported_flags key, lowercase needles; any match counts)`.
pub type FlagProbe = (&'static str, &'static [&'static str]);

pub const CLAUDE_FLAG_PROBES: &[FlagProbe] = &[
    ("toolsFlag", &["--tools"]),
    ("allowedToolsFlag", &["--allowedtools", "--allowed-tools"]),
    (
        "disallowedToolsFlag",
        &["--disallowedtools", "--disallowed-tools"],
    ),
    ("outputFormatFlag", &["--output-format"]),
    ("streamJsonFlag", &["stream-json"]),
    ("modelFlag", &["--model"]),
    ("jsonSchemaFlag", &["--json-schema"]),
    ("appendSystemPromptFlag", &["--append-system-prompt"]),
    ("systemPromptFlag", &["--system-prompt"]),
    (
        "includePartialMessagesFlag",
        &["--include-partial-messages"],
    ),
    ("permissionModeFlag", &["--permission-mode"]),
    ("maxBudgetFlag", &["--max-budget-usd"]),
    ("inputFormatFlag", &["--input-format"]),
    ("betasFlag", &["--betas"]),
    ("noSessionPersistenceFlag", &["--no-session-persistence"]),
    ("sessionIdFlag", &["--session-id"]),
    ("resumeFlag", &["--resume"]),
    ("verboseFlag", &["--verbose"]),
    ("settingsFlag", &["--settings"]),
    ("settingSourcesFlag", &["--setting-sources"]),
    ("disableSlashCommandsFlag", &["--disable-slash-commands"]),
    ("strictMcpConfigFlag", &["--strict-mcp-config"]),
    ("mcpConfigFlag", &["--mcp-config"]),
    ("pluginDirFlag", &["--plugin-dir"]),
    (
        "dangerouslySkipPermissionsFlag",
        &["--dangerously-skip-permissions"],
    ),
    (
        "allowDangerouslySkipPermissionsFlag",
        &["--allow-dangerously-skip-permissions"],
    ),
];

pub const CODEX_FLAG_PROBES: &[FlagProbe] = &[
    ("outputSchemaFlag", &["--output-schema"]),
    ("outputLastMessageFlag", &["--output-last-message"]),
    ("jsonFlag", &["--json"]),
    ("modelFlag", &["--model"]),
    ("sandboxFlag", &["--sandbox"]),
    ("skipGitRepoCheckFlag", &["--skip-git-repo-check"]),
    ("configFlag", &["--config"]),
    (
        "dangerouslyBypassApprovalsAndSandboxFlag",
        &["--dangerously-bypass-approvals-and-sandbox"],
    ),
    // The `exec resume` subcommand, listed under Commands in `exec --help`.
    ("resumeFlag", &["resume"]),
];

pub const GEMINI_FLAG_PROBES: &[FlagProbe] = &[
    ("outputFormatFlag", &["--output-format"]),
    ("modelFlag", &["--model"]),
    ("extensionsFlag", &["--extensions"]),
    ("approvalModeFlag", &["--approval-mode"]),
    ("yoloFlag", &["--yolo"]),
    ("sandboxFlag", &["--sandbox"]),
    ("skipTrustFlag", &["--skip-trust"]),
    ("streamJsonFlag", &["stream-json"]),
    ("resumeFlag", &["--resume"]),
];

/// The probe table of a provider.
pub fn flag_probes(id: ProviderId) -> &'static [FlagProbe] {
    match id {
        ProviderId::ClaudeCode => CLAUDE_FLAG_PROBES,
        ProviderId::Codex => CODEX_FLAG_PROBES,
        ProviderId::Gemini => GEMINI_FLAG_PROBES,
    }
}

/// Arguments used to obtain the help text. Codex's exec-only options
/// (`--json`, `--output-schema`, `--skip-git-repo-check`) are listed under
/// `codex exec --help`, so that is what we probe.
pub fn help_args(id: ProviderId) -> &'static [&'static str] {
    match id {
        ProviderId::Codex => &["exec", "--help"],
        _ => &["--help"],
    }
}

/// Detected flags of one provider, serialized as the heartbeat
/// `supported_flags` map (`{"permissionModeFlag": true, …}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SupportedFlags(pub BTreeMap<String, bool>);

impl SupportedFlags {
    /// Pure parser: every probe of `id` evaluated against `help_text`.
    pub fn parse_help(id: ProviderId, help_text: &str) -> Self {
        let lower = help_text.to_lowercase();
        SupportedFlags(
            flag_probes(id)
                .iter()
                .map(|(key, needles)| {
                    (
                        key.to_string(),
                        needles.iter().any(|needle| lower.contains(needle)),
                    )
                })
                .collect(),
        )
    }

    /// The result of a failed `--help`: every probe false.
    pub fn all_false(id: ProviderId) -> Self {
        SupportedFlags(
            flag_probes(id)
                .iter()
                .map(|(key, _)| (key.to_string(), false))
                .collect(),
        )
    }

    /// Every probe true (a fully featured CLI; handy for tests and defaults).
    /// The flags each CLI is known to have (every probed flag is in the
    /// pinned versions tested end to end: Claude Code 2.1.197, Codex
    /// 0.171.0, Gemini CLI 0.61.0 — see the README). Used when `--help`
    /// fails and as an unavailable provider's `supported_flags`, so a run
    /// never loses `--output-format` because one help probe broke.
    pub fn defaults(id: ProviderId) -> Self {
        Self::all_true(id)
    }

    pub fn all_true(id: ProviderId) -> Self {
        SupportedFlags(
            flag_probes(id)
                .iter()
                .map(|(key, _)| (key.to_string(), true))
                .collect(),
        )
    }

    /// Whether the flag is present; only a boolean `true` counts.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key) == Some(&true)
    }

    /// Sets one flag (tests, overrides).
    pub fn with(mut self, key: &str, value: bool) -> Self {
        self.0.insert(key.to_string(), value);
        self
    }

    pub fn as_map(&self) -> &BTreeMap<String, bool> {
        &self.0
    }

    /// The heartbeat `supports` block.
    /// - `output_schema`: Claude `--json-schema`, Codex `--output-schema`; Gemini never.
    /// - `stream_json`: Claude `stream-json` in help, Codex `--json`, Gemini `--output-format`.
    /// - `tool_disable`: Claude `--tools`/`--allowedTools`, Codex `-c` config, Gemini always.
    pub fn supports(&self, id: ProviderId) -> ProviderSupports {
        match id {
            ProviderId::ClaudeCode => ProviderSupports {
                output_schema: self.has("jsonSchemaFlag"),
                stream_json: self.has("streamJsonFlag") && self.has("outputFormatFlag"),
                tool_disable: self.has("toolsFlag") || self.has("allowedToolsFlag"),
            },
            ProviderId::Codex => ProviderSupports {
                // The schema answer is read from `-o`: both flags are needed.
                output_schema: self.has("outputSchemaFlag") && self.has("outputLastMessageFlag"),
                stream_json: self.has("jsonFlag"),
                tool_disable: self.has("configFlag"),
            },
            ProviderId::Gemini => ProviderSupports {
                output_schema: false,
                stream_json: self.has("outputFormatFlag"),
                tool_disable: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE_HELP: &str = "Usage: claude [options] [command] [prompt]\n\
      -p, --print  Print response and exit\n\
      --output-format <format>  \"text\", \"json\", or \"stream-json\"\n\
      --allowedTools, --allowed-tools <tools...>\n\
      --permission-mode <mode>\n\
      --allow-dangerously-skip-permissions\n\
      --append-system-prompt <prompt>\n\
      --strict-mcp-config\n";

    #[test]
    fn claude_help_parsing_is_substring_based_and_case_insensitive() {
        let flags = SupportedFlags::parse_help(ProviderId::ClaudeCode, CLAUDE_HELP);
        assert_eq!(flags.0.len(), CLAUDE_FLAG_PROBES.len());
        assert!(flags.has("outputFormatFlag"));
        assert!(flags.has("streamJsonFlag"));
        assert!(flags.has("allowedToolsFlag"));
        assert!(flags.has("permissionModeFlag"));
        assert!(flags.has("allowDangerouslySkipPermissionsFlag"));
        // substrings of longer flags must not count
        assert!(!flags.has("dangerouslySkipPermissionsFlag"));
        assert!(!flags.has("systemPromptFlag"));
        assert!(!flags.has("mcpConfigFlag"));
        assert!(!flags.has("toolsFlag"));
        assert!(flags.has("appendSystemPromptFlag"));
        assert!(flags.has("strictMcpConfigFlag"));
        let s = flags.supports(ProviderId::ClaudeCode);
        assert!(s.stream_json && s.tool_disable && !s.output_schema);
    }

    #[test]
    fn all_false_and_serialization() {
        let flags = SupportedFlags::all_false(ProviderId::Gemini);
        assert_eq!(
            serde_json::to_value(&flags).unwrap(),
            serde_json::json!({"approvalModeFlag": false, "extensionsFlag": false, "modelFlag": false,
                "outputFormatFlag": false, "resumeFlag": false, "sandboxFlag": false, "skipTrustFlag": false,
                "streamJsonFlag": false, "yoloFlag": false})
        );
        let codex = SupportedFlags::parse_help(
            ProviderId::Codex,
            "-c, --config <key=value>\n--sandbox <SANDBOX_MODE>\n--json\n--DANGEROUSLY-bypass-approvals-and-sandbox",
        );
        assert!(codex.has("configFlag") && codex.has("sandboxFlag") && codex.has("jsonFlag"));
        assert!(codex.has("dangerouslyBypassApprovalsAndSandboxFlag"));
        assert!(!codex.has("outputSchemaFlag"));
        assert_eq!(help_args(ProviderId::Codex), ["exec", "--help"]);
        assert_eq!(help_args(ProviderId::Gemini), ["--help"]);
    }
}
