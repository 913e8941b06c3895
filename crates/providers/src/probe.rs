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
    Ok(out.stdout.trim().to_string())
}

/// Runs the provider's help command and parses it; any failure gives all-false flags.
pub async fn probe_flags(id: ProviderId, command: &str, options: &ProbeOptions) -> SupportedFlags {
    match run_probe(command, help_args(id), options).await {
        Ok(out) if out.success => {
            SupportedFlags::parse_help(id, &format!("{}\n{}", out.stdout, out.stderr))
        }
        Ok(_) | Err(_) => SupportedFlags::all_false(id),
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
        }
        if self.provider == ProviderId::Gemini {
            cap.extensions = Some(Vec::new());
        }
        cap
    }
}

/// Version probe, then (when available) the help probe.
pub async fn detect_provider(
    resolved: &ResolvedCommand,
    options: &ProbeOptions,
) -> ProviderDetection {
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
                supported_flags: SupportedFlags::default(),
            }
        }
    }
}
