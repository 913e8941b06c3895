//! Output conventions (runtime.md §1.5): `OK`/plain/`WARN`/`ERROR` lines with
//! two-space-indented detail rows, verbose-only rows and `~` path display.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// One `  <Label>: <value>` row under a message.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub value: Option<String>,
    pub verbose_only: bool,
}

impl Row {
    /// A row that is always shown (when it has a value).
    pub fn new(label: &str, value: impl Into<Option<String>>) -> Self {
        Row {
            label: label.to_string(),
            value: value.into(),
            verbose_only: false,
        }
    }

    /// A row shown only with `--verbose`.
    pub fn verbose(label: &str, value: impl Into<Option<String>>) -> Self {
        Row {
            verbose_only: true,
            ..Row::new(label, value)
        }
    }
}

/// Replace the home directory prefix with `~`.
/// `Enabled` / `Disabled`, as status rows show a switch.
pub fn enabled_label(on: bool) -> String {
    if on { "Enabled" } else { "Disabled" }.to_string()
}

pub fn display_path(path: &Path, home: Option<&Path>) -> String {
    if let Some(home) = home {
        if path == home {
            return "~".to_string();
        }
        if let Ok(rest) = path.strip_prefix(home) {
            return format!("~/{}", rest.display());
        }
    }
    path.display().to_string()
}

/// Render a message with its rows (no trailing newline after the last row).
pub fn render(prefix: &str, message: &str, rows: &[Row], verbose: bool) -> String {
    let mut out = format!("{prefix}{message}");
    for row in rows {
        if row.verbose_only && !verbose {
            continue;
        }
        let Some(value) = row.value.as_deref() else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        let mut lines = value.split('\n');
        out.push_str(&format!(
            "\n  {}: {}",
            row.label,
            lines.next().unwrap_or("")
        ));
        for line in lines {
            out.push_str(&format!("\n  {line}"));
        }
    }
    out
}

/// Set in a daemonized gateway, whose stdout and stderr are its JSON-lines
/// log: CLI lines become log records instead of plain text.
static LOG_ONLY: AtomicBool = AtomicBool::new(false);

/// Route every [`Printer`] line of this process into the log as a JSON
/// record (daemon mode).
pub fn route_to_log() {
    LOG_ONLY.store(true, Ordering::Relaxed);
}

/// The rows of a message as one `Label: value; …` text (all rows: the log
/// always has the details).
fn rows_text(rows: &[Row]) -> Option<String> {
    let parts: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let v = r.value.as_deref()?.trim();
            (!v.is_empty()).then(|| format!("{}: {}", r.label, v))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// One CLI line as a log record: through `tracing` once it is set up,
/// else as a JSON line of the same shape on stderr (the log file).
fn log_record(prefix: &str, message: &str, rows: &[Row]) {
    let details = rows_text(rows);
    if tracing::dispatcher::has_been_set() {
        let details = details.as_deref();
        match prefix.trim() {
            "ERROR" => tracing::error!(details, "{message}"),
            "WARN" => tracing::warn!(details, "{message}"),
            _ => tracing::info!(details, "{message}"),
        }
        return;
    }
    let level = match prefix.trim() {
        "ERROR" => "ERROR",
        "WARN" => "WARN",
        _ => "INFO",
    };
    let mut record = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": level,
        "message": message,
    });
    if let Some(details) = details {
        record["details"] = serde_json::Value::String(details);
    }
    let _ = writeln!(std::io::stderr(), "{record}");
}

/// Restore the default SIGPIPE action (Rust ignores it), so a printing
/// command whose reader went away ends like any Unix tool instead of
/// panicking in `println!`.
pub fn reset_sigpipe() {
    // SAFETY: setting a signal's disposition to its default is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Colour only for a terminal, and never with `NO_COLOR` set to anything
/// non-empty (no-color.org).
pub fn color_enabled(stream: &impl std::io::IsTerminal) -> bool {
    color_allowed(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`color_enabled`]'s rule, pure.
pub fn color_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The line a foreground gateway prints when it takes a job.
pub fn job_taken_line(job_id: &str, job_type: &str) -> String {
    format!("Job {job_id} ({job_type}) started")
}

/// The line a foreground gateway prints when a job ends.
pub fn job_ended_line(
    job_id: &str,
    job_type: &str,
    status: &str,
    error: Option<&str>,
    elapsed: std::time::Duration,
) -> String {
    let mut line = format!(
        "Job {job_id} ({job_type}) {status} in {:.1} s",
        elapsed.as_secs_f64()
    );
    if let Some(error) = error.filter(|e| !e.trim().is_empty()) {
        let first = error.lines().next().unwrap_or("");
        let short: String = first.chars().take(200).collect();
        line.push_str(&format!(": {}", escape_controls(&short)));
    }
    line
}

/// Control characters (other than none) shown escaped, so text from a job
/// or a hub row cannot drive the terminal.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A foreground gateway's job line on stdout; a daemon has the log records.
fn job_line(line: String) {
    if LOG_ONLY.load(Ordering::Relaxed) {
        return;
    }
    let _ = writeln!(std::io::stdout(), "{line}");
}

pub fn job_taken(job_id: &str, job_type: &str) {
    job_line(job_taken_line(job_id, job_type));
}

pub fn job_ended(
    job_id: &str,
    job_type: &str,
    status: &str,
    error: Option<&str>,
    elapsed: std::time::Duration,
) {
    job_line(job_ended_line(job_id, job_type, status, error, elapsed));
}

/// Prints CLI output following the Node gateway's conventions.
#[derive(Debug, Clone)]
pub struct Printer {
    pub verbose: bool,
    pub home: Option<std::path::PathBuf>,
}

impl Printer {
    pub fn new(verbose: bool) -> Self {
        Printer {
            verbose,
            home: dirs::home_dir(),
        }
    }

    pub fn path(&self, path: &Path) -> String {
        display_path(path, self.home.as_deref())
    }

    fn emit(&self, stderr: bool, prefix: &str, message: &str, rows: &[Row]) {
        if LOG_ONLY.load(Ordering::Relaxed) {
            log_record(prefix, message, rows);
            return;
        }
        let text = render(prefix, message, rows, self.verbose);
        // Output errors (closed pipe) are deliberately ignored, like console.log.
        if stderr {
            let _ = writeln!(std::io::stderr(), "{text}");
        } else {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
    }

    pub fn success(&self, message: &str, rows: &[Row]) {
        self.emit(false, "OK ", message, rows);
    }
    pub fn info(&self, message: &str, rows: &[Row]) {
        self.emit(false, "", message, rows);
    }
    pub fn warn(&self, message: &str, rows: &[Row]) {
        self.emit(true, "WARN ", message, rows);
    }
    pub fn error(&self, message: &str, rows: &[Row]) {
        self.emit(true, "ERROR ", message, rows);
    }

    /// A long step announced by the plain line `message` (e.g.
    /// `Validating providers...`). When [`spinners_enabled`] (stderr is a
    /// terminal, not `--json`, not `--verbose`), a spinner with the message
    /// runs on stderr while the step works and the plain line is printed
    /// once it is done; otherwise the plain line is printed at once, so
    /// piped and scripted output is exactly the spec's.
    pub fn step(&self, message: &str, json: bool) -> Step {
        self.step_with(message, spinners_enabled(json, self.verbose))
    }

    /// [`Printer::step`] with the spinner decision made by the caller.
    pub fn step_with(&self, message: &str, spinner: bool) -> Step {
        if !spinner {
            self.info(message, &[]);
            return Step {
                spinner: None,
                message: message.to_string(),
                printer: self.clone(),
            };
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(SPINNER_TICK);
        Step {
            spinner: Some(bar),
            message: message.to_string(),
            printer: self.clone(),
        }
    }
}

/// How often a spinner redraws.
const SPINNER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Spinners only for people: stderr is a terminal, and neither `--json`
/// (machine output) nor `--verbose` (log records share stderr) is set.
pub fn spinners_enabled(json: bool, verbose: bool) -> bool {
    use std::io::IsTerminal;
    !json && !verbose && std::io::stderr().is_terminal()
}

/// A running long step; see [`Printer::step`]. Dropping it (also on an
/// early `?` return) ends the spinner.
#[derive(Debug)]
pub struct Step {
    spinner: Option<indicatif::ProgressBar>,
    message: String,
    printer: Printer,
}

impl Step {
    /// Whether a spinner is shown (false: the plain line was printed).
    pub fn is_spinning(&self) -> bool {
        self.spinner.is_some()
    }

    /// Ends the step (same as dropping it).
    pub fn finish(self) {}
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
            self.printer.info(&self.message, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_skip_blank_and_verbose_only() {
        let rows = [
            Row::new("A", Some("1".to_string())),
            Row::new("Blank", Some("  ".to_string())),
            Row::new("None", None),
            Row::verbose("V", Some("x".to_string())),
        ];
        assert_eq!(render("OK ", "Done", &rows, false), "OK Done\n  A: 1");
        assert_eq!(
            render("OK ", "Done", &rows, true),
            "OK Done\n  A: 1\n  V: x"
        );
    }

    #[test]
    fn multiline_values_are_indented() {
        let rows = [Row::new("Details", Some("one\ntwo".to_string()))];
        assert_eq!(
            render("ERROR ", "Bad", &rows, false),
            "ERROR Bad\n  Details: one\n  two"
        );
    }

    #[test]
    fn steps_without_a_spinner_print_nothing_more() {
        let out = Printer::new(false);
        let step = out.step_with("Validating providers...", false);
        assert!(!step.is_spinning());
        step.finish();
        // Machine output never spins, whatever stderr is.
        assert!(!spinners_enabled(true, false));
        assert!(!spinners_enabled(false, true));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(color_allowed(true, None));
        assert!(color_allowed(true, Some(OsStr::new(""))));
        assert!(!color_allowed(true, Some(OsStr::new("1"))));
        assert!(!color_allowed(false, None));
    }

    #[test]
    fn job_lines_say_what_ran_and_how_it_ended() {
        assert_eq!(
            job_taken_line("j1", "diagnostic"),
            "Job j1 (diagnostic) started"
        );
        assert_eq!(
            job_ended_line(
                "j1",
                "diagnostic",
                "completed",
                None,
                std::time::Duration::from_millis(1234)
            ),
            "Job j1 (diagnostic) completed in 1.2 s"
        );
        assert_eq!(
            job_ended_line(
                "j2",
                "shell_exec",
                "failed",
                Some("bad\u{1b}[2J\nmore"),
                std::time::Duration::ZERO
            ),
            "Job j2 (shell_exec) failed in 0.0 s: bad\\u{1b}[2J"
        );
    }

    #[test]
    fn home_becomes_tilde() {
        let home = Path::new("/home/u");
        assert_eq!(display_path(Path::new("/home/u"), Some(home)), "~");
        assert_eq!(
            display_path(Path::new("/home/u/.panorama/gateway"), Some(home)),
            "~/.panorama/gateway"
        );
        assert_eq!(display_path(Path::new("/tmp/x"), Some(home)), "/tmp/x");
    }
}
