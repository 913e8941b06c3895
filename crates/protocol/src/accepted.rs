//! The two ways a `subagent_run` job arrives (control-plane §10.4, §15) and
//! the later generation's acceptance checks, as pure decisions.
//!
//! - **Seed**: the control plane only enqueues the job; the gateway
//!   allocates the run sequence, inserts the `running` run row and writes the
//!   terminal rows itself.
//! - **Accepted** (the later generation): the control plane accepted the run
//!   before enqueueing the job — the `running` run row exists, the subagent
//!   is `running` with `metadata.current_run_id` — and the gateway verifies
//!   that acceptance instead of creating a run.
//!
//! Which one applies is decided per job from what the control plane did,
//! never from a setting, so one gateway serves both generations at once.

use serde_json::{json, Value};

use crate::jobs::{is_canonical_uuid, HandlerOutcome};
use crate::rows::{SubagentRow, SubagentRunRow};
use crate::status::{SubagentRunStatus, SubagentStatus};

/// How the run of a `subagent_run` job came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunGeneration {
    /// The gateway creates the run (seed 2.29).
    Seed,
    /// The control plane pre-accepted the run (later 2.32).
    Accepted,
}

/// `subagents.metadata.current_run_id`, trimmed, when set.
pub fn current_run_id(subagent: &SubagentRow) -> Option<&str> {
    subagent
        .metadata
        .get("current_run_id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Decides the generation of one job.
///
/// The run was accepted upstream when the job names a run (`payload.run_id`,
/// a UUID) and either a run row with that id already exists, or the
/// subagent is `running` with that run as its `current_run_id`. A seed
/// control plane never creates run rows, so neither can hold for it — except
/// for a job that names a run which already exists, which in the seed
/// protocol could only be a re-delivered job; treating it as accepted makes
/// it a checked no-op instead of a second insert.
pub fn run_generation(
    payload_run_id: Option<&str>,
    subagent: &SubagentRow,
    run_row_exists: bool,
) -> RunGeneration {
    let Some(run_id) = payload_run_id
        .map(str::trim)
        .filter(|id| is_canonical_uuid(id))
    else {
        return RunGeneration::Seed;
    };
    let current = subagent.status == SubagentStatus::Running
        && current_run_id(subagent).is_some_and(|c| c.eq_ignore_ascii_case(run_id));
    if run_row_exists || current {
        RunGeneration::Accepted
    } else {
        RunGeneration::Seed
    }
}

pub const MSG_CURRENT_RUN_MISMATCH: &str =
    "Queued subagent job no longer matches the subagent current_run_id";
pub const MSG_LOAD_FAILED: &str = "Failed to load accepted subagent run";
pub const MSG_UNACCEPTED: &str = "Rejected unaccepted subagent job";
pub const ERR_UNACCEPTED: &str = "Gateway job has no atomically accepted subagent run";
pub const MSG_NO_LONGER_ACTIVE: &str = "Accepted subagent run is no longer active";
pub const MSG_IDENTITY_MISMATCH: &str = "Gateway job does not match its accepted subagent run";
pub const ERR_IDENTITY_MISMATCH: &str = "Accepted subagent run identity mismatch";
pub const MSG_NO_SEQUENCE: &str = "Accepted subagent run has no run sequence";
pub const MSG_RUN_CHANGED: &str =
    "Accepted subagent run changed before gateway execution could start";
pub const MSG_SUBAGENT_CHANGED: &str =
    "Subagent status changed before gateway execution could start";

/// Rows 3a and 3b of §10.2 (accepted runs only): the subagent is still
/// `running`, and still on the job's run.
pub fn check_accepted_subagent(
    subagent: &SubagentRow,
    payload_run_id: &str,
) -> Result<(), HandlerOutcome> {
    let current = current_run_id(subagent);
    let result = |message: &str| {
        json!({"message": message, "subagent_id": subagent.id,
               "expected_run_id": payload_run_id, "current_run_id": current})
    };
    if subagent.status != SubagentStatus::Running {
        let message = format!(
            "Subagent status changed before queued job execution (status={})",
            subagent.status.as_str()
        );
        return Err(HandlerOutcome::cancelled_skip(result(&message), message));
    }
    if current.is_some_and(|c| !c.eq_ignore_ascii_case(payload_run_id)) {
        return Err(HandlerOutcome::cancelled_skip(
            result(MSG_CURRENT_RUN_MISMATCH),
            MSG_CURRENT_RUN_MISMATCH,
        ));
    }
    Ok(())
}

/// What reading the accepted run row gave.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptedRunRead {
    Found(Box<SubagentRunRow>),
    Missing,
    /// The read failed (the control plane's error text, for the log).
    Failed(String),
}

/// §10.3 "later" and §10.4 "later" step 1: the run sequence comes from the
/// subagent's input, and the accepted run is `running` with the job's
/// subagent, sequence and prompt. Returns the run sequence.
pub fn verify_accepted_run(
    subagent_id: &str,
    run_id: &str,
    input_sequence: Option<i64>,
    prompt: &str,
    read: &AcceptedRunRead,
) -> Result<i64, HandlerOutcome> {
    let base =
        |message: &str| json!({"message": message, "subagent_id": subagent_id, "run_id": run_id});
    let Some(sequence) = input_sequence else {
        return Err(HandlerOutcome::cancelled_skip(
            base(MSG_NO_SEQUENCE),
            MSG_NO_SEQUENCE,
        ));
    };
    let run = match read {
        AcceptedRunRead::Failed(_) => {
            return Err(HandlerOutcome::failure(
                base(MSG_LOAD_FAILED),
                MSG_LOAD_FAILED,
            ))
        }
        AcceptedRunRead::Missing => {
            return Err(HandlerOutcome::cancelled_skip(
                base(MSG_UNACCEPTED),
                ERR_UNACCEPTED,
            ))
        }
        AcceptedRunRead::Found(run) => run,
    };
    if run.status != Some(SubagentRunStatus::Running) {
        let status = run.status.map_or("unknown", SubagentRunStatus::as_str);
        let mut result = base(MSG_NO_LONGER_ACTIVE);
        result["run_status"] = json!(status);
        return Err(HandlerOutcome::cancelled_skip(
            result,
            format!("Accepted subagent run is {status}"),
        ));
    }
    let same_prompt = run.prompt.as_deref().map(str::trim) == Some(prompt.trim());
    if run.subagent_id != subagent_id || run.run_sequence != Some(sequence) || !same_prompt {
        return Err(HandlerOutcome::cancelled_skip(
            base(MSG_IDENTITY_MISMATCH),
            ERR_IDENTITY_MISMATCH,
        ));
    }
    Ok(sequence)
}

/// The outcome of a compare-and-set that matched no row (§10.4 "later"
/// steps 3 and 4): the control plane changed the run or the subagent after
/// the checks, so the job stands down without touching either.
pub fn changed_before_start(message: &str, subagent_id: &str, run_id: &str) -> HandlerOutcome {
    HandlerOutcome::cancelled_skip(
        json!({"message": message, "subagent_id": subagent_id, "run_id": run_id}),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::JobStatus;

    const RUN: &str = "6f1c2f9e-3b1a-4c55-9d0e-2a7b8c9d0e1f";
    const OTHER: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    fn sub(status: SubagentStatus, current: Option<&str>) -> SubagentRow {
        SubagentRow {
            id: "sub-1".into(),
            status,
            metadata: json!({"current_run_id": current}),
            ..SubagentRow::default()
        }
    }

    fn run(status: SubagentRunStatus, sequence: i64, prompt: &str) -> SubagentRunRow {
        SubagentRunRow {
            id: RUN.into(),
            subagent_id: "sub-1".into(),
            run_sequence: Some(sequence),
            status: Some(status),
            prompt: Some(prompt.into()),
            ..SubagentRunRow::default()
        }
    }

    fn assert_cancelled_skip(o: &HandlerOutcome, message: &str, error: &str) {
        assert_eq!(o.job_status, Some(JobStatus::Cancelled));
        assert!(o.skip_subagent_failure);
        assert_eq!(o.result.as_ref().unwrap()["message"], message);
        assert_eq!(o.error.as_deref(), Some(error));
    }

    #[test]
    fn generation_follows_what_the_control_plane_did() {
        let idle = sub(SubagentStatus::Idle, None);
        let running = sub(SubagentStatus::Running, Some(RUN));
        assert_eq!(run_generation(None, &running, true), RunGeneration::Seed);
        assert_eq!(
            run_generation(Some("not-a-uuid"), &running, true),
            RunGeneration::Seed
        );
        assert_eq!(run_generation(Some(RUN), &idle, false), RunGeneration::Seed);
        assert_eq!(
            run_generation(Some(RUN), &idle, true),
            RunGeneration::Accepted
        );
        assert_eq!(
            run_generation(Some(RUN), &running, false),
            RunGeneration::Accepted
        );
        // A seed run of this subagent is active and a second seed job comes:
        // still seed (its insert then reports the duplicate).
        assert_eq!(
            run_generation(Some(OTHER), &running, false),
            RunGeneration::Seed
        );
    }

    #[test]
    fn accepted_subagent_must_still_be_running_on_this_run() {
        assert!(check_accepted_subagent(&sub(SubagentStatus::Running, Some(RUN)), RUN).is_ok());
        assert!(check_accepted_subagent(&sub(SubagentStatus::Running, None), RUN).is_ok());
        let o = check_accepted_subagent(&sub(SubagentStatus::Idle, Some(RUN)), RUN).unwrap_err();
        let m = "Subagent status changed before queued job execution (status=idle)";
        assert_cancelled_skip(&o, m, m);
        assert_eq!(o.result.as_ref().unwrap()["expected_run_id"], RUN);
        assert_eq!(o.result.as_ref().unwrap()["current_run_id"], RUN);
        let o =
            check_accepted_subagent(&sub(SubagentStatus::Running, Some(OTHER)), RUN).unwrap_err();
        assert_cancelled_skip(&o, MSG_CURRENT_RUN_MISMATCH, MSG_CURRENT_RUN_MISMATCH);
    }

    #[test]
    fn accepted_run_is_verified_with_the_spec_messages() {
        let found = |r| AcceptedRunRead::Found(Box::new(r));
        let ok = found(run(SubagentRunStatus::Running, 3, "hello"));
        assert_eq!(
            verify_accepted_run("sub-1", RUN, Some(3), " hello ", &ok),
            Ok(3)
        );

        let o = verify_accepted_run("sub-1", RUN, None, "hello", &ok).unwrap_err();
        assert_cancelled_skip(&o, MSG_NO_SEQUENCE, MSG_NO_SEQUENCE);

        let o = verify_accepted_run(
            "sub-1",
            RUN,
            Some(3),
            "hello",
            &AcceptedRunRead::Failed("x".into()),
        )
        .unwrap_err();
        assert_eq!(o.job_status, None, "a failed read fails the job");
        assert!(!o.skip_subagent_failure);
        assert_eq!(o.error.as_deref(), Some(MSG_LOAD_FAILED));

        let o = verify_accepted_run("sub-1", RUN, Some(3), "hello", &AcceptedRunRead::Missing)
            .unwrap_err();
        assert_cancelled_skip(&o, MSG_UNACCEPTED, ERR_UNACCEPTED);

        let cancelled = found(run(SubagentRunStatus::Cancelled, 3, "hello"));
        let o = verify_accepted_run("sub-1", RUN, Some(3), "hello", &cancelled).unwrap_err();
        assert_cancelled_skip(
            &o,
            MSG_NO_LONGER_ACTIVE,
            "Accepted subagent run is cancelled",
        );
        assert_eq!(o.result.as_ref().unwrap()["run_status"], "cancelled");

        for (sid, seq, prompt) in [
            ("sub-2", 3, "hello"),
            ("sub-1", 4, "hello"),
            ("sub-1", 3, "bye"),
        ] {
            let o = verify_accepted_run(sid, RUN, Some(seq), prompt, &ok).unwrap_err();
            assert_cancelled_skip(&o, MSG_IDENTITY_MISMATCH, ERR_IDENTITY_MISMATCH);
        }
    }

    #[test]
    fn a_lost_compare_and_set_stands_down() {
        let o = changed_before_start(MSG_RUN_CHANGED, "sub-1", RUN);
        assert_cancelled_skip(&o, MSG_RUN_CHANGED, MSG_RUN_CHANGED);
    }
}
