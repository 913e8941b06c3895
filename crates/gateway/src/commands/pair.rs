//! `pair <CODE>` / `pair --code <CODE>` (runtime.md §1.6.1).

use std::path::Path;

use super::Context;
use crate::backend::{self, Backend, Purpose};
use crate::cli::{parse_bool, PairArgs, StartArgs};
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::network::{self, PairingExchange, PairingRequest, ProviderCheckRequest};
use crate::output::Row;
use crate::paths;

/// Pair device name: `--device-name`, `PANORAMA_GATEWAY_DEVICE_NAME`, host name.
fn device_name(ctx: &Context) -> String {
    ctx.global
        .device_name
        .clone()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| paths::process_env(super::start::DEVICE_NAME_ENV).map(|n| n.trim().to_string()))
        .unwrap_or_else(super::hostname)
}

/// Write the config after a successful exchange (§1.6.1 steps 6–7): a
/// fresh file with exactly the paired keys. The install full-control flag
/// is `requested`, else the existing config's value, else false.
pub fn write_paired_config(
    config_path: &Path,
    exchange: &PairingExchange,
    backend: &Backend,
    device_name: &str,
    requested_full_control: Option<bool>,
) -> Result<GatewayConfig> {
    let existing = GatewayConfig::load_optional(config_path).ok().flatten();
    let full_control = requested_full_control
        .or(existing.map(|c| c.full_control_enabled))
        .unwrap_or(false);
    let mut config = GatewayConfig::default();
    config.supabase_url = backend.url.clone();
    config.supabase_anon_key = backend.anon_key.clone();
    config.access_token = exchange.access_token.clone();
    config.refresh_token = exchange.refresh_token.clone();
    config.gateway_id = exchange.gateway_id.clone();
    config.team_id = exchange.team_id.clone();
    config.full_control_enabled = full_control;
    config.device_name = Some(device_name.to_string());
    config.save_fresh(config_path)?;
    Ok(config)
}

/// Pairing a paired directory replaces its identity (the old gateway row
/// is orphaned): only with `--force`, and never under a running gateway.
fn refuse_repairing(paths: &paths::GatewayPaths, force: bool) -> Result<()> {
    let existing = GatewayConfig::load_optional(&paths.config_path)
        .ok()
        .flatten()
        .filter(|c| !c.gateway_id.is_empty());
    let Some(existing) = existing else {
        return Ok(());
    };
    if !force {
        return Err(GatewayError::cli(
            format!(
                "This config directory is already paired (gateway {}).",
                existing.gateway_id
            ),
            format!(
                "Pairing again replaces its identity and leaves the old gateway behind on the hub (revoke it with \"panorama-hub gateways revoke {}\"). Pass --force to do that, or --config-dir DIR to pair a second gateway elsewhere.",
                existing.gateway_id
            ),
        ));
    }
    super::start::refuse_if_running(paths)
}

pub fn run(ctx: &Context, args: &PairArgs) -> Result<()> {
    let prepared = ctx.prepare()?;
    crate::logfile::init_tracing(None, ctx.global.verbose);
    let paths = &prepared.paths;
    let out = &ctx.out;
    let code = args.pairing_code().ok_or_else(|| {
        GatewayError::cli(
            "Pairing code is required",
            "Usage: panorama-gateway pair <PAIRING_CODE>. Create a code with `panorama-hub pairing-code create --team TEAM` (or your control plane)."
                .to_string(),
        )
    })?;
    let requested_full_control = match args.full_control.as_deref() {
        None => None,
        Some(raw) => Some(parse_bool(raw).ok_or_else(|| {
            // Deviation: Node silently ignores an unparsable value.
            GatewayError::cli(
                format!("Invalid --full-control value \"{raw}\"."),
                "Use true/false, yes/no, on/off or 1/0.".to_string(),
            )
        })?),
    };
    refuse_repairing(paths, args.force)?;
    let step = out.step("Pairing with team...", false);
    let backend = backend::resolve_backend(
        ctx.global.supabase_url.as_deref(),
        ctx.global.anon_key.as_deref(),
        &paths::process_env,
        None,
        Some(&paths.config_path),
        Purpose::Pairing,
    )?;
    let device_name = device_name(ctx);
    let exchange = network::exchange_pairing_code(&PairingRequest {
        backend: backend.clone(),
        code,
        device_name: device_name.clone(),
    })?;
    let mut config = write_paired_config(
        &paths.config_path,
        &exchange,
        &backend,
        &device_name,
        requested_full_control,
    )?;
    step.finish();

    let step = out.step("Validating providers...", false);
    let mut health_summary = None;
    let checked = network::check_providers(&ProviderCheckRequest {
        paths: paths.clone(),
        config: Some(config.clone()),
        migrated_from: prepared.migrated_from.clone(),
        context: "pairing",
        verbose: ctx.global.verbose,
    });
    step.finish();
    match checked {
        Ok(outcome) => {
            config.set_provider_health(&outcome.provider_health);
            config.save(&paths.config_path)?;
            health_summary = Some(
                outcome
                    .provider_health
                    .iter()
                    .map(|(id, h)| format!("{id}:{}", h.status))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if let Some(note) = &outcome.host_only {
                out.info(note, &[]);
            } else if !outcome.any_provider_ready {
                out.warn(
                    "No gateway providers passed validation. Install/authenticate a provider before starting the gateway.",
                    &[Row::verbose("Provider health", health_summary.clone())],
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "Provider validation failed"),
    }

    out.success(
        "Paired to team successfully",
        &[
            Row::new("Config saved", Some(out.path(&paths.config_path))),
            Row::verbose("Gateway ID", Some(config.gateway_id.clone())),
            Row::verbose("Team ID", Some(config.team_id.clone())),
            Row::verbose("Device", Some(device_name)),
            Row::verbose(
                "Install full control",
                Some(crate::output::enabled_label(config.full_control_enabled)),
            ),
            Row::verbose("Provider health", health_summary),
        ],
    );

    // Auto-start (step 12). A failure is a warning: pairing itself worked.
    let start = StartArgs {
        foreground: args.foreground,
        daemon: false,
        metrics_listen: None,
    };
    if let Err(e) = super::start::run(ctx, &start) {
        out.warn(
            "Auto-start failed; run \"panorama-gateway start\" to retry.",
            &[Row::verbose("Error", Some(e.to_string()))],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> PairingExchange {
        PairingExchange {
            access_token: "at".into(),
            refresh_token: "rt".into(),
            gateway_id: "gw".into(),
            team_id: "team".into(),
        }
    }

    #[test]
    fn paired_config_is_fresh_and_keeps_full_control() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.json");
        std::fs::write(
            &path,
            r#"{"full_control_enabled":true,"providerHealth":{},"old":1}"#,
        )
        .unwrap();
        let backend = Backend {
            url: "http://hub".into(),
            anon_key: "anon".into(),
        };
        let c = write_paired_config(&path, &exchange(), &backend, "box", None).unwrap();
        assert!(c.full_control_enabled);
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            vec![
                "supabaseUrl",
                "supabaseAnonKey",
                "accessToken",
                "refreshToken",
                "gatewayId",
                "teamId",
                "full_control_enabled",
                "deviceName"
            ]
        );
        let c = write_paired_config(&path, &exchange(), &backend, "box", Some(false)).unwrap();
        assert!(!c.full_control_enabled);
    }
}
