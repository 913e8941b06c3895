//! `/rest/v1`: tables and RPCs with PostgREST's request and response rules
//! (supabase-wire §2).

use super::{ensure_active, principal, State};
use crate::auth::Principal;
use crate::changes::Row;
use crate::error::ApiError;
use crate::policy::{self, Verb};
use crate::postgrest::{parse_query, Filter, Query};
use crate::schema::{self, Table};
use crate::store::{Conflict, DeleteRequest, InsertRequest, SelectRequest, UpdateRequest};
use crate::values::{prepare_insert, prepare_update, to_json};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

const OBJECT_MEDIA: &str = "application/vnd.pgrst.object+json";

/// The preferences of a request (`Prefer`, possibly several headers,
/// comma-separated).
#[derive(Debug, Default)]
struct Prefs {
    representation: bool,
    count: bool,
    merge_duplicates: bool,
    ignore_duplicates: bool,
    missing_default: bool,
}

impl Prefs {
    fn parse(headers: &HeaderMap) -> Prefs {
        let mut p = Prefs::default();
        for value in headers.get_all("prefer") {
            for token in value.to_str().unwrap_or_default().split(',').map(str::trim) {
                match token {
                    "return=representation" => p.representation = true,
                    "return=minimal" | "return=headers-only" => p.representation = false,
                    "count=exact" | "count=planned" | "count=estimated" => p.count = true,
                    "resolution=merge-duplicates" => p.merge_duplicates = true,
                    "resolution=ignore-duplicates" => p.ignore_duplicates = true,
                    "missing=default" => p.missing_default = true,
                    _ => {}
                }
            }
        }
        p
    }

    fn applied(&self) -> Option<String> {
        let mut out = Vec::new();
        if self.merge_duplicates {
            out.push("resolution=merge-duplicates");
        }
        if self.ignore_duplicates {
            out.push("resolution=ignore-duplicates");
        }
        if self.representation {
            out.push("return=representation");
        }
        if self.count {
            out.push("count=exact");
        }
        (!out.is_empty()).then(|| out.join(", "))
    }
}

fn wants_object(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(OBJECT_MEDIA))
}

fn check_profile(headers: &HeaderMap, method: &Method) -> Result<(), ApiError> {
    let name = if matches!(*method, Method::GET | Method::HEAD) {
        "accept-profile"
    } else {
        "content-profile"
    };
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None | Some("public") => Ok(()),
        Some(other) => Err(
            ApiError::new(406, "PGRST106", format!("Invalid schema: {other}"))
                .hint("Only the following schemas are exposed: public"),
        ),
    }
}

fn lookup_table(name: &str) -> Result<&'static Table, ApiError> {
    schema::table(name).ok_or_else(|| ApiError::unknown_table(name))
}

/// Keeps the `select`ed columns, in `select` order.
fn project(
    table: &Table,
    rows: Vec<Row>,
    select: &Option<Vec<String>>,
) -> Result<Vec<Value>, ApiError> {
    let Some(cols) = select else {
        return Ok(rows.into_iter().map(Value::Object).collect());
    };
    for c in cols {
        crate::store::sql::readable_column(table, c)?;
    }
    Ok(rows
        .into_iter()
        .map(|mut row| {
            let mut out = Map::new();
            for c in cols {
                out.insert(c.clone(), row.remove(c).unwrap_or(Value::Null));
            }
            Value::Object(out)
        })
        .collect())
}

fn content_range(offset: u64, n: usize, total: Option<u64>) -> String {
    let total = total.map_or("*".to_string(), |t| t.to_string());
    if n == 0 {
        format!("*/{total}")
    } else {
        format!("{offset}-{}/{total}", offset + n as u64 - 1)
    }
}

/// A JSON response: an array, or a bare object when `.single()` asked.
fn rows_response(
    status: StatusCode,
    rows: Vec<Value>,
    single: bool,
    range: String,
    prefs: Option<String>,
    head: bool,
) -> Result<Response, ApiError> {
    let (body, media) = if single {
        if rows.len() != 1 {
            return Err(ApiError::not_single(rows.len()));
        }
        (rows.into_iter().next().unwrap_or(Value::Null), OBJECT_MEDIA)
    } else {
        (Value::Array(rows), "application/json")
    };
    let mut res = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body.to_string()))
    };
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{media}; charset=utf-8")).expect("static media type"),
    );
    insert_range(h, &range);
    if let Some(p) = prefs {
        if let Ok(v) = HeaderValue::from_str(&p) {
            h.insert("preference-applied", v);
        }
    }
    Ok(res)
}

fn insert_range(h: &mut HeaderMap, range: &str) {
    if let Ok(v) = HeaderValue::from_str(range) {
        h.insert(header::CONTENT_RANGE, v);
    }
}

fn empty_response(status: StatusCode, range: String) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    insert_range(res.headers_mut(), &range);
    res
}

/// Common preamble: who is asking, which table, what the query says.
async fn prepare(
    state: &State,
    table: &str,
    raw: &Option<String>,
    headers: &HeaderMap,
    method: &Method,
    verb: Verb,
) -> Result<(Principal, &'static Table, Query, Vec<Filter>), Response> {
    let p = principal(state, headers, None)?;
    let run = async {
        check_profile(headers, method)?;
        let table = lookup_table(table)?;
        let query = parse_query(raw.as_deref().unwrap_or(""))?;
        let policy = policy::row_filters(&p, table, verb)?;
        ensure_active(state, &p).await?;
        Ok::<_, ApiError>((table, query, policy))
    };
    match run.await {
        Ok((table, query, policy)) => Ok((p, table, query, policy)),
        Err(e) => Err(e.into_response()),
    }
}

macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        }
    };
}

pub async fn select(
    state: State,
    Path(table): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (_, table, query, policy) =
        try_resp!(prepare(&state, &table, &raw, &headers, &method, Verb::Select).await);
    let prefs = Prefs::parse(&headers);
    let mut filters = query.filters.clone();
    filters.extend(policy);
    let result = try_resp!(
        state
            .store
            .select(SelectRequest {
                table,
                filters,
                order: query.order.clone(),
                limit: query.limit,
                offset: query.offset,
                count: prefs.count,
            })
            .await
    );
    let offset = query.offset.unwrap_or(0);
    if let Some(total) = result.total {
        if offset > 0 && offset >= total && result.rows.is_empty() {
            let mut e = ApiError::new(416, "PGRST103", "Requested range not satisfiable")
                .details(format!(
                    "An offset of {offset} was requested, but there are only {total} rows."
                ))
                .into_response();
            insert_range(e.headers_mut(), &format!("*/{total}"));
            return e;
        }
    }
    let n = result.rows.len();
    let rows = try_resp!(project(table, result.rows, &query.select));
    let status = match result.total {
        Some(total) if (n as u64) < total => StatusCode::PARTIAL_CONTENT,
        _ => StatusCode::OK,
    };
    let range = content_range(offset, n, result.total);
    try_resp!(rows_response(
        status,
        rows,
        wants_object(&headers),
        range,
        None,
        method == Method::HEAD
    ))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_body("Empty or invalid json")
            .details("the request body is empty; send a JSON object or array"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body("Empty or invalid json").details(e.to_string()))
}

pub async fn insert(
    state: State,
    Path(table): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, table, query, _) =
        try_resp!(prepare(&state, &table, &raw, &headers, &method, Verb::Insert).await);
    let prefs = Prefs::parse(&headers);
    let body = try_resp!(parse_body(&body));
    let objects: Vec<Row> = match body {
        Value::Object(o) => vec![o],
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Object(o) => out.push(o),
                    _ => {
                        return ApiError::invalid_body("All object keys must match")
                            .details("a bulk insert is an array of JSON objects")
                            .into_response()
                    }
                }
            }
            out
        }
        _ => {
            return ApiError::invalid_body("Empty or invalid json")
                .details("send a JSON object or an array of objects")
                .into_response()
        }
    };
    let target = query
        .on_conflict
        .clone()
        .unwrap_or_else(|| vec![table.primary_key.to_string()]);
    if prefs.merge_duplicates || prefs.ignore_duplicates {
        try_resp!(check_conflict_target(table, &target));
    }
    let mut rows = Vec::with_capacity(objects.len());
    let mut verified = policy::VerifiedOwners::default();
    for obj in &objects {
        try_resp!(policy::check_columns(&p, table, Verb::Insert, obj));
        if prefs.merge_duplicates {
            try_resp!(policy::check_merge(&p, table, obj));
        }
        let prepared = try_resp!(prepare_insert(
            table,
            obj,
            query.columns.as_deref(),
            prefs.missing_default
        ));
        let as_json: Row = prepared
            .iter()
            .map(|(c, v)| (c.name.to_string(), to_json(c, v.clone())))
            .collect();
        try_resp!(policy::check_insert(&p, table, &as_json, &state.store, &mut verified).await);
        rows.push(prepared);
    }
    let conflict = if prefs.ignore_duplicates {
        Conflict::Ignore(target)
    } else if prefs.merge_duplicates {
        Conflict::Merge {
            on: target,
            set: merge_columns(table, &objects, query.columns.as_deref()),
        }
    } else {
        Conflict::Fail
    };
    let single = wants_object(&headers);
    let inserted = try_resp!(
        state
            .store
            .insert(InsertRequest {
                table,
                rows,
                conflict,
                expect_single: single,
            })
            .await
    );
    let n = inserted.len();
    let total = prefs.count.then_some(n as u64);
    let range = content_range(0, 0, total);
    if prefs.representation {
        let rows = try_resp!(project(table, inserted, &query.select));
        return try_resp!(rows_response(
            StatusCode::CREATED,
            rows,
            single,
            range,
            prefs.applied(),
            false
        ));
    }
    empty_response(StatusCode::CREATED, range)
}

/// Unique keys besides the primary key (control-plane spec §16.3).
const UNIQUE_KEYS: &[(&str, &[&str])] = &[
    ("team_gateways", &["auth_user_id"]),
    ("subagent_runs", &["subagent_id", "run_sequence"]),
    ("subagent_run_events", &["run_id", "sequence"]),
    ("team_secrets", &["team_id", "name"]),
];

/// The columns a merge-upsert overwrites on an existing row: those the
/// request named (the `columns=` list, else every key of the body objects,
/// like PostgREST's `DO UPDATE SET c = EXCLUDED.c`), plus `updated_at`
/// where the schema's update trigger would refresh it.
fn merge_columns(table: &Table, objects: &[Row], columns: Option<&[String]>) -> Vec<String> {
    let mut set: Vec<String> = match columns {
        Some(cols) => cols.to_vec(),
        None => {
            let mut keys: Vec<String> = Vec::new();
            for obj in objects {
                for key in obj.keys() {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            keys
        }
    };
    if table.touch_updated_at && !set.iter().any(|c| c == "updated_at") {
        set.push("updated_at".to_string());
    }
    set
}

/// `on_conflict` must name a unique key, as PostgreSQL requires of an
/// `ON CONFLICT` target (42P10). Any other column list let an upsert find
/// ("conflict with") an arbitrary row, another team's included, and so
/// probe for or overwrite it.
fn check_conflict_target(table: &Table, target: &[String]) -> Result<(), ApiError> {
    let mut wanted: Vec<&str> = target.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let unique = std::iter::once(&[table.primary_key][..])
        .chain(
            UNIQUE_KEYS
                .iter()
                .filter(|(t, _)| *t == table.name)
                .map(|(_, k)| *k),
        )
        .any(|key| {
            let mut key = key.to_vec();
            key.sort_unstable();
            key == wanted
        });
    if unique {
        Ok(())
    } else {
        Err(ApiError::pg(
            "42P10",
            "there is no unique or exclusion constraint matching the ON CONFLICT specification",
        )
        .hint(format!(
            "on_conflict must name the primary key of {} ({}) or one of its unique keys",
            table.name, table.primary_key
        )))
    }
}

pub async fn update(
    state: State,
    Path(table): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, table, query, policy) =
        try_resp!(prepare(&state, &table, &raw, &headers, &method, Verb::Update).await);
    let prefs = Prefs::parse(&headers);
    let Value::Object(patch) = try_resp!(parse_body(&body)) else {
        return ApiError::invalid_body("Empty or invalid json")
            .details("an update body is one JSON object")
            .into_response();
    };
    try_resp!(policy::check_columns(&p, table, Verb::Update, &patch));
    let set = try_resp!(prepare_update(table, &patch));
    let mut filters = query.filters.clone();
    filters.extend(policy);
    let single = wants_object(&headers);
    let updated = try_resp!(
        state
            .store
            .update(UpdateRequest {
                table,
                filters,
                set,
                guard: policy::update_guard(&p, table),
                expect_single: single,
            })
            .await
    );
    let n = updated.len();
    let range = content_range(0, n, prefs.count.then_some(n as u64));
    try_resp!(mutation_response(
        table,
        updated,
        &query.select,
        &prefs,
        single,
        range
    ))
}

pub async fn delete(
    state: State,
    Path(table): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (_, table, query, policy) =
        try_resp!(prepare(&state, &table, &raw, &headers, &method, Verb::Delete).await);
    let prefs = Prefs::parse(&headers);
    let mut filters = query.filters.clone();
    filters.extend(policy);
    let single = wants_object(&headers);
    let deleted = try_resp!(
        state
            .store
            .delete(DeleteRequest {
                table,
                filters,
                expect_single: single,
            })
            .await
    );
    let n = deleted.len();
    let range = content_range(0, 0, prefs.count.then_some(n as u64));
    try_resp!(mutation_response(
        table,
        deleted,
        &query.select,
        &prefs,
        single,
        range
    ))
}

/// The answer to an update or a delete: the affected rows projected by
/// `select` with `Prefer: return=representation`, else 204 with the range.
fn mutation_response(
    table: &Table,
    rows: Vec<Row>,
    select: &Option<Vec<String>>,
    prefs: &Prefs,
    single: bool,
    range: String,
) -> Result<Response, ApiError> {
    if !prefs.representation {
        return Ok(empty_response(StatusCode::NO_CONTENT, range));
    }
    let rows = project(table, rows, select)?;
    rows_response(StatusCode::OK, rows, single, range, prefs.applied(), false)
}

fn scalar_response(v: Value) -> Response {
    let mut res = Response::new(Body::from(v.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    insert_range(res.headers_mut(), "0-0/*");
    res
}

fn function_not_found(name: &str, args: &Map<String, Value>) -> ApiError {
    let keys: Vec<&str> = args.keys().map(String::as_str).collect();
    ApiError::new(404, "PGRST202", format!("Could not find the function public.{name}({}) in the schema cache", keys.join(", ")))
        .details(format!(
            "Searched for the function public.{name} with parameters {} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
            keys.join(", ")
        ))
        .hint("The hub provides allocate_subagent_run_sequence(p_subagent_id), gateway_record_heartbeat(p_status, p_capabilities, p_device_name), accept_subagent_run(p_subagent_id, p_run_id?, p_prompt?, p_prompted_at?, p_prompted_by_agent_id?, p_input?, p_metadata?, p_runner?, p_gateway_id?), request_subagent_run_cancellation(p_run_id, p_reason?), resolve_secret_placeholders_for_job(p_job_id), create_team_invitation(p_team_id, p_email, p_role[, p_ttl_minutes]) and accept_team_invitation(p_code).")
}

pub async fn rpc(
    state: State,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args = if body.is_empty() {
        Map::new()
    } else {
        match try_resp!(parse_body(&body)) {
            Value::Object(o) => o,
            _ => {
                return ApiError::invalid_body("Empty or invalid json")
                    .details("RPC arguments are one JSON object of named arguments")
                    .into_response()
            }
        }
    };
    call_rpc(state, name, method, headers, args).await
}

pub async fn rpc_get(
    state: State,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let args: Map<String, Value> = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    call_rpc(state, name, method, headers, args).await
}

async fn call_rpc(
    state: State,
    name: String,
    method: Method,
    headers: HeaderMap,
    args: Map<String, Value>,
) -> Response {
    let p = try_resp!(principal(&state, &headers, None));
    try_resp!(check_profile(&headers, &method));
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = args.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    };
    match (name.as_str(), keys.as_slice()) {
        ("allocate_subagent_run_sequence", ["p_subagent_id"]) => {
            if p == Principal::Anon {
                return ApiError::permission_denied(
                    "function allocate_subagent_run_sequence",
                    false,
                )
                .into_response();
            }
            try_resp!(ensure_active(&state, &p).await);
            let id = args["p_subagent_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if uuid::Uuid::parse_str(&id).is_err() {
                return ApiError::invalid_input(
                    "uuid",
                    args["p_subagent_id"].to_string().trim_matches('"'),
                )
                .into_response();
            }
            // The subagent must be the gateway's own, or of a team where
            // the person dispatches; the service key allocates for any.
            let own = match &p {
                Principal::Gateway {
                    gateway_id,
                    team_id,
                    ..
                } => Some(vec![
                    Filter::eq("gateway_id", gateway_id),
                    Filter::eq("team_id", team_id),
                ]),
                Principal::User {
                    user_id,
                    session_id,
                } => Some(vec![Filter::TeamOfMember {
                    column: "team_id",
                    user_id: user_id.clone(),
                    session_id: session_id.clone(),
                    roles: crate::people::DISPATCH_ROLES,
                }]),
                Principal::Service | Principal::Anon => None,
            };
            if let Some(mut filters) = own {
                filters.push(Filter::eq("id", &id));
                let found = try_resp!(
                    state
                        .store
                        .select(SelectRequest {
                            table: &schema::SUBAGENTS,
                            filters,
                            order: vec![],
                            limit: Some(1),
                            offset: None,
                            count: false,
                        })
                        .await
                );
                if found.rows.is_empty() {
                    return ApiError::pg("42501", "subagent not accessible").into_response();
                }
            }
            let n = try_resp!(state.store.allocate_run_sequence(&id).await);
            scalar_response(Value::from(n))
        }
        ("gateway_record_heartbeat", ["p_capabilities", "p_device_name", "p_status"]) => {
            let Principal::Gateway {
                gateway_id,
                team_id,
                ..
            } = &p
            else {
                // 42501 is 401 for the anon role, 403 for a JWT (wire §2.10).
                let mut e = ApiError::pg("42501", "gateway not found or revoked")
                    .hint("Call this function with a gateway access token.");
                if p == Principal::Anon {
                    e.status = 401;
                }
                return e.into_response();
            };
            let status = args["p_status"].as_str().unwrap_or_default();
            let device = args["p_device_name"].as_str();
            try_resp!(
                state
                    .store
                    .record_heartbeat(gateway_id, team_id, status, &args["p_capabilities"], device)
                    .await
            );
            scalar_response(serde_json::json!({"success": true, "egress_credential_renewal": null}))
        }
        ("accept_subagent_run", _) if crate::runs::AcceptRequest::from_args(&args).is_some() => {
            accept_subagent_run(&state, &p, &args).await
        }
        ("request_subagent_run_cancellation", ["p_reason", "p_run_id"] | ["p_run_id"]) => {
            cancel_unstarted_run(&state, &p, &args).await
        }
        ("resolve_secret_placeholders_for_job", ["p_job_id"]) => {
            resolve_secret_placeholders(&state, &p, &args["p_job_id"]).await
        }
        ("accept_team_invitation", ["p_code"]) => {
            let Principal::User { user_id, .. } = &p else {
                return ApiError::pg(
                    "42501",
                    "only a signed-in user can accept a team invitation",
                )
                .hint("Sign in (or sign up) first, then call accept_team_invitation(p_code).")
                .into_response();
            };
            try_resp!(ensure_active(&state, &p).await);
            let code = args["p_code"].as_str().unwrap_or_default().trim();
            match state
                .store
                .accept_invitation(&crate::store::hash_token(code), user_id)
                .await
            {
                Ok(row) => scalar_response(Value::Object(row)),
                Err(crate::store::PeopleError::Storage(e)) => e.into_response(),
                Err(e) => ApiError::pg("P0001", e.to_string())
                    .hint("Ask a team owner or admin for a new invitation code.")
                    .into_response(),
            }
        }
        ("create_team_invitation", ["p_email", "p_role", "p_team_id"])
        | ("create_team_invitation", ["p_email", "p_role", "p_team_id", "p_ttl_minutes"]) => {
            create_team_invitation(&state, &p, &args).await
        }
        _ => function_not_found(&name, &args).into_response(),
    }
}

/// 42501 for a caller a function is not for: 401 for the anon key, 403
/// for a token (wire §2.10).
fn function_refused(p: &Principal, function: &str, hint: &str) -> Response {
    let mut e = ApiError::pg(
        "42501",
        format!("permission denied for function {function}"),
    )
    .hint(hint);
    if *p == Principal::Anon {
        e.status = 401;
    }
    e.into_response()
}

/// Runs `f` in one store transaction and answers with its value.
async fn atomic_answer(state: &State, f: crate::store::TxFn) -> Response {
    match state.store.atomic(f).await {
        Ok(v) => scalar_response(v),
        Err(e) => e.into_response(),
    }
}

/// `accept_subagent_run` (spec §4.2, §16.10 later recipe): the control
/// plane's own bookkeeping, so the service role or a person who dispatches
/// for the subagent's team may call it (see
/// [`crate::policy::run_control_filters`]); a gateway accepting runs for
/// itself would defeat the acceptance check.
async fn accept_subagent_run(state: &State, p: &Principal, args: &Map<String, Value>) -> Response {
    let Some(scope) = crate::policy::run_control_filters(p) else {
        return function_refused(
            p,
            "accept_subagent_run",
            "Runs are accepted by the control plane (service key or a team member), never by a gateway.",
        );
    };
    try_resp!(ensure_active(state, p).await);
    let req = match crate::runs::AcceptRequest::from_args(args) {
        Some(Ok(req)) => req,
        Some(Err(e)) => return e.into_response(),
        None => return function_not_found("accept_subagent_run", args).into_response(),
    };
    let now = crate::values::now_timestamp();
    atomic_answer(
        state,
        Box::new(move |tx| {
            crate::policy::require_run_control(
                tx,
                &crate::schema::SUBAGENTS,
                &req.subagent_id,
                &scope,
                "accept_subagent_run",
            )?;
            Ok(crate::runs::accept(tx, &req, &now)?)
        }),
    )
    .await
}

/// `request_subagent_run_cancellation(p_run_id, p_reason?)`: the service
/// role, or a person who dispatches for the run's team, closes an accepted
/// run no gateway has started (see [`crate::runs::cancel_unstarted`]).
async fn cancel_unstarted_run(state: &State, p: &Principal, args: &Map<String, Value>) -> Response {
    let Some(scope) = crate::policy::run_control_filters(p) else {
        return function_refused(
            p,
            "request_subagent_run_cancellation",
            "Call it with the service key or as a team member; a gateway cancels through subagent_cancel jobs.",
        );
    };
    try_resp!(ensure_active(state, p).await);
    let Some(run_id) = args["p_run_id"]
        .as_str()
        .filter(|r| uuid::Uuid::parse_str(r).is_ok())
        .map(str::to_string)
    else {
        return ApiError::invalid_input("uuid", args["p_run_id"].to_string().trim_matches('"'))
            .into_response();
    };
    let reason = args
        .get("p_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    let now = crate::values::now_timestamp();
    atomic_answer(
        state,
        Box::new(move |tx| {
            crate::policy::require_run_control(
                tx,
                &crate::schema::SUBAGENT_RUNS,
                &run_id,
                &scope,
                "request_subagent_run_cancellation",
            )?;
            Ok(crate::runs::cancel_unstarted(
                tx,
                &run_id,
                reason.as_deref(),
                &now,
            )?)
        }),
    )
    .await
}

/// `resolve_secret_placeholders_for_job` (spec §4.2, §8.6): a gateway's
/// own `running` `shell_exec` job only; see [`crate::secrets`].
async fn resolve_secret_placeholders(state: &State, p: &Principal, job_id: &Value) -> Response {
    let Principal::Gateway {
        gateway_id,
        team_id,
        ..
    } = p
    else {
        return function_refused(
            p,
            "resolve_secret_placeholders_for_job",
            "Only the gateway running the shell_exec job may resolve its secrets.",
        );
    };
    try_resp!(ensure_active(state, p).await);
    let Some(job_id) = job_id
        .as_str()
        .filter(|j| uuid::Uuid::parse_str(j).is_ok())
        .map(str::to_string)
    else {
        return ApiError::invalid_input("uuid", job_id.to_string().trim_matches('"'))
            .into_response();
    };
    let (gateway_id, team_id) = (gateway_id.clone(), team_id.clone());
    atomic_answer(
        state,
        Box::new(move |tx| {
            Ok(crate::secrets::resolve_for_job(
                tx,
                &job_id,
                &gateway_id,
                &team_id,
            )?)
        }),
    )
    .await
}

/// Invitations last a week unless the caller says otherwise.
const INVITATION_TTL_MINUTES: i64 = 7 * 24 * 60;

/// `create_team_invitation(p_team_id, p_email, p_role[, p_ttl_minutes])`:
/// the service key, or an owner/admin of the team (who may not hand out a
/// role above their own). Returns `{code, team_id, email, role,
/// expires_at}`; the code is shown once and stored hashed.
async fn create_team_invitation(
    state: &State,
    p: &Principal,
    args: &Map<String, Value>,
) -> Response {
    use crate::people::{new_invitation_code, normalize_email, Role};
    let team_id = args["p_team_id"].as_str().unwrap_or_default();
    if uuid::Uuid::parse_str(team_id).is_err() {
        return ApiError::invalid_input("uuid", team_id).into_response();
    }
    let Some(role) = args["p_role"].as_str().and_then(Role::parse) else {
        return ApiError::pg("22023", format!("invalid role {}", args["p_role"]))
            .hint("Use one of owner, admin, member, viewer.")
            .into_response();
    };
    let email = match normalize_email(args["p_email"].as_str().unwrap_or_default()) {
        Ok(e) => e,
        Err(m) => return ApiError::pg("22023", m).into_response(),
    };
    let ttl = args
        .get("p_ttl_minutes")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(INVITATION_TTL_MINUTES);
    if ttl <= 0 {
        return ApiError::pg("22023", "p_ttl_minutes must be positive").into_response();
    }
    let created_by = match p {
        Principal::Service => None,
        Principal::User { user_id, .. } => {
            try_resp!(ensure_active(state, p).await);
            let mine = try_resp!(state.store.member_role(team_id, user_id).await);
            if !mine.is_some_and(|r| r.may_grant(role)) {
                return ApiError::pg(
                    "42501",
                    format!("you may not invite a {} to this team", role.as_str()),
                )
                .hint("Only owners and admins invite, and only owners invite owners.")
                .into_response();
            }
            Some(user_id.as_str())
        }
        _ => {
            return ApiError::pg(
                "42501",
                "only the service key or a team owner/admin can invite",
            )
            .into_response()
        }
    };
    let code = new_invitation_code();
    let expires_at =
        crate::values::format_timestamp(chrono::Utc::now() + chrono::Duration::minutes(ttl));
    try_resp!(
        state
            .store
            .create_invitation(crate::store::NewInvitation {
                team_id,
                email: &email,
                role,
                code_hash: &crate::store::hash_token(&code),
                expires_at: &expires_at,
                created_by,
            })
            .await
    );
    scalar_response(serde_json::json!({
        "code": code,
        "team_id": team_id,
        "email": email,
        "role": role.as_str(),
        "expires_at": expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_follow_postgrest() {
        assert_eq!(content_range(0, 0, None), "*/*");
        assert_eq!(content_range(0, 0, Some(0)), "*/0");
        assert_eq!(content_range(0, 3, None), "0-2/*");
        assert_eq!(content_range(5, 2, Some(10)), "5-6/10");
    }

    #[test]
    fn conflict_targets_must_be_unique_keys() {
        let ok = |t: &Table, cols: &[&str]| {
            let cols: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
            check_conflict_target(t, &cols).is_ok()
        };
        assert!(ok(&schema::GATEWAY_EVENTS, &["id"]));
        assert!(ok(&schema::SUBAGENT_RUNS, &["run_sequence", "subagent_id"]));
        assert!(!ok(&schema::GATEWAY_EVENTS, &["message"]));
        assert!(!ok(&schema::SUBAGENT_RUNS, &["subagent_id"]));
        let e = check_conflict_target(&schema::TEAMS, &["name".into()]).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "42P10"));
    }

    #[test]
    fn prefer_headers_may_be_combined_or_repeated() {
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            HeaderValue::from_static("resolution=merge-duplicates, return=representation"),
        );
        h.append("prefer", HeaderValue::from_static("count=exact"));
        let p = Prefs::parse(&h);
        assert!(p.representation && p.merge_duplicates && p.count && !p.ignore_duplicates);
    }
}
