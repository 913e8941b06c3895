//! Drives a real `panorama-hub` process over HTTP on loopback: pairing,
//! auth refresh, the PostgREST surface, RPCs, functions and bad input.

use panorama_testkit::Hub;
use reqwest::Method;
use serde_json::{json, Value};

panorama_testkit::on_both_backends! {
fn pairing_heartbeat_and_a_gateway_claiming_its_job() {
    let hub = Hub::start();
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box-1");
    assert_eq!(gw.team_id, team);

    // Heartbeat records status, capabilities, device name and ready_at.
    let res = hub
        .req(Method::POST, "/functions/v1/gateway-heartbeat", &gw.access_token)
        .json(&json!({"status": "ready", "capabilities": {"schema_version": "v1"}, "device_name": "renamed"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().unwrap(),
        json!({"success": true, "egress_credential_renewal": null})
    );
    let row = &hub.select("team_gateways", &format!("id=eq.{}", gw.gateway_id))[0];
    assert_eq!(row["status"], "ready");
    assert_eq!(row["device_name"], "renamed");
    assert!(row["ready_at"].is_string() && row["last_seen_at"].is_string());

    // A bad status is refused with a clear message.
    let res = hub
        .req(
            Method::POST,
            "/functions/v1/gateway-heartbeat",
            &gw.access_token,
        )
        .json(&json!({"status": "sleepy", "capabilities": {}}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("Invalid status"));

    // The service inserts a job; the gateway sees it and claims it once.
    let job = hub.insert(
        "gateway_jobs",
        json!({"team_id": team, "gateway_id": gw.gateway_id, "job_type": "diagnostic"}),
    );
    let id = job["id"].as_str().unwrap();
    let backlog: Value = hub
        .req(Method::GET, &format!("/rest/v1/gateway_jobs?select=id,status&team_id=eq.{team}&gateway_id=eq.{}&status=eq.queued&order=created_at.asc", gw.gateway_id), &gw.access_token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(backlog, json!([{"id": id, "status": "queued"}]));
    let claim = |token: &str| -> Value {
        hub.req(
            Method::PATCH,
            &format!("/rest/v1/gateway_jobs?id=eq.{id}&status=eq.queued&select=id"),
            token,
        )
        .header("prefer", "return=representation")
        .json(&json!({"status": "running", "started_at": "2025-01-01T12:00:00.000Z"}))
        .send()
        .unwrap()
        .json()
        .unwrap()
    };
    assert_eq!(claim(&gw.access_token), json!([{"id": id}]));
    assert_eq!(
        claim(&gw.access_token),
        json!([]),
        "a second claim must match nothing"
    );

    // The transition guard: running → queued is refused, running → completed allowed.
    let res = hub
        .req(
            Method::PATCH,
            &format!("/rest/v1/gateway_jobs?id=eq.{id}"),
            &gw.access_token,
        )
        .json(&json!({"status": "queued"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().unwrap()["code"], "42501");
    let res = hub
        .req(Method::PATCH, &format!("/rest/v1/gateway_jobs?id=eq.{id}&status=eq.running"), &gw.access_token)
        .json(&json!({"status": "completed", "result": {"ok": true}, "completed_at": "2025-01-01T12:00:01.000Z"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    let row = &hub.select("gateway_jobs", &format!("id=eq.{id}"))[0];
    assert_eq!(row["status"], "completed");
    assert_eq!(row["result"], json!({"ok": true}));
    assert_eq!(row["completed_at"], "2025-01-01T12:00:01.000000+00:00");
}
}

panorama_testkit::on_both_backends! {
fn pairing_codes_are_single_use_and_must_be_valid() {
    let hub = Hub::start();
    let team = hub.create_team("acme");
    let code = hub.create_pairing_code(&team);
    let pair = |code: &str| {
        hub.req(
            Method::POST,
            "/functions/v1/exchange-gateway-pairing-code",
            &hub.anon_key,
        )
        .json(&json!({"code": code, "device_name": "x"}))
        .send()
        .unwrap()
    };
    assert_eq!(
        pair(&code.to_lowercase()).status(),
        200,
        "codes are case-insensitive"
    );
    let again = pair(&code);
    assert_eq!(again.status(), 404);
    assert_eq!(
        again.json::<Value>().unwrap(),
        json!({"success": false, "error": "Invalid or expired pairing code"})
    );
    assert_eq!(pair("NOPE-NOPE").status(), 404);
    assert_eq!(pair("").status(), 400);
    hub.insert(
        "gateway_pairing_codes",
        json!({"code": "OLD-CODE", "team_id": team, "expires_at": "2000-01-01T00:00:00Z"}),
    );
    assert_eq!(pair("OLD-CODE").status(), 404, "expired codes are refused");
}
}

panorama_testkit::on_both_backends! {
fn refresh_rotates_and_detects_reuse() {
    let hub = Hub::start_with_env(&[("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0")]);
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box");
    let refresh = |token: &str| {
        hub.http()
            .post(format!(
                "{}/auth/v1/token?grant_type=refresh_token",
                hub.url
            ))
            .header("apikey", &hub.anon_key)
            .header("authorization", format!("Bearer {}", hub.anon_key))
            .json(&json!({"refresh_token": token}))
            .send()
            .unwrap()
    };
    let res = refresh(&gw.refresh_token);
    assert_eq!(res.status(), 200);
    let session: Value = res.json().unwrap();
    let new_refresh = session["refresh_token"].as_str().unwrap();
    assert_ne!(new_refresh, gw.refresh_token);
    assert_eq!(session["token_type"], "bearer");
    assert!(session["expires_in"].as_i64().unwrap() > 0);
    assert!(session["expires_at"].as_i64().unwrap() > 0);
    assert_eq!(
        session["user"]["app_metadata"]["gateway_id"],
        gw.gateway_id.as_str()
    );

    // The new access token works for /auth/v1/user and REST.
    let token = session["access_token"].as_str().unwrap();
    let user = hub.req(Method::GET, "/auth/v1/user", token).send().unwrap();
    assert_eq!(user.status(), 200);

    // Reusing the old refresh token is refused and revokes the family.
    let res = refresh(&gw.refresh_token);
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-supabase-api-version"], "2024-01-01");
    assert_eq!(
        res.json::<Value>().unwrap()["code"],
        "refresh_token_already_used"
    );
    let res = refresh(new_refresh);
    assert_eq!(
        res.status(),
        400,
        "the whole session is revoked after reuse"
    );
    let user = hub.req(Method::GET, "/auth/v1/user", token).send().unwrap();
    assert_eq!(user.status(), 403);
    assert_eq!(user.json::<Value>().unwrap()["code"], "session_not_found");

    let res = refresh("never-issued");
    assert_eq!(
        res.json::<Value>().unwrap()["code"],
        "refresh_token_not_found"
    );
}
}

panorama_testkit::on_both_backends! {
fn refresh_tolerates_a_lost_response_within_the_grace_interval() {
    let hub = Hub::start();
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box");
    let refresh = |token: &str| -> Value {
        hub.http()
            .post(format!(
                "{}/auth/v1/token?grant_type=refresh_token",
                hub.url
            ))
            .header("apikey", &hub.anon_key)
            .json(&json!({"refresh_token": token}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let first = refresh(&gw.refresh_token);
    assert!(first["access_token"].is_string(), "{first}");
    let retry = refresh(&gw.refresh_token);
    assert!(
        retry["access_token"].is_string(),
        "a client that lost the response may retry: {retry}"
    );
}
}

panorama_testkit::on_both_backends! {
fn postgrest_shapes_single_count_and_errors() {
    let hub = Hub::start();
    let team = hub.create_team("acme");
    for i in 0..3 {
        hub.insert(
            "gateway_jobs",
            json!({"team_id": team, "job_type": format!("t{i}"), "attempt": i}),
        );
    }
    let sk = hub.service_key.clone();
    // count=exact → 206 with Content-Range when a page is partial.
    let res = hub
        .req(
            Method::GET,
            "/rest/v1/gateway_jobs?select=job_type&order=attempt.desc&limit=2",
            &sk,
        )
        .header("prefer", "count=exact")
        .send()
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "0-1/3");
    assert_eq!(
        res.json::<Value>().unwrap(),
        json!([{"job_type": "t2"}, {"job_type": "t1"}])
    );
    // Offset beyond the total → 416 PGRST103.
    let res = hub
        .req(Method::GET, "/rest/v1/gateway_jobs?offset=10", &sk)
        .header("prefer", "count=exact")
        .send()
        .unwrap();
    assert_eq!(res.status(), 416);
    // single(): an object for one row, 406 PGRST116 otherwise.
    let single = |q: &str| {
        hub.req(Method::GET, &format!("/rest/v1/gateway_jobs?{q}"), &sk)
            .header("accept", "application/vnd.pgrst.object+json")
            .send()
            .unwrap()
    };
    let res = single("job_type=eq.t0&select=job_type");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/vnd.pgrst.object+json"));
    assert_eq!(res.json::<Value>().unwrap(), json!({"job_type": "t0"}));
    let res = single("job_type=eq.none");
    assert_eq!(res.status(), 406);
    assert_eq!(
        res.json::<Value>().unwrap(),
        json!({"code": "PGRST116", "details": "The result contains 0 rows", "hint": null, "message": "Cannot coerce the result to a single JSON object"})
    );
    // A singular update that matches several rows changes nothing.
    let res = hub
        .req(Method::PATCH, "/rest/v1/gateway_jobs?job_type=like.t*", &sk)
        .header("accept", "application/vnd.pgrst.object+json")
        .header("prefer", "return=representation")
        .json(&json!({"error": "touched"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 406);
    assert!(
        hub.select("gateway_jobs", "error=eq.touched").is_empty(),
        "the failed singular update rolled back"
    );

    let error = |method: Method, path: &str, body: Option<&str>| -> (u16, Value) {
        let mut r = hub
            .req(method, path, &sk)
            .header("content-type", "application/json");
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let res = r.send().unwrap();
        (res.status().as_u16(), res.json().unwrap_or(Value::Null))
    };
    let (s, b) = error(Method::GET, "/rest/v1/nope", None);
    assert_eq!((s, b["code"].as_str()), (404, Some("42P01")));
    let (s, b) = error(Method::GET, "/rest/v1/gateway_jobs?nope=eq.1", None);
    assert_eq!((s, b["code"].as_str()), (400, Some("42703")));
    let (s, b) = error(Method::GET, "/rest/v1/gateway_jobs?id=eq.not-a-uuid", None);
    assert_eq!((s, b["code"].as_str()), (400, Some("22P02")));
    let (s, b) = error(
        Method::GET,
        "/rest/v1/gateway_jobs?or=(status.eq.queued",
        None,
    );
    assert_eq!((s, b["code"].as_str()), (400, Some("PGRST100")));
    let (s, b) = error(Method::POST, "/rest/v1/gateway_jobs", Some("{not json"));
    assert_eq!((s, b["code"].as_str()), (400, Some("PGRST102")));
    let (s, b) = error(
        Method::POST,
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": team, "bogus": 1}).to_string()),
    );
    assert_eq!((s, b["code"].as_str()), (400, Some("PGRST204")));
    let (s, b) = error(
        Method::POST,
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": team, "status": "weird"}).to_string()),
    );
    assert_eq!((s, b["code"].as_str()), (400, Some("23514")));
    let (s, b) = error(
        Method::POST,
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": panorama_testkit::new_uuid()}).to_string()),
    );
    assert_eq!((s, b["code"].as_str()), (409, Some("23503")));
    let (s, b) = error(Method::POST, "/rest/v1/rpc/nope", Some("{}"));
    assert_eq!((s, b["code"].as_str()), (404, Some("PGRST202")));

    // Bulk insert is all-or-nothing.
    let (s, _) = error(
        Method::POST,
        "/rest/v1/gateway_jobs",
        Some(
            &json!([{"team_id": team, "job_type": "bulk"}, {"team_id": team, "status": "weird"}])
                .to_string(),
        ),
    );
    assert_eq!(s, 400);
    assert!(
        hub.select("gateway_jobs", "job_type=eq.bulk").is_empty(),
        "no partial write"
    );

    // Bodies over the size limit are refused.
    let big = format!(
        "{{\"team_id\": \"{team}\", \"error\": \"{}\"}}",
        "x".repeat(9 * 1024 * 1024)
    );
    // (On its own connection: the hub closes it without reading the body.)
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/rest/v1/gateway_jobs", hub.url))
        .header("apikey", &hub.anon_key)
        .header("authorization", format!("Bearer {sk}"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(res.status(), 413);

    // No API key / wrong API key: the Supabase gateway's answers.
    let res = hub
        .http()
        .get(format!("{}/rest/v1/gateway_jobs", hub.url))
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().unwrap()["message"],
        "No API key found in request"
    );
}
}

panorama_testkit::on_both_backends! {
fn run_sequences_events_and_unique_violations() {
    let hub = Hub::start();
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box");
    let subagent = panorama_testkit::new_uuid();
    hub.insert("subagents", json!({"id": subagent, "team_id": team, "gateway_id": gw.gateway_id, "subagent_type": "claude_code_gateway"}));
    let allocate = |token: &str, id: &str| {
        hub.req(
            Method::POST,
            "/rest/v1/rpc/allocate_subagent_run_sequence",
            token,
        )
        .json(&json!({"p_subagent_id": id}))
        .send()
        .unwrap()
    };
    assert_eq!(
        allocate(&gw.access_token, &subagent)
            .json::<Value>()
            .unwrap(),
        json!(1)
    );
    assert_eq!(
        allocate(&gw.access_token, &subagent)
            .json::<Value>()
            .unwrap(),
        json!(2)
    );

    let run_id = panorama_testkit::new_uuid();
    let run = json!({"id": run_id, "subagent_id": subagent, "team_id": team, "gateway_id": gw.gateway_id, "run_sequence": 2, "status": "running", "prompt": "hi"});
    let res = hub
        .req(Method::POST, "/rest/v1/subagent_runs", &gw.access_token)
        .json(&run)
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let mut second = run.clone();
    second["id"] = json!(panorama_testkit::new_uuid());
    second["run_sequence"] = json!(3);
    let res = hub
        .req(Method::POST, "/rest/v1/subagent_runs", &gw.access_token)
        .json(&second)
        .send()
        .unwrap();
    assert_eq!(res.status(), 409, "only one running run per subagent");
    let body: Value = res.json().unwrap();
    assert_eq!(body["code"], "23505");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("subagent_runs_one_running"),
        "{body}"
    );
    // The allocator never hands out a sequence that is taken.
    assert_eq!(
        allocate(&gw.access_token, &subagent)
            .json::<Value>()
            .unwrap(),
        json!(3)
    );

    let event = |seq: i64| json!({"run_id": run_id, "subagent_id": subagent, "team_id": team, "gateway_id": gw.gateway_id, "sequence": seq, "event_type": "message", "payload": {"text": "hi"}});
    let res = hub
        .req(
            Method::POST,
            "/rest/v1/subagent_run_events",
            &gw.access_token,
        )
        .json(&json!([event(0), event(1)]))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = hub
        .req(
            Method::POST,
            "/rest/v1/subagent_run_events",
            &gw.access_token,
        )
        .json(&event(1))
        .send()
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().unwrap()["code"], "23505");
    let mut bad = event(2);
    bad["event_type"] = json!("gossip");
    let res = hub
        .req(
            Method::POST,
            "/rest/v1/subagent_run_events",
            &gw.access_token,
        )
        .json(&bad)
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    let events = hub.select(
        "subagent_run_events",
        &format!("run_id=eq.{run_id}&order=sequence.asc&select=sequence"),
    );
    assert_eq!(events, vec![json!({"sequence": 0}), json!({"sequence": 1})]);

    // finalize-gateway-subagent-run (later protocol) closes both rows.
    hub.req(
        Method::PATCH,
        &format!("/rest/v1/subagents?id=eq.{subagent}"),
        &hub.service_key,
    )
    .json(&json!({"status": "running"}))
    .send()
    .unwrap();
    let res = hub
        .req(Method::POST, "/functions/v1/finalize-gateway-subagent-run", &gw.access_token)
        .json(&json!({"subagent_id": subagent, "run_id": run_id, "final_status": "completed", "output": {"schema_version": 1, "content": "done", "content_type": "markdown"}, "metadata_patch": {"exit_code": 0}}))
        .send()
        .unwrap();
    let body: Value = res.json().unwrap();
    assert_eq!(body["success"], json!(true), "{body}");
    assert_eq!(
        hub.select("subagent_runs", &format!("id=eq.{run_id}"))[0]["status"],
        "completed"
    );
    assert_eq!(
        hub.select("subagent_runs", &format!("id=eq.{run_id}"))[0]["metadata"]["exit_code"],
        0
    );
    assert_eq!(
        hub.select("subagents", &format!("id=eq.{subagent}"))[0]["status"],
        "completed"
    );
}
}

panorama_testkit::on_both_backends! {
fn tokens_expired_forged_and_anon_are_refused() {
    let hub = Hub::start_with_env(&[("PANORAMA_HUB_ACCESS_TOKEN_TTL", "1")]);
    let team = hub.create_team("acme");
    let gw = hub.pair(&team, "box");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let res = hub
        .req(Method::GET, "/rest/v1/gateway_jobs", &gw.access_token)
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().unwrap()["code"], "PGRST303");

    // Change one signature character that carries whole bits: the last
    // one carries padding bits a lenient decoder ignores, and replacing it
    // with 'A' was no change at all when it already was one (1 in 16).
    let mut forged = gw.access_token.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let res = hub
        .req(Method::GET, "/rest/v1/gateway_jobs", &forged)
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().unwrap()["code"], "PGRST301");

    let res = hub
        .req(Method::GET, "/rest/v1/gateway_jobs", &hub.anon_key)
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().unwrap()["code"], "42501");
    let res = hub
        .req(
            Method::POST,
            "/rest/v1/rpc/allocate_subagent_run_sequence",
            &hub.anon_key,
        )
        .json(&json!({"p_subagent_id": panorama_testkit::new_uuid()}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
}
}

panorama_testkit::on_both_backends! {
fn merge_upsert_overwrites_only_the_columns_it_names() {
    let hub = Hub::start();
    let team = hub.create_team("upsert-team");
    let gw = hub.pair(&team, "upsert-box");
    let job = hub.insert(
        "gateway_jobs",
        json!({"team_id": team, "gateway_id": gw.gateway_id, "job_type": "diagnostic",
               "payload": {"keep": true}, "requested_via": "test"}),
    );
    let id = job["id"].as_str().unwrap();
    let upsert = |body: Value, query: &str| {
        let res = hub
            .req(
                Method::POST,
                &format!("/rest/v1/gateway_jobs{query}"),
                &hub.service_key,
            )
            .header(
                "prefer",
                "resolution=merge-duplicates,return=representation",
            )
            .json(&body)
            .send()
            .unwrap();
        let status = res.status();
        let rows: Value = res.json().unwrap();
        assert!(status.is_success(), "{status} {rows}");
        rows[0].clone()
    };
    // As in PostgreSQL, the proposed row must satisfy NOT NULL before the
    // conflict is resolved, so the required columns are sent; `payload`,
    // `requested_via` and `created_at` are not, and stay.
    let required =
        json!({"id": id, "team_id": team, "gateway_id": gw.gateway_id, "job_type": "diagnostic"});
    let with = |extra: Value| {
        let mut body = required.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let row = upsert(with(json!({"error": "note"})), "");
    assert_eq!(row["error"], "note");
    assert_eq!(row["payload"], json!({"keep": true}));
    assert_eq!(row["requested_via"], "test");
    assert_eq!(row["created_at"], job["created_at"]);
    assert_eq!(row["status"], "queued");
    // Nothing new: the row comes back unchanged.
    let same = upsert(required.clone(), "");
    assert_eq!(same["error"], "note");
    assert_eq!(same["payload"], json!({"keep": true}));
    // `columns=` limits what is written even when the body has more keys.
    let row = upsert(
        with(json!({"error": "second", "payload": {"keep": false}})),
        "?columns=id,team_id,gateway_id,job_type,error",
    );
    assert_eq!(row["error"], "second");
    assert_eq!(row["payload"], json!({"keep": true}));
    // A new key is still a plain insert with defaults.
    let fresh = panorama_testkit::new_uuid();
    let row = upsert(
        json!({"id": fresh, "team_id": team, "gateway_id": gw.gateway_id, "job_type": "diagnostic"}),
        "",
    );
    assert_eq!(row["id"], fresh.as_str());
    assert_eq!(row["status"], "queued");
}
}
