//! A gateway token of team A against team B's rows, for every table and
//! verb of the REST API: every read comes back empty or refused, every
//! write changes nothing. Prints the size of the matrix.

use panorama_testkit::Hub;
use reqwest::Method;
use serde_json::{json, Value};

fn uuid() -> String {
    let h = panorama_testkit::uuid_like();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[test]
fn a_gateway_of_team_a_cannot_touch_team_b() {
    let hub = Hub::start();
    let team_a = hub.create_team("a");
    let team_b = hub.create_team("b");
    let gw_a = hub.pair(&team_a, "a");
    let gw_b = hub.pair(&team_b, "b");
    let gw_a2 = hub.pair(&team_a, "a2"); // same team, other gateway

    // Team B's (and gateway A2's) rows, created by the control plane.
    let mut victims: Vec<(&str, Value)> = Vec::new();
    for (team, gw) in [(&team_b, &gw_b.gateway_id), (&team_a, &gw_a2.gateway_id)] {
        let sub = uuid();
        hub.insert(
            "subagents",
            json!({"id": sub, "team_id": team, "gateway_id": gw, "subagent_type": "codex_gateway"}),
        );
        let run = hub.insert(
            "subagent_runs",
            json!({"subagent_id": sub, "team_id": team, "gateway_id": gw, "run_sequence": 1}),
        );
        let event = hub.insert("subagent_run_events", json!({"run_id": run["id"], "subagent_id": sub, "team_id": team, "gateway_id": gw, "sequence": 0, "event_type": "run_started"}));
        let job = hub.insert(
            "gateway_jobs",
            json!({"team_id": team, "gateway_id": gw, "job_type": "diagnostic"}),
        );
        let gev = hub.insert(
            "gateway_events",
            json!({"team_id": team, "gateway_id": gw, "message": "hello"}),
        );
        victims.push(("subagents", json!({"id": sub})));
        victims.push(("subagent_runs", run));
        victims.push(("subagent_run_events", event));
        victims.push(("gateway_jobs", job));
        victims.push(("gateway_events", gev));
        victims.push(("team_gateways", json!({"id": gw})));
    }
    let res_b = hub.insert("team_resources", json!({"team_id": team_b, "resource_type": "remote_shell", "metadata": {"gateway_id": gw_b.gateway_id, "full_control": true}}));
    victims.push(("team_resources", res_b));
    victims.push(("teams", json!({"id": team_b})));

    let token = &gw_a.access_token;
    let mut cases = 0;
    let mut refusals = 0;
    for (table, row) in &victims {
        let id = row["id"].as_str().unwrap();
        let filter = format!("id=eq.{id}");
        // Read: empty or refused.
        let res = hub
            .req(Method::GET, &format!("/rest/v1/{table}?{filter}"), token)
            .send()
            .unwrap();
        cases += 1;
        if res.status().is_success() {
            assert_eq!(
                res.json::<Value>().unwrap(),
                json!([]),
                "{table}: team A read team B's row"
            );
        } else {
            refusals += 1;
        }
        // Update: 0 rows or refused, and the row is unchanged.
        let before = hub.select(table, &filter);
        let patch = json!({"status": "failed"});
        let res = hub
            .req(Method::PATCH, &format!("/rest/v1/{table}?{filter}"), token)
            .header("prefer", "return=representation")
            .json(&patch)
            .send()
            .unwrap();
        cases += 1;
        if res.status().is_success() {
            assert_eq!(
                res.json::<Value>().unwrap(),
                json!([]),
                "{table}: team A updated team B's row"
            );
        } else {
            refusals += 1;
        }
        assert_eq!(hub.select(table, &filter), before, "{table}: row changed");
        // Delete: refused, row still there.
        let res = hub
            .req(Method::DELETE, &format!("/rest/v1/{table}?{filter}"), token)
            .send()
            .unwrap();
        cases += 1;
        assert!(
            res.status().is_client_error(),
            "{table}: delete was not refused"
        );
        refusals += 1;
        assert_eq!(hub.select(table, &filter).len(), 1, "{table}: row deleted");
    }

    // Inserts into team B (or as gateway B) are refused by the row check.
    let sub_b = victims[0].1["id"].as_str().unwrap();
    let run_b = victims[1].1["id"].as_str().unwrap();
    let inserts = [
        (
            "gateway_events",
            json!({"team_id": team_b, "gateway_id": gw_b.gateway_id, "message": "spoof"}),
        ),
        (
            "gateway_events",
            json!({"team_id": team_a, "gateway_id": gw_a2.gateway_id, "message": "spoof"}),
        ),
        (
            "subagent_runs",
            json!({"subagent_id": sub_b, "team_id": team_b, "gateway_id": gw_b.gateway_id, "run_sequence": 9}),
        ),
        (
            "subagent_runs",
            json!({"subagent_id": sub_b, "team_id": team_a, "gateway_id": gw_a.gateway_id, "run_sequence": 9}),
        ),
        (
            "subagent_run_events",
            json!({"run_id": run_b, "subagent_id": sub_b, "team_id": team_a, "gateway_id": gw_a.gateway_id, "sequence": 5, "event_type": "message"}),
        ),
        (
            "gateway_jobs",
            json!({"team_id": team_a, "gateway_id": gw_a.gateway_id}),
        ),
        ("teams", json!({"name": "evil"})),
        (
            "gateway_pairing_codes",
            json!({"code": "EVIL", "team_id": team_b, "expires_at": "2999-01-01T00:00:00Z"}),
        ),
        (
            "team_resources",
            json!({"team_id": team_a, "resource_type": "remote_shell"}),
        ),
    ];
    for (table, row) in inserts {
        let res = hub
            .req(Method::POST, &format!("/rest/v1/{table}"), token)
            .json(&row)
            .send()
            .unwrap();
        cases += 1;
        assert!(
            matches!(res.status().as_u16(), 401 | 403),
            "{table}: insert not refused: {}",
            res.status()
        );
        refusals += 1;
    }

    // RPC on B's subagent, heartbeat spoofing another gateway.
    let res = hub
        .req(
            Method::POST,
            "/rest/v1/rpc/allocate_subagent_run_sequence",
            token,
        )
        .json(&json!({"p_subagent_id": sub_b}))
        .send()
        .unwrap();
    cases += 1;
    assert_eq!(res.status(), 403);
    refusals += 1;
    // A job of our own may not be handed to gateway B.
    let own = hub.insert(
        "gateway_jobs",
        json!({"team_id": team_a, "gateway_id": gw_a.gateway_id}),
    );
    let res = hub
        .req(
            Method::PATCH,
            &format!(
                "/rest/v1/gateway_jobs?id=eq.{}",
                own["id"].as_str().unwrap()
            ),
            token,
        )
        .json(&json!({"gateway_id": gw_b.gateway_id}))
        .send()
        .unwrap();
    cases += 1;
    assert_eq!(res.status(), 403);
    refusals += 1;

    // A revoked gateway gets nothing at all.
    hub.req(
        Method::PATCH,
        &format!("/rest/v1/team_gateways?id=eq.{}", gw_a.gateway_id),
        &hub.service_key,
    )
    .json(&json!({"revoked_at": "2025-01-01T00:00:00Z"}))
    .send()
    .unwrap();
    let res = hub
        .req(Method::GET, "/rest/v1/gateway_jobs", token)
        .send()
        .unwrap();
    cases += 1;
    assert_eq!(res.status(), 403);
    refusals += 1;

    println!("isolation matrix: {cases} cases, {refusals} refused outright, the rest answered with no rows");
}
