//! The hub's side of the later protocol generation (2.32.x), against a
//! real hub process: run acceptance (`accept_subagent_run`), the gateway's
//! run lifecycle through to `finalize-gateway-subagent-run` (both rows,
//! metadata merge, cancel markers, strict shapes, never overwriting a run
//! the control plane ended), cancelling an accepted run nobody started,
//! and team secrets (write-only over REST, resolved only for the gateway's
//! own running `shell_exec` job).

use panorama_testkit::{Hub, PairedGateway};
use reqwest::Method;
use serde_json::{json, Value};

fn rpc(hub: &Hub, token: &str, name: &str, args: Value) -> (u16, Value) {
    let res = hub
        .req(Method::POST, &format!("/rest/v1/rpc/{name}"), token)
        .json(&args)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

fn finalize(hub: &Hub, gw: &PairedGateway, body: Value) -> (u16, Value) {
    let res = hub
        .req(
            Method::POST,
            "/functions/v1/finalize-gateway-subagent-run",
            &gw.access_token,
        )
        .json(&body)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap())
}

fn one(hub: &Hub, table: &str, id: &str) -> Value {
    hub.row(table, id)
        .unwrap_or_else(|| panic!("no {table} row {id}"))
}

/// A subagent of `gw` that ran before: a session to continue and a stale
/// cancel request aimed at its previous run.
fn subagent(hub: &Hub, gw: &PairedGateway) -> String {
    let id = panorama_testkit::new_uuid();
    hub.insert(
        "subagents",
        json!({"id": id, "team_id": gw.team_id, "gateway_id": gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "completed",
               "input": {"prompt": "first"},
               "metadata": {"session_id": "sess-1", "cancel_run_id": "00000000-0000-4000-8000-000000000000",
                            "cancel_state": "requested", "cancel_reason": "old"}}),
    );
    id
}

fn accept(hub: &Hub, subagent_id: &str, prompt: &str) -> Value {
    let (status, body) = rpc(
        hub,
        &hub.service_key,
        "accept_subagent_run",
        json!({"p_subagent_id": subagent_id, "p_prompt": prompt}),
    );
    assert_eq!(status, 200, "accept: {body}");
    body
}

#[test]
fn accepted_runs_are_started_and_finalized_like_the_later_gateway_does() {
    let hub = Hub::start();
    let team = hub.create_team("later");
    let gw = hub.pair(&team, "box");
    let other = hub.pair(&team, "other-box");
    let sid = subagent(&hub, &gw);

    // Only the control plane accepts runs.
    let args = json!({"p_subagent_id": sid, "p_prompt": "x"});
    assert_eq!(
        rpc(&hub, &gw.access_token, "accept_subagent_run", args.clone()).0,
        403
    );
    assert_eq!(rpc(&hub, &hub.anon_key, "accept_subagent_run", args).0, 401);
    let (status, body) = rpc(
        &hub,
        &hub.service_key,
        "accept_subagent_run",
        json!({"p_subagent_id": panorama_testkit::new_uuid()}),
    );
    assert_eq!(status, 404, "{body}");

    let accepted = accept(&hub, &sid, " continue please ");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["run_sequence"], 1);
    let sub = one(&hub, "subagents", &sid);
    assert_eq!(sub["status"], "running");
    assert_eq!(sub["input"]["run_id"], run_id.as_str());
    assert_eq!(sub["input"]["run_sequence"], 1);
    assert_eq!(sub["metadata"]["current_run_id"], run_id.as_str());
    assert_eq!(sub["metadata"]["session_id"], "sess-1");
    assert!(sub["metadata"].get("cancel_run_id").is_none(), "{sub}");
    // A second acceptance while this run is active is refused; nothing changes.
    let (status, body) = rpc(
        &hub,
        &hub.service_key,
        "accept_subagent_run",
        json!({"p_subagent_id": sid, "p_prompt": "y"}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        hub.select("subagent_runs", &format!("subagent_id=eq.{sid}"))
            .len(),
        1
    );

    // What the 2.32 gateway does with its token: the acceptance check,
    // then mark-started as a compare-and-set (§3.6, §10.4).
    let check = hub
        .req(
            Method::GET,
            &format!("/rest/v1/subagent_runs?select=id,subagent_id,run_sequence,status,prompt&id=eq.{run_id}"),
            &gw.access_token,
        )
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(
        check[0],
        json!({"id": run_id, "subagent_id": sid, "run_sequence": 1, "status": "running", "prompt": "continue please"})
    );
    let started = hub
        .req(
            Method::PATCH,
            &format!("/rest/v1/subagent_runs?id=eq.{run_id}&subagent_id=eq.{sid}&status=eq.running&select=id"),
            &gw.access_token,
        )
        .header("prefer", "return=representation")
        .json(&json!({"started_at": "2026-01-01T00:00:00Z", "metadata": {"current_run_id": run_id}}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(started[0]["id"], run_id.as_str());
    // A cancel requested during the run (§9.4) leaves its markers.
    hub.patch(
        "subagents",
        &format!("id=eq.{sid}"),
        json!({"metadata": {"current_run_id": run_id, "session_id": "sess-1",
                            "cancel_run_id": run_id, "cancel_state": "requested", "cancel_requested_at": "t"}}),
    );

    // Strict request shapes: unknown keys, bad envelopes, bad statuses.
    for bad in [
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "completed"}),
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "done"}),
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "failed", "surprise": 1}),
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "completed",
               "output": {"schema_version": 1, "content": "x", "content_type": "html"}}),
    ] {
        let (status, body) = finalize(&hub, &gw, bad.clone());
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["success"], false);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("Invalid finalize request")
                || body["error"].as_str().unwrap().contains("envelope"),
            "{body}"
        );
    }
    assert_eq!(one(&hub, "subagent_runs", &run_id)["status"], "running");
    // Another gateway of the team cannot finalize it.
    let (_, body) = finalize(
        &hub,
        &other,
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "failed", "final_error": "x"}),
    );
    assert_eq!(body["success"], false);

    let output = json!({"schema_version": 1, "content": "done", "content_type": "markdown"});
    let (status, body) = finalize(
        &hub,
        &gw,
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "completed", "output": output,
               "failure_output": null, "final_error": null, "completed_at": "2026-01-01T00:01:00.000Z",
               "stderr": "warning: slow\n",
               "metadata_patch": {"session_id": "sess-2", "exit_code": 0, "cancel_run_id": null, "cancel_state": "none"}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "output": output, "status": "completed", "error": null})
    );
    let run = one(&hub, "subagent_runs", &run_id);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["output"], output);
    assert_eq!(run["completed_at"], "2026-01-01T00:01:00.000000+00:00");
    assert_eq!(run["metadata"]["exit_code"], 0);
    assert_eq!(run["metadata"]["stderr"], "warning: slow\n");
    assert_eq!(run["metadata"]["stderr_bytes"], 14);
    let sub = one(&hub, "subagents", &sid);
    assert_eq!(sub["status"], "completed");
    assert_eq!(sub["output"], output);
    assert_eq!(
        sub["metadata"]["session_id"], "sess-2",
        "continuation needs the new session"
    );
    assert_eq!(sub["metadata"]["exit_code"], 0);
    assert_eq!(sub["metadata"]["cancel_run_id"], Value::Null);
    assert_eq!(sub["metadata"]["cancel_requested_at"], Value::Null);
    assert_eq!(sub["metadata"]["cancel_state"], "none");
    assert_eq!(sub["metadata"]["cancelled"], false);
    // Finalizing again (a retry after a lost answer) reports the stored state.
    let (_, again) = finalize(
        &hub,
        &gw,
        json!({"subagent_id": sid, "run_id": run_id, "final_status": "failed", "final_error": "late"}),
    );
    assert_eq!(again["success"], true);
    assert_eq!(again["status"], "completed");
    assert_eq!(one(&hub, "subagent_runs", &run_id)["status"], "completed");

    // The next run continues the session; the control plane cancels it
    // while the gateway works, and the gateway's completion does not
    // overwrite that.
    let second = accept(&hub, &sid, "next");
    let run2 = second["run_id"].as_str().unwrap().to_string();
    assert_eq!(second["run_sequence"], 2);
    assert_eq!(
        one(&hub, "subagents", &sid)["metadata"]["session_id"],
        "sess-2"
    );
    hub.patch(
        "subagent_runs",
        &format!("id=eq.{run2}"),
        json!({"started_at": "2026-01-01T00:02:00Z"}),
    );
    // Started by a gateway: the control plane's cancel leaves it to the gateway.
    let (status, body) = rpc(
        &hub,
        &hub.service_key,
        "request_subagent_run_cancellation",
        json!({"p_run_id": run2}),
    );
    assert_eq!(
        (status, body["cancelled"].clone()),
        (200, json!(false)),
        "{body}"
    );
    hub.patch(
        "subagent_runs",
        &format!("id=eq.{run2}"),
        json!({"status": "cancelled", "error": "stopped by the platform"}),
    );
    let (_, body) = finalize(
        &hub,
        &gw,
        json!({"subagent_id": sid, "run_id": run2, "final_status": "completed", "output": output}),
    );
    assert_eq!(body["success"], true);
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["error"], "stopped by the platform");
    assert_eq!(one(&hub, "subagent_runs", &run2)["status"], "cancelled");
}

#[test]
fn an_accepted_run_nobody_started_is_cancelled_with_its_subagent() {
    let hub = Hub::start();
    let team = hub.create_team("later");
    let gw = hub.pair(&team, "box");
    let sid = subagent(&hub, &gw);
    let run_id = accept(&hub, &sid, "p")["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        rpc(
            &hub,
            &gw.access_token,
            "request_subagent_run_cancellation",
            json!({"p_run_id": run_id})
        )
        .0,
        403
    );
    let (status, body) = rpc(
        &hub,
        &hub.service_key,
        "request_subagent_run_cancellation",
        json!({"p_run_id": run_id, "p_reason": "changed my mind"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelled"], true);
    let run = one(&hub, "subagent_runs", &run_id);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["error"], "changed my mind");
    assert_eq!(run["output"]["content"], "changed my mind");
    assert_eq!(run["metadata"]["cancel_state"], "acknowledged");
    let sub = one(&hub, "subagents", &sid);
    assert_eq!(sub["status"], "cancelled");
    assert_eq!(sub["metadata"]["cancelled"], true);
    assert_eq!(sub["metadata"]["session_id"], "sess-1");
    // The run is no longer active: the gateway's mark-started CAS misses.
    let started = hub
        .req(
            Method::PATCH,
            &format!("/rest/v1/subagent_runs?id=eq.{run_id}&status=eq.running&select=id"),
            &gw.access_token,
        )
        .header("prefer", "return=representation")
        .json(&json!({"started_at": "2026-01-01T00:00:00Z"}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(started, json!([]));
    // Cancelling again changes nothing.
    let (_, body) = rpc(
        &hub,
        &hub.service_key,
        "request_subagent_run_cancellation",
        json!({"p_run_id": run_id}),
    );
    assert_eq!(body["cancelled"], false);
}

#[test]
fn team_secrets_are_write_only_and_resolve_only_for_the_gateways_running_shell_exec() {
    let hub = Hub::start();
    let team = hub.create_team("secrets");
    let other_team = hub.create_team("others");
    let gw = hub.pair(&team, "box");
    let same_team = hub.pair(&team, "box-2");
    let stranger = hub.pair(&other_team, "elsewhere");
    const VALUE: &str = "ghp_live_value_123456";

    // `secret set` from stdin (one trailing newline dropped) and from a file.
    let out = hub.cli(
        &["secret", "set", "--team", &team, "gh-token"],
        Some(&format!("{VALUE}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "db-pass-7890").unwrap();
    let out = hub.cli(
        &[
            "secret",
            "set",
            "--team",
            &team,
            "db",
            "--value-file",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (args, stdin, wanted) in [
        (
            vec!["secret", "set", "--team", &team, "bad name"],
            Some("x"),
            "not a valid secret name",
        ),
        (
            vec!["secret", "set", "--team", &team, "empty"],
            Some("\n"),
            "value is empty",
        ),
        (
            vec!["secret", "delete", "--team", &team, "nope"],
            None,
            "has no secret nope",
        ),
    ] {
        let out = hub.cli(&args, stdin);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    // Replacing keeps one row.
    let out = hub.cli(&["secret", "set", "--team", &team, "gh-token"], Some(VALUE));
    assert!(out.status.success());
    let out = hub.cli(&["--json", "secret", "list", "--team", &team], None);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "gh-token"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(VALUE));

    // Over REST: the service key sees names only and cannot select,
    // filter or order by the value; gateways see nothing at all.
    let all = hub.select("team_secrets", "select=*");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.get("value").is_none()), "{all:?}");
    for query in [
        "select=value",
        "value=eq.x",
        "order=value.asc",
        "or=(value.eq.x,name.eq.db)",
    ] {
        let res = hub
            .req(
                Method::GET,
                &format!("/rest/v1/team_secrets?{query}"),
                &hub.service_key,
            )
            .send()
            .unwrap();
        assert_eq!(res.status(), 403, "{query}");
    }
    for token in [&gw.access_token, &stranger.access_token] {
        let res = hub
            .req(Method::GET, "/rest/v1/team_secrets", token)
            .send()
            .unwrap();
        assert_eq!(res.status(), 403);
    }

    // resolve_secret_placeholders_for_job: only the gateway's own running
    // shell_exec job, with rows in the reference shape plus `value`.
    let job = |g: &PairedGateway, job_type: &str, status: &str, secret_env: Value| {
        hub.insert(
            "gateway_jobs",
            json!({"team_id": g.team_id, "gateway_id": g.gateway_id, "job_type": job_type, "status": status,
                   "payload": {"resource_id": "r", "command": "true", "secret_env": secret_env}}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let env = json!({"API_TOKEN": "gh-token", "DB_PASS": "db"});
    let running = job(&gw, "shell_exec", "running", env.clone());
    let (status, rows) = rpc(
        &hub,
        &gw.access_token,
        "resolve_secret_placeholders_for_job",
        json!({"p_job_id": running}),
    );
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["env_name"], "API_TOKEN");
    assert_eq!(rows[0]["secret_name"], "gh-token");
    assert_eq!(rows[0]["value"], VALUE);
    assert_eq!(rows[1]["value"], "db-pass-7890");
    for r in &rows {
        assert!(
            panorama_protocol::secrets::is_placeholder(r["placeholder"].as_str().unwrap()),
            "{r}"
        );
    }
    let refused = [
        (&same_team, running.clone(), "another gateway's job"),
        (&stranger, running.clone(), "another team's job"),
        (
            &gw,
            job(&gw, "shell_exec", "queued", env.clone()),
            "a job not claimed yet",
        ),
        (
            &gw,
            job(&gw, "shell_exec", "completed", env.clone()),
            "a finished job",
        ),
        (
            &gw,
            job(&gw, "model_run", "running", env.clone()),
            "a job of another type",
        ),
    ];
    for (caller, job_id, what) in refused {
        let (status, body) = rpc(
            &hub,
            &caller.access_token,
            "resolve_secret_placeholders_for_job",
            json!({"p_job_id": job_id}),
        );
        assert_eq!(status, 403, "{what}: {body}");
        assert!(!body.to_string().contains(VALUE), "{what}");
    }
    for token in [&hub.service_key, &hub.anon_key] {
        let (status, body) = rpc(
            &hub,
            token,
            "resolve_secret_placeholders_for_job",
            json!({"p_job_id": running}),
        );
        assert!(matches!(status, 401 | 403), "{status} {body}");
        assert!(!body.to_string().contains(VALUE));
    }
    // A missing secret is left out: the gateway's row count check fails closed.
    let partial = job(
        &gw,
        "shell_exec",
        "running",
        json!({"A": "gh-token", "B": "missing"}),
    );
    let (_, rows) = rpc(
        &hub,
        &gw.access_token,
        "resolve_secret_placeholders_for_job",
        json!({"p_job_id": partial}),
    );
    assert_eq!(rows.as_array().unwrap().len(), 1);
    // Deleted secrets resolve no more.
    let out = hub.cli(&["secret", "delete", "--team", &team, "gh-token"], None);
    assert!(out.status.success());
    let (_, rows) = rpc(
        &hub,
        &gw.access_token,
        "resolve_secret_placeholders_for_job",
        json!({"p_job_id": running}),
    );
    assert_eq!(rows.as_array().unwrap().len(), 1);

    // The value is in no answer the hub gave, and in no log line.
    let log_dir = hub.data_dir.path();
    for entry in std::fs::read_dir(log_dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(
                !text.contains(VALUE),
                "{} holds a secret",
                entry.path().display()
            );
        }
    }
}
