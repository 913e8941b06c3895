//! The store's logic, written once for both backends.
//!
//! A backend supplies only a [`Backend`]: a way to run a closure in one
//! database transaction over a [`Conn`] (execute a statement, read rows),
//! and the classification of its engine's errors into [`StoreError`].
//! Everything else — the generic REST reads and writes, pairing, refresh
//! rotation with reuse detection, the run-sequence allocator, heartbeats,
//! people — lives here, so SQLite and PostgreSQL answer alike.
//!
//! Concurrency: SQLite runs every transaction `BEGIN IMMEDIATE` on one
//! connection, so transactions never interleave. PostgreSQL runs them in
//! parallel (READ COMMITTED); every read that decides a write takes the
//! row lock first ([`Conn::dialect`]`.lock_rows()` = `FOR UPDATE`), so a
//! second transaction waits, then re-reads the row as committed: a pairing
//! code is redeemed once, a refresh token rotates once, the job transition
//! guard sees the row it updates.

use super::error::Refusal;
use super::sql::{order_clause, quote_ident, where_clause, Dialect, Params};
use super::{
    Conflict, DeleteRequest, InsertRequest, LogoutScope, NewInvitation, PairingGrant, PeopleError,
    PeopleStore, RefreshError, RefreshGrant, SelectRequest, SelectResult, Store, StoreError, TxFn,
    TxOps, UpdateGuard, UpdateRequest, UserRecord,
};
use crate::active_cache::Invalidation;
use crate::changes::{ChangeFeed, ChangeKind, Row, RowChange};
use crate::people::Role;
use crate::postgrest::Filter;
use crate::schema::{self, Column, Table};
use crate::values::{format_timestamp, now_timestamp, parse_timestamp, to_json, SqlValue};
use async_trait::async_trait;
use serde_json::Value;

/// One open transaction. SQL is written with `?1`-style placeholders;
/// a backend whose engine spells them otherwise rewrites them.
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[SqlValue], table: &str) -> Result<u64, StoreError>;
    /// Runs a query; every value comes back as a [`SqlValue`].
    fn query(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        table: &str,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError>;
}

/// What a transaction changed, published after it commits: its row
/// changes, and the revocations no row change carries (sessions ended by
/// sign-out or refresh-token reuse), for the active-principal cache.
#[derive(Debug, Default)]
pub struct Changes {
    pub rows: Vec<RowChange>,
    pub revoked: Vec<Invalidation>,
}

impl Changes {
    pub fn push(&mut self, change: RowChange) {
        self.rows.push(change);
    }

    pub fn revoke(&mut self, inv: Invalidation) {
        self.revoked.push(inv);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.revoked.is_empty()
    }
}

/// A database that runs closures in transactions.
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled
    /// back on `Err`. Returns `f`'s value and the changes it collected.
    fn transaction<T, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<(T, Changes), StoreError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn, &mut Changes) -> Result<T, StoreError> + Send + 'static;
}

/// The [`Store`] over any [`Backend`].
pub struct SqlStore<B> {
    pub(crate) backend: B,
    feed: ChangeFeed,
}

impl<B: Backend> SqlStore<B> {
    pub fn new(backend: B, feed: ChangeFeed) -> Self {
        SqlStore { backend, feed }
    }

    /// Runs `f` in one transaction, then publishes the changes it made.
    async fn tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn, &mut Changes) -> Result<T, StoreError> + Send + 'static,
    {
        let (out, changes) = self.backend.transaction(f).await?;
        for inv in &changes.revoked {
            self.feed.invalidate(inv);
        }
        for c in changes.rows {
            self.feed.publish(c);
        }
        Ok(out)
    }

    /// Runs a people transaction: a domain error (email taken, invalid
    /// invitation) rolls it back too, and is handed back as it was.
    async fn people_tx<T, F>(&self, f: F) -> Result<T, PeopleError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn, &mut Changes) -> Result<T, PeopleError> + Send + 'static,
    {
        let domain = std::sync::Arc::new(std::sync::Mutex::new(None));
        let slot = domain.clone();
        let out = self
            .tx(move |c, changes| match f(c, changes) {
                Ok(v) => Ok(v),
                Err(PeopleError::Storage(e)) => Err(e),
                Err(other) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(other);
                    Err(StoreError::backend("user_accounts", "rolled back"))
                }
            })
            .await;
        out.map_err(
            |e| match domain.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(domain_error) => domain_error,
                None => PeopleError::Storage(e),
            },
        )
    }
}

// ---------------------------------------------------------------------------
// Small helpers over Conn.

fn text(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Text(s) => Some(s.clone()),
        SqlValue::Int(n) => Some(n.to_string()),
        SqlValue::Bool(b) => Some(b.to_string()),
        SqlValue::Null => None,
    }
}

fn int(v: &SqlValue) -> i64 {
    match v {
        SqlValue::Int(n) => *n,
        SqlValue::Bool(b) => *b as i64,
        SqlValue::Text(s) => s.parse().unwrap_or(0),
        SqlValue::Null => 0,
    }
}

fn t(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn opt(s: Option<&str>) -> SqlValue {
    s.map(t).unwrap_or(SqlValue::Null)
}

/// The first row of a query, if any.
fn first(
    c: &mut dyn Conn,
    sql: &str,
    params: &[SqlValue],
    table: &str,
) -> Result<Option<Vec<SqlValue>>, StoreError> {
    Ok(c.query(sql, params, table)?.into_iter().next())
}

/// `SELECT COUNT(*) …` answered as a bool.
fn exists(
    c: &mut dyn Conn,
    sql: &str,
    params: &[SqlValue],
    table: &str,
) -> Result<bool, StoreError> {
    Ok(first(c, sql, params, table)?.is_some_and(|r| int(&r[0]) > 0))
}

/// The column that orders rows as they were inserted.
fn insertion_order(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "rowid",
        Dialect::Postgres => "\"_rowid\"",
    }
}

/// The suffix that locks the rows a deciding read returns.
fn lock_rows(d: Dialect) -> &'static str {
    match d {
        // BEGIN IMMEDIATE already serializes every transaction.
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE",
    }
}

/// The columns every generic read returns: never a write-only one.
fn column_list(table: &Table) -> String {
    table
        .readable_columns()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn query_rows(
    c: &mut dyn Conn,
    table: &Table,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<Row>, StoreError> {
    let raw = c.query(sql, params, table.name)?;
    Ok(raw
        .into_iter()
        .map(|values| {
            table
                .readable_columns()
                .zip(values)
                .map(|(col, v)| (col.name.to_string(), to_json(col, v)))
                .collect()
        })
        .collect())
}

/// Rows matching `filters`, in insertion order; locked when `lock`.
fn select_where(
    c: &mut dyn Conn,
    table: &Table,
    filters: &[Filter],
    lock: bool,
) -> Result<Vec<Row>, StoreError> {
    let d = c.dialect();
    let mut p = Params::new(d);
    let w = where_clause(table, filters, &mut p)?;
    let sql = format!(
        "SELECT {} FROM {} WHERE {w} ORDER BY {}{}",
        column_list(table),
        quote_ident(table.name),
        insertion_order(d),
        if lock { lock_rows(d) } else { "" }
    );
    query_rows(c, table, &sql, &p.values)
}

fn select_by_pks(c: &mut dyn Conn, table: &Table, pks: &[String]) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::with_capacity(pks.len());
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        column_list(table),
        quote_ident(table.name),
        quote_ident(table.primary_key)
    );
    for pk in pks {
        out.extend(query_rows(c, table, &sql, &[t(pk)])?);
    }
    Ok(out)
}

fn select_one(c: &mut dyn Conn, table: &Table, pk: &str) -> Result<Row, StoreError> {
    select_by_pks(c, table, &[pk.to_string()])?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::backend(table.name, format!("row {pk} vanished")))
}

fn pk_of(table: &Table, row: &Row) -> String {
    row.get(table.primary_key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn change(
    table: &'static Table,
    kind: ChangeKind,
    record: Row,
    old_record: Option<Row>,
) -> RowChange {
    RowChange {
        table: table.name,
        kind,
        record,
        old_record,
        commit_timestamp: now_timestamp(),
    }
}

/// Inserts one row (no conflict handling) and returns it as stored.
fn insert_row(
    c: &mut dyn Conn,
    table: &'static Table,
    values: &[(&'static Column, SqlValue)],
    changes: &mut Changes,
) -> Result<Row, StoreError> {
    let mut p = Params::new(c.dialect());
    let cols = values
        .iter()
        .map(|(c, _)| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let phs = values
        .iter()
        .map(|(_, v)| p.push(v.clone()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {} ({cols}) VALUES ({phs})",
        quote_ident(table.name)
    );
    c.execute(&sql, &p.values, table.name)?;
    let pk = values
        .iter()
        .find(|(c, _)| c.name == table.primary_key)
        .and_then(|(_, v)| text(v))
        .unwrap_or_default();
    let new = select_one(c, table, &pk)?;
    changes.push(change(table, ChangeKind::Insert, new.clone(), None));
    Ok(new)
}

/// Updates the rows `filters` match (locked first), each checked by
/// `guard`; returns them as stored.
fn update_rows(
    c: &mut dyn Conn,
    table: &'static Table,
    filters: &[Filter],
    set: &[(&'static Column, SqlValue)],
    guard: Option<&UpdateGuard>,
    expect_single: bool,
    changes: &mut Changes,
) -> Result<Vec<Row>, StoreError> {
    let old_rows = select_where(c, table, filters, true)?;
    if old_rows.is_empty() || set.is_empty() {
        if expect_single && old_rows.len() != 1 {
            return Err(StoreError::NotSingle(old_rows.len()));
        }
        return Ok(old_rows);
    }
    if let Some(guard) = guard {
        for old in &old_rows {
            let mut new = old.clone();
            for (col, v) in set {
                new.insert(col.name.to_string(), to_json(col, v.clone()));
            }
            guard(old, &new)?;
        }
    }
    let pks: Vec<String> = old_rows.iter().map(|r| pk_of(table, r)).collect();
    let mut p = Params::new(c.dialect());
    let sets = set
        .iter()
        .map(|(c, v)| format!("{} = {}", quote_ident(c.name), p.push(v.clone())))
        .collect::<Vec<_>>()
        .join(", ");
    let pk_ph = p.dialect.placeholder(p.values.len() + 1);
    let sql = format!(
        "UPDATE {} SET {sets} WHERE {} = {pk_ph}",
        quote_ident(table.name),
        quote_ident(table.primary_key),
    );
    for pk in &pks {
        let mut values = p.values.clone();
        values.push(t(pk));
        c.execute(&sql, &values, table.name)?;
    }
    let new_rows = select_by_pks(c, table, &pks)?;
    if expect_single && new_rows.len() != 1 {
        return Err(StoreError::NotSingle(new_rows.len()));
    }
    for (new, old) in new_rows.iter().zip(old_rows) {
        changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
    }
    Ok(new_rows)
}

/// `allocate_subagent_run_sequence` inside a transaction: max(existing,
/// counter) + 1, remembered in the counter. The counter's upsert takes its
/// row lock, so concurrent allocations for one subagent queue up.
fn allocate_sequence(c: &mut dyn Conn, subagent_id: &str) -> Result<i64, StoreError> {
    let max = first(
        c,
        "SELECT COALESCE(MAX(run_sequence), 0) FROM subagent_runs WHERE subagent_id = ?1",
        &[t(subagent_id)],
        "subagent_runs",
    )?
    .map(|r| int(&r[0]))
    .unwrap_or(0);
    let greatest = match c.dialect() {
        Dialect::Sqlite => "MAX",
        Dialect::Postgres => "GREATEST",
    };
    let sql = format!(
        "INSERT INTO subagent_run_sequence_counters AS c (subagent_id, last_sequence) VALUES (?1, ?2) \
         ON CONFLICT (subagent_id) DO UPDATE SET last_sequence = {greatest}(c.last_sequence, ?3) + 1 \
         RETURNING last_sequence"
    );
    let row = first(
        c,
        &sql,
        &[t(subagent_id), SqlValue::Int(max + 1), SqlValue::Int(max)],
        "subagent_run_sequence_counters",
    )?;
    Ok(row.map(|r| int(&r[0])).unwrap_or(max + 1))
}

/// [`TxOps`] over one open transaction; its row changes are published
/// when the transaction commits.
struct ConnTx<'a> {
    c: &'a mut dyn Conn,
    changes: &'a mut Changes,
}

impl TxOps for ConnTx<'_> {
    fn select(
        &mut self,
        table: &'static Table,
        filters: &[Filter],
    ) -> Result<Vec<Row>, StoreError> {
        select_where(self.c, table, filters, true)
    }

    fn insert(
        &mut self,
        table: &'static Table,
        values: &[(&'static Column, SqlValue)],
    ) -> Result<Row, StoreError> {
        insert_row(self.c, table, values, self.changes)
    }

    fn update(
        &mut self,
        table: &'static Table,
        filters: &[Filter],
        set: &[(&'static Column, SqlValue)],
    ) -> Result<Vec<Row>, StoreError> {
        update_rows(self.c, table, filters, set, None, false, self.changes)
    }

    fn allocate_run_sequence(&mut self, subagent_id: &str) -> Result<i64, StoreError> {
        allocate_sequence(self.c, subagent_id)
    }

    fn secret_values(
        &mut self,
        team_id: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for name in names {
            let found = first(
                self.c,
                "SELECT name, value FROM team_secrets WHERE team_id = ?1 AND name = ?2",
                &[t(team_id), t(name)],
                "team_secrets",
            )?;
            if let Some(r) = found {
                if let (Some(n), Some(v)) = (text(&r[0]), text(&r[1])) {
                    out.push((n, v));
                }
            }
        }
        Ok(out)
    }
}

/// Upserts and inserts of one request, row by row.
fn insert_request(
    c: &mut dyn Conn,
    req: &InsertRequest,
    changes: &mut Changes,
) -> Result<Vec<Row>, StoreError> {
    let table = req.table;
    let mut out = Vec::new();
    for values in &req.rows {
        let conflict_cols = match &req.conflict {
            Conflict::Fail => None,
            Conflict::Merge { on: c, .. } | Conflict::Ignore(c) => Some(c),
        };
        let existing = match conflict_cols {
            Some(cols) => {
                let mut p = Params::new(c.dialect());
                let mut conds = Vec::new();
                for col in cols {
                    let v = values
                        .iter()
                        .find(|(c, _)| c.name == col)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| Refusal::unknown_column(table.name, col))?;
                    conds.push(format!("{} = {}", quote_ident(col), p.push(v)));
                }
                let sql = format!(
                    "SELECT {} FROM {} WHERE {}{}",
                    column_list(table),
                    quote_ident(table.name),
                    conds.join(" AND "),
                    lock_rows(c.dialect())
                );
                query_rows(c, table, &sql, &p.values)?.into_iter().next()
            }
            None => None,
        };
        match (existing, &req.conflict) {
            (Some(_), Conflict::Ignore(_)) => continue,
            (Some(old), Conflict::Merge { set, .. }) => {
                // Merge: the values the request named overwrite the row;
                // the primary key and creation time stay, and so does
                // every column the request left out.
                let mut p = Params::new(c.dialect());
                let sets = values
                    .iter()
                    .filter(|(c, _)| c.name != table.primary_key && c.name != "created_at")
                    .filter(|(c, _)| set.iter().any(|s| s == c.name))
                    .map(|(c, v)| format!("{} = {}", quote_ident(c.name), p.push(v.clone())))
                    .collect::<Vec<_>>()
                    .join(", ");
                let pk = pk_of(table, &old);
                if sets.is_empty() {
                    // Nothing but the key was sent: PostgreSQL's `DO
                    // UPDATE` of no column returns the row as is.
                    out.push(old);
                    continue;
                }
                let ph = p.push(t(&pk));
                let sql = format!(
                    "UPDATE {} SET {sets} WHERE {} = {ph}",
                    quote_ident(table.name),
                    quote_ident(table.primary_key)
                );
                c.execute(&sql, &p.values, table.name)?;
                let new = select_one(c, table, &pk)?;
                changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
                out.push(new);
            }
            _ => out.push(insert_row(c, table, values, changes)?),
        }
    }
    if req.expect_single && out.len() != 1 {
        return Err(StoreError::NotSingle(out.len()));
    }
    Ok(out)
}

fn select_request(c: &mut dyn Conn, req: &SelectRequest) -> Result<SelectResult, StoreError> {
    let table = req.table;
    let d = c.dialect();
    let mut p = Params::new(d);
    let w = where_clause(table, &req.filters, &mut p)?;
    let mut order = order_clause(table, &req.order)?;
    if order.is_empty() && d == Dialect::Postgres {
        // SQLite's table scan answers in insertion order; PostgreSQL's
        // heap order changes with updates, so say it.
        order = format!(" ORDER BY {}", insertion_order(d));
    }
    let total = if req.count {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {w}", quote_ident(table.name));
        Some(
            first(c, &sql, &p.values, table.name)?
                .map(|r| int(&r[0]))
                .unwrap_or(0) as u64,
        )
    } else {
        None
    };
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {w}{order}",
        column_list(table),
        quote_ident(table.name)
    );
    match (req.limit, d) {
        (Some(l), _) => sql.push_str(&format!(" LIMIT {l}")),
        (None, Dialect::Sqlite) => sql.push_str(" LIMIT -1"),
        (None, Dialect::Postgres) => {}
    }
    sql.push_str(&format!(" OFFSET {}", req.offset.unwrap_or(0)));
    let rows = query_rows(c, table, &sql, &p.values)?;
    Ok(SelectResult { rows, total })
}

fn delete_request(
    c: &mut dyn Conn,
    req: &DeleteRequest,
    changes: &mut Changes,
) -> Result<Vec<Row>, StoreError> {
    let table = req.table;
    let rows = select_where(c, table, &req.filters, true)?;
    if req.expect_single && rows.len() != 1 {
        return Err(StoreError::NotSingle(rows.len()));
    }
    let sql = format!(
        "DELETE FROM {} WHERE {} = ?1",
        quote_ident(table.name),
        quote_ident(table.primary_key)
    );
    for row in &rows {
        c.execute(&sql, &[t(&pk_of(table, row))], table.name)?;
        changes.push(change(
            table,
            ChangeKind::Delete,
            row.clone(),
            Some(row.clone()),
        ));
    }
    Ok(rows)
}

fn pair(
    c: &mut dyn Conn,
    changes: &mut Changes,
    code: &str,
    device_name: Option<&str>,
    refresh_token_hash: &str,
) -> Result<PairingGrant, StoreError> {
    let sql = format!(
        "SELECT code, team_id, expires_at, used_at FROM gateway_pairing_codes WHERE upper(code) = upper(?1){}",
        lock_rows(c.dialect())
    );
    let found = first(c, &sql, &[t(code)], "gateway_pairing_codes")?;
    let valid = found.filter(|r| {
        matches!(r[3], SqlValue::Null)
            && text(&r[2])
                .and_then(|e| parse_timestamp(&e))
                .is_some_and(|e| e > chrono::Utc::now())
    });
    let Some(r) = valid else {
        return Err(Refusal::new("P0001", "Invalid or expired pairing code").into());
    };
    let (stored_code, team_id) = (
        text(&r[0]).unwrap_or_default(),
        text(&r[1]).unwrap_or_default(),
    );
    let now = now_timestamp();
    let gateway_id = uuid::Uuid::new_v4().to_string();
    let user_id = uuid::Uuid::new_v4().to_string();
    let session_id = uuid::Uuid::new_v4().to_string();
    let tg = "team_gateways";
    c.execute(
        "INSERT INTO team_gateways (id, team_id, device_name, status, capabilities, full_control_enabled, created_at, updated_at) \
         VALUES (?1, ?2, ?3, 'pending', '{}', ?4, ?5, ?5)",
        &[t(&gateway_id), t(&team_id), opt(device_name), SqlValue::Bool(false), t(&now)],
        tg,
    )?;
    c.execute(
        "UPDATE gateway_pairing_codes SET used_at = ?1, used_gateway_id = ?2 WHERE code = ?3",
        &[t(&now), t(&gateway_id), t(&stored_code)],
        "gateway_pairing_codes",
    )?;
    c.execute(
        "INSERT INTO auth_users (id, gateway_id, team_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        &[t(&user_id), t(&gateway_id), t(&team_id), t(&now)],
        "auth_users",
    )?;
    c.execute(
        "UPDATE team_gateways SET auth_user_id = ?1 WHERE id = ?2",
        &[t(&user_id), t(&gateway_id)],
        tg,
    )?;
    c.execute(
        "INSERT INTO auth_sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)",
        &[t(&session_id), t(&user_id), t(&now)],
        "auth_sessions",
    )?;
    c.execute(
        "INSERT INTO auth_refresh_tokens (token_hash, session_id, created_at) VALUES (?1, ?2, ?3)",
        &[t(refresh_token_hash), t(&session_id), t(&now)],
        "auth_refresh_tokens",
    )?;
    let row = select_one(c, &schema::TEAM_GATEWAYS, &gateway_id)?;
    changes.push(change(
        &schema::TEAM_GATEWAYS,
        ChangeKind::Insert,
        row,
        None,
    ));
    Ok(PairingGrant {
        gateway_id,
        team_id,
        user_id,
        session_id,
    })
}

/// The tables of one kind of session: its refresh tokens and the sessions
/// they belong to.
pub(crate) struct TokenFamily {
    tokens: &'static str,
    sessions: &'static str,
    /// What revoking one of these sessions tells the active cache.
    revoked: fn(String) -> Invalidation,
}

const GATEWAY_TOKENS: TokenFamily = TokenFamily {
    tokens: "auth_refresh_tokens",
    sessions: "auth_sessions",
    revoked: Invalidation::GatewaySession,
};

const USER_TOKENS: TokenFamily = TokenFamily {
    tokens: "user_refresh_tokens",
    sessions: "user_sessions",
    revoked: Invalidation::UserSession,
};

/// Refresh-token rotation with reuse detection, shared by gateway and user
/// sessions: `old_hash` is revoked and `new_hash` becomes the session's
/// active token. `identity` answers who the session stands for, or `None`
/// when the session (or what it belongs to) is gone. A token revoked more
/// than `reuse_interval_secs` ago is a replay: the whole session is
/// revoked. The session row is locked first, so rotations of one family
/// run one after another even on several hub replicas.
fn rotate_in_family<T>(
    c: &mut dyn Conn,
    changes: &mut Changes,
    family: &TokenFamily,
    old_hash: &str,
    new_hash: &str,
    reuse_interval_secs: i64,
    identity: impl FnOnce(&mut dyn Conn, &str) -> Result<Option<T>, StoreError>,
) -> Result<Result<T, RefreshError>, StoreError> {
    let found = first(
        c,
        &format!(
            "SELECT session_id FROM {} WHERE token_hash = ?1",
            family.tokens
        ),
        &[t(old_hash)],
        family.tokens,
    )?;
    let Some(session_id) = found.and_then(|r| text(&r[0])) else {
        return Ok(Err(RefreshError::NotFound));
    };
    let lock = lock_rows(c.dialect());
    first(
        c,
        &format!("SELECT id FROM {} WHERE id = ?1{lock}", family.sessions),
        &[t(&session_id)],
        family.sessions,
    )?;
    // Read the token again under the session's lock: a rotation that
    // committed while we waited has revoked it.
    let revoked_at = first(
        c,
        &format!(
            "SELECT revoked_at FROM {} WHERE token_hash = ?1",
            family.tokens
        ),
        &[t(old_hash)],
        family.tokens,
    )?
    .and_then(|r| text(&r[0]));
    let Some(who) = identity(c, &session_id)? else {
        return Ok(Err(RefreshError::SessionGone));
    };
    let now = chrono::Utc::now();
    if let Some(revoked) = revoked_at {
        let within_grace = parse_timestamp(&revoked)
            .is_some_and(|t| (now - t).num_seconds() < reuse_interval_secs);
        if !within_grace {
            // Reuse of an old token: treat the family as stolen.
            c.execute(
                &format!(
                    "UPDATE {} SET revoked_at = ?1 WHERE id = ?2",
                    family.sessions
                ),
                &[t(&format_timestamp(now)), t(&session_id)],
                family.sessions,
            )?;
            changes.revoke((family.revoked)(session_id));
            return Ok(Err(RefreshError::AlreadyUsed));
        }
    }
    let now_s = format_timestamp(now);
    c.execute(
        &format!(
            "UPDATE {} SET revoked_at = ?1 WHERE session_id = ?2 AND revoked_at IS NULL",
            family.tokens
        ),
        &[t(&now_s), t(&session_id)],
        family.tokens,
    )?;
    c.execute(
        &format!(
            "INSERT INTO {} (token_hash, session_id, parent_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            family.tokens
        ),
        &[t(new_hash), t(&session_id), t(old_hash), t(&now_s)],
        family.tokens,
    )?;
    Ok(Ok(who))
}

/// Refresh outcomes that must not roll back: reuse detection revokes the
/// session *and* answers with an error.
fn commit_refresh<T>(r: Result<Result<T, RefreshError>, StoreError>) -> Result<T, RefreshError> {
    match r {
        Ok(outcome) => outcome,
        Err(_) => Err(RefreshError::SessionGone),
    }
}

fn heartbeat(
    c: &mut dyn Conn,
    changes: &mut Changes,
    gateway_id: &str,
    team_id: &str,
    status: &str,
    capabilities: &str,
    device_name: Option<&str>,
) -> Result<(), StoreError> {
    let table = &schema::TEAM_GATEWAYS;
    let filters = vec![
        Filter::eq("id", gateway_id),
        Filter::eq("team_id", team_id),
        Filter::Cond {
            column: "revoked_at".into(),
            op: crate::postgrest::Op::Is,
            operand: crate::postgrest::Operand::Is(crate::postgrest::IsValue::Null),
        },
    ];
    let Some(old) = select_where(c, table, &filters, true)?.into_iter().next() else {
        return Err(Refusal::new("42501", "gateway not found or revoked").into());
    };
    let now = now_timestamp();
    let was_ready = old.get("status").and_then(Value::as_str) == Some("ready")
        && !old.get("ready_at").is_none_or(Value::is_null);
    let ready_at = if status == "ready" && !was_ready {
        Some(now.clone())
    } else {
        old.get("ready_at")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    c.execute(
        "UPDATE team_gateways SET status = ?1, capabilities = ?2, device_name = COALESCE(?3, device_name), \
         last_seen_at = ?4, ready_at = ?5, updated_at = ?4 WHERE id = ?6",
        &[
            t(status),
            t(capabilities),
            opt(device_name),
            t(&now),
            opt(ready_at.as_deref()),
            t(gateway_id),
        ],
        table.name,
    )?;
    let new = select_one(c, table, gateway_id)?;
    changes.push(change(table, ChangeKind::Update, new, Some(old)));
    Ok(())
}

/// One sweep of jobs left running on lost gateways (see
/// [`Store::sweep_lost_gateways`]).
fn sweep(
    c: &mut dyn Conn,
    changes: &mut Changes,
    stale_before: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let lock = match c.dialect() {
        Dialect::Sqlite => "",
        // Another replica sweeping the same job holds its lock: leave it.
        Dialect::Postgres => " FOR UPDATE OF j SKIP LOCKED",
    };
    let sql = format!(
        "SELECT j.id FROM gateway_jobs j JOIN team_gateways g ON g.id = j.gateway_id \
         WHERE j.status = 'running' AND (g.last_seen_at IS NULL OR g.last_seen_at < ?1) \
         ORDER BY j.created_at LIMIT {limit}{lock}"
    );
    let ids: Vec<String> = c
        .query(&sql, &[t(stale_before)], "gateway_jobs")?
        .iter()
        .filter_map(|r| text(&r[0]))
        .collect();
    let now = now_timestamp();
    let col = |table: &Table, name: &str| {
        table
            .column(name)
            .ok_or_else(|| StoreError::backend(table.name, format!("no column {name}")))
    };
    let mut swept = Vec::new();
    for id in ids {
        let jobs = &schema::GATEWAY_JOBS;
        let failed = update_rows(
            c,
            jobs,
            &[Filter::eq("id", &id), Filter::eq("status", "running")],
            &[
                (col(jobs, "status")?, t("failed")),
                (col(jobs, "error")?, t(super::LOST_GATEWAY_MESSAGE)),
                (col(jobs, "completed_at")?, t(&now)),
                (col(jobs, "updated_at")?, t(&now)),
            ],
            None,
            false,
            changes,
        )?;
        let Some(job) = failed.into_iter().next() else {
            continue;
        };
        swept.push(id);
        let payload = job.get("payload").cloned().unwrap_or(Value::Null);
        let run_filter = match (
            payload.get("run_id").and_then(Value::as_str),
            payload.get("subagent_id").and_then(Value::as_str),
        ) {
            (Some(run), _) => Filter::eq("id", run),
            (None, Some(subagent)) => Filter::eq("subagent_id", subagent),
            (None, None) => continue,
        };
        let runs_table = &schema::SUBAGENT_RUNS;
        let runs = select_where(
            c,
            runs_table,
            &[run_filter, Filter::eq("status", "running")],
            true,
        )?;
        for run in runs {
            let field = |k: &str| run.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(run_id), Some(subagent_id), Some(team_id)) =
                (field("id"), field("subagent_id"), field("team_id"))
            else {
                continue;
            };
            let next = first(
                c,
                "SELECT COALESCE(MAX(sequence), -1) + 1 FROM subagent_run_events WHERE run_id = ?1",
                &[t(&run_id)],
                "subagent_run_events",
            )?
            .map(|r| int(&r[0]))
            .unwrap_or(0);
            let events = &schema::SUBAGENT_RUN_EVENTS;
            insert_row(
                c,
                events,
                &[
                    (col(events, "id")?, t(&uuid::Uuid::new_v4().to_string())),
                    (col(events, "run_id")?, t(&run_id)),
                    (col(events, "subagent_id")?, t(&subagent_id)),
                    (col(events, "team_id")?, t(&team_id)),
                    (
                        col(events, "gateway_id")?,
                        opt(field("gateway_id").as_deref()),
                    ),
                    (col(events, "sequence")?, SqlValue::Int(next)),
                    (col(events, "event_type")?, t("run_failed")),
                    (
                        col(events, "payload")?,
                        t(&serde_json::json!({
                            "reason": super::LOST_GATEWAY_MESSAGE,
                            "source": super::LOST_GATEWAY_EVENT_SOURCE,
                        })
                        .to_string()),
                    ),
                    (col(events, "created_at")?, t(&now)),
                ],
                changes,
            )?;
            let terminal =
                |table: &'static Table| -> Result<Vec<(&'static Column, SqlValue)>, StoreError> {
                    Ok(vec![
                        (col(table, "status")?, t("failed")),
                        (col(table, "error")?, t(super::LOST_GATEWAY_MESSAGE)),
                        (col(table, "completed_at")?, t(&now)),
                        (col(table, "updated_at")?, t(&now)),
                    ])
                };
            update_rows(
                c,
                runs_table,
                &[Filter::eq("id", &run_id)],
                &terminal(runs_table)?,
                None,
                false,
                changes,
            )?;
            // Release the subagent so that its next run can start.
            let subagents = &schema::SUBAGENTS;
            update_rows(
                c,
                subagents,
                &[
                    Filter::eq("id", &subagent_id),
                    Filter::Cond {
                        column: "status".into(),
                        op: crate::postgrest::Op::In,
                        operand: crate::postgrest::Operand::List(vec![
                            Some("running".into()),
                            Some("queued".into()),
                        ]),
                    },
                ],
                &terminal(subagents)?,
                None,
                false,
                changes,
            )?;
        }
    }
    Ok(swept)
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.tx(|c, _| {
            Ok(c.query(
                "SELECT status, COUNT(*) FROM gateway_jobs GROUP BY status ORDER BY status",
                &[],
                "gateway_jobs",
            )?
            .iter()
            .map(|r| (text(&r[0]).unwrap_or_default(), int(&r[1])))
            .collect())
        })
        .await
    }

    async fn sweep_lost_gateways(
        &self,
        stale_before: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let stale_before = stale_before.to_string();
        self.tx(move |c, changes| sweep(c, changes, &stale_before, limit))
            .await
    }

    async fn select(&self, req: SelectRequest) -> Result<SelectResult, StoreError> {
        self.tx(move |c, _| select_request(c, &req)).await
    }

    async fn insert(&self, req: InsertRequest) -> Result<Vec<Row>, StoreError> {
        self.tx(move |c, changes| insert_request(c, &req, changes))
            .await
    }

    async fn update(&self, req: UpdateRequest) -> Result<Vec<Row>, StoreError> {
        self.tx(move |c, changes| {
            update_rows(
                c,
                req.table,
                &req.filters,
                &req.set,
                req.guard.as_ref(),
                req.expect_single,
                changes,
            )
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<Vec<Row>, StoreError> {
        self.tx(move |c, changes| delete_request(c, &req, changes))
            .await
    }

    async fn allocate_run_sequence(&self, subagent_id: &str) -> Result<i64, StoreError> {
        let subagent_id = subagent_id.to_string();
        self.tx(move |c, _| allocate_sequence(c, &subagent_id))
            .await
    }

    async fn atomic(&self, f: TxFn) -> Result<Value, StoreError> {
        self.tx(move |c, changes| f(&mut ConnTx { c, changes }))
            .await
    }

    async fn pair_gateway(
        &self,
        code: &str,
        device_name: Option<&str>,
        refresh_token_hash: &str,
    ) -> Result<PairingGrant, StoreError> {
        let code = code.trim().to_string();
        let device_name = device_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let refresh_token_hash = refresh_token_hash.to_string();
        self.tx(move |c, changes| {
            pair(
                c,
                changes,
                &code,
                device_name.as_deref(),
                &refresh_token_hash,
            )
        })
        .await
    }

    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<RefreshGrant, RefreshError> {
        let (old_hash, new_hash) = (old_hash.to_string(), new_hash.to_string());
        let outcome = self
            .tx(move |c, changes| {
                rotate_in_family(
                    c,
                    changes,
                    &GATEWAY_TOKENS,
                    &old_hash,
                    &new_hash,
                    reuse_interval_secs,
                    |c, session_id| {
                        let found = first(
                            c,
                            "SELECT u.id, u.gateway_id, u.team_id, s.revoked_at, g.revoked_at FROM auth_sessions s \
                             JOIN auth_users u ON u.id = s.user_id JOIN team_gateways g ON g.id = u.gateway_id \
                             WHERE s.id = ?1",
                            &[t(session_id)],
                            "auth_sessions",
                        )?;
                        Ok(found.and_then(|r| {
                            let live = matches!(r[3], SqlValue::Null) && matches!(r[4], SqlValue::Null);
                            live.then(|| RefreshGrant {
                                user_id: text(&r[0]).unwrap_or_default(),
                                session_id: session_id.to_string(),
                                gateway_id: text(&r[1]).unwrap_or_default(),
                                team_id: text(&r[2]).unwrap_or_default(),
                            })
                        }))
                    },
                )
            })
            .await;
        commit_refresh(outcome)
    }

    async fn session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        let session_id = session_id.to_string();
        self.tx(move |c, _| {
            exists(
                c,
                "SELECT COUNT(*) FROM auth_sessions s JOIN auth_users u ON u.id = s.user_id \
                 JOIN team_gateways g ON g.id = u.gateway_id \
                 WHERE s.id = ?1 AND s.revoked_at IS NULL AND g.revoked_at IS NULL",
                &[t(&session_id)],
                "auth_sessions",
            )
        })
        .await
    }

    async fn gateway_active(
        &self,
        gateway_id: &str,
        team_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let (gateway_id, team_id, session_id) = (
            gateway_id.to_string(),
            team_id.to_string(),
            session_id.to_string(),
        );
        self.tx(move |c, _| {
            exists(
                c,
                "SELECT COUNT(*) FROM team_gateways WHERE id = ?1 AND team_id = ?2 AND revoked_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM auth_sessions WHERE id = ?3 AND revoked_at IS NOT NULL)",
                &[t(&gateway_id), t(&team_id), t(&session_id)],
                "team_gateways",
            )
        })
        .await
    }

    async fn record_heartbeat(
        &self,
        gateway_id: &str,
        team_id: &str,
        status: &str,
        capabilities: &Value,
        device_name: Option<&str>,
    ) -> Result<(), StoreError> {
        if !schema::GATEWAY_STATUSES.contains(&status) {
            return Err(Refusal::new("22023", format!("invalid status {status}")).into());
        }
        if !capabilities.is_object() {
            return Err(Refusal::new("22023", "capabilities must be an object").into());
        }
        let (gateway_id, team_id, status) = (
            gateway_id.to_string(),
            team_id.to_string(),
            status.to_string(),
        );
        let capabilities = capabilities.to_string();
        let device_name = device_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        self.tx(move |c, changes| {
            heartbeat(
                c,
                changes,
                &gateway_id,
                &team_id,
                &status,
                &capabilities,
                device_name.as_deref(),
            )
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// People.

const USER_COLUMNS: &str =
    "id, email, password_hash, user_metadata, created_at, updated_at, last_sign_in_at";

fn read_user(r: Vec<SqlValue>) -> UserRecord {
    let s = |i: usize| text(&r[i]).unwrap_or_default();
    UserRecord {
        id: s(0),
        email: s(1),
        password_hash: s(2),
        user_metadata: serde_json::from_str(&s(3))
            .unwrap_or_else(|_| Value::Object(Default::default())),
        created_at: s(4),
        updated_at: s(5),
        last_sign_in_at: text(&r[6]),
    }
}

fn user_where(c: &mut dyn Conn, clause: &str, arg: &str) -> Result<Option<UserRecord>, StoreError> {
    Ok(first(
        c,
        &format!("SELECT {USER_COLUMNS} FROM user_accounts WHERE {clause}"),
        &[t(arg)],
        "user_accounts",
    )?
    .map(read_user))
}

/// A write of `user_accounts`: a duplicate email is the domain's
/// `EmailTaken`, anything else a storage error.
fn email_write_error(e: StoreError) -> PeopleError {
    match e {
        StoreError::UniqueViolation { .. } => PeopleError::EmailTaken,
        other => PeopleError::Storage(other),
    }
}

/// Redeems an invitation: it must exist, be unused, unexpired and
/// addressed to `email`. Adds (or re-roles) the membership.
fn redeem(
    c: &mut dyn Conn,
    changes: &mut Changes,
    code_hash: &str,
    user_id: &str,
    email: &str,
) -> Result<Row, PeopleError> {
    let sql = format!(
        "SELECT id, team_id, email, role, accepted_at FROM team_invitations WHERE code_hash = ?1 AND expires_at > ?2{}",
        lock_rows(c.dialect())
    );
    let found = first(
        c,
        &sql,
        &[t(code_hash), t(&now_timestamp())],
        "team_invitations",
    )?;
    let Some(r) = found.filter(|r| matches!(r[4], SqlValue::Null)) else {
        return Err(PeopleError::InvalidInvitation);
    };
    let (inv_id, team_id, inv_email, role) = (
        text(&r[0]).unwrap_or_default(),
        text(&r[1]).unwrap_or_default(),
        text(&r[2]).unwrap_or_default(),
        text(&r[3]).unwrap_or_default(),
    );
    if inv_email != email {
        return Err(PeopleError::InvalidInvitation);
    }
    let now = now_timestamp();
    c.execute(
        "UPDATE team_invitations SET accepted_at = ?1, accepted_by = ?2 WHERE id = ?3",
        &[t(&now), t(user_id), t(&inv_id)],
        "team_invitations",
    )?;
    let existing = first(
        c,
        "SELECT id FROM team_members WHERE team_id = ?1 AND user_id = ?2",
        &[t(&team_id), t(user_id)],
        "team_members",
    )?
    .and_then(|r| text(&r[0]));
    let table = &schema::TEAM_MEMBERS;
    let row = match existing {
        Some(id) => {
            let old = select_one(c, table, &id)?;
            c.execute(
                "UPDATE team_members SET role = ?1, updated_at = ?2 WHERE id = ?3",
                &[t(&role), t(&now), t(&id)],
                table.name,
            )?;
            let new = select_one(c, table, &id)?;
            changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
            new
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            c.execute(
                "INSERT INTO team_members (id, team_id, user_id, email, role, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                &[t(&id), t(&team_id), t(user_id), t(email), t(&role), t(&now)],
                table.name,
            )?;
            let new = select_one(c, table, &id)?;
            changes.push(change(table, ChangeKind::Insert, new.clone(), None));
            new
        }
    };
    Ok(row)
}

#[async_trait]
impl<B: Backend> PeopleStore for SqlStore<B> {
    async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
        user_metadata: &Value,
        invitation_hash: Option<&str>,
    ) -> Result<UserRecord, PeopleError> {
        let (email, password_hash) = (email.to_string(), password_hash.to_string());
        let metadata = user_metadata.to_string();
        let invitation_hash = invitation_hash.map(str::to_string);
        self.people_tx(move |c, changes| {
            let id = uuid::Uuid::new_v4().to_string();
            let now = now_timestamp();
            c.execute(
                "INSERT INTO user_accounts (id, email, password_hash, user_metadata, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                &[t(&id), t(&email), t(&password_hash), t(&metadata), t(&now)],
                "user_accounts",
            )
            .map_err(email_write_error)?;
            if let Some(h) = &invitation_hash {
                redeem(c, changes, h, &id, &email)?;
            }
            user_where(c, "id = ?1", &id)?.ok_or(PeopleError::UserNotFound)
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let email = email.to_string();
        self.tx(move |c, _| user_where(c, "email = ?1", &email))
            .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let id = id.to_string();
        self.tx(move |c, _| user_where(c, "id = ?1", &id)).await
    }

    async fn update_user(
        &self,
        id: &str,
        email: Option<&str>,
        password_hash: Option<&str>,
        user_metadata: Option<&Value>,
    ) -> Result<UserRecord, PeopleError> {
        let id = id.to_string();
        let email = email.map(str::to_string);
        let password_hash = password_hash.map(str::to_string);
        let metadata = user_metadata.map(Value::to_string);
        self.people_tx(move |c, _| {
            c.execute(
                "UPDATE user_accounts SET email = COALESCE(?1, email), password_hash = COALESCE(?2, password_hash), \
                 user_metadata = COALESCE(?3, user_metadata), updated_at = ?4 WHERE id = ?5",
                &[
                    opt(email.as_deref()),
                    opt(password_hash.as_deref()),
                    opt(metadata.as_deref()),
                    t(&now_timestamp()),
                    t(&id),
                ],
                "user_accounts",
            )
            .map_err(email_write_error)?;
            if let Some(email) = &email {
                c.execute(
                    "UPDATE team_members SET email = ?1 WHERE user_id = ?2",
                    &[t(email), t(&id)],
                    "team_members",
                )?;
            }
            user_where(c, "id = ?1", &id)?.ok_or(PeopleError::UserNotFound)
        })
        .await
    }

    async fn start_user_session(
        &self,
        user_id: &str,
        refresh_hash: &str,
    ) -> Result<String, StoreError> {
        let (user_id, refresh_hash) = (user_id.to_string(), refresh_hash.to_string());
        self.tx(move |c, _| {
            let session_id = uuid::Uuid::new_v4().to_string();
            let now = now_timestamp();
            c.execute(
                "INSERT INTO user_sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)",
                &[t(&session_id), t(&user_id), t(&now)],
                "user_sessions",
            )?;
            c.execute(
                "INSERT INTO user_refresh_tokens (token_hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                &[t(&refresh_hash), t(&session_id), t(&now)],
                "user_refresh_tokens",
            )?;
            c.execute(
                "UPDATE user_accounts SET last_sign_in_at = ?1 WHERE id = ?2",
                &[t(&now), t(&user_id)],
                "user_accounts",
            )?;
            Ok(session_id)
        })
        .await
    }

    async fn rotate_user_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<(String, String), RefreshError> {
        let (old_hash, new_hash) = (old_hash.to_string(), new_hash.to_string());
        let outcome = self
            .tx(move |c, changes| {
                rotate_in_family(
                    c,
                    changes,
                    &USER_TOKENS,
                    &old_hash,
                    &new_hash,
                    reuse_interval_secs,
                    |c, session_id| {
                        Ok(first(
                            c,
                            "SELECT user_id FROM user_sessions WHERE id = ?1 AND revoked_at IS NULL",
                            &[t(session_id)],
                            "user_sessions",
                        )?
                        .and_then(|r| text(&r[0]))
                        .map(|u| (u, session_id.to_string())))
                    },
                )
            })
            .await;
        commit_refresh(outcome)
    }

    async fn user_session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        let session_id = session_id.to_string();
        self.tx(move |c, _| {
            exists(
                c,
                "SELECT COUNT(*) FROM user_sessions WHERE id = ?1 AND revoked_at IS NULL",
                &[t(&session_id)],
                "user_sessions",
            )
        })
        .await
    }

    async fn end_user_sessions(
        &self,
        user_id: &str,
        session_id: &str,
        scope: LogoutScope,
    ) -> Result<(), StoreError> {
        let (user_id, session_id) = (user_id.to_string(), session_id.to_string());
        self.tx(move |c, changes| {
            changes.revoke(match scope {
                LogoutScope::Local => Invalidation::UserSession(session_id.clone()),
                LogoutScope::Global | LogoutScope::Others => Invalidation::User(user_id.clone()),
            });
            let (which, args) = match scope {
                LogoutScope::Local => ("AND id = ?3", vec![t(&session_id)]),
                LogoutScope::Global => ("", vec![]),
                LogoutScope::Others => ("AND id <> ?3", vec![t(&session_id)]),
            };
            let mut params = vec![t(&now_timestamp()), t(&user_id)];
            params.extend(args);
            c.execute(
                &format!(
                    "UPDATE user_sessions SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL {which}"
                ),
                &params,
                "user_sessions",
            )
            .map(|_| ())
        })
        .await
    }

    async fn create_invitation(&self, inv: NewInvitation<'_>) -> Result<(), StoreError> {
        if parse_timestamp(inv.expires_at).is_none() {
            return Err(
                Refusal::new("22007", format!("invalid expiry {:?}", inv.expires_at)).into(),
            );
        }
        let params = vec![
            t(&uuid::Uuid::new_v4().to_string()),
            t(inv.team_id),
            t(inv.email),
            t(inv.role.as_str()),
            t(inv.code_hash),
            opt(inv.created_by),
            t(&now_timestamp()),
            t(inv.expires_at),
        ];
        self.tx(move |c, _| {
            c.execute(
                "INSERT INTO team_invitations (id, team_id, email, role, code_hash, created_by, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &params,
                "team_invitations",
            )
            .map(|_| ())
        })
        .await
    }

    async fn accept_invitation(&self, code_hash: &str, user_id: &str) -> Result<Row, PeopleError> {
        let (code_hash, user_id) = (code_hash.to_string(), user_id.to_string());
        self.people_tx(move |c, changes| {
            let user = user_where(c, "id = ?1", &user_id)?.ok_or(PeopleError::UserNotFound)?;
            redeem(c, changes, &code_hash, &user_id, &user.email)
        })
        .await
    }

    async fn member_role(&self, team_id: &str, user_id: &str) -> Result<Option<Role>, StoreError> {
        let (team_id, user_id) = (team_id.to_string(), user_id.to_string());
        self.tx(move |c, _| {
            Ok(first(
                c,
                "SELECT role FROM team_members WHERE team_id = ?1 AND user_id = ?2",
                &[t(&team_id), t(&user_id)],
                "team_members",
            )?
            .and_then(|r| text(&r[0]))
            .as_deref()
            .and_then(Role::parse))
        })
        .await
    }
}
