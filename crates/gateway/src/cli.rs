//! The command line (runtime.md §1), parsed with clap.
//!
//! Deviations from the Node gateway's hand-written parser (§1.2), chosen
//! because they only ever turned typos into surprises:
//! * options may appear before or after the command and never swallow a
//!   following command word or `-v` (`--verbose status` is verbose status,
//!   `start --foreground -v` is a verbose foreground start);
//! * `--x=a=b` gives `a=b`, not `a`;
//! * `--verbose=true` is rejected instead of silently meaning "not verbose";
//! * unknown options and a non-numeric `--lines` are errors (exit 1)
//!   instead of being ignored;
//! * `-h`/`--help` show the Node help text; the per-command `--help` is
//!   clap's.
//!
//! Environment variables (§1.3) are read when paths and the backend are
//! resolved, not by clap, so values from a `.env` file (§1.4) apply.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::paths::PathOverrides;

/// The help text: the Node gateway's (§1.1), word for word, then the
/// options only this gateway has.
pub const HELP: &str = r#"
Panorama Gateway

Usage:
  panorama-gateway pair <PAIRING_CODE> [--device-name "My Mac"] [--force]
  panorama-gateway start [--device-name "My Mac"] [--foreground|--daemon]
  panorama-gateway stop
  panorama-gateway status
  panorama-gateway logs [--lines 200] [--no-follow]
  panorama-gateway doctor
  panorama-gateway full-control <on|off|status>
  panorama-gateway service <install|uninstall|status>
  panorama-gateway completions <bash|zsh|fish|elvish|powershell>

Notes:
  Pair automatically starts the gateway when possible.
  Start runs in the background by default for the built CLI. Use --foreground to keep it attached.

Output options:
  --verbose, -v                     Show technical details (paths, IDs, PIDs)

Environment options:
  --env <local|dev|test|stage|prod>  Load .env.<env> from repo root (defaults to .env)
  --env-file <path>                 Load a specific env file
  PANORAMA_ENV                      Same as --env
  PANORAMA_ENV_FILE                 Same as --env-file

CLI overrides:
  --data-dir <path>                 Override the data (config) directory (default: ~/.panorama/gateway)
  --config-path <path>              Override gateway config file
  --log-path <path>                 Override gateway log file
  --pid-path <path>                 Override gateway pid file
  --claude-cli <path>               Override Claude CLI command
  --codex-cli <path>                Override Codex CLI command
  --gemini-cli <path>               Override Gemini CLI command

Environment overrides:
  PANORAMA_GATEWAY_CONFIG_DIR
  PANORAMA_GATEWAY_CONFIG_PATH
  PANORAMA_GATEWAY_LOG_PATH
  PANORAMA_GATEWAY_PID_PATH
  PANORAMA_CLAUDE_CLI or CLAUDE_CLI
  PANORAMA_CODEX_CLI or CODEX_CLI
  PANORAMA_GEMINI_CLI or GEMINI_CLI
  PANORAMA_GATEWAY_AUTO_RESTART (default: on for built CLI, off for dev)
  PANORAMA_GATEWAY_RESTART_CHECK_MS (default: 30000)
  PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS (optional)

Backend (this gateway's additions):
  --hub-url <url>                   Control-plane URL (default: http://127.0.0.1:54321, a local panorama-hub)
  --anon-key <key>                  Control-plane anon key
  PANORAMA_SUPABASE_URL, SUPABASE_URL            Same as --hub-url
  PANORAMA_SUPABASE_ANON_KEY, SUPABASE_ANON_KEY  Same as --anon-key
  --json                            Machine-readable output (status, doctor)
  start --metrics-listen <host:port> Serve Prometheus metrics at /metrics (PANORAMA_GATEWAY_METRICS_LISTEN)
  PANORAMA_GATEWAY_SHUTDOWN_GRACE_MS  How long running jobs may finish at shutdown
  PANORAMA_GATEWAY_LOG              Log filter (e.g. info, debug)
"#;

#[derive(Debug, Parser)]
#[command(
    name = "panorama-gateway",
    version,
    override_help = HELP,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options accepted anywhere on the command line.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Show technical details (paths, IDs, PIDs).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Load .env.<env> from the repo root (local|dev|test|stage|prod).
    #[arg(long = "env", global = true, value_name = "NAME")]
    pub env_name: Option<String>,
    /// Load a specific env file.
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Override the data (config) directory (default ~/.panorama/gateway).
    /// One spelling with `panorama-hub --data-dir`; `--config-dir` (the
    /// reference gateway's) still works, hidden.
    #[arg(
        long = "data-dir",
        alias = "config-dir",
        global = true,
        value_name = "PATH"
    )]
    pub config_dir: Option<PathBuf>,
    /// Override the gateway config file.
    #[arg(long, global = true, value_name = "PATH")]
    pub config_path: Option<PathBuf>,
    /// Override the gateway log file.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Override the gateway PID file.
    #[arg(long, global = true, value_name = "PATH")]
    pub pid_path: Option<PathBuf>,
    /// Override the Claude CLI command.
    #[arg(long, global = true, value_name = "PATH")]
    pub claude_cli: Option<String>,
    /// Override the Codex CLI command.
    #[arg(long, global = true, value_name = "PATH")]
    pub codex_cli: Option<String>,
    /// Override the Gemini CLI command.
    #[arg(long, global = true, value_name = "PATH")]
    pub gemini_cli: Option<String>,
    /// Device label (pair, start).
    #[arg(long, global = true, value_name = "NAME")]
    pub device_name: Option<String>,
    /// Backend URL override (pair, start); beats env and config. One
    /// spelling with `panorama-hub --hub-url`; `--supabase-url` still works, hidden.
    #[arg(
        long = "hub-url",
        alias = "supabase-url",
        global = true,
        value_name = "URL"
    )]
    pub supabase_url: Option<String>,
    /// Print machine-readable JSON (status, doctor); global as in panorama-hub.
    #[arg(long, global = true)]
    pub json: bool,
    /// Backend anon key override (pair, start); beats env and config.
    #[arg(long, global = true, value_name = "KEY")]
    pub anon_key: Option<String>,
}

impl GlobalArgs {
    pub fn path_overrides(&self) -> PathOverrides {
        PathOverrides {
            config_dir: self.config_dir.clone(),
            config_path: self.config_path.clone(),
            log_path: self.log_path.clone(),
            pid_path: self.pid_path.clone(),
        }
    }

    /// `(flag value, env var)` pairs for the provider CLI overrides, which
    /// are copied into the process environment (§1.3).
    pub fn cli_env_overrides(&self) -> Vec<(&'static str, String)> {
        [
            ("PANORAMA_CLAUDE_CLI", &self.claude_cli),
            ("PANORAMA_CODEX_CLI", &self.codex_cli),
            ("PANORAMA_GEMINI_CLI", &self.gemini_cli),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Pair this machine with a team using a pairing code.
    Pair(PairArgs),
    /// Start the gateway (in the background unless --foreground).
    Start(StartArgs),
    /// Stop the background gateway.
    Stop,
    /// Show gateway status.
    Status,
    /// Show (and follow) the gateway log.
    Logs(LogsArgs),
    /// Check the configuration and providers.
    Doctor,
    /// Turn install full control on or off, or show it.
    FullControl(FullControlArgs),
    /// Keep the gateway running as a user service (systemd on Linux, launchd on macOS).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ServiceAction {
    /// Write the service definition and start it (or print how to).
    Install,
    /// Stop the service and remove its definition.
    Uninstall,
    /// Show whether the service is installed (and, with systemd, running).
    Status,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PairArgs {
    /// The pairing code (from `panorama-hub pairing-code create`).
    #[arg(value_name = "PAIRING_CODE")]
    pub code: Option<String>,
    /// The pairing code (alternative to the positional argument).
    #[arg(long = "code", value_name = "PAIRING_CODE")]
    pub code_flag: Option<String>,
    /// Set install full control in the new config (true/false/yes/no/on/off/1/0).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub full_control: Option<String>,
    /// Run the auto-started gateway attached to this terminal.
    #[arg(long)]
    pub foreground: bool,
    /// Replace the identity of an already paired config directory.
    #[arg(long)]
    pub force: bool,
}

impl PairArgs {
    /// The code: positional first, then `--code`; trimmed, blank = none.
    pub fn pairing_code(&self) -> Option<String> {
        self.code
            .iter()
            .chain(self.code_flag.iter())
            .map(|c| c.trim().to_string())
            .find(|c| !c.is_empty())
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct StartArgs {
    /// Run attached to this terminal.
    #[arg(long, conflicts_with = "daemon")]
    pub foreground: bool,
    /// Run in the background (the default).
    #[arg(long, alias = "background")]
    pub daemon: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; keep it on loopback).
    #[arg(long, value_name = "ADDR", env = "PANORAMA_GATEWAY_METRICS_LISTEN", value_parser = crate::metrics::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Number of lines to show; 0 or less shows the whole file.
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    pub lines: i64,
    /// Print once and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct FullControlArgs {
    /// on | off | status (default status); enable/disable also work.
    #[arg(value_name = "on|off|status")]
    pub action: Option<String>,
}

/// Parse a boolean the Node way: `true|1|yes|on`, `false|0|no|off`
/// (trimmed, case-insensitive); anything else is unset.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_work_before_and_after_the_command() {
        let cli = Cli::try_parse_from([
            "pg",
            "--verbose",
            "status",
            "--json",
            "--data-dir",
            "/x",
            "--hub-url",
            "http://h",
        ])
        .unwrap();
        assert!(cli.global.verbose);
        assert!(cli.global.json);
        assert_eq!(cli.global.config_dir, Some(PathBuf::from("/x")));
        assert_eq!(cli.global.supabase_url.as_deref(), Some("http://h"));
        assert!(matches!(cli.command, Some(Command::Status)));
    }

    #[test]
    fn the_old_spellings_still_parse() {
        let cli = Cli::try_parse_from([
            "pg",
            "--json",
            "doctor",
            "--config-dir",
            "/y",
            "--supabase-url",
            "http://old",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.config_dir, Some(PathBuf::from("/y")));
        assert_eq!(cli.global.supabase_url.as_deref(), Some("http://old"));
        assert!(matches!(cli.command, Some(Command::Doctor)));
    }

    #[test]
    fn pair_code_and_full_control() {
        let cli = Cli::try_parse_from(["pg", "pair", "--code", " ABC ", "--full-control"]).unwrap();
        let Some(Command::Pair(args)) = cli.command else {
            panic!("expected pair")
        };
        assert_eq!(args.pairing_code().as_deref(), Some("ABC"));
        assert_eq!(args.full_control.as_deref(), Some("true"));
        let cli = Cli::try_parse_from(["pg", "pair", "XYZ", "--full-control=no"]).unwrap();
        let Some(Command::Pair(args)) = cli.command else {
            panic!("expected pair")
        };
        assert_eq!(args.pairing_code().as_deref(), Some("XYZ"));
        assert_eq!(
            args.full_control.as_deref().and_then(parse_bool),
            Some(false)
        );
    }

    #[test]
    fn start_modes_and_bad_input() {
        let cli = Cli::try_parse_from(["pg", "start", "--background"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Start(StartArgs { daemon: true, .. }))
        ));
        assert!(Cli::try_parse_from(["pg", "start", "--foreground", "--daemon"]).is_err());
        assert!(Cli::try_parse_from(["pg", "logs", "--lines", "abc"]).is_err());
        assert!(Cli::try_parse_from(["pg", "status", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["pg", "frobnicate"]).is_err());
    }

    #[test]
    fn bool_parsing() {
        assert_eq!(parse_bool(" YES "), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
