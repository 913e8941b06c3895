//! Unverified JWT payload decoding (auth-js `decodeJWT`): only `exp` matters.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::error::{Error, Result};

fn invalid_jwt(msg: &str) -> Error {
    Error::Auth {
        status: 0,
        code: Some("invalid_jwt".into()),
        message: format!("Invalid JWT structure: {msg}"),
        retryable: false,
    }
}

/// Decode the payload (claims) of a JWT **without verifying** the signature.
///
/// Like auth-js, the token must have exactly three dot-separated segments,
/// each unpadded base64url (a segment of length ≡ 1 mod 4 is rejected).
pub fn decode_payload(token: &str) -> Result<Value> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(invalid_jwt("expected 3 dot-separated segments"));
    }
    for p in &parts {
        if p.len() % 4 == 1
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid_jwt("segment is not base64url"));
        }
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[1])
        .map_err(|e| invalid_jwt(&format!("payload is not base64url ({e})")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid_jwt(&format!("payload is not JSON ({e})")))?;
    if !v.is_object() {
        return Err(invalid_jwt("payload is not a JSON object"));
    }
    Ok(v)
}

/// The `exp` claim (unix seconds), if present and numeric.
pub fn decode_exp(token: &str) -> Result<Option<i64>> {
    let claims = decode_payload(token)?;
    Ok(claims
        .get("exp")
        .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f.floor() as i64))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(payload: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode("signature-bytes")
        )
    }

    #[test]
    fn decodes_exp() {
        let t = make(r#"{"sub":"u","exp":1767225600,"role":"authenticated"}"#);
        assert_eq!(decode_exp(&t).unwrap(), Some(1767225600));
        let claims = decode_payload(&t).unwrap();
        assert_eq!(claims["role"], "authenticated");
        let no_exp = make(r#"{"sub":"u"}"#);
        assert_eq!(decode_exp(&no_exp).unwrap(), None);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["abc", "a.b", "a.b.c.d", "eyJ.@@@.sig"] {
            let err = decode_payload(bad).unwrap_err();
            assert_eq!(err.code(), Some("invalid_jwt"), "{bad}: {err}");
        }
        // one-character signature: length % 4 == 1 is not valid base64url
        let t = make(r#"{"exp":1}"#);
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[2] = "x";
        let err = decode_payload(&parts.join(".")).unwrap_err();
        assert_eq!(err.code(), Some("invalid_jwt"));
        // payload that is not JSON
        let t = format!("a.{}.b", URL_SAFE_NO_PAD.encode("nope"));
        assert!(decode_payload(&t).is_err());
    }
}
