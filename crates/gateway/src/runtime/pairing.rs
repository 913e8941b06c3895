//! The pairing exchange (control-plane.md §2.2, runtime.md §1.6.1 steps
//! 4–5): the only call made with the anon key as bearer.

use panorama_supabase::{Client, Error, InvokeOptions};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::error::{GatewayError, Result};

/// Input of the pairing exchange (control-plane.md §2.2).
#[derive(Debug, Clone)]
pub struct PairingRequest {
    pub backend: Backend,
    /// Trimmed pairing code.
    pub code: String,
    pub device_name: String,
}

/// A successful pairing exchange. All four ids/tokens are non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingExchange {
    pub access_token: String,
    pub refresh_token: String,
    pub gateway_id: String,
    pub team_id: String,
}

pub const PAIRING_FUNCTION: &str = "exchange-gateway-pairing-code";
pub const MSG_MISSING_FIELDS: &str = "Pairing response missing required fields";
const HINT: &str = "Pairing codes expire and work only once: generate a new code (`panorama-hub pairing-code create --team TEAM`, or your control plane) and run \"panorama-gateway pair <CODE>\" again.";

fn field(body: &Value, key: &str) -> Option<String> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Check a 2xx body: `success` (when present) must be true, and the four
/// identity fields must be non-empty strings.
pub fn parse_success(status: u16, body: &Value) -> Result<PairingExchange> {
    if body.get("success").is_some_and(|s| s != &Value::Bool(true)) {
        return Err(failure_error(status, Some(body)));
    }
    match (
        field(body, "access_token"),
        field(body, "refresh_token"),
        field(body, "gateway_id"),
        field(body, "team_id"),
    ) {
        (Some(access_token), Some(refresh_token), Some(gateway_id), Some(team_id)) => {
            Ok(PairingExchange {
                access_token,
                refresh_token,
                gateway_id,
                team_id,
            })
        }
        _ => Err(GatewayError::cli(
            MSG_MISSING_FIELDS,
            "The control plane answered without access_token, refresh_token, gateway_id and team_id. Check that --supabase-url points at a Panorama control plane.".to_string(),
        )),
    }
}

/// `Pairing failed with status <n>`, or the body's `error` string.
pub fn failure_error(status: u16, body: Option<&Value>) -> GatewayError {
    let message = body
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("Pairing failed with status {status}"));
    GatewayError::cli(message, HINT.to_string())
}

/// POST the code and device name; map the answer.
pub async fn exchange(request: &PairingRequest) -> Result<PairingExchange> {
    let client = Client::new(&request.backend.url, &request.backend.anon_key).map_err(|e| {
        GatewayError::cli(
            "Missing Supabase configuration for pairing.",
            format!("{e}. Check --supabase-url / PANORAMA_SUPABASE_URL."),
        )
    })?;
    let body = json!({"code": request.code.trim(), "device_name": request.device_name});
    let opts = InvokeOptions {
        anon_bearer: true,
        ..InvokeOptions::default()
    };
    match client
        .functions()
        .invoke_with(PAIRING_FUNCTION, body, opts)
        .await
    {
        Ok(value) => parse_success(200, &value),
        Err(Error::Http { status, body, .. }) => Err(failure_error(status, body.as_ref())),
        Err(e) => Err(GatewayError::cli(
            "Pairing request failed.",
            format!(
                "{e}. Check the network connection and that {} is reachable.",
                request.backend.url
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_failure_shapes() {
        let ok = json!({"success": true, "access_token": "a", "refresh_token": "r", "gateway_id": "g", "team_id": "t"});
        let ex = parse_success(200, &ok).unwrap();
        assert_eq!(ex.gateway_id, "g");
        let seed_ok =
            json!({"access_token": "a", "refresh_token": "r", "gateway_id": "g", "team_id": "t"});
        assert!(parse_success(200, &seed_ok).is_ok());
        let missing =
            json!({"success": true, "access_token": "a", "gateway_id": "g", "team_id": "t"});
        assert_eq!(
            parse_success(200, &missing).unwrap_err().to_string(),
            MSG_MISSING_FIELDS
        );
        let refused = json!({"success": false, "error": "Invalid or expired pairing code"});
        assert_eq!(
            parse_success(200, &refused).unwrap_err().to_string(),
            "Invalid or expired pairing code"
        );
        assert_eq!(
            failure_error(502, None).to_string(),
            "Pairing failed with status 502"
        );
        assert_eq!(
            failure_error(400, Some(&json!({"error": "Code already used"}))).to_string(),
            "Code already used"
        );
    }
}
