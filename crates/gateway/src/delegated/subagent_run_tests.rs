//! Every path of `subagent_run` on both protocol generations, driven
//! against the in-memory control plane with a scripted agent process: the
//! job's completion, the rows the control plane ends with (the outbox's
//! queued writes applied), and the run's events.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use panorama_protocol::jobs::SubagentRunPayload;
use panorama_protocol::rows::SubagentRunRow;
use panorama_protocol::status::{JobStatus, SubagentStatus};

use super::*;
use crate::delegated::agent_process::AgentIo;
use crate::delegated::process::ProcessSpec;
use crate::port::fake::{self, FakeControlPlane};

const SID: &str = "5b2f1c1e-0000-4000-8000-000000000001";
const RUN_ID: &str = "5b2f1c1e-0000-4000-8000-0000000000aa";
const PROMPT: &str = "say hi";

/// What one attempt of the scripted agent does.
struct Step {
    result: ProcessResult,
    /// Runs while the agent "runs" (a cancel, a shutdown, the control
    /// plane ending the run).
    during: Option<Box<dyn Fn() + Send + Sync>>,
}

fn exits(code: i32, stdout: &str, stderr: &str) -> Step {
    Step {
        result: ProcessResult {
            pid: Some(4242),
            exit_code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..ProcessResult::default()
        },
        during: None,
    }
}

fn answers(text: &str) -> Step {
    exits(
        0,
        &json!({"type": "result", "result": text, "session_id": "sess-new"}).to_string(),
        "",
    )
}

/// Stopped by its stop signal, as the real supervisor reports it.
fn stopped_after(during: impl Fn() + Send + Sync + 'static) -> Step {
    Step {
        result: ProcessResult {
            pid: Some(4242),
            signal: Some(15),
            stopped: true,
            ..ProcessResult::default()
        },
        during: Some(Box::new(during)),
    }
}

/// An [`AgentLauncher`] that plays `steps`, one per attempt, and keeps the
/// argv of each.
#[derive(Default)]
struct ScriptedAgent {
    steps: Mutex<VecDeque<Step>>,
    argv: Mutex<Vec<Vec<String>>>,
}

impl ScriptedAgent {
    fn new(steps: Vec<Step>) -> ScriptedAgent {
        ScriptedAgent {
            steps: Mutex::new(steps.into()),
            argv: Mutex::default(),
        }
    }
}

#[async_trait]
impl AgentLauncher for ScriptedAgent {
    async fn run(&self, spec: &ProcessSpec, io: AgentIo<'_>) -> ProcessResult {
        self.argv.lock().unwrap().push(spec.args.clone());
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .expect("an attempt the script did not expect");
        (io.on_spawn)(step.result.pid.unwrap_or_default());
        if let Some(during) = &step.during {
            during();
        }
        (io.on_stdout)(step.result.stdout.as_bytes());
        step.result
    }
}

/// Which protocol generation a test's control plane speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Gen {
    Seed,
    Accepted,
}

struct World {
    fake: Arc<FakeControlPlane>,
    gw: Arc<JobContext>,
    dir: tempfile::TempDir,
    generation: Gen,
}

/// A control plane with one subagent of this gateway (`config`, `metadata`
/// on it). Seed: the subagent is idle and the job names no run. Accepted:
/// the control plane accepted run [`RUN_ID`] (sequence 3) beforehand.
fn world(generation: Gen, config: Value, metadata: Value) -> World {
    let fake = Arc::new(FakeControlPlane::new());
    let mut sub = fake::subagent(SID, "gateway-1", "claude_code_gateway");
    sub.config = config;
    sub.metadata = metadata;
    if generation == Gen::Accepted {
        sub.status = SubagentStatus::Running;
        sub.input = Some(json!({"prompt": PROMPT, "run_sequence": 3}));
        sub.metadata["current_run_id"] = json!(RUN_ID);
        fake.put_run(SubagentRunRow {
            id: RUN_ID.into(),
            subagent_id: SID.into(),
            team_id: "team-1".into(),
            run_sequence: Some(3),
            status: Some(SubagentRunStatus::Running),
            prompt: Some(PROMPT.into()),
            metadata: json!({"accepted_by": "control-plane"}),
            ..SubagentRunRow::default()
        });
    }
    fake.put_subagent(sub);
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(JobContext::for_tests(fake.clone(), dir.path()));
    World {
        fake,
        gw,
        dir,
        generation,
    }
}

/// Every write the run queued, in outbox order.
fn queued(dir: &Path) -> Vec<OutboxWrite> {
    let text = std::fs::read_to_string(dir.join("outbox").join(crate::outbox::LOG_FILE))
        .unwrap_or_default();
    text.lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            serde_json::from_value(entry["write"].clone()).unwrap()
        })
        .collect()
}

impl World {
    fn payload(&self) -> SubagentRunPayload {
        SubagentRunPayload {
            subagent_id: SID.into(),
            run_id: (self.generation == Gen::Accepted).then(|| RUN_ID.to_string()),
            subagent_type: None,
        }
    }

    /// Runs the job with `agent`, then lets the control plane apply what
    /// the outbox holds.
    async fn run(&self, agent: &ScriptedAgent) -> JobCompletion {
        let completion = run_job_with(&self.gw, agent, "job-1", &self.payload()).await;
        self.fake.apply(&queued(self.dir.path()));
        completion
    }

    /// The run this job ran: the accepted one, or the one the seed inserted.
    fn run_row(&self) -> SubagentRunRow {
        let runs = self.fake.runs.lock().unwrap();
        assert_eq!(runs.len(), 1, "one run row: {runs:?}");
        runs.values().next().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.fake.event_types(&self.run_row().id)
    }

    /// The generation's own requests: the seed inserts its run and never
    /// starts an accepted one; the accepted generation never inserts.
    fn assert_generation_requests(&self) {
        match self.generation {
            Gen::Seed => {
                assert!(self.fake.called("insert_run"));
                assert!(!self.fake.called("mark_run_started"));
            }
            Gen::Accepted => {
                assert!(
                    !self.fake.called("insert_run"),
                    "an accepted run is never inserted"
                );
                assert!(!self.fake.called("allocate_run_sequence"));
            }
        }
    }

    /// Accepted runs end through the finalize function (with its fallback);
    /// seed runs through the two direct updates.
    fn assert_terminal_write(&self) {
        let finalize = queued(self.dir.path()).iter().any(|w| {
            matches!(w, OutboxWrite::FunctionOrFallback { name, .. } if name == writes::FINALIZE_FUNCTION)
        });
        assert_eq!(finalize, self.generation == Gen::Accepted);
    }
}

fn both() -> [Gen; 2] {
    [Gen::Seed, Gen::Accepted]
}

#[tokio::test]
async fn a_run_completes_with_its_answer() {
    for generation in both() {
        let w = world(generation, json!({}), json!({}));
        let completion = w.run(&ScriptedAgent::new(vec![answers("hi")])).await;
        assert_eq!(
            completion.status,
            JobStatus::Completed,
            "{generation:?}: {completion:?}"
        );
        let run = w.run_row();
        assert_eq!(
            run.status,
            Some(SubagentRunStatus::Completed),
            "{generation:?}"
        );
        assert_eq!(run.output.as_ref().unwrap()["content"], "hi");
        assert_eq!(run.metadata["retry_count"], 0);
        let sub = w.fake.subagent_row(SID);
        assert_eq!(sub.status, SubagentStatus::Completed, "{generation:?}");
        assert_eq!(sub.metadata["current_run_id"], json!(run.id));
        assert_eq!(
            w.events(),
            ["run_started", "run_progress", "run_completed"],
            "{generation:?}"
        );
        w.assert_generation_requests();
        w.assert_terminal_write();
        if generation == Gen::Accepted {
            assert_eq!(run.run_sequence, Some(3));
            assert_eq!(
                run.metadata["accepted_by"], "control-plane",
                "the control plane's keys stay"
            );
            assert!(run.started_at.is_some(), "marked started");
        }
    }
}

#[tokio::test]
async fn a_failed_attempt_is_retried_when_the_config_asks() {
    for generation in both() {
        let config = json!({"retry": {"max_attempts": 2, "retry_on_parse_error": true}});
        let w = world(generation, config, json!({}));
        let agent = ScriptedAgent::new(vec![exits(0, "not json", ""), answers("second")]);
        let completion = w.run(&agent).await;
        assert_eq!(
            completion.status,
            JobStatus::Completed,
            "{generation:?}: {completion:?}"
        );
        let run = w.run_row();
        assert_eq!(run.output.as_ref().unwrap()["content"], "second");
        assert_eq!(run.metadata["retry_count"], 1);
        assert_eq!(run.metadata["retry_reasons"], json!(["parse_error"]));
        assert_eq!(
            w.events(),
            [
                "run_started",
                "run_progress",
                "run_progress",
                "run_progress",
                "run_completed"
            ],
            "attempt, retry scheduled, attempt ({generation:?})"
        );
        w.assert_generation_requests();
        w.assert_terminal_write();
    }
}

#[tokio::test]
async fn a_lost_conversation_is_started_fresh_once() {
    for generation in both() {
        let w = world(generation, json!({}), json!({"session_id": "sess-old"}));
        let agent = ScriptedAgent::new(vec![
            exits(1, "", "No conversation found with session ID: sess-old"),
            answers("fresh"),
        ]);
        let completion = w.run(&agent).await;
        assert_eq!(
            completion.status,
            JobStatus::Completed,
            "{generation:?}: {completion:?}"
        );
        let argv = agent.argv.lock().unwrap().clone();
        assert!(
            argv[0].iter().any(|a| a == "sess-old"),
            "first attempt resumes: {argv:?}"
        );
        assert!(
            !argv[1].iter().any(|a| a == "sess-old"),
            "second starts fresh: {argv:?}"
        );
        assert_eq!(
            w.events(),
            [
                "run_started",
                "run_progress",
                "system",
                "run_progress",
                "run_completed"
            ],
            "{generation:?}"
        );
        assert_eq!(w.run_row().output.unwrap()["content"], "fresh");
        w.assert_terminal_write();
    }
}

#[tokio::test]
async fn a_failure_before_the_agent_starts_ends_the_run_failed() {
    for generation in both() {
        // Full control requested, but this install does not allow it.
        let w = world(generation, json!({"full_control": true}), json!({}));
        let agent = ScriptedAgent::new(vec![]);
        let completion = w.run(&agent).await;
        assert_eq!(completion.status, JobStatus::Failed, "{generation:?}");
        assert!(
            !completion.run_subagent_failure_fallback,
            "its rows are written already"
        );
        assert!(agent.argv.lock().unwrap().is_empty(), "no agent started");
        let run = w.run_row();
        assert_eq!(
            run.status,
            Some(SubagentRunStatus::Failed),
            "{generation:?}"
        );
        assert_eq!(run.metadata["full_control_effective"], false);
        assert_eq!(w.fake.subagent_row(SID).status, SubagentStatus::Failed);
        assert_eq!(w.events(), ["run_started", "run_failed"], "{generation:?}");
        w.assert_generation_requests();
        w.assert_terminal_write();
    }
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_never_runs_the_agent() {
    for generation in both() {
        let w = world(generation, json!({}), json!({}));
        // A cancel job got here first: remembered as pending.
        w.gw.delegated
            .active
            .request_cancel(SID, None, "stop it", |_| unreachable!("no local run"));
        let agent = ScriptedAgent::new(vec![]);
        let completion = w.run(&agent).await;
        assert_eq!(
            completion.status,
            JobStatus::Completed,
            "{generation:?}: {completion:?}"
        );
        assert_eq!(completion.result.as_ref().unwrap()["status"], "cancelled");
        assert!(agent.argv.lock().unwrap().is_empty());
        let run = w.run_row();
        assert_eq!(
            run.status,
            Some(SubagentRunStatus::Cancelled),
            "{generation:?}"
        );
        assert_eq!(run.error.as_deref(), Some("stop it"));
        assert_eq!(w.fake.subagent_row(SID).status, SubagentStatus::Cancelled);
        assert_eq!(
            w.events(),
            [
                "cancellation_requested",
                "cancellation_acknowledged",
                "run_cancelled"
            ],
            "{generation:?}"
        );
        w.assert_terminal_write();
        if generation == Gen::Accepted {
            assert!(!w.fake.called("insert_run"));
            assert!(
                !w.fake.called("mark_run_started"),
                "a cancelled run is never started"
            );
        }
    }
}

#[tokio::test]
async fn a_run_cancelled_while_the_agent_runs_ends_cancelled() {
    for generation in both() {
        let w = world(generation, json!({}), json!({}));
        let gw = Arc::clone(&w.gw);
        let agent = ScriptedAgent::new(vec![stopped_after(move || {
            gw.delegated
                .active
                .request_cancel(SID, None, "user stop", |run| {
                    run.sink.emit(
                        RunEventType::CancellationRequested,
                        json!({"reason": "user stop", "source": "gateway_cancel_job"}),
                    );
                });
        })]);
        let completion = w.run(&agent).await;
        assert_eq!(
            completion.status,
            JobStatus::Completed,
            "{generation:?}: {completion:?}"
        );
        assert_eq!(completion.result.as_ref().unwrap()["status"], "cancelled");
        let run = w.run_row();
        assert_eq!(
            run.status,
            Some(SubagentRunStatus::Cancelled),
            "{generation:?}"
        );
        assert_eq!(run.metadata["cancel_state"], "acknowledged");
        assert_eq!(w.fake.subagent_row(SID).status, SubagentStatus::Cancelled);
        assert_eq!(
            w.events(),
            [
                "run_started",
                "run_progress",
                "cancellation_requested",
                "cancellation_acknowledged",
                "run_cancelled"
            ],
            "{generation:?}"
        );
        w.assert_terminal_write();
    }
}

#[tokio::test]
async fn a_run_stopped_by_the_gateways_shutdown_ends_cancelled() {
    for generation in both() {
        let w = world(generation, json!({}), json!({}));
        let gw = Arc::clone(&w.gw);
        let agent = ScriptedAgent::new(vec![stopped_after(move || {
            gw.delegated
                .active
                .shutdown("Gateway shutting down (SIGTERM)");
        })]);
        let completion = w.run(&agent).await;
        assert_eq!(
            completion.result.as_ref().unwrap()["status"],
            "cancelled",
            "{generation:?}"
        );
        let run = w.run_row();
        assert_eq!(
            run.status,
            Some(SubagentRunStatus::Cancelled),
            "{generation:?}"
        );
        assert_eq!(
            run.error.as_deref(),
            Some("Gateway shutting down (SIGTERM)")
        );
        assert_eq!(
            w.events(),
            [
                "run_started",
                "run_progress",
                "cancellation_acknowledged",
                "run_cancelled"
            ],
            "{generation:?}"
        );
        let last = w.fake.events.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last["payload"]["source"], "gateway_shutdown");
        w.assert_terminal_write();
    }
}

#[tokio::test]
async fn an_accepted_run_the_control_plane_ended_meanwhile_is_not_overwritten() {
    let w = world(Gen::Accepted, json!({}), json!({}));
    let fake = Arc::clone(&w.fake);
    let mut step = answers("too late");
    step.during = Some(Box::new(move || {
        fake.set_run_status(RUN_ID, SubagentRunStatus::Cancelled)
    }));
    let completion = w.run(&ScriptedAgent::new(vec![step])).await;
    assert_eq!(completion.result.as_ref().unwrap()["status"], "cancelled");
    let run = w.run_row();
    assert_eq!(run.status, Some(SubagentRunStatus::Cancelled));
    assert_eq!(run.output, None, "the control plane's row stands");
    assert!(!queued(w.dir.path())
        .iter()
        .any(|write| matches!(write, OutboxWrite::FunctionOrFallback { .. })));
    assert_eq!(w.events(), ["run_started", "run_progress", "run_cancelled"]);
}

#[tokio::test]
async fn a_seed_run_survives_a_hub_that_does_not_answer_its_insert() {
    let w = world(Gen::Seed, json!({}), json!({}));
    w.fake.leave_unanswered("insert_run", 2);
    let completion = w.run(&ScriptedAgent::new(vec![answers("hi")])).await;
    assert_eq!(completion.status, JobStatus::Completed, "{completion:?}");
    assert_eq!(w.run_row().status, Some(SubagentRunStatus::Completed));
    let inserts = w
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| *c == "insert_run")
        .count();
    assert_eq!(inserts, 3, "sent again until answered");
}

#[tokio::test]
async fn a_job_that_fails_after_the_run_is_accepted_fails_the_run_and_the_subagent() {
    // The control plane refuses the start of its accepted run: the job
    // fails, and the job-failure fallback (§10.10) ends the run and the
    // subagent, its terminal event first.
    let w = world(Gen::Accepted, json!({}), json!({}));
    w.fake
        .refuse("mark_run_started", "permission denied for subagent_runs");
    let agent = ScriptedAgent::new(vec![]);
    let completion = w.run(&agent).await;
    assert_eq!(completion.status, JobStatus::Failed, "{completion:?}");
    assert!(completion.error.unwrap().contains("permission denied"));
    assert!(agent.argv.lock().unwrap().is_empty());
    let run = w.run_row();
    assert_eq!(run.status, Some(SubagentRunStatus::Failed));
    assert!(run.metadata["gateway_error"]
        .as_str()
        .unwrap()
        .contains("permission denied"));
    assert_eq!(w.fake.subagent_row(SID).status, SubagentStatus::Failed);
    assert_eq!(w.events(), ["run_failed"]);
    let last = w.fake.events_of(RUN_ID).pop().unwrap();
    assert_eq!(last["payload"]["source"], "gateway_job_failure");
}

#[tokio::test]
async fn a_seed_job_for_another_gateways_subagent_touches_nothing() {
    let w = world(Gen::Seed, json!({}), json!({}));
    let mut sub = w.fake.subagent_row(SID);
    sub.gateway_id = Some("gateway-2".into());
    w.fake.put_subagent(sub);
    let completion = w.run(&ScriptedAgent::new(vec![])).await;
    assert_eq!(completion.status, JobStatus::Cancelled, "{completion:?}");
    assert!(w.fake.runs.lock().unwrap().is_empty(), "no run row");
    assert!(queued(w.dir.path()).is_empty(), "nothing queued");
}
