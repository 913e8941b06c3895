//! How the store's failures read on the wire: [`StoreError`] and
//! [`Refusal`] as PostgREST's `{code, message, details, hint}` and status
//! ([`ApiError`]), and an HTTP-layer refusal raised inside a store
//! transaction (a guard, an RPC's rule) carried through the store. Above
//! both `store/` and `error.rs`, so neither imports the other.

use crate::error::{status_of_sqlstate, ApiError};
use crate::store::{Refusal, StoreError};

/// The store's failures as PostgREST reports the PostgreSQL errors behind
/// them: the same SQLSTATE, message and status whichever backend ran.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use StoreError as S;
        let message = e.to_string();
        match e {
            S::UniqueViolation { columns, .. } => {
                ApiError::pg("23505", message).details(format!("Key ({columns}) already exists."))
            }
            S::ForeignKeyViolation { .. } => ApiError::pg("23503", message)
                .details("A referenced row (team, gateway, subagent or run) does not exist."),
            S::NotNullViolation { .. } => ApiError::pg("23502", message),
            S::CheckViolation { .. } => ApiError::pg("23514", message),
            S::Busy => ApiError::new(503, "53300", message)
                .hint("Another writer holds the hub database; retry in a moment."),
            S::Unavailable(_) => ApiError::new(503, "08006", message)
                .hint("Check that the hub's database is running and reachable, then retry."),
            S::NotSingle(n) => ApiError::not_single(n),
            S::Rejected(r) => r.into(),
            S::Backend { .. } => ApiError::internal(message),
        }
    }
}

/// A store-level refusal as PostgREST reports it: the status its rule
/// chose, else the one its SQLSTATE (or PostgREST code) implies.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = r.status.unwrap_or_else(|| match r.code.as_str() {
            "PGRST100" | "PGRST102" => 400,
            "PGRST116" => 406,
            code => status_of_sqlstate(code),
        });
        ApiError {
            status,
            code: r.code,
            message: r.message,
            details: r.details,
            hint: r.hint,
        }
    }
}

/// An HTTP-layer refusal raised inside a store transaction (a guard, an
/// RPC's rule): it keeps its exact status through the store.
impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal {
            code: e.code,
            message: e.message,
            details: e.details,
            hint: e.hint,
            status: Some(e.status),
        }
    }
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> StoreError {
        StoreError::Rejected(e.into())
    }
}

impl axum::response::IntoResponse for StoreError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_postgrest_codes() {
        let dup = ApiError::from(StoreError::UniqueViolation {
            constraint: "teams_pkey".into(),
            columns: "id".into(),
        });
        assert_eq!((dup.status, dup.code.as_str()), (409, "23505"));
        assert_eq!(
            dup.message,
            "duplicate key value violates unique constraint \"teams_pkey\""
        );
        assert_eq!(dup.details.as_deref(), Some("Key (id) already exists."));
        let fk = ApiError::from(StoreError::ForeignKeyViolation {
            table: "gateway_jobs".into(),
        });
        assert_eq!((fk.status, fk.code.as_str()), (409, "23503"));
        assert_eq!(ApiError::from(StoreError::Busy).status, 503);
        assert_eq!(ApiError::from(StoreError::NotSingle(2)).code, "PGRST116");
        // An HTTP-layer refusal keeps its exact status through the store…
        let mut unauthenticated = ApiError::pg("42501", "permission denied for table teams");
        unauthenticated.status = 401;
        assert_eq!(
            ApiError::from(StoreError::from(unauthenticated.clone())),
            unauthenticated
        );
        // …and the store's own refusals get the status of their code.
        let guard = ApiError::from(StoreError::Rejected(
            Refusal::new("P0001", "invalid transition").hint("h"),
        ));
        assert_eq!(guard, ApiError::pg("P0001", "invalid transition").hint("h"));
        assert_eq!(
            ApiError::from(Refusal::unknown_column("t", "c")).status,
            400
        );
        assert_eq!(ApiError::from(Refusal::parse("bad", "why")).status, 400);
    }
}
