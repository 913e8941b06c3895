//! The later generation's run lifecycle against the control plane
//! (control-plane §3.6, §10.4 "later"): read the accepted run, start it with
//! a compare-and-set, and re-read it before its terminal write. Each
//! request goes through the job's control-plane port and is retried while
//! the control plane gives no answer.

use panorama_protocol::accepted::{changed_before_start, AcceptedRunRead, MSG_RUN_CHANGED};
use panorama_protocol::jobs::HandlerOutcome;
use serde_json::{json, Map, Value};

use crate::control_plane::retry_unanswered;
use crate::job_context::JobContext;
use crate::port::{PortError, RunStart};
use crate::timestamp::now_iso;

/// The run row (id, subagent, sequence, status, prompt, metadata).
pub async fn accepted_run(gw: &JobContext, run_id: &str) -> AcceptedRunRead {
    let (row, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagent_runs", || {
        gw.control.run(run_id)
    })
    .await;
    match row {
        Ok(None) => AcceptedRunRead::Missing,
        Ok(Some(run)) => AcceptedRunRead::Found(Box::new(run)),
        Err(PortError::Decode { message, .. }) => {
            AcceptedRunRead::Failed(format!("the run row could not be read: {message}"))
        }
        Err(e) => AcceptedRunRead::Failed(e.to_string()),
    }
}

/// §10.4 "later" step 3. Returns the run's metadata from here on (the
/// control plane's keys with the gateway's start keys over them).
pub async fn start_accepted_run(
    gw: &JobContext,
    subagent_id: &str,
    run_id: &str,
    run_metadata: Map<String, Value>,
    start_metadata: &Map<String, Value>,
) -> Result<Map<String, Value>, HandlerOutcome> {
    let mut metadata = run_metadata;
    metadata.extend(start_metadata.clone());
    let started_at = now_iso();
    let start = RunStart {
        subagent_id,
        run_id,
        started_at: &started_at,
        metadata: &metadata,
    };
    let (marked, _) = retry_unanswered(&gw.shutdown, "PATCH /rest/v1/subagent_runs", || {
        gw.control.mark_run_started(&start)
    })
    .await;
    match marked {
        Ok(true) => Ok(metadata),
        Ok(false) => Err(changed_before_start(MSG_RUN_CHANGED, subagent_id, run_id)),
        Err(e) => {
            tracing::error!(error = %e, runId = %run_id, "Failed to mark the accepted run started");
            Err(HandlerOutcome::failure(
                json!({"message": "Failed to mark accepted subagent run started", "subagent_id": subagent_id, "run_id": run_id}),
                e.to_string(),
            ))
        }
    }
}

/// The run's status if the control plane ended it (anything but
/// `running`; `missing` when the row is gone). `None` while it runs, or when
/// the control plane cannot say: then the conditional terminal write decides.
pub async fn closed_upstream(gw: &JobContext, run_id: &str) -> Option<String> {
    let (row, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagent_runs", || {
        gw.control.run(run_id)
    })
    .await;
    match row {
        Ok(Some(run)) => {
            let status = run
                .status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            (status != "running").then_some(status)
        }
        Ok(None) => Some("missing".into()),
        Err(e) => {
            tracing::warn!(error = %e, runId = %run_id, "Could not re-read the accepted run before finalizing it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use panorama_protocol::rows::SubagentRunRow;
    use panorama_protocol::status::{JobStatus, SubagentRunStatus};

    use super::*;
    use crate::port::fake::FakeControlPlane;

    fn with_run(
        run_id: &str,
        subagent_id: &str,
        status: SubagentRunStatus,
    ) -> (Arc<FakeControlPlane>, JobContext, tempfile::TempDir) {
        let fake = Arc::new(FakeControlPlane::new());
        fake.put_run(SubagentRunRow {
            id: run_id.into(),
            subagent_id: subagent_id.into(),
            status: Some(status),
            metadata: json!({"accepted_by": "control-plane"}),
            ..SubagentRunRow::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let gw = JobContext::for_tests(fake.clone(), dir.path());
        (fake, gw, dir)
    }

    fn start_metadata() -> Map<String, Value> {
        json!({"runner": "gateway", "cancel_state": "none"})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn control_plane_metadata(fake: &FakeControlPlane, run_id: &str) -> Map<String, Value> {
        fake.run_row(run_id)
            .unwrap()
            .metadata
            .as_object()
            .cloned()
            .unwrap()
    }

    #[tokio::test]
    async fn an_accepted_run_starts_once_keeping_the_control_planes_keys() {
        let (fake, gw, _dir) = with_run("r1", "s1", SubagentRunStatus::Running);
        let base = control_plane_metadata(&fake, "r1");
        let merged = start_accepted_run(&gw, "s1", "r1", base, &start_metadata())
            .await
            .unwrap();
        assert_eq!(merged["accepted_by"], "control-plane");
        assert_eq!(merged["runner"], "gateway");
        let row = fake.run_row("r1").unwrap();
        assert!(row.started_at.is_some());
        assert_eq!(row.metadata, Value::Object(merged));
    }

    #[tokio::test]
    async fn a_run_changed_before_the_start_stands_down_untouched() {
        for (status, owner) in [
            // The control plane cancelled it after the checks.
            (SubagentRunStatus::Cancelled, "s1"),
            // It belongs to another subagent.
            (SubagentRunStatus::Running, "s2"),
        ] {
            let (fake, gw, _dir) = with_run("r1", owner, status);
            let base = control_plane_metadata(&fake, "r1");
            let outcome = start_accepted_run(&gw, "s1", "r1", base, &start_metadata())
                .await
                .unwrap_err();
            assert_eq!(outcome.job_status, Some(JobStatus::Cancelled));
            assert!(outcome.skip_subagent_failure);
            assert_eq!(outcome.error.as_deref(), Some(MSG_RUN_CHANGED));
            assert_eq!(fake.run_row("r1").unwrap().started_at, None);
        }
    }

    #[tokio::test]
    async fn a_start_the_control_plane_refuses_fails_the_job() {
        let (fake, gw, _dir) = with_run("r1", "s1", SubagentRunStatus::Running);
        fake.refuse("*", "hub refuses");
        let outcome = start_accepted_run(&gw, "s1", "r1", Map::new(), &start_metadata())
            .await
            .unwrap_err();
        assert_eq!(outcome.job_status, None, "failed, not cancelled");
        assert!(!outcome.skip_subagent_failure, "the failure fallback runs");
        assert!(outcome.error.unwrap().contains("hub refuses"));
    }

    #[tokio::test]
    async fn a_start_without_an_answer_is_sent_again() {
        let (fake, gw, _dir) = with_run("r1", "s1", SubagentRunStatus::Running);
        fake.leave_unanswered("mark_run_started", 2);
        start_accepted_run(&gw, "s1", "r1", Map::new(), &start_metadata())
            .await
            .unwrap();
        assert!(fake.run_row("r1").unwrap().started_at.is_some());
    }

    #[tokio::test]
    async fn the_terminal_write_is_skipped_only_for_a_run_the_control_plane_ended() {
        let (fake, gw, _dir) = with_run("r1", "s1", SubagentRunStatus::Running);
        assert_eq!(closed_upstream(&gw, "r1").await, None);
        fake.set_run_status("r1", SubagentRunStatus::Cancelled);
        assert_eq!(
            closed_upstream(&gw, "r1").await.as_deref(),
            Some("cancelled")
        );
        fake.set_run_status("r1", SubagentRunStatus::Failed);
        assert_eq!(closed_upstream(&gw, "r1").await.as_deref(), Some("failed"));
        assert_eq!(
            closed_upstream(&gw, "gone").await.as_deref(),
            Some("missing")
        );
        // Unknown: the conditional terminal write decides.
        fake.refuse("*", "hub refuses");
        assert_eq!(closed_upstream(&gw, "r1").await, None);
    }

    #[tokio::test]
    async fn the_accepted_run_read_reports_missing_and_failed_reads() {
        let (fake, gw, _dir) = with_run("r1", "s1", SubagentRunStatus::Running);
        assert!(matches!(
            accepted_run(&gw, "r1").await,
            AcceptedRunRead::Found(ref r) if r.subagent_id == "s1"
        ));
        assert_eq!(accepted_run(&gw, "r2").await, AcceptedRunRead::Missing);
        fake.refuse("*", "hub refuses");
        assert!(matches!(
            accepted_run(&gw, "r1").await,
            AcceptedRunRead::Failed(_)
        ));
    }
}
