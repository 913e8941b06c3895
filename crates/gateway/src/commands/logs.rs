//! `logs [--lines N] [--no-follow]` (runtime.md §1.6.5).

use std::io::Write;
use std::time::Duration;

use super::Context;
use crate::cli::LogsArgs;
use crate::error::{GatewayError, Result};
use crate::logfile::{self, Follower};
use crate::output::Row;

pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub fn run(ctx: &Context, args: &LogsArgs) -> Result<()> {
    let paths = ctx.paths();
    let out = &ctx.out;
    let limit = usize::try_from(args.lines).ok().filter(|n| *n > 0);
    let (lines, size) = logfile::tail_lines(&paths.log_path, limit).map_err(|e| {
        // Deviation: the Node gateway exits 0 here; every failure exits 1.
        GatewayError::cli(
            "Unable to read gateway log file",
            format!(
                "{}: {e}. Start the gateway with \"panorama-gateway start\" to create it, or pass --log-path.",
                paths.log_path.display()
            ),
        )
    })?;
    let follow = !args.no_follow;
    let header = if follow {
        "Following gateway logs (press Ctrl+C to stop)".to_string()
    } else {
        format!(
            "Showing last {} lines of gateway logs",
            limit.unwrap_or(lines.len())
        )
    };
    out.info(
        &header,
        &[Row::verbose("Log path", Some(out.path(&paths.log_path)))],
    );
    let mut stdout = std::io::stdout();
    if !lines.is_empty() {
        let _ = writeln!(stdout, "{}", lines.join("\n"));
    }
    let _ = stdout.flush();
    if !follow {
        return Ok(());
    }
    let mut follower = Follower::new(&paths.log_path, size);
    let mut last_error: Option<String> = None;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        match follower.read_new() {
            Ok(bytes) => {
                last_error = None;
                let written = stdout.write_all(&bytes).and_then(|_| stdout.flush());
                if !bytes.is_empty() && written.is_err() {
                    // stdout closed (e.g. `| head`): nothing left to do.
                    return Ok(());
                }
            }
            Err(e) => {
                // Report each distinct error once; keep following.
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    out.error(
                        "Failed to tail gateway logs",
                        &[
                            Row::verbose("Log path", Some(out.path(&paths.log_path))),
                            Row::verbose("Error", Some(text.clone())),
                        ],
                    );
                    last_error = Some(text);
                }
            }
        }
    }
}
