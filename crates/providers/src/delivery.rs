//! How a run's prompt reaches the agent CLI: on the command line, or on
//! stdin when it is too large for one.
//!
//! `execve` refuses a single argument longer than `MAX_ARG_STRLEN` (128 KiB
//! on Linux) and an argv + environment beyond `ARG_MAX` with `E2BIG`
//! ("Argument list too long"). All three CLIs can read the prompt from
//! stdin instead:
//! - Claude Code `-p` with no prompt argument reads the prompt from stdin
//!   (`--input-format text`, the default; not with `stream-json` input);
//! - Codex `exec -` reads the instructions from stdin;
//! - Gemini CLI reads piped stdin as the prompt when no query is given.
//!
//! [`deliver_prompt`] is pure: given a plan's provider and argv it returns
//! the argv to spawn and the stdin to write, or says which argument is too
//! long, so the job fails with a clear limit instead of a spawn error that
//! would count against the provider's health.

use panorama_protocol::capabilities::ProviderId;

/// Linux `MAX_ARG_STRLEN` (32 pages): the longest single argv string,
/// terminating NUL included, that `execve` accepts.
pub const MAX_ARG_BYTES: usize = 128 * 1024;
/// The budget for all argv strings together: half the common 2 MiB
/// `ARG_MAX` (8 MiB stack / 4), leaving the rest to the environment.
pub const MAX_ARGV_TOTAL_BYTES: usize = 1024 * 1024;
/// Prompts longer than this go on stdin even where argv could take them:
/// they show up in `ps` and a few bytes from the limit is no place to be.
pub const STDIN_PROMPT_THRESHOLD: usize = 64 * 1024;

/// What to spawn: the argv, and the bytes to write to the child's stdin
/// (then close it) when the prompt travels there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

/// The run cannot be started: an argument is over the kernel's limit and
/// cannot be moved to stdin. A job input error, not a provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("The {what} is {bytes} bytes; {provider} takes it on the command line, where one argument is limited to {limit} bytes. Shorten it (a long prompt is passed on stdin and may be larger).")]
    ArgumentTooLong {
        provider: &'static str,
        what: String,
        bytes: usize,
        limit: usize,
    },
    #[error("The command line for {provider} would be {bytes} bytes, over the {limit}-byte limit for all arguments together. Shorten the system prompt, schema or other long settings (a long prompt is passed on stdin and may be larger).")]
    TotalTooLong {
        provider: &'static str,
        bytes: usize,
        limit: usize,
    },
}

/// Where the prompt sits in a plan's argv: the value after the last `-p`
/// for Claude Code, the last (positional) argument for Codex and Gemini —
/// the layout `argv::build_*_plan` produce.
fn prompt_index(provider: ProviderId, args: &[String]) -> Option<usize> {
    match provider {
        ProviderId::ClaudeCode => args
            .iter()
            .rposition(|a| a == "-p")
            .map(|i| i + 1)
            .filter(|i| *i < args.len()),
        ProviderId::Codex | ProviderId::Gemini => args.len().checked_sub(1),
    }
}

/// Can this invocation take its prompt on stdin? Claude Code only with
/// text input (stream-json input expects JSON messages on stdin).
fn stdin_capable(provider: ProviderId, args: &[String]) -> bool {
    match provider {
        ProviderId::ClaudeCode => args
            .windows(2)
            .filter(|w| w[0] == "--input-format")
            .all(|w| w[1] == "text"),
        ProviderId::Codex | ProviderId::Gemini => true,
    }
}

fn argv_bytes(args: &[String]) -> usize {
    args.iter().map(|a| a.len() + 1).sum()
}

/// A readable name for `args[i]`: the flag it is the value of, else its
/// position.
fn describe(args: &[String], i: usize, prompt: Option<usize>) -> String {
    if Some(i) == prompt {
        return "prompt".into();
    }
    match i.checked_sub(1).map(|p| args[p].as_str()) {
        Some(flag) if flag.starts_with('-') => format!("value of {flag}"),
        _ => format!("command-line argument {}", i + 1),
    }
}

/// Decide how the prompt reaches the CLI (see the module docs).
pub fn deliver_prompt(provider: ProviderId, args: &[String]) -> Result<Delivery, DeliveryError> {
    let prompt = prompt_index(provider, args);
    let too_big = |args: &[String]| {
        args.iter().any(|a| a.len() + 1 > MAX_ARG_BYTES) || argv_bytes(args) > MAX_ARGV_TOTAL_BYTES
    };
    let mut delivery = Delivery {
        args: args.to_vec(),
        stdin: None,
    };
    let large_prompt = prompt.is_some_and(|i| args[i].len() > STDIN_PROMPT_THRESHOLD);
    if let Some(i) = prompt.filter(|_| large_prompt || too_big(args)) {
        if stdin_capable(provider, args) {
            let text = match provider {
                ProviderId::Codex => std::mem::replace(&mut delivery.args[i], "-".into()),
                ProviderId::ClaudeCode | ProviderId::Gemini => delivery.args.remove(i),
            };
            delivery.stdin = Some(text);
        }
    }
    let described_prompt = prompt.filter(|_| delivery.stdin.is_none());
    if let Some(i) = delivery
        .args
        .iter()
        .position(|a| a.len() + 1 > MAX_ARG_BYTES)
    {
        return Err(DeliveryError::ArgumentTooLong {
            provider: provider.label(),
            what: describe(&delivery.args, i, described_prompt),
            bytes: delivery.args[i].len(),
            limit: MAX_ARG_BYTES - 1,
        });
    }
    let total = argv_bytes(&delivery.args);
    if total > MAX_ARGV_TOTAL_BYTES {
        return Err(DeliveryError::TotalTooLong {
            provider: provider.label(),
            bytes: total,
            limit: MAX_ARGV_TOTAL_BYTES,
        });
    }
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_short_prompt_stays_on_the_command_line() {
        for provider in [
            ProviderId::ClaudeCode,
            ProviderId::Codex,
            ProviderId::Gemini,
        ] {
            let args = argv(&["--output-format", "json", "-p", "hello"]);
            let d = deliver_prompt(provider, &args).unwrap();
            assert_eq!(d, Delivery { args, stdin: None });
        }
    }

    #[test]
    fn a_large_prompt_moves_to_stdin_in_each_clis_own_way() {
        let big = "x".repeat(STDIN_PROMPT_THRESHOLD + 1);
        let claude = argv(&["--print", "--output-format", "json", "-p", &big]);
        let d = deliver_prompt(ProviderId::ClaudeCode, &claude).unwrap();
        assert_eq!(d.args, argv(&["--print", "--output-format", "json", "-p"]));
        assert_eq!(d.stdin.as_deref(), Some(big.as_str()));

        let codex = argv(&["exec", "--json", &big]);
        let d = deliver_prompt(ProviderId::Codex, &codex).unwrap();
        assert_eq!(d.args, argv(&["exec", "--json", "-"]));
        assert_eq!(d.stdin.as_deref(), Some(big.as_str()));

        let gemini = argv(&["--output-format", "json", &big]);
        let d = deliver_prompt(ProviderId::Gemini, &gemini).unwrap();
        assert_eq!(d.args, argv(&["--output-format", "json"]));
        assert_eq!(d.stdin.as_deref(), Some(big.as_str()));
    }

    #[test]
    fn a_seven_megabyte_prompt_is_delivered() {
        let big = "y".repeat(7 * 1024 * 1024);
        let d = deliver_prompt(ProviderId::Codex, &argv(&["exec", &big])).unwrap();
        assert_eq!(d.stdin.map(|s| s.len()), Some(big.len()));
    }

    #[test]
    fn stream_json_input_cannot_take_a_text_prompt_so_the_limit_is_reported() {
        let big = "z".repeat(MAX_ARG_BYTES);
        let args = argv(&["--input-format", "stream-json", "-p", &big]);
        let err = deliver_prompt(ProviderId::ClaudeCode, &args).unwrap_err();
        assert_eq!(
            err,
            DeliveryError::ArgumentTooLong {
                provider: "Claude",
                what: "prompt".into(),
                bytes: MAX_ARG_BYTES,
                limit: MAX_ARG_BYTES - 1,
            }
        );
        // Below the hard limit it stays on argv.
        let fits = "z".repeat(STDIN_PROMPT_THRESHOLD + 1);
        let args = argv(&["--input-format", "stream-json", "-p", &fits]);
        assert_eq!(
            deliver_prompt(ProviderId::ClaudeCode, &args).unwrap().stdin,
            None
        );
    }

    #[test]
    fn an_oversized_setting_is_named_in_the_error() {
        let big = "s".repeat(MAX_ARG_BYTES);
        let args = argv(&["--append-system-prompt", &big, "-p", "hi"]);
        let err = deliver_prompt(ProviderId::ClaudeCode, &args).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("The value of --append-system-prompt is 131072 bytes; Claude takes it on the command line, where one argument is limited to 131071 bytes."),
            "{err}"
        );
        // Many arguments each under the per-argument limit, over the total.
        let chunk = "c".repeat(100 * 1024);
        let mut many = vec!["exec".to_string()];
        many.extend(vec![chunk; 11]);
        many.push("prompt".into());
        let err = deliver_prompt(ProviderId::Codex, &many).unwrap_err();
        assert!(matches!(err, DeliveryError::TotalTooLong { .. }), "{err}");
    }
}
