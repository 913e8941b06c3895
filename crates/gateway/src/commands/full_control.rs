//! `full-control [enable|disable|status]` (runtime.md §1.6.7).

use super::Context;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::output::Row;

/// What the command should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Set(bool),
}

/// Parse the action: trimmed, lowercased, default `status`;
/// `on|enable|true`, `off|disable|false` (`on|off` as in
/// `panorama-hub gateways full-control`).
pub fn parse_action(action: Option<&str>) -> Result<Action> {
    match action.unwrap_or("status").trim().to_lowercase().as_str() {
        "status" => Ok(Action::Status),
        "enable" | "on" | "true" => Ok(Action::Set(true)),
        "disable" | "off" | "false" => Ok(Action::Set(false)),
        _ => Err(GatewayError::cli(
            "Unknown full-control command.",
            "Use one of: on, off, status".to_string(),
        )),
    }
}

pub fn run(ctx: &Context, action: Option<&str>) -> Result<()> {
    let paths = ctx.paths();
    let mut config = GatewayConfig::load(&paths.config_path).map_err(|e| {
        GatewayError::cli(
            "Gateway config not found. Run \"pair\" first.",
            e.to_string(),
        )
    })?;
    let next = match parse_action(action)? {
        Action::Status => {
            ctx.out.info(
                "Gateway install full control",
                &[
                    Row::new(
                        "Enabled",
                        Some(
                            if config.full_control_enabled {
                                "Yes"
                            } else {
                                "No"
                            }
                            .to_string(),
                        ),
                    ),
                    Row::verbose("Gateway ID", Some(config.gateway_id.clone())),
                ],
            );
            return Ok(());
        }
        Action::Set(next) => next,
    };
    let word = if next { "enabled" } else { "disabled" };
    if config.full_control_enabled == next {
        ctx.out.info(
            &format!("Gateway install full control already {word}."),
            &[],
        );
        return Ok(());
    }
    config.full_control_enabled = next;
    config.save(&paths.config_path)?;
    ctx.out.success(
        &format!("Gateway install full control {word}."),
        &[Row::verbose("Gateway ID", Some(config.gateway_id.clone()))],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(parse_action(None).unwrap(), Action::Status);
        assert_eq!(parse_action(Some(" ENABLE ")).unwrap(), Action::Set(true));
        assert_eq!(parse_action(Some("off")).unwrap(), Action::Set(false));
        let err = parse_action(Some("toggle")).unwrap_err();
        assert_eq!(err.to_string(), "Unknown full-control command.");
        assert_eq!(
            err.details().as_deref(),
            Some("Use one of: on, off, status")
        );
    }
}
