//! How a daemonized gateway tells the `start` that spawned it whether it
//! came up, so `start` prints `OK` only for a gateway that loaded its
//! config and authenticated, and the child's own error otherwise.
//!
//! The parent hands the child the write end of a pipe as file descriptor
//! [`CHILD_FD`] and names it in [`READY_FD_ENV`]. The child writes one
//! line per [`Signal`] and closes the pipe after `ready` or an error; the
//! parent reads lines until one of those, the pipe closes (the child died)
//! or its deadline passes.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// Names the child's readiness descriptor.
pub const READY_FD_ENV: &str = "PANORAMA_GATEWAY_READY_FD";
/// The descriptor number the write end gets in the child.
pub const CHILD_FD: RawFd = 3;
/// How long `start` waits for the child's verdict.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// One report from the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Config loaded and session authenticated.
    Ready,
    /// The hub could not be reached; the child keeps retrying.
    Waiting(String),
    /// The child failed and exits.
    Failed { message: String, details: String },
}

impl Signal {
    /// One line of the pipe protocol (tabs and newlines in texts become
    /// spaces so a line is always one record).
    pub fn encode(&self) -> String {
        let flat = |s: &str| s.replace(['\n', '\r', '\t'], " ");
        match self {
            Signal::Ready => "ready\n".to_string(),
            Signal::Waiting(why) => format!("waiting\t{}\n", flat(why)),
            Signal::Failed { message, details } => {
                format!("failed\t{}\t{}\n", flat(message), flat(details))
            }
        }
    }

    /// Parse one line; unknown lines are `None`.
    pub fn decode(line: &str) -> Option<Signal> {
        let mut parts = line.trim_end_matches(['\n', '\r']).splitn(3, '\t');
        match parts.next()? {
            "ready" => Some(Signal::Ready),
            "waiting" => Some(Signal::Waiting(parts.next().unwrap_or("").to_string())),
            "failed" => Some(Signal::Failed {
                message: parts.next().unwrap_or("").to_string(),
                details: parts.next().unwrap_or("").to_string(),
            }),
            _ => None,
        }
    }

    fn is_final(&self) -> bool {
        !matches!(self, Signal::Waiting(_))
    }
}

/// The child's write end, taken from the environment once.
static CHILD_PIPE: Mutex<Option<File>> = Mutex::new(None);

/// In the daemon child: adopt the descriptor named by [`READY_FD_ENV`]
/// (close-on-exec from now on, so job processes never inherit it). Call
/// once, early, before other threads start.
pub fn adopt_from_env() {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<RawFd>().ok())
        .filter(|fd| *fd > 2)
    else {
        return;
    };
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: fcntl on a descriptor number only inspects/changes its flags;
    // it fails harmlessly when the descriptor is not open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: the descriptor is open (fcntl succeeded) and was handed to
    // this process for exactly this purpose; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    *CHILD_PIPE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
}

/// In the daemon child: report to the waiting `start`. A no-op when there
/// is no parent waiting (foreground start, or after the final signal).
pub fn notify(signal: &Signal) {
    let mut slot = CHILD_PIPE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = slot.as_mut() {
        // The parent may have given up waiting; that is not our error.
        let _ = file.write_all(signal.encode().as_bytes());
    }
    if signal.is_final() {
        *slot = None;
    }
}

/// What `start` learned from its child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// Running, but still trying to reach the hub.
    Waiting(String),
    Failed {
        message: String,
        details: String,
    },
    /// The pipe closed without a verdict: the child died.
    Exited,
    /// No verdict within the deadline.
    TimedOut,
}

/// In `start`: read the child's signals from `pipe` until a final one,
/// the first `waiting` (the child runs; it keeps retrying on its own), the
/// pipe closing, or `wait` passing.
pub fn wait_for_child(pipe: File, wait: Duration) -> Verdict {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(signal) = Signal::decode(&line) {
                if tx.send(Some(signal)).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(wait) {
        Ok(Some(Signal::Ready)) => Verdict::Ready,
        Ok(Some(Signal::Waiting(why))) => Verdict::Waiting(why),
        Ok(Some(Signal::Failed { message, details })) => Verdict::Failed { message, details },
        Ok(None) => Verdict::Exited,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Verdict::TimedOut,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Verdict::Exited,
    }
}

/// A close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// In the forked child before exec: put `write_fd` at [`CHILD_FD`],
/// inheritable. Only async-signal-safe calls.
pub fn install_in_child(write_fd: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2/fcntl are async-signal-safe; `write_fd` is open.
    unsafe {
        if write_fd == CHILD_FD {
            let flags = libc::fcntl(CHILD_FD, libc::F_GETFD);
            if flags < 0 || libc::fcntl(CHILD_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(write_fd, CHILD_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Longest pause between attempts to reach an unreachable hub at start.
pub const HUB_RETRY_MAX: Duration = Duration::from_secs(30);

/// The pause after `attempt` failed attempts (1 s, 2 s, 4 s … capped).
pub fn hub_retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(HUB_RETRY_MAX)
}

/// Run `attempt` until it succeeds or fails for another reason than an
/// unreachable hub (`unreachable` returns why, for those errors), retrying
/// with backoff and saying so on the terminal and to a waiting `start`.
pub async fn retry_while_unreachable<T, E, Fut>(
    out: &crate::output::Printer,
    url: &str,
    mut attempt: impl FnMut() -> Fut,
    unreachable: impl Fn(&E) -> Option<String>,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let Some(why) = unreachable(&error) else {
            return Err(error);
        };
        let delay = hub_retry_delay(failures);
        failures += 1;
        if failures == 1 {
            notify(&Signal::Waiting(format!(
                "The hub at {url} is not reachable ({why}); the gateway keeps retrying."
            )));
        }
        out.warn(
            &format!(
                "Cannot reach the hub at {url}; retrying in {} s.",
                delay.as_secs()
            ),
            &[crate::output::Row::verbose("Error", Some(why))],
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_retries_back_off_to_a_cap() {
        let delays: Vec<u64> = (0..8).map(|a| hub_retry_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn signals_round_trip_as_single_lines() {
        for signal in [
            Signal::Ready,
            Signal::Waiting("hub down\nretrying".into()),
            Signal::Failed {
                message: "Bad config".into(),
                details: "line 1\tcol 2".into(),
            },
        ] {
            let line = signal.encode();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            let back = Signal::decode(&line).unwrap();
            match (&signal, &back) {
                (Signal::Waiting(_), Signal::Waiting(w)) => assert_eq!(w, "hub down retrying"),
                (Signal::Failed { .. }, Signal::Failed { message, details }) => {
                    assert_eq!(message, "Bad config");
                    assert_eq!(details, "line 1 col 2");
                }
                _ => assert_eq!(signal, back),
            }
        }
        assert_eq!(Signal::decode("hello"), None);
    }

    #[test]
    fn the_parent_sees_ready_failure_death_and_silence() {
        let (r, mut w) = pipe().unwrap();
        w.write_all(b"noise\nready\n").unwrap();
        assert_eq!(wait_for_child(r, Duration::from_secs(5)), Verdict::Ready);

        let (r, w) = pipe().unwrap();
        drop(w);
        assert_eq!(wait_for_child(r, Duration::from_secs(5)), Verdict::Exited);

        let (r, _w) = pipe().unwrap();
        assert_eq!(
            wait_for_child(r, Duration::from_millis(50)),
            Verdict::TimedOut
        );

        let (r, mut w) = pipe().unwrap();
        w.write_all(Signal::Waiting("unreachable".into()).encode().as_bytes())
            .unwrap();
        assert_eq!(
            wait_for_child(r, Duration::from_secs(5)),
            Verdict::Waiting("unreachable".into())
        );
    }
}
