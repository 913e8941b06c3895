//! The isolation matrix: every principal that is not the owner, against
//! another principal's rows, for every table of `schema::TABLES` and every
//! REST verb, plus the RPCs and edge functions that touch rows. A real hub
//! process answers; every case is checked twice: by its response (refused
//! with 401/403, or 2xx with no victim row in it, per PostgREST + RLS
//! semantics) and by the victim's rows and every table's row count read
//! back with the service key afterwards. Positive controls (the owner
//! where the spec grants it, and the service key) run the same requests
//! last, so a refusal is never just a malformed request.
//!
//! People (issue 13) are principals too: a member of another team, a
//! viewer of the victim's team (reads granted, every write refused), a
//! removed member, a signed-out session and an expired user token; an
//! invitation accepted twice is refused. The victim team's owner and a
//! member are positive controls for what their roles grant.
//!
//! Run: `cargo test -p panorama-hub --test isolation -- --nocapture`.

use base64::Engine;
use panorama_hub::auth::Claims;
use panorama_hub::schema::{self, ColType, Table, TABLES};
use panorama_testkit::{Hub, PairedGateway, UserSession};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The REST verbs of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// `GET ?pk=eq.<victim>`.
    SelectPk,
    /// `GET` with no filter: the answer must hold no victim row.
    SelectAll,
    /// `POST` of a row naming the victim's team, gateway and parents.
    Insert,
    /// `POST` of a row naming the caller's team but the victim's gateway
    /// and parents (a half-spoofed row).
    InsertMixed,
    /// `PATCH ?pk=eq.<victim>` with a column a gateway may write.
    Update,
    /// `DELETE ?pk=eq.<victim>`.
    Delete,
    /// `POST` + `Prefer: resolution=merge-duplicates` of a row with the
    /// caller's own identity and the victim's primary key.
    UpsertMerge,
    /// Same, with `resolution=ignore-duplicates`.
    UpsertIgnore,
}

const VERBS: [Verb; 8] = [
    Verb::SelectPk,
    Verb::SelectAll,
    Verb::Insert,
    Verb::InsertMixed,
    Verb::Update,
    Verb::Delete,
    Verb::UpsertMerge,
    Verb::UpsertIgnore,
];

/// Whose rows: a team, a gateway and that gateway's subagent and run.
#[derive(Debug, Clone)]
struct Ident {
    team: String,
    gateway: String,
    subagent: String,
    run: String,
    /// A person of the team (team_members rows name them).
    user: String,
}

/// One row per table belonging to `ident`, made by the control plane.
struct Owned {
    ident: Ident,
    rows: BTreeMap<&'static str, Value>,
}

/// Prefix of every team secret value the test stores: no response may
/// ever contain it (the value is write-only; it leaves the hub only
/// through `resolve_secret_placeholders_for_job`, covered elsewhere).
const SECRET_MARKER: &str = "ISOSECRETVALUE";

/// Per-table data the matrix cannot derive from the schema: a patch that
/// a gateway could legally apply to its own row (so a refusal comes from
/// the policy, not from the column grants or the job guard), and insert
/// values that keep the schema's unique indexes satisfied. A table
/// without a case fails the test: a new table must be added here.
fn table_case(table: &str) -> Option<(Value, Value)> {
    Some(match table {
        "teams" => (json!({"name": "pwned"}), json!({})),
        "team_gateways" => (json!({"device_name": "pwned"}), json!({})),
        "gateway_pairing_codes" => (json!({"used_at": "2030-01-01T00:00:00Z"}), json!({})),
        // queued -> running: the one transition the guard lets a gateway make.
        "gateway_jobs" => (json!({"status": "running"}), json!({})),
        "gateway_events" => (json!({"message": "pwned"}), json!({})),
        "subagents" => (json!({"status": "running"}), json!({})),
        // One running run per subagent: inserted runs wait for admission.
        "subagent_runs" => (
            json!({"status": "completed"}),
            json!({"status": "pending_admission"}),
        ),
        "subagent_run_events" => (json!({"payload": {"pwned": true}}), json!({})),
        "team_resources" => (json!({"title": "pwned"}), json!({})),
        // Promoting a member: the change an owner may make.
        "team_members" => (json!({"role": "owner"}), json!({"role": "member"})),
        // Overwriting another team's secret value.
        "team_secrets" => (
            json!({"value": format!("{SECRET_MARKER}-pwned")}),
            json!({}),
        ),
        _ => return None,
    })
}

/// A row for `table` built from its columns: references to `ident`
/// (team, gateway, subagent, run), fresh keys, and a value of the right
/// type for every other required column.
fn insert_body(table: &Table, team: &Ident, rest: &Ident, seq: i64) -> Value {
    let (_, overrides) = table_case(table.name)
        .unwrap_or_else(|| panic!("table {} has no isolation case", table.name));
    let mut row = Map::new();
    for c in table.columns {
        let v = match c.name {
            "team_id" => json!(team.team),
            "gateway_id" => json!(rest.gateway),
            "subagent_id" => json!(rest.subagent),
            "run_id" => json!(rest.run),
            "user_id" => json!(rest.user),
            _ if c.nullable || c.default != schema::ColDefault::None => continue,
            _ => match (c.ty, c.allowed) {
                (_, Some(allowed)) => json!(allowed[0]),
                (ColType::Uuid, _) => json!(panorama_testkit::new_uuid()),
                (ColType::Text, _) => {
                    json!(format!("SPOOF{}", &panorama_testkit::new_uuid()[..8]).to_uppercase())
                }
                (ColType::Int, _) => json!(100 + seq),
                (ColType::Bool, _) => json!(false),
                (ColType::Json, _) => json!({}),
                (ColType::Timestamp, _) => json!("2999-01-01T00:00:00Z"),
            },
        };
        row.insert(c.name.to_string(), v);
    }
    if let Value::Object(o) = overrides {
        row.extend(o);
    }
    if table.name == "team_resources" {
        row.insert("resource_type".into(), json!("remote_shell"));
        row.insert("metadata".into(), json!({"gateway_id": rest.gateway}));
    }
    Value::Object(row)
}

/// Whether `row` of `table` belongs to `ident`: its team's rows for
/// tables scoped by team, its gateway's rows for tables scoped by gateway.
/// Derived from the columns, so a new table is classified automatically.
fn belongs(table: &Table, row: &Value, ident: &Ident) -> bool {
    let s = |k: &str| row[k].as_str().unwrap_or_default().to_string();
    match table.name {
        "teams" => s("id") == ident.team,
        "team_gateways" => s("id") == ident.gateway,
        _ if table.column("gateway_id").is_some() => {
            s("team_id") == ident.team && s("gateway_id") == ident.gateway
        }
        _ if table.column("team_id").is_some() => s("team_id") == ident.team,
        _ => panic!(
            "table {} has no isolation case (no owner column)",
            table.name
        ),
    }
}

/// Everything, read with the service key: `table -> rows by primary key`.
type Snapshot = BTreeMap<&'static str, BTreeMap<String, Value>>;

fn snapshot(hub: &Hub) -> Snapshot {
    TABLES
        .iter()
        .map(|t| {
            let rows = hub
                .select(t.name, "")
                .into_iter()
                .map(|r| (r[t.primary_key].as_str().unwrap().to_string(), r))
                .collect();
            (t.name, rows)
        })
        .collect()
}

/// What must stay unchanged for `victim`: its rows, and every table's
/// row count (an insert naming the victim lands nowhere else either).
fn victim_view(snap: &Snapshot, victim: &Ident) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for t in TABLES {
        let rows = &snap[t.name];
        out.push((format!("{} count", t.name), json!(rows.len())));
        for (pk, r) in rows {
            if belongs(t, r, victim) {
                out.push((format!("{}/{pk}", t.name), r.clone()));
            }
        }
    }
    out
}

/// The tables every role of a team reads; a viewer's answers on the
/// others (pairing codes for managers, secret names for those who
/// dispatch) must hold none of the team's rows.
fn viewer_reads(table: &str) -> bool {
    !matches!(table, "gateway_pairing_codes" | "team_secrets")
}

/// A caller: its headers, its own identity (gateways) and what it must
/// answer with when it is refused.
#[derive(Clone)]
struct Caller {
    name: &'static str,
    apikey: Option<String>,
    bearer: Option<String>,
    own: Option<Ident>,
    /// 401 for callers without a valid identity (PostgREST: anon role or a
    /// JWT that does not verify); 403 or an empty answer for gateways.
    must_be_401: bool,
    /// A person of the victim's team whose role reads the team's rows:
    /// reads are granted, writes are what the matrix checks.
    reads_team: bool,
    /// The person behind a user token (GET /auth/v1/user answers them).
    user: Option<String>,
}

impl Caller {
    fn request(&self, hub: &Hub, method: Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = hub.http().request(method, format!("{}{path}", hub.url));
        if let Some(k) = &self.apikey {
            r = r.header("apikey", k);
        }
        if let Some(b) = &self.bearer {
            r = r.header("authorization", format!("Bearer {b}"));
        }
        r
    }
}

fn jwt_part(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The claims of a token the hub issued (read, not verified).
fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn sign(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// The hub's signing secret, from its owner-only data directory.
fn hub_secret(hub: &Hub) -> Vec<u8> {
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(hub.data_dir.path().join("keys.json")).unwrap(),
    )
    .unwrap();
    keys["jwt_secret"].as_str().unwrap().as_bytes().to_vec()
}

/// Tokens for `gw` that must not work: expired (signed with the hub's own
/// key), forged (right claims, another key) and unsigned (`alg: none`).
fn bad_tokens(hub: &Hub, gw: &PairedGateway) -> (String, String, String) {
    let claims = claims_of(&gw.access_token);
    let now = chrono::Utc::now().timestamp();
    let mut old = claims.clone();
    old.iat = now - 7200;
    old.exp = now - 3600;
    let expired = sign(&hub_secret(hub), &old);
    let forged = sign(b"not the hub's secret, but long enough", &claims);
    let none = format!(
        "{}.{}.",
        jwt_part(&json!({"alg": "none", "typ": "JWT"})),
        jwt_part(&serde_json::to_value(&claims).unwrap())
    );
    (expired, forged, none)
}

struct World {
    hub: Hub,
    owned: BTreeMap<&'static str, Owned>,
    gws: BTreeMap<&'static str, PairedGateway>,
    /// People: "A member", "B owner", "B viewer", "B removed",
    /// "B signed out", "B member".
    people: BTreeMap<&'static str, UserSession>,
}

fn own_rows(hub: &Hub, gw: &PairedGateway) -> Owned {
    let (team, gateway) = (gw.team_id.clone(), gw.gateway_id.clone());
    let sub = panorama_testkit::new_uuid();
    let subagent = hub.insert(
        "subagents",
        json!({"id": sub, "team_id": team, "gateway_id": gateway, "subagent_type": "codex_gateway"}),
    );
    let run = hub.insert(
        "subagent_runs",
        json!({"subagent_id": sub, "team_id": team, "gateway_id": gateway, "run_sequence": 1}),
    );
    let run_id = run["id"].as_str().unwrap().to_string();
    let event = hub.insert(
        "subagent_run_events",
        json!({"run_id": run_id, "subagent_id": sub, "team_id": team, "gateway_id": gateway, "sequence": 0, "event_type": "run_started"}),
    );
    let job = hub.insert(
        "gateway_jobs",
        json!({"team_id": team, "gateway_id": gateway, "job_type": "diagnostic"}),
    );
    let gev = hub.insert(
        "gateway_events",
        json!({"team_id": team, "gateway_id": gateway, "message": "hello"}),
    );
    let mut rows = BTreeMap::new();
    rows.insert("subagents", subagent);
    rows.insert("subagent_runs", run);
    rows.insert("subagent_run_events", event);
    rows.insert("gateway_jobs", job);
    rows.insert("gateway_events", gev);
    rows.insert("team_gateways", hub.row("team_gateways", &gateway).unwrap());
    Owned {
        ident: Ident {
            team,
            gateway,
            subagent: sub,
            run: run_id,
            user: String::new(),
        },
        rows,
    }
}

fn world() -> World {
    let hub = Hub::start();
    let team_a = hub.create_team("a");
    let team_b = hub.create_team("b");
    let mut gws = BTreeMap::new();
    gws.insert("A", hub.pair(&team_a, "a"));
    gws.insert("A2", hub.pair(&team_a, "a2"));
    gws.insert("B", hub.pair(&team_b, "b"));
    gws.insert("Brev", hub.pair(&team_b, "b-revoked"));
    let mut owned = BTreeMap::new();
    for name in ["A", "A2", "B"] {
        owned.insert(name, own_rows(&hub, &gws[name]));
    }
    // Team-scoped rows: the team itself, an unused pairing code, a shell.
    for (name, team) in [("A", &team_a), ("B", &team_b)] {
        let o = owned.get_mut(name).unwrap();
        o.rows.insert("teams", hub.row("teams", team).unwrap());
        let code = hub.create_pairing_code(team);
        o.rows.insert(
            "gateway_pairing_codes",
            hub.select("gateway_pairing_codes", &format!("code=eq.{code}"))[0].clone(),
        );
        o.rows.insert(
            "team_resources",
            hub.insert(
                "team_resources",
                json!({"team_id": team, "resource_type": "remote_shell", "metadata": {"gateway_id": o.ident.gateway, "full_control": true}}),
            ),
        );
        let secret = hub.insert(
            "team_secrets",
            json!({"team_id": team, "name": format!("token-{name}"), "value": format!("{SECRET_MARKER}-{name}")}),
        );
        assert!(
            secret.get("value").is_none(),
            "an insert answered with the value: {secret}"
        );
        o.rows.insert("team_secrets", secret);
    }
    hub.patch(
        "team_gateways",
        &format!("id=eq.{}", gws["Brev"].gateway_id),
        json!({"revoked_at": "2025-01-01T00:00:00Z"}),
    );
    let mut people = BTreeMap::new();
    people.insert("A member", hub.member(&team_a, "member"));
    people.insert("A owner", hub.member(&team_a, "owner"));
    for (name, role) in [
        ("B owner", "owner"),
        ("B viewer", "viewer"),
        ("B removed", "member"),
        ("B signed out", "member"),
        ("B member", "member"),
    ] {
        people.insert(name, hub.member(&team_b, role));
    }
    // The person an inserted team_members row names: someone who is not
    // yet in that team, so that the service key's insert control lands.
    for (name, outsider) in [("A", "B member"), ("A2", "B member"), ("B", "A member")] {
        let o = owned.get_mut(name).unwrap();
        o.ident.user = people[outsider].user_id.clone();
    }
    for (name, owner) in [("A", "A owner"), ("B", "B owner")] {
        let o = owned.get_mut(name).unwrap();
        let membership = hub.select(
            "team_members",
            &format!(
                "team_id=eq.{}&user_id=eq.{}",
                o.ident.team, people[owner].user_id
            ),
        );
        o.rows.insert("team_members", membership[0].clone());
    }
    let b_team = owned["B"].ident.team.clone();
    let removed = &people["B removed"].user_id;
    let res = hub
        .req(
            Method::DELETE,
            &format!("/rest/v1/team_members?team_id=eq.{b_team}&user_id=eq.{removed}"),
            &hub.service_key,
        )
        .header("prefer", "return=representation")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "removing a member");
    let res = hub
        .req(
            Method::POST,
            "/auth/v1/logout",
            &people["B signed out"].access_token,
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 204, "signing out");
    World {
        hub,
        owned,
        gws,
        people,
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    refused: usize,
    empty: usize,
    /// Rows a same-team gateway may read by the spec's team-wide policy.
    team_wide: usize,
    leaks: Vec<String>,
    statuses: BTreeMap<String, usize>,
}

/// Sends one case and classifies its answer.
#[allow(clippy::too_many_arguments)]
fn run_case(
    hub: &Hub,
    caller: &Caller,
    victim: &Owned,
    table: &'static Table,
    verb: Verb,
    seq: i64,
    tally: &mut Tally,
    baseline: &mut Snapshot,
) {
    let pk = table.primary_key;
    let target = &victim.rows[table.name];
    let target_pk = target[pk].as_str().unwrap();
    let own = caller.own.clone().unwrap_or_else(|| victim.ident.clone());
    let mixed = Ident {
        team: own.team.clone(),
        ..victim.ident.clone()
    };
    let (patch, _) = table_case(table.name).unwrap();
    let path = format!("/rest/v1/{}", table.name);
    let by_pk = format!("{path}?{pk}=eq.{target_pk}");
    let upsert_body = || {
        let mut b = insert_body(table, &own, &own, seq);
        b[pk] = json!(target_pk);
        b
    };
    let req = match verb {
        Verb::SelectPk => caller.request(hub, Method::GET, &by_pk),
        Verb::SelectAll => caller.request(hub, Method::GET, &path),
        Verb::Insert => caller.request(hub, Method::POST, &path).json(&insert_body(
            table,
            &victim.ident,
            &victim.ident,
            seq,
        )),
        Verb::InsertMixed => caller
            .request(hub, Method::POST, &path)
            .json(&insert_body(table, &mixed, &mixed, seq)),
        Verb::Update => caller.request(hub, Method::PATCH, &by_pk).json(&patch),
        Verb::Delete => caller.request(hub, Method::DELETE, &by_pk),
        Verb::UpsertMerge => caller
            .request(hub, Method::POST, &path)
            .header("prefer", "resolution=merge-duplicates")
            .json(&upsert_body()),
        Verb::UpsertIgnore => caller
            .request(hub, Method::POST, &path)
            .header("prefer", "resolution=ignore-duplicates")
            .json(&upsert_body()),
    };
    let res = req
        .header("prefer", "return=representation")
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().unwrap();
    let what = format!("{} {:?} {} [{status}]", caller.name, verb, table.name);
    if text.contains(SECRET_MARKER) {
        tally
            .leaks
            .push(format!("{what}: the answer carries a secret value: {text}"));
    }
    tally.cases += 1;
    *tally
        .statuses
        .entry(format!("{} {status}", caller.name))
        .or_default() += 1;
    // Same-team gateways read team-scoped tables by policy (§16.5
    // gw_resources_select): only tables scoped by gateway are private.
    let team_wide_read = matches!(verb, Verb::SelectPk | Verb::SelectAll)
        && ((caller
            .own
            .as_ref()
            .is_some_and(|o| o.team == victim.ident.team)
            && table.column("gateway_id").is_none()
            && table.name != "team_gateways")
            || (caller.reads_team && viewer_reads(table.name)));
    match status {
        401 | 403 => {
            if caller.must_be_401 && status != 401 {
                tally.leaks.push(format!("{what}: expected 401: {text}"));
            }
            tally.refused += 1;
        }
        200..=299 => {
            if caller.must_be_401 {
                tally
                    .leaks
                    .push(format!("{what}: answered for an invalid caller: {text}"));
            }
            let rows: Vec<Value> = if text.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
            };
            let victim_rows: Vec<&Value> = rows
                .iter()
                .filter(|r| belongs(table, r, &victim.ident) || r[pk] == json!(target_pk))
                .collect();
            if team_wide_read {
                tally.team_wide += 1;
            } else if !victim_rows.is_empty() {
                tally
                    .leaks
                    .push(format!("{what}: victim rows in the answer: {text}"));
            } else if matches!(verb, Verb::Insert | Verb::InsertMixed) && !rows.is_empty() {
                tally.leaks.push(format!(
                    "{what}: a row naming the victim was inserted: {text}"
                ));
            } else {
                tally.empty += 1;
            }
        }
        _ => tally
            .leaks
            .push(format!("{what}: neither refused nor empty: {text}")),
    }
    let after = snapshot(hub);
    if victim_view(&after, &victim.ident) != victim_view(baseline, &victim.ident) {
        tally.leaks.push(format!(
            "{what}: the victim's rows or a table's row count changed"
        ));
    }
    *baseline = after;
}

/// RPCs and edge functions that touch rows, aimed at the victim.
fn rpc_cases(victim: &Owned) -> Vec<(&'static str, &'static str, Value)> {
    let v = &victim.ident;
    vec![
        (
            "rpc allocate_subagent_run_sequence",
            "/rest/v1/rpc/allocate_subagent_run_sequence",
            json!({"p_subagent_id": v.subagent}),
        ),
        (
            "rpc gateway_record_heartbeat",
            "/rest/v1/rpc/gateway_record_heartbeat",
            json!({"p_status": "error", "p_capabilities": {"pwned": true}, "p_device_name": "pwned"}),
        ),
        (
            "fn gateway-heartbeat",
            "/functions/v1/gateway-heartbeat",
            json!({"status": "error", "capabilities": {"pwned": true}, "device_name": "pwned"}),
        ),
        (
            "fn finalize-gateway-subagent-run",
            "/functions/v1/finalize-gateway-subagent-run",
            json!({"subagent_id": v.subagent, "run_id": v.run, "final_status": "failed", "final_error": "pwned"}),
        ),
        (
            "rpc accept_subagent_run",
            "/rest/v1/rpc/accept_subagent_run",
            json!({"p_subagent_id": v.subagent, "p_prompt": "pwned"}),
        ),
        (
            "rpc request_subagent_run_cancellation",
            "/rest/v1/rpc/request_subagent_run_cancellation",
            json!({"p_run_id": v.run, "p_reason": "pwned"}),
        ),
        (
            "rpc resolve_secret_placeholders_for_job",
            "/rest/v1/rpc/resolve_secret_placeholders_for_job",
            json!({"p_job_id": victim.rows["gateway_jobs"]["id"]}),
        ),
    ]
}

fn run_rpc(
    hub: &Hub,
    caller: &Caller,
    victim: &Owned,
    tally: &mut Tally,
    baseline: &mut Snapshot,
) -> usize {
    let mut n = 0;
    for (name, path, body) in rpc_cases(victim) {
        let res = caller
            .request(hub, Method::POST, path)
            .json(&body)
            .send()
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().unwrap();
        let what = format!("{} {name} [{status}]", caller.name);
        if text.contains(SECRET_MARKER) {
            tally
                .leaks
                .push(format!("{what}: the answer carries a secret value: {text}"));
        }
        n += 1;
        tally.cases += 1;
        match status {
            401 | 403 => {
                if caller.must_be_401 && status != 401 {
                    tally.leaks.push(format!("{what}: expected 401: {text}"));
                }
                tally.refused += 1;
            }
            // A gateway's heartbeat always lands on its own row; finalize
            // of a run that is not its own answers {success: false}
            // (spec §16.9). The snapshot below proves the victim untouched.
            200 if !caller.must_be_401
                && (name.contains("heartbeat")
                    || serde_json::from_str::<Value>(&text).unwrap_or_default()["success"]
                        == json!(false)) =>
            {
                tally.empty += 1
            }
            _ => tally.leaks.push(format!("{what}: not refused: {text}")),
        }
        let after = snapshot(hub);
        if victim_view(&after, &victim.ident) != victim_view(baseline, &victim.ident) {
            tally.leaks.push(format!(
                "{what}: the victim's rows or a table's row count changed"
            ));
        }
        *baseline = after;
    }
    // GoTrue's `GET /auth/v1/user`: a bad or revoked token gets 401/403
    // (403 `bad_jwt`, supabase-wire §4.3); a gateway gets only itself.
    let res = caller
        .request(hub, Method::GET, "/auth/v1/user")
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap_or_default();
    n += 1;
    tally.cases += 1;
    let own_gateway = caller.own.as_ref().map(|o| o.gateway.as_str());
    match status {
        401 | 403 => tally.refused += 1,
        200 if own_gateway.is_some()
            && body["app_metadata"]["gateway_id"].as_str() == own_gateway
            && own_gateway != Some(victim.ident.gateway.as_str()) =>
        {
            tally.empty += 1
        }
        // A person gets only themselves.
        200 if caller.user.is_some() && body["id"].as_str() == caller.user.as_deref() => {
            tally.empty += 1
        }
        _ => tally.leaks.push(format!(
            "{} GET /auth/v1/user [{status}]: {body}",
            caller.name
        )),
    }
    n
}

panorama_testkit::on_both_backends! {
fn no_principal_reaches_another_principals_rows() {
    let World {
        hub,
        owned,
        gws,
        people,
    } = world();
    for t in TABLES {
        assert!(
            table_case(t.name).is_some(),
            "table {} has no isolation case",
            t.name
        );
        for o in owned
            .values()
            .filter(|o| o.ident.team == owned["B"].ident.team)
        {
            assert!(
                o.rows.contains_key(t.name),
                "table {} has no victim row",
                t.name
            );
        }
    }
    let anon = Some(hub.anon_key.clone());
    let gw = |name: &'static str, key: &str| Caller {
        name,
        apikey: anon.clone(),
        bearer: Some(gws[key].access_token.clone()),
        own: owned.get(key).map(|o| o.ident.clone()),
        must_be_401: false,
        reads_team: false,
        user: None,
    };
    let person = |name: &'static str, reads_team: bool, must_be_401: bool| Caller {
        name,
        apikey: anon.clone(),
        bearer: Some(people[name].access_token.clone()),
        // Upserts name the caller's own team and person.
        own: Some(if name.starts_with('A') {
            owned["A"].ident.clone()
        } else {
            owned["B"].ident.clone()
        }),
        must_be_401,
        reads_team,
        user: Some(people[name].user_id.clone()),
    };
    let (expired, forged, none) = bad_tokens(&hub, &gws["B"]);
    let invalid = |name: &'static str, apikey: Option<String>, bearer: Option<String>| Caller {
        name,
        apikey,
        bearer,
        own: None,
        must_be_401: true,
        reads_team: false,
        user: None,
    };
    let expired_user = {
        let mut c = claims_of(&people["B member"].access_token);
        let now = chrono::Utc::now().timestamp();
        c.iat = now - 7200;
        c.exp = now - 3600;
        sign(&hub_secret(&hub), &c)
    };
    let mut revoked = gw("revoked B", "Brev");
    revoked.own = Some(Ident {
        gateway: gws["Brev"].gateway_id.clone(),
        ..owned["B"].ident.clone()
    });
    // (caller, victim): every caller against gateway B's rows, and the
    // second gateway of team A against gateway A's.
    let pairs: Vec<(Caller, &Owned)> = vec![
        (gw("gateway A", "A"), &owned["B"]),
        (gw("gateway A2", "A2"), &owned["B"]),
        (gw("gateway A2 (same team)", "A2"), &owned["A"]),
        (
            invalid("expired B token", anon.clone(), Some(expired)),
            &owned["B"],
        ),
        (
            invalid("forged B token", anon.clone(), Some(forged)),
            &owned["B"],
        ),
        (
            invalid("alg=none B token", anon.clone(), Some(none)),
            &owned["B"],
        ),
        (invalid("anon key alone", anon.clone(), None), &owned["B"]),
        (revoked, &owned["B"]),
        (
            invalid("no apikey, no Authorization", None, None),
            &owned["B"],
        ),
        // People: another team's member, a viewer writing, a removed
        // member, a signed-out session and an expired one.
        (person("A member", false, false), &owned["B"]),
        (person("B viewer", true, false), &owned["B"]),
        (person("B removed", false, false), &owned["B"]),
        // Its token still verifies: refused (401 or 403) by the session check.
        (person("B signed out", false, false), &owned["B"]),
        (
            invalid("expired B user token", anon.clone(), Some(expired_user)),
            &owned["B"],
        ),
    ];

    let mut tally = Tally::default();
    let mut baseline = snapshot(&hub);
    let mut seq = 0;
    for (caller, victim) in &pairs {
        for table in TABLES {
            for verb in VERBS {
                seq += 1;
                run_case(
                    &hub,
                    caller,
                    victim,
                    table,
                    verb,
                    seq,
                    &mut tally,
                    &mut baseline,
                );
            }
        }
    }
    let matrix = tally.cases;
    assert_eq!(matrix, TABLES.len() * VERBS.len() * pairs.len());
    let (matrix_refused, matrix_leaks) = (tally.refused, tally.leaks.len());
    let mut rpcs = 0;
    for (caller, victim) in &pairs {
        rpcs += run_rpc(&hub, caller, victim, &mut tally, &mut baseline);
    }

    // Extra cross cases the uniform matrix cannot express.
    let a = gw("gateway A", "A");
    let b_ident = &owned["B"].ident;
    let a_ident = &owned["A"].ident;
    let extras = [
        // Own team and gateway, the victim's subagent / run as parent.
        (
            "subagent_runs",
            json!({"subagent_id": b_ident.subagent, "team_id": a_ident.team, "gateway_id": a_ident.gateway, "run_sequence": 50, "status": "pending_admission"}),
        ),
        (
            "subagent_run_events",
            json!({"run_id": b_ident.run, "subagent_id": a_ident.subagent, "team_id": a_ident.team, "gateway_id": a_ident.gateway, "sequence": 50, "event_type": "message"}),
        ),
        (
            "subagent_run_events",
            json!({"run_id": b_ident.run, "subagent_id": b_ident.subagent, "team_id": a_ident.team, "gateway_id": a_ident.gateway, "sequence": 51, "event_type": "message"}),
        ),
    ];
    for (table, body) in extras {
        let res = a
            .request(&hub, Method::POST, &format!("/rest/v1/{table}"))
            .json(&body)
            .send()
            .unwrap();
        tally.cases += 1;
        if res.status() == 403 {
            tally.refused += 1;
        } else {
            tally.leaks.push(format!(
                "gateway A insert under B's parent into {table}: {}",
                res.status()
            ));
        }
    }
    // Handing one's own job to another gateway, and an upsert whose
    // conflict target is a non-key column that matches the victim's row.
    let res = a
        .request(
            &hub,
            Method::PATCH,
            &format!(
                "/rest/v1/gateway_jobs?id=eq.{}",
                owned["A"].rows["gateway_jobs"]["id"].as_str().unwrap()
            ),
        )
        .json(&json!({"gateway_id": b_ident.gateway}))
        .send()
        .unwrap();
    tally.cases += 1;
    if res.status() == 403 {
        tally.refused += 1;
    } else {
        tally
            .leaks
            .push(format!("gateway A handed its job to B: {}", res.status()));
    }
    // A conflict target that is no unique key would "conflict" with B's
    // event of the same message: PostgreSQL refuses it (42P10, 400), and
    // a gateway's merge is refused anyway (no UPDATE grant, 403).
    for resolution in ["merge-duplicates", "ignore-duplicates"] {
        let res = a
            .request(&hub, Method::POST, "/rest/v1/gateway_events?on_conflict=message")
            .header("prefer", format!("resolution={resolution},return=representation"))
            .json(&json!({"team_id": a_ident.team, "gateway_id": a_ident.gateway, "message": "hello"}))
            .send()
            .unwrap();
        tally.cases += 1;
        if matches!(res.status().as_u16(), 400 | 403) {
            tally.refused += 1;
        } else {
            tally.leaks.push(format!(
                "gateway A upsert ({resolution}) on_conflict=message: {}",
                res.status()
            ));
        }
    }
    // A revoked gateway cannot mint itself a new access token.
    let res = hub
        .http()
        .post(format!(
            "{}/auth/v1/token?grant_type=refresh_token",
            hub.url
        ))
        .header("apikey", &hub.anon_key)
        .json(&json!({"refresh_token": gws["Brev"].refresh_token}))
        .send()
        .unwrap();
    tally.cases += 1;
    if res.status() == 400 {
        tally.refused += 1;
    } else {
        tally.leaks.push(format!(
            "revoked gateway refreshed its session: {}",
            res.status()
        ));
    }
    let after = snapshot(&hub);
    if victim_view(&after, b_ident) != victim_view(&baseline, b_ident) {
        tally.leaks.push("extra cases changed B's rows".into());
    }
    // Team secrets and people: a member of the team lists names but sets,
    // changes and deletes nothing; another team's owner reaches nothing.
    // (A viewer's reads are in the matrix: no row of B's.)
    let b_secret = owned["B"].rows["team_secrets"]["id"].as_str().unwrap();
    let b_team = &b_ident.team;
    let secret_writes = |who: &str| {
        vec![
            (
                format!("{who} insert"),
                Method::POST,
                "/rest/v1/team_secrets".to_string(),
                json!({"team_id": b_team, "name": format!("by-{who}").replace(' ', "-"), "value": format!("{SECRET_MARKER}-x")}),
            ),
            (
                format!("{who} update"),
                Method::PATCH,
                format!("/rest/v1/team_secrets?id=eq.{b_secret}"),
                json!({"value": format!("{SECRET_MARKER}-x")}),
            ),
            (
                format!("{who} delete"),
                Method::DELETE,
                format!("/rest/v1/team_secrets?id=eq.{b_secret}"),
                Value::Null,
            ),
        ]
    };
    for who in ["B member", "A owner"] {
        let token = &people[who].access_token;
        for (what, method, path, body) in secret_writes(who) {
            let mut req = hub
                .req(method, &path, token)
                .header("prefer", "return=representation");
            if !body.is_null() {
                req = req.json(&body);
            }
            let res = req.send().unwrap();
            let status = res.status().as_u16();
            let text = res.text().unwrap();
            tally.cases += 1;
            if text.contains(SECRET_MARKER) {
                tally
                    .leaks
                    .push(format!("{what} team_secrets: value in the answer: {text}"));
            }
            match status {
                401 | 403 => tally.refused += 1,
                200 if text.trim() == "[]" => tally.empty += 1,
                _ => tally
                    .leaks
                    .push(format!("{what} team_secrets of B: {status} {text}")),
            }
        }
    }
    let after = snapshot(&hub);
    if victim_view(&after, b_ident) != victim_view(&baseline, b_ident) {
        tally
            .leaks
            .push("people's secret writes changed B's rows".into());
    }
    // The later-protocol run RPCs, to the victim team's own viewer: refused
    // like another team's member (in the matrix), on a fresh subagent
    // whose acceptance would otherwise succeed.
    let fresh = hub.insert(
        "subagents",
        json!({"id": panorama_testkit::new_uuid(), "team_id": b_team, "gateway_id": b_ident.gateway, "subagent_type": "codex_gateway"}),
    );
    let fresh_id = fresh["id"].as_str().unwrap().to_string();
    for who in ["B viewer", "A member", "A owner"] {
        let (status, body) = hub.rpc(
            &people[who].access_token,
            "accept_subagent_run",
            json!({"p_subagent_id": fresh_id, "p_prompt": "pwned"}),
        );
        tally.cases += 1;
        if status == 403 {
            tally.refused += 1;
        } else {
            tally
                .leaks
                .push(format!("{who} accept_subagent_run of B: {status} {body}"));
        }
    }
    let runs = hub.select("subagent_runs", &format!("subagent_id=eq.{fresh_id}"));
    if !runs.is_empty() {
        tally
            .leaks
            .push(format!("refused acceptances left runs: {runs:?}"));
    }
    // An invitation is used once: a second acceptance, by the same
    // person or another, is refused and adds no membership. (Team C keeps
    // A and B's memberships out of it; the first acceptance is the
    // control.)
    let team_c = hub.create_team("c");
    let a_member = &people["A member"];
    let code = hub.invite(&team_c, &a_member.email, "viewer");
    let (status, first) = hub.rpc(
        &a_member.access_token,
        "accept_team_invitation",
        json!({"p_code": code}),
    );
    assert_eq!(status, 200, "invitation control: {first}");
    for (who, session) in [
        ("the same person", a_member),
        ("another person", &people["B member"]),
    ] {
        let (status, body) = hub.rpc(
            &session.access_token,
            "accept_team_invitation",
            json!({"p_code": code}),
        );
        tally.cases += 1;
        if status == 400 && body["code"] == "P0001" {
            tally.refused += 1;
        } else {
            tally
                .leaks
                .push(format!("invitation used twice by {who}: {status} {body}"));
        }
    }
    let c_members = hub.select("team_members", &format!("team_id=eq.{team_c}"));
    if c_members.len() != 1 {
        tally.leaks.push(format!(
            "team C has {} members after one invitation",
            c_members.len()
        ));
    }
    baseline = snapshot(&hub);
    let extra = tally.cases - matrix - rpcs;

    for l in &tally.leaks {
        println!("LEAK {l}");
    }
    // Positive controls: the owner (where the spec grants the verb) and
    // the service key get through with the very same requests.
    let controls = positive_controls(&hub, &owned, &gws, &people, &mut baseline);

    println!(
        "isolation matrix: {matrix} cases ({} tables × {} verbs × {} principals), {matrix_refused} refused, {matrix_leaks} leaked; \
         with {rpcs} rpc/function/auth cases and {extra} extra cases: {} cases, {} refused (401/403; 400 for a non-unique on_conflict or a revoked refresh), {} answered with no victim row, {} team-wide reads allowed by policy, {} leaked; {controls} positive controls passed",
        TABLES.len(),
        VERBS.len(),
        pairs.len(),
        tally.cases,
        tally.refused,
        tally.empty,
        tally.team_wide,
        tally.leaks.len()
    );
    for (k, n) in &tally.statuses {
        println!("  {k}: {n}");
    }
    assert!(matrix > 0 && tally.refused > 0 && controls > 0);
    assert!(
        tally.leaks.is_empty(),
        "{} leaks:\n{}",
        tally.leaks.len(),
        tally.leaks.join("\n")
    );
}
}

/// The owner's and the service key's runs of the matrix requests; returns
/// how many passed (any failure panics: a control that fails means the
/// matching refusals prove nothing).
fn positive_controls(
    hub: &Hub,
    owned: &BTreeMap<&'static str, Owned>,
    gws: &BTreeMap<&'static str, PairedGateway>,
    people: &BTreeMap<&'static str, UserSession>,
    baseline: &mut Snapshot,
) -> usize {
    let victim = &owned["B"];
    let owner = Caller {
        name: "owner B",
        apikey: Some(hub.anon_key.clone()),
        bearer: Some(gws["B"].access_token.clone()),
        own: Some(victim.ident.clone()),
        must_be_401: false,
        reads_team: false,
        user: None,
    };
    let service = Caller {
        name: "service",
        apikey: Some(hub.anon_key.clone()),
        bearer: Some(hub.service_key.clone()),
        own: None,
        must_be_401: false,
        reads_team: false,
        user: None,
    };
    let person = |name: &'static str| Caller {
        name,
        apikey: Some(hub.anon_key.clone()),
        bearer: Some(people[name].access_token.clone()),
        own: Some(victim.ident.clone()),
        must_be_401: false,
        reads_team: true,
        user: Some(people[name].user_id.clone()),
    };
    let team_owner = person("B owner");
    let team_member = person("B member");
    // What issue 13 grants a team's owner (everything the team's people
    // read; dispatch; pairing codes, gateways, resources, roles) and a
    // member (reads and dispatch).
    let person_select = |t: &str| t != "gateway_pairing_codes";
    let owner_person_update = |t: &str| {
        matches!(
            t,
            "subagents" | "team_gateways" | "team_resources" | "team_members" | "team_secrets"
        )
    };
    let owner_person_insert = |t: &str| {
        matches!(
            t,
            "gateway_jobs"
                | "subagents"
                | "gateway_pairing_codes"
                | "team_resources"
                | "team_secrets"
        )
    };
    // What the spec (§16.5) grants a gateway on its own rows.
    let owner_select = |t: &str| {
        matches!(
            t,
            "team_gateways"
                | "gateway_jobs"
                | "subagents"
                | "subagent_runs"
                | "subagent_run_events"
                | "team_resources"
        )
    };
    let owner_update = |t: &str| matches!(t, "gateway_jobs" | "subagents" | "subagent_runs");
    let owner_insert = |t: &str| {
        matches!(
            t,
            "gateway_events" | "subagent_runs" | "subagent_run_events"
        )
    };
    let mut passed = 0;
    let mut seq = 1000;
    let send =
        |caller: &Caller, verb: Verb, table: &'static Table, seq: i64| -> (u16, Vec<Value>) {
            let pk = table.primary_key;
            let target_pk = victim.rows[table.name][pk].as_str().unwrap().to_string();
            let path = format!("/rest/v1/{}", table.name);
            let by_pk = format!("{path}?{pk}=eq.{target_pk}");
            let (patch, _) = table_case(table.name).unwrap();
            let mut upsert = insert_body(table, &victim.ident, &victim.ident, seq);
            upsert[pk] = json!(target_pk);
            let req = match verb {
                Verb::SelectPk => caller.request(hub, Method::GET, &by_pk),
                Verb::SelectAll => caller.request(hub, Method::GET, &path),
                Verb::Insert | Verb::InsertMixed => caller
                    .request(hub, Method::POST, &path)
                    .json(&insert_body(table, &victim.ident, &victim.ident, seq)),
                Verb::Update => caller.request(hub, Method::PATCH, &by_pk).json(&patch),
                Verb::Delete => caller.request(hub, Method::DELETE, &by_pk),
                Verb::UpsertMerge => caller
                    .request(hub, Method::POST, &path)
                    .header("prefer", "resolution=merge-duplicates")
                    .json(&upsert),
                Verb::UpsertIgnore => caller
                    .request(hub, Method::POST, &path)
                    .header("prefer", "resolution=ignore-duplicates")
                    .json(&upsert),
            };
            let res = req
                .header("prefer", "return=representation")
                .send()
                .unwrap();
            let status = res.status().as_u16();
            let text = res.text().unwrap();
            assert!(
                !text.contains(SECRET_MARKER),
                "{} {verb:?} {}: the answer carries a secret value: {text}",
                caller.name,
                table.name
            );
            let rows = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            (status, rows)
        };
    let has_target = |rows: &[Value], table: &Table| {
        let pk = table.primary_key;
        rows.iter().any(|r| r[pk] == victim.rows[table.name][pk])
    };
    // (First: the merge controls below hand B owner's membership row to
    // someone else.) A team owner deletes a secret of its team; a member accepts a run on
    // its team's subagent and cancels it before any gateway starts it.
    let (status, rows) = send(&team_owner, Verb::Insert, &schema::TEAM_SECRETS, 5000);
    assert_eq!(status, 201, "B owner secret insert: {rows:?}");
    let made = rows[0]["id"].as_str().unwrap();
    let res = team_owner
        .request(
            hub,
            Method::DELETE,
            &format!("/rest/v1/team_secrets?id=eq.{made}"),
        )
        .header("prefer", "return=representation")
        .send()
        .unwrap();
    let deleted: Value = res.json().unwrap();
    assert_eq!(
        deleted.as_array().map(Vec::len),
        Some(1),
        "B owner secret delete: {deleted}"
    );
    passed += 1;
    let fresh = hub.insert(
        "subagents",
        json!({"id": panorama_testkit::new_uuid(), "team_id": victim.ident.team, "gateway_id": victim.ident.gateway, "subagent_type": "codex_gateway"}),
    );
    let (status, accepted) = hub.rpc(
        &people["B member"].access_token,
        "accept_subagent_run",
        json!({"p_subagent_id": fresh["id"], "p_prompt": "hello"}),
    );
    assert_eq!(status, 200, "B member accept_subagent_run: {accepted}");
    let (status, cancelled) = hub.rpc(
        &people["B member"].access_token,
        "request_subagent_run_cancellation",
        json!({"p_run_id": accepted["run_id"], "p_reason": "control"}),
    );
    assert_eq!(
        (status, &cancelled["cancelled"]),
        (200, &json!(true)),
        "B member request_subagent_run_cancellation: {cancelled}"
    );
    passed += 2;
    // Reads, writes that keep the rows, then deletes (children first).
    for verb in [
        Verb::SelectPk,
        Verb::SelectAll,
        Verb::Update,
        Verb::UpsertIgnore,
        Verb::Insert,
        Verb::InsertMixed,
        Verb::UpsertMerge,
    ] {
        for table in TABLES {
            seq += 1;
            let granted = match verb {
                Verb::SelectPk | Verb::SelectAll => owner_select(table.name),
                Verb::Update => owner_update(table.name),
                Verb::Insert | Verb::InsertMixed => owner_insert(table.name),
                _ => false,
            };
            if granted {
                let (status, rows) = send(&owner, verb, table, seq);
                let ok = match verb {
                    Verb::SelectPk | Verb::SelectAll | Verb::Update => {
                        (200..300).contains(&status) && has_target(&rows, table)
                    }
                    _ => status == 201 && rows.len() == 1,
                };
                assert!(
                    ok,
                    "owner control {verb:?} {}: {status} {rows:?}",
                    table.name
                );
                passed += 1;
            }
            // The team's people, with the same requests.
            let mut people_granted = Vec::new();
            match verb {
                Verb::SelectPk | Verb::SelectAll if person_select(table.name) => {
                    people_granted.extend([&team_owner, &team_member])
                }
                Verb::SelectPk | Verb::SelectAll if table.name == "gateway_pairing_codes" => {
                    people_granted.push(&team_owner)
                }
                Verb::Update if owner_person_update(table.name) => people_granted.push(&team_owner),
                Verb::Insert | Verb::InsertMixed if owner_person_insert(table.name) => {
                    people_granted.push(&team_owner);
                    if matches!(table.name, "gateway_jobs" | "subagents") {
                        people_granted.push(&team_member);
                    }
                }
                _ => {}
            }
            for caller in people_granted {
                seq += 1;
                let (status, rows) = send(caller, verb, table, seq);
                let ok = match verb {
                    Verb::SelectPk | Verb::SelectAll | Verb::Update => {
                        (200..300).contains(&status) && has_target(&rows, table)
                    }
                    _ => status == 201 && rows.len() == 1,
                };
                assert!(
                    ok,
                    "{} control {verb:?} {}: {status} {rows:?}",
                    caller.name, table.name
                );
                passed += 1;
            }
            seq += 1;
            let (status, rows) = send(&service, verb, table, seq);
            let ok = match verb {
                Verb::SelectPk | Verb::SelectAll | Verb::Update | Verb::UpsertMerge => {
                    (200..300).contains(&status) && has_target(&rows, table)
                }
                // The row exists: nothing is inserted, nothing changes.
                Verb::UpsertIgnore => status == 201 && rows.is_empty(),
                _ => status == 201 && rows.len() == 1,
            };
            assert!(
                ok,
                "service control {verb:?} {}: {status} {rows:?}",
                table.name
            );
            passed += 1;
            // One membership per (team, person): the next insert control
            // names the same person again.
            if table.name == "team_members" && matches!(verb, Verb::Insert | Verb::InsertMixed) {
                let id = rows[0]["id"].as_str().unwrap();
                let res = service
                    .request(
                        hub,
                        Method::DELETE,
                        &format!("/rest/v1/team_members?id=eq.{id}"),
                    )
                    .send()
                    .unwrap();
                assert!(
                    res.status().is_success(),
                    "removing the inserted membership"
                );
            }
        }
    }
    // The owner's RPCs on its own subagent and run.
    let rpc = |path: &str, body: Value| {
        owner
            .request(hub, Method::POST, path)
            .json(&body)
            .send()
            .unwrap()
    };
    let res = rpc(
        "/rest/v1/rpc/allocate_subagent_run_sequence",
        json!({"p_subagent_id": victim.ident.subagent}),
    );
    assert_eq!(res.status(), 200, "owner allocate_subagent_run_sequence");
    passed += 1;
    let res = rpc(
        "/functions/v1/gateway-heartbeat",
        json!({"status": "ready", "capabilities": {}, "device_name": "b"}),
    );
    assert_eq!(res.status(), 200, "owner heartbeat");
    passed += 1;
    // The run may have been completed by the update control above: make
    // it current again, then finalize it as its owner.
    hub.patch(
        "subagents",
        &format!("id=eq.{}", victim.ident.subagent),
        json!({"status": "running"}),
    );
    let res = rpc(
        "/functions/v1/finalize-gateway-subagent-run",
        json!({"subagent_id": victim.ident.subagent, "run_id": victim.ident.run, "final_status": "failed", "final_error": "x"}),
    );
    let body: Value = res.json().unwrap();
    assert_eq!(body["success"], json!(true), "owner finalize: {body}");
    passed += 1;
    let mut tables: Vec<&&'static Table> = TABLES.iter().collect();
    tables.reverse();
    for table in tables {
        seq += 1;
        let (status, rows) = send(&service, Verb::Delete, table, seq);
        assert!(
            status == 200 && has_target(&rows, table),
            "service control Delete {}: {status} {rows:?}",
            table.name
        );
        passed += 1;
    }
    *baseline = snapshot(hub);
    passed
}
