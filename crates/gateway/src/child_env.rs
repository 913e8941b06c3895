//! Environment of job child processes (runtime.md §3.1).
//!
//! Base: the gateway's own environment. Gateway secrets and internal
//! configuration are scrubbed, `TMPDIR`/`TMP`/`TEMP` point at the gateway
//! tmp dir, then per-call overrides are applied (unscrubbed, by design).

use std::collections::BTreeMap;
use std::path::Path;

/// Exact keys removed from every child environment.
pub const SCRUBBED_KEYS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_CA_CERT",
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SECRET_KEY",
    "PANORAMA_SUPABASE_URL",
    "PANORAMA_SUPABASE_ANON_KEY",
    "PANORAMA_ENV",
    "PANORAMA_ENV_FILE",
    "PANORAMA_ENV_PATH",
    "OPENROUTER_API_KEY",
    "BRAVE_SEARCH_API_KEY",
    // Later-version egress credentials; never meaningful to a job child.
    "PANORAMA_EGRESS_PROXY_TOKEN",
    "PANORAMA_EGRESS_PROXY_HOST",
];

/// Key prefixes removed from every child environment. `PANORAMA_GATEWAY_`
/// is the spec's. Wider than the spec: every `PANORAMA_*` (our internal
/// configuration, hub and backend keys) and every `SUPABASE_*` variable
/// (service keys, access tokens, JWT secrets, database passwords under
/// whatever name a deployment uses) — except [`KEPT_KEYS`].
pub const SCRUBBED_PREFIXES: &[&str] = &["PANORAMA_", "SUPABASE_"];

/// The agent CLI overrides are deliberately passed on (runtime.md §3.1).
pub const KEPT_KEYS: &[&str] = &[
    "PANORAMA_CLAUDE_CLI",
    "PANORAMA_CODEX_CLI",
    "PANORAMA_GEMINI_CLI",
];

/// Whether `key` is scrubbed from child environments.
pub fn is_scrubbed(key: &str) -> bool {
    !KEPT_KEYS.contains(&key)
        && (SCRUBBED_KEYS.contains(&key) || SCRUBBED_PREFIXES.iter().any(|p| key.starts_with(p)))
}

/// Gateway secret values (its access and refresh tokens, the anon key):
/// a variable carrying one is scrubbed whatever its name.
static SECRET_VALUES: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shortest value treated as a secret (shorter ones would match by chance).
const MIN_SECRET_LEN: usize = 12;

/// Remember a gateway secret (called when tokens are loaded or rotated).
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRET_VALUES.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
    }
}

/// Whether a scrubbed key's value is a credential by its name, so the same
/// value under another name is scrubbed too.
fn secret_name(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "DATABASE_URL"]
        .iter()
        .any(|w| upper.contains(w))
}

/// Build a child environment from `base` (normally the gateway's own
/// environment).
///
/// * scrubbed keys are removed ([`is_scrubbed`]);
/// * with a `tmp_dir`, `TMPDIR`, `TMP` and `TEMP` are set to it;
/// * `overrides` are applied last: `None` removes the key, `Some` sets it.
pub fn build_child_env<I, K, V>(
    base: I,
    tmp_dir: Option<&Path>,
    overrides: &[(String, Option<String>)],
) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let base: Vec<(String, String)> = base
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let mut secrets = SECRET_VALUES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    secrets.extend(
        base.iter()
            .filter(|(k, v)| is_scrubbed(k) && secret_name(k) && v.trim().len() >= MIN_SECRET_LEN)
            .map(|(_, v)| v.trim().to_string()),
    );
    let mut env: BTreeMap<String, String> = base
        .into_iter()
        .filter(|(k, v)| !is_scrubbed(k) && !secrets.iter().any(|s| v.contains(s.as_str())))
        .collect();
    if let Some(tmp) = tmp_dir {
        let tmp = tmp.to_string_lossy().into_owned();
        for key in ["TMPDIR", "TMP", "TEMP"] {
            env.insert(key.to_string(), tmp.clone());
        }
    }
    for (key, value) in overrides {
        match value {
            Some(v) => {
                env.insert(key.clone(), v.clone());
            }
            None => {
                env.remove(key);
            }
        }
    }
    env
}

/// [`build_child_env`] over the current process environment (non-UTF-8
/// entries are dropped).
pub fn child_env_from_process(
    tmp_dir: Option<&Path>,
    overrides: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    build_child_env(std::env::vars(), tmp_dir, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("HOME", "/home/u"),
            ("PATH", "/usr/bin"),
            ("SUPABASE_SERVICE_ROLE_KEY", "secret"),
            ("SUPABASE_URL", "http://x"),
            ("PANORAMA_SUPABASE_ANON_KEY", "anon"),
            ("PANORAMA_GATEWAY_CONFIG_DIR", "/cfg"),
            ("PANORAMA_GATEWAY_ANYTHING_NEW", "x"),
            ("PANORAMA_ENV_FILE", ".env"),
            ("OPENROUTER_API_KEY", "k"),
            ("DATABASE_URL", "postgres://"),
            ("PANORAMA_CLAUDE_CLI", "/bin/claude"),
            ("HTTPS_PROXY", "http://proxy"),
            ("TMPDIR", "/tmp"),
            ("SUPABASE_SERVICE_KEY", "svc-key-0123456789"),
            ("PANORAMA_HUB_TOKEN", "hub-token-0123456789"),
            ("COPIED_KEY", "svc-key-0123456789"),
        ]
    }

    #[test]
    fn scrubs_gateway_secrets_under_any_name() {
        register_secret("gateway-access-token-xyz");
        register_secret("short");
        let mut with_token = base();
        with_token.push(("MY_TOKEN", "gateway-access-token-xyz"));
        with_token.push(("SHORT", "short"));
        let env = build_child_env(with_token, None, &[]);
        assert_eq!(env["SHORT"], "short");
        assert!(!env.contains_key("MY_TOKEN"));
        assert!(!env.contains_key("COPIED_KEY"));
        assert!(!env.contains_key("SUPABASE_SERVICE_KEY"));
        assert!(!env.contains_key("PANORAMA_HUB_TOKEN"));
        assert!(is_scrubbed("PANORAMA_ANYTHING"));
        assert!(!is_scrubbed("PANORAMA_CODEX_CLI"));
    }

    #[test]
    fn scrubs_secrets_and_internal_variables() {
        let env = build_child_env(base(), None, &[]);
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "HOME",
                "HTTPS_PROXY",
                "PANORAMA_CLAUDE_CLI",
                "PATH",
                "TMPDIR"
            ]
        );
        assert_eq!(env["TMPDIR"], "/tmp");
    }

    #[test]
    fn tmpdir_points_at_gateway_tmp() {
        let env = build_child_env(base(), Some(Path::new("/cfg/tmp")), &[]);
        for key in ["TMPDIR", "TMP", "TEMP"] {
            assert_eq!(env[key], "/cfg/tmp");
        }
    }

    #[test]
    fn overrides_apply_last_and_are_not_scrubbed() {
        let overrides = vec![
            ("SUPABASE_URL".to_string(), Some("reintroduced".to_string())),
            ("HOME".to_string(), None),
            ("TMPDIR".to_string(), Some("/custom".to_string())),
        ];
        let env = build_child_env(base(), Some(Path::new("/cfg/tmp")), &overrides);
        assert_eq!(env["SUPABASE_URL"], "reintroduced");
        assert!(!env.contains_key("HOME"));
        assert_eq!(env["TMPDIR"], "/custom");
        assert_eq!(env["TMP"], "/cfg/tmp");
    }
}
