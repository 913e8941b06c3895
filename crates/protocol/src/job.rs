//! A claimed job, decoded once (control-plane §8): the handler of each job
//! type receives its typed payload, never the raw JSON again.

use serde_json::Value;

use crate::jobs::{
    complete_job, unsupported_job_type, HandlerOutcome, JobCompletion, ModelRunPayload,
    PayloadError, ShellExecJob, ShellSessionJob, SubagentCancelPayload, SubagentRunPayload,
};
use crate::status::JobType;

/// One job, by type, with its decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Diagnostic,
    ModelRun(ModelRunPayload),
    SubagentRun(SubagentRunPayload),
    SubagentCancel(SubagentCancelPayload),
    /// Seed only. Action-dependent (open, write, read, close…); each part
    /// keeps its parse outcome for the handler's step that checks it.
    ShellSession(ShellSessionJob),
    /// Later only. Each part keeps its parse outcome: the handler checks
    /// them in the spec's order, between the gate's steps.
    ShellExec(ShellExecJob),
}

/// Why a job cannot be handed to a handler: how it completes instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Undecodable {
    /// A malformed payload (the spec's message for its type).
    Payload(JobType, PayloadError),
    /// A job type this gateway does not run.
    Unsupported(JobType),
}

impl Undecodable {
    /// The job's completion (§8.0): a malformed payload fails the job with
    /// its message, as the handler would have; an unknown type is
    /// `Unsupported job type`.
    pub fn completion(&self) -> JobCompletion {
        match self {
            Undecodable::Payload(job_type, e) => {
                let mut completion = complete_job(job_type, HandlerOutcome::from_payload_error(e));
                // No subagent to fall back on: the payload did not name one.
                completion.run_subagent_failure_fallback = false;
                completion
            }
            Undecodable::Unsupported(job_type) => unsupported_job_type(job_type),
        }
    }
}

impl Job {
    /// Decodes a job's payload by its type.
    pub fn decode(job_type: &JobType, payload: &Value) -> Result<Job, Undecodable> {
        let bad = |e: PayloadError| Undecodable::Payload(job_type.clone(), e);
        Ok(match job_type {
            JobType::Diagnostic => Job::Diagnostic,
            JobType::ModelRun => Job::ModelRun(ModelRunPayload::parse(payload).map_err(bad)?),
            JobType::SubagentRun => {
                Job::SubagentRun(SubagentRunPayload::parse(payload).map_err(bad)?)
            }
            JobType::SubagentCancel => {
                Job::SubagentCancel(SubagentCancelPayload::parse(payload).map_err(bad)?)
            }
            JobType::ShellSession => Job::ShellSession(ShellSessionJob::parse(payload)),
            JobType::ShellExec => Job::ShellExec(ShellExecJob::parse(payload)),
            JobType::Unknown(_) => return Err(Undecodable::Unsupported(job_type.clone())),
        })
    }

    pub fn job_type(&self) -> JobType {
        match self {
            Job::Diagnostic => JobType::Diagnostic,
            Job::ModelRun(_) => JobType::ModelRun,
            Job::SubagentRun(_) => JobType::SubagentRun,
            Job::SubagentCancel(_) => JobType::SubagentCancel,
            Job::ShellSession(_) => JobType::ShellSession,
            Job::ShellExec(_) => JobType::ShellExec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::MSG_MISSING_SUBAGENT_ID;
    use crate::status::JobStatus;
    use serde_json::json;

    #[test]
    fn each_type_decodes_to_its_payload() {
        let run = Job::decode(
            &JobType::SubagentRun,
            &json!({"subagent_id": "s1", "run_id": "r1"}),
        )
        .unwrap();
        let Job::SubagentRun(p) = &run else {
            panic!("{run:?}")
        };
        assert_eq!(
            (p.subagent_id.as_str(), p.run_id.as_deref()),
            ("s1", Some("r1"))
        );
        assert_eq!(run.job_type(), JobType::SubagentRun);
        assert_eq!(
            Job::decode(&JobType::Diagnostic, &json!(null)).unwrap(),
            Job::Diagnostic
        );
        let cancel = Job::decode(&JobType::SubagentCancel, &json!({"subagent_id": "s"})).unwrap();
        assert!(matches!(cancel, Job::SubagentCancel(ref c) if c.reason == "Cancelled"));
        // A shell_exec payload decodes even when malformed: its handler
        // reports each part at its step (§8.6).
        let exec = Job::decode(&JobType::ShellExec, &json!({"command": "ls"})).unwrap();
        let Job::ShellExec(exec) = exec else {
            panic!("{exec:?}")
        };
        assert_eq!(
            exec.resource_id.unwrap_err().result_message,
            crate::jobs::MSG_MISSING_RESOURCE_ID
        );
        let exec = Job::decode(
            &JobType::ShellExec,
            &json!({"resource_id": " r1 ", "command": "ls", "timeout_ms": 10_000_000}),
        )
        .unwrap();
        let Job::ShellExec(exec) = exec else {
            panic!("{exec:?}")
        };
        assert_eq!(exec.resource_id.as_deref(), Ok("r1"));
        let request = exec.request.unwrap();
        assert_eq!(
            (request.command.as_str(), request.timeout_ms),
            ("ls", 600_000)
        );
    }

    #[test]
    fn malformed_payloads_fail_with_the_spec_message_and_no_fallback() {
        let e = Job::decode(&JobType::SubagentRun, &json!({"run_id": "r"})).unwrap_err();
        let c = e.completion();
        assert_eq!(c.status, JobStatus::Failed);
        assert_eq!(c.error.as_deref(), Some(MSG_MISSING_SUBAGENT_ID));
        assert_eq!(c.result.unwrap()["message"], MSG_MISSING_SUBAGENT_ID);
        assert!(!c.run_subagent_failure_fallback);

        let e = Job::decode(&JobType::ModelRun, &json!({"model": "m"})).unwrap_err();
        assert_eq!(e.completion().status, JobStatus::Failed);

        let e = Job::decode(&JobType::Unknown("mystery".into()), &json!({})).unwrap_err();
        assert_eq!(
            e,
            Undecodable::Unsupported(JobType::Unknown("mystery".into()))
        );
        assert_eq!(e.completion().status, JobStatus::Failed);
    }
}
