//! `panorama-hub schema --print`: the hub's schema as one PostgreSQL script
//! with real row-level security (control-plane spec §16), deployable onto a
//! Supabase project or a plain PostgreSQL behind PostgREST.
//!
//! Tables, column types, defaults, checks and the column grants are built
//! from the schema-as-data (`schema.rs`) and the grants of `policy.rs`, so
//! they cannot drift from what the hub serves. The policy predicates (the
//! `USING` / `WITH CHECK` expressions) are written here, in one place, each
//! next to the `policy.rs` rule it mirrors.
//!
//! The script is idempotent enough to run twice: roles, the `auth` helpers
//! and the publication entry are created only where missing (Supabase has
//! them), tables with `IF NOT EXISTS`, policies and triggers dropped and
//! recreated, functions replaced.

use crate::people::DISPATCH_ROLES;
use crate::policy::{gateway_can_select, gateway_writable, team_column, user_grant, Verb};
use crate::schema::{ColDefault, ColType, Column, Table, TABLES};
use std::fmt::Write;

/// The whole script.
pub fn render() -> String {
    let mut out = String::new();
    out.push_str(PRELUDE);
    for table in TABLES {
        out.push_str(&create_table(table));
    }
    out.push_str(EXTRA_TABLES);
    out.push_str(HELPERS);
    for table in TABLES {
        out.push_str(&security(table));
    }
    for table in TABLES {
        out.push_str(&column_guard(table));
    }
    out.push_str(&RPCS.replace("{DISPATCH_ROLES}", &role_array(DISPATCH_ROLES)));
    out.push_str(&publication());
    out
}

fn sql_type(ty: ColType) -> &'static str {
    match ty {
        ColType::Uuid => "uuid",
        ColType::Text => "text",
        ColType::Int => "integer",
        ColType::Bool => "boolean",
        ColType::Json => "jsonb",
        ColType::Timestamp => "timestamptz",
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL default of a column, from the JSON text `schema.rs` gives.
fn default_sql(col: &Column) -> Option<String> {
    match col.default {
        ColDefault::None => None,
        ColDefault::NewUuid => Some("gen_random_uuid()".into()),
        ColDefault::Now => Some("now()".into()),
        ColDefault::Json(text) => {
            let value: serde_json::Value =
                serde_json::from_str(text).expect("schema.rs defaults are valid JSON");
            Some(match (col.ty, value) {
                (ColType::Json, v) => format!("{}::jsonb", quote_literal(&v.to_string())),
                (_, serde_json::Value::String(s)) => quote_literal(&s),
                (_, v) => v.to_string(),
            })
        }
    }
}

fn create_table(table: &Table) -> String {
    let mut lines: Vec<String> = Vec::new();
    for col in table.columns {
        let mut line = format!("  {} {}", col.name, sql_type(col.ty));
        if col.name == table.primary_key {
            line.push_str(" primary key");
        } else if !col.nullable {
            line.push_str(" not null");
        }
        if let Some(d) = default_sql(col) {
            write!(line, " default {d}").unwrap();
        }
        if let Some(allowed) = col.allowed {
            let list: Vec<String> = allowed.iter().map(|a| quote_literal(a)).collect();
            write!(line, " check ({} in ({}))", col.name, list.join(", ")).unwrap();
        }
        if col.name == "team_id" && table.name != "teams" {
            line.push_str(" references public.teams(id) on delete cascade");
        }
        lines.push(line);
    }
    for unique in unique_keys(table.name) {
        lines.push(format!("  unique ({unique})"));
    }
    let mut out = format!(
        "\ncreate table if not exists public.{} (\n{}\n);\n",
        table.name,
        lines.join(",\n")
    );
    if table.touch_updated_at {
        writeln!(
            out,
            "drop trigger if exists {t}_updated_at on public.{t};\n\
             create trigger {t}_updated_at before update on public.{t}\n  \
             for each row execute function public.set_updated_at();",
            t = table.name
        )
        .unwrap();
    }
    out
}

/// The unique keys the gateway's 23505 handling relies on (spec §4.3) and
/// the ones the hub's stores enforce.
fn unique_keys(table: &str) -> &'static [&'static str] {
    match table {
        "team_gateways" => &["auth_user_id"],
        "subagent_runs" => &["subagent_id, run_sequence"],
        "subagent_run_events" => &["run_id, sequence"],
        "team_secrets" => &["team_id, name"],
        "team_members" => &["team_id, user_id"],
        _ => &[],
    }
}

fn role_array(roles: &[&str]) -> String {
    let list: Vec<String> = roles.iter().map(|r| quote_literal(r)).collect();
    format!("array[{}]", list.join(", "))
}

/// policy.rs `row_filters` for a gateway principal: the rows a gateway may
/// read, update (`USING`) — its team's, and of those only its own.
fn gateway_using(table: &str) -> String {
    let team = "team_id = public.current_gateway_team_id()";
    let own = "gateway_id = public.current_gateway_id()";
    let live = "public.current_gateway_is_active()";
    match table {
        "team_gateways" => format!("id = public.current_gateway_id() and {team} and {live}"),
        "gateway_jobs" | "subagents" => format!("{team} and {own} and {live}"),
        // `Filter::SubagentOfGateway`.
        "subagent_runs" | "subagent_run_events" => format!(
            "{team} and {live} and exists (select 1 from public.subagents s \
             where s.id = {table}.subagent_id and s.gateway_id = public.current_gateway_id())"
        ),
        "team_resources" => format!("{team} and resource_type = 'remote_shell' and {live}"),
        _ => format!("{team} and {own} and {live}"),
    }
}

/// policy.rs `check_insert` (gateway branch): events and runs carry the
/// gateway's own ids; runs and run events belong to its own subagent.
fn gateway_insert_check(table: &str) -> String {
    let team = "team_id = public.current_gateway_team_id()";
    let live = "public.current_gateway_is_active()";
    match table {
        "subagent_runs" => format!(
            "{team} and gateway_id = public.current_gateway_id() and {live} and exists (\
             select 1 from public.subagents s where s.id = subagent_runs.subagent_id \
             and s.gateway_id = public.current_gateway_id() and s.team_id = public.current_gateway_team_id())"
        ),
        "subagent_run_events" => format!(
            "{team} and gateway_id is not distinct from public.current_gateway_id() and {live} \
             and exists (select 1 from public.subagent_runs r join public.subagents s on s.id = r.subagent_id \
             where r.id = subagent_run_events.run_id and r.subagent_id = subagent_run_events.subagent_id \
             and s.gateway_id = public.current_gateway_id() and s.team_id = public.current_gateway_team_id())"
        ),
        _ => format!("{team} and gateway_id = public.current_gateway_id() and {live}"),
    }
}

/// policy.rs `update_guard`: the new row stays in the gateway's team (and,
/// for jobs and subagents, on the gateway itself).
fn gateway_update_check(table: &str) -> String {
    let team = "team_id = public.current_gateway_team_id()";
    match table {
        "gateway_jobs" | "subagents" => {
            format!("{team} and gateway_id = public.current_gateway_id()")
        }
        _ => team.to_string(),
    }
}

/// policy.rs `user_row_filters` (`Filter::TeamOfMember`): the row's team is
/// one where `auth.uid()` holds one of `roles`. Not for gateway tokens.
fn member_of(table: &str, roles: &[&str]) -> String {
    format!(
        "public.current_gateway_id() is null and public.is_team_member({}, {})",
        team_column(table),
        role_array(roles)
    )
}

/// policy.rs `check_user_insert`: besides membership, a person signs rows
/// with their own id only, and dispatches only to a live gateway of the
/// same team.
fn user_insert_check(table: &str, roles: &[&str]) -> String {
    let mut check = member_of(table, roles);
    for who in ["created_by", "requested_by_user_id"] {
        if crate::schema::table(table)
            .and_then(|t| t.column(who))
            .is_some()
        {
            write!(check, " and ({who} is null or {who} = auth.uid())").unwrap();
        }
    }
    if matches!(table, "gateway_jobs" | "subagents") {
        write!(
            check,
            " and exists (select 1 from public.team_gateways g where g.id = {table}.gateway_id \
             and g.team_id = {table}.team_id and g.revoked_at is null)"
        )
        .unwrap();
    }
    check
}

const VERBS: [(Verb, &str); 4] = [
    (Verb::Select, "select"),
    (Verb::Insert, "insert"),
    (Verb::Update, "update"),
    (Verb::Delete, "delete"),
];

/// RLS, policies and grants of one table.
fn security(table: &Table) -> String {
    let t = table.name;
    let mut out = format!(
        "\n-- {t}\nalter table public.{t} enable row level security;\n\
         revoke all on public.{t} from anon, authenticated, service_role;\n"
    );
    // The service key bypasses RLS (role attribute), but `value` columns
    // stay write-only for it too (schema.rs `write_only`).
    let readable: Vec<&str> = table.readable_columns().map(|c| c.name).collect();
    writeln!(
        out,
        "grant select ({}), insert, update, delete on public.{t} to service_role;",
        readable.join(", ")
    )
    .unwrap();
    for (verb, name) in VERBS {
        let mut columns: Vec<&str> = Vec::new();
        let mut granted = false;
        let gateway = match verb {
            Verb::Select => gateway_can_select(t),
            Verb::Delete => false,
            _ => gateway_writable(t, verb).is_some(),
        };
        if gateway {
            granted = true;
            columns.extend(gateway_writable(t, verb).unwrap_or(&[]));
            let policy = format!("gw_{t}_{name}");
            let clause = match verb {
                Verb::Select => format!("using ({})", gateway_using(t)),
                Verb::Insert => format!("with check ({})", gateway_insert_check(t)),
                _ => format!(
                    "using ({})\n  with check ({})",
                    gateway_using(t),
                    gateway_update_check(t)
                ),
            };
            writeln!(
                out,
                "drop policy if exists {policy} on public.{t};\n\
                 create policy {policy} on public.{t} for {name} to authenticated\n  {clause};"
            )
            .unwrap();
        }
        if let Some(grant) = user_grant(t, verb) {
            granted = true;
            columns.extend(grant.columns);
            let policy = format!("member_{t}_{name}");
            let member = member_of(t, grant.roles);
            let clause = match verb {
                Verb::Select | Verb::Delete => format!("using ({member})"),
                Verb::Insert => format!("with check ({})", user_insert_check(t, grant.roles)),
                Verb::Update => format!("using ({member})\n  with check ({member})"),
            };
            writeln!(
                out,
                "drop policy if exists {policy} on public.{t};\n\
                 create policy {policy} on public.{t} for {name} to authenticated\n  {clause};"
            )
            .unwrap();
        }
        if !granted {
            continue;
        }
        // PostgreSQL grants are per role, and gateways and people are both
        // `authenticated`: the column grant is the union of their grants;
        // the policies above keep each to its rows.
        columns.sort_unstable();
        columns.dedup();
        match verb {
            Verb::Select => {
                writeln!(
                    out,
                    "grant select ({}) on public.{t} to authenticated;",
                    readable.join(", ")
                )
                .unwrap();
            }
            Verb::Delete => writeln!(out, "grant delete on public.{t} to authenticated;").unwrap(),
            _ => writeln!(
                out,
                "grant {name} ({}) on public.{t} to authenticated;",
                columns.join(", ")
            )
            .unwrap(),
        }
    }
    out
}

/// Gateways and people share the `authenticated` role, so a column grant
/// cannot tell them apart. Where both may update a table (subagents), a
/// trigger refuses a change to a column outside the writer's own grant
/// (policy.rs `check_columns`).
fn column_guard(table: &Table) -> String {
    let t = table.name;
    let (Some(gateway), Some(user)) = (
        gateway_writable(t, Verb::Update),
        user_grant(t, Verb::Update),
    ) else {
        return String::new();
    };
    let changed_outside = |allowed: &[&str]| -> String {
        let list: Vec<String> = table
            .readable_columns()
            .filter(|c| !allowed.contains(&c.name) && c.name != "updated_at")
            .map(|c| format!("new.{0} is distinct from old.{0}", c.name))
            .collect();
        if list.is_empty() {
            "false".into()
        } else {
            list.join("\n       or ")
        }
    };
    format!(
        "\n-- {t}: each writer changes only its own columns (policy.rs `check_columns`).\n\
         create or replace function public.{t}_columns_guard() returns trigger\n\
         language plpgsql as $$\nbegin\n  \
         if current_user <> 'authenticated' then\n    return new;\n  end if;\n  \
         if public.current_gateway_id() is not null then\n    \
         if {gw} then\n      \
         raise exception 'a gateway may not write these columns of {t}' using errcode = '42501';\n    \
         end if;\n  \
         elsif {person} then\n    \
         raise exception 'a team member may not write these columns of {t}' using errcode = '42501';\n  \
         end if;\n  return new;\nend $$;\n\
         drop trigger if exists {t}_columns_guard on public.{t};\n\
         create trigger {t}_columns_guard before update on public.{t}\n  \
         for each row execute function public.{t}_columns_guard();\n",
        gw = changed_outside(gateway),
        person = changed_outside(user.columns),
    )
}

fn publication() -> String {
    let mut out = String::from(
        "\n-- Realtime (spec §16.8): on Supabase the `supabase_realtime` publication\n\
         -- exists; elsewhere this is skipped and gateways fall back to their poll.\n\
         do $$\nbegin\n  if exists (select 1 from pg_publication where pubname = 'supabase_realtime') then\n",
    );
    // The hub's realtime serves every table (schema.rs) but carries no
    // write-only column; a table holding one (team_secrets) stays out of
    // the publication so no change message can hold a secret value.
    let published = TABLES
        .iter()
        .filter(|t| t.columns.iter().all(|c| !c.write_only))
        .map(|t| t.name);
    for t in published {
        writeln!(
            out,
            "    if not exists (select 1 from pg_publication_tables where pubname = 'supabase_realtime' \
             and schemaname = 'public' and tablename = '{t}') then\n      \
             alter publication supabase_realtime add table public.{t};\n    end if;"
        )
        .unwrap();
    }
    out.push_str("  end if;\nend $$;\n");
    out
}

const PRELUDE: &str = r#"-- Panorama control plane: schema with row-level security (control-plane spec §16).
-- Generated by `panorama-hub schema --print`. Apply with
--   panorama-hub schema --print | psql "$DATABASE_URL" -v ON_ERROR_STOP=1
-- Safe to run again: existing objects are kept or replaced.

-- Roles as PostgREST and Supabase expect them (Supabase already has them).
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end $$;

-- auth.uid() and auth.jwt() read the claims PostgREST puts in
-- `request.jwt.claims`; created only where missing (Supabase has them, and
-- its `auth` schema is not ours to change). Supabase's default privileges
-- grant anon and authenticated everything on new tables and functions: the
-- grants below start from `revoke all`.
create schema if not exists auth;
do $$
begin
  if to_regprocedure('auth.jwt()') is null then
    grant usage on schema auth to anon, authenticated, service_role;
    create function auth.jwt() returns jsonb language sql stable as
      'select coalesce(nullif(current_setting(''request.jwt.claims'', true), ''''), ''{}'')::jsonb';
  end if;
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as
      'select nullif(auth.jwt() ->> ''sub'', '''')::uuid';
  end if;
end $$;
grant usage on schema public to anon, authenticated, service_role;

create or replace function public.set_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end $$;
"#;

const EXTRA_TABLES: &str = r#"
-- RPC bookkeeping only (allocate_subagent_run_sequence); no grants.
create table if not exists public.subagent_run_sequence_counters (
  subagent_id uuid primary key references public.subagents(id) on delete cascade,
  last_sequence integer not null
);
alter table public.subagent_run_sequence_counters enable row level security;
revoke all on public.subagent_run_sequence_counters from anon, authenticated, service_role;
"#;

/// Identity helpers (spec §16.2, §16.5) and the job transition guard
/// (§16.4, policy.rs `check_job_transition`).
const HELPERS: &str = r#"
-- The gateway principal (auth.rs `gateway_app_metadata`): its token has
-- role `authenticated` and app_metadata {principal: "gateway", gateway_id, team_id}.
create or replace function public.current_gateway_id() returns uuid
language sql stable as $$
  select case when auth.jwt() #>> '{app_metadata,principal}' = 'gateway'
              then nullif(auth.jwt() #>> '{app_metadata,gateway_id}', '')::uuid end
$$;
create or replace function public.current_gateway_team_id() returns uuid
language sql stable as $$
  select case when auth.jwt() #>> '{app_metadata,principal}' = 'gateway'
              then nullif(auth.jwt() #>> '{app_metadata,team_id}', '')::uuid end
$$;
-- A gateway acts only while its row exists and is not revoked (the hub's
-- `ensure_active`).
create or replace function public.current_gateway_is_active() returns boolean
language sql stable security definer set search_path = public as $$
  select exists (select 1 from public.team_gateways g
                  where g.id = public.current_gateway_id()
                    and g.team_id = public.current_gateway_team_id()
                    and g.revoked_at is null)
$$;
-- People act through team membership (policy.rs `Filter::TeamOfMember`).
-- Security definer, so team_members' own policies do not recurse.
create or replace function public.is_team_member(p_team_id uuid, p_roles text[]) returns boolean
language sql stable security definer set search_path = public as $$
  select exists (select 1 from public.team_members m
                  where m.team_id = p_team_id and m.user_id = auth.uid()
                    and m.role = any (p_roles))
$$;
grant execute on function public.current_gateway_id(), public.current_gateway_team_id(),
  public.current_gateway_is_active(), public.is_team_member(uuid, text[])
  to anon, authenticated, service_role;

-- A gateway moves its own job only queued -> running -> completed/failed/cancelled
-- and never rewrites its identity (policy.rs `check_job_transition`).
create or replace function public.gateway_jobs_guard() returns trigger
language plpgsql as $$
begin
  if public.current_gateway_id() is null then
    return new;
  end if;
  if new.id <> old.id or new.team_id <> old.team_id or new.job_type <> old.job_type
     or new.payload <> old.payload or new.created_at <> old.created_at then
    raise exception 'gateway may not modify job identity' using errcode = '42501';
  end if;
  if new.gateway_id is distinct from public.current_gateway_id() then
    raise exception 'gateway may only hold its own jobs' using errcode = '42501';
  end if;
  if new.status is distinct from old.status and not (
       (old.status = 'queued' and new.status = 'running') or
       (old.status = 'running' and new.status in ('completed', 'failed', 'cancelled'))) then
    raise exception 'illegal job transition % -> %', old.status, new.status using errcode = '42501';
  end if;
  return new;
end $$;
drop trigger if exists gateway_jobs_guard on public.gateway_jobs;
create trigger gateway_jobs_guard before update on public.gateway_jobs
  for each row execute function public.gateway_jobs_guard();
"#;

/// The RPCs that are plain SQL (spec §16.6, §16.7). Edge Functions, not SQL
/// (they mint tokens or need the hub's secrets): `exchange-gateway-pairing-code`
/// (calls `redeem_gateway_pairing_code` with the service key, then creates the
/// gateway's auth user with app_metadata), `gateway-heartbeat` (forwards to
/// `gateway_record_heartbeat` with the gateway's JWT), and
/// `finalize-gateway-subagent-run`.
const RPCS: &str = r#"
-- RPCs. Edge Functions (not SQL, they mint tokens): exchange-gateway-pairing-code
-- calls redeem_gateway_pairing_code with the service key, then creates the
-- gateway's auth user with app_metadata {principal, gateway_id, team_id};
-- gateway-heartbeat forwards to gateway_record_heartbeat with the gateway's JWT.
-- Not in this script (the hub implements them in Rust): the later protocol's
-- accept_subagent_run, request_subagent_run_cancellation and
-- resolve_secret_placeholders_for_job, and the team invitation RPCs.
create or replace function public.allocate_subagent_run_sequence(p_subagent_id uuid)
returns integer
language plpgsql security definer set search_path = public as $$
declare
  v_max integer;
  v_next integer;
begin
  if public.current_gateway_id() is not null and not exists (
       select 1 from subagents s
        where s.id = p_subagent_id
          and s.gateway_id = public.current_gateway_id()
          and s.team_id = public.current_gateway_team_id()) then
    raise exception 'subagent not accessible' using errcode = '42501';
  end if;
  -- A person allocates only for subagents of teams where they dispatch
  -- (the hub's rest.rs rpc); the service key for any.
  if public.current_gateway_id() is null and auth.jwt() ->> 'role' = 'authenticated' and not exists (
       select 1 from subagents s
        where s.id = p_subagent_id and public.is_team_member(s.team_id, {DISPATCH_ROLES})) then
    raise exception 'subagent not accessible' using errcode = '42501';
  end if;
  select coalesce(max(run_sequence), 0) into v_max from subagent_runs where subagent_id = p_subagent_id;
  insert into subagent_run_sequence_counters as c (subagent_id, last_sequence)
  values (p_subagent_id, v_max + 1)
  on conflict (subagent_id)
  do update set last_sequence = greatest(c.last_sequence, v_max) + 1
  returning c.last_sequence into v_next;
  return v_next;
end $$;
revoke all on function public.allocate_subagent_run_sequence(uuid) from public, anon, authenticated;
grant execute on function public.allocate_subagent_run_sequence(uuid) to authenticated, service_role;

create or replace function public.gateway_record_heartbeat(
  p_status text, p_capabilities jsonb, p_device_name text)
returns jsonb
language plpgsql security definer set search_path = public as $$
begin
  if p_status not in ('pending', 'ready', 'offline', 'error') then
    raise exception 'invalid status %', p_status using errcode = '22023';
  end if;
  if p_capabilities is null or jsonb_typeof(p_capabilities) <> 'object' then
    raise exception 'capabilities must be an object' using errcode = '22023';
  end if;
  update team_gateways g
     set status = p_status,
         capabilities = p_capabilities,
         device_name = coalesce(nullif(btrim(p_device_name), ''), g.device_name),
         last_seen_at = now(),
         ready_at = case when p_status = 'ready' and (g.status <> 'ready' or g.ready_at is null)
                         then now() else g.ready_at end
   where g.id = public.current_gateway_id()
     and g.team_id = public.current_gateway_team_id()
     and g.revoked_at is null;
  if not found then
    raise exception 'gateway not found or revoked' using errcode = '42501';
  end if;
  return jsonb_build_object('success', true, 'egress_credential_renewal', null);
end $$;
revoke all on function public.gateway_record_heartbeat(text, jsonb, text) from public, anon, authenticated;
grant execute on function public.gateway_record_heartbeat(text, jsonb, text) to authenticated;

create or replace function public.redeem_gateway_pairing_code(p_code text, p_device_name text)
returns table (gateway_id uuid, team_id uuid)
language plpgsql security definer set search_path = public as $$
#variable_conflict use_column
declare
  v_code gateway_pairing_codes%rowtype;
  v_gateway uuid;
begin
  select * into v_code from gateway_pairing_codes
   where upper(code) = upper(btrim(p_code))
   for update;
  if not found or v_code.used_at is not null or v_code.expires_at <= now() then
    raise exception 'Invalid or expired pairing code' using errcode = 'P0001';
  end if;
  insert into team_gateways (team_id, device_name, status)
  values (v_code.team_id, nullif(btrim(p_device_name), ''), 'pending')
  returning id into v_gateway;
  update gateway_pairing_codes
     set used_at = now(), used_gateway_id = v_gateway
   where code = v_code.code;
  return query select v_gateway, v_code.team_id;
end $$;
revoke all on function public.redeem_gateway_pairing_code(text, text) from public, anon, authenticated;
grant execute on function public.redeem_gateway_pairing_code(text, text) to service_role;
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::people::{ALL_ROLES, MANAGE_ROLES};

    #[test]
    fn every_table_gets_rls_and_the_secret_value_is_never_granted_for_select() {
        let sql = render();
        for t in TABLES {
            assert!(
                sql.contains(&format!(
                    "alter table public.{} enable row level security;",
                    t.name
                )),
                "{}",
                t.name
            );
        }
        for line in sql
            .lines()
            .filter(|l| l.contains("on public.team_secrets to"))
        {
            if let Some(cols) = line.strip_prefix("grant select (") {
                assert!(!cols.split(')').next().unwrap().contains("value"), "{line}");
            }
        }
    }

    #[test]
    fn defaults_are_sql_literals() {
        let status = crate::schema::GATEWAY_JOBS.column("status").unwrap();
        assert_eq!(default_sql(status).as_deref(), Some("'queued'"));
        let payload = crate::schema::GATEWAY_JOBS.column("payload").unwrap();
        assert_eq!(default_sql(payload).as_deref(), Some("'{}'::jsonb"));
        let attempt = crate::schema::GATEWAY_JOBS.column("attempt").unwrap();
        assert_eq!(default_sql(attempt).as_deref(), Some("1"));
    }

    #[test]
    fn role_lists_match_policy_rs() {
        assert!(member_of("teams", ALL_ROLES).contains("public.is_team_member(id,"));
        assert!(role_array(DISPATCH_ROLES).contains("'member'"));
        assert!(!role_array(MANAGE_ROLES).contains("'member'"));
    }
}
