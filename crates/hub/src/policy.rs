//! Authorization as row-level security would do it (control-plane spec
//! §16.5): the service key sees everything, the anon key nothing but the
//! pairing function, and a gateway token only its own team's rows (and
//! only its own gateway's jobs, subagents and runs). Policies are written as
//! extra filters and row checks, so both storage backends enforce them the
//! same way.
//!
//! A signed-in person (`Principal::User`) acts through team membership:
//! every role reads its teams' rows; members and above dispatch work to
//! their teams' gateways; owners and admins manage the team. Membership is
//! looked up in the same SQL statement as the request ([`Filter::TeamOfMember`]),
//! so a removed member loses access at once, on REST and on realtime.

use crate::auth::Principal;
use crate::changes::Row;
use crate::error::ApiError;
use crate::people::{ALL_ROLES, DISPATCH_ROLES, MANAGE_ROLES};
use crate::postgrest::{Filter, Op, Operand};
use crate::schema::Table;
use crate::store::{SelectRequest, SharedStore, TxOps, UpdateGuard};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Select,
    Insert,
    Update,
    Delete,
}

/// Columns a gateway may write, per table and verb (the SQL grants).
pub(crate) fn gateway_writable(table: &str, verb: Verb) -> Option<&'static [&'static str]> {
    match (table, verb) {
        ("gateway_jobs", Verb::Update) => Some(&[
            "status",
            "gateway_id",
            "started_at",
            "completed_at",
            "result",
            "error",
            "debug",
        ]),
        ("gateway_events", Verb::Insert) => Some(&[
            "gateway_id",
            "team_id",
            "provider",
            "level",
            "code",
            "message",
            "details",
        ]),
        ("subagents", Verb::Update) => Some(&[
            "status",
            "output",
            "error",
            "started_at",
            "completed_at",
            "metadata",
        ]),
        ("subagent_runs", Verb::Insert) => Some(&[
            "id",
            "subagent_id",
            "team_id",
            "gateway_id",
            "run_sequence",
            "status",
            "prompt",
            "output",
            "error",
            "metadata",
            "started_at",
            "completed_at",
        ]),
        ("subagent_runs", Verb::Update) => Some(&[
            "status",
            "output",
            "error",
            "metadata",
            "started_at",
            "completed_at",
        ]),
        ("subagent_run_events", Verb::Insert) => Some(&[
            "run_id",
            "subagent_id",
            "team_id",
            "gateway_id",
            "sequence",
            "event_type",
            "payload",
        ]),
        _ => None,
    }
}

pub(crate) fn gateway_can_select(table: &str) -> bool {
    matches!(
        table,
        "team_gateways"
            | "gateway_jobs"
            | "subagents"
            | "subagent_runs"
            | "subagent_run_events"
            | "team_resources"
    )
}

/// A person's grant on a table for one verb: the team roles that hold it
/// and, for writes, the columns they may set.
pub(crate) struct UserGrant {
    pub(crate) roles: &'static [&'static str],
    pub(crate) columns: &'static [&'static str],
}

const RESOURCE_COLUMNS: &[&str] = &[
    "id",
    "team_id",
    "resource_type",
    "resource_id",
    "title",
    "scope",
    "owner_agent_id",
    "max_access_level",
    "metadata",
];

/// Only owners change roles or remove members: an admin could otherwise
/// make itself owner. Admins add people through invitations, which refuse
/// to hand out a role above their own.
const OWNER_ONLY: &[&str] = &["owner"];

pub(crate) fn user_grant(table: &str, verb: Verb) -> Option<UserGrant> {
    let grant = |roles, columns| Some(UserGrant { roles, columns });
    match (table, verb) {
        ("gateway_pairing_codes", Verb::Select) => grant(MANAGE_ROLES, &[]),
        (
            "teams"
            | "team_gateways"
            | "gateway_jobs"
            | "gateway_events"
            | "subagents"
            | "subagent_runs"
            | "subagent_run_events"
            | "team_resources"
            | "team_members",
            Verb::Select,
        ) => grant(ALL_ROLES, &[]),
        // Dispatch recipes (control-plane spec §16.10).
        ("gateway_jobs", Verb::Insert) => grant(
            DISPATCH_ROLES,
            &[
                "id",
                "team_id",
                "gateway_id",
                "job_type",
                "payload",
                "requested_via",
                "requested_by_user_id",
                "idempotency_key",
                "attempt",
                "retry_of_job_id",
            ],
        ),
        ("subagents", Verb::Insert) => grant(
            DISPATCH_ROLES,
            &[
                "id",
                "team_id",
                "gateway_id",
                "subagent_type",
                "config",
                "input",
                "metadata",
                "created_by",
            ],
        ),
        ("subagents", Verb::Update) => {
            grant(DISPATCH_ROLES, &["config", "input", "metadata", "status"])
        }
        // Managing the team.
        ("gateway_pairing_codes", Verb::Insert) => grant(
            MANAGE_ROLES,
            &["code", "team_id", "expires_at", "created_by"],
        ),
        ("team_gateways", Verb::Update) => grant(
            MANAGE_ROLES,
            &["device_name", "full_control_enabled", "revoked_at"],
        ),
        ("team_resources", Verb::Insert) => grant(MANAGE_ROLES, RESOURCE_COLUMNS),
        ("team_resources", Verb::Update) => grant(MANAGE_ROLES, &RESOURCE_COLUMNS[2..]),
        ("team_resources", Verb::Delete) => grant(MANAGE_ROLES, &[]),
        ("team_members", Verb::Update) => grant(OWNER_ONLY, &["role"]),
        ("team_members", Verb::Delete) => grant(OWNER_ONLY, &[]),
        // Team secrets: `value` is write-only for everyone (no grant reads
        // it back). Those who dispatch may list names, which is what they
        // need to fill a shell_exec job's `secret_env`; viewers may not
        // even learn which secrets exist. Only managers set and delete.
        ("team_secrets", Verb::Select) => grant(DISPATCH_ROLES, &[]),
        ("team_secrets", Verb::Insert) => grant(MANAGE_ROLES, &["id", "team_id", "name", "value"]),
        ("team_secrets", Verb::Update) => grant(MANAGE_ROLES, &["name", "value"]),
        ("team_secrets", Verb::Delete) => grant(MANAGE_ROLES, &[]),
        _ => None,
    }
}

/// The row column naming the team a row belongs to.
pub(crate) fn team_column(table: &str) -> &'static str {
    if table == "teams" {
        "id"
    } else {
        "team_id"
    }
}

fn user_row_filters(
    user_id: &str,
    session_id: &str,
    table: &Table,
    verb: Verb,
) -> Result<Vec<Filter>, ApiError> {
    let grant = user_grant(table.name, verb)
        .ok_or_else(|| ApiError::permission_denied(table.name, true))?;
    Ok(vec![Filter::TeamOfMember {
        column: team_column(table.name),
        user_id: user_id.to_string(),
        session_id: session_id.to_string(),
        roles: grant.roles,
    }])
}

/// The filters that restrict `principal` to the rows it may see or change
/// (`USING`), or an error when it has no grant at all.
pub fn row_filters(
    principal: &Principal,
    table: &Table,
    verb: Verb,
) -> Result<Vec<Filter>, ApiError> {
    let (gateway_id, team_id) = match principal {
        Principal::Service => return Ok(Vec::new()),
        Principal::Anon => return Err(ApiError::permission_denied(table.name, false)),
        Principal::User {
            user_id,
            session_id,
        } => return user_row_filters(user_id, session_id, table, verb),
        Principal::Gateway {
            gateway_id,
            team_id,
            ..
        } => (gateway_id.as_str(), team_id.as_str()),
    };
    let granted = match verb {
        Verb::Select => gateway_can_select(table.name),
        Verb::Delete => false,
        Verb::Insert | Verb::Update => gateway_writable(table.name, verb).is_some(),
    };
    if !granted {
        return Err(ApiError::permission_denied(table.name, true));
    }
    let team = Filter::eq("team_id", team_id);
    Ok(match table.name {
        "team_gateways" => vec![Filter::eq("id", gateway_id), team],
        "gateway_jobs" | "subagents" => vec![team, Filter::eq("gateway_id", gateway_id)],
        "subagent_runs" | "subagent_run_events" => {
            vec![team, Filter::SubagentOfGateway(gateway_id.to_string())]
        }
        "team_resources" => vec![team, Filter::eq("resource_type", "remote_shell")],
        // Insert-only tables: nothing to read back through a policy.
        _ => vec![team, Filter::eq("gateway_id", gateway_id)],
    })
}

/// Who may call the later-protocol run RPCs (`accept_subagent_run`,
/// `request_subagent_run_cancellation`): the service key on any row, a
/// person on rows of the teams where they dispatch (owner, admin, member;
/// not a viewer), nobody else — a gateway accepting or cancelling runs for
/// itself would defeat the control plane's bookkeeping. `Some(filters)`
/// restricts the row the RPC acts on ([`require_run_control`]); `None`
/// refuses the call.
pub fn run_control_filters(principal: &Principal) -> Option<Vec<Filter>> {
    match principal {
        Principal::Service => Some(Vec::new()),
        Principal::User {
            user_id,
            session_id,
        } => Some(vec![Filter::TeamOfMember {
            column: "team_id",
            user_id: user_id.clone(),
            session_id: session_id.clone(),
            roles: DISPATCH_ROLES,
        }]),
        Principal::Gateway { .. } | Principal::Anon => None,
    }
}

/// Inside the RPC's transaction: refuses unless the row `id` of `table`
/// (the subagent being accepted, the run being cancelled) lies within
/// `scope` from [`run_control_filters`]. One refusal whether the row is
/// another team's or does not exist, so the answer leaks nothing.
pub fn require_run_control(
    tx: &mut dyn TxOps,
    table: &'static Table,
    id: &str,
    scope: &[Filter],
    function: &str,
) -> Result<(), ApiError> {
    if scope.is_empty() {
        return Ok(());
    }
    let mut filters = vec![Filter::eq("id", id)];
    filters.extend(scope.iter().cloned());
    if tx.select(table, &filters)?.is_empty() {
        let mut e = ApiError::pg(
            "42501",
            format!("permission denied for function {function}"),
        )
        .details(format!(
            "{} {id} is not in a team where you are an owner, admin or member",
            table.name
        ))
        .hint("Ask a team owner or admin for the member role, or use the service key.");
        e.status = 403;
        return Err(e);
    }
    Ok(())
}

/// Refuses body columns the principal may not write (column grants).
pub fn check_columns(
    principal: &Principal,
    table: &Table,
    verb: Verb,
    row: &Row,
) -> Result<(), ApiError> {
    let (who, allowed) = match principal {
        Principal::Gateway { .. } => (
            "a gateway",
            gateway_writable(table.name, verb).unwrap_or(&[]),
        ),
        Principal::User { .. } => (
            "a team member",
            user_grant(table.name, verb).map_or(&[][..], |g| g.columns),
        ),
        Principal::Service | Principal::Anon => return Ok(()),
    };
    match row.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(
            ApiError::permission_denied(table.name, true).details(format!(
                "{who} may not write column {k:?} of {}",
                table.name
            )),
        ),
        None => Ok(()),
    }
}

/// `ON CONFLICT DO UPDATE` (PostgREST's `resolution=merge-duplicates`)
/// needs, as in PostgreSQL, the UPDATE grant on the table and on every
/// column it sets. Without this check the store's merge overwrote whatever
/// row the conflict target met, another team's included. Every table a
/// gateway may insert into requires `team_id`, which no gateway may update,
/// so a gateway's merge is always refused and the update policy (`USING`)
/// on the conflicting row never has to be consulted.
pub fn check_merge(principal: &Principal, table: &Table, row: &Row) -> Result<(), ApiError> {
    if let Principal::User { .. } = principal {
        // The merge would overwrite whatever row the conflict meets, and a
        // person's insert check cannot see that row's team.
        return Err(ApiError::permission_denied(table.name, true)
            .details("upserts (resolution=merge-duplicates) are not granted to signed-in users")
            .hint("Insert the row, then update it with a filter on its id."));
    }
    let Principal::Gateway { .. } = principal else {
        return Ok(());
    };
    row_filters(principal, table, Verb::Insert)?;
    row_filters(principal, table, Verb::Update)?;
    check_columns(principal, table, Verb::Update, row)
}

fn str_field<'a>(row: &'a Row, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

async fn exists(
    store: &SharedStore,
    table: &'static Table,
    filters: Vec<Filter>,
) -> Result<bool, ApiError> {
    Ok(!store
        .select(SelectRequest {
            table,
            filters,
            order: vec![],
            limit: Some(1),
            offset: None,
            count: false,
        })
        .await?
        .rows
        .is_empty())
}

/// `WITH CHECK` for a person's insert: the row's team is one where they
/// hold the grant's role; a job's or subagent's gateway is a live gateway
/// of that team; who-did-it columns name them, not someone else.
async fn check_user_insert(
    user_id: &str,
    session_id: &str,
    table: &'static Table,
    row: &Row,
    store: &SharedStore,
) -> Result<(), ApiError> {
    let refuse = || ApiError::rls_violation(table.name);
    let grant = user_grant(table.name, Verb::Insert).ok_or_else(refuse)?;
    let team_id = str_field(row, "team_id").unwrap_or_default();
    if uuid::Uuid::parse_str(team_id).is_err() {
        return Err(refuse());
    }
    let member = Filter::TeamOfMember {
        column: "id",
        user_id: user_id.to_string(),
        session_id: session_id.to_string(),
        roles: grant.roles,
    };
    if !exists(
        store,
        &crate::schema::TEAMS,
        vec![Filter::eq("id", team_id), member],
    )
    .await?
    {
        return Err(refuse());
    }
    for who in ["created_by", "requested_by_user_id"] {
        if str_field(row, who).is_some_and(|u| u != user_id) {
            return Err(refuse());
        }
    }
    if matches!(table.name, "gateway_jobs" | "subagents") {
        let gateway_id = str_field(row, "gateway_id").unwrap_or_default();
        let live = Filter::Cond {
            column: "revoked_at".into(),
            op: Op::Is,
            operand: Operand::Is(crate::postgrest::IsValue::Null),
        };
        if uuid::Uuid::parse_str(gateway_id).is_err()
            || !exists(
                store,
                &crate::schema::TEAM_GATEWAYS,
                vec![
                    Filter::eq("id", gateway_id),
                    Filter::eq("team_id", team_id),
                    live,
                ],
            )
            .await?
        {
            return Err(refuse());
        }
    }
    Ok(())
}

/// The owners a batch insert's earlier rows were found to have: the
/// `(subagent, run)` pairs proved to be the gateway's. A batch of one run's
/// events (the gateway sends up to 100 rows at once) then costs two reads,
/// not two per row — on PostgreSQL each read is a transaction of its own,
/// and per-row reads made a live run's event batches fall behind under
/// load. Lives for one request: the check is as current as the per-row one
/// (all of them are read before the insert's transaction).
#[derive(Debug, Default)]
pub struct VerifiedOwners(std::collections::HashSet<(String, String)>);

/// `WITH CHECK` for an inserted row: it must belong to the gateway's team
/// and gateway, and (for runs and events) to a subagent of this gateway.
/// `verified` carries what earlier rows of the same request proved.
pub async fn check_insert(
    principal: &Principal,
    table: &'static Table,
    row: &Row,
    store: &SharedStore,
    verified: &mut VerifiedOwners,
) -> Result<(), ApiError> {
    if let Principal::User {
        user_id,
        session_id,
    } = principal
    {
        return check_user_insert(user_id, session_id, table, row, store).await;
    }
    let Principal::Gateway {
        gateway_id,
        team_id,
        ..
    } = principal
    else {
        return Ok(());
    };
    let own_team = str_field(row, "team_id") == Some(team_id.as_str());
    let gw = str_field(row, "gateway_id");
    let ok = match table.name {
        "gateway_events" | "subagent_runs" => own_team && gw == Some(gateway_id.as_str()),
        "subagent_run_events" => own_team && gw.is_none_or(|g| g == gateway_id),
        _ => false,
    };
    if !ok {
        return Err(ApiError::rls_violation(table.name));
    }
    let subagent_ok = match table.name {
        "subagent_runs" | "subagent_run_events" => {
            let subagent_id = str_field(row, "subagent_id").unwrap_or_default();
            // A run row names no run to check (only its subagent).
            let run_id = match table.name {
                "subagent_run_events" => str_field(row, "run_id").unwrap_or_default(),
                _ => "",
            };
            let key = (subagent_id.to_string(), run_id.to_string());
            if verified.0.contains(&key) {
                return Ok(());
            }
            let mut filters = vec![
                Filter::eq("id", subagent_id),
                Filter::eq("gateway_id", gateway_id),
                Filter::eq("team_id", team_id),
            ];
            if subagent_id.is_empty() || uuid::Uuid::parse_str(subagent_id).is_err() {
                filters = vec![Filter::False];
            }
            let mut ok = exists(store, &crate::schema::SUBAGENTS, filters).await?;
            if ok && table.name == "subagent_run_events" {
                ok = uuid::Uuid::parse_str(run_id).is_ok()
                    && exists(
                        store,
                        &crate::schema::SUBAGENT_RUNS,
                        vec![
                            Filter::eq("id", run_id),
                            Filter::eq("subagent_id", subagent_id),
                        ],
                    )
                    .await?;
            }
            if ok {
                verified.0.insert(key);
            }
            ok
        }
        _ => true,
    };
    if subagent_ok {
        Ok(())
    } else {
        Err(ApiError::rls_violation(table.name))
    }
}

/// The per-row check run inside an update's transaction: `WITH CHECK` (the
/// row stays in the gateway's team and gateway) and, for jobs, the
/// transition guard of spec §16.4.
pub fn update_guard(principal: &Principal, table: &'static Table) -> Option<UpdateGuard> {
    let Principal::Gateway {
        gateway_id,
        team_id,
        ..
    } = principal
    else {
        return None;
    };
    let (gateway_id, team_id) = (gateway_id.clone(), team_id.clone());
    Some(Arc::new(move |old: &Row, new: &Row| {
        if str_field(new, "team_id") != Some(team_id.as_str()) {
            return Err(ApiError::rls_violation(table.name).into());
        }
        if matches!(table.name, "gateway_jobs" | "subagents")
            && str_field(new, "gateway_id") != Some(gateway_id.as_str())
        {
            return Err(ApiError::rls_violation(table.name).into());
        }
        if table.name == "gateway_jobs" {
            check_job_transition(old, new, &gateway_id)?;
        }
        Ok(())
    }))
}

/// Spec §16.4, decided by the protocol crate's guard: identity fields are
/// immutable, the job stays this gateway's, and the status moves only
/// queued → running → completed | failed | cancelled.
fn check_job_transition(old: &Row, new: &Row, gateway_id: &str) -> Result<(), ApiError> {
    use panorama_protocol::rows::GatewayJobRow;
    let decode = |row: &Row| {
        serde_json::from_value::<GatewayJobRow>(Value::Object(row.clone()))
            .map_err(|e| ApiError::internal(format!("stored job row does not decode: {e}")))
    };
    panorama_protocol::guard::check_gateway_job_transition(&decode(old)?, &decode(new)?, gateway_id)
        .map_err(|e| {
            ApiError::pg(e.sqlstate(), e.to_string()).hint(
                "A gateway may move its own job only from queued to running, and from running to completed, failed or cancelled.",
            )
        })
}

/// Whether `principal` may see a change to `row` of `table` (realtime
/// delivery uses the select policy). Simple policies are decided in memory;
/// the ones that need a join ask the store, from the changed row's values.
/// A deleted row is shown only where the policy is decided in memory (a
/// person or a gateway whose grant needs a join no longer has a row to
/// be granted).
pub async fn row_visible(
    principal: &Principal,
    table: &'static Table,
    row: &Row,
    deleted: bool,
    store: &SharedStore,
) -> bool {
    let Ok(filters) = row_filters(principal, table, Verb::Select) else {
        return false;
    };
    let needs_store = filters.iter().any(|f| {
        !matches!(
            f,
            Filter::Cond {
                op: Op::Eq,
                operand: Operand::Value(_),
                ..
            }
        )
    });
    if deleted && needs_store {
        return false;
    }
    let mut row_bound = Vec::new();
    for f in filters {
        match f {
            Filter::Cond {
                column,
                op: Op::Eq,
                operand: Operand::Value(v),
            } => {
                if str_field(row, &column) != Some(v.as_str()) {
                    return false;
                }
            }
            // Membership and gateway ownership are decided from the
            // changed row's values, not by finding the row again: by the
            // time a socket checks a change the row may already be gone
            // or changed (several replicas, a busy pool).
            Filter::TeamOfMember {
                column,
                user_id,
                session_id,
                roles,
            } => {
                let Some(team) = str_field(row, column) else {
                    return false;
                };
                let member = vec![
                    Filter::eq("team_id", team),
                    Filter::TeamOfMember {
                        column: "team_id",
                        user_id,
                        session_id,
                        roles,
                    },
                ];
                if !exists(store, &crate::schema::TEAM_MEMBERS, member)
                    .await
                    .unwrap_or(false)
                {
                    return false;
                }
            }
            Filter::SubagentOfGateway(gateway_id) => {
                let Some(subagent) = str_field(row, "subagent_id") else {
                    return false;
                };
                let owned = vec![
                    Filter::eq("id", subagent),
                    Filter::eq("gateway_id", &gateway_id),
                ];
                if !exists(store, &crate::schema::SUBAGENTS, owned)
                    .await
                    .unwrap_or(false)
                {
                    return false;
                }
            }
            other => row_bound.push(other),
        }
    }
    if row_bound.is_empty() {
        return true;
    }
    let Some(pk) = str_field(row, table.primary_key) else {
        return false;
    };
    row_bound.push(Filter::eq(table.primary_key, pk));
    exists(store, table, row_bound).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use serde_json::json;

    fn gw() -> Principal {
        Principal::Gateway {
            gateway_id: "g1".into(),
            team_id: "t1".into(),
            user_id: "u1".into(),
            session_id: "s1".into(),
        }
    }

    #[test]
    fn anon_and_ungranted_tables_are_refused() {
        let e = row_filters(&Principal::Anon, &schema::GATEWAY_JOBS, Verb::Select).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (401, "42501"));
        for t in [
            &schema::TEAMS,
            &schema::GATEWAY_PAIRING_CODES,
            &schema::GATEWAY_EVENTS,
        ] {
            let e = row_filters(&gw(), t, Verb::Select).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (403, "42501"), "{}", t.name);
        }
        assert!(row_filters(&gw(), &schema::GATEWAY_JOBS, Verb::Delete).is_err());
        assert!(row_filters(&gw(), &schema::GATEWAY_JOBS, Verb::Insert).is_err());
        assert!(
            row_filters(&Principal::Service, &schema::TEAMS, Verb::Delete)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn gateways_may_write_only_granted_columns() {
        let ok = json!({"status": "running", "started_at": "x"});
        assert!(check_columns(
            &gw(),
            &schema::GATEWAY_JOBS,
            Verb::Update,
            ok.as_object().unwrap()
        )
        .is_ok());
        let bad = json!({"payload": {}});
        assert!(check_columns(
            &gw(),
            &schema::GATEWAY_JOBS,
            Verb::Update,
            bad.as_object().unwrap()
        )
        .is_err());
    }

    #[test]
    fn gateways_may_not_merge_into_any_table() {
        // A well-formed insert of each table a gateway may insert into:
        // the merge must still be refused (it would update the row the
        // conflict meets, whoever owns it).
        for t in schema::TABLES {
            let Some(cols) = gateway_writable(t.name, Verb::Insert) else {
                assert!(check_merge(&gw(), t, &Row::new()).is_err(), "{}", t.name);
                continue;
            };
            let row: Row = cols.iter().map(|c| (c.to_string(), json!("x"))).collect();
            assert!(check_columns(&gw(), t, Verb::Insert, &row).is_ok());
            let e = check_merge(&gw(), t, &row).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (403, "42501"), "{}", t.name);
        }
        let any = json!({"id": "x"});
        assert!(check_merge(
            &Principal::Service,
            &schema::SUBAGENT_RUNS,
            any.as_object().unwrap()
        )
        .is_ok());
    }

    #[test]
    fn update_guard_keeps_rows_in_their_gateway() {
        let g = update_guard(&gw(), &schema::GATEWAY_JOBS).unwrap();
        let job = |status: &str, gateway: &str| {
            json!({"id": "j1", "team_id": "t1", "gateway_id": gateway, "job_type": "diagnostic", "status": status,
                   "payload": {}, "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"})
            .as_object()
            .unwrap()
            .clone()
        };
        assert!(
            g(&job("queued", "g1"), &job("running", "g2")).is_err(),
            "handing the job to another gateway"
        );
        assert!(g(&job("queued", "g1"), &job("running", "g1")).is_ok());
        let e = g(&job("queued", "g1"), &job("completed", "g1")).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("42501", "illegal job transition queued -> completed")
        );
    }
}
