//! `panorama-hub schema --print` on a real PostgreSQL 15: the script applies
//! (twice: it is idempotent enough to redeploy), then the isolation cases
//! run as SQL the way PostgREST runs a request — in a transaction, `SET
//! LOCAL ROLE` to the token's role, `request.jwt.claims` set to its claims —
//! and each case asserts the rows it sees or changes, or a refusal.

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use serde_json::{json, Value};
use std::process::Command;

const TEAM_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const TEAM_B: &str = "bbbbbbbb-0000-4000-8000-000000000001";
const GW_A1: &str = "aaaaaaaa-0000-4000-8000-0000000000a1";
const GW_A2: &str = "aaaaaaaa-0000-4000-8000-0000000000a2";
const GW_A_REVOKED: &str = "aaaaaaaa-0000-4000-8000-0000000000af";
const GW_B1: &str = "bbbbbbbb-0000-4000-8000-0000000000b1";
const JOB_A1_QUEUED: &str = "aaaaaaaa-0000-4000-8000-00000000a001";
const JOB_A1_RUNNING: &str = "aaaaaaaa-0000-4000-8000-00000000a002";
const JOB_A2: &str = "aaaaaaaa-0000-4000-8000-00000000a003";
const JOB_B1: &str = "bbbbbbbb-0000-4000-8000-00000000b001";
const SUB_A1: &str = "aaaaaaaa-0000-4000-8000-00000000c001";
const SUB_B1: &str = "bbbbbbbb-0000-4000-8000-00000000c001";
const RUN_A1: &str = "aaaaaaaa-0000-4000-8000-00000000d001";
const RUN_B1: &str = "bbbbbbbb-0000-4000-8000-00000000d001";
const OWNER_A: &str = "aaaaaaaa-0000-4000-8000-00000000e001";
const MEMBER_A: &str = "aaaaaaaa-0000-4000-8000-00000000e002";
const VIEWER_A: &str = "aaaaaaaa-0000-4000-8000-00000000e003";
const OWNER_B: &str = "bbbbbbbb-0000-4000-8000-00000000e001";

fn printed_schema() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_panorama-hub"))
        .args(["schema", "--print"])
        .output()
        .expect("run panorama-hub schema --print");
    assert!(
        out.status.success(),
        "schema --print failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the script is UTF-8")
}

const SEED: &str = r#"
insert into teams (id, name) values ('A', 'team a'), ('B', 'team b');
insert into team_gateways (id, team_id, device_name, status) values
  ('GA1', 'A', 'a1', 'ready'), ('GA2', 'A', 'a2', 'ready'), ('GB1', 'B', 'b1', 'ready');
insert into team_gateways (id, team_id, device_name, revoked_at) values ('GAR', 'A', 'gone', now());
insert into gateway_jobs (id, team_id, gateway_id, status) values
  ('JA1Q', 'A', 'GA1', 'queued'), ('JA1R', 'A', 'GA1', 'running'),
  ('JA2', 'A', 'GA2', 'queued'), ('JB1', 'B', 'GB1', 'queued');
insert into gateway_jobs (team_id, gateway_id, status) values ('A', 'GAR', 'queued');
insert into subagents (id, team_id, gateway_id, subagent_type) values
  ('SA1', 'A', 'GA1', 'claude'), ('SB1', 'B', 'GB1', 'claude');
insert into subagent_runs (id, subagent_id, team_id, gateway_id, run_sequence) values
  ('RA1', 'SA1', 'A', 'GA1', 1), ('RB1', 'SB1', 'B', 'GB1', 1);
insert into subagent_run_events (run_id, subagent_id, team_id, gateway_id, sequence, event_type) values
  ('RA1', 'SA1', 'A', 'GA1', 1, 'run_started'), ('RB1', 'SB1', 'B', 'GB1', 1, 'run_started');
insert into gateway_events (gateway_id, team_id, message) values ('GA1', 'A', 'hello'), ('GB1', 'B', 'hi');
insert into team_resources (team_id, resource_type, resource_id) values
  ('A', 'remote_shell', 'a'), ('A', 'document', 'd'), ('B', 'remote_shell', 'b');
insert into team_members (team_id, user_id, role) values
  ('A', 'OWNA', 'owner'), ('A', 'MEMA', 'member'), ('A', 'VIEWA', 'viewer'), ('B', 'OWNB', 'owner');
insert into team_secrets (team_id, name, value) values ('A', 'TOKEN', 's3cret-a'), ('B', 'KEY', 's3cret-b');
insert into gateway_pairing_codes (code, team_id, expires_at) values ('CODEA', 'A', now() + interval '1 hour');
"#;

/// The seed with its placeholders replaced by the ids above.
fn seed_sql() -> String {
    let ids = [
        ("'GA1'", GW_A1),
        ("'GA2'", GW_A2),
        ("'GAR'", GW_A_REVOKED),
        ("'GB1'", GW_B1),
        ("'JA1Q'", JOB_A1_QUEUED),
        ("'JA1R'", JOB_A1_RUNNING),
        ("'JA2'", JOB_A2),
        ("'JB1'", JOB_B1),
        ("'SA1'", SUB_A1),
        ("'SB1'", SUB_B1),
        ("'RA1'", RUN_A1),
        ("'RB1'", RUN_B1),
        ("'OWNA'", OWNER_A),
        ("'MEMA'", MEMBER_A),
        ("'VIEWA'", VIEWER_A),
        ("'OWNB'", OWNER_B),
        ("'A'", TEAM_A),
        ("'B'", TEAM_B),
    ];
    ids.iter().fold(SEED.to_string(), |sql, (from, to)| {
        sql.replace(from, &format!("'{to}'"))
    })
}

fn gateway(gateway_id: &str, team_id: &str) -> Value {
    json!({"role": "authenticated", "aud": "authenticated", "sub": uuid::Uuid::new_v4().to_string(),
           "app_metadata": {"principal": "gateway", "gateway_id": gateway_id, "team_id": team_id}})
}

fn person(user_id: &str) -> Value {
    json!({"role": "authenticated", "aud": "authenticated", "sub": user_id, "session_id": "s1"})
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// A `select` answers this number; any other statement changes this many rows.
    Rows(i64),
    /// Refused with SQLSTATE 42501 (no grant, or a policy's check failed).
    Denied,
}

struct Case {
    name: String,
    claims: Value,
    sql: String,
    expect: Expect,
}

fn case(name: &str, claims: &Value, sql: &str, expect: Expect) -> Case {
    Case {
        name: name.into(),
        claims: claims.clone(),
        sql: sql
            .replace("{GA1}", GW_A1)
            .replace("{GA2}", GW_A2)
            .replace("{GB1}", GW_B1)
            .replace("{JA1Q}", JOB_A1_QUEUED)
            .replace("{JA2}", JOB_A2)
            .replace("{JB1}", JOB_B1)
            .replace("{SA1}", SUB_A1)
            .replace("{SB1}", SUB_B1)
            .replace("{RA1}", RUN_A1)
            .replace("{RB1}", RUN_B1)
            .replace("{A}", TEAM_A)
            .replace("{B}", TEAM_B)
            .replace("{OWNA}", OWNER_A)
            .replace("{MEMA}", MEMBER_A),
        expect,
    }
}

/// Runs one case as PostgREST would run the request; rolls it back.
fn run(client: &mut Client, case: &Case) -> Result<Expect, String> {
    let mut tx = client.transaction().map_err(|e| e.to_string())?;
    let role = case.claims["role"].as_str().expect("claims carry a role");
    tx.batch_execute(&format!("set local role {role}"))
        .map_err(|e| e.to_string())?;
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&case.claims.to_string()],
    )
    .map_err(|e| e.to_string())?;
    let outcome = if case.sql.trim_start().starts_with("select") {
        tx.query_one(case.sql.as_str(), &[])
            .map(|row| Expect::Rows(row.get::<_, i64>(0)))
    } else {
        tx.execute(case.sql.as_str(), &[])
            .map(|n| Expect::Rows(n as i64))
    };
    let answer = match outcome {
        Ok(e) => Ok(e),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(Expect::Denied),
        Err(e) => Err(format!("{e}: {:?}", e.as_db_error().map(|d| d.message()))),
    };
    tx.rollback().map_err(|e| e.to_string())?;
    answer
}

fn matrix() -> Vec<Case> {
    use Expect::{Denied, Rows};
    let ga1 = gateway(GW_A1, TEAM_A);
    let revoked = gateway(GW_A_REVOKED, TEAM_A);
    let forged = gateway(GW_B1, TEAM_A);
    let owner_a = person(OWNER_A);
    let member_a = person(MEMBER_A);
    let viewer_a = person(VIEWER_A);
    let owner_b = person(OWNER_B);
    let stranger = person(&uuid::Uuid::new_v4().to_string());
    let anon = json!({"role": "anon"});
    let service = json!({"role": "service_role"});
    let mut cases = vec![
        // A gateway: its own team's rows, and of those only its own.
        case("gateway reads its own jobs", &ga1, "select count(*) from gateway_jobs", Rows(2)),
        case("gateway reads only its own gateway row", &ga1, "select count(*) from team_gateways", Rows(1)),
        case("gateway reads its own subagents", &ga1, "select count(*) from subagents", Rows(1)),
        case("gateway reads its subagents' runs", &ga1, "select count(*) from subagent_runs", Rows(1)),
        case("gateway reads its runs' events", &ga1, "select count(*) from subagent_run_events", Rows(1)),
        case("gateway reads its team's remote shells only", &ga1, "select count(*) from team_resources", Rows(1)),
        case("gateway sees no pairing codes", &ga1, "select count(*) from gateway_pairing_codes", Rows(0)),
        case("gateway sees no secrets", &ga1, "select count(*) from team_secrets", Rows(0)),
        case("gateway sees no members", &ga1, "select count(*) from team_members", Rows(0)),
        case("gateway claims its own queued job", &ga1, "update gateway_jobs set status = 'running' where id = '{JA1Q}'", Rows(1)),
        case("gateway cannot update another gateway's job", &ga1, "update gateway_jobs set status = 'running' where id = '{JA2}'", Rows(0)),
        case("gateway cannot update another team's job", &ga1, "update gateway_jobs set status = 'running' where id = '{JB1}'", Rows(0)),
        case("gateway cannot skip the running state", &ga1, "update gateway_jobs set status = 'completed' where id = '{JA1Q}'", Denied),
        case("gateway cannot hand its job to another gateway", &ga1, "update gateway_jobs set gateway_id = '{GA2}' where id = '{JA1Q}'", Denied),
        case("gateway cannot rewrite a job's payload", &ga1, "update gateway_jobs set payload = '{}' where id = '{JA1Q}'", Denied),
        case("gateway cannot insert jobs", &ga1, "insert into gateway_jobs (team_id, gateway_id) values ('{A}', '{GA1}')", Denied),
        case("gateway logs its own events", &ga1, "insert into gateway_events (gateway_id, team_id, message) values ('{GA1}', '{A}', 'x')", Rows(1)),
        case("gateway cannot log as another gateway", &ga1, "insert into gateway_events (gateway_id, team_id, message) values ('{GA2}', '{A}', 'x')", Denied),
        case("gateway records a run of its own subagent", &ga1, "insert into subagent_runs (subagent_id, team_id, gateway_id, run_sequence) values ('{SA1}', '{A}', '{GA1}', 2)", Rows(1)),
        case("gateway cannot record a run of another team's subagent", &ga1, "insert into subagent_runs (subagent_id, team_id, gateway_id, run_sequence) values ('{SB1}', '{A}', '{GA1}', 2)", Denied),
        case("gateway allocates its subagent's next run sequence", &ga1, "select allocate_subagent_run_sequence('{SA1}')::bigint", Rows(2)),
        case("gateway cannot allocate for another's subagent", &ga1, "select allocate_subagent_run_sequence('{SB1}')::bigint", Denied),
        case("gateway reports its subagent's output", &ga1, "update subagents set output = '{\"ok\": true}' where id = '{SA1}'", Rows(1)),
        case("gateway cannot rewrite its subagent's config", &ga1, "update subagents set config = '{\"x\": 1}' where id = '{SA1}'", Denied),
        case("member updates a subagent's input", &member_a, "update subagents set input = '{}' where id = '{SA1}'", Rows(1)),
        case("member cannot forge a subagent's output", &member_a, "update subagents set output = '{}' where id = '{SA1}'", Denied),
        case("member of A cannot update B's subagent", &member_a, "update subagents set input = '{}' where id = '{SB1}'", Rows(0)),
        case("gateway appends an event to its run", &ga1, "insert into subagent_run_events (run_id, subagent_id, team_id, gateway_id, sequence, event_type) values ('{RA1}', '{SA1}', '{A}', '{GA1}', 2, 'message')", Rows(1)),
        case("gateway cannot append to another team's run", &ga1, "insert into subagent_run_events (run_id, subagent_id, team_id, gateway_id, sequence, event_type) values ('{RB1}', '{SB1}', '{A}', '{GA1}', 2, 'message')", Denied),
        case("gateway heartbeats through the RPC", &ga1, "select count(*) from gateway_record_heartbeat('ready', '{}'::jsonb, 'box') r where r ->> 'success' = 'true'", Rows(1)),
        case("revoked gateway cannot heartbeat", &revoked, "select count(*) from gateway_record_heartbeat('ready', '{}'::jsonb, 'box')", Denied),
        case("member allocates a run sequence in their team", &member_a, "select allocate_subagent_run_sequence('{SA1}')::bigint", Rows(2)),
        case("viewer cannot allocate run sequences", &viewer_a, "select allocate_subagent_run_sequence('{SA1}')::bigint", Denied),
        case("owner of B cannot allocate for A's subagent", &owner_b, "select allocate_subagent_run_sequence('{SA1}')::bigint", Denied),
        case("anon cannot allocate run sequences", &anon, "select allocate_subagent_run_sequence('{SA1}')::bigint", Denied),
        case("gateway cannot delete its jobs", &ga1, "delete from gateway_jobs where id = '{JA1Q}'", Denied),
        case("revoked gateway reads nothing", &revoked, "select count(*) from gateway_jobs", Rows(0)),
        case("forged claims (team A, team B's gateway) read nothing", &forged, "select count(*) from gateway_jobs", Rows(0)),
        // People, through team membership.
        case("member reads their team's jobs", &member_a, "select count(*) from gateway_jobs", Rows(4)),
        case("member reads only their team", &member_a, "select count(*) from teams", Rows(1)),
        case("member of A cannot read team B's jobs", &member_a, &format!("select count(*) from gateway_jobs where team_id = '{TEAM_B}'"), Rows(0)),
        case("owner of B reads only B's gateways", &owner_b, "select count(*) from team_gateways", Rows(1)),
        case("stranger reads nothing", &stranger, "select count(*) from gateway_jobs", Rows(0)),
        case("member dispatches a job to a live gateway", &member_a, "insert into gateway_jobs (team_id, gateway_id, requested_by_user_id) values ('{A}', '{GA1}', '{MEMA}')", Rows(1)),
        case("member cannot dispatch to team B", &member_a, "insert into gateway_jobs (team_id, gateway_id) values ('{B}', '{GB1}')", Denied),
        case("member cannot sign a job as someone else", &member_a, "insert into gateway_jobs (team_id, gateway_id, requested_by_user_id) values ('{A}', '{GA1}', '{OWNA}')", Denied),
        case("member cannot set a job's status", &member_a, "insert into gateway_jobs (team_id, gateway_id, status) values ('{A}', '{GA1}', 'completed')", Denied),
        case("viewer cannot insert jobs", &viewer_a, "insert into gateway_jobs (team_id, gateway_id) values ('{A}', '{GA1}')", Denied),
        case("member lists secret names", &member_a, "select count(name) from team_secrets", Rows(1)),
        case("viewer does not see secrets", &viewer_a, "select count(*) from team_secrets", Rows(0)),
        case("owner cannot read a secret's value", &owner_a, "select count(value) from team_secrets", Denied),
        case("owner sets a secret", &owner_a, "insert into team_secrets (team_id, name, value) values ('{A}', 'NEW', 'v')", Rows(1)),
        case("member cannot set a secret", &member_a, "insert into team_secrets (team_id, name, value) values ('{A}', 'NEW', 'v')", Denied),
        case("viewer sees no pairing codes", &viewer_a, "select count(*) from gateway_pairing_codes", Rows(0)),
        case("owner sees the team's pairing codes", &owner_a, "select count(*) from gateway_pairing_codes", Rows(1)),
        case("member cannot rename a gateway", &member_a, "update team_gateways set device_name = 'x' where id = '{GA1}'", Rows(0)),
        case("owner renames a gateway", &owner_a, "update team_gateways set device_name = 'x' where id = '{GA1}'", Rows(1)),
        case("owner of A cannot rename B's gateway", &owner_a, "update team_gateways set device_name = 'x' where id = '{GB1}'", Rows(0)),
        case("member cannot change roles", &member_a, "update team_members set role = 'owner' where user_id = '{MEMA}'", Rows(0)),
        case("owner of A cannot delete B's resources", &owner_a, &format!("delete from team_resources where team_id = '{TEAM_B}'"), Rows(0)),
        case("owner deletes A's resources", &owner_a, "delete from team_resources", Rows(2)),
        // The service key sees everything but secret values.
        case("service role sees every job", &service, "select count(*) from gateway_jobs", Rows(5)),
        case("service role sees every secret's name", &service, "select count(name) from team_secrets", Rows(2)),
        case("service role cannot read a secret's value", &service, "select count(value) from team_secrets", Denied),
        case("service role redeems a pairing code", &service, "select count(*) from redeem_gateway_pairing_code('codea', 'new box')", Rows(1)),
        case("people cannot redeem pairing codes", &owner_a, "select count(*) from redeem_gateway_pairing_code('codea', 'new box')", Denied),
    ];
    cases.push(case(
        "the run-sequence counters are for the RPC only",
        &member_a,
        "select count(*) from subagent_run_sequence_counters",
        Denied,
    ));
    // The anon key reads nothing at all.
    for table in panorama_hub::schema::TABLES {
        cases.push(case(
            &format!("anon reads nothing of {}", table.name),
            &anon,
            &format!("select count(*) from {}", table.name),
            Denied,
        ));
    }
    cases
}

/// What a Supabase project has before the script: the roles, its own
/// `auth.uid()` / `auth.jwt()`, default privileges that grant anon and
/// authenticated everything on new tables and functions, and the realtime
/// publication. (Roles are per cluster: the plain database ran first.)
const SUPABASE_LIKE: &str = r#"
create schema auth;
create function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
create function auth.uid() returns uuid language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
grant usage on schema auth to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
create publication supabase_realtime;
"#;

/// Applies the printed script (twice) to a fresh database prepared by
/// `prelude`, seeds it, and runs the whole matrix; returns the case count.
fn apply_and_run_matrix(what: &str, prelude: &str) -> usize {
    let url = panorama_testkit::postgres::fresh_database();
    let mut client = Client::connect(&url, NoTls).expect("connect to the test cluster");
    client
        .batch_execute(prelude)
        .unwrap_or_else(|e| panic!("{what}: prepare the database: {e}"));
    let script = printed_schema();
    client
        .batch_execute(&script)
        .unwrap_or_else(|e| panic!("{what}: the printed schema applies: {e:?}"));
    client
        .batch_execute(&script)
        .unwrap_or_else(|e| panic!("{what}: the printed schema applies a second time: {e:?}"));
    client
        .batch_execute(&seed_sql())
        .expect("seed rows as the superuser");
    let published: i64 = client
        .query_one(
            "select count(*) from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'gateway_jobs'",
            &[],
        )
        .expect("read the publication")
        .get(0);
    let secrets_published: i64 = client
        .query_one(
            "select count(*) from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'team_secrets'",
            &[],
        )
        .expect("read the publication")
        .get(0);
    assert_eq!(
        secrets_published, 0,
        "{what}: secret values never reach realtime"
    );
    let expected = i64::from(prelude.contains("supabase_realtime"));
    assert_eq!(
        published, expected,
        "{what}: gateway_jobs in the realtime publication"
    );

    let cases = matrix();
    let mut failures = Vec::new();
    for c in &cases {
        match run(&mut client, c) {
            Ok(got) if got == c.expect => {}
            Ok(got) => failures.push(format!(
                "{}: expected {:?}, got {got:?} ({})",
                c.name, c.expect, c.sql
            )),
            Err(e) => failures.push(format!("{}: error {e} ({})", c.name, c.sql)),
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn printed_schema_enforces_the_isolation_matrix_as_postgres_rls() {
    if !panorama_testkit::postgres::installed() {
        eprintln!(
            "SKIPPED schema_sql: PostgreSQL is not installed (apt-get install postgresql, or set PANORAMA_TEST_PG_BIN)"
        );
        return;
    }
    // One test, in this order: roles are per cluster, and the plain
    // database is where the script must create them.
    let n = apply_and_run_matrix("plain PostgreSQL", "");
    eprintln!("schema_sql: plain PostgreSQL, {n} cases passed");
    let n = apply_and_run_matrix("Supabase-like", SUPABASE_LIKE);
    eprintln!("schema_sql: Supabase-like database, {n} cases passed");
}
