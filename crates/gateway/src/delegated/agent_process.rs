//! The agent CLI process of a run plan: its command, arguments and working
//! directory from the plan, and an environment scrubbed of the gateway's
//! secrets with the plan's overrides on top (runtime §3.1).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use panorama_providers::argv::RunPlan;
use tokio::sync::watch;

use super::process::{run_process, ProcessResult, ProcessSpec};

/// Starts an agent process and supervises it to its end: the one step of a
/// run that needs a real CLI, behind a trait so the run's lifecycle can be
/// driven with a scripted outcome in unit tests.
#[async_trait]
pub trait AgentLauncher: Send + Sync {
    /// Runs `spec` until it exits or `io.stop` carries a reason (see
    /// [`run_process`]).
    async fn run(&self, spec: &ProcessSpec, io: AgentIo<'_>) -> ProcessResult;
}

/// How a run talks to its agent process while it runs.
pub struct AgentIo<'a> {
    /// A reason here stops the process (cancel, shutdown).
    pub stop: watch::Receiver<Option<String>>,
    /// Gets the process group once the process started.
    pub on_spawn: &'a mut (dyn FnMut(u32) + Send),
    /// Gets the output as it arrives.
    pub on_stdout: &'a mut (dyn for<'b> FnMut(&'b [u8]) + Send),
}

/// The agent CLI as a contained child process.
pub struct ChildProcess;

#[async_trait]
impl AgentLauncher for ChildProcess {
    async fn run(&self, spec: &ProcessSpec, io: AgentIo<'_>) -> ProcessResult {
        run_process(spec, io.stop, io.on_spawn, io.on_stdout).await
    }
}

/// Placeholder in a plan's environment values for the run's working dir.
const WORKDIR_PLACEHOLDER: &str = "{WORKDIR}";

/// The process that runs `plan`, stopped with `stop_grace` between SIGTERM
/// and SIGKILL. `{WORKDIR}` in an override becomes the plan's directory.
pub fn spec_for_plan(plan: &RunPlan, tmp_dir: &Path, stop_grace: Duration) -> ProcessSpec {
    let cwd = plan.cwd.to_string_lossy();
    let overrides: Vec<(String, Option<String>)> = plan
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.replace(WORKDIR_PLACEHOLDER, &cwd))))
        .collect();
    ProcessSpec {
        command: plan.command.clone(),
        args: plan.args.clone(),
        cwd: plan.cwd.clone(),
        env: crate::child_env::child_env_from_process(Some(tmp_dir), &overrides),
        timeout: Duration::from_millis(plan.timeout_ms),
        stop_grace,
        stdin: None,
    }
}

/// The plan's answer file (Codex `-o`), when the CLI wrote one.
pub fn read_answer_file(plan: &RunPlan) -> Option<String> {
    plan.answer_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
}
