//! Provider discovery, validation and health at run time (providers.md
//! §1–2, runtime.md §4.1, §4.6, control-plane §11): the detected CLIs, the
//! `providerHealth` map (cached in `gateway.json`), capabilities for the
//! heartbeat, and health updates after model and subagent runs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use panorama_protocol::capabilities::{ProviderCapability, ProviderHealthStatus, Providers};
use panorama_providers::argv::build_validation_plan;
use panorama_providers::flags::SupportedFlags;
use panorama_providers::health::{
    full_health, health_after_run, light_health, resolve_check_type, validation_succeeded,
    CheckType, ProviderHealth, ProviderHealthMap, ValidationMode, ValidationOutcome,
};
use panorama_providers::output::extract_model_run_answer;
use panorama_providers::probe::{detect_provider, ProbeOptions, ProviderDetection};
use panorama_providers::registry::{resolve_all, CliOverrides, ResolvedCommand, ALL_PROVIDERS};
use panorama_providers::ProviderId;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::agent_process::spec_for_plan;
use super::process::{run_process, PROCESS_KILL_GRACE};
use super::workdir::WorkDir;
use crate::config::{GatewayConfig, ProviderHealth as StoredHealth};
use crate::gateway_events as events;
use crate::paths::GatewayPaths;
use crate::timestamp::now_iso;

/// Detected CLIs and their health.
#[derive(Default)]
pub struct ProviderState {
    inner: Mutex<Inner>,
    /// Set when a run changed a provider's health; the runtime takes it to
    /// rebuild its capabilities and heartbeat (handlers never reach into
    /// the runtime themselves).
    health_changed: std::sync::atomic::AtomicBool,
}

#[derive(Default, Clone)]
struct Inner {
    detections: BTreeMap<ProviderId, ProviderDetection>,
    health: ProviderHealthMap,
}

/// Outcome of a validation pass.
#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    pub detections: BTreeMap<ProviderId, ProviderDetection>,
    pub health: ProviderHealthMap,
    /// Providers that ran a full check.
    pub full_checked: Vec<ProviderId>,
}

impl ValidationReport {
    /// Readiness rule of runtime.md §4.2.
    pub fn any_provider_ready(&self) -> bool {
        ALL_PROVIDERS.iter().any(|s| {
            let available = self.detections.get(&s.id).is_some_and(|d| d.available);
            provider_ready(available, self.health.get(&s.id))
        })
    }
}

pub fn provider_ready(available: bool, health: Option<&ProviderHealth>) -> bool {
    match health.map(|h| h.status) {
        Some(ProviderHealthStatus::Healthy) => true,
        None => available,
        Some(ProviderHealthStatus::Unavailable | ProviderHealthStatus::Unhealthy) => false,
        Some(_) => available,
    }
}

/// Command resolution from the process environment (the CLI copies
/// `--claude-cli` etc. into `PANORAMA_<X>_CLI`).
pub fn resolve_commands() -> BTreeMap<ProviderId, ResolvedCommand> {
    resolve_all(&CliOverrides::default(), |k| std::env::var(k).ok())
}

fn probe_options(paths: &GatewayPaths) -> ProbeOptions {
    ProbeOptions {
        env: Some(crate::child_env::child_env_from_process(
            Some(paths.tmp_dir.as_path()),
            &[],
        )),
        timeout: None,
        // `--version`/`--help` probes run contained like every job.
        contain: Some(std::sync::Arc::new(|cmd: &mut tokio::process::Command| {
            let job = crate::contain::job(crate::contain::PROBE_LABEL);
            job.prepare(cmd);
            Box::new(job) as Box<dyn std::any::Any + Send>
        })),
    }
}

/// `providerHealth` as stored in `gateway.json`.
pub fn to_stored(map: &ProviderHealthMap) -> BTreeMap<String, StoredHealth> {
    map.iter()
        .filter_map(|(id, h)| {
            serde_json::to_value(h)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
                .map(|s| (id.as_str().to_string(), s))
        })
        .collect()
}

pub fn from_stored(map: &BTreeMap<String, StoredHealth>) -> ProviderHealthMap {
    map.iter()
        .filter_map(|(id, h)| {
            let id = ProviderId::parse(id)?;
            let v = serde_json::to_value(h).ok()?;
            serde_json::from_value(v).ok().map(|h| (id, h))
        })
        .collect()
}

/// One full validation run (§2): `Say hi.` with the schema, 30 s, in a
/// fresh validation work dir.
async fn full_check(detection: &ProviderDetection, paths: &GatewayPaths) -> ValidationOutcome {
    if !detection.available {
        return ValidationOutcome::Unavailable {
            error: detection
                .error
                .clone()
                .unwrap_or_else(|| "Provider CLI not found".into()),
        };
    }
    let id = detection.provider;
    let run_id = uuid::Uuid::new_v4().to_string();
    let wd = match WorkDir::create(
        &paths.work_dir,
        "validation",
        &[("provider id", id.as_str()), ("validation run id", &run_id)],
    ) {
        Ok(wd) => wd,
        Err(e) => {
            return ValidationOutcome::Unhealthy {
                error: e.to_string(),
            }
        }
    };
    let outcome = async {
        let plan = build_validation_plan(
            id,
            &detection.command,
            wd.path.clone(),
            &detection.supported_flags,
        )
        .map_err(|e| e.to_string())?;
        wd.write_files(&plan.files).map_err(|e| e.to_string())?;
        let spec = spec_for_plan(&plan, &paths.tmp_dir, PROCESS_KILL_GRACE);
        let (_tx, rx) = watch::channel(None);
        let result = run_process(&spec, rx, &mut |_| {}, &mut |_| {}).await;
        if let Some(detail) = result.failure_detail(plan.timeout_ms) {
            return Err(detail);
        }
        let answer = super::agent_process::read_answer_file(&plan);
        let structured = extract_model_run_answer(id, &result.stdout, answer.as_deref())
            .map_err(|e| e.to_string())?;
        if validation_succeeded(&structured) {
            Ok(())
        } else {
            Err("Validation output has no string message".to_string())
        }
    }
    .await;
    wd.cleanup();
    match outcome {
        Ok(()) => ValidationOutcome::Healthy,
        Err(error) => ValidationOutcome::Unhealthy { error },
    }
}

/// Detect every provider and validate it in `mode` (full/light/auto),
/// reporting progress lines through `progress`.
pub async fn validate(
    mode: ValidationMode,
    previous: &ProviderHealthMap,
    paths: &GatewayPaths,
    progress: &(dyn Fn(String) + Sync),
) -> ValidationReport {
    let commands = resolve_commands();
    let options = probe_options(paths);
    let checks = ALL_PROVIDERS.iter().map(|s| {
        let resolved = commands[&s.id].clone();
        let options = options.clone();
        async move {
            let started = Instant::now();
            let detection = detect_provider(&resolved, &options).await;
            let prev = previous.get(&s.id);
            let check = resolve_check_type(mode, prev);
            let now = now_iso();
            let health = if check == CheckType::Full {
                progress(format!("  {}...", s.id.label()));
                let outcome = full_check(&detection, paths).await;
                let ms = started.elapsed().as_millis() as u64;
                let h = full_health(&outcome, &now, ms, None);
                progress(format!(
                    "  {}: {} ({:.1}s){}",
                    s.id.label(),
                    h.status.as_str(),
                    ms as f64 / 1000.0,
                    h.error
                        .as_deref()
                        .map(|e| format!(" {}", e.chars().take(120).collect::<String>()))
                        .unwrap_or_default()
                ));
                h
            } else {
                light_health(
                    prev,
                    detection.available,
                    detection.error.as_deref(),
                    &now,
                    Some(started.elapsed().as_millis() as u64),
                )
            };
            (s.id, detection, health, check == CheckType::Full)
        }
    });
    let mut report = ValidationReport::default();
    for (id, detection, health, full) in futures_util::future::join_all(checks).await {
        tracing::info!(
            provider = id.as_str(),
            command = %detection.command,
            available = detection.available,
            version = detection.version.as_deref(),
            status = health.status.as_str(),
            "Provider capability refreshed"
        );
        report.detections.insert(id, detection);
        report.health.insert(id, health);
        if full {
            report.full_checked.push(id);
        }
    }
    report
}

/// `provider_validation` gateway events (control-plane §11) for the
/// providers that ran a full check and are not healthy.
pub fn validation_event_rows(
    report: &ValidationReport,
    gateway_id: &str,
    team_id: &str,
    context: &str,
) -> Vec<Value> {
    report
        .full_checked
        .iter()
        .filter_map(|id| {
            let h = report.health.get(id)?;
            if h.status == ProviderHealthStatus::Healthy {
                return None;
            }
            let summary = h.error.as_deref().map(|e| {
                e.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(500)
                    .collect::<String>()
            });
            let message = match &summary {
                Some(s) => format!("{} validation failed: {s}", id.as_str()),
                None => format!("{} validation status: {}", id.as_str(), h.status.as_str()),
            };
            let level = if h.status == ProviderHealthStatus::Unhealthy {
                "error"
            } else {
                "warn"
            };
            Some(events::event_row(
                gateway_id,
                team_id,
                Some(id.as_str()),
                level,
                Some("provider_validation"),
                &message,
                json!({
                    "context": context,
                    "status": h.status.as_str(),
                    "check_type": "full",
                    "error": h.error,
                    // As the reference: the event carries no duration (the
                    // health entry in gateway.json keeps it).
                    "duration_ms": Value::Null,
                }),
            ))
        })
        .collect()
}

impl ProviderState {
    /// A run's outcome applied to its provider's health. `None` when the
    /// status did not change; else whether it became non-healthy, the whole
    /// map (to persist) and the new status.
    pub(super) fn apply_run_outcome(
        &self,
        provider: ProviderId,
        ok: bool,
        error: Option<&str>,
        now: &str,
    ) -> Option<(bool, ProviderHealthMap, ProviderHealthStatus)> {
        let mut inner = self.lock();
        let prev = inner.health.get(&provider).cloned();
        let (h, became) = health_after_run(prev.as_ref(), ok, error, now);
        let changed = prev.map(|p| p.status) != Some(h.status);
        let status = h.status;
        inner.health.insert(provider, h);
        changed.then(|| (became, inner.health.clone(), status))
    }

    /// Records that a run changed a provider's health.
    pub(super) fn mark_health_changed(&self) {
        self.health_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a run changed a provider's health since the last call.
    pub fn take_health_changed(&self) -> bool {
        self.health_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn install(&self, report: &ValidationReport) {
        let mut inner = self.lock();
        inner.detections = report.detections.clone();
        inner.health = report.health.clone();
    }

    pub fn detection(&self, id: ProviderId) -> Option<ProviderDetection> {
        self.lock().detections.get(&id).cloned()
    }

    /// Command and flags for a run; an undetected provider uses the
    /// resolved command and the known default flags.
    pub fn command_and_flags(&self, id: ProviderId) -> (String, SupportedFlags) {
        match self.detection(id) {
            Some(d) if d.available => (d.command, d.supported_flags),
            Some(d) => (d.command, SupportedFlags::defaults(id)),
            None => (
                resolve_commands()[&id].command.clone(),
                SupportedFlags::defaults(id),
            ),
        }
    }

    pub fn health(&self) -> ProviderHealthMap {
        self.lock().health.clone()
    }

    /// Provider entries of the heartbeat capabilities.
    pub fn providers(&self) -> Providers {
        let inner = self.lock();
        let entry = |id: ProviderId| -> ProviderCapability {
            let mut cap = match inner.detections.get(&id) {
                Some(d) => d.to_capability(),
                None => ProviderCapability::unavailable("Provider CLI not detected yet"),
            };
            cap.health = inner.health.get(&id).cloned();
            cap
        };
        Providers {
            claude_code: entry(ProviderId::ClaudeCode),
            codex: entry(ProviderId::Codex),
            gemini: entry(ProviderId::Gemini),
        }
    }

    /// Heartbeat refresh (light): re-detect every CLI, keep the statuses.
    pub async fn light_refresh(&self, paths: &GatewayPaths) {
        let previous = self.health();
        let report = validate(ValidationMode::Light, &previous, paths, &|_| {}).await;
        self.install(&report);
    }
}

/// Persist the in-memory `providerHealth` into `gateway.json` (merge-on-save).
pub fn persist_health(paths: &GatewayPaths, health: &ProviderHealthMap) {
    let result = GatewayConfig::load(&paths.config_path).and_then(|mut c| {
        c.set_provider_health(&to_stored(health));
        c.save(&paths.config_path)
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "Failed to persist provider health");
    }
}
