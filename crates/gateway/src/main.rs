use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use panorama_gateway::cli::{Cli, Command, HELP};
use panorama_gateway::commands;
use panorama_gateway::output::{Printer, Row};
use panorama_gateway::GatewayError;

fn main() -> ExitCode {
    // Before any thread starts: a daemon child takes its readiness pipe.
    panorama_gateway::readiness::adopt_from_env();
    if std::env::var_os(panorama_gateway::commands::start::DAEMON_CHILD_ENV).is_some() {
        // Our stdout and stderr are the JSON-lines log.
        panorama_gateway::output::route_to_log();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_failure(err),
    };
    // Printing commands end quietly on a closed pipe (`status | head -1`);
    // the ones that hold network connections keep SIGPIPE ignored.
    if matches!(
        cli.command,
        None | Some(
            Command::Status
                | Command::Logs(_)
                | Command::FullControl(_)
                | Command::Stop
                | Command::Completions { .. }
        )
    ) {
        panorama_gateway::output::reset_sigpipe();
    }
    // A daemonized gateway writes to its log file: always include details there.
    let verbose = cli.global.verbose
        || std::env::var_os(panorama_gateway::commands::start::DAEMON_CHILD_ENV).is_some();
    match commands::run(cli).map_err(anyhow::Error::from) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, verbose);
            ExitCode::FAILURE
        }
    }
}

/// Help and version exit 0; every parse error prints `ERROR …` and exits 1
/// (an unknown command also prints the help text, as in Node).
fn clap_failure(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        kind => {
            if kind == ErrorKind::InvalidSubcommand {
                println!("{HELP}");
            }
            let text = err.render().to_string();
            let text = text.trim_end().trim_start_matches("error: ");
            eprintln!("ERROR {text}");
            ExitCode::FAILURE
        }
    }
}

/// Print an error as `ERROR <message>` with a verbose-only `Details` row;
/// without `--verbose`, say how to see the details.
fn report(err: &anyhow::Error, verbose: bool) {
    let printer = Printer::new(verbose);
    let details = match err.downcast_ref::<GatewayError>() {
        Some(gateway) => gateway.details(),
        None => Some(format!("{err:?}")),
    };
    let mut rows = vec![Row::verbose("Details", details.clone())];
    if !verbose && details.is_some() {
        rows.push(Row::new(
            "Hint",
            Some("re-run with --verbose for details".to_string()),
        ));
    }
    printer.error(&err.to_string(), &rows);
    // A `start` waiting for this daemon child prints the error itself.
    panorama_gateway::readiness::notify(&panorama_gateway::readiness::Signal::Failed {
        message: err.to_string(),
        details: details.unwrap_or_default(),
    });
}
