//! The commands of runtime.md §1.6.

pub mod doctor;
pub mod full_control;
pub mod logs;
pub mod pair;
pub mod service;
pub mod start;
pub mod status;
pub mod stop;

use std::path::PathBuf;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::error::{GatewayError, Result};
use crate::output::{Printer, Row};
use crate::paths::{self, GatewayPaths, PreparedPaths};

/// Shared state of one CLI invocation.
#[derive(Debug, Clone)]
pub struct Context {
    pub global: GlobalArgs,
    pub out: Printer,
    pub home: PathBuf,
    pub cwd: PathBuf,
}

impl Context {
    pub fn new(global: GlobalArgs) -> Result<Self> {
        let home = dirs::home_dir().ok_or_else(|| {
            GatewayError::cli(
                "Could not determine the home directory.",
                "Set HOME, or pass --config-dir.".to_string(),
            )
        })?;
        let cwd = std::env::current_dir()
            .map_err(|e| GatewayError::io("Could not read the current directory", ".", e))?;
        let mut out = Printer::new(global.verbose);
        out.home = Some(home.clone());
        Ok(Context {
            global,
            out,
            home,
            cwd,
        })
    }

    /// Resolve paths from flags and the current process environment.
    pub fn paths(&self) -> GatewayPaths {
        GatewayPaths::resolve(
            &self.global.path_overrides(),
            &paths::process_env,
            &self.home,
            &self.cwd,
        )
    }

    /// Common preparation of `pair`, `start` and `doctor` (§1.6): load the
    /// env file, prepare the config dir (with fallback), re-apply the
    /// flag-to-env copies.
    pub fn prepare(&self) -> Result<PreparedPaths> {
        crate::env::load_env_file(
            self.global.env_name.as_deref(),
            self.global.env_file.as_deref(),
            &self.cwd,
        )?;
        let prepared = paths::prepare_config_dir(&self.paths(), &paths::process_env, &self.home)?;
        if let Some(previous) = &prepared.migrated_from {
            self.out.warn(
                "Gateway config directory not writable; using fallback location.",
                &[
                    Row::verbose("Fallback", self.out.path(&prepared.paths.config_dir)),
                    Row::verbose("Previous", self.out.path(previous)),
                ],
            );
        }
        apply_cli_env_overrides(&self.global);
        Ok(prepared)
    }
}

/// Copy `--claude-cli`/`--codex-cli`/`--gemini-cli` into
/// `PANORAMA_*_CLI` (flag wins over env), for provider discovery. Must run
/// before other threads start.
pub fn apply_cli_env_overrides(global: &GlobalArgs) {
    for (key, value) in global.cli_env_overrides() {
        std::env::set_var(key, value);
    }
}

/// The host name, for the default device name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "gateway".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if name.is_empty() {
        "gateway".to_string()
    } else {
        name
    }
}

/// Run a parsed command line. `None` prints the help text.
pub fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        println!("{}", crate::cli::HELP);
        return Ok(());
    };
    if cli.global.json && !matches!(command, Command::Status | Command::Doctor) {
        return Err(GatewayError::cli(
            "--json is not available for this command.",
            "Only \"status\" and \"doctor\" print JSON; drop --json.".to_string(),
        ));
    }
    let ctx = Context::new(cli.global)?;
    apply_cli_env_overrides(&ctx.global);
    let is_start = matches!(command, Command::Start(_) | Command::Pair(_));
    if !is_start {
        // `start` sets up logging itself once it knows where the log goes.
        crate::logfile::init_tracing(None, ctx.global.verbose);
    }
    match command {
        Command::Pair(args) => pair::run(&ctx, &args),
        Command::Start(args) => start::run(&ctx, &args).map(|_| ()),
        Command::Stop => stop::run(&ctx),
        Command::Status => status::run(&ctx, ctx.global.json),
        Command::Logs(args) => logs::run(&ctx, &args),
        Command::Doctor => doctor::run(&ctx, ctx.global.json),
        Command::FullControl(args) => full_control::run(&ctx, args.action.as_deref()),
        Command::Service { action } => service::run(&ctx, &action),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "panorama-gateway", &mut std::io::stdout());
            Ok(())
        }
    }
}
