//! The later generation's run lifecycle against the control plane
//! (control-plane §3.6, §10.4 "later"): read the accepted run, start it with
//! a compare-and-set, and re-read it before its terminal write.
//!
//! [`AcceptedRunPort`] is what these steps ask of the control plane;
//! [`HubAcceptedRuns`] answers over PostgREST (retrying while the hub gives
//! no answer), and the tests use an in-memory control plane.

use async_trait::async_trait;
use panorama_protocol::accepted::{changed_before_start, AcceptedRunRead, MSG_RUN_CHANGED};
use panorama_protocol::jobs::HandlerOutcome;
use panorama_protocol::rows::SubagentRunRow;
use serde_json::{json, Map, Value};

use crate::control_plane::retry_unanswered;
use crate::job_context::JobContext;
use crate::timestamp::now_iso;

/// What the accepted-run steps need from the control plane.
#[async_trait]
pub trait AcceptedRunPort: Send + Sync {
    /// The run row (id, subagent, sequence, status, prompt, metadata).
    async fn accepted_run(&self, run_id: &str) -> AcceptedRunRead;
    /// `started_at` and `metadata` of the run, only while it is this
    /// subagent's `running` run. `Ok(false)`: no row matched.
    async fn mark_run_started(
        &self,
        subagent_id: &str,
        run_id: &str,
        started_at: &str,
        metadata: &Map<String, Value>,
    ) -> Result<bool, String>;
    /// The run's status now (`None`: no such row).
    async fn run_status(&self, run_id: &str) -> Result<Option<String>, String>;
}

/// §10.4 "later" step 3. Returns the run's metadata from here on (the
/// control plane's keys with the gateway's start keys over them).
pub async fn start_accepted_run(
    port: &dyn AcceptedRunPort,
    subagent_id: &str,
    run_id: &str,
    run_metadata: Map<String, Value>,
    start_metadata: &Map<String, Value>,
) -> Result<Map<String, Value>, HandlerOutcome> {
    let mut metadata = run_metadata;
    metadata.extend(start_metadata.clone());
    match port
        .mark_run_started(subagent_id, run_id, &now_iso(), &metadata)
        .await
    {
        Ok(true) => Ok(metadata),
        Ok(false) => Err(changed_before_start(MSG_RUN_CHANGED, subagent_id, run_id)),
        Err(e) => {
            tracing::error!(error = %e, runId = %run_id, "Failed to mark the accepted run started");
            Err(HandlerOutcome::failure(
                json!({"message": "Failed to mark accepted subagent run started", "subagent_id": subagent_id, "run_id": run_id}),
                e,
            ))
        }
    }
}

/// The run's status if the control plane ended it (anything but
/// `running`; `missing` when the row is gone). `None` while it runs, or when
/// the control plane cannot say: then the conditional terminal write decides.
pub async fn closed_upstream(port: &dyn AcceptedRunPort, run_id: &str) -> Option<String> {
    match port.run_status(run_id).await {
        Ok(Some(status)) => (status != "running").then_some(status),
        Ok(None) => Some("missing".into()),
        Err(e) => {
            tracing::warn!(error = %e, runId = %run_id, "Could not re-read the accepted run before finalizing it");
            None
        }
    }
}

/// [`AcceptedRunPort`] over the control plane's PostgREST API.
pub struct HubAcceptedRuns<'a>(pub &'a JobContext);

#[async_trait]
impl AcceptedRunPort for HubAcceptedRuns<'_> {
    async fn accepted_run(&self, run_id: &str) -> AcceptedRunRead {
        let gw = self.0;
        let (row, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagent_runs", || {
            gw.client
                .from("subagent_runs")
                .select("id,subagent_id,run_sequence,status,prompt,metadata")
                .eq("id", run_id)
                .maybe_single()
        })
        .await;
        match row {
            Ok(None) => AcceptedRunRead::Missing,
            Ok(Some(row)) => match serde_json::from_value::<SubagentRunRow>(row) {
                Ok(run) => AcceptedRunRead::Found(Box::new(run)),
                Err(e) => AcceptedRunRead::Failed(format!("the run row could not be read: {e}")),
            },
            Err(e) => AcceptedRunRead::Failed(e.to_string()),
        }
    }

    async fn mark_run_started(
        &self,
        subagent_id: &str,
        run_id: &str,
        started_at: &str,
        metadata: &Map<String, Value>,
    ) -> Result<bool, String> {
        let gw = self.0;
        let (marked, _) = retry_unanswered(&gw.shutdown, "PATCH /rest/v1/subagent_runs", || {
            gw.client
                .from("subagent_runs")
                .update(json!({"started_at": started_at, "metadata": metadata}))
                .eq("id", run_id)
                .eq("subagent_id", subagent_id)
                .eq("status", "running")
                .select("id")
                .execute()
        })
        .await;
        marked
            .map(|rows| !rows.is_empty())
            .map_err(|e| e.to_string())
    }

    async fn run_status(&self, run_id: &str) -> Result<Option<String>, String> {
        let gw = self.0;
        let (row, _) = retry_unanswered(&gw.shutdown, "GET /rest/v1/subagent_runs", || {
            gw.client
                .from("subagent_runs")
                .select("status")
                .eq("id", run_id)
                .maybe_single()
        })
        .await;
        row.map(|r| r.and_then(|r| r["status"].as_str().map(str::to_string)))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use panorama_protocol::status::{JobStatus, SubagentRunStatus};

    use super::*;

    /// An in-memory control plane holding run rows, with the compare-and-set
    /// semantics of the real one, and a switch that makes it fail.
    #[derive(Default)]
    struct FakeControlPlane {
        runs: Mutex<HashMap<String, SubagentRunRow>>,
        down: bool,
    }

    impl FakeControlPlane {
        fn with_run(run_id: &str, subagent_id: &str, status: SubagentRunStatus) -> Self {
            let fake = FakeControlPlane::default();
            fake.runs.lock().unwrap().insert(
                run_id.into(),
                SubagentRunRow {
                    id: run_id.into(),
                    subagent_id: subagent_id.into(),
                    status: Some(status),
                    metadata: json!({"accepted_by": "control-plane"}),
                    ..SubagentRunRow::default()
                },
            );
            fake
        }

        fn set_status(&self, run_id: &str, status: SubagentRunStatus) {
            self.runs.lock().unwrap().get_mut(run_id).unwrap().status = Some(status);
        }

        fn row(&self, run_id: &str) -> SubagentRunRow {
            self.runs.lock().unwrap()[run_id].clone()
        }
    }

    #[async_trait]
    impl AcceptedRunPort for FakeControlPlane {
        async fn accepted_run(&self, run_id: &str) -> AcceptedRunRead {
            if self.down {
                return AcceptedRunRead::Failed("hub down".into());
            }
            match self.runs.lock().unwrap().get(run_id) {
                Some(run) => AcceptedRunRead::Found(Box::new(run.clone())),
                None => AcceptedRunRead::Missing,
            }
        }

        async fn mark_run_started(
            &self,
            subagent_id: &str,
            run_id: &str,
            started_at: &str,
            metadata: &Map<String, Value>,
        ) -> Result<bool, String> {
            if self.down {
                return Err("hub down".into());
            }
            let mut runs = self.runs.lock().unwrap();
            match runs.get_mut(run_id) {
                Some(run)
                    if run.subagent_id == subagent_id
                        && run.status == Some(SubagentRunStatus::Running) =>
                {
                    run.started_at = Some(started_at.into());
                    run.metadata = Value::Object(metadata.clone());
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        async fn run_status(&self, run_id: &str) -> Result<Option<String>, String> {
            if self.down {
                return Err("hub down".into());
            }
            Ok(self
                .runs
                .lock()
                .unwrap()
                .get(run_id)
                .and_then(|r| r.status)
                .map(|s| s.as_str().to_string()))
        }
    }

    fn start_metadata() -> Map<String, Value> {
        json!({"runner": "gateway", "cancel_state": "none"})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn control_plane_metadata(fake: &FakeControlPlane, run_id: &str) -> Map<String, Value> {
        fake.row(run_id).metadata.as_object().cloned().unwrap()
    }

    #[tokio::test]
    async fn an_accepted_run_starts_once_keeping_the_control_planes_keys() {
        let fake = FakeControlPlane::with_run("r1", "s1", SubagentRunStatus::Running);
        let base = control_plane_metadata(&fake, "r1");
        let merged = start_accepted_run(&fake, "s1", "r1", base, &start_metadata())
            .await
            .unwrap();
        assert_eq!(merged["accepted_by"], "control-plane");
        assert_eq!(merged["runner"], "gateway");
        let row = fake.row("r1");
        assert!(row.started_at.is_some());
        assert_eq!(row.metadata, Value::Object(merged));
    }

    #[tokio::test]
    async fn a_run_changed_before_the_start_stands_down_untouched() {
        for (fake, sid) in [
            // The control plane cancelled it after the checks.
            (
                FakeControlPlane::with_run("r1", "s1", SubagentRunStatus::Cancelled),
                "s1",
            ),
            // It belongs to another subagent.
            (
                FakeControlPlane::with_run("r1", "s2", SubagentRunStatus::Running),
                "s1",
            ),
        ] {
            let base = control_plane_metadata(&fake, "r1");
            let outcome = start_accepted_run(&fake, sid, "r1", base, &start_metadata())
                .await
                .unwrap_err();
            assert_eq!(outcome.job_status, Some(JobStatus::Cancelled));
            assert!(outcome.skip_subagent_failure);
            assert_eq!(outcome.error.as_deref(), Some(MSG_RUN_CHANGED));
            assert_eq!(fake.row("r1").started_at, None);
        }
    }

    #[tokio::test]
    async fn a_start_the_control_plane_cannot_take_fails_the_job() {
        let fake = FakeControlPlane {
            down: true,
            ..FakeControlPlane::with_run("r1", "s1", SubagentRunStatus::Running)
        };
        let outcome = start_accepted_run(&fake, "s1", "r1", Map::new(), &start_metadata())
            .await
            .unwrap_err();
        assert_eq!(outcome.job_status, None, "failed, not cancelled");
        assert!(!outcome.skip_subagent_failure, "the failure fallback runs");
        assert_eq!(outcome.error.as_deref(), Some("hub down"));
    }

    #[tokio::test]
    async fn the_terminal_write_is_skipped_only_for_a_run_the_control_plane_ended() {
        let fake = FakeControlPlane::with_run("r1", "s1", SubagentRunStatus::Running);
        assert_eq!(closed_upstream(&fake, "r1").await, None);
        fake.set_status("r1", SubagentRunStatus::Cancelled);
        assert_eq!(
            closed_upstream(&fake, "r1").await.as_deref(),
            Some("cancelled")
        );
        fake.set_status("r1", SubagentRunStatus::Failed);
        assert_eq!(
            closed_upstream(&fake, "r1").await.as_deref(),
            Some("failed")
        );
        assert_eq!(
            closed_upstream(&fake, "gone").await.as_deref(),
            Some("missing")
        );
        // Unknown: the conditional terminal write decides.
        let down = FakeControlPlane {
            down: true,
            ..FakeControlPlane::default()
        };
        assert_eq!(closed_upstream(&down, "r1").await, None);
    }

    #[tokio::test]
    async fn the_accepted_run_read_reports_missing_and_failed_reads() {
        let fake = FakeControlPlane::with_run("r1", "s1", SubagentRunStatus::Running);
        assert!(matches!(
            fake.accepted_run("r1").await,
            AcceptedRunRead::Found(ref r) if r.subagent_id == "s1"
        ));
        assert_eq!(fake.accepted_run("r2").await, AcceptedRunRead::Missing);
    }
}
