//! `resolve_secret_placeholders_for_job` (control-plane §4.2, §8.6): the
//! one way a team secret's value leaves the hub. The caller must be the
//! gateway the job belongs to, and the job must be a `running`
//! `shell_exec`: a gateway cannot read secrets for a job it has not
//! claimed, for another gateway's job, or outside a shell command. Rows
//! keep the reference shape and add `value` (see
//! [`panorama_protocol::secrets`]); a missing secret is left out, so the
//! gateway's row-count check fails the job closed.

use crate::error::ApiError;
use crate::postgrest::Filter;
use crate::schema;
use crate::store::TxOps;
use panorama_protocol::secrets::{
    requested_secret_env, SecretPlaceholderRow, PLACEHOLDER_HEX_LEN, PLACEHOLDER_PREFIX,
};
use serde_json::Value;

/// A fresh opaque alias: `pano_sec_` and 36 random lowercase hex digits.
pub fn new_placeholder() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; PLACEHOLDER_HEX_LEN / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{PLACEHOLDER_PREFIX}{}", hex::encode(bytes))
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::pg("42501", message)
        .hint("Secrets resolve only for a running shell_exec job of the calling gateway.")
}

/// Resolves the job's `secret_env` for `gateway_id`, inside one
/// transaction (the job's state and the values are read together).
pub fn resolve_for_job(
    tx: &mut dyn TxOps,
    job_id: &str,
    gateway_id: &str,
    team_id: &str,
) -> Result<Value, ApiError> {
    let job = tx
        .select(
            &schema::GATEWAY_JOBS,
            &[
                Filter::eq("id", job_id),
                Filter::eq("team_id", team_id),
                Filter::eq("gateway_id", gateway_id),
            ],
        )?
        .into_iter()
        .next()
        .ok_or_else(|| refused(format!("job {job_id} is not a job of this gateway")))?;
    let field = |k: &str| job.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("job_type") != "shell_exec" {
        return Err(refused(format!(
            "job {job_id} is a {} job; secrets are only for shell_exec",
            field("job_type")
        )));
    }
    if field("status") != "running" {
        return Err(refused(format!(
            "job {job_id} is {}; secrets resolve only while it runs",
            field("status")
        )));
    }
    let requested = requested_secret_env(job.get("payload").and_then(|p| p.get("secret_env")))
        .map_err(|m| ApiError::new(400, "22023", m))?;
    let names: Vec<String> = requested.iter().map(|(_, s)| s.clone()).collect();
    let values = tx.secret_values(team_id, &names)?;
    let rows: Vec<SecretPlaceholderRow> = requested
        .into_iter()
        .filter_map(|(env_name, secret_name)| {
            let value = values
                .iter()
                .find(|(n, _)| *n == secret_name)
                .map(|(_, v)| v.clone())?;
            Some(SecretPlaceholderRow {
                env_name,
                secret_name,
                placeholder: new_placeholder(),
                value: Some(value),
            })
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r.secret_name.as_str()).collect();
    // Names only: values never reach a log.
    tracing::info!(job_id, gateway_id, secrets = ?names, "resolved team secrets for a shell_exec job");
    serde_json::to_value(rows).map_err(|e| ApiError::internal(format!("encoding secret rows: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_have_the_reference_shape() {
        let a = new_placeholder();
        assert!(panorama_protocol::secrets::is_placeholder(&a), "{a}");
        assert_ne!(a, new_placeholder());
    }
}
