//! Casting between the API's text/JSON values and stored values, by column
//! type, with PostgreSQL's error codes and wording (22P02, 23502, 23514,
//! PGRST204). Shared by both storage backends so they answer alike.

use crate::changes::Row;
use crate::error::ApiError;
use crate::schema::{ColDefault, ColType, Column, Table};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A value as bound to or read from SQL. UUIDs, timestamps and JSON are
/// stored as text in a canonical form (lowercase UUID, UTC timestamp with
/// microseconds, compact JSON) so that text comparison is value comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

/// The current time in the canonical stored form.
pub fn now_timestamp() -> String {
    format_timestamp(Utc::now())
}

pub fn format_timestamp(t: DateTime<Utc>) -> String {
    // PostgREST renders timestamptz as e.g. 2025-01-01T12:00:00.123456+00:00.
    round_to_micros(t).to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// timestamptz keeps microseconds; PostgreSQL rounds finer input to the
/// nearest one, half to even (`rint`), rather than cutting it off.
fn round_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let below = i64::from(t.timestamp_subsec_nanos() % 1_000);
    let down = t - chrono::Duration::nanoseconds(below);
    let odd = (down.timestamp_subsec_nanos() / 1_000) % 2 == 1;
    if below > 500 || (below == 500 && odd) {
        down + chrono::Duration::microseconds(1)
    } else {
        down
    }
}

/// Parses the timestamp forms PostgreSQL accepts that clients send.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let spaced = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&spaced) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(&spaced, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&spaced, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Casts a filter value (always text on the wire) to a column's type.
pub fn cast_text(col: &Column, s: &str) -> Result<SqlValue, ApiError> {
    let bad = || ApiError::invalid_input(col.ty.pg_name(), s);
    Ok(match col.ty {
        ColType::Text => SqlValue::Text(s.to_string()),
        ColType::Uuid => SqlValue::Text(
            uuid::Uuid::parse_str(s.trim())
                .map_err(|_| bad())?
                .hyphenated()
                .to_string(),
        ),
        ColType::Int => SqlValue::Int(s.trim().parse::<i64>().map_err(|_| bad())?),
        ColType::Bool => SqlValue::Bool(parse_bool(s).ok_or_else(bad)?),
        ColType::Timestamp => SqlValue::Text(format_timestamp(parse_timestamp(s).ok_or_else(bad)?)),
        ColType::Json => {
            let v: Value = serde_json::from_str(s).map_err(|_| bad())?;
            SqlValue::Text(v.to_string())
        }
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Casts a JSON body value to a column's type.
pub fn cast_json(table: &Table, col: &Column, v: &Value) -> Result<SqlValue, ApiError> {
    if v.is_null() {
        if !col.nullable {
            return Err(not_null(table, col));
        }
        return Ok(SqlValue::Null);
    }
    let text_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let value = match col.ty {
        ColType::Json => SqlValue::Text(v.to_string()),
        ColType::Text => SqlValue::Text(text_of(v)),
        ColType::Int => match v {
            Value::Number(n) if n.is_i64() => SqlValue::Int(n.as_i64().unwrap_or_default()),
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                SqlValue::Int(n.as_f64().unwrap_or_default() as i64)
            }
            other => cast_text(col, &text_of(other))?,
        },
        ColType::Bool => match v {
            Value::Bool(b) => SqlValue::Bool(*b),
            other => cast_text(col, &text_of(other))?,
        },
        ColType::Uuid | ColType::Timestamp => match v {
            Value::String(s) => cast_text(col, s)?,
            other => {
                return Err(ApiError::invalid_input(
                    col.ty.pg_name(),
                    &other.to_string(),
                ))
            }
        },
    };
    check_column(table, col, &value, v)?;
    Ok(value)
}

fn not_null(table: &Table, col: &Column) -> ApiError {
    ApiError::pg(
        "23502",
        format!(
            "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
            col.name, table.name
        ),
    )
}

fn check_violation(table: &Table, col: &Column) -> ApiError {
    ApiError::pg(
        "23514",
        format!(
            "new row for relation \"{}\" violates check constraint \"{}_{}_check\"",
            table.name, table.name, col.name
        ),
    )
}

/// The CHECK constraints of spec §16.3.
fn check_column(
    table: &Table,
    col: &Column,
    value: &SqlValue,
    raw: &Value,
) -> Result<(), ApiError> {
    if let (Some(allowed), SqlValue::Text(s)) = (col.allowed, value) {
        if !allowed.contains(&s.as_str()) {
            return Err(check_violation(table, col).details(format!(
                "{} must be one of: {}",
                col.name,
                allowed.join(", ")
            )));
        }
    }
    let min = match (table.name, col.name) {
        ("gateway_jobs", "attempt") | ("subagent_run_events", "sequence") => Some(0),
        ("subagent_runs", "run_sequence") => Some(1),
        _ => None,
    };
    if let (Some(min), SqlValue::Int(n)) = (min, value) {
        if *n < min {
            return Err(check_violation(table, col));
        }
    }
    let must_be_object = matches!(
        (table.name, col.name),
        ("gateway_jobs", "payload") | ("gateway_jobs", "result")
    );
    if must_be_object && !raw.is_object() {
        return Err(
            check_violation(table, col).details(format!("{} must be a JSON object", col.name))
        );
    }
    Ok(())
}

/// Turns a stored value back into JSON.
pub fn to_json(col: &Column, v: SqlValue) -> Value {
    match (col.ty, v) {
        (_, SqlValue::Null) => Value::Null,
        (ColType::Bool, SqlValue::Int(n)) => Value::Bool(n != 0),
        (_, SqlValue::Bool(b)) => Value::Bool(b),
        (_, SqlValue::Int(n)) => Value::from(n),
        (ColType::Json, SqlValue::Text(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        (_, SqlValue::Text(s)) => Value::String(s),
    }
}

/// The value a column gets when an insert leaves it out.
pub fn default_value(table: &Table, col: &Column) -> Result<SqlValue, ApiError> {
    match col.default {
        ColDefault::NewUuid => Ok(SqlValue::Text(uuid::Uuid::new_v4().to_string())),
        ColDefault::Now => Ok(SqlValue::Text(now_timestamp())),
        ColDefault::Json(text) => {
            let v: Value = serde_json::from_str(text).expect("schema defaults are valid JSON");
            cast_json(table, col, &v)
        }
        ColDefault::None if col.nullable => Ok(SqlValue::Null),
        ColDefault::None => Err(not_null(table, col)),
    }
}

/// Checks a body object's keys against the table (PGRST204).
pub fn check_body_columns(table: &Table, row: &Row) -> Result<(), ApiError> {
    for key in row.keys() {
        if table.column(key).is_none() {
            return Err(unknown_body_column(table, key));
        }
    }
    Ok(())
}

pub fn unknown_body_column(table: &Table, key: &str) -> ApiError {
    ApiError::new(
        400,
        "PGRST204",
        format!(
            "Could not find the '{key}' column of '{}' in the schema cache",
            table.name
        ),
    )
}

/// A full row to insert: body values cast, defaults filled in, in schema
/// column order. `columns` (the `columns=` parameter) limits which body keys
/// are used; a listed key missing from an object becomes NULL unless
/// `missing_default`, like PostgREST.
pub fn prepare_insert(
    table: &Table,
    body: &Row,
    columns: Option<&[String]>,
    missing_default: bool,
) -> Result<Vec<(&'static Column, SqlValue)>, ApiError> {
    check_body_columns(table, body)?;
    if let Some(cols) = columns {
        for c in cols {
            if table.column(c).is_none() {
                return Err(unknown_body_column(table, c));
            }
        }
    }
    let mut out = Vec::with_capacity(table.columns.len());
    for col in table.columns {
        let listed = columns.is_none_or(|cols| cols.iter().any(|c| c == col.name));
        let value = match body.get(col.name) {
            Some(v) if listed => cast_json(table, col, v)?,
            None if listed && columns.is_some() && !missing_default => {
                cast_json(table, col, &Value::Null)?
            }
            _ => default_value(table, col)?,
        };
        out.push((col, value));
    }
    Ok(out)
}

/// The SET list of an update: body values cast; `updated_at` refreshed.
pub fn prepare_update(
    table: &Table,
    body: &Row,
) -> Result<Vec<(&'static Column, SqlValue)>, ApiError> {
    check_body_columns(table, body)?;
    let mut out = Vec::new();
    for (key, v) in body {
        let col = table
            .column(key)
            .ok_or_else(|| unknown_body_column(table, key))?;
        out.push((col, cast_json(table, col, v)?));
    }
    if table.touch_updated_at && !body.contains_key("updated_at") {
        if let Some(col) = table.column("updated_at") {
            out.push((col, SqlValue::Text(now_timestamp())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::GATEWAY_JOBS;
    use serde_json::json;

    #[test]
    fn sub_microsecond_input_rounds_half_to_even_like_postgres() {
        let c = GATEWAY_JOBS.column("created_at").unwrap();
        for (input, stored) in [
            (
                "2025-01-01T00:00:00.1234565Z",
                "2025-01-01T00:00:00.123456+00:00",
            ),
            (
                "2025-01-01T00:00:00.1234575Z",
                "2025-01-01T00:00:00.123458+00:00",
            ),
            (
                "2025-01-01T00:00:00.1234569Z",
                "2025-01-01T00:00:00.123457+00:00",
            ),
            (
                "2025-01-01T00:00:00.1234561Z",
                "2025-01-01T00:00:00.123456+00:00",
            ),
            (
                "2025-12-31T23:59:59.9999996Z",
                "2026-01-01T00:00:00.000000+00:00",
            ),
        ] {
            assert_eq!(
                cast_text(c, input).unwrap(),
                SqlValue::Text(stored.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn timestamps_are_canonical() {
        let c = GATEWAY_JOBS.column("created_at").unwrap();
        for input in [
            "2025-01-01T12:00:00.000Z",
            "2025-01-01T13:00:00+01:00",
            "2025-01-01 12:00:00",
            "2025-01-01T12:00:00.000000+00:00",
        ] {
            assert_eq!(
                cast_text(c, input).unwrap(),
                SqlValue::Text("2025-01-01T12:00:00.000000+00:00".into()),
                "{input}"
            );
        }
        assert_eq!(cast_text(c, "yesterday").unwrap_err().code, "22P02");
    }

    #[test]
    fn uuids_ints_and_bools_are_cast_or_refused() {
        let id = GATEWAY_JOBS.column("id").unwrap();
        assert_eq!(
            cast_text(id, "nope").unwrap_err().message,
            "invalid input syntax for type uuid: \"nope\""
        );
        assert_eq!(
            cast_text(id, "6F1C1C1E-6A0B-4E3D-9A43-1B3F5A0E9A11").unwrap(),
            SqlValue::Text("6f1c1c1e-6a0b-4e3d-9a43-1b3f5a0e9a11".into())
        );
        let attempt = GATEWAY_JOBS.column("attempt").unwrap();
        assert_eq!(
            cast_json(&GATEWAY_JOBS, attempt, &json!(2)).unwrap(),
            SqlValue::Int(2)
        );
        assert_eq!(
            cast_json(&GATEWAY_JOBS, attempt, &json!("x"))
                .unwrap_err()
                .code,
            "22P02"
        );
        assert_eq!(
            cast_json(&GATEWAY_JOBS, attempt, &json!(-1))
                .unwrap_err()
                .code,
            "23514"
        );
    }

    #[test]
    fn checks_and_not_null() {
        let status = GATEWAY_JOBS.column("status").unwrap();
        assert_eq!(
            cast_json(&GATEWAY_JOBS, status, &json!("bogus"))
                .unwrap_err()
                .code,
            "23514"
        );
        assert_eq!(
            cast_json(&GATEWAY_JOBS, status, &json!(null))
                .unwrap_err()
                .code,
            "23502"
        );
        let payload = GATEWAY_JOBS.column("payload").unwrap();
        assert_eq!(
            cast_json(&GATEWAY_JOBS, payload, &json!([1]))
                .unwrap_err()
                .code,
            "23514"
        );
    }

    #[test]
    fn insert_fills_defaults_and_refuses_unknown_keys() {
        let body = json!({"team_id": "6f1c1c1e-6a0b-4e3d-9a43-1b3f5a0e9a11"});
        let row = prepare_insert(&GATEWAY_JOBS, body.as_object().unwrap(), None, false).unwrap();
        let get = |n: &str| row.iter().find(|(c, _)| c.name == n).unwrap().1.clone();
        assert_eq!(get("status"), SqlValue::Text("queued".into()));
        assert_eq!(get("payload"), SqlValue::Text("{}".into()));
        assert_eq!(get("attempt"), SqlValue::Int(1));
        let bad = json!({"team_id": "6f1c1c1e-6a0b-4e3d-9a43-1b3f5a0e9a11", "nope": 1});
        assert_eq!(
            prepare_insert(&GATEWAY_JOBS, bad.as_object().unwrap(), None, false)
                .unwrap_err()
                .code,
            "PGRST204"
        );
        let missing = json!({});
        assert_eq!(
            prepare_insert(&GATEWAY_JOBS, missing.as_object().unwrap(), None, false)
                .unwrap_err()
                .code,
            "23502"
        );
    }
}
