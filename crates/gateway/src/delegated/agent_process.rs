//! The agent CLI process of a run plan: its command, arguments and working
//! directory from the plan, and an environment scrubbed of the gateway's
//! secrets with the plan's overrides on top (runtime §3.1).

use std::path::Path;
use std::time::Duration;

use panorama_providers::argv::RunPlan;

use super::process::ProcessSpec;

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
