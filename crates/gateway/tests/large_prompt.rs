//! Prompts too large for a command line reach the agent CLI on stdin, and a
//! run that cannot be started because of its input fails with a clear
//! limit while the provider stays healthy. Real hub, real gateway, the fake
//! agent behind a wrapper that records what arrived on stdin.

use std::os::unix::fs::symlink;
use std::time::Duration;

use panorama_testkit::{GatewayHost, Hub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// `bin/<name>` records its stdin to `stdin-<name>.txt` (after the
/// `--version`/`--help` probes) and then runs the fake agent as `<name>`.
fn recording_host() -> GatewayHost {
    let host = GatewayHost::new();
    let real = host.path("real");
    std::fs::create_dir_all(&real).unwrap();
    for name in ["claude", "codex", "gemini"] {
        symlink(panorama_testkit::fake_agent_binary(), real.join(name)).unwrap();
        let record = host.path(&format!("stdin-{name}.txt"));
        host.write_script(
            name,
            &format!(
                "case \" $* \" in *\" --version \"*|*\" --help \"*) exec {real}/{name} \"$@\";; esac\ncat > {record}\nexec {real}/{name} \"$@\"",
                real = real.display(),
                record = record.display(),
            ),
        );
    }
    host
}

fn unhealthy_events(hub: &Hub, gateway_id: &str) -> Vec<Value> {
    hub.select(
        "gateway_events",
        &format!("gateway_id=eq.{gateway_id}&select=*"),
    )
    .into_iter()
    .filter(|e| e.to_string().contains("provider_unhealthy"))
    .collect()
}

#[test]
fn large_prompts_go_by_stdin_and_oversized_input_fails_the_job_not_the_provider() {
    let hub = Hub::start();
    let host = recording_host();
    let team = hub.create_team("large-prompts");
    let gw = hub.pair(&team, "prompt-box");
    host.write_config(&hub, &gw, false);
    let mut running = host.start(&hub, &[]);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);

    // Over MAX_ARG_STRLEN (128 KiB): execve would refuse it as an argument.
    let big = format!("[[begin]]{}[[end]]", "lorem ipsum ".repeat(25_000));
    for (provider, payload) in [
        (
            "claude",
            json!({"provider": "claude_code", "model": "__default__", "prompt": big,
                   "json_schema": {"type": "object"}}),
        ),
        (
            "codex",
            json!({"provider": "codex", "model": "__default__", "prompt": big, "output_format": "text"}),
        ),
        (
            "gemini",
            json!({"provider": "gemini", "model": "__default__", "prompt": big, "output_format": "text"}),
        ),
    ] {
        let job = hub.insert_job(&gw, "model_run", payload);
        let row = hub.wait_job_terminal(&job, WAIT);
        assert_eq!(row["status"], "completed", "{provider}: {}", row["error"]);
        let got = std::fs::read_to_string(host.path(&format!("stdin-{provider}.txt"))).unwrap();
        assert!(
            got.starts_with("[[begin]]") && got.contains("[[end]]"),
            "{provider}: stdin held {} bytes",
            got.len()
        );
        assert!(got.len() >= big.len(), "{provider}: {} bytes", got.len());
    }

    // A subagent run takes the same path.
    let sid = panorama_testkit::new_uuid();
    hub.insert(
        "subagents",
        json!({"id": sid, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "idle", "config": {},
               "input": {"prompt": big}, "metadata": {}}),
    );
    let job = hub.insert_job(&gw, "subagent_run", json!({"subagent_id": sid}));
    let row = hub.wait_job_terminal(&job, WAIT);
    assert_eq!(
        row["result"]["status"], "completed",
        "{}",
        row["result"]["error"]
    );
    let got = std::fs::read_to_string(host.path("stdin-claude.txt")).unwrap();
    assert!(
        got.contains("[[begin]]") && got.contains("[[end]]"),
        "{} bytes",
        got.len()
    );

    // 7 MB over REST, as in the report.
    let huge = "x".repeat(7 * 1024 * 1024);
    let job = hub.insert_job(
        &gw,
        "model_run",
        json!({"provider": "codex", "model": "__default__", "prompt": huge, "output_format": "text"}),
    );
    let row = hub.wait_job_terminal(&job, WAIT);
    assert_eq!(row["status"], "completed", "{}", row["error"]);
    let got = std::fs::metadata(host.path("stdin-codex.txt"))
        .unwrap()
        .len();
    assert_eq!(got, huge.len() as u64);

    // A setting that only fits on the command line, over the limit: the
    // job fails saying so, and nothing counts against the provider.
    let job = hub.insert_job(
        &gw,
        "model_run",
        json!({"provider": "claude_code", "model": "__default__", "prompt": "hi",
               "append_system_prompt": "s".repeat(200 * 1024), "json_schema": {"type": "object"}}),
    );
    let row = hub.wait_job_terminal(&job, WAIT);
    assert_eq!(row["status"], "failed", "{}", row["result"]);
    let error = row["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("The value of --append-system-prompt is 204800 bytes; Claude takes it on the command line, where one argument is limited to 131071 bytes."),
        "{error}"
    );

    // The provider stayed healthy: no unhealthy event, nothing stored, and
    // the next small run works.
    let ok = hub.insert_job(
        &gw,
        "model_run",
        json!({"provider": "claude_code", "model": "__default__", "prompt": "Say hi.",
               "json_schema": {"type": "object"}}),
    );
    assert_eq!(hub.wait_job_terminal(&ok, WAIT)["status"], "completed");
    assert_eq!(unhealthy_events(&hub, &gw.gateway_id), Vec::<Value>::new());
    let health = host.config()["providerHealth"].clone();
    for provider in ["claude_code", "codex", "gemini"] {
        assert_eq!(health[provider]["status"], "healthy", "{health}");
    }
    assert!(running.terminate(WAIT).success());
}
