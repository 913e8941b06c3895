//! Provider registry and command discovery (providers.md §1).
//!
//! Everything here is pure: the process environment and `PATH` are passed in,
//! never read, so the gateway decides where overrides come from.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

pub use panorama_protocol::capabilities::ProviderId;

/// Static facts about one provider CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    pub id: ProviderId,
    /// Display label ("Claude Code", "OpenAI Codex", "Gemini CLI").
    pub label: &'static str,
    /// Bare executable name looked up on `PATH`.
    pub binary: &'static str,
    /// Gateway CLI flag overriding the command (`--claude-cli`).
    pub cli_flag: &'static str,
    /// Environment overrides, first match wins.
    pub env_keys: [&'static str; 2],
    /// The gateway subagent type served by this adapter.
    pub subagent_type: &'static str,
    /// Whether the adapter can continue a previous session (`--resume`).
    pub supports_continuation: bool,
}

pub const CLAUDE: ProviderSpec = ProviderSpec {
    id: ProviderId::ClaudeCode,
    label: "Claude Code",
    binary: "claude",
    cli_flag: "--claude-cli",
    env_keys: ["PANORAMA_CLAUDE_CLI", "CLAUDE_CLI"],
    subagent_type: "claude_code_gateway",
    supports_continuation: true,
};

pub const CODEX: ProviderSpec = ProviderSpec {
    id: ProviderId::Codex,
    label: "OpenAI Codex",
    binary: "codex",
    cli_flag: "--codex-cli",
    env_keys: ["PANORAMA_CODEX_CLI", "CODEX_CLI"],
    subagent_type: "codex_gateway",
    // `codex exec resume <id>` (Codex ≥ 0.1xx; the seed had none).
    supports_continuation: true,
};

pub const GEMINI: ProviderSpec = ProviderSpec {
    id: ProviderId::Gemini,
    label: "Gemini CLI",
    binary: "gemini",
    cli_flag: "--gemini-cli",
    env_keys: ["PANORAMA_GEMINI_CLI", "GEMINI_CLI"],
    subagent_type: "gemini_gateway",
    // `gemini --resume <session id>` (Gemini CLI ≥ 0.x; the seed had none).
    supports_continuation: true,
};

/// All providers in spec order.
pub const ALL_PROVIDERS: [ProviderSpec; 3] = [CLAUDE, CODEX, GEMINI];

/// The static description of a provider.
pub fn spec(id: ProviderId) -> &'static ProviderSpec {
    match id {
        ProviderId::ClaudeCode => &ALL_PROVIDERS[0],
        ProviderId::Codex => &ALL_PROVIDERS[1],
        ProviderId::Gemini => &ALL_PROVIDERS[2],
    }
}

/// Parses a provider id (`claude_code`, `codex`, `gemini`), exact match.
pub fn provider_from_id(raw: &str) -> Option<ProviderId> {
    ProviderId::parse(raw)
}

/// Maps a subagent type to its adapter (§1: by id). Accepts the gateway
/// types (`claude_code_gateway`, `codex_gateway`, `gemini_gateway`) and the
/// bare adapter ids. Anything else has no adapter ("Unsupported subagent type").
pub fn provider_for_subagent_type(subagent_type: &str) -> Option<ProviderId> {
    let trimmed = subagent_type.trim();
    let base = trimmed.strip_suffix("_gateway").unwrap_or(trimmed);
    ProviderId::parse(base)
}

/// Command overrides, as given on the gateway command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    pub claude_cli: Option<String>,
    pub codex_cli: Option<String>,
    pub gemini_cli: Option<String>,
}

impl CliOverrides {
    pub fn get(&self, id: ProviderId) -> Option<&str> {
        match id {
            ProviderId::ClaudeCode => self.claude_cli.as_deref(),
            ProviderId::Codex => self.codex_cli.as_deref(),
            ProviderId::Gemini => self.gemini_cli.as_deref(),
        }
    }
}

/// Where a resolved command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandSource {
    CliFlag,
    /// The environment key that matched.
    Env(&'static str),
    /// The bare binary name (to be found on `PATH` at spawn time).
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCommand {
    pub provider: ProviderId,
    pub command: String,
    pub source: CommandSource,
}

/// §1 command resolution: CLI flag, then env (`PANORAMA_<X>_CLI`, then
/// `<X>_CLI`), else the bare name. Blank values are skipped. `env` is a lookup
/// into the gateway's environment (pass `|k| std::env::var(k).ok()` at the edge).
pub fn resolve_command(
    id: ProviderId,
    overrides: &CliOverrides,
    env: impl Fn(&str) -> Option<String>,
) -> ResolvedCommand {
    let spec = spec(id);
    let non_blank = |v: &str| {
        let t = v.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    if let Some(cmd) = overrides.get(id).and_then(non_blank) {
        return ResolvedCommand {
            provider: id,
            command: cmd,
            source: CommandSource::CliFlag,
        };
    }
    for key in spec.env_keys {
        if let Some(cmd) = env(key).as_deref().and_then(non_blank) {
            return ResolvedCommand {
                provider: id,
                command: cmd,
                source: CommandSource::Env(key),
            };
        }
    }
    ResolvedCommand {
        provider: id,
        command: spec.binary.to_string(),
        source: CommandSource::Default,
    }
}

/// Resolves all three commands at once.
pub fn resolve_all(
    overrides: &CliOverrides,
    env: impl Fn(&str) -> Option<String>,
) -> BTreeMap<ProviderId, ResolvedCommand> {
    ALL_PROVIDERS
        .iter()
        .map(|s| (s.id, resolve_command(s.id, overrides, &env)))
        .collect()
}

/// Finds an executable: a command containing a path separator is checked as
/// is; a bare name is searched in each directory of `path_var` (a `PATH`
/// value). Returns `None` when nothing executable is found.
pub fn find_executable(command: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if command.is_empty() {
        return None;
    }
    if command.contains('/') || command.contains(std::path::MAIN_SEPARATOR) {
        let p = PathBuf::from(command);
        return is_executable(&p).then_some(p);
    }
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn labels_ids_and_subagent_types() {
        assert_eq!(spec(ProviderId::ClaudeCode).label, "Claude Code");
        assert_eq!(spec(ProviderId::Codex).label, "OpenAI Codex");
        assert_eq!(spec(ProviderId::Gemini).label, "Gemini CLI");
        assert_eq!(
            provider_for_subagent_type("claude_code_gateway"),
            Some(ProviderId::ClaudeCode)
        );
        assert_eq!(
            provider_for_subagent_type("codex_gateway"),
            Some(ProviderId::Codex)
        );
        assert_eq!(
            provider_for_subagent_type("gemini"),
            Some(ProviderId::Gemini)
        );
        assert_eq!(provider_for_subagent_type("openai_provider_hosted"), None);
        assert_eq!(provider_for_subagent_type("panorama_internal"), None);
        assert!(spec(ProviderId::ClaudeCode).supports_continuation);
        assert!(spec(ProviderId::Codex).supports_continuation);
        assert!(spec(ProviderId::Gemini).supports_continuation);
    }

    #[test]
    fn resolution_order_flag_env_default() {
        let overrides = CliOverrides {
            claude_cli: Some("/opt/claude".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("PANORAMA_CLAUDE_CLI", "/env/claude"),
            ("CODEX_CLI", "/env/codex"),
            ("PANORAMA_CODEX_CLI", "  "),
        ]);
        let c = resolve_command(ProviderId::ClaudeCode, &overrides, &env);
        assert_eq!(c.command, "/opt/claude");
        assert_eq!(c.source, CommandSource::CliFlag);
        let c = resolve_command(ProviderId::ClaudeCode, &CliOverrides::default(), &env);
        assert_eq!(c.command, "/env/claude");
        assert_eq!(c.source, CommandSource::Env("PANORAMA_CLAUDE_CLI"));
        let x = resolve_command(ProviderId::Codex, &overrides, &env);
        assert_eq!(x.command, "/env/codex");
        assert_eq!(x.source, CommandSource::Env("CODEX_CLI"));
        let g = resolve_command(ProviderId::Gemini, &overrides, &env);
        assert_eq!(g.command, "gemini");
        assert_eq!(g.source, CommandSource::Default);
        assert_eq!(resolve_all(&overrides, &env).len(), 3);
    }

    #[test]
    fn path_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("claude");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("codex");
        std::fs::write(&plain, "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let path =
            std::env::join_paths(["/nonexistent-dir", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(find_executable("claude", Some(&path)), Some(exe.clone()));
        #[cfg(unix)]
        assert_eq!(find_executable("codex", Some(&path)), None);
        assert_eq!(find_executable("gemini", Some(&path)), None);
        assert_eq!(find_executable("claude", None), None);
        assert_eq!(find_executable(exe.to_str().unwrap(), None), Some(exe));
        assert_eq!(find_executable("", Some(&path)), None);
    }
}
