//! The one error type of the hub's API, shaped like PostgREST's
//! `{code, message, details, hint}` and carrying its HTTP status.

use axum::http::StatusCode;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> ApiError {
        self.details = Some(details.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    /// A PostgreSQL error, with its HTTP status taken from PostgREST's
    /// mapping (supabase-wire §2.10).
    pub fn pg(sqlstate: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(status_of_sqlstate(sqlstate), sqlstate, message)
    }

    /// PGRST100: the query string could not be parsed.
    pub fn parse(message: impl Into<String>, details: impl Into<String>) -> ApiError {
        ApiError::new(400, "PGRST100", message).details(details)
    }

    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "PGRST102", message)
    }

    pub fn unknown_table(table: &str) -> ApiError {
        ApiError::new(
            404,
            "42P01",
            format!("relation \"public.{table}\" does not exist"),
        )
        .hint("Tables the hub serves: teams, team_gateways, gateway_pairing_codes, gateway_jobs, gateway_events, subagents, subagent_runs, subagent_run_events, team_resources.")
    }

    pub fn unknown_column(table: &str, column: &str) -> ApiError {
        ApiError::pg("42703", format!("column {table}.{column} does not exist"))
    }

    pub fn invalid_input(ty: &str, value: &str) -> ApiError {
        ApiError::pg(
            "22P02",
            format!("invalid input syntax for type {ty}: \"{value}\""),
        )
    }

    /// 42501 from a table the principal has no grant on.
    pub fn permission_denied(table: &str, authenticated: bool) -> ApiError {
        let mut e = ApiError::pg("42501", format!("permission denied for table {table}"));
        e.status = if authenticated { 403 } else { 401 };
        e
    }

    /// 42501 from a row-level security check on a written row.
    pub fn rls_violation(table: &str) -> ApiError {
        let mut e = ApiError::pg(
            "42501",
            format!("new row violates row-level security policy for table \"{table}\""),
        );
        e.status = 403;
        e
    }

    /// PGRST116: a singular response was asked for and `n` rows came back.
    pub fn not_single(n: usize) -> ApiError {
        ApiError::new(
            406,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
        )
        .details(format!("The result contains {n} rows"))
    }

    /// A failure of the storage engine itself.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "XX000", message)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> Value {
        json!({
            "code": self.code,
            "details": self.details,
            "hint": self.hint,
            "message": self.message,
        })
    }
}

/// PostgREST's SQLSTATE → HTTP status table.
pub fn status_of_sqlstate(code: &str) -> u16 {
    match code {
        "23505" | "23503" => 409,
        "42501" => 403,
        "42P01" | "42883" => 404,
        "P0001" => 400,
        "25006" => 405,
        "53400" => 500,
        _ if code.starts_with("08") || code.starts_with("53") => 503,
        _ if code.starts_with("22") || code.starts_with("23") || code.starts_with("42") => 400,
        _ if ["28", "0L", "0P"].iter().any(|p| code.starts_with(p)) => 403,
        _ => 500,
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut res = (self.status_code(), axum::Json(self.body())).into_response();
        if self.status == 401 {
            res.headers_mut().insert(
                "WWW-Authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_postgrest_statuses() {
        for (code, status) in [
            ("23505", 409),
            ("23503", 409),
            ("22P02", 400),
            ("42703", 400),
            ("42P01", 404),
            ("42501", 403),
            ("P0001", 400),
            ("08006", 503),
            ("XX000", 500),
        ] {
            assert_eq!(status_of_sqlstate(code), status, "{code}");
        }
    }
}
