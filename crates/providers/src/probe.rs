//! Process-level probes: `<cli> --version` and `<cli> --help` with a timeout
//! (providers.md §1; runtime.md §3.2 "Diagnostic `--version` 10 s").

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use panorama_protocol::capabilities::ProviderCapability;
use tokio::process::Command;

use crate::error::ProviderError;
use crate::flags::{help_args, SupportedFlags};
use crate::registry::{ProviderId, ResolvedCommand};

/// Timeout of `--version` and `--help` probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepares a probe's command before it spawns (the gateway places it in
/// a cgroup of its own); what it returns is held until the probe has ended
/// and then dropped (the gateway's job handle then kills what the probe
/// left and removes its cgroup).
pub type ProbeContainer =
    std::sync::Arc<dyn Fn(&mut Command) -> Box<dyn std::any::Any + Send> + Send + Sync>;

/// How to run a probe.
#[derive(Clone, Default)]
pub struct ProbeOptions {
    /// Full child environment (already scrubbed, runtime §3.1). `None`
    /// inherits the gateway's environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Defaults to [`PROBE_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Process containment for the probe's child, if any.
    pub contain: Option<ProbeContainer>,
}

impl std::fmt::Debug for ProbeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeOptions")
            .field("env", &self.env)
            .field("timeout", &self.timeout)
            .field("contain", &self.contain.is_some())
            .finish()
    }
}

/// Captured output of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Formats a spawn error like Node does (`spawn codex ENOENT`), so the
/// heartbeat `error` text matches the reference gateway.
pub fn spawn_error_message(command: &str, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => format!("spawn {command} ENOENT"),
        std::io::ErrorKind::PermissionDenied => format!("spawn {command} EACCES"),
        _ => format!("spawn {command} failed: {err}"),
    }
}

/// Runs `command args…` with stdin closed, capturing both streams; the child
/// is killed when the timeout fires.
pub async fn run_probe(
    command: &str,
    args: &[&str],
    options: &ProbeOptions,
) -> Result<ProbeOutput, ProviderError> {
    let timeout = options.timeout.unwrap_or(PROBE_TIMEOUT);
    let mut cmd = Command::new(command);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(env) = &options.env {
        cmd.env_clear().envs(env);
    }
    // Held until the probe is over (also on timeout: dropped on return).
    let _contained = options.contain.as_ref().map(|contain| contain(&mut cmd));
    let child = cmd
        .spawn()
        .map_err(|e| ProviderError::Spawn(spawn_error_message(command, &e)))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(ProviderError::Timeout {
            command: format!("{command} {}", args.join(" ")),
            timeout_ms: timeout.as_millis() as u64,
        }),
        Ok(Err(e)) => Err(ProviderError::Spawn(spawn_error_message(command, &e))),
        Ok(Ok(out)) => Ok(ProbeOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// `<cli> --version`: the trimmed stdout. A non-zero exit or empty stdout
/// counts as a failure (the CLI is then unavailable).
pub async fn probe_version(command: &str, options: &ProbeOptions) -> Result<String, ProviderError> {
    let out = run_probe(command, &["--version"], options).await?;
    if !out.success {
        return Err(ProviderError::ExitStatus {
            command: format!("{command} --version"),
            status: "non-zero exit".into(),
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(parse_version(&out.stdout).unwrap_or_else(|| out.stdout.trim().to_string()))
}

/// The semantic version in a `--version` text (`2.1.197 (Claude Code)`,
/// `codex-cli 0.171.0`, `0.61.0`): the first `MAJOR.MINOR.PATCH` token,
/// with its pre-release/build suffix. `None` when there is none.
pub fn parse_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .map(|t| t.trim_start_matches(['v', 'V']))
        .find(|t| {
            let core = t.split(['-', '+']).next().unwrap_or("");
            let parts: Vec<&str> = core.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// Runs the provider's help command and parses it; any failure gives all-false flags.
pub async fn probe_flags(id: ProviderId, command: &str, options: &ProbeOptions) -> SupportedFlags {
    match run_probe(command, help_args(id), options).await {
        Ok(out) if out.success => {
            SupportedFlags::parse_help(id, &format!("{}\n{}", out.stdout, out.stderr))
        }
        // A broken `--help` must not turn every flag off (Claude would then
        // run without `--output-format`): fall back to the known flags.
        Ok(_) | Err(_) => SupportedFlags::defaults(id),
    }
}

/// What detection learned about one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderDetection {
    pub provider: ProviderId,
    pub command: String,
    pub available: bool,
    pub version: Option<String>,
    pub error: Option<String>,
    pub supported_flags: SupportedFlags,
}

impl ProviderDetection {
    /// The heartbeat capability entry (without `health`; attach it separately).
    pub fn to_capability(&self) -> ProviderCapability {
        let mut cap = if self.available {
            ProviderCapability::available(self.version.clone())
        } else {
            ProviderCapability::unavailable(self.error.clone().unwrap_or_default())
        };
        if self.available {
            cap.supported_flags = self.supported_flags.0.clone();
            cap.supports = self.supported_flags.supports(self.provider);
        } else {
            // As the reference: an unavailable provider advertises its defaults.
            cap.supported_flags = SupportedFlags::defaults(self.provider).0;
        }
        if self.provider == ProviderId::Gemini {
            cap.extensions = Some(Vec::new());
        }
        cap
    }
}

/// Gemini CLI re-launches itself in a second Node process (bigger heap)
/// before doing anything, which doubles the time of a `--version` probe
/// (2.2 s → 1.3 s measured idle; past the 10 s probe timeout on a loaded
/// machine). Probes don't need the heap.
pub const GEMINI_NO_RELAUNCH_ENV: &str = "GEMINI_CLI_NO_RELAUNCH";

/// Probe options for one provider: Gemini's probes skip its re-launch.
pub fn provider_probe_options(provider: ProviderId, options: &ProbeOptions) -> ProbeOptions {
    let mut options = options.clone();
    if provider == ProviderId::Gemini {
        if let Some(env) = options.env.as_mut() {
            env.insert(GEMINI_NO_RELAUNCH_ENV.into(), "true".into());
        }
    }
    options
}

/// Version probe, then (when available) the help probe.
pub async fn detect_provider(
    resolved: &ResolvedCommand,
    options: &ProbeOptions,
) -> ProviderDetection {
    let options = &provider_probe_options(resolved.provider, options);
    match probe_version(&resolved.command, options).await {
        Ok(version) => ProviderDetection {
            provider: resolved.provider,
            command: resolved.command.clone(),
            available: true,
            version: Some(version).filter(|v| !v.is_empty()),
            error: None,
            supported_flags: probe_flags(resolved.provider, &resolved.command, options).await,
        },
        Err(e) => {
            tracing::debug!(provider = %resolved.provider, command = %resolved.command, error = %e, "provider CLI unavailable");
            ProviderDetection {
                provider: resolved.provider,
                command: resolved.command.clone(),
                available: false,
                version: None,
                error: Some(e.to_string()),
                supported_flags: SupportedFlags::defaults(resolved.provider),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_probes_skip_the_relaunch() {
        let base = ProbeOptions {
            env: Some(BTreeMap::new()),
            timeout: None,
            contain: None,
        };
        let g = provider_probe_options(ProviderId::Gemini, &base);
        assert_eq!(
            g.env
                .unwrap()
                .get(GEMINI_NO_RELAUNCH_ENV)
                .map(String::as_str),
            Some("true")
        );
        let c = provider_probe_options(ProviderId::ClaudeCode, &base);
        assert!(c.env.unwrap().is_empty());
    }

    #[test]
    fn versions_are_parsed_out_of_each_cli_text() {
        assert_eq!(
            parse_version("2.1.197 (Claude Code)\n").as_deref(),
            Some("2.1.197")
        );
        assert_eq!(
            parse_version("codex-cli 0.171.0").as_deref(),
            Some("0.171.0")
        );
        assert_eq!(parse_version("0.61.0\n").as_deref(), Some("0.61.0"));
        assert_eq!(
            parse_version("tool v1.2.3-beta.1+abc").as_deref(),
            Some("1.2.3-beta.1+abc")
        );
        assert_eq!(parse_version("version 12"), None);
        assert_eq!(parse_version("1.2"), None);
    }

    #[test]
    fn unavailable_capability_carries_the_default_flags() {
        let d = ProviderDetection {
            provider: ProviderId::Gemini,
            command: "gemini".into(),
            available: false,
            version: None,
            error: Some("spawn gemini ENOENT".into()),
            supported_flags: SupportedFlags::defaults(ProviderId::Gemini),
        };
        let cap = d.to_capability();
        assert_eq!(
            cap.supported_flags,
            SupportedFlags::defaults(ProviderId::Gemini).0
        );
        assert!(cap.supported_flags["skipTrustFlag"]);
    }

    #[tokio::test]
    async fn a_failing_help_probe_falls_back_to_the_defaults() {
        let flags = probe_flags(ProviderId::ClaudeCode, "false", &ProbeOptions::default()).await;
        assert_eq!(flags, SupportedFlags::defaults(ProviderId::ClaudeCode));
        assert!(flags.has("outputFormatFlag"));
    }
}
