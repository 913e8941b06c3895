//! Backend URL and anon-key resolution (control-plane.md §2.1,
//! runtime.md §1.3).

use std::path::Path;

use crate::error::{GatewayError, Result};
use crate::paths::EnvLookup;

/// Built-in backend URL: a local panorama-hub, unless the build sets
/// `PANORAMA_DEFAULT_SUPABASE_URL`.
pub const DEFAULT_SUPABASE_URL: &str = match option_env!("PANORAMA_DEFAULT_SUPABASE_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:54321",
};

/// Built-in anon key: none, unless the build sets `PANORAMA_DEFAULT_ANON_KEY`.
pub const DEFAULT_ANON_KEY: Option<&str> = option_env!("PANORAMA_DEFAULT_ANON_KEY");

/// What the backend is needed for; selects the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Pairing,
    Start,
}

/// The resolved backend endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub url: String,
    pub anon_key: String,
}

fn first_non_empty<'a>(
    candidates: impl IntoIterator<Item = Option<String>> + 'a,
) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

/// Resolve the backend: flag, then `PANORAMA_SUPABASE_*`, then
/// `SUPABASE_*` (`SUPABASE_ANON_KEY`, then `SUPABASE_PUBLISHABLE_KEY`), then
/// the config file's value (pass `config_values` only for `start`), then the
/// built-in default. `existing_config` is only used in the error details.
pub fn resolve_backend(
    url_flag: Option<&str>,
    key_flag: Option<&str>,
    env: EnvLookup<'_>,
    config_values: Option<(&str, &str)>,
    existing_config: Option<&Path>,
    purpose: Purpose,
) -> Result<Backend> {
    let url = first_non_empty([
        url_flag.map(str::to_string),
        env("PANORAMA_SUPABASE_URL"),
        env("SUPABASE_URL"),
        config_values.map(|(u, _)| u.to_string()),
        Some(DEFAULT_SUPABASE_URL.to_string()),
    ]);
    let anon_key = first_non_empty([
        key_flag.map(str::to_string),
        env("PANORAMA_SUPABASE_ANON_KEY"),
        env("SUPABASE_ANON_KEY"),
        env("SUPABASE_PUBLISHABLE_KEY"),
        config_values.map(|(_, k)| k.to_string()),
        DEFAULT_ANON_KEY.map(str::to_string),
    ]);
    match (url, anon_key) {
        (Some(url), Some(anon_key)) => Ok(Backend { url, anon_key }),
        (url, key) => {
            let missing = match (url.is_none(), key.is_none()) {
                (true, true) => "Supabase URL and Supabase anon key",
                (true, false) => "Supabase URL",
                _ => "Supabase anon key",
            };
            let existing = existing_config
                .filter(|p| p.exists())
                .map(|p| format!(" Existing config path: {}.", p.display()))
                .unwrap_or_default();
            let message = match purpose {
                Purpose::Pairing => "Missing Supabase configuration for pairing.",
                Purpose::Start => "Missing Supabase configuration for gateway start.",
            };
            Err(GatewayError::cli(
                message,
                format!(
                    "{missing} not found.{existing} Set PANORAMA_SUPABASE_URL and PANORAMA_SUPABASE_ANON_KEY (directly or via --env / --env-file), or pass --supabase-url and --anon-key, to point the gateway at your panorama-hub."
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_env_config_default() {
        let env = |k: &str| match k {
            "SUPABASE_URL" => Some("http://env".to_string()),
            "SUPABASE_PUBLISHABLE_KEY" => Some("pub".to_string()),
            _ => None,
        };
        let b = resolve_backend(
            None,
            None,
            &env,
            Some(("http://cfg", "cfgkey")),
            None,
            Purpose::Start,
        )
        .unwrap();
        assert_eq!(b.url, "http://env");
        assert_eq!(b.anon_key, "pub");
        let b = resolve_backend(
            Some(" http://flag "),
            Some("k"),
            &env,
            None,
            None,
            Purpose::Start,
        )
        .unwrap();
        assert_eq!(
            b,
            Backend {
                url: "http://flag".into(),
                anon_key: "k".into()
            }
        );
        let none = |_: &str| None;
        let b = resolve_backend(
            None,
            None,
            &none,
            Some(("", "cfgkey")),
            None,
            Purpose::Start,
        )
        .unwrap();
        assert_eq!(b.url, DEFAULT_SUPABASE_URL);
        assert_eq!(b.anon_key, "cfgkey");
    }

    #[test]
    fn missing_key_names_what_is_missing() {
        if DEFAULT_ANON_KEY.is_some() {
            return;
        }
        let none = |_: &str| None;
        let err = resolve_backend(None, None, &none, None, None, Purpose::Pairing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Missing Supabase configuration for pairing."
        );
        assert!(err
            .details()
            .unwrap()
            .starts_with("Supabase anon key not found."));
    }
}
