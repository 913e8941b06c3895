//! Transcript files replayed by `panorama-fake-agent`.
//!
//! A transcript is the agent's stdout, line by line, plus optional directive
//! lines starting with `#!fake ` that are never printed:
//! - `#!fake stderr <text>` — write `<text>` + newline to stderr;
//! - `#!fake sleep <ms>` — pause;
//! - `#!fake exit <code>` — the exit code when the transcript ends (last wins);
//! - `#!fake touch <path>` — create an empty file: a test can wait for it to
//!   know the lines before it were printed (e.g. to cancel mid-stream).

/// Prefix of a directive line.
pub const DIRECTIVE_PREFIX: &str = "#!fake ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptStep {
    Stdout(String),
    Stderr(String),
    SleepMs(u64),
    Exit(i32),
    Touch(String),
}

/// Parses a transcript; unknown directives are ignored.
pub fn parse_transcript(text: &str) -> Vec<TranscriptStep> {
    let mut steps = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(DIRECTIVE_PREFIX) else {
            steps.push(TranscriptStep::Stdout(line.to_string()));
            continue;
        };
        let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match verb {
            "stderr" => steps.push(TranscriptStep::Stderr(arg.to_string())),
            "sleep" => steps.extend(arg.trim().parse().ok().map(TranscriptStep::SleepMs)),
            "exit" => steps.extend(arg.trim().parse().ok().map(TranscriptStep::Exit)),
            "touch" if !arg.trim().is_empty() => {
                steps.push(TranscriptStep::Touch(arg.trim().to_string()))
            }
            _ => {}
        }
    }
    steps
}

/// Just the stdout lines of a transcript (what a runner would read).
pub fn stdout_text(text: &str) -> String {
    parse_transcript(text)
        .into_iter()
        .filter_map(|s| match s {
            TranscriptStep::Stdout(l) => Some(l),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exit code a transcript ends with (default 0).
pub fn exit_code(text: &str) -> i32 {
    parse_transcript(text)
        .into_iter()
        .rev()
        .find_map(|s| match s {
            TranscriptStep::Exit(c) => Some(c),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        let t = "{\"a\":1}\n#!fake stderr oops\n#!fake sleep 5\n#!fake bogus\nplain\n#!fake touch /tmp/x\n#!fake exit 2";
        assert_eq!(
            parse_transcript(t),
            vec![
                TranscriptStep::Stdout("{\"a\":1}".into()),
                TranscriptStep::Stderr("oops".into()),
                TranscriptStep::SleepMs(5),
                TranscriptStep::Stdout("plain".into()),
                TranscriptStep::Touch("/tmp/x".into()),
                TranscriptStep::Exit(2),
            ]
        );
        assert_eq!(stdout_text(t), "{\"a\":1}\nplain");
        assert_eq!(exit_code(t), 2);
        assert_eq!(exit_code("x"), 0);
    }
}
