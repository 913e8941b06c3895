//! Crash recovery of jobs an earlier process of this gateway claimed.
//!
//! The runtime records every successful claim in a [`ClaimLedger`] (one
//! small owner-only file per job, fsynced) before the job runs, and
//! releases it once the job's completion is pushed to the [`Outbox`]. A
//! ledger entry that survives into the next process therefore means "this
//! job was running when the gateway died, and its outcome was never
//! queued".
//!
//! At start, before taking new work, the runtime calls
//! [`recover_interrupted_jobs`]. It finalizes every such job (and every job
//! the hub still lists as `running` for this gateway, which catches a claim
//! whose ledger write was lost) through the outbox, the way the spec's
//! shutdown path does (control-plane §10.8.6, §14), but as `failed` with
//! [`RESTART_MESSAGE`]:
//!
//! 1. for a `subagent_run` job whose run row is still `running`:
//!    * when the run's last event is a terminal event (`run_completed`,
//!      `run_failed`, `run_cancelled`: the process died after queueing it
//!      but before the row updates landed), the run is **finalized to the
//!      matching status** (`completed`, `failed`, `cancelled`; CAS
//!      `status=eq.running`), so row and events agree: `completed_at`,
//!      `error` = the event's `reason` (none for `completed`), the error
//!      output envelope (not for `completed`: its output was not kept) and
//!      metadata `{…run metadata, schema_version, runner, subagent_type,
//!      last_run_at, recovered_after_restart: true}` (+ `gateway_error` for
//!      `failed`, `cancelled: true, cancel_state: "acknowledged"` for
//!      `cancelled`); no event is added;
//!    * otherwise the run → `failed` (CAS `status=eq.running`), with `error`, the
//!      error output envelope, `completed_at` and metadata
//!      `{…run metadata, schema_version, runner, subagent_type, last_run_at, gateway_error}`,
//!      after a `run_failed` event `{reason, source:"gateway_restart"}` at
//!      max(`sequence`) + 1 (`duplicate_is_delivered`);
//!    * the subagent → the run's new status (CAS on the status just read)
//!      when it is `running`, or when its `metadata.current_run_id` is this
//!      run and it is not already terminal; same fields, merged into its own
//!      metadata;
//!    * a run row already terminal (the previous process's row update
//!      landed) gets its terminal event if it lacks one, and a subagent still
//!      `running` on it takes the run's status (a completed run's output and
//!      no error; else the run's error);
//! 2. the job → `failed` (CAS `status=eq.running`) with
//!    `result {message, recovered:true}`, `error` and `completed_at`, in
//!    every case above: its own outcome was never queued.
//!
//! Then the ledger entry is released. Every write is conditional or keyed,
//! so running recovery twice, or replaying its outbox entries, is harmless.
//!
//! **Preconditions** (the runtime's job): this is the only live process of
//! the gateway (the PID file), and the outbox delivery task is started
//! ([`Outbox::start`]) so that what the previous process left in the outbox
//! is delivered *before* recovery reads the hub; otherwise a job whose
//! completion was queued but not yet delivered would look interrupted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use panorama_protocol::rows::SubagentRow;
use panorama_protocol::status::SubagentStatus;

use crate::outbox::{ensure_private_dir, fsync_dir, io_err, open_private, Outbox, OutboxError};
use crate::port::writes::{self, error_output as error_envelope};
use crate::port::{ControlPlane, PortError, StatusGuard};
use crate::timestamp::now_iso;

/// The error written on jobs, runs and subagents interrupted by a restart.
pub const RESTART_MESSAGE: &str = "gateway restarted while the job was running";

/// `source` of the `run_failed` event recovery appends.
pub const RESTART_EVENT_SOURCE: &str = "gateway_restart";

/// How long recovery waits for the previous process's outbox entries.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const CLAIM_PREFIX: &str = "claim-";
const CLAIM_SUFFIX: &str = ".json";

/// Owner-only ledger of claimed jobs: one `claim-<job id>.json` file per
/// claim in its directory (0700; files 0600), written atomically and
/// fsynced (tmp file + rename + directory fsync).
#[derive(Clone, Debug)]
pub struct ClaimLedger {
    dir: Arc<PathBuf>,
}

/// A job this gateway claimed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimedJob {
    pub job_id: String,
    pub job_type: String,
    pub payload: serde_json::Value,
    pub claimed_at: String,
    pub pid: u32,
}

/// File name for a job id: ids are UUIDs; anything else is hex-encoded so
/// it cannot escape the directory.
fn claim_file_name(job_id: &str) -> String {
    let safe = !job_id.is_empty()
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        format!("{CLAIM_PREFIX}{job_id}{CLAIM_SUFFIX}")
    } else {
        let hex: String = job_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{CLAIM_PREFIX}x{hex}{CLAIM_SUFFIX}")
    }
}

impl ClaimLedger {
    /// Opens (creating owner-only, 0700) the ledger directory.
    pub fn open(dir: &Path) -> Result<ClaimLedger, OutboxError> {
        ensure_private_dir(dir)?;
        Ok(ClaimLedger {
            dir: Arc::new(dir.to_path_buf()),
        })
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Recorded (fsync'd) right after a successful claim, before the job runs.
    pub fn record(&self, job: &ClaimedJob) -> Result<(), OutboxError> {
        let path = self.dir.join(claim_file_name(&job.job_id));
        let tmp = self
            .dir
            .join(format!("{}.tmp", claim_file_name(&job.job_id)));
        let body = serde_json::to_vec(job).map_err(|e| {
            OutboxError::InvalidWrite(format!(
                "the claim of job {} cannot be serialized: {e}",
                job.job_id
            ))
        })?;
        {
            let mut f = open_private(&tmp, false)?;
            f.write_all(&body).map_err(io_err("writing", &tmp))?;
            f.sync_all().map_err(io_err("syncing", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        fsync_dir(&self.dir)
    }

    /// Removed once the job's completion is pushed to the outbox. Releasing
    /// an unknown job is not an error.
    pub fn release(&self, job_id: &str) -> Result<(), OutboxError> {
        let path = self.dir.join(claim_file_name(job_id));
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Claims recorded and not released, oldest claim first. Unreadable
    /// files (which `record` never leaves behind) are logged and skipped.
    pub fn outstanding(&self) -> Vec<ClaimedJob> {
        let entries = match fs::read_dir(self.dir.as_path()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list the claim ledger");
                return Vec::new();
            }
        };
        let mut jobs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(CLAIM_PREFIX) && name.ends_with(CLAIM_SUFFIX)) {
                continue;
            }
            let path = entry.path();
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ClaimedJob>(&b).map_err(|e| e.to_string()))
            {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable claim ledger entry")
                }
            }
        }
        jobs.sort_by(|a, b| {
            a.claimed_at
                .cmp(&b.claimed_at)
                .then_with(|| a.job_id.cmp(&b.job_id))
        });
        jobs
    }
}

/// What [`recover_interrupted_jobs`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    /// Jobs that were still `running` on the hub; their failure is queued.
    pub recovered_jobs: Vec<String>,
    /// Ledger entries whose job was already terminal (or gone, or no longer
    /// this gateway's); only released.
    pub already_terminal: Vec<String>,
}

fn hub_err(what: impl Into<String>) -> impl FnOnce(PortError) -> OutboxError {
    let what = what.into();
    move |source| OutboxError::Hub {
        what,
        source: Box::new(source),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn merged(base: Option<&Value>, extra: &Map<String, Value>) -> Value {
    let mut out = match base {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in extra {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

/// Run at start, before taking new work: every ledger entry whose job is still `running` on the hub
/// (and every `gateway_jobs?gateway_id=eq.<gw>&status=eq.running`, to catch claims whose ledger
/// write was lost) is finalized through the outbox as described in the module docs; then the
/// ledger entries are released.
///
/// Errors: a hub read failed ([`OutboxError::Hub`]; nothing was released
/// for the jobs not yet handled, so call it again), the previous process's
/// outbox entries could not be delivered first ([`OutboxError::NotDrained`]),
/// or a local file failed.
pub async fn recover_interrupted_jobs(
    control: &dyn ControlPlane,
    outbox: &Outbox,
    ledger: &ClaimLedger,
    gateway_id: &str,
) -> Result<RecoveryReport, OutboxError> {
    if outbox.pending() > 0 && !outbox.flush(DRAIN_TIMEOUT).await {
        return Err(OutboxError::NotDrained {
            pending: outbox.pending(),
            waited: DRAIN_TIMEOUT,
        });
    }
    let mut report = RecoveryReport::default();
    let ledger_jobs = ledger.outstanding();
    let mut candidates: Vec<String> = ledger_jobs.iter().map(|j| j.job_id.clone()).collect();
    let running = control
        .running_job_ids()
        .await
        .map_err(hub_err("this gateway's running jobs"))?;
    for id in running {
        if !candidates.contains(&id) {
            candidates.push(id);
        }
    }

    for job_id in candidates {
        let job = control
            .job(&job_id)
            .await
            .map_err(hub_err(format!("job {job_id}")))?;
        let interrupted = job.as_ref().is_some_and(|j| {
            str_of(j, "status") == Some("running") && str_of(j, "gateway_id") == Some(gateway_id)
        });
        match (job, interrupted) {
            (Some(job), true) => {
                if str_of(&job, "job_type") == Some("subagent_run") {
                    fail_subagent_run(control, outbox, &job).await?;
                }
                let now = now_iso();
                outbox.push(writes::job_update_if_running(
                    &job_id,
                    json!({
                        "status": "failed",
                        "result": {"message": RESTART_MESSAGE, "recovered": true},
                        "error": RESTART_MESSAGE,
                        "completed_at": now,
                    }),
                ))?;
                tracing::warn!(job_id = %job_id, "job interrupted by a gateway restart; marking it failed");
                report.recovered_jobs.push(job_id.clone());
            }
            _ => report.already_terminal.push(job_id.clone()),
        }
        ledger.release(&job_id)?;
    }
    Ok(report)
}

/// Whether the subagent's `metadata.current_run_id` is `run_id`.
fn current_run_is(subagent: &SubagentRow, run_id: &str) -> bool {
    subagent
        .metadata
        .get("current_run_id")
        .and_then(Value::as_str)
        == Some(run_id)
}

/// Queues the run, subagent and event writes for an interrupted
/// `subagent_run` job whose run is still running.
async fn fail_subagent_run(
    control: &dyn ControlPlane,
    outbox: &Outbox,
    job: &Value,
) -> Result<(), OutboxError> {
    let payload = job.get("payload").cloned().unwrap_or(Value::Null);
    let Some(subagent_id) = str_of(&payload, "subagent_id")
        .or_else(|| str_of(&payload, "subagentId"))
        .map(str::to_string)
    else {
        return Ok(());
    };
    let subagent = control
        .subagent(&subagent_id)
        .await
        .map_err(hub_err(format!("subagent {subagent_id}")))?;
    let Some(subagent) = subagent else {
        return Ok(());
    };
    let requested = panorama_protocol::jobs::resolve_run_id(
        str_of(&payload, "run_id").or_else(|| str_of(&payload, "runId")),
        subagent.input.as_ref().and_then(|i| str_of(i, "run_id")),
    );
    let run = match &requested {
        Some(run_id) => control
            .run(run_id)
            .await
            .map_err(hub_err(format!("subagent run {run_id}")))?
            .filter(|run| run.subagent_id == subagent_id),
        None => control
            .newest_running_run(&subagent_id)
            .await
            .map_err(hub_err(format!(
                "the running run of subagent {subagent_id}"
            )))?,
    };
    let Some(run) = run else {
        return Ok(());
    };
    let run_id = run.id.clone();
    let run_status = run
        .status
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let last_event = control
        .last_run_event(&run_id)
        .await
        .map_err(hub_err(format!("the last event sequence of run {run_id}")))?;
    let next_sequence = last_event.as_ref().map_or(0, |e| e.sequence + 1);
    let last_type = last_event.as_ref().map(|e| e.event_type.as_str());
    let has_terminal_event = matches!(
        last_type,
        Some("run_completed" | "run_failed" | "run_cancelled")
    );
    let event_row = |event_type: &str, reason: &str| {
        json!({
            "run_id": run_id,
            "subagent_id": subagent_id,
            "team_id": subagent.team_id,
            "gateway_id": subagent.gateway_id,
            "sequence": next_sequence,
            "event_type": event_type,
            "payload": {"reason": reason, "source": RESTART_EVENT_SOURCE},
        })
    };
    let current_run_is_this = current_run_is(&subagent, &run_id);
    if run_status != "running" {
        // A run made terminal without its terminal event: an earlier
        // recovery (or job-failure fallback) was killed between its writes.
        // Its events must still end with one terminal event.
        let event_type = match run_status.as_str() {
            "completed" => "run_completed",
            "cancelled" => "run_cancelled",
            "failed" => "run_failed",
            _ => return Ok(()),
        };
        let reason = run.error.as_deref().unwrap_or(RESTART_MESSAGE);
        if !has_terminal_event {
            outbox.push(writes::run_events(event_row(event_type, reason)))?;
            tracing::warn!(run_id = %run_id, "subagent run was terminal without its terminal event; adding it");
        }
        // Same crash window: the run row updated, the subagent not yet.
        if subagent.status.is_running() && current_run_is_this {
            // The subagent takes the run's outcome: a completed run's output
            // and no error; otherwise the run's error.
            let mut extra = Map::new();
            extra.insert("last_run_at".into(), json!(now_iso()));
            let (error, output) = if run_status == "completed" {
                (Value::Null, run.output.clone().unwrap_or(Value::Null))
            } else {
                if run_status == "failed" {
                    extra.insert("gateway_error".into(), json!(reason));
                }
                (json!(reason), error_envelope(reason))
            };
            outbox.push(writes::subagent_update(
                &subagent_id,
                StatusGuard::Running,
                json!({
                    "status": run_status,
                    "error": error,
                    "output": output,
                    "completed_at": now_iso(),
                    "metadata": merged(Some(&subagent.metadata), &extra),
                }),
            ))?;
        }
        return Ok(());
    }
    // The run's last event decides its terminal status: a terminal event
    // means the process died after queueing it but before the row updates
    // landed, and the row must say what the events say.
    let event_reason = last_event
        .as_ref()
        .and_then(|e| str_of(&e.payload, "reason"))
        .filter(|r| !r.trim().is_empty())
        .map(str::to_string);
    let (status, error) = match last_type {
        Some("run_completed") => ("completed", None),
        Some("run_cancelled") => (
            "cancelled",
            Some(event_reason.unwrap_or_else(|| "Cancelled".to_string())),
        ),
        Some("run_failed") => (
            "failed",
            Some(event_reason.unwrap_or_else(|| RESTART_MESSAGE.to_string())),
        ),
        _ => {
            // The terminal event goes first: if this process dies before
            // the row updates are queued, the next recovery finds the run
            // still running and this event in place, finalizes the row to
            // `failed` from it, and does not add a second one.
            outbox.push(writes::run_events(event_row("run_failed", RESTART_MESSAGE)))?;
            ("failed", Some(RESTART_MESSAGE.to_string()))
        }
    };

    let now = now_iso();
    let mut extra = Map::new();
    extra.insert("schema_version".into(), json!(1));
    extra.insert("runner".into(), json!("gateway"));
    extra.insert("subagent_type".into(), json!(subagent.subagent_type));
    extra.insert("last_run_at".into(), json!(now));
    if has_terminal_event {
        extra.insert("recovered_after_restart".into(), json!(true));
    }
    if let Some(e) = error.as_deref().filter(|_| status == "failed") {
        extra.insert("gateway_error".into(), json!(e));
    }
    if status == "cancelled" {
        extra.insert("cancelled".into(), json!(true));
        extra.insert("cancel_state".into(), json!("acknowledged"));
    }
    // The patch of a row: a completed run's output was not kept (it was in
    // the lost update), so it is left as it is.
    let patch = |metadata: Value| {
        let mut p = json!({
            "status": status,
            "error": error,
            "completed_at": now,
            "metadata": metadata,
        });
        if let Some(e) = error.as_deref() {
            p["output"] = error_envelope(e);
        }
        p
    };

    outbox.push(writes::run_update_if_running(
        &run_id,
        patch(merged(Some(&run.metadata), &extra)),
    ))?;

    let sub_status = subagent.status.as_str().to_string();
    let known = sub_status != SubagentStatus::UNKNOWN;
    if subagent.status.is_running()
        || (current_run_is_this && !subagent.status.is_terminal() && known)
    {
        outbox.push(writes::subagent_update(
            &subagent_id,
            StatusGuard::Status(sub_status),
            patch(merged(Some(&subagent.metadata), &extra)),
        ))?;
    }

    if has_terminal_event {
        tracing::warn!(run_id = %run_id, subagent_id = %subagent_id, status, "subagent run interrupted by a gateway restart after its terminal event; finalizing it to match");
        return Ok(());
    }
    tracing::warn!(run_id = %run_id, subagent_id = %subagent_id, "subagent run interrupted by a gateway restart; marking it failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn job(id: &str, at: &str) -> ClaimedJob {
        ClaimedJob {
            job_id: id.into(),
            job_type: "diagnostic".into(),
            payload: json!({"k": 1}),
            claimed_at: at.into(),
            pid: 42,
        }
    }

    #[test]
    fn ledger_records_survive_reopen_and_release_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("claims");
        let ledger = ClaimLedger::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let a = job(
            "11111111-1111-4111-8111-111111111111",
            "2024-01-01T00:00:02Z",
        );
        let b = job(
            "22222222-2222-4222-8222-222222222222",
            "2024-01-01T00:00:01Z",
        );
        ledger.record(&a).unwrap();
        ledger.record(&b).unwrap();
        ledger.record(&a).unwrap(); // idempotent
        let file = dir.join(claim_file_name(&a.job_id));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let reopened = ClaimLedger::open(&dir).unwrap();
        assert_eq!(reopened.outstanding(), vec![b.clone(), a.clone()]);
        reopened.release(&b.job_id).unwrap();
        reopened.release("never-recorded").unwrap();
        assert_eq!(ledger.outstanding(), vec![a]);
    }

    #[test]
    fn ledger_skips_torn_and_foreign_files_and_escapes_odd_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = ClaimLedger::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("claim-broken.json"), b"{\"job_id\":").unwrap();
        fs::write(tmp.path().join("claim-x.json.tmp"), b"{}").unwrap();
        fs::write(tmp.path().join("notes.txt"), b"hi").unwrap();
        let odd = job("../../etc/passwd", "2024-01-01T00:00:00Z");
        ledger.record(&odd).unwrap();
        assert!(claim_file_name(&odd.job_id).starts_with("claim-x"));
        assert!(!claim_file_name(&odd.job_id).contains('/'));
        assert_eq!(ledger.outstanding(), vec![odd.clone()]);
        ledger.release(&odd.job_id).unwrap();
        assert!(ledger.outstanding().is_empty());
    }

    #[test]
    fn metadata_merge_overrides_and_keeps_other_keys() {
        let mut extra = Map::new();
        extra.insert("gateway_error".into(), json!("x"));
        let m = merged(
            Some(&json!({"session_id": "s", "gateway_error": "old"})),
            &extra,
        );
        assert_eq!(m, json!({"session_id": "s", "gateway_error": "x"}));
        assert_eq!(merged(None, &extra), json!({"gateway_error": "x"}));
        let env = error_envelope(RESTART_MESSAGE);
        assert_eq!(env["errors"], json!([RESTART_MESSAGE]));
        assert_eq!(env["content_type"], json!("text"));
    }
}
