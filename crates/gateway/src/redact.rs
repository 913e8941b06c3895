//! Debug redaction (runtime.md §2.9): the sanitizer applied to model-run
//! debug info before it is written to `gateway_jobs.debug`.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

pub const REDACTED: &str = "[REDACTED]";
pub const LIMIT_OUTPUT: usize = 200_000;
pub const LIMIT_SHORT: usize = 2_000;
pub const LIMIT_COMMAND: usize = 512;
pub const LIMIT_PATH: usize = 1_024;
pub const LIMIT_ARG: usize = 256;
pub const MAX_ARGS: usize = 128;
pub const MAX_FILES: usize = 128;
pub const MAX_SUMMARY_ITEMS: usize = 20;
pub const MAX_SUMMARY_DEPTH: usize = 2;

/// Key names whose values are secrets (matched case-insensitively, also as
/// part of a longer key such as `github_token`).
const SECRET_KEY: &str = r"access[_-]?token|refresh[_-]?token|api[_-]?key|service[_-]?role[_-]?key|secret|password|authorization|cookie|session[_-]?id|session|token";

/// Words that make a `--flag` sensitive: its value (next argument) is redacted.
const SENSITIVE_FLAG_WORDS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "authorization",
    "cookie",
    "session",
    "prompt",
];
const SENSITIVE_FLAGS: &[&str] = &[
    "-p",
    "--prompt",
    "--json-schema",
    "--system-prompt",
    "--append-system-prompt",
];

struct Patterns {
    json_pair: Regex,
    key_value: Regex,
    bearer: Regex,
    jwt: Regex,
    sk: Regex,
    key_name: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let key = format!(r"[A-Za-z0-9_.-]*(?:{SECRET_KEY})[A-Za-z0-9_.-]*");
        Patterns {
            json_pair: Regex::new(&format!(r#"(?i)("{key}"\s*:\s*)"(?:[^"\\]|\\.)*""#))
                .expect("valid regex"),
            key_value: Regex::new(&format!(
                r#"(?i)\b({key})(\s*[=:]\s*)((?:bearer\s+)?[^\s,;&"'\]\[]+)"#
            ))
            .expect("valid regex"),
            bearer: Regex::new(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+").expect("valid regex"),
            jwt: Regex::new(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
                .expect("valid regex"),
            sk: Regex::new(r"\bsk-[A-Za-z0-9_-]{16,}").expect("valid regex"),
            key_name: Regex::new(&format!(r"(?i)^-*(?:{key})$")).expect("valid regex"),
        }
    })
}

/// Keep the first `limit` characters.
pub fn truncate_chars(s: &str, limit: usize) -> String {
    match s.char_indices().nth(limit) {
        Some((idx, _)) => s[..idx].to_string(),
        None => s.to_string(),
    }
}

/// Scrub secrets out of free text (JSON pairs, `key=value`/`key: value`,
/// bearer tokens, JWTs, `sk-` keys), then truncate to `limit` chars.
pub fn scrub_text(text: &str, limit: usize) -> String {
    let p = patterns();
    let s = p
        .json_pair
        .replace_all(text, format!("${{1}}\"{REDACTED}\""));
    let s = p
        .key_value
        .replace_all(&s, format!("${{1}}${{2}}{REDACTED}"));
    let s = p.bearer.replace_all(&s, format!("Bearer {REDACTED}"));
    let s = p.jwt.replace_all(&s, REDACTED);
    let s = p.sk.replace_all(&s, REDACTED);
    truncate_chars(&s, limit)
}

fn looks_secret(arg: &str) -> bool {
    let p = patterns();
    p.key_name.is_match(arg) || p.jwt.is_match(arg) || p.sk.is_match(arg) || p.bearer.is_match(arg)
}

fn is_sensitive_flag(name: &str) -> bool {
    let lower = name.to_lowercase();
    SENSITIVE_FLAGS.contains(&lower.as_str())
        || SENSITIVE_FLAG_WORDS.iter().any(|w| lower.contains(w))
}

/// Which arguments a caller wants redacted regardless of content.
#[derive(Debug, Clone, Default)]
pub struct ArgRedaction {
    pub indexes: Vec<usize>,
    pub last: bool,
}

/// Sanitize a command's arguments (§2.9 "Arguments").
pub fn sanitize_args(args: &[Value], extra: &ArgRedaction) -> Vec<String> {
    let mut out = Vec::new();
    let mut redact_next = false;
    let last = args.len().checked_sub(1);
    for (i, arg) in args.iter().take(MAX_ARGS).enumerate() {
        let Some(arg) = arg.as_str() else {
            out.push("[INVALID_ARG]".to_string());
            redact_next = false;
            continue;
        };
        let content = || format!("[REDACTED_CONTENT:{}]", arg.chars().count());
        if extra.indexes.contains(&i) || (extra.last && Some(i) == last) {
            out.push(content());
            redact_next = false;
            continue;
        }
        if redact_next {
            out.push(REDACTED.to_string());
            redact_next = false;
            continue;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg, None),
            };
            if is_sensitive_flag(name) {
                match value {
                    Some(_) => out.push(truncate_chars(&format!("{name}={REDACTED}"), LIMIT_ARG)),
                    None => {
                        out.push(truncate_chars(name, LIMIT_ARG));
                        redact_next = true;
                    }
                }
            } else {
                out.push(scrub_text(arg, LIMIT_ARG));
            }
            continue;
        }
        if arg.chars().any(char::is_whitespace)
            || arg.chars().count() > LIMIT_ARG
            || looks_secret(arg)
        {
            out.push(content());
        } else {
            out.push(arg.to_string());
        }
    }
    out
}

/// Sanitize an `error_summary` value: secret keys → `[REDACTED]`, strings
/// scrubbed, arrays capped at 20, nesting deeper than 2 → `[REDACTED_NESTED]`.
pub fn sanitize_summary(value: &Value) -> Value {
    fn walk(value: &Value, depth: usize) -> Value {
        match value {
            Value::String(s) => Value::String(scrub_text(s, LIMIT_SHORT)),
            Value::Array(items) if depth <= MAX_SUMMARY_DEPTH => Value::Array(
                items
                    .iter()
                    .take(MAX_SUMMARY_ITEMS)
                    .map(|v| walk(v, depth + 1))
                    .collect(),
            ),
            Value::Object(map) if depth <= MAX_SUMMARY_DEPTH => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if patterns().key_name.is_match(k) {
                            Value::String(REDACTED.to_string())
                        } else {
                            walk(v, depth + 1)
                        };
                        (truncate_chars(k, LIMIT_SHORT), v)
                    })
                    .collect(),
            ),
            Value::Array(_) | Value::Object(_) => Value::String("[REDACTED_NESTED]".to_string()),
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => value.clone(),
            Value::Number(_) => Value::Null,
            other => other.clone(),
        }
    }
    walk(value, 0)
}

fn finite_number(v: &Value) -> Option<Value> {
    v.as_f64().filter(|f| f.is_finite()).map(|_| v.clone())
}

/// Sanitize a model-run debug payload. Unknown fields are dropped, typed
/// fields with the wrong type are dropped, strings are scrubbed and
/// truncated, and `command_line` is rebuilt from the sanitized command and
/// arguments.
pub fn sanitize_debug_payload(payload: &Value, args_redaction: &ArgRedaction) -> Value {
    let mut out = Map::new();
    let Some(input) = payload.as_object() else {
        return Value::Object(out);
    };
    let string_field = |key: &str, limit: usize| {
        input
            .get(key)
            .and_then(Value::as_str)
            .map(|s| Value::String(scrub_text(s, limit)))
    };
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            out.insert(key.to_string(), v);
        }
    };
    put("provider_id", string_field("provider_id", LIMIT_SHORT));
    let command = string_field("command", LIMIT_COMMAND);
    put("command", command.clone());
    let args = input
        .get("args")
        .and_then(Value::as_array)
        .map(|a| sanitize_args(a, args_redaction));
    if let Some(args) = &args {
        put(
            "args",
            Some(Value::Array(
                args.iter().cloned().map(Value::String).collect(),
            )),
        );
    }
    let command_line = match (&command, &args) {
        (Some(Value::String(cmd)), args) => {
            let mut parts = vec![cmd.clone()];
            parts.extend(args.iter().flatten().cloned());
            Some(Value::String(truncate_chars(
                &parts.join(" "),
                LIMIT_OUTPUT,
            )))
        }
        _ => string_field("command_line", LIMIT_OUTPUT),
    };
    put("command_line", command_line);
    put("work_dir", string_field("work_dir", LIMIT_PATH));
    for key in [
        "prompt_chars",
        "json_schema_chars",
        "timeout_ms",
        "stdout_bytes",
        "stderr_bytes",
        "exit_code",
        "duration_ms",
    ] {
        put(key, input.get(key).and_then(finite_number));
    }
    put(
        "output_mode",
        input
            .get("output_mode")
            .and_then(Value::as_str)
            .filter(|m| matches!(*m, "stdout-json" | "file-json" | "stream-json"))
            .map(|m| Value::String(m.to_string())),
    );
    put("output_path", string_field("output_path", LIMIT_PATH));
    put(
        "files",
        input.get("files").and_then(Value::as_array).map(|files| {
            Value::Array(
                files
                    .iter()
                    .filter_map(Value::as_str)
                    .take(MAX_FILES)
                    .map(|f| Value::String(scrub_text(f, LIMIT_PATH)))
                    .collect(),
            )
        }),
    );
    put("stdout", string_field("stdout", LIMIT_OUTPUT));
    put("stderr", string_field("stderr", LIMIT_OUTPUT));
    for key in ["stdout_truncated", "stderr_truncated", "timed_out"] {
        put(key, input.get(key).filter(|v| v.is_boolean()).cloned());
    }
    put(
        "error_summary",
        input.get("error_summary").map(sanitize_summary),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";

    #[test]
    fn scrubs_all_secret_shapes() {
        let text = format!(
            r#"{{"access_token": "abc", "name": "ok"}} password=hunter2 Authorization: Bearer xyz123 jwt {JWT} key sk-abcdefghijklmnop1234"#
        );
        let s = scrub_text(&text, LIMIT_OUTPUT);
        assert!(s.contains(r#""access_token": "[REDACTED]""#), "{s}");
        assert!(s.contains(r#""name": "ok""#));
        assert!(s.contains("password=[REDACTED]"));
        assert!(!s.contains("xyz123"), "{s}");
        assert!(!s.contains("hunter2"));
        assert!(!s.contains(JWT));
        assert!(!s.contains("sk-abcdefghijklmnop1234"));
        assert_eq!(scrub_text("Bearer tok.en", 100), "Bearer [REDACTED]");
        assert_eq!(scrub_text("plain text", 5), "plain");
    }

    #[test]
    fn args_follow_the_rules() {
        let args = json!([
            "--model",
            "opus",
            "--api-key",
            "k1",
            "--token=abc",
            "-p",
            "hello",
            "two words",
            JWT,
            5,
            "file.txt",
            "--verbose",
            "last prompt"
        ]);
        let out = sanitize_args(
            args.as_array().unwrap(),
            &ArgRedaction {
                indexes: vec![],
                last: true,
            },
        );
        assert_eq!(
            out,
            vec![
                "--model",
                "opus",
                "--api-key",
                "[REDACTED]",
                "--token=[REDACTED]",
                "-p",
                "[REDACTED]",
                "[REDACTED_CONTENT:9]",
                format!("[REDACTED_CONTENT:{}]", JWT.len()).as_str(),
                "[INVALID_ARG]",
                "file.txt",
                "--verbose",
                "[REDACTED_CONTENT:11]",
            ]
        );
        let many: Vec<Value> = (0..200).map(|i| json!(format!("a{i}"))).collect();
        assert_eq!(
            sanitize_args(&many, &ArgRedaction::default()).len(),
            MAX_ARGS
        );
    }

    #[test]
    fn payload_keeps_only_allowed_typed_fields() {
        let payload = json!({
            "provider_id": "codex",
            "command": "codex",
            "args": ["exec", "--prompt", "secret prompt"],
            "reasoning_effort": "high",
            "timeout_ms": 1000,
            "exit_code": "0",
            "timed_out": "no",
            "stdout_truncated": false,
            "output_mode": "bogus",
            "files": ["a", 1, "b"],
            "stdout": "token=abc",
            "error_summary": {"message": "bad", "api_key": "x", "deep": {"a": {"b": {"c": 1}}}, "list": (0..30).collect::<Vec<_>>()}
        });
        let out = sanitize_debug_payload(&payload, &ArgRedaction::default());
        assert!(out.get("reasoning_effort").is_none());
        assert!(out.get("exit_code").is_none());
        assert!(out.get("timed_out").is_none());
        assert!(out.get("output_mode").is_none());
        assert_eq!(out["timeout_ms"], 1000);
        assert_eq!(out["stdout_truncated"], false);
        assert_eq!(out["files"], json!(["a", "b"]));
        assert_eq!(out["stdout"], "token=[REDACTED]");
        assert_eq!(out["command_line"], "codex exec --prompt [REDACTED]");
        let summary = &out["error_summary"];
        assert_eq!(summary["api_key"], "[REDACTED]");
        assert_eq!(summary["message"], "bad");
        assert_eq!(summary["deep"]["a"]["b"], "[REDACTED_NESTED]");
        assert_eq!(summary["list"].as_array().unwrap().len(), 20);
    }
}
