//! People on the Supabase Auth wire and team roles (issue 13), against a
//! real hub process: sign-up (invite-only by default), the password grant
//! and its failure limits, refresh rotation with reuse detection, GET/PUT
//! user, logout, invitations, and what each role may read and write.
//!
//! Run: `cargo test -p panorama-hub --test people`.

use panorama_testkit::Hub;
use reqwest::Method;
use serde_json::{json, Value};

fn auth(hub: &Hub, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = hub.req(method, path, token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().expect("request");
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

fn signup(hub: &Hub, body: Value) -> (u16, Value) {
    auth(
        hub,
        Method::POST,
        "/auth/v1/signup",
        &hub.anon_key,
        Some(body),
    )
}

panorama_testkit::on_both_backends! {
fn sign_up_is_invite_only_unless_opened() {
    let hub = Hub::start();
    let team = hub.create_team("t");
    let (status, body) = signup(
        &hub,
        json!({"email": "a@example.test", "password": "secret123"}),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("signup_disabled")),
        "{body}"
    );

    // With an invitation for this email: a session, and the membership.
    let code = hub.invite(&team, "a@example.test", "member");
    let (status, wrong) = signup(
        &hub,
        json!({"email": "b@example.test", "password": "secret123", "data": {"invitation_code": code}}),
    );
    assert_eq!(
        (status, wrong["code"].as_str()),
        (403, Some("invite_not_found")),
        "another email: {wrong}"
    );
    assert_eq!(
        hub.try_sign_in("b@example.test", "secret123").0,
        400,
        "the refused sign-up created nothing"
    );
    let (status, session) = signup(
        &hub,
        json!({"email": "A@Example.test", "password": "secret123", "data": {"invitation_code": code, "name": "Ada"}}),
    );
    assert_eq!(status, 200, "{session}");
    for k in ["access_token", "refresh_token", "expires_in", "expires_at"] {
        assert!(!session[k].is_null(), "session lacks {k}: {session}");
    }
    assert_eq!(session["token_type"], "bearer");
    let user = &session["user"];
    assert_eq!(
        (
            user["aud"].as_str(),
            user["role"].as_str(),
            user["email"].as_str()
        ),
        (
            Some("authenticated"),
            Some("authenticated"),
            Some("a@example.test")
        )
    );
    assert_eq!(
        user["user_metadata"],
        json!({"name": "Ada"}),
        "the code is not kept as metadata"
    );
    let members = hub.select("team_members", &format!("team_id=eq.{team}"));
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0]["user_id"].as_str(), members[0]["role"].as_str()),
        (user["id"].as_str(), Some("member"))
    );
    // The same code again: used.
    let (status, again) = signup(
        &hub,
        json!({"email": "a2@example.test", "password": "secret123", "data": {"invitation_code": code}}),
    );
    assert_eq!(status, 403, "{again}");

    let open = Hub::start_with_env(&[("PANORAMA_HUB_OPEN_SIGNUP", "true")]);
    let (status, body) = signup(
        &open,
        json!({"email": "c@example.test", "password": "secret123"}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, weak) = signup(&open, json!({"email": "d@example.test", "password": "123"}));
    assert_eq!(
        (status, weak["code"].as_str()),
        (422, Some("weak_password"))
    );
}
}

panorama_testkit::on_both_backends! {
fn failed_sign_ins_say_nothing_about_the_email_and_are_limited() {
    let hub = Hub::start();
    hub.create_user("ada@example.test", "right password");
    let (s1, unknown) = hub.try_sign_in("nobody@example.test", "whatever");
    let (s2, wrong) = hub.try_sign_in("ada@example.test", "wrong password");
    assert_eq!((s1, s2), (400, 400));
    assert_eq!(
        unknown, wrong,
        "an unknown email and a wrong password answer alike"
    );
    assert_eq!(wrong["message"], "Invalid login credentials");
    assert_eq!(wrong["code"], "invalid_credentials");
    // Three more failures on the account: five in all.
    for _ in 0..3 {
        assert_eq!(hub.try_sign_in("ada@example.test", "wrong password").0, 400);
    }
    let (status, limited) = hub.try_sign_in("ada@example.test", "right password");
    assert_eq!(
        (status, limited["code"].as_str()),
        (429, Some("over_request_rate_limit")),
        "{limited}"
    );
    // The address is limited too: another account from it is refused.
    hub.create_user("bob@example.test", "bob password");
    assert_eq!(hub.try_sign_in("bob@example.test", "bob password").0, 429);

    // Control: a fresh hub lets the right password in.
    let fresh = Hub::start();
    fresh.create_user("ada@example.test", "right password");
    assert_eq!(
        fresh.try_sign_in("ada@example.test", "right password").0,
        200
    );
}
}

panorama_testkit::on_both_backends! {
fn sessions_refresh_with_rotation_and_end_at_logout() {
    let hub = Hub::start_with_env(&[("PANORAMA_HUB_REFRESH_REUSE_INTERVAL", "0")]);
    hub.create_user("ada@example.test", "right password");
    let s = hub.sign_in("ada@example.test", "right password");
    let refresh = |token: &str| {
        auth(
            &hub,
            Method::POST,
            "/auth/v1/token?grant_type=refresh_token",
            &hub.anon_key,
            Some(json!({"refresh_token": token})),
        )
    };
    let (status, rotated) = refresh(&s.refresh_token);
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["user"]["id"].as_str(), Some(s.user_id.as_str()));
    let new_refresh = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_refresh, s.refresh_token);

    // GET / PUT user with the new access token.
    let token = rotated["access_token"].as_str().unwrap().to_string();
    let (status, me) = auth(&hub, Method::GET, "/auth/v1/user", &token, None);
    assert_eq!(
        (status, me["email"].as_str()),
        (200, Some("ada@example.test"))
    );
    let (status, changed) = auth(
        &hub,
        Method::PUT,
        "/auth/v1/user",
        &token,
        Some(json!({"password": "new password", "data": {"theme": "dark"}})),
    );
    assert_eq!(
        (status, &changed["user_metadata"]),
        (200, &json!({"theme": "dark"}))
    );
    assert_eq!(hub.try_sign_in("ada@example.test", "right password").0, 400);
    let second = hub.sign_in("ada@example.test", "new password");

    // Replaying the first refresh token: reuse, and that session ends.
    let (status, reused) = refresh(&s.refresh_token);
    assert_eq!(
        (status, reused["code"].as_str()),
        (400, Some("refresh_token_already_used")),
        "{reused}"
    );
    assert_eq!(
        refresh(&new_refresh).0,
        400,
        "the whole session was revoked"
    );
    assert_eq!(
        auth(&hub, Method::GET, "/auth/v1/user", &token, None).0,
        403
    );
    // The other session is untouched, until a global logout.
    assert_eq!(
        auth(
            &hub,
            Method::GET,
            "/auth/v1/user",
            &second.access_token,
            None
        )
        .0,
        200
    );
    let (status, _) = auth(
        &hub,
        Method::POST,
        "/auth/v1/logout",
        &second.access_token,
        None,
    );
    assert_eq!(status, 204);
    assert_eq!(
        auth(
            &hub,
            Method::GET,
            "/auth/v1/user",
            &second.access_token,
            None
        )
        .0,
        403
    );
    assert_eq!(refresh(&second.refresh_token).0, 400);
    let res = hub
        .req(Method::GET, "/rest/v1/teams", &second.access_token)
        .send()
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        401,
        "a signed-out access token reads nothing"
    );
}
}

panorama_testkit::on_both_backends! {
fn roles_decide_what_members_read_and_write() {
    let hub = Hub::start();
    let team = hub.create_team("ours");
    let other = hub.create_team("theirs");
    let gw = hub.pair(&team, "ours-1");
    let other_gw = hub.pair(&other, "theirs-1");
    let owner = hub.member(&team, "owner");
    let member = hub.member(&team, "member");
    let viewer = hub.member(&team, "viewer");

    let get = |token: &str, path: &str| {
        let res = hub.req(Method::GET, path, token).send().unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().unwrap_or(Value::Null))
    };
    let (status, teams) = get(&viewer.access_token, "/rest/v1/teams?select=id");
    assert_eq!(
        (status, teams.clone()),
        (200, json!([{"id": team}])),
        "a viewer sees its team only"
    );
    let (_, gws) = get(&viewer.access_token, "/rest/v1/team_gateways?select=id");
    assert_eq!(gws, json!([{"id": gw.gateway_id}]));
    let job = |token: &str, gateway: &str, team: &str| {
        let res = hub.req(Method::POST, "/rest/v1/gateway_jobs", token)
            .header("prefer", "return=representation")
            .json(&json!({"team_id": team, "gateway_id": gateway, "job_type": "diagnostic", "payload": {}}))
            .send().unwrap();
        res.status().as_u16()
    };
    assert_eq!(
        job(&viewer.access_token, &gw.gateway_id, &team),
        403,
        "a viewer may not dispatch"
    );
    assert_eq!(
        job(&member.access_token, &other_gw.gateway_id, &other),
        403,
        "not another team's gateway"
    );
    assert_eq!(
        job(&member.access_token, &other_gw.gateway_id, &team),
        403,
        "not another team's gateway in our team's name"
    );
    assert_eq!(
        job(&member.access_token, &gw.gateway_id, &team),
        201,
        "a member dispatches"
    );
    assert_eq!(
        hub.select("gateway_jobs", &format!("team_id=eq.{team}"))
            .len(),
        1
    );
    assert!(hub
        .select("gateway_jobs", &format!("team_id=eq.{other}"))
        .is_empty());

    // Pairing codes and gateway control: owners and admins only.
    let code = |token: &str| {
        hub.req(Method::POST, "/rest/v1/gateway_pairing_codes", token)
            .json(&json!({"code": panorama_testkit::uuid_like()[..8].to_uppercase(), "team_id": team, "expires_at": "2999-01-01T00:00:00Z"}))
            .send().unwrap().status().as_u16()
    };
    assert_eq!(code(&member.access_token), 403);
    assert_eq!(code(&owner.access_token), 201);
    let revoke = |token: &str| {
        hub.req(
            Method::PATCH,
            &format!("/rest/v1/team_gateways?id=eq.{}", gw.gateway_id),
            token,
        )
        .header("prefer", "return=representation")
        .json(&json!({"full_control_enabled": true}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()
    };
    // As under RLS, a member's update matches no row: nothing changes.
    assert_eq!(revoke(&member.access_token), json!([]));
    assert_eq!(
        hub.row("team_gateways", &gw.gateway_id).unwrap()["full_control_enabled"],
        false
    );
    assert_eq!(revoke(&owner.access_token)[0]["full_control_enabled"], true);

    // Invitations: members cannot invite; admins cannot make owners.
    let (status, _) = hub.rpc(
        &member.access_token,
        "create_team_invitation",
        json!({"p_team_id": team, "p_email": "x@example.test", "p_role": "viewer"}),
    );
    assert_eq!(status, 403);
    let admin = hub.member(&team, "admin");
    let (status, _) = hub.rpc(
        &admin.access_token,
        "create_team_invitation",
        json!({"p_team_id": team, "p_email": "x@example.test", "p_role": "owner"}),
    );
    assert_eq!(status, 403);
    let (status, inv) = hub.rpc(
        &admin.access_token,
        "create_team_invitation",
        json!({"p_team_id": team, "p_email": "x@example.test", "p_role": "viewer"}),
    );
    assert_eq!(status, 200, "{inv}");

    // A removed member loses access at once.
    let members = hub.select(
        "team_members",
        &format!("team_id=eq.{team}&user_id=eq.{}", member.user_id),
    );
    let res = hub
        .req(
            Method::DELETE,
            &format!(
                "/rest/v1/team_members?id=eq.{}",
                members[0]["id"].as_str().unwrap()
            ),
            &owner.access_token,
        )
        .header("prefer", "return=representation")
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(get(&member.access_token, "/rest/v1/teams").1, json!([]));
    assert_eq!(job(&member.access_token, &gw.gateway_id, &team), 403);
}
}
