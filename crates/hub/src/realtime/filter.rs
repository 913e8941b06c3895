//! `postgres_changes` bindings (supabase-wire §5.5, §5.6): parsing a join's
//! `{event, schema, table, filter}` entries and matching committed row
//! changes against them.
//!
//! Filter grammar (Realtime's): `col=op.value`, several conditions joined
//! with `,` are ANDed, each optionally negated (`col=not.eq.5`). Supported
//! operators: `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `in.(a,b)`, `like`,
//! `ilike`, `is`. Values may be double-quoted with `\` escapes, as
//! realtime-js's filter builder writes them. Operators are parsed by
//! [`crate::postgrest`]; values are compared with the column's type, like
//! SQL (a NULL column matches nothing but `is.null`).

use crate::changes::{ChangeKind, Row};
use crate::postgrest::{parse_pairs, Filter, IsValue, Op, Operand};
use crate::schema::{self, ColType, Column, Table};
use crate::values::{cast_text, SqlValue};
use serde_json::{json, Value};
use std::cmp::Ordering;

/// Binding ids are integers below 2^27, like real Realtime's.
pub const ID_SPACE: u32 = 1 << 27;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    All,
    Insert,
    Update,
    Delete,
}

impl EventKind {
    fn parse(s: &str) -> Option<EventKind> {
        match s.to_ascii_uppercase().as_str() {
            "*" => Some(EventKind::All),
            "INSERT" => Some(EventKind::Insert),
            "UPDATE" => Some(EventKind::Update),
            "DELETE" => Some(EventKind::Delete),
            _ => None,
        }
    }

    fn accepts(self, kind: ChangeKind) -> bool {
        matches!(
            (self, kind),
            (EventKind::All, _)
                | (EventKind::Insert, ChangeKind::Insert)
                | (EventKind::Update, ChangeKind::Update)
                | (EventKind::Delete, ChangeKind::Delete)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Cmp(CmpOp, String),
    In(Vec<Option<String>>),
    Is(IsValue),
    Like { pattern: String, ci: bool },
}

/// One condition of a binding's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    column: String,
    negated: bool,
    test: Test,
}

/// One `postgres_changes` entry of a join, with its server-assigned id.
#[derive(Debug, Clone)]
pub struct Binding {
    pub id: u32,
    pub event: EventKind,
    /// `None`: every table of the schema.
    pub table: Option<&'static Table>,
    pub conds: Vec<Cond>,
}

impl Binding {
    /// Parses one entry of `config.postgres_changes`. The error is a
    /// human-readable explanation.
    pub fn parse(entry: &Value, id: u32) -> Result<Binding, String> {
        let Some(obj) = entry.as_object() else {
            return Err(format!(
                "a postgres_changes entry must be an object, got {entry}"
            ));
        };
        let text = |key: &str| -> Result<Option<&str>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(format!("`{key}` must be a string, got {other}")),
            }
        };
        let event = match text("event")? {
            Some(e) => EventKind::parse(e)
                .ok_or_else(|| format!("unknown event {e:?}: use INSERT, UPDATE, DELETE or *"))?,
            None => return Err("missing `event` (INSERT, UPDATE, DELETE or *)".into()),
        };
        match text("schema")? {
            None | Some("public") | Some("*") => {}
            Some(other) => {
                return Err(format!(
                    "schema {other:?} is not published: the hub publishes the `public` schema only"
                ))
            }
        }
        let table = match text("table")? {
            None | Some("*") => None,
            Some(name) => Some(schema::table(name).ok_or_else(|| {
                format!(
                    "relation \"public.{name}\" does not exist; published tables: {}",
                    schema::TABLES
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?),
        };
        let conds = match text("filter")? {
            None => Vec::new(),
            Some(f) => parse_filter(f, table)
                .map_err(|why| format!("Error parsing `filter` params: {f:?}: {why}"))?,
        };
        Ok(Binding {
            id,
            event,
            table,
            conds,
        })
    }

    /// Whether a committed change on `table` matches this binding. The
    /// filter is tested on the new row (the deleted row for a delete).
    pub fn matches(&self, table: &Table, kind: ChangeKind, row: &Row) -> bool {
        self.table.is_none_or(|t| t.name == table.name)
            && self.event.accepts(kind)
            && self.conds.iter().all(|c| c.eval(table, row) == Some(true))
    }
}

impl Binding {
    /// The first plain `col=eq.value` condition, as the column and the
    /// value cast to its type: every row this binding matches holds exactly
    /// that value there, so realtime's dispatcher can index on it.
    pub fn eq_condition(&self) -> Option<(&str, SqlValue)> {
        let table = self.table?;
        self.conds.iter().find_map(|c| match (&c.test, c.negated) {
            (Test::Cmp(CmpOp::Eq, v), false) => {
                let col = table.column(&c.column)?;
                Some((c.column.as_str(), cast_text(col, v).ok()?))
            }
            _ => None,
        })
    }
}

/// A row's value in `column`, in the form [`Binding::eq_condition`] values
/// take (equal exactly when the condition would hold).
pub fn row_value(table: &Table, column: &str, row: &Row) -> Option<SqlValue> {
    sql_of_json(table.column(column)?, row.get(column)?)
}

/// A stable id for a binding entry (FNV-1a of its JSON, below 2^27),
/// moved past any id in `taken` so that ids are unique on a channel.
pub fn binding_id(entry: &Value, taken: &[u32]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in entry.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut id = h % ID_SPACE;
    while taken.contains(&id) {
        id = (id + 1) % ID_SPACE;
    }
    id
}

/// Splits a filter at top-level commas (outside quotes and parentheses).
fn split_conditions(filter: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in filter.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if !quoted && depth == 0 => {
                parts.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quoted value".into());
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&filter[start..]);
    Ok(parts)
}

/// `"a \"b\""` → `a "b"`; anything else unchanged.
fn unquote(value: &str) -> Result<String, String> {
    let Some(body) = value.strip_prefix('"') else {
        return Ok(value.to_string());
    };
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(format!("unexpected text after the quoted value {value}"))
                };
            }
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted value {value}"))
}

/// Parses a Realtime filter. With a known table, columns and values are
/// checked against it (unknown column, value of the wrong type).
pub fn parse_filter(filter: &str, table: Option<&Table>) -> Result<Vec<Cond>, String> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut conds = Vec::new();
    for part in split_conditions(filter)? {
        let Some((column, expr)) = part.split_once('=') else {
            return Err(format!("{part:?} is not of the form column=operator.value"));
        };
        let column = column.trim();
        if column.is_empty() {
            return Err(format!("{part:?} has no column name before '='"));
        }
        if matches!(
            column,
            "select" | "order" | "limit" | "offset" | "on_conflict" | "columns" | "or" | "and"
        ) && table.is_none_or(|t| t.column(column).is_none())
        {
            return Err(format!("{column:?} is not a filterable column"));
        }
        // Unquote a scalar value; `in.(…)` lists keep their own quoting.
        let (negated, rest) = match expr.strip_prefix("not.") {
            Some(r) => (true, r),
            None => (false, expr),
        };
        let expr = match rest.split_once('.') {
            Some((op, value)) if op != "in" => {
                format!(
                    "{}{op}.{}",
                    if negated { "not." } else { "" },
                    unquote(value)?
                )
            }
            _ => expr.to_string(),
        };
        let q = parse_pairs(&[(column.to_string(), expr)]).map_err(|e| match e.details {
            Some(d) => format!("{} ({d})", e.message),
            None => e.message,
        })?;
        let cond = match q.filters.as_slice() {
            [f] => Cond::from_filter(f),
            _ => None,
        }
        .ok_or_else(|| format!("{part:?} is not a single column condition"))?;
        if let Some(t) = table {
            cond.check(t)?;
        }
        conds.push(cond);
    }
    Ok(conds)
}

impl Cond {
    fn from_filter(f: &Filter) -> Option<Cond> {
        let (negated, f) = match f {
            Filter::Not(inner) => (true, inner.as_ref()),
            f => (false, f),
        };
        let Filter::Cond {
            column,
            op,
            operand,
        } = f
        else {
            return None;
        };
        let cmp = |c| match operand {
            Operand::Value(v) => Some(Test::Cmp(c, v.clone())),
            _ => None,
        };
        let test = match op {
            Op::Eq => cmp(CmpOp::Eq)?,
            Op::Neq => cmp(CmpOp::Neq)?,
            Op::Lt => cmp(CmpOp::Lt)?,
            Op::Lte => cmp(CmpOp::Lte)?,
            Op::Gt => cmp(CmpOp::Gt)?,
            Op::Gte => cmp(CmpOp::Gte)?,
            Op::In => match operand {
                Operand::List(items) => Test::In(items.clone()),
                _ => return None,
            },
            Op::Is => match operand {
                Operand::Is(v) => Test::Is(*v),
                _ => return None,
            },
            Op::Like | Op::Ilike => match operand {
                Operand::Value(v) => Test::Like {
                    pattern: v.clone(),
                    ci: *op == Op::Ilike,
                },
                _ => return None,
            },
        };
        Some(Cond {
            column: column.clone(),
            negated,
            test,
        })
    }

    /// Join-time validation against a known table.
    fn check(&self, table: &Table) -> Result<(), String> {
        let col = table.column(&self.column).ok_or_else(|| {
            format!(
                "column \"{}\" does not exist in table \"{}\"",
                self.column, table.name
            )
        })?;
        let cast = |v: &str| cast_text(col, v).map(|_| ()).map_err(|e| e.message);
        match &self.test {
            Test::Cmp(_, v) => cast(v),
            Test::In(items) => items.iter().flatten().try_for_each(|v| cast(v)),
            Test::Is(_) | Test::Like { .. } => Ok(()),
        }
    }

    /// SQL's three-valued result: `None` is NULL (unknown).
    fn eval(&self, table: &Table, row: &Row) -> Option<bool> {
        let col = table.column(&self.column)?;
        let lhs = sql_of_json(col, row.get(&self.column)?)?;
        let result = match &self.test {
            Test::Is(v) => Some(match v {
                IsValue::Null | IsValue::Unknown => lhs == SqlValue::Null,
                IsValue::True => lhs == SqlValue::Bool(true),
                IsValue::False => lhs == SqlValue::Bool(false),
            }),
            _ if lhs == SqlValue::Null => None,
            Test::Cmp(op, v) => {
                let ord = compare(&lhs, &cast_text(col, v).ok()?)?;
                Some(match op {
                    CmpOp::Eq => ord == Ordering::Equal,
                    CmpOp::Neq => ord != Ordering::Equal,
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Lte => ord != Ordering::Greater,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Gte => ord != Ordering::Less,
                })
            }
            Test::In(items) => {
                let mut saw_null = false;
                let mut found = false;
                for item in items {
                    match item {
                        None => saw_null = true,
                        Some(v) => {
                            if cast_text(col, v).ok().and_then(|r| compare(&lhs, &r))
                                == Some(Ordering::Equal)
                            {
                                found = true;
                                break;
                            }
                        }
                    }
                }
                if found {
                    Some(true)
                } else if saw_null {
                    None
                } else {
                    Some(false)
                }
            }
            Test::Like { pattern, ci } => {
                let text = match &lhs {
                    SqlValue::Text(s) => s.clone(),
                    SqlValue::Int(n) => n.to_string(),
                    SqlValue::Bool(b) => b.to_string(),
                    SqlValue::Null => return None,
                };
                let pattern = pattern.replace('*', "%");
                Some(if *ci {
                    like(&pattern.to_lowercase(), &text.to_lowercase())
                } else {
                    like(&pattern, &text)
                })
            }
        };
        if self.negated {
            result.map(|b| !b)
        } else {
            result
        }
    }
}

/// A row's JSON value in the form filter values are cast to, so that the
/// two compare like SQL values of the column's type.
fn sql_of_json(col: &Column, v: &Value) -> Option<SqlValue> {
    Some(match (col.ty, v) {
        (_, Value::Null) => SqlValue::Null,
        (ColType::Int, Value::Number(n)) => SqlValue::Int(
            n.as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))?,
        ),
        (ColType::Bool, Value::Bool(b)) => SqlValue::Bool(*b),
        (ColType::Json, v) => SqlValue::Text(v.to_string()),
        (ColType::Text, Value::String(s)) => SqlValue::Text(s.clone()),
        (ColType::Text, v) => SqlValue::Text(v.to_string()),
        (_, Value::String(s)) => cast_text(col, s).ok()?,
        _ => return None,
    })
}

fn compare(a: &SqlValue, b: &SqlValue) -> Option<Ordering> {
    match (a, b) {
        (SqlValue::Int(x), SqlValue::Int(y)) => Some(x.cmp(y)),
        (SqlValue::Text(x), SqlValue::Text(y)) => Some(x.cmp(y)),
        (SqlValue::Bool(x), SqlValue::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// SQL LIKE: `%` any run, `_` one character, `\\` escapes.
///
/// Greedy matching with a single backtrack point (the last `%`): O(p·t)
/// time and no recursion. The former recursive matcher was exponential in
/// the number of `%` and recursed once per pattern character, so a client's
/// filter could hang or overflow the stack of the realtime fan-out.
fn like(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '%' => Tok::Any,
            '_' => Tok::One,
            // A trailing backslash is a literal backslash.
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let t: Vec<char> = text.chars().collect();
    let (mut p, mut i) = (0, 0);
    // After the last `%` seen: where the pattern resumes, and the text
    // position that `%` currently extends to.
    let mut backtrack: Option<(usize, usize)> = None;
    while i < t.len() {
        match toks.get(p) {
            Some(Tok::Any) => {
                p += 1;
                backtrack = Some((p, i));
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Lit(c)) if *c == t[i] => {
                p += 1;
                i += 1;
            }
            _ => match backtrack {
                Some((resume, start)) => {
                    p = resume;
                    i = start + 1;
                    backtrack = Some((resume, start + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|tok| *tok == Tok::Any)
}

/// The PostgreSQL `typname` of a column type, as `columns[].type` carries it.
pub fn pg_typname(ty: ColType) -> &'static str {
    match ty {
        ColType::Uuid => "uuid",
        ColType::Text => "text",
        ColType::Int => "int4",
        ColType::Bool => "bool",
        ColType::Json => "jsonb",
        ColType::Timestamp => "timestamptz",
    }
}

/// `data.columns`: `[{name, type}]` in column order.
pub fn columns_json(table: &Table) -> Value {
    Value::Array(
        table
            .columns
            .iter()
            .map(|c| json!({"name": c.name, "type": pg_typname(c.ty)}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "0b6d2f9e-35a4-4a57-9d0b-2b1c6f0e1a01";
    const B: &str = "0b6d2f9e-35a4-4a57-9d0b-2b1c6f0e1a02";

    fn job(team: &str, status: &str, attempt: i64) -> Row {
        json!({
            "id": "9f0c3a64-8a8e-4e5e-9a0b-0d4c1f2e3a4b",
            "team_id": team,
            "gateway_id": null,
            "status": status,
            "attempt": attempt,
            "payload": {"k": 1},
            "error": null,
            "created_at": "2025-01-01T12:00:00.123456+00:00",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn binding(entry: Value) -> Binding {
        Binding::parse(&entry, 1).unwrap()
    }

    fn jobs(filter: &str) -> Binding {
        binding(
            json!({"event": "*", "schema": "public", "table": "gateway_jobs", "filter": filter}),
        )
    }

    fn hit(filter: &str, row: &Row) -> bool {
        jobs(filter).matches(&schema::GATEWAY_JOBS, ChangeKind::Insert, row)
    }

    #[test]
    fn eq_and_neq_compare_typed_values() {
        let r = job(A, "queued", 2);
        assert!(hit(&format!("team_id=eq.{A}"), &r));
        // UUIDs compare as UUIDs, not as text.
        assert!(hit(&format!("team_id=eq.{}", A.to_uppercase()), &r));
        assert!(!hit(&format!("team_id=eq.{B}"), &r));
        assert!(hit(&format!("team_id=neq.{B}"), &r));
        assert!(hit("status=eq.queued", &r));
        assert!(!hit("status=neq.queued", &r));
        assert!(hit("status=not.eq.running", &r));
    }

    #[test]
    fn ordering_operators() {
        let r = job(A, "queued", 2);
        assert!(hit("attempt=gt.1", &r));
        assert!(!hit("attempt=gt.2", &r));
        assert!(hit("attempt=gte.2", &r));
        assert!(hit("attempt=lt.10", &r)); // numeric, not text, comparison
        assert!(hit("attempt=lte.2", &r));
        assert!(!hit("attempt=lt.2", &r));
        assert!(hit("created_at=gt.2025-01-01T11:59:59Z", &r));
        assert!(hit("created_at=lt.2025-01-01 13:00:00+00", &r));
    }

    #[test]
    fn in_lists_quotes_like_and_is() {
        let r = job(A, "queued", 2);
        assert!(hit("status=in.(running,queued)", &r));
        assert!(!hit("status=in.(running,failed)", &r));
        assert!(hit("status=not.in.(running,failed)", &r));
        assert!(hit(&format!("team_id=in.(\"{B}\",\"{A}\")"), &r));
        assert!(hit("status=eq.\"queued\"", &r));
        assert!(hit("status=like.que*", &r));
        assert!(hit("status=ilike.QUE%", &r));
        assert!(!hit("status=like.QUE%", &r));
        assert!(hit("gateway_id=is.null", &r));
        assert!(!hit("gateway_id=not.is.null", &r));
        // NULL never equals anything, not even under not.
        assert!(!hit(&format!("gateway_id=eq.{A}"), &r));
        assert!(!hit(&format!("gateway_id=neq.{A}"), &r));
        assert!(!hit(&format!("gateway_id=not.eq.{A}"), &r));
    }

    #[test]
    fn conditions_joined_by_commas_are_anded() {
        let r = job(A, "queued", 2);
        assert!(hit(&format!("team_id=eq.{A},status=eq.queued"), &r));
        assert!(!hit(&format!("team_id=eq.{A},status=eq.running"), &r));
        assert!(hit(&format!("status=in.(a,queued),team_id=eq.{A}"), &r));
        let quoted = parse_filter(
            r#"status=eq."a,b",error=is.null"#,
            Some(&schema::GATEWAY_JOBS),
        )
        .unwrap();
        assert_eq!(quoted.len(), 2);
        assert_eq!(quoted[0].test, Test::Cmp(CmpOp::Eq, "a,b".into()));
    }

    #[test]
    fn event_and_table_must_match() {
        let r = job(A, "queued", 1);
        let ins = binding(json!({"event": "INSERT", "schema": "public", "table": "gateway_jobs"}));
        assert!(ins.matches(&schema::GATEWAY_JOBS, ChangeKind::Insert, &r));
        assert!(!ins.matches(&schema::GATEWAY_JOBS, ChangeKind::Update, &r));
        assert!(!ins.matches(&schema::SUBAGENTS, ChangeKind::Insert, &r));
        let upd = binding(json!({"event": "update", "schema": "public", "table": "gateway_jobs"}));
        assert!(upd.matches(&schema::GATEWAY_JOBS, ChangeKind::Update, &r));
        assert!(!upd.matches(&schema::GATEWAY_JOBS, ChangeKind::Delete, &r));
        // No table: every table of the schema.
        let any = binding(json!({"event": "*", "schema": "public"}));
        assert!(any.matches(&schema::SUBAGENTS, ChangeKind::Delete, &r));
        // A filter on a column the table lacks matches nothing.
        let anyf = binding(json!({"event": "*", "schema": "public", "filter": "attempt=eq.1"}));
        assert!(anyf.matches(&schema::GATEWAY_JOBS, ChangeKind::Insert, &r));
        assert!(!anyf.matches(&schema::TEAMS, ChangeKind::Insert, &r));
    }

    #[test]
    fn bad_bindings_are_explained() {
        let err = |entry: Value| Binding::parse(&entry, 1).unwrap_err();
        assert!(
            err(json!({"event": "INSERT", "schema": "public", "table": "nope"}))
                .contains("does not exist")
        );
        assert!(
            err(json!({"event": "UPSERT", "schema": "public", "table": "gateway_jobs"}))
                .contains("unknown event")
        );
        assert!(
            err(json!({"schema": "public", "table": "gateway_jobs"})).contains("missing `event`")
        );
        assert!(
            err(json!({"event": "*", "schema": "private", "table": "gateway_jobs"}))
                .contains("public")
        );
        assert!(err(json!("x")).contains("object"));
        for bad in [
            "team_id",
            "team_id=eq",
            "team_id=foo.1",
            "team_id=eq.not-a-uuid",
            "nope=eq.1",
            "attempt=gt.abc",
            "status=in.(a,b",
            "status=eq.\"unterminated",
            "=eq.1",
            "status=match.x",
            "or=(a.eq.1)",
        ] {
            let e = err(
                json!({"event": "*", "schema": "public", "table": "gateway_jobs", "filter": bad}),
            );
            assert!(e.starts_with("Error parsing `filter` params"), "{bad}: {e}");
        }
        // Empty and null filters mean no filter.
        assert!(jobs("").conds.is_empty());
        assert!(
            binding(json!({"event": "*", "table": "gateway_jobs", "filter": null}))
                .conds
                .is_empty()
        );
    }

    #[test]
    fn ids_are_stable_small_and_unique() {
        let e = json!({"event": "INSERT", "schema": "public", "table": "gateway_jobs"});
        let a = binding_id(&e, &[]);
        assert!(a < ID_SPACE);
        assert_eq!(a, binding_id(&e, &[]));
        let b = binding_id(&e, &[a]);
        assert_ne!(a, b);
        assert!(b < ID_SPACE);
    }

    #[test]
    fn like_matcher() {
        assert!(like("a%c", "abbbc"));
        assert!(like("a_c", "abc"));
        assert!(!like("a_c", "abbc"));
        assert!(like("%", ""));
        assert!(like("50\\%", "50%"));
        assert!(!like("50\\%", "500"));
    }

    /// Regression (prop_parsers): the recursive matcher took exponential
    /// time on many `%` and overflowed the stack on a long pattern.
    #[test]
    fn like_is_linear_enough_and_does_not_recurse() {
        let text = "a".repeat(200);
        let many = format!("{}b", "%a".repeat(60));
        assert!(!like(&many, &text));
        assert!(like(&format!("{}a", "%a".repeat(60)), &text));
        let long = "_".repeat(1_000_000);
        assert!(like(&long, &"x".repeat(1_000_000)));
        assert!(!like(&long, "x"));
        // Trailing backslash is literal; `%` at the end matches the rest.
        assert!(like("a\\", "a\\"));
        assert!(like("a%", "a"));
        assert!(!like("a_", "a"));
    }

    #[test]
    fn columns_use_pg_typnames() {
        let cols = columns_json(&schema::GATEWAY_JOBS);
        assert_eq!(cols[0], json!({"name": "id", "type": "uuid"}));
        assert!(cols
            .as_array()
            .unwrap()
            .contains(&json!({"name": "payload", "type": "jsonb"})));
        assert!(cols
            .as_array()
            .unwrap()
            .contains(&json!({"name": "created_at", "type": "timestamptz"})));
    }
}
