use panorama_hub::cli::{parse_args, run};

#[tokio::main]
async fn main() {
    use std::io::IsTerminal;
    let cli = parse_args();
    // A closed pipe (`… | head -1`) ends a printing command quietly instead
    // of making a print panic. Not for the commands that hold sockets
    // (serve, up, shell), where a peer's closed connection must stay an
    // error the code handles.
    if !matches!(
        cli.command,
        panorama_hub::cli::Command::Serve { .. }
            | panorama_hub::cli::Command::Up(_)
            | panorama_hub::cli::Command::Shell(_)
    ) {
        panorama_hub::cli::reset_sigpipe();
    }
    // `up` draws spinners on the terminal: only warnings interrupt them.
    let default_filter = match cli.command {
        panorama_hub::cli::Command::Up(_) => "warn",
        _ => "info",
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PANORAMA_HUB_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Errors can quote user input (names, ids, hub answers).
            eprintln!(
                "error: {}",
                panorama_hub::cli::printable_lines(&format!("{e:#}"))
            );
            std::process::exit(1);
        }
    }
}
