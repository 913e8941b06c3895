//! `panorama-bench __agent-shim ARGS…`: stands between the gateway and
//! `panorama-fake-agent` for P3. It forwards every stdout line of the
//! agent at once (flushed) and records when it wrote each one and when the
//! agent exited, in wall-clock microseconds, to `$BENCH_SHIM_OUT`.
//! Probes (`--version`, `--help`) go straight to the agent; runs of fewer
//! than 100 lines (the gateway's provider validation) are not recorded.

use crate::phx::now_us;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

pub fn run(args: &[String]) -> i32 {
    let Some(agent) = std::env::var_os("BENCH_SHIM_AGENT") else {
        eprintln!("BENCH_SHIM_AGENT is not set");
        return 2;
    };
    let probe = args
        .iter()
        .any(|a| matches!(a.as_str(), "--version" | "-v" | "-V" | "--help" | "-h"));
    if probe {
        return Command::new(&agent)
            .args(args)
            .status()
            .map(|s| s.code().unwrap_or(1))
            .unwrap_or(127);
    }
    let mut child = match Command::new(&agent)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawning the fake agent: {e}");
            return 127;
        }
    };
    let mut stamps = Vec::with_capacity(4096);
    let reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut out = std::io::stdout().lock();
    for line in reader.split(b'\n') {
        let Ok(mut line) = line else { break };
        line.push(b'\n');
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            break;
        }
        stamps.push(now_us());
    }
    let code = child.wait().map(|s| s.code().unwrap_or(1)).unwrap_or(1);
    let exit_us = now_us();
    // Only the benchmark's own run (hundreds of lines) is recorded, not
    // the gateway's validation runs.
    let bench_run = stamps.len() >= 100;
    if let Some(path) = std::env::var_os("BENCH_SHIM_OUT").filter(|_| bench_run) {
        let mut text = format!("exit\t{exit_us}\n");
        for (i, us) in stamps.iter().enumerate() {
            text.push_str(&format!("line\t{i}\t{us}\n"));
        }
        let _ = std::fs::write(path, text);
    }
    code
}

/// Parsed shim record: exit time and per-line write times (by line index).
#[derive(Debug, Default, PartialEq)]
pub struct ShimRecord {
    pub exit_us: Option<i64>,
    pub lines: Vec<i64>,
}

pub fn parse(text: &str) -> ShimRecord {
    let mut rec = ShimRecord::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        match f.as_slice() {
            ["exit", us] => rec.exit_us = us.parse().ok(),
            ["line", _, us] => rec.lines.extend(us.parse::<i64>().ok()),
            _ => {}
        }
    }
    rec
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_record() {
        let r = super::parse("exit\t99\nline\t0\t10\nline\t1\t20\njunk\n");
        assert_eq!(r.exit_us, Some(99));
        assert_eq!(r.lines, vec![10, 20]);
    }
}
