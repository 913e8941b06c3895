//! `.env` loading (runtime.md §1.4) for `pair`, `start` and `doctor`.

use std::path::{Path, PathBuf};

use crate::error::{GatewayError, Result};
use crate::paths::EnvLookup;

/// Environment names accepted by `--env`.
pub const ENV_NAMES: [&str; 5] = ["local", "dev", "test", "stage", "prod"];

/// Normalize an env name: trim, lowercase, `production`→`prod`,
/// `development`→`local`; anything unknown silently becomes `local`.
pub fn normalize_env_name(name: &str) -> &'static str {
    let name = name.trim().to_lowercase();
    let name = match name.as_str() {
        "production" => "prod",
        "development" => "local",
        other => other,
    };
    ENV_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("local")
}

/// Where the env file is, and whether the user asked for it explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileChoice {
    pub path: PathBuf,
    pub explicit: bool,
}

/// Walk up from `cwd` to the first directory holding `pnpm-workspace.yaml`;
/// `cwd` itself if there is none.
pub fn repo_root(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| dir.join("pnpm-workspace.yaml").is_file())
        .unwrap_or(cwd)
        .to_path_buf()
}

/// Work out which env file to load: `--env-file` / `PANORAMA_ENV_FILE` /
/// `PANORAMA_ENV_PATH`, else `.env` or `.env.<name>` in the repo root, the
/// name coming from `--env` / `PANORAMA_ENV` / `ENVIRONMENT`.
pub fn choose_env_file(
    env_flag: Option<&str>,
    env_file_flag: Option<&Path>,
    env: EnvLookup<'_>,
    cwd: &Path,
) -> EnvFileChoice {
    let file = env_file_flag
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .or_else(|| env("PANORAMA_ENV_FILE").map(PathBuf::from))
        .or_else(|| env("PANORAMA_ENV_PATH").map(PathBuf::from));
    if let Some(file) = file {
        let path = if file.is_absolute() {
            file
        } else {
            cwd.join(file)
        };
        return EnvFileChoice {
            path,
            explicit: true,
        };
    }
    let name = env_flag
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or_else(|| env("PANORAMA_ENV"))
        .or_else(|| env("ENVIRONMENT"));
    let explicit = name.is_some();
    let name = normalize_env_name(name.as_deref().unwrap_or("local"));
    let file_name = if name == "local" {
        ".env".to_string()
    } else {
        format!(".env.{name}")
    };
    EnvFileChoice {
        path: repo_root(cwd).join(file_name),
        explicit,
    }
}

/// Parse dotenv text: `KEY=VALUE` lines, optional `export `, `#` comments,
/// single quotes (literal), double quotes (`\n`, `\r`, `\t`, `\"`, `\\`
/// escapes, may span lines), backquotes; unquoted values end at ` #`.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let text = text.replace("\r\n", "\n");
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = after;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            continue;
        }
        let value = value.trim_start();
        let quote = value
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\'' | '`'));
        let parsed = if let Some(q) = quote {
            // The quoted value may continue on following lines.
            let mut body = value[1..].to_string();
            loop {
                if let Some(end) = find_closing(&body, q) {
                    body.truncate(end);
                    break;
                }
                if rest.is_empty() {
                    break;
                }
                let (next, after) = rest.split_once('\n').unwrap_or((rest, ""));
                body.push('\n');
                body.push_str(next);
                rest = after;
            }
            if q == '"' {
                unescape_double(&body)
            } else {
                body
            }
        } else {
            let end = value.find(" #").unwrap_or(value.len());
            value[..end].trim().to_string()
        };
        out.push((key.to_string(), parsed));
    }
    out
}

fn find_closing(body: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && q == '"' {
            escaped = true;
        } else if c == q {
            return Some(i);
        }
    }
    None
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Load the chosen env file into the process environment without
/// overriding variables that are already set. Returns the file loaded, if
/// any. A missing file is an error only when it was asked for explicitly.
///
/// Must run before any other thread starts (it calls `std::env::set_var`).
pub fn load_env_file(
    env_flag: Option<&str>,
    env_file_flag: Option<&Path>,
    cwd: &Path,
) -> Result<Option<PathBuf>> {
    let choice = choose_env_file(env_flag, env_file_flag, &crate::paths::process_env, cwd);
    if !choice.path.is_file() {
        if choice.explicit {
            return Err(GatewayError::cli(
                "Environment file not found.",
                format!(
                    "Path: {}. Create the file or pass another one with --env-file.",
                    choice.path.display()
                ),
            ));
        }
        return Ok(None);
    }
    let text = std::fs::read_to_string(&choice.path)
        .map_err(|e| GatewayError::io("Could not read environment file", &choice.path, e))?;
    for (key, value) in parse_dotenv(&text) {
        if std::env::var_os(&key).is_none() {
            std::env::set_var(key, value);
        }
    }
    Ok(Some(choice.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize_env_name(" Production "), "prod");
        assert_eq!(normalize_env_name("development"), "local");
        assert_eq!(normalize_env_name("stage"), "stage");
        assert_eq!(normalize_env_name("weird"), "local");
    }

    #[test]
    fn parses_common_dotenv_forms() {
        let text = "# c\nexport A=1\nB = two words # comment\nC='lit\\n'\nD=\"x\\ny\"\nE=\"multi\nline\"\nbad line\nF=\n";
        let parsed = parse_dotenv(text);
        let get = |k: &str| {
            parsed
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("B").as_deref(), Some("two words"));
        assert_eq!(get("C").as_deref(), Some("lit\\n"));
        assert_eq!(get("D").as_deref(), Some("x\ny"));
        assert_eq!(get("E").as_deref(), Some("multi\nline"));
        assert_eq!(get("F").as_deref(), Some(""));
        assert_eq!(parsed.len(), 6);
    }

    #[test]
    fn chooses_file_by_flag_env_and_repo_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("pnpm-workspace.yaml"), "").unwrap();
        let sub = root.join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let none = |_: &str| None;
        let c = choose_env_file(None, None, &none, &sub);
        assert_eq!(c.path, root.join(".env"));
        assert!(!c.explicit);
        let c = choose_env_file(Some("prod"), None, &none, &sub);
        assert_eq!(c.path, root.join(".env.prod"));
        assert!(c.explicit);
        let c = choose_env_file(Some("prod"), Some(Path::new("x.env")), &none, &sub);
        assert_eq!(c.path, sub.join("x.env"));
        let from_env = |k: &str| (k == "ENVIRONMENT").then(|| "dev".to_string());
        let c = choose_env_file(None, None, &from_env, &sub);
        assert_eq!(c.path, root.join(".env.dev"));
    }
}
