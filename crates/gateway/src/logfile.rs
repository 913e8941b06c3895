//! The gateway log file (runtime.md §2.6, §7.1).
//!
//! Deviation from the Node gateway (which lets the file grow for ever): the
//! file is capped at [`DEFAULT_MAX_BYTES`] and rotated to `gateway.log.1`,
//! `.2`, … ([`DEFAULT_KEEP`] old files). Structured records are JSON lines
//! written by a `tracing` layer ([`init_tracing`]); plain CLI lines printed
//! by a daemonized gateway land in the same file because its stdout/stderr
//! point there (and follow the file across rotations).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{GatewayError, Result};
use crate::paths;

/// Size at which the log file is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Number of rotated files kept (`gateway.log.1` … `.N`).
pub const DEFAULT_KEEP: usize = 3;

/// `gateway.log` → `gateway.log.<n>`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut os = path.as_os_str().to_os_string();
    os.push(format!(".{n}"));
    PathBuf::from(os)
}

/// Open `path` for append with mode 0600, its directory 0700; the file is
/// checked for 0600 before and after opening (§2.6).
pub fn open_append_owner_only(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        paths::ensure_owner_only_dir(parent)?;
    }
    paths::ensure_owner_only_file(path)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| GatewayError::io("Could not open log file", path, e))?;
    paths::ensure_owner_only_file(path)?;
    Ok(file)
}

struct State {
    file: File,
}

/// A size-capped, rotating, append-only log file. Cheap to clone.
#[derive(Clone)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    redirect_stdio: bool,
    state: Arc<Mutex<State>>,
}

impl RotatingLog {
    /// Open (or create) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> Result<Self> {
        let file = open_append_owner_only(path)?;
        Ok(RotatingLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            redirect_stdio: false,
            state: Arc::new(Mutex::new(State { file })),
        })
    }

    /// Point this process's stdout and stderr at the log file, now and after
    /// every rotation (used by the daemonized gateway).
    pub fn redirect_stdio(mut self) -> io::Result<Self> {
        self.redirect_stdio = true;
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            dup_onto_stdio(&state.file)?;
        }
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotate(&self, state: &mut State) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        if self.redirect_stdio {
            dup_onto_stdio(&file)?;
        }
        state.file = file;
        Ok(())
    }

    /// Append one record, rotating first if it would exceed the cap.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Re-stat: other writers (our own stdout) also append to the file.
        let size = state.file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + bytes.len() as u64 > self.max_bytes {
            self.rotate(&mut state)?;
        }
        state.file.write_all(bytes)
    }
}

fn dup_onto_stdio(file: &File) -> io::Result<()> {
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 of a valid open descriptor onto the standard streams.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `io::Write` handle for a [`RotatingLog`], usable as a tracing writer.
pub struct LogWriter(RotatingLog);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RotatingLog {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.clone())
    }
}

/// Install the global tracing subscriber.
///
/// * With a log file: JSON lines (timestamp, level, message, fields) to it.
/// * Without: human-readable records on stderr, written when stderr is not
///   a terminal or `verbose` is set (§7.1 gating).
///
/// Calling it twice is harmless (the second call is ignored).
pub fn init_tracing(log: Option<RotatingLog>, verbose: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PANORAMA_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match log {
        Some(log) => {
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_env_filter(filter)
                .with_writer(log)
                .try_init();
        }
        None => {
            if !verbose && io::stderr().is_terminal() {
                return;
            }
            let _ = tracing_subscriber::fmt()
                .with_target(false)
                .with_ansi(crate::output::color_enabled(&io::stderr()))
                .with_env_filter(filter)
                .with_writer(io::stderr)
                .try_init();
        }
    }
}

/// Split log text into lines on `\r?\n`. A final newline does not produce an
/// empty last line (deviation from Node, which printed one).
pub fn split_lines(text: &str) -> Vec<String> {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.is_empty() && text.len() <= 2 {
        return Vec::new();
    }
    trimmed
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

/// The last `n` lines of the log (all lines when `n` is `None`), reaching
/// into rotated files when the current one is shorter. Also returns the size
/// of the current file, where following starts. Fails only if the current
/// file cannot be read.
pub fn tail_lines(path: &Path, n: Option<usize>) -> io::Result<(Vec<String>, u64)> {
    let bytes = fs::read(path)?;
    let size = bytes.len() as u64;
    let mut lines = split_lines(&String::from_utf8_lossy(&bytes));
    let mut rotation = 1;
    while let Some(limit) = n {
        if lines.len() >= limit {
            break;
        }
        let Ok(old) = fs::read(rotated_path(path, rotation)) else {
            break;
        };
        let mut older = split_lines(&String::from_utf8_lossy(&old));
        older.append(&mut lines);
        lines = older;
        rotation += 1;
    }
    if let Some(limit) = n {
        if lines.len() > limit {
            lines.drain(..lines.len() - limit);
        }
    }
    Ok((lines, size))
}

/// Position of a `logs` follower in the log file.
#[derive(Debug, Clone)]
pub struct Follower {
    pub path: PathBuf,
    pub pos: u64,
    inode: Option<u64>,
}

impl Follower {
    /// Start following at byte `pos` (normally the current size).
    pub fn new(path: &Path, pos: u64) -> Self {
        Follower {
            path: path.to_path_buf(),
            pos,
            inode: fs::metadata(path).ok().map(|m| m.ino()),
        }
    }

    /// Bytes appended since the last call. A truncated or rotated file is
    /// read again from the start.
    pub fn read_new(&mut self) -> io::Result<Vec<u8>> {
        let meta = fs::metadata(&self.path)?;
        if Some(meta.ino()) != self.inode || meta.len() < self.pos {
            self.pos = 0;
            self.inode = Some(meta.ino());
        }
        if meta.len() == self.pos {
            return Ok(Vec::new());
        }
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_handles_crlf_and_trailing_newline() {
        assert_eq!(split_lines("a\r\nb\n"), vec!["a", "b"]);
        assert_eq!(split_lines("a\n\nb"), vec!["a", "", "b"]);
        assert!(split_lines("").is_empty());
        assert!(split_lines("\n").is_empty());
    }

    #[test]
    fn rotation_caps_size_and_tail_spans_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.log");
        let log = RotatingLog::open(&path, 20, 2).unwrap();
        for i in 0..10 {
            log.append(format!("line-{i}\n").as_bytes()).unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() <= 20);
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        let (lines, _) = tail_lines(&path, Some(4)).unwrap();
        assert_eq!(lines, vec!["line-6", "line-7", "line-8", "line-9"]);
    }

    #[test]
    fn tracing_records_are_json_lines_in_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.log");
        let log = RotatingLog::open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(log)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(gateway_id = "gw-1", "Gateway running");
        });
        let text = fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(record["message"], "Gateway running");
        assert_eq!(record["gateway_id"], "gw-1");
        assert_eq!(record["level"], "INFO");
    }

    #[test]
    fn follower_sees_appends_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.log");
        fs::write(&path, "old\n").unwrap();
        let (_, size) = tail_lines(&path, None).unwrap();
        let mut follower = Follower::new(&path, size);
        assert!(follower.read_new().unwrap().is_empty());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"new\n").unwrap();
        assert_eq!(follower.read_new().unwrap(), b"new\n");
        fs::write(&path, "x\n").unwrap();
        assert_eq!(follower.read_new().unwrap(), b"x\n");
    }
}
