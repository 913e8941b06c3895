//! `doctor [--json]` (runtime.md §1.6.6).

use serde_json::json;

use super::Context;
use crate::config::GatewayConfig;
use crate::error::Result;
use crate::network::{self, ProviderCheckRequest};
use crate::output::Row;

/// Truncate provider errors in the status list (200 chars + `...`).
fn short_error(text: &str) -> String {
    if text.chars().count() > 200 {
        format!("{}...", text.chars().take(200).collect::<String>())
    } else {
        text.to_string()
    }
}

fn hub_text(h: &network::HubCheck) -> String {
    if h.reachable {
        format!("Reachable ({})", h.url)
    } else {
        format!("Unreachable ({})", h.url)
    }
}

pub fn run(ctx: &Context, json_output: bool) -> Result<()> {
    let prepared = ctx.prepare()?;
    let paths = &prepared.paths;
    let out = &ctx.out;
    let config_exists = paths.config_path.exists();
    let mut config = None;
    if config_exists {
        match GatewayConfig::load(&paths.config_path) {
            Ok(c) => config = Some(c),
            Err(e) => out.warn(
                "Unable to read gateway config.",
                &[
                    Row::verbose("Config path", Some(out.path(&paths.config_path))),
                    Row::verbose("Error", Some(e.to_string())),
                ],
            ),
        }
    }
    let containment = crate::contain::describe(&paths.config_dir);
    // Paired means a readable config with a gateway id, not just a file.
    let paired = config.as_ref().is_some_and(|c| !c.gateway_id.is_empty());
    let running = crate::pidfile::live_gateway(&paths.pid_path);
    let hub = match config.as_ref().filter(|_| paired) {
        Some(c) => Some(network::check_hub(
            c,
            &paths.config_path,
            running.is_none(),
        )?),
        None => None,
    };
    if let Some(fresh) = config
        .as_ref()
        .and_then(|_| GatewayConfig::load(&paths.config_path).ok())
    {
        // The check may have rotated the session; keep the saved tokens.
        config = Some(fresh);
    }
    let mut report = json!({
        "config_dir": paths.config_dir.display().to_string(),
        "config_path": paths.config_path.display().to_string(),
        "paired": paired,
        "hub": hub,
        "full_control_enabled": config.as_ref().map(|c| c.full_control_enabled),
        "gateway_id": config.as_ref().map(|c| c.gateway_id.clone()),
        "team_id": config.as_ref().map(|c| c.team_id.clone()),
        "fallback_from": prepared.migrated_from.as_ref().map(|p| p.display().to_string()),
        "providers": null,
        "any_provider_ready": null,
        "process_containment": containment.clone(),
    });
    if !json_output {
        out.info(
            "Gateway doctor report",
            &[
                Row::new("Config dir", Some(out.path(&paths.config_dir))),
                Row::new(
                    "Paired",
                    Some(
                        match (config_exists, paired) {
                            (_, true) => "Yes",
                            (true, false) => "No (the config cannot be used)",
                            (false, false) => "No",
                        }
                        .to_string(),
                    ),
                ),
                Row::new("Hub", hub.as_ref().map(hub_text)),
                Row::new(
                    "Session",
                    hub.as_ref().and_then(|h| match (h.session_valid, running) {
                        (Some(true), _) => Some("Valid".to_string()),
                        (Some(false), _) => Some("Refused: pair again with a new code".to_string()),
                        (None, Some(pid)) if h.reachable => Some(format!(
                            "In use by the running gateway (PID {pid}); see \"panorama-gateway status\""
                        )),
                        (None, _) => None,
                    }),
                ),
                Row::new(
                    "Install full control",
                    config.as_ref().map(|c| {
                        if c.full_control_enabled {
                            "Enabled"
                        } else {
                            "Disabled"
                        }
                        .to_string()
                    }),
                ),
                Row::verbose(
                    "Process containment",
                    Some(format!(
                        "{} ({})",
                        containment["mode"].as_str().unwrap_or("unknown"),
                        containment["reason"]
                            .as_str()
                            .or(containment["error"].as_str())
                            .unwrap_or("")
                    )),
                ),
                Row::verbose("Gateway ID", config.as_ref().map(|c| c.gateway_id.clone())),
                Row::verbose("Team ID", config.as_ref().map(|c| c.team_id.clone())),
            ],
        );
    }
    if !json_output {
        match &hub {
            Some(h) if !h.reachable => out.warn(
                &format!("The hub at {} cannot be reached.", h.url),
                &[Row::new("Error", h.error.clone()), Row::new("Hint", Some("Is the hub running? Check --supabase-url / PANORAMA_SUPABASE_URL and the network.".to_string()))],
            ),
            Some(h) if h.session_valid == Some(false) => out.warn(
                "The hub refused this gateway's session.",
                &[Row::new("Error", h.error.clone()), Row::new("Hint", Some("Run \"panorama-gateway pair <CODE> --force\" with a new pairing code.".to_string()))],
            ),
            _ => {}
        }
    }
    // `--json` prints no progress line and never spins.
    let step = (!json_output).then(|| out.step("Validating providers...", json_output));
    let outcome = network::check_providers(&ProviderCheckRequest {
        paths: paths.clone(),
        config: config.clone(),
        migrated_from: prepared.migrated_from.clone(),
        context: "doctor",
        verbose: ctx.global.verbose,
    });
    drop(step);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if json_output {
                report["error"] = json!(e.to_string());
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            }
            return Err(e);
        }
    };
    if let Some(config) = config.as_mut() {
        config.set_provider_health(&outcome.provider_health);
        config.save(&paths.config_path)?;
    }
    if json_output {
        report["providers"] = serde_json::to_value(&outcome.provider_health).unwrap_or_default();
        report["any_provider_ready"] = json!(outcome.any_provider_ready);
        report["host_only"] = json!(outcome.host_only.is_some());
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    let lines: Vec<String> = outcome
        .provider_health
        .iter()
        .map(|(id, h)| match h.error.as_deref() {
            Some(err) if !err.is_empty() => format!("- {id}: {} ({})", h.status, short_error(err)),
            _ => format!("- {id}: {}", h.status),
        })
        .collect();
    out.info("Provider status:", &[]);
    for line in lines {
        out.info(&format!("  {line}"), &[]);
    }
    if let Some(note) = &outcome.host_only {
        out.info(note, &[]);
    } else if !outcome.any_provider_ready {
        out.warn(
            "No providers passed validation. Install/authenticate a provider before starting the gateway.",
            &[],
        );
    }
    Ok(())
}
