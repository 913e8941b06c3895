//! Durable, ordered delivery of every write that reports an outcome (job
//! completions, run/subagent terminal updates, run events, gateway events).
//!
//! # Guarantees
//!
//! * **Durable before acknowledged.** [`Outbox::push`] appends the write to
//!   an on-disk log and fsyncs it before it returns the sequence number. A
//!   write whose `push` returned survives a crash, a kill or a power loss
//!   and is delivered by the next process that opens the same directory.
//! * **At-least-once.** An entry counts as delivered only after the hub
//!   answered it. What was delivered is recorded lazily: the log is
//!   truncated when nothing is pending, and the "acked up to N" marker is
//!   rewritten at most every [`MARKER_EVERY`] deliveries in between, so a
//!   crash replays at most that many delivered entries. The writes are
//!   therefore designed to be **idempotent on replay**:
//!   conditional updates (`status=eq.running`: 0 rows matched counts as
//!   delivered) and inserts with fixed keys whose 23505 unique violation
//!   counts as delivered (`duplicate_is_delivered`). Edge-function calls are
//!   replayed as they are; only push function calls that tolerate a repeat.
//! * **Strict order.** Entries are delivered one at a time in sequence
//!   order; entry N+1 is not sent before entry N was delivered or
//!   dead-lettered. A batch [`OutboxWrite::Insert`] is one entry (one
//!   request, inserted atomically by the hub). A backlog of consecutive
//!   inserts into one table (a live run's event batches while requests are
//!   slow) goes out as one request, still in order and atomic; if it is
//!   refused (a 23505 one of them may have caused), its entries are sent
//!   again one at a time, each under its own rule.
//! * **Retry forever, never block on bad data.** Transport errors, auth
//!   errors (after the client's own refresh), HTTP 5xx, 401, 408 and 429 are
//!   retried with capped exponential backoff (100 ms doubling up to 5 s).
//!   Any other 4xx (and a response the client cannot decode, or a request
//!   it refuses to build) is permanent: logged at error level, appended to
//!   `dead-letters.jsonl` in the outbox directory, and skipped.
//! * **Never crashes on a torn log.** A last line cut short by a crash is
//!   dropped (its `push` never returned, so nobody was told it was stored);
//!   an unparseable complete line is logged and copied to the dead letters.
//!
//! # Files (all owner-only: directory 0700, files 0600)
//!
//! * `outbox.jsonl`: one `{"seq":N,"write":{…}}` JSON line per entry,
//!   append-only. It is truncated when every entry is delivered, and
//!   rewritten (tmp file + rename) at open and when delivered entries make
//!   up most of a large file.
//! * `outbox.acked`: a delivered sequence number at most [`MARKER_EVERY`]
//!   behind the highest, replaced atomically (tmp file + fsync + rename +
//!   directory fsync); entries at or below it are not replayed.
//! * `dead-letters.jsonl`: `{"seq","write","error","status","code","dead_at"}`
//!   lines for permanently rejected entries, for an operator to inspect.
//!
//! Sequence numbers start at 1 and increase within a process; a restart
//! continues after the highest number in the log or the marker, so a
//! number of an entry that was delivered and truncated away may be used
//! again (nothing keys on them across processes).
//!
//! Only one process may use a directory at a time (the gateway's PID file
//! guarantees that), and [`Outbox::start`] runs at most one delivery task.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

/// The append-only log of entries.
pub const LOG_FILE: &str = "outbox.jsonl";
/// The "delivered up to N" marker.
pub const ACK_FILE: &str = "outbox.acked";

/// At most this many delivered entries are past the on-disk marker while
/// entries are still pending: the most a crash makes a restart replay.
pub const MARKER_EVERY: u64 = 32;
/// Permanently rejected entries.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

/// First retry delay.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Retry delay cap.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Rewrite the log while entries are pending once it is this large and at
/// least half of it is delivered entries.
const COMPACT_BYTES: u64 = 8 * 1024 * 1024;

/// One write the gateway must get to the hub.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum OutboxWrite {
    /// PATCH /rest/v1/<table>?<col>=<op.value>&… with `patch`. Conditional updates
    /// (e.g. status=eq.running) make replays harmless: 0 rows matched is "delivered".
    Update {
        table: String,
        filters: Vec<(String, String)>,
        patch: serde_json::Value,
    },
    /// POST /rest/v1/<table>; rows is an object or an array (a batch, inserted atomically).
    /// With `duplicate_is_delivered`, a 23505 unique violation counts as already delivered.
    Insert {
        table: String,
        rows: serde_json::Value,
        duplicate_is_delivered: bool,
    },
    /// POST /functions/v1/<name>.
    Function {
        name: String,
        body: serde_json::Value,
    },
    /// POST /functions/v1/<name>; where the control plane has no such
    /// function (404), the `fallback` writes instead, in order. An answer of
    /// `{"success": false}` is a permanent rejection. Used for the later
    /// generation's `finalize-gateway-subagent-run` (control-plane §5.3),
    /// whose fallback is the seed's two conditional terminal updates.
    FunctionOrFallback {
        name: String,
        body: serde_json::Value,
        fallback: Vec<OutboxWrite>,
    },
}

impl OutboxWrite {
    /// Refuses writes that can never succeed (caught at `push`, not at delivery).
    fn validate(&self) -> Result<(), String> {
        match self {
            OutboxWrite::Update {
                table,
                filters,
                patch,
            } => {
                if table.trim().is_empty() {
                    return Err("an Update needs a table name".into());
                }
                if filters.is_empty() {
                    return Err(format!(
                        "an Update of {table} needs at least one filter (an unfiltered PATCH would touch every row)"
                    ));
                }
                if let Some((col, expr)) = filters
                    .iter()
                    .find(|(c, e)| c.is_empty() || !e.contains('.'))
                {
                    return Err(format!(
                        "filter {col:?}={expr:?} of the Update of {table} must be a column and an \"<op>.<value>\" expression such as \"eq.running\""
                    ));
                }
                if !patch.is_object() {
                    return Err(format!(
                        "the patch of the Update of {table} must be a JSON object"
                    ));
                }
            }
            OutboxWrite::Insert { table, rows, .. } => {
                if table.trim().is_empty() {
                    return Err("an Insert needs a table name".into());
                }
                let ok = match rows {
                    Value::Object(_) => true,
                    Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_object),
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "the rows of the Insert into {table} must be an object or a non-empty array of objects"
                    ));
                }
            }
            OutboxWrite::Function { name, .. } => {
                if name.trim().is_empty() {
                    return Err("a Function write needs a function name".into());
                }
            }
            OutboxWrite::FunctionOrFallback { name, fallback, .. } => {
                if name.trim().is_empty() {
                    return Err("a FunctionOrFallback write needs a function name".into());
                }
                for write in fallback {
                    if matches!(write, OutboxWrite::FunctionOrFallback { .. }) {
                        return Err(format!(
                            "the fallback of {name} must be plain writes, not another function with a fallback"
                        ));
                    }
                    write.validate()?;
                }
            }
        }
        Ok(())
    }

    /// A short description for logs (`PATCH gateway_jobs`, …).
    pub fn describe(&self) -> String {
        match self {
            OutboxWrite::Update { table, .. } => format!("PATCH /rest/v1/{table}"),
            OutboxWrite::Insert { table, .. } => format!("POST /rest/v1/{table}"),
            OutboxWrite::Function { name, .. } => format!("POST /functions/v1/{name}"),
            OutboxWrite::FunctionOrFallback { name, fallback, .. } => format!(
                "POST /functions/v1/{name} (else {} direct writes)",
                fallback.len()
            ),
        }
    }
}

/// Errors of the outbox and the claim ledger.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("{action} {path} failed: {source}; check that the gateway's config directory exists, belongs to this user and that the disk is not full")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("{path} is not a directory; move that file away so the gateway can create its outbox directory there")]
    NotADirectory { path: PathBuf },
    /// `push` was given a write that can never be delivered (a bug in the caller).
    #[error("invalid outbox write: {0}; fix the code that builds this write")]
    InvalidWrite(String),
    /// Recovery could not read the hub.
    #[error("reading {what} from the hub failed: {source}; recovery must finish before the gateway takes new work, so retry it once the hub is reachable")]
    Hub {
        what: String,
        #[source]
        source: Box<panorama_supabase::Error>,
    },
    /// Recovery needs the writes of the previous process delivered first.
    #[error("{pending} outbox entries from before the restart are still undelivered after {waited:?}; start the outbox delivery task (Outbox::start) before recovery and retry when the hub is reachable")]
    NotDrained { pending: usize, waited: Duration },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (0700) if needed and makes it owner-only.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), OutboxError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(OutboxError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Ok(m) => {
            if m.permissions().mode() & 0o777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("setting owner-only permissions on", dir))?;
            }
        }
        Err(_) => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating directory", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting owner-only permissions on", dir))?;
        }
    }
    Ok(())
}

/// Opens `path` 0600 with `opts` (create), fixing the mode of an existing file.
pub(crate) fn open_private(path: &Path, append: bool) -> Result<File, OutboxError> {
    let mut opts = OpenOptions::new();
    opts.create(true).mode(0o600);
    if append {
        opts.append(true).read(true);
    } else {
        opts.write(true).truncate(true);
    }
    let file = opts.open(path).map_err(io_err("opening", path))?;
    let meta = file
        .metadata()
        .map_err(io_err("reading metadata of", path))?;
    if meta.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting owner-only permissions on", path))?;
    }
    Ok(file)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Replaces `path` atomically with `contents` (tmp + fsync + rename + dir fsync).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), OutboxError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = open_private(&tmp, false)?;
        f.write_all(contents).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    fsync_dir(dir)
}

fn read_optional(path: &Path) -> Result<Vec<u8>, OutboxError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(io_err("reading", path))?;
            Ok(buf)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("opening", path)(e)),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    seq: u64,
    write: OutboxWrite,
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    write: OutboxWrite,
    /// Bytes of its log line, newline included.
    bytes: u64,
}

struct State {
    log: File,
    /// Bytes in the log file.
    log_bytes: u64,
    pending: VecDeque<Entry>,
    /// Bytes of the pending entries' lines.
    pending_bytes: u64,
    next_seq: u64,
    acked: u64,
    /// The value the on-disk marker holds (≤ `acked`).
    marker: u64,
    /// Every entry up to this sequence number is fsynced; only those are
    /// handed to the delivery task.
    synced: u64,
    dead_letters: usize,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    /// Pushes and `notify` wake an idle delivery task.
    wake: Notify,
    /// `notify` also cuts a retry backoff short.
    kick: Notify,
    acked_tx: watch::Sender<u64>,
    running: AtomicBool,
    /// Held by the one `push` that is fsyncing the log for itself and for
    /// every push that appended before it (group commit).
    syncing: Mutex<()>,
}

/// Durable, ordered outbox (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.inner.dir)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// What the log held at open.
struct Loaded {
    pending: VecDeque<Entry>,
    max_seq: u64,
    /// Bytes up to the end of the last complete line.
    complete_len: usize,
    /// Lines that did not parse.
    corrupt: Vec<String>,
    /// Complete lines of already delivered entries.
    delivered_lines: usize,
}

fn parse_log(data: &[u8], acked: u64) -> Loaded {
    let mut loaded = Loaded {
        pending: VecDeque::new(),
        max_seq: acked,
        complete_len: 0,
        corrupt: Vec::new(),
        delivered_lines: 0,
    };
    let mut start = 0;
    while let Some(rel) = data[start..].iter().position(|b| *b == b'\n') {
        let line = &data[start..start + rel];
        let bytes = rel as u64 + 1;
        start += rel + 1;
        loaded.complete_len = start;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(rec) => {
                loaded.max_seq = loaded.max_seq.max(rec.seq);
                if rec.seq <= acked {
                    loaded.delivered_lines += 1;
                } else {
                    loaded.pending.push_back(Entry {
                        seq: rec.seq,
                        write: rec.write,
                        bytes,
                    });
                }
            }
            Err(_) => loaded
                .corrupt
                .push(String::from_utf8_lossy(line).into_owned()),
        }
    }
    loaded
}

fn record_line(seq: u64, write: &OutboxWrite) -> Result<Vec<u8>, OutboxError> {
    let mut line = serde_json::to_vec(&Record {
        seq,
        write: write.clone(),
    })
    .map_err(|e| OutboxError::InvalidWrite(format!("it cannot be serialized: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the files inconsistent
        // (every step is append + fsync or an atomic rename), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Rewrites the log with only the pending entries; reopens the append handle.
    /// Makes every entry up to `seq` durable: returns at once if another
    /// push's fsync already covered it, else fsyncs the log for every line
    /// appended so far (not holding the state lock, so appends go on).
    fn sync_through(&self, seq: u64) -> Result<(), OutboxError> {
        let _turn = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (target, file) = {
            let st = self.lock();
            if st.synced >= seq {
                return Ok(());
            }
            let file = st
                .log
                .try_clone()
                .map_err(io_err("syncing", &self.log_path()))?;
            (st.next_seq - 1, file)
        };
        file.sync_data()
            .map_err(io_err("syncing", &self.log_path()))?;
        let mut st = self.lock();
        st.synced = st.synced.max(target);
        Ok(())
    }

    fn rewrite_log(&self, st: &mut State) -> Result<(), OutboxError> {
        let path = self.log_path();
        let mut buf = Vec::with_capacity(st.pending_bytes as usize);
        for e in &st.pending {
            buf.extend_from_slice(&record_line(e.seq, &e.write)?);
        }
        write_atomic(&path, &buf)?;
        st.log = open_private(&path, true)?;
        st.log_bytes = buf.len() as u64;
        st.pending_bytes = st.log_bytes;
        // The rewritten file holds every pending entry, fsynced.
        st.synced = st.next_seq - 1;
        Ok(())
    }

    fn append_dead_letter(&self, line: &Value) -> Result<(), OutboxError> {
        let path = self.dir.join(DEAD_LETTER_FILE);
        let mut f = open_private(&path, true)?;
        let mut bytes = serde_json::to_vec(line).unwrap_or_default();
        bytes.push(b'\n');
        f.write_all(&bytes)
            .map_err(io_err("appending a dead letter to", &path))?;
        f.sync_data().map_err(io_err("syncing", &path))
    }

    /// Marks `seq` (the front entry) delivered: memory first, then the log
    /// (truncated once nothing is pending, compacted when mostly
    /// delivered), then — at most every [`MARKER_EVERY`] deliveries — the
    /// on-disk marker.
    ///
    /// The marker only spares a restarted gateway from replaying entries
    /// that were already delivered, and replays are harmless by design, so
    /// it is not written (two fsyncs) per entry: that made every outcome
    /// cost three fsyncs on the delivery path and capped a busy gateway at
    /// about a hundred completions a second. When the queue drains, the
    /// truncated log is itself the record that nothing is pending.
    fn ack(&self, seq: u64) {
        let mut st = self.lock();
        if st.pending.front().map(|e| e.seq) == Some(seq) {
            let e = st.pending.pop_front().expect("front exists");
            st.pending_bytes = st.pending_bytes.saturating_sub(e.bytes);
        }
        st.acked = st.acked.max(seq);
        let mut write_marker = false;
        if st.pending.is_empty() {
            // Under the lock: a concurrent `push` must not append between
            // the check and the truncation.
            let path = self.log_path();
            let res = st
                .log
                .set_len(0)
                .and_then(|_| st.log.sync_data())
                .map_err(io_err("truncating", &path));
            match res {
                Ok(()) => {
                    st.log_bytes = 0;
                    st.pending_bytes = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not compact the outbox log");
                    write_marker = true;
                }
            }
        } else {
            if st.log_bytes >= COMPACT_BYTES && st.pending_bytes * 2 <= st.log_bytes {
                if let Err(e) = self.rewrite_log(&mut st) {
                    tracing::warn!(error = %e, "could not compact the outbox log");
                }
            }
            write_marker = st.acked.saturating_sub(st.marker) >= MARKER_EVERY;
        }
        let acked = st.acked;
        drop(st);
        // Written outside the lock so that handlers' pushes never wait for
        // its fsyncs; only the one delivery task calls `ack`.
        if write_marker {
            match write_atomic(&self.dir.join(ACK_FILE), format!("{acked}\n").as_bytes()) {
                Ok(()) => {
                    let mut st = self.lock();
                    st.marker = st.marker.max(acked);
                }
                // The entries were delivered; failing to record that only
                // means they are replayed after a restart.
                Err(e) => {
                    tracing::error!(seq = acked, error = %e, "could not persist the outbox delivery marker; delivered entries will be replayed after a restart")
                }
            }
        }
        self.acked_tx.send_replace(acked);
    }
}

impl Drop for Inner {
    /// A clean close (the last handle dropped) records exactly what was
    /// delivered, so a graceful restart replays nothing.
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if st.acked > st.marker {
            let _ = write_atomic(
                &self.dir.join(ACK_FILE),
                format!("{}\n", st.acked).as_bytes(),
            );
        }
    }
}

/// Result of one delivery attempt.
enum Disposition {
    Delivered,
    Retry(panorama_supabase::Error),
    Permanent(panorama_supabase::Error),
}

/// Retry policy: see the module docs.
fn is_retryable(e: &panorama_supabase::Error) -> bool {
    use panorama_supabase::Error as E;
    match e {
        E::Transport { .. } | E::Auth { .. } => true,
        E::Decode { .. } | E::InvalidRequest(_) => false,
        _ => match e.status() {
            Some(401 | 408 | 429) => true,
            Some(s) if (400..500).contains(&s) => false,
            _ => true,
        },
    }
}

async fn deliver_once(client: &panorama_supabase::Client, write: &OutboxWrite) -> Disposition {
    let res = match write {
        OutboxWrite::FunctionOrFallback {
            name,
            body,
            fallback,
        } => return deliver_function_or_fallback(client, name, body, fallback).await,
        OutboxWrite::Update {
            table,
            filters,
            patch,
        } => {
            let mut q = client.from(table).update(patch.clone());
            for (col, expr) in filters {
                let (op, value) = expr.split_once('.').unwrap_or(("eq", expr.as_str()));
                q = q.filter(col, op, value);
            }
            q.execute().await.map(|_| ())
        }
        OutboxWrite::Insert {
            table,
            rows,
            duplicate_is_delivered,
        } => match client.from(table).insert(rows.clone()).execute().await {
            Err(e) if *duplicate_is_delivered && e.is_unique_violation() => {
                tracing::debug!(%table, "outbox insert hit 23505; counted as already delivered");
                Ok(())
            }
            other => other.map(|_| ()),
        },
        OutboxWrite::Function { name, body } => client
            .functions()
            .invoke(name, body.clone())
            .await
            .map(|_| ()),
    };
    match res {
        Ok(()) => Disposition::Delivered,
        Err(e) if is_retryable(&e) => Disposition::Retry(e),
        Err(e) => Disposition::Permanent(e),
    }
}

/// The function, or where it answers 404 the fallback writes in order (each
/// conditional, so a replay after a partial delivery is harmless).
async fn deliver_function_or_fallback(
    client: &panorama_supabase::Client,
    name: &str,
    body: &Value,
    fallback: &[OutboxWrite],
) -> Disposition {
    match client.functions().invoke(name, body.clone()).await {
        Ok(answer) if answer.get("success") == Some(&Value::Bool(false)) => {
            let reason = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the function answered success: false")
                .to_string();
            Disposition::Permanent(panorama_supabase::Error::InvalidRequest(format!(
                "{name} refused the write: {reason}"
            )))
        }
        Ok(_) => Disposition::Delivered,
        Err(e) if e.status() == Some(404) => {
            tracing::info!(
                function = name,
                "control plane has no such function; writing the rows directly"
            );
            for write in fallback {
                match Box::pin(deliver_once(client, write)).await {
                    Disposition::Delivered => {}
                    other => return other,
                }
            }
            Disposition::Delivered
        }
        Err(e) if is_retryable(&e) => Disposition::Retry(e),
        Err(e) => Disposition::Permanent(e),
    }
}

/// `100 ms · 2^attempt`, capped at 5 s.
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(RETRY_MAX)
}

/// Clears the "a delivery task runs" flag when the task ends or is aborted.
struct RunningGuard(Arc<Inner>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// The most rows, and log bytes, one coalesced insert carries.
const COALESCE_MAX_ROWS: usize = 500;
const COALESCE_MAX_BYTES: u64 = 1 << 20;

/// The rows of an insert the outbox may send together with its neighbours:
/// a batch insert whose duplicate counts as delivered.
fn coalescable(write: &OutboxWrite) -> Option<(&str, Vec<Value>)> {
    match write {
        OutboxWrite::Insert {
            table,
            rows,
            duplicate_is_delivered: true,
        } => Some((
            table.as_str(),
            match rows {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            },
        )),
        _ => None,
    }
}

/// The deliverable entries at the front of `pending` that go out as one
/// request: consecutive inserts into one table (a live run's event batches,
/// queued every 50 ms), within the row and size caps. Returns the write and
/// the sequence numbers it covers (one entry when nothing coalesces).
///
/// Entries are delivered one request at a time, in order; when a request
/// takes longer than the batches come, one entry per request falls
/// further and further behind (a loaded machine: live events seconds
/// late). One request for the backlog keeps up, and stays in order: the
/// hub inserts a bulk insert in one transaction (PostgREST too), so it is
/// all delivered or none.
fn next_request(
    pending: &VecDeque<Entry>,
    synced: u64,
    solo_through: u64,
) -> Option<(OutboxWrite, Vec<u64>)> {
    let first = pending.front().filter(|e| e.seq <= synced)?;
    let solo = || Some((first.write.clone(), vec![first.seq]));
    if first.seq <= solo_through {
        return solo();
    }
    let Some((table, mut rows)) = coalescable(&first.write) else {
        return solo();
    };
    let mut seqs = vec![first.seq];
    let mut bytes = first.bytes;
    for e in pending.iter().skip(1).take_while(|e| e.seq <= synced) {
        let Some((t, more)) = coalescable(&e.write) else {
            break;
        };
        if t != table
            || rows.len() + more.len() > COALESCE_MAX_ROWS
            || bytes + e.bytes > COALESCE_MAX_BYTES
        {
            break;
        }
        rows.extend(more);
        bytes += e.bytes;
        seqs.push(e.seq);
    }
    if seqs.len() == 1 {
        return solo();
    }
    // A 23505 must not count the whole group as delivered (only one of its
    // entries may have landed before): it is reported, and the group is
    // sent again one entry at a time, each with its own 23505 rule.
    Some((
        OutboxWrite::Insert {
            table: table.to_string(),
            rows: Value::Array(rows),
            duplicate_is_delivered: false,
        },
        seqs,
    ))
}

async fn delivery_loop(inner: Arc<Inner>, client: panorama_supabase::Client) {
    let mut attempt: u32 = 0;
    // Retries are logged at warn level on the first failure of an entry and
    // then at most once a minute; the rest at debug level.
    let mut last_warn: Option<std::time::Instant> = None;
    // Entries up to this sequence go out one per request again (a
    // coalesced request of theirs was refused).
    let mut solo_through: u64 = 0;
    loop {
        let next = {
            let st = inner.lock();
            next_request(&st.pending, st.synced, solo_through)
        };
        let Some((write, seqs)) = next else {
            inner.wake.notified().await;
            continue;
        };
        if seqs.len() > 1 {
            match deliver_once(&client, &write).await {
                Disposition::Delivered => {
                    attempt = 0;
                    for seq in seqs {
                        inner.ack(seq);
                    }
                }
                Disposition::Retry(err) => {
                    tracing::debug!(entries = seqs.len(), error = %err, "coalesced outbox insert failed; retrying");
                    let delay = retry_delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = inner.kick.notified() => {}
                    }
                }
                Disposition::Permanent(err) => {
                    tracing::debug!(entries = seqs.len(), error = %err, "coalesced outbox insert refused; sending its entries one at a time");
                    solo_through = *seqs.last().expect("a group has entries");
                }
            }
            continue;
        }
        let entry = {
            let st = inner.lock();
            st.pending.front().cloned()
        };
        let Some(entry) = entry.filter(|e| e.seq == seqs[0]) else {
            continue;
        };
        match deliver_once(&client, &entry.write).await {
            Disposition::Delivered => {
                attempt = 0;
                inner.ack(entry.seq);
            }
            Disposition::Permanent(err) => {
                attempt = 0;
                tracing::error!(
                    seq = entry.seq,
                    request = %entry.write.describe(),
                    error = %err,
                    write = %serde_json::to_string(&entry.write).unwrap_or_default(),
                    "outbox write rejected permanently; moved to {DEAD_LETTER_FILE} and skipped"
                );
                let letter = json!({
                    "seq": entry.seq,
                    "write": entry.write,
                    "error": err.to_string(),
                    "status": err.status(),
                    "code": err.code(),
                    "dead_at": now_iso(),
                });
                match inner.append_dead_letter(&letter) {
                    Ok(()) => inner.lock().dead_letters += 1,
                    Err(e) => tracing::error!(
                        seq = entry.seq,
                        error = %e,
                        "could not write the dead letter; the rejected write is only in this log line"
                    ),
                }
                inner.ack(entry.seq);
            }
            Disposition::Retry(err) => {
                let delay = retry_delay(attempt);
                let loud = attempt == 0
                    || last_warn
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60));
                if loud {
                    last_warn = Some(std::time::Instant::now());
                    tracing::warn!(seq = entry.seq, request = %entry.write.describe(), error = %err, attempt, ?delay, "outbox delivery failed; retrying");
                } else {
                    tracing::debug!(seq = entry.seq, error = %err, attempt, ?delay, "outbox delivery failed; retrying");
                }
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = inner.kick.notified() => {}
                }
            }
        }
    }
}

impl Outbox {
    /// Opens (creating owner-only 0700/0600) the outbox in `dir` and reloads undelivered entries.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        ensure_private_dir(dir)?;
        let ack_path = dir.join(ACK_FILE);
        let ack_raw = read_optional(&ack_path)?;
        let acked = if ack_raw.is_empty() {
            0
        } else {
            match std::str::from_utf8(&ack_raw)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(n) => n,
                None => {
                    tracing::warn!(path = %ack_path.display(), "outbox delivery marker is unreadable; replaying the whole log (replays are idempotent)");
                    0
                }
            }
        };
        let log_path = dir.join(LOG_FILE);
        let data = read_optional(&log_path)?;
        let loaded = parse_log(&data, acked);
        let torn = data.len() - loaded.complete_len;
        if torn > 0 {
            tracing::warn!(bytes = torn, path = %log_path.display(), "dropping a torn last outbox line (written when the previous process stopped)");
        }
        let mut dead_letters = read_optional(&dir.join(DEAD_LETTER_FILE))?
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let (tx, _rx) = watch::channel(acked);
        let pending_bytes = loaded.pending.iter().map(|e| e.bytes).sum();
        let inner = Inner {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                log: open_private(&log_path, true)?,
                log_bytes: data.len() as u64,
                pending: loaded.pending,
                pending_bytes,
                next_seq: loaded.max_seq + 1,
                acked,
                marker: acked,
                synced: loaded.max_seq,
                dead_letters: 0,
            }),
            wake: Notify::new(),
            kick: Notify::new(),
            acked_tx: tx,
            running: AtomicBool::new(false),
            syncing: Mutex::new(()),
        };
        for raw in &loaded.corrupt {
            tracing::error!(line = %raw, "unparseable outbox line; moved to {DEAD_LETTER_FILE}");
            inner.append_dead_letter(&json!({
                "seq": null,
                "raw": raw,
                "error": "unparseable outbox line",
                "dead_at": now_iso(),
            }))?;
            dead_letters += 1;
        }
        {
            let mut st = inner.lock();
            st.dead_letters = dead_letters;
            if torn > 0 || !loaded.corrupt.is_empty() || loaded.delivered_lines > 0 {
                inner.rewrite_log(&mut st)?;
            }
        }
        Ok(Outbox {
            inner: Arc::new(inner),
        })
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends `write`, fsyncs, and only then returns its sequence number. Never blocks on the network.
    ///
    /// Concurrent pushes share fsyncs (group commit): each appends its line
    /// under the state lock, then one of them fsyncs the file for all lines
    /// appended so far while the others wait for it and find their line
    /// already durable. The delivery task only sends entries that are
    /// durable. If the fsync fails, `push` returns the error; the entry
    /// stays queued and becomes deliverable only if a later fsync succeeds.
    pub fn push(&self, write: OutboxWrite) -> Result<u64, OutboxError> {
        write.validate().map_err(OutboxError::InvalidWrite)?;
        let path = self.inner.log_path();
        let seq = {
            let mut st = self.inner.lock();
            let seq = st.next_seq;
            let line = record_line(seq, &write)?;
            if let Err(e) = st.log.write_all(&line) {
                // Cut off a partial line so the next append starts clean.
                let len = st.log_bytes;
                let _ = st.log.set_len(len);
                return Err(io_err("appending to", &path)(e));
            }
            st.next_seq += 1;
            st.log_bytes += line.len() as u64;
            st.pending_bytes += line.len() as u64;
            st.pending.push_back(Entry {
                seq,
                write,
                bytes: line.len() as u64,
            });
            seq
        };
        self.inner.sync_through(seq)?;
        self.inner.wake.notify_one();
        Ok(seq)
    }

    /// Spawns the delivery task: strictly in order, one at a time (a batch Insert is one entry);
    /// transport errors, 5xx, 401 (after the client's own refresh), 408 and 429 are retried with
    /// capped exponential backoff (100 ms … 5 s) forever; other 4xx are permanent: logged with
    /// tracing at error level, moved to a dead-letter file in `dir`, and skipped so they never block the queue.
    ///
    /// Only one task runs per outbox: a second call while one runs logs a
    /// warning and returns an already finished task. Aborting the returned
    /// handle stops delivery (an in-flight write is replayed later).
    pub fn start(&self, client: panorama_supabase::Client) -> tokio::task::JoinHandle<()> {
        if self.inner.running.swap(true, Ordering::SeqCst) {
            tracing::warn!("outbox delivery task already running; not starting a second one");
            return tokio::spawn(async {});
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _guard = RunningGuard(inner.clone());
            delivery_loop(inner, client).await;
        })
    }

    /// Wakes the delivery task now (push also does). Also cuts a retry
    /// backoff short, e.g. when the runtime sees the network come back.
    pub fn notify(&self) {
        self.inner.wake.notify_one();
        self.inner.kick.notify_one();
    }

    /// Waits until every entry pushed before the call is delivered, or `timeout` passes; true when drained.
    /// Dead-lettered entries count as handled.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = {
            let st = self.inner.lock();
            match st.pending.back() {
                None => return true,
                Some(e) => e.seq,
            }
        };
        let mut rx = self.inner.acked_tx.subscribe();
        let drained = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|acked| *acked >= target)).await,
            Ok(Ok(_))
        );
        drained
    }

    /// Entries not yet delivered.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Entries in the dead-letter file (including those of earlier processes).
    pub fn dead_letters(&self) -> usize {
        self.inner.lock().dead_letters
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_function_with_a_fallback_takes_only_plain_writes() {
        let update = OutboxWrite::Update {
            table: "subagents".into(),
            filters: vec![
                ("id".into(), "eq.s1".into()),
                ("status".into(), "eq.running".into()),
            ],
            patch: json!({"status": "failed"}),
        };
        let ok = OutboxWrite::FunctionOrFallback {
            name: "finalize-gateway-subagent-run".into(),
            body: json!({}),
            fallback: vec![update.clone()],
        };
        assert!(ok.validate().is_ok());
        assert_eq!(
            ok.describe(),
            "POST /functions/v1/finalize-gateway-subagent-run (else 1 direct writes)"
        );
        let nested = OutboxWrite::FunctionOrFallback {
            name: "outer".into(),
            body: json!({}),
            fallback: vec![ok.clone()],
        };
        assert!(nested.validate().is_err());
        let bad_fallback = OutboxWrite::FunctionOrFallback {
            name: "f".into(),
            body: json!({}),
            fallback: vec![OutboxWrite::Update {
                table: "subagents".into(),
                filters: vec![],
                patch: json!({}),
            }],
        };
        assert!(
            bad_fallback.validate().is_err(),
            "an unfiltered fallback update is refused"
        );
    }

    use super::*;

    fn event(n: u64) -> OutboxWrite {
        OutboxWrite::Insert {
            table: "gateway_events".into(),
            rows: json!({"message": format!("event {n}")}),
            duplicate_is_delivered: true,
        }
    }

    fn queue(writes: Vec<OutboxWrite>) -> VecDeque<Entry> {
        writes
            .into_iter()
            .enumerate()
            .map(|(i, write)| Entry {
                seq: i as u64 + 1,
                write,
                bytes: 100,
            })
            .collect()
    }

    #[test]
    fn a_backlog_of_inserts_into_one_table_goes_out_as_one_request() {
        let update = OutboxWrite::Update {
            table: "gateway_jobs".into(),
            filters: vec![("id".into(), "eq.j".into())],
            patch: json!({"status": "completed"}),
        };
        let other_table = OutboxWrite::Insert {
            table: "subagent_run_events".into(),
            rows: json!([{"sequence": 0}, {"sequence": 1}]),
            duplicate_is_delivered: true,
        };
        let pending = queue(vec![
            event(1),
            event(2),
            event(3),
            other_table,
            event(4),
            update,
            event(5),
        ]);
        // The three gateway_events inserts, in order, as one insert whose
        // 23505 is not taken for delivery.
        let (write, seqs) = next_request(&pending, 7, 0).unwrap();
        assert_eq!(seqs, vec![1, 2, 3]);
        let OutboxWrite::Insert {
            table,
            rows,
            duplicate_is_delivered,
        } = write
        else {
            panic!("an insert: {write:?}")
        };
        assert_eq!(table, "gateway_events");
        assert!(!duplicate_is_delivered);
        let messages: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["event 1", "event 2", "event 3"]);
        // Not past what is fsync'd, nor past a group that was refused.
        assert_eq!(next_request(&pending, 2, 0).unwrap().1, vec![1, 2]);
        assert_eq!(next_request(&pending, 1, 0).unwrap().1, vec![1]);
        assert!(next_request(&pending, 0, 0).is_none());
        let (write, seqs) = next_request(&pending, 7, 3).unwrap();
        assert_eq!(seqs, vec![1]);
        assert_eq!(write, event(1), "a single entry goes as it is");
    }

    #[test]
    fn a_coalesced_request_stays_under_its_caps() {
        let big = |n: u64| OutboxWrite::Insert {
            table: "subagent_run_events".into(),
            rows: Value::Array((0..100).map(|i| json!({"sequence": n * 100 + i})).collect()),
            duplicate_is_delivered: true,
        };
        let pending = queue((0..8).map(big).collect());
        assert_eq!(
            next_request(&pending, 8, 0).unwrap().1,
            vec![1, 2, 3, 4, 5],
            "500 rows at most"
        );
        let mut heavy = queue((0..3).map(event).collect());
        for e in heavy.iter_mut() {
            e.bytes = COALESCE_MAX_BYTES / 2;
        }
        assert_eq!(next_request(&heavy, 3, 0).unwrap().1, vec![1, 2]);
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn pending_writes(o: &Outbox) -> Vec<(u64, OutboxWrite)> {
        o.inner
            .lock()
            .pending
            .iter()
            .map(|e| (e.seq, e.write.clone()))
            .collect()
    }

    #[test]
    fn push_is_durable_and_reloaded_in_order_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let o = Outbox::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o600);
        let seqs: Vec<u64> = (1..=3).map(|n| o.push(event(n)).unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(o.pending(), 3);
        drop(o); // "crash": nothing else is written on drop
        let o = Outbox::open(&dir).unwrap();
        assert_eq!(
            pending_writes(&o),
            vec![(1, event(1)), (2, event(2)), (3, event(3))]
        );
        assert_eq!(o.push(event(4)).unwrap(), 4);
    }

    #[test]
    fn acked_entries_are_not_reloaded_and_sequences_keep_increasing() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        for n in 1..=3 {
            o.push(event(n)).unwrap();
        }
        o.inner.ack(1);
        o.inner.ack(2);
        assert_eq!(o.pending(), 1);
        drop(o);
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(pending_writes(&o), vec![(3, event(3))]);
        // The reopened log was rewritten without the delivered lines.
        let text = fs::read_to_string(tmp.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        o.inner.ack(3);
        assert_eq!(o.pending(), 0);
        drop(o);
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(o.pending(), 0);
        assert_eq!(
            o.push(event(9)).unwrap(),
            4,
            "numbers continue after compaction"
        );
    }

    #[test]
    fn torn_last_line_is_dropped_and_appends_stay_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        o.push(event(1)).unwrap();
        o.push(event(2)).unwrap();
        drop(o);
        // Simulate a crash in the middle of writing entry 3.
        let path = tmp.path().join(LOG_FILE);
        let full = record_line(3, &event(3)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full[..full.len() / 2]).unwrap();
        drop(f);
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(pending_writes(&o), vec![(1, event(1)), (2, event(2))]);
        assert_eq!(o.dead_letters(), 0, "a torn tail is not a dead letter");
        assert_eq!(o.push(event(3)).unwrap(), 3);
        drop(o);
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(
            pending_writes(&o),
            vec![(1, event(1)), (2, event(2)), (3, event(3))]
        );
    }

    #[test]
    fn corrupt_complete_line_goes_to_dead_letters_without_failing_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOG_FILE);
        let mut data = record_line(1, &event(1)).unwrap();
        data.extend_from_slice(b"{not json}\n");
        data.extend_from_slice(&record_line(2, &event(2)).unwrap());
        fs::write(&path, &data).unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(pending_writes(&o), vec![(1, event(1)), (2, event(2))]);
        assert_eq!(o.dead_letters(), 1);
        let dead = fs::read_to_string(tmp.path().join(DEAD_LETTER_FILE)).unwrap();
        assert!(dead.contains("{not json}"), "{dead}");
        assert_eq!(mode(&tmp.path().join(DEAD_LETTER_FILE)), 0o600);
        drop(o);
        assert_eq!(Outbox::open(tmp.path()).unwrap().dead_letters(), 1);
    }

    #[test]
    fn log_is_truncated_when_everything_is_delivered() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        o.push(event(1)).unwrap();
        o.push(event(2)).unwrap();
        o.inner.ack(1);
        assert!(fs::metadata(tmp.path().join(LOG_FILE)).unwrap().len() > 0);
        o.inner.ack(2);
        assert_eq!(fs::metadata(tmp.path().join(LOG_FILE)).unwrap().len(), 0);
        // The empty log is the record; the marker is not rewritten for it.
        assert!(!tmp.path().join(ACK_FILE).exists());
        // Appending after truncation starts at offset 0 with a clean line.
        assert_eq!(o.push(event(3)).unwrap(), 3);
        drop(o);
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(pending_writes(&o), vec![(3, event(3))]);
    }

    #[test]
    fn concurrent_pushes_share_fsyncs_and_stay_durable_and_ordered() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    (0..50u64)
                        .map(|i| o.push(event(t * 1000 + i)).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
        // Every returned push is durable, hence deliverable.
        assert_eq!(o.inner.lock().synced, 400);
        std::mem::forget(o);
        let o = Outbox::open(tmp.path()).unwrap();
        let reloaded = pending_writes(&o);
        assert_eq!(
            reloaded.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=400).collect::<Vec<u64>>()
        );
        // Each thread's writes keep the order it pushed them in.
        for t in 0..8u64 {
            let mine: Vec<&OutboxWrite> = reloaded
                .iter()
                .map(|(_, w)| w)
                .filter(|w| (0..50).any(|i| **w == event(t * 1000 + i)))
                .collect();
            let expected: Vec<OutboxWrite> = (0..50).map(|i| event(t * 1000 + i)).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_crash_replays_at_most_marker_every_delivered_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        let total = MARKER_EVERY * 3;
        for n in 1..=total {
            o.push(event(n)).unwrap();
        }
        // Deliver all but the last two, then crash: no clean close.
        for seq in 1..=total - 2 {
            o.inner.ack(seq);
        }
        let marker: u64 = fs::read_to_string(tmp.path().join(ACK_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            marker <= total - 2 && total - 2 - marker < MARKER_EVERY,
            "marker {marker}"
        );
        std::mem::forget(o);
        let o = Outbox::open(tmp.path()).unwrap();
        let replayed = pending_writes(&o);
        // Undelivered entries always come back, in order; delivered ones
        // only past the marker.
        assert_eq!(replayed.last().unwrap().0, total);
        assert_eq!(replayed.first().unwrap().0, marker + 1);
        assert!(replayed.len() as u64 <= MARKER_EVERY + 1);
        let seqs: Vec<u64> = replayed.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (marker + 1..=total).collect::<Vec<_>>());
        assert_eq!(o.push(event(0)).unwrap(), total + 1);
    }

    #[test]
    fn crash_between_marker_and_truncation_does_not_replay() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        o.push(event(1)).unwrap();
        o.push(event(2)).unwrap();
        drop(o);
        // Marker written, truncation lost.
        write_atomic(&tmp.path().join(ACK_FILE), b"2\n").unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(o.pending(), 0);
        assert_eq!(o.push(event(3)).unwrap(), 3);
    }

    #[test]
    fn unreadable_marker_replays_instead_of_failing() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        o.push(event(1)).unwrap();
        drop(o);
        fs::write(tmp.path().join(ACK_FILE), b"garbage").unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        assert_eq!(pending_writes(&o), vec![(1, event(1))]);
    }

    #[test]
    fn invalid_writes_are_refused_at_push() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        let unfiltered = OutboxWrite::Update {
            table: "gateway_jobs".into(),
            filters: vec![],
            patch: json!({"status": "failed"}),
        };
        let err = o.push(unfiltered).unwrap_err();
        assert!(err.to_string().contains("at least one filter"), "{err}");
        let no_op = OutboxWrite::Update {
            table: "gateway_jobs".into(),
            filters: vec![("id".into(), "abc".into())],
            patch: json!({"status": "failed"}),
        };
        assert!(matches!(o.push(no_op), Err(OutboxError::InvalidWrite(_))));
        let scalar = OutboxWrite::Insert {
            table: "gateway_events".into(),
            rows: json!(3),
            duplicate_is_delivered: false,
        };
        assert!(matches!(o.push(scalar), Err(OutboxError::InvalidWrite(_))));
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn open_refuses_a_file_in_place_of_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("outbox");
        fs::write(&path, b"x").unwrap();
        let err = Outbox::open(&path).unwrap_err();
        assert!(matches!(err, OutboxError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn retry_policy() {
        use panorama_supabase::Error as E;
        let http = |status| E::Http {
            context: "x".into(),
            status,
            message: "m".into(),
            body: None,
        };
        for s in [500, 502, 503, 401, 408, 429] {
            assert!(is_retryable(&http(s)), "{s}");
        }
        for s in [400, 403, 404, 409, 422] {
            assert!(!is_retryable(&http(s)), "{s}");
        }
        assert!(is_retryable(&E::Transport {
            context: "x".into(),
            message: "refused".into()
        }));
        assert!(!is_retryable(&E::InvalidRequest("bad".into())));
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(30), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn flush_returns_true_when_empty_and_false_on_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        assert!(o.flush(Duration::from_millis(10)).await);
        o.push(event(1)).unwrap();
        assert!(
            !o.flush(Duration::from_millis(20)).await,
            "no delivery task"
        );
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.flush(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        o.inner.ack(1);
        assert!(waiter.await.unwrap());
    }
}
