//! `gateway_jobs.debug` for `model_run` (control-plane §3.2.5, the later
//! generation): what was launched, then how it ended, written twice per
//! run and always through [`crate::redact::sanitize_debug_payload`], so a
//! prompt, a token or a key in the command line or the output never lands
//! in the row. Best effort, as in the reference: a failed write is logged
//! and the job goes on.

use std::path::Path;

use panorama_protocol::jobs::ModelRunPayload;
use panorama_providers::argv::RunPlan;
use panorama_providers::config::RunOutputFormat;
use serde_json::{json, Map, Value};

use crate::port::ControlPlane;
use crate::redact::{sanitize_debug_payload, ArgRedaction};

/// Output captured into `stdout`/`stderr` of the debug row (the
/// reference's 200 000-character log cap).
pub const DEBUG_OUTPUT_CHARS: usize = 200_000;

/// How the provider hands back its answer: a file named by `-o`, a JSON
/// event stream, or JSON (or text) on stdout.
pub fn output_mode(plan: &RunPlan) -> (&'static str, Option<String>) {
    if let Some(i) = plan.args.iter().position(|a| a == "-o") {
        return ("file-json", plan.args.get(i + 1).cloned());
    }
    match plan.output_format {
        RunOutputFormat::StreamJson => ("stream-json", None),
        _ => ("stdout-json", None),
    }
}

/// The debug object before launch (unsanitized).
pub fn launch_debug(
    payload: &ModelRunPayload,
    plan: &RunPlan,
    work_dir: &Path,
    provider_id: &str,
) -> Map<String, Value> {
    let (mode, path) = output_mode(plan);
    let mut d = Map::new();
    d.insert("provider_id".into(), json!(provider_id));
    d.insert("command".into(), json!(plan.command));
    d.insert("args".into(), json!(plan.args));
    d.insert("work_dir".into(), json!(work_dir.display().to_string()));
    // Lengths in UTF-16 units, like the reference's `String.length`.
    d.insert(
        "prompt_chars".into(),
        json!(payload.prompt.encode_utf16().count()),
    );
    d.insert(
        "json_schema_chars".into(),
        json!(payload
            .json_schema
            .as_ref()
            .map_or(0, |s| s.to_string().encode_utf16().count())),
    );
    d.insert("timeout_ms".into(), json!(plan.timeout_ms));
    d.insert("output_mode".into(), json!(mode));
    d.insert("output_path".into(), json!(path));
    if !plan.files.is_empty() {
        d.insert(
            "files".into(),
            json!(plan
                .files
                .iter()
                .map(|f| f.relative_path.clone())
                .collect::<Vec<_>>()),
        );
    }
    d
}

/// `(text, truncated, original length)` of a captured stream.
fn capped(text: &str) -> (String, bool, usize) {
    let total = text.chars().count();
    if total <= DEBUG_OUTPUT_CHARS {
        (text.to_string(), false, total)
    } else {
        (text.chars().take(DEBUG_OUTPUT_CHARS).collect(), true, total)
    }
}

/// How the process ended, as a process result reports it.
pub struct ExitFacts<'a> {
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    /// A short failure description, when the run failed.
    pub error_summary: Option<String>,
}

/// The debug object after exit: the launch object plus output and outcome.
pub fn exit_debug(launch: &Map<String, Value>, facts: &ExitFacts<'_>) -> Map<String, Value> {
    let mut d = launch.clone();
    for (name, text) in [("stdout", facts.stdout), ("stderr", facts.stderr)] {
        let (value, truncated, bytes) = capped(text);
        d.insert(name.into(), json!(value));
        d.insert(format!("{name}_truncated"), json!(truncated));
        d.insert(format!("{name}_bytes"), json!(bytes));
    }
    d.insert("exit_code".into(), json!(facts.exit_code));
    d.insert("duration_ms".into(), json!(facts.duration_ms));
    d.insert("timed_out".into(), json!(facts.timed_out));
    if let Some(summary) = &facts.error_summary {
        d.insert("error_summary".into(), json!({ "message": summary }));
    }
    d
}

/// The row value: the allowed keys only, secrets redacted, the prompt
/// (the command's last argument) replaced.
pub fn sanitized(debug: &Map<String, Value>) -> Value {
    sanitize_debug_payload(
        &Value::Object(debug.clone()),
        &ArgRedaction {
            indexes: Vec::new(),
            last: true,
        },
    )
}

/// The job's `debug`, sanitized, only while the job runs, so a late write
/// never touches a finished row.
pub async fn write(control: &dyn ControlPlane, job_id: &str, debug: &Map<String, Value>) {
    let result = control
        .update_job_if_running(job_id, json!({ "debug": sanitized(debug) }))
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, jobId = %job_id, "Failed to update gateway job debug info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use panorama_protocol::capabilities::ProviderId;
    use panorama_providers::argv::PlanFile;
    use std::collections::BTreeMap;

    fn plan(args: &[&str], format: RunOutputFormat) -> RunPlan {
        RunPlan {
            provider: ProviderId::Codex,
            command: "codex".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: "/w".into(),
            env: BTreeMap::new(),
            files: vec![PlanFile {
                relative_path: "schema.json".into(),
                contents: "{}".into(),
            }],
            output_format: format,
            timeout_ms: 1000,
            answer_file: None,
            strict_json: false,
        }
    }

    fn payload() -> ModelRunPayload {
        ModelRunPayload::parse(&json!({
            "prompt": "secret plan: token=sk-live-abcdefghijklmnop",
            "model": "m", "provider": "codex", "output_format": "json",
            "json_schema": {"type": "object"},
        }))
        .unwrap()
    }

    #[test]
    fn launch_and_exit_objects_carry_the_spec_keys_sanitized() {
        let p = plan(
            &[
                "exec",
                "-o",
                "output.json",
                "secret plan: token=sk-live-abcdefghijklmnop",
            ],
            RunOutputFormat::Json,
        );
        let launch = launch_debug(&payload(), &p, Path::new("/w"), "codex");
        assert_eq!(launch["output_mode"], "file-json");
        assert_eq!(launch["output_path"], "output.json");
        assert_eq!(launch["json_schema_chars"], 17);
        let row = sanitized(&launch);
        assert_eq!(row["provider_id"], "codex");
        assert_eq!(row["files"], json!(["schema.json"]));
        assert_eq!(row["prompt_chars"], 43);
        let text = row.to_string();
        assert!(!text.contains("sk-live-abcdefghijklmnop"), "{text}");
        assert!(!text.contains("secret plan"), "the prompt argument: {text}");

        let exit = exit_debug(
            &launch,
            &ExitFacts {
                stdout: "ok",
                stderr: "api_key=sk-live-abcdefghijklmnop",
                exit_code: Some(1),
                duration_ms: 12,
                timed_out: false,
                error_summary: Some("boom".into()),
            },
        );
        let row = sanitized(&exit);
        assert_eq!(row["stdout"], "ok");
        assert_eq!(row["stdout_bytes"], 2);
        assert_eq!(row["stderr_truncated"], false);
        assert_eq!(row["exit_code"], 1);
        assert_eq!(row["duration_ms"], 12);
        assert_eq!(row["timed_out"], false);
        assert_eq!(row["error_summary"]["message"], "boom");
        assert!(
            !row.to_string().contains("sk-live-abcdefghijklmnop"),
            "{row}"
        );
    }

    #[test]
    fn output_modes() {
        assert_eq!(
            output_mode(&plan(&["x"], RunOutputFormat::StreamJson)).0,
            "stream-json"
        );
        assert_eq!(
            output_mode(&plan(&["x"], RunOutputFormat::Text)),
            ("stdout-json", None)
        );
        let long = "y".repeat(DEBUG_OUTPUT_CHARS + 3);
        let (v, t, n) = capped(&long);
        assert_eq!(
            (v.len(), t, n),
            (DEBUG_OUTPUT_CHARS, true, DEBUG_OUTPUT_CHARS + 3)
        );
    }
}
