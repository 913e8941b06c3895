//! Team secrets for `shell_exec.secret_env` (control-plane §4.2, §8.6,
//! §15.1): the request the job carries, the rows
//! `resolve_secret_placeholders_for_job` returns, and the fail-closed check
//! a gateway applies to them before anything reaches a child process.
//!
//! Rows have the reference shape `{env_name, secret_name, placeholder}`,
//! `placeholder` being an opaque `pano_sec_<36 hex>` alias that only the
//! reference platform's VM egress proxy can turn into the value. A
//! panorama-hub adds `value`: the plain secret, for hosts without that
//! proxy. A gateway uses `value` when a row carries one; rows without it
//! are usable only inside a managed VM.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PLACEHOLDER_PREFIX: &str = "pano_sec_";
/// Hex characters after the prefix.
pub const PLACEHOLDER_HEX_LEN: usize = 36;
/// Longest secret name a hub accepts.
pub const MAX_SECRET_NAME_LEN: usize = 128;

pub const MSG_SECRETS_OUTSIDE_VM: &str = "Team secrets can only be injected inside a managed VM";
pub const MSG_INVALID_SECRET_NAME: &str = "Team secret request contains an invalid secret name";
pub const MSG_INCOMPLETE_RESPONSE: &str = "Team secret alias response was incomplete or invalid";
/// Prefix of an RPC failure (`Failed to resolve team secrets: <e>`).
pub const MSG_RESOLVE_FAILED_PREFIX: &str = "Failed to resolve team secrets";

/// `pano_sec_` followed by exactly 36 lowercase hex characters.
pub fn is_placeholder(s: &str) -> bool {
    s.strip_prefix(PLACEHOLDER_PREFIX).is_some_and(|hex| {
        hex.len() == PLACEHOLDER_HEX_LEN
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A name a hub stores a secret under: 1–128 characters of letters,
/// digits, `_`, `-` and `.`, starting with a letter, digit or `_`.
pub fn is_valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_SECRET_NAME_LEN
        && (first.is_ascii_alphanumeric() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A POSIX environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `payload.secret_env` read as (env name, secret name) pairs, in payload
/// order. `Ok(empty)`: nothing requested (absent, null or `{}`), as the
/// reference treats a non-object too. `Err`: a name that is not a
/// non-empty string, or an env name a process cannot carry.
pub fn requested_secret_env(secret_env: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let Some(Value::Object(map)) = secret_env else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (env, secret) in map {
        match secret.as_str() {
            Some(s) if !s.is_empty() && is_valid_env_name(env) => {
                out.push((env.clone(), s.to_string()))
            }
            _ => return Err(MSG_INVALID_SECRET_NAME.to_string()),
        }
    }
    Ok(out)
}

/// One row of `resolve_secret_placeholders_for_job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPlaceholderRow {
    pub env_name: String,
    pub secret_name: String,
    pub placeholder: String,
    /// The secret itself: a panorama-hub extension (absent on the
    /// reference platform, whose VM proxy substitutes the placeholder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Where a resolved variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSecret {
    pub env_name: String,
    pub secret_name: String,
    pub placeholder: String,
    /// The value to put in the child's environment.
    pub value: String,
}

/// Why a resolution is refused. The texts are the reference's (§8.6) and
/// never carry a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretResolutionError {
    #[error("{}", MSG_INVALID_SECRET_NAME)]
    InvalidName,
    /// Row count, shape, placeholder or pairing does not match the request.
    #[error("{}", MSG_INCOMPLETE_RESPONSE)]
    Incomplete,
    /// Only aliases came back: nothing on this host can substitute them.
    #[error("{}", MSG_SECRETS_OUTSIDE_VM)]
    AliasesOnly,
}

/// Checks the RPC's answer against the request and picks each variable's
/// value. Fails closed: every requested variable must come back exactly
/// once, paired with its secret, with a well-formed placeholder and a value
/// (unless `vm_guest`, where the placeholder itself is injected and the
/// VM's proxy substitutes it).
pub fn check_resolution(
    requested: &[(String, String)],
    data: &Value,
    vm_guest: bool,
) -> Result<Vec<ResolvedSecret>, SecretResolutionError> {
    let rows = data.as_array().ok_or(SecretResolutionError::Incomplete)?;
    if rows.len() != requested.len() {
        return Err(SecretResolutionError::Incomplete);
    }
    let mut out: Vec<ResolvedSecret> = Vec::with_capacity(rows.len());
    for raw in rows {
        let row: SecretPlaceholderRow =
            serde_json::from_value(raw.clone()).map_err(|_| SecretResolutionError::Incomplete)?;
        let asked = requested
            .iter()
            .any(|(env, secret)| *env == row.env_name && *secret == row.secret_name);
        if !asked
            || !is_placeholder(&row.placeholder)
            || out.iter().any(|r| r.env_name == row.env_name)
        {
            return Err(SecretResolutionError::Incomplete);
        }
        let value = match (row.value, vm_guest) {
            (Some(v), _) => v,
            (None, true) => row.placeholder.clone(),
            (None, false) => return Err(SecretResolutionError::AliasesOnly),
        };
        out.push(ResolvedSecret {
            env_name: row.env_name,
            secret_name: row.secret_name,
            placeholder: row.placeholder,
            value,
        });
    }
    Ok(out)
}

/// Shortest value [`redact_values`] replaces: shorter ones would match by
/// chance all over ordinary output.
pub const MIN_REDACTED_VALUE_LEN: usize = 4;

/// `text` with every resolved value replaced by its placeholder, so a
/// command that prints a secret reports what a VM child would have seen.
pub fn redact_values(text: &str, secrets: &[ResolvedSecret]) -> String {
    let mut ordered: Vec<&ResolvedSecret> = secrets
        .iter()
        .filter(|s| s.value.len() >= MIN_REDACTED_VALUE_LEN && s.value != s.placeholder)
        .filter(|s| text.contains(s.value.as_str()))
        .collect();
    if ordered.is_empty() {
        return text.to_string();
    }
    // Longest first, so a value containing another is replaced whole; one
    // left-to-right pass, so an inserted placeholder is never rescanned.
    ordered.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match ordered.iter().find(|s| rest.starts_with(s.value.as_str())) {
            Some(s) => {
                out.push_str(&s.placeholder);
                rest = &rest[s.value.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P1: &str = "pano_sec_0123456789abcdef0123456789abcdef0123";
    const P2: &str = "pano_sec_ffffffffffffffffffffffffffffffffffff";

    fn req() -> Vec<(String, String)> {
        vec![
            ("API_TOKEN".into(), "team-token".into()),
            ("DB_PASS".into(), "db".into()),
        ]
    }

    #[test]
    fn placeholders_and_names() {
        assert!(is_placeholder(P1));
        assert!(!is_placeholder("pano_sec_0123"));
        assert!(!is_placeholder(&P1.to_uppercase()));
        assert!(!is_placeholder(&format!("{P1}0")));
        assert!(is_valid_secret_name("team-token.v2"));
        assert!(is_valid_secret_name("_x"));
        assert!(!is_valid_secret_name(""));
        assert!(!is_valid_secret_name("-x"));
        assert!(!is_valid_secret_name("a b"));
        assert!(!is_valid_secret_name(&"a".repeat(129)));
        assert!(is_valid_env_name("API_TOKEN"));
        assert!(!is_valid_env_name("1X"));
        assert!(!is_valid_env_name("A-B"));
        assert!(!is_valid_env_name(""));
    }

    #[test]
    fn requests_are_read_in_order_and_checked() {
        assert_eq!(requested_secret_env(None), Ok(vec![]));
        assert_eq!(requested_secret_env(Some(&json!({}))), Ok(vec![]));
        assert_eq!(requested_secret_env(Some(&json!([1]))), Ok(vec![]));
        assert_eq!(
            requested_secret_env(Some(&json!({"B": "b", "A": "a"}))).unwrap(),
            vec![("B".into(), "b".into()), ("A".into(), "a".into())]
        );
        for bad in [json!({"A": ""}), json!({"A": 1}), json!({"1A": "x"})] {
            assert_eq!(
                requested_secret_env(Some(&bad)),
                Err(MSG_INVALID_SECRET_NAME.to_string()),
                "{bad}"
            );
        }
    }

    #[test]
    fn resolution_fails_closed() {
        let good = json!([
            {"env_name": "API_TOKEN", "secret_name": "team-token", "placeholder": P1, "value": "s3cret-1"},
            {"env_name": "DB_PASS", "secret_name": "db", "placeholder": P2, "value": "s3cret-2"},
        ]);
        let r = check_resolution(&req(), &good, false).unwrap();
        assert_eq!(r[0].value, "s3cret-1");
        assert_eq!(r[1].env_name, "DB_PASS");
        use SecretResolutionError::*;
        let cases = [
            (json!(null), Incomplete),
            (json!([good[0]]), Incomplete),
            (json!([good[0], good[0]]), Incomplete),
            (
                json!([good[0], {"env_name": "DB_PASS", "secret_name": "other", "placeholder": P2, "value": "v"}]),
                Incomplete,
            ),
            (
                json!([good[0], {"env_name": "DB_PASS", "secret_name": "db", "placeholder": "pano_sec_x", "value": "v"}]),
                Incomplete,
            ),
            (
                json!([good[0], {"env_name": "DB_PASS", "secret_name": "db", "placeholder": P2}]),
                AliasesOnly,
            ),
        ];
        for (data, wanted) in cases {
            assert_eq!(
                check_resolution(&req(), &data, false),
                Err(wanted),
                "{data}"
            );
        }
        // Inside a managed VM an alias-only row injects the alias.
        let aliases = json!([
            {"env_name": "API_TOKEN", "secret_name": "team-token", "placeholder": P1},
            {"env_name": "DB_PASS", "secret_name": "db", "placeholder": P2},
        ]);
        assert_eq!(
            check_resolution(&req(), &aliases, true).unwrap()[0].value,
            P1
        );
        assert!(!MSG_INCOMPLETE_RESPONSE.contains("s3cret"));
    }

    #[test]
    fn printed_values_become_placeholders() {
        let secrets = check_resolution(
            &req(),
            &json!([
                {"env_name": "API_TOKEN", "secret_name": "team-token", "placeholder": P1, "value": "abcd"},
                {"env_name": "DB_PASS", "secret_name": "db", "placeholder": P2, "value": "abcdef"},
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            redact_values("x=abcdef y=abcd z=abc", &secrets),
            format!("x={P2} y={P1} z=abc")
        );
        let short = vec![ResolvedSecret {
            env_name: "A".into(),
            secret_name: "a".into(),
            placeholder: P1.into(),
            value: "ab".into(),
        }];
        assert_eq!(redact_values("ab", &short), "ab");
        // An inserted placeholder is not rescanned for other values.
        let nested = vec![
            ResolvedSecret {
                env_name: "A".into(),
                secret_name: "a".into(),
                placeholder: P1.into(),
                value: "xyzw".into(),
            },
            ResolvedSecret {
                env_name: "B".into(),
                secret_name: "b".into(),
                placeholder: P2.into(),
                value: "0123".into(),
            },
        ];
        assert_eq!(redact_values("xyzw|0123", &nested), format!("{P1}|{P2}"));
    }
}
