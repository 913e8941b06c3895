//! Job payloads, the handler-outcome envelope and the final job status rules
//! (control-plane §8).
//!
//! Parsers mirror what the reference gateway accepts (aliases, trimming,
//! defaults) and report the first problem as a [`PayloadError`] that carries
//! both a developer-facing description and the exact user-facing texts the
//! job result must contain. Shell payloads are split into several parsers
//! because the spec interleaves payload checks with other checks (session
//! lookup, resource validation); the gateway calls them in spec order.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;

use crate::capabilities::ProviderId;
use crate::remote_shell::ShellAccess;
use crate::status::{wire_enum, JobStatus, JobType};

/// What is wrong with a payload field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadProblem {
    /// The payload itself is not a JSON object.
    NotAnObject {
        found: &'static str,
    },
    Missing,
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    Invalid {
        reason: &'static str,
    },
}

impl fmt::Display for PayloadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadProblem::NotAnObject { found } => {
                write!(f, "payload must be a JSON object (found {found})")
            }
            PayloadProblem::Missing => f.write_str("is missing"),
            PayloadProblem::WrongType { expected, found } => {
                write!(f, "must be {expected} (found {found})")
            }
            PayloadProblem::Invalid { reason } => write!(f, "is invalid: {reason}"),
        }
    }
}

/// A payload the gateway must refuse. The job completes `failed` with
/// `result = {"message": result_message}` and `error = job_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job payload: `{field}` {problem}")]
pub struct PayloadError {
    pub field: &'static str,
    pub problem: PayloadProblem,
    /// `result.message`, exactly as the spec quotes it.
    pub result_message: &'static str,
    /// The job's `error` column (usually equal to `result_message`).
    pub job_error: &'static str,
}

impl PayloadError {
    fn new(field: &'static str, problem: PayloadProblem, message: &'static str) -> Self {
        PayloadError {
            field,
            problem,
            result_message: message,
            job_error: message,
        }
    }

    fn with_error(mut self, job_error: &'static str) -> Self {
        self.job_error = job_error;
        self
    }

    /// `{"message": result_message}`; handlers may add fields (e.g. `resource_id`).
    pub fn result(&self) -> Value {
        json!({ "message": self.result_message })
    }
}

/// JSON type names used in error descriptions.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `job.payload ?? {}`: null counts as empty; any other non-object is refused
/// with the messages of the first required field.
fn payload_object<'a>(
    payload: &'a Value,
    field: &'static str,
    message: &'static str,
) -> Result<std::borrow::Cow<'a, Map<String, Value>>, PayloadError> {
    match payload {
        Value::Object(map) => Ok(std::borrow::Cow::Borrowed(map)),
        Value::Null => Ok(std::borrow::Cow::Owned(Map::new())),
        other => Err(PayloadError::new(
            field,
            PayloadProblem::NotAnObject {
                found: json_type_name(other),
            },
            message,
        )),
    }
}

/// First string among `keys` (aliases), JavaScript `typeof === 'string'` style.
fn first_string<'a>(map: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|key| map.get(*key).and_then(Value::as_str))
}

/// A required string with aliases; empty counts as missing (JavaScript `!value`).
fn required_string(
    map: &Map<String, Value>,
    keys: &[&'static str],
    message: &'static str,
) -> Result<String, PayloadError> {
    let field = keys[0];
    match first_string(map, keys) {
        Some(value) if !value.is_empty() => Ok(value.to_string()),
        Some(_) => Err(PayloadError::new(field, PayloadProblem::Missing, message)),
        None => match keys.iter().find_map(|key| map.get(*key)) {
            None | Some(Value::Null) => {
                Err(PayloadError::new(field, PayloadProblem::Missing, message))
            }
            Some(other) => Err(PayloadError::new(
                field,
                PayloadProblem::WrongType {
                    expected: "a string",
                    found: json_type_name(other),
                },
                message,
            )),
        },
    }
}

/// A required string that must be non-blank; returned trimmed.
fn required_trimmed(
    map: &Map<String, Value>,
    key: &'static str,
    message: &'static str,
) -> Result<String, PayloadError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(PayloadError::new(key, PayloadProblem::Missing, message))
        }
        Some(other) => Err(PayloadError::new(
            key,
            PayloadProblem::WrongType {
                expected: "a string",
                found: json_type_name(other),
            },
            message,
        )),
    }
}

fn optional_trimmed(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// JavaScript `Number.parseInt(value, 10)` for strings, `Math.trunc` for numbers.
fn integer_like(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.trunc() as i64)
        }),
        Value::String(s) => {
            let s = s.trim_start();
            let (sign, digits) = match s.as_bytes().first() {
                Some(b'-') => (-1, &s[1..]),
                Some(b'+') => (1, &s[1..]),
                _ => (1, s),
            };
            let end = digits
                .bytes()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse::<i64>().ok().map(|n| sign * n)
        }
        _ => None,
    }
}

/// `coercePositiveInteger(value, fallback, {min, max})`.
pub fn coerce_integer_in_range(value: Option<&Value>, fallback: i64, min: i64, max: i64) -> i64 {
    integer_like(value).map_or(fallback, |n| n.clamp(min, max))
}

/// Canonical 8-4-4-4-12 hex UUID, version digit 1–5, variant 8/9/a/b
/// (case-insensitive), as required for run ids (§10.3).
pub fn is_canonical_uuid(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *b == b'-',
            14 => (b'1'..=b'5').contains(b),
            19 => matches!(b.to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b'),
            _ => b.is_ascii_hexdigit(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// §10.3: `payload.run_id` if it is a UUID, else `input.run_id` if it is a
/// UUID, else `None` (the caller generates a fresh v4). Values are trimmed.
pub fn resolve_run_id(payload_run_id: Option<&str>, input_run_id: Option<&str>) -> Option<String> {
    [payload_run_id, input_run_id]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|id| is_canonical_uuid(id))
        .map(str::to_string)
}

// ---------------------------------------------------------------- subagents

pub const MSG_MISSING_SUBAGENT_ID: &str = "Missing subagent_id in payload";
pub const DEFAULT_CANCEL_REASON: &str = "Cancelled";

/// §8.3 `subagent_run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubagentRunPayload {
    pub subagent_id: String,
    /// Raw requested run id (`run_id` or `runId`); see [`resolve_run_id`].
    pub run_id: Option<String>,
    /// Logging only.
    pub subagent_type: Option<String>,
}

impl SubagentRunPayload {
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let map = payload_object(payload, "subagent_id", MSG_MISSING_SUBAGENT_ID)?;
        Ok(SubagentRunPayload {
            subagent_id: required_string(
                &map,
                &["subagent_id", "subagentId"],
                MSG_MISSING_SUBAGENT_ID,
            )?,
            run_id: first_string(&map, &["run_id", "runId"]).map(str::to_string),
            subagent_type: first_string(&map, &["subagent_type"]).map(str::to_string),
        })
    }
}

/// §8.4 `subagent_cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubagentCancelPayload {
    pub subagent_id: String,
    /// Trimmed; blank counts as not given.
    pub run_id: Option<String>,
    /// Trimmed; [`DEFAULT_CANCEL_REASON`] when blank or absent.
    pub reason: String,
}

impl SubagentCancelPayload {
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let map = payload_object(payload, "subagent_id", MSG_MISSING_SUBAGENT_ID)?;
        Ok(SubagentCancelPayload {
            subagent_id: required_string(
                &map,
                &["subagent_id", "subagentId"],
                MSG_MISSING_SUBAGENT_ID,
            )?,
            run_id: first_string(&map, &["run_id", "runId"])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            reason: optional_trimmed(&map, "reason")
                .unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_string()),
        })
    }
}

// ---------------------------------------------------------------- model_run

pub const MODEL_RUN_DEFAULT_TIMEOUT_MS: u64 = 110_000;
/// `model` value meaning "no `--model` flag".
pub const DEFAULT_MODEL_SENTINEL: &str = "__default__";
pub const MSG_MODEL_RUN_MISSING_PROMPT_OR_MODEL: &str =
    "Missing prompt or model for gateway model run";
pub const ERR_MODEL_RUN_MISSING_PROMPT_OR_MODEL: &str = "Missing prompt or model";
pub const MSG_MODEL_RUN_MISSING_SCHEMA: &str = "Missing json_schema for gateway model run";
pub const ERR_MODEL_RUN_MISSING_SCHEMA: &str = "Missing json_schema";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Json,
    Text,
}
wire_enum!(OutputFormat { Json => "json", Text => "text" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}
wire_enum!(ReasoningEffort { Low => "low", Medium => "medium", High => "high" });

/// Provider inferred from a model name when the payload names none (§8.2).
pub fn infer_provider_from_model(model: &str) -> ProviderId {
    if model.starts_with("openai/") || model.starts_with("gpt-") || model.contains("codex") {
        ProviderId::Codex
    } else if model.starts_with("google/") || model.starts_with("gemini") {
        ProviderId::Gemini
    } else {
        ProviderId::ClaudeCode
    }
}

/// §8.2 `model_run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRunPayload {
    pub prompt: String,
    pub model: String,
    pub provider: ProviderId,
    pub output_format: OutputFormat,
    /// Present whenever `output_format` is `json`.
    pub json_schema: Option<Value>,
    pub append_system_prompt: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub timeout_ms: u64,
}

impl ModelRunPayload {
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let missing = |e: PayloadError| e.with_error(ERR_MODEL_RUN_MISSING_PROMPT_OR_MODEL);
        let map = payload_object(payload, "prompt", MSG_MODEL_RUN_MISSING_PROMPT_OR_MODEL)
            .map_err(missing)?;
        let prompt = required_string(&map, &["prompt"], MSG_MODEL_RUN_MISSING_PROMPT_OR_MODEL)
            .map_err(missing)?;
        let model = required_string(&map, &["model"], MSG_MODEL_RUN_MISSING_PROMPT_OR_MODEL)
            .map_err(missing)?;
        let provider = first_string(&map, &["provider"])
            .and_then(ProviderId::parse)
            .unwrap_or_else(|| infer_provider_from_model(&model));
        // Anything other than "text" keeps the default, json.
        let output_format = match first_string(&map, &["output_format"]) {
            Some("text") => OutputFormat::Text,
            _ => OutputFormat::Json,
        };
        let json_schema = match map.get("json_schema") {
            Some(Value::Object(schema)) => Some(Value::Object(schema.clone())),
            None | Some(Value::Null) if output_format == OutputFormat::Json => {
                return Err(PayloadError::new(
                    "json_schema",
                    PayloadProblem::Missing,
                    MSG_MODEL_RUN_MISSING_SCHEMA,
                )
                .with_error(ERR_MODEL_RUN_MISSING_SCHEMA))
            }
            Some(other) if output_format == OutputFormat::Json => {
                return Err(PayloadError::new(
                    "json_schema",
                    PayloadProblem::WrongType {
                        expected: "an object",
                        found: json_type_name(other),
                    },
                    MSG_MODEL_RUN_MISSING_SCHEMA,
                )
                .with_error(ERR_MODEL_RUN_MISSING_SCHEMA))
            }
            _ => None,
        };
        let timeout_ms = map
            .get("timeout_ms")
            .and_then(Value::as_f64)
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .map_or(MODEL_RUN_DEFAULT_TIMEOUT_MS, |ms| (ms.ceil() as u64).max(1));
        Ok(ModelRunPayload {
            prompt,
            model,
            provider,
            output_format,
            json_schema,
            append_system_prompt: first_string(&map, &["append_system_prompt"]).map(str::to_string),
            reasoning_effort: first_string(&map, &["reasoning_effort"])
                .and_then(ReasoningEffort::parse),
            timeout_ms,
        })
    }

    /// The `--model` value, or `None` for [`DEFAULT_MODEL_SENTINEL`].
    pub fn model_flag(&self) -> Option<&str> {
        (self.model != DEFAULT_MODEL_SENTINEL).then_some(self.model.as_str())
    }
}

// ---------------------------------------------------------------- shell jobs

pub const MSG_INVALID_SHELL_ACTION: &str = "Invalid shell session action";
pub const MSG_MISSING_RESOURCE_ID: &str = "Missing resource_id in payload";
pub const MSG_MISSING_SESSION_ID: &str = "Missing session_id in payload";
pub const MSG_MISSING_INPUT: &str = "Missing input in payload";
pub const MSG_INVALID_SHELL_ARGS: &str = "Invalid shell_args in payload (expected string array)";
pub const ERR_INVALID_SHELL_ARGS: &str = "Invalid shell_args in payload";
pub const MSG_INVALID_ENV: &str = "Invalid env in payload (expected string/number/boolean map)";
pub const ERR_INVALID_ENV: &str = "Invalid env in payload";
pub const MSG_MISSING_COMMAND: &str = "Missing command in payload";

pub const SHELL_READ_DEFAULT_MAX_EVENTS: i64 = 200;
pub const SHELL_READ_MAX_EVENTS_LIMIT: i64 = 1000;
pub const SHELL_EXEC_DEFAULT_TIMEOUT_MS: i64 = 30_000;
pub const SHELL_EXEC_MAX_TIMEOUT_MS: i64 = 600_000;

/// `shell_session` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellSessionAction {
    Open,
    Write,
    Read,
    Close,
    Status,
}
wire_enum!(ShellSessionAction {
    Open => "open",
    Write => "write",
    Read => "read",
    Close => "close",
    Status => "status",
});

impl ShellSessionAction {
    /// Trimmed, case-insensitive.
    pub fn normalize(raw: &str) -> Option<Self> {
        Self::parse(&raw.trim().to_lowercase())
    }

    /// `read` and `status` need read access; the rest need write access.
    pub fn required_access(self) -> ShellAccess {
        match self {
            ShellSessionAction::Read | ShellSessionAction::Status => ShellAccess::Read,
            _ => ShellAccess::Write,
        }
    }
}

/// `resource_id`, trimmed and non-empty (both shell job types).
pub fn parse_resource_id(payload: &Value) -> Result<String, PayloadError> {
    let map = payload_object(payload, "resource_id", MSG_MISSING_RESOURCE_ID)?;
    required_trimmed(&map, "resource_id", MSG_MISSING_RESOURCE_ID)
}

/// `session_id` for actions on an existing session, trimmed and non-empty.
pub fn parse_session_id(payload: &Value) -> Result<String, PayloadError> {
    let map = payload_object(payload, "session_id", MSG_MISSING_SESSION_ID)?;
    required_trimmed(&map, "session_id", MSG_MISSING_SESSION_ID)
}

/// JavaScript `String(value)` for env numbers (ECMA-262 Number::toString):
/// integers print without `.0`, `-0` prints `0`, positional notation for
/// 1e-6 <= |n| < 1e21, otherwise exponential with a signed exponent
/// (`1e+21`, `1.5e-7`); integers beyond 2^53 are first rounded to the
/// nearest double, as `JSON.parse` does. serde_json's own formatting differs
/// on `-0`, on exponents (`1e21`) and on small numbers (`1.5e-6` vs
/// `0.0000015`).
fn js_number_string(n: &serde_json::Number) -> String {
    // JavaScript numbers are doubles: only integers up to 2^53 are exact.
    const MAX_SAFE: u64 = 1 << 53;
    if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE) {
        return i.to_string();
    }
    let Some(f) = n.as_f64().filter(|f| f.is_finite()) else {
        return n.to_string();
    };
    if f == 0.0 {
        return "0".to_string();
    }
    // `{:e}` prints the shortest digits that round-trip, like JavaScript.
    let sci = format!("{:e}", f.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return n.to_string();
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return n.to_string();
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // The decimal point sits after `n` digits: value = 0.digits × 10^n.
    let point = exp + 1;
    let body = if k <= point && point <= 21 {
        format!("{digits}{}", "0".repeat((point - k) as usize))
    } else if 0 < point && point <= 21 {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    } else if -6 < point && point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let sign = if point > 0 { '+' } else { '-' };
        format!("{first}{dot}{rest}e{sign}{}", (point - 1).abs())
    };
    if f < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// `open` fields, checked after resource validation and the session cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOpenPayload {
    /// Trimmed; `None` means the default (`$SHELL`, then `/bin/bash`).
    pub shell: Option<String>,
    pub shell_args: Vec<String>,
    /// Values stringified like JavaScript `String(v)`.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Requested id; `None` means "generate a random UUID".
    pub session_id: Option<String>,
}

impl ShellOpenPayload {
    /// `shell_args` is checked before `env`, as in the seed.
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let map = payload_object(payload, "shell_args", MSG_INVALID_SHELL_ARGS)?;
        let args_error = |problem| {
            PayloadError::new("shell_args", problem, MSG_INVALID_SHELL_ARGS)
                .with_error(ERR_INVALID_SHELL_ARGS)
        };
        let shell_args = match map.get("shell_args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        args_error(PayloadProblem::WrongType {
                            expected: "an array of strings",
                            found: json_type_name(item),
                        })
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(args_error(PayloadProblem::WrongType {
                    expected: "an array of strings",
                    found: json_type_name(other),
                }))
            }
        };
        let env_error = |problem| {
            PayloadError::new("env", problem, MSG_INVALID_ENV).with_error(ERR_INVALID_ENV)
        };
        let env = match map.get("env") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(vars)) => vars
                .iter()
                .map(|(key, value)| match value {
                    Value::String(s) => Ok((key.clone(), s.clone())),
                    Value::Number(n) => Ok((key.clone(), js_number_string(n))),
                    Value::Bool(b) => Ok((key.clone(), b.to_string())),
                    other => Err(env_error(PayloadProblem::WrongType {
                        expected: "a string, number or boolean",
                        found: json_type_name(other),
                    })),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(env_error(PayloadProblem::WrongType {
                    expected: "an object",
                    found: json_type_name(other),
                }))
            }
        };
        Ok(ShellOpenPayload {
            shell: optional_trimmed(&map, "shell"),
            shell_args,
            env,
            cwd: optional_trimmed(&map, "cwd"),
            session_id: optional_trimmed(&map, "session_id"),
        })
    }
}

/// `write` fields (after the session and resource checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellWritePayload {
    /// Sent as is; an empty string is valid input.
    pub input: String,
    /// Only boolean `true` appends `\n`.
    pub append_newline: bool,
}

impl ShellWritePayload {
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let map = payload_object(payload, "input", MSG_MISSING_INPUT)?;
        let input = match map.get("input") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(PayloadError::new(
                    "input",
                    PayloadProblem::Missing,
                    MSG_MISSING_INPUT,
                ))
            }
            Some(other) => {
                return Err(PayloadError::new(
                    "input",
                    PayloadProblem::WrongType {
                        expected: "a string",
                        found: json_type_name(other),
                    },
                    MSG_MISSING_INPUT,
                ))
            }
        };
        Ok(ShellWritePayload {
            input,
            append_newline: map.get("append_newline") == Some(&Value::Bool(true)),
        })
    }

    /// The exact bytes written to the shell's stdin.
    pub fn data(&self) -> String {
        if self.append_newline {
            format!("{}\n", self.input)
        } else {
            self.input.clone()
        }
    }
}

/// `read` window; never fails (bad values fall back to defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellReadPayload {
    /// ≥ 0, default 0.
    pub since_sequence: i64,
    /// 1..=1000, default 200.
    pub max_events: i64,
}

impl ShellReadPayload {
    pub fn parse(payload: &Value) -> Self {
        ShellReadPayload {
            since_sequence: coerce_integer_in_range(payload.get("since_sequence"), 0, 0, i64::MAX),
            max_events: coerce_integer_in_range(
                payload.get("max_events"),
                SHELL_READ_DEFAULT_MAX_EVENTS,
                1,
                SHELL_READ_MAX_EVENTS_LIMIT,
            ),
        }
    }
}

/// §8.6 `shell_exec` \[LATER\]. Call [`parse_resource_id`] and validate the
/// resource first; this parser then checks `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellExecPayload {
    pub resource_id: String,
    pub command: String,
    /// Clamped to 1..=600 000, default 30 000.
    pub timeout_ms: i64,
    pub resource_uri: Option<String>,
    pub requested_at: Option<String>,
    /// Env name → team secret name; honoured only on managed VMs. Kept raw:
    /// its validation is part of secret resolution.
    pub secret_env: Option<Value>,
}

impl ShellExecPayload {
    pub fn parse(payload: &Value) -> Result<Self, PayloadError> {
        let resource_id = parse_resource_id(payload)?;
        let map = payload_object(payload, "command", MSG_MISSING_COMMAND)?;
        let command = match map.get("command") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(PayloadError::new(
                    "command",
                    PayloadProblem::Missing,
                    MSG_MISSING_COMMAND,
                ))
            }
            Some(other) => {
                return Err(PayloadError::new(
                    "command",
                    PayloadProblem::WrongType {
                        expected: "a string",
                        found: json_type_name(other),
                    },
                    MSG_MISSING_COMMAND,
                ))
            }
        };
        Ok(ShellExecPayload {
            resource_id,
            command,
            timeout_ms: coerce_integer_in_range(
                map.get("timeout_ms"),
                SHELL_EXEC_DEFAULT_TIMEOUT_MS,
                1,
                SHELL_EXEC_MAX_TIMEOUT_MS,
            ),
            resource_uri: first_string(&map, &["resource_uri"]).map(str::to_string),
            requested_at: first_string(&map, &["requested_at"]).map(str::to_string),
            secret_env: map.get("secret_env").filter(|v| !v.is_null()).cloned(),
        })
    }
}

/// A `shell_session` action: the spec's five plus `resize` (our
/// extension: set the PTY size; needs write access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellJobAction {
    Spec(ShellSessionAction),
    Resize,
}

impl ShellJobAction {
    /// Trimmed and case-insensitive; `None` → `Invalid shell session action`.
    pub fn parse(payload: &Value) -> Option<Self> {
        let raw = payload.get("action")?.as_str()?;
        if raw.trim().eq_ignore_ascii_case("resize") {
            return Some(ShellJobAction::Resize);
        }
        ShellSessionAction::normalize(raw).map(ShellJobAction::Spec)
    }

    pub fn required_access(self) -> ShellAccess {
        match self {
            ShellJobAction::Spec(a) => a.required_access(),
            ShellJobAction::Resize => ShellAccess::Write,
        }
    }
}

/// Largest `cols`/`rows` a `resize` accepts.
pub const MAX_RESIZE_DIMENSION: i64 = 1000;

/// `resize` fields: `cols` (or `columns`) and `rows` (or `lines`), numbers
/// or numeric strings, each 1..=[`MAX_RESIZE_DIMENSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellResizePayload {
    pub cols: u16,
    pub rows: u16,
}

impl ShellResizePayload {
    /// `None`: a dimension is missing or out of range.
    pub fn parse(payload: &Value) -> Option<Self> {
        let dim = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| payload.get(*k).filter(|v| !v.is_null()))
                .and_then(|v| match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                })
                .filter(|n| (1..=MAX_RESIZE_DIMENSION).contains(n))
                .and_then(|n| u16::try_from(n).ok())
        };
        Some(ShellResizePayload {
            cols: dim(&["cols", "columns"])?,
            rows: dim(&["rows", "lines"])?,
        })
    }
}

/// A `shell_session` job's payload, parsed once when the job is claimed.
/// Runtime.md §5.2–§5.5 check its parts between the gate's steps (machine
/// control, action, `resource_id`, the resource, `session_id`, then the
/// action's own fields), so each keeps its own outcome and the handler
/// reports the first failing one at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct ShellSessionJob {
    /// `None`: `Invalid shell session action`.
    pub action: Option<ShellJobAction>,
    pub resource_id: Result<String, PayloadError>,
    /// Actions on an existing session.
    pub session_id: Result<String, PayloadError>,
    pub open: Result<ShellOpenPayload, PayloadError>,
    pub write: Result<ShellWritePayload, PayloadError>,
    pub read: ShellReadPayload,
    /// `None`: invalid dimensions.
    pub resize: Option<ShellResizePayload>,
}

impl ShellSessionJob {
    pub fn parse(payload: &Value) -> Self {
        ShellSessionJob {
            action: ShellJobAction::parse(payload),
            resource_id: parse_resource_id(payload),
            session_id: parse_session_id(payload),
            open: ShellOpenPayload::parse(payload),
            write: ShellWritePayload::parse(payload),
            read: ShellReadPayload::parse(payload),
            resize: ShellResizePayload::parse(payload),
        }
    }
}

/// A `shell_exec` job's payload, parsed once when the job is claimed.
/// §8.6 checks its fields between the gate's steps (machine control, then
/// `resource_id`, then the resource, then `command`), so each part keeps its
/// own outcome and the handler reports the first failing one at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct ShellExecJob {
    /// Step 3: `Missing resource_id in payload`.
    pub resource_id: Result<String, PayloadError>,
    /// Step 5 onwards: `Missing command in payload`, or the whole request.
    pub request: Result<ShellExecPayload, PayloadError>,
}

impl ShellExecJob {
    pub fn parse(payload: &Value) -> Self {
        ShellExecJob {
            resource_id: parse_resource_id(payload),
            request: ShellExecPayload::parse(payload),
        }
    }
}

// ---------------------------------------------------------------- envelope

pub const MSG_HANDLER_THREW: &str = "Gateway job processing failed";
/// \[LATER\] only; the seed reports cancel-job crashes with [`MSG_HANDLER_THREW`].
pub const MSG_CANCEL_HANDLER_THREW: &str = "Gateway cancel job processing failed";
pub const MSG_UNSUPPORTED_JOB_TYPE: &str = "Unsupported job type";
pub const MSG_IDEMPOTENCY_DUPLICATE: &str =
    "Duplicate gateway job idempotency key; skipping execution";

/// What a handler returns: `{ok, result, error?, jobStatus?, skipSubagentFailure?}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HandlerOutcome {
    pub ok: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Only `cancelled` is used, and only when `ok` is false.
    pub job_status: Option<JobStatus>,
    pub skip_subagent_failure: bool,
}

impl HandlerOutcome {
    pub fn success(result: Value) -> Self {
        HandlerOutcome {
            ok: true,
            result: Some(result),
            ..Default::default()
        }
    }

    pub fn failure(result: Value, error: impl Into<String>) -> Self {
        HandlerOutcome {
            ok: false,
            result: Some(result),
            error: Some(error.into()),
            ..Default::default()
        }
    }

    /// `{message}` result with the same text as the error.
    pub fn failure_message(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::failure(json!({ "message": message }), message)
    }

    /// A refusal that ends the job `cancelled` and skips the subagent fallback.
    pub fn cancelled_skip(result: Value, error: impl Into<String>) -> Self {
        HandlerOutcome {
            job_status: Some(JobStatus::Cancelled),
            skip_subagent_failure: true,
            ..Self::failure(result, error)
        }
    }

    pub fn from_payload_error(error: &PayloadError) -> Self {
        Self::failure(error.result(), error.job_error)
    }
}

/// The completion PATCH (§3.2.3), plus whether the job-failure fallback
/// (§10.10) must run afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCompletion {
    pub status: JobStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub run_subagent_failure_fallback: bool,
}

impl JobCompletion {
    /// Body of `PATCH gateway_jobs?id=eq.<id>&status=eq.running`.
    pub fn update_body(&self, completed_at: &str) -> Value {
        json!({
            "status": self.status.as_str(),
            "result": self.result.clone().unwrap_or(Value::Null),
            "error": self.error.clone().filter(|e| !e.is_empty()),
            "completed_at": completed_at,
        })
    }
}

/// §8.0 mapping of a handler outcome.
pub fn complete_job(job_type: &JobType, outcome: HandlerOutcome) -> JobCompletion {
    if outcome.ok {
        return JobCompletion {
            status: JobStatus::Completed,
            result: outcome.result,
            error: None,
            run_subagent_failure_fallback: false,
        };
    }
    let status = match outcome.job_status {
        Some(JobStatus::Cancelled) => JobStatus::Cancelled,
        _ => JobStatus::Failed,
    };
    JobCompletion {
        status,
        result: outcome.result,
        error: outcome.error.filter(|e| !e.is_empty()),
        run_subagent_failure_fallback: *job_type == JobType::SubagentRun
            && !outcome.skip_subagent_failure,
    }
}

/// §8.0: the handler threw. The seed uses one text for every job type; the
/// later cancel-specific text is [`MSG_CANCEL_HANDLER_THREW`].
pub fn handler_threw(job_type: &JobType, message: &str) -> JobCompletion {
    JobCompletion {
        status: JobStatus::Failed,
        result: Some(json!({ "message": MSG_HANDLER_THREW, "job_type": job_type.as_str() })),
        error: Some(message.to_string()),
        run_subagent_failure_fallback: *job_type == JobType::SubagentRun,
    }
}

/// §8.0: an unknown (or, for this build, unsupported) job type.
pub fn unsupported_job_type(job_type: &JobType) -> JobCompletion {
    JobCompletion {
        status: JobStatus::Failed,
        result: Some(json!({ "message": MSG_UNSUPPORTED_JOB_TYPE, "job_type": job_type.as_str() })),
        error: Some(format!("{MSG_UNSUPPORTED_JOB_TYPE}: {job_type}")),
        run_subagent_failure_fallback: false,
    }
}

/// §3.2.4: another job with the same idempotency key and attempt exists.
pub fn idempotency_duplicate(idempotency_key: &str, attempt: i64) -> JobCompletion {
    JobCompletion {
        status: JobStatus::Cancelled,
        result: Some(json!({
            "message": MSG_IDEMPOTENCY_DUPLICATE,
            "idempotency_key": idempotency_key,
            "attempt": attempt,
        })),
        error: Some(MSG_IDEMPOTENCY_DUPLICATE.to_string()),
        run_subagent_failure_fallback: false,
    }
}

/// Rows of the final job status matrix (§8.7, seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSituation {
    /// Handler `ok`, including a subagent run that ended `cancelled` and cancel
    /// requests the resolver rejected.
    HandlerOk,
    SubagentMissing,
    SubagentOnAnotherGateway,
    DuplicateActiveRun,
    /// Still claimed when the shutdown grace ran out (§14).
    ResidualAtShutdown,
    IdempotencyDuplicate,
    /// Every other handler failure.
    HandlerFailed,
}

/// §8.7.
pub fn final_job_status(situation: JobSituation) -> JobStatus {
    match situation {
        JobSituation::HandlerOk => JobStatus::Completed,
        JobSituation::SubagentMissing
        | JobSituation::SubagentOnAnotherGateway
        | JobSituation::DuplicateActiveRun
        | JobSituation::ResidualAtShutdown
        | JobSituation::IdempotencyDuplicate => JobStatus::Cancelled,
        JobSituation::HandlerFailed => JobStatus::Failed,
    }
}

/// Residual job finalization at shutdown: `{message: reason, cancelled: true}`.
pub fn residual_shutdown_completion(reason: &str) -> JobCompletion {
    JobCompletion {
        status: final_job_status(JobSituation::ResidualAtShutdown),
        result: Some(json!({ "message": reason, "cancelled": true })),
        error: Some(reason.to_string()),
        run_subagent_failure_fallback: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of<T: fmt::Debug>(r: Result<T, PayloadError>) -> PayloadError {
        r.expect_err("payload should be refused")
    }

    #[test]
    fn subagent_run_payload_aliases_and_errors() {
        let p = SubagentRunPayload::parse(
            &json!({"subagentId": "s1", "runId": "r1", "subagent_type": "codex_gateway"}),
        )
        .unwrap();
        assert_eq!(
            p,
            SubagentRunPayload {
                subagent_id: "s1".into(),
                run_id: Some("r1".into()),
                subagent_type: Some("codex_gateway".into())
            }
        );
        // snake_case wins over the alias.
        let p = SubagentRunPayload::parse(&json!({"subagent_id": "a", "subagentId": "b"})).unwrap();
        assert_eq!(p.subagent_id, "a");

        let e = err_of(SubagentRunPayload::parse(&json!({})));
        assert_eq!(
            (e.field, &e.problem),
            ("subagent_id", &PayloadProblem::Missing)
        );
        assert_eq!(
            e.result(),
            json!({"message": "Missing subagent_id in payload"})
        );
        assert_eq!(e.job_error, "Missing subagent_id in payload");
        let e = err_of(SubagentRunPayload::parse(&json!({"subagent_id": 42})));
        assert_eq!(
            e.problem,
            PayloadProblem::WrongType {
                expected: "a string",
                found: "number"
            }
        );
        assert_eq!(
            e.to_string(),
            "invalid job payload: `subagent_id` must be a string (found number)"
        );
        let e = err_of(SubagentRunPayload::parse(&json!({"subagent_id": ""})));
        assert_eq!(e.problem, PayloadProblem::Missing);
        let e = err_of(SubagentRunPayload::parse(&json!(["s1"])));
        assert_eq!(e.problem, PayloadProblem::NotAnObject { found: "array" });
        assert!(SubagentRunPayload::parse(&Value::Null).is_err());
    }

    #[test]
    fn subagent_cancel_payload_reason_and_run_id() {
        let p = SubagentCancelPayload::parse(
            &json!({"subagent_id": "s", "run_id": "  ", "reason": "  stop  "}),
        )
        .unwrap();
        assert_eq!(p.run_id, None);
        assert_eq!(p.reason, "stop");
        let p = SubagentCancelPayload::parse(
            &json!({"subagentId": "s", "runId": " r ", "reason": " "}),
        )
        .unwrap();
        assert_eq!(p.run_id.as_deref(), Some("r"));
        assert_eq!(p.reason, "Cancelled");
        let p = SubagentCancelPayload::parse(&json!({"subagent_id": "s", "reason": 5})).unwrap();
        assert_eq!(p.reason, "Cancelled");
        assert_eq!(
            err_of(SubagentCancelPayload::parse(&json!({}))).result_message,
            MSG_MISSING_SUBAGENT_ID
        );
    }

    #[test]
    fn uuid_and_run_id_resolution() {
        let v4 = "123e4567-e89b-42d3-a456-426614174000";
        assert!(is_canonical_uuid(v4));
        assert!(is_canonical_uuid(&v4.to_uppercase()));
        assert!(
            !is_canonical_uuid("123e4567-e89b-62d3-a456-426614174000"),
            "version 6"
        );
        assert!(
            !is_canonical_uuid("123e4567-e89b-42d3-c456-426614174000"),
            "variant c"
        );
        assert!(!is_canonical_uuid("123e4567e89b42d3a456426614174000"));
        assert!(!is_canonical_uuid("not-a-uuid"));
        let input = "00000000-0000-1000-8000-000000000000";
        assert_eq!(resolve_run_id(Some(v4), Some(input)).as_deref(), Some(v4));
        assert_eq!(
            resolve_run_id(Some("run-1"), Some(input)).as_deref(),
            Some(input)
        );
        assert_eq!(resolve_run_id(None, Some(" junk ")), None);
    }

    #[test]
    fn model_run_payload_rules() {
        let p = ModelRunPayload::parse(&json!({
            "prompt": "hi", "model": "gpt-5", "json_schema": {"type": "object"}, "timeout_ms": 5000,
            "reasoning_effort": "high", "append_system_prompt": "be brief"
        }))
        .unwrap();
        assert_eq!(p.provider, ProviderId::Codex);
        assert_eq!(p.output_format, OutputFormat::Json);
        assert_eq!(p.timeout_ms, 5000);
        assert_eq!(p.reasoning_effort, Some(ReasoningEffort::High));
        assert_eq!(p.model_flag(), Some("gpt-5"));

        let p = ModelRunPayload::parse(&json!({
            "prompt": "hi", "model": "__default__", "output_format": "text", "timeout_ms": -1, "provider": "gemini"
        }))
        .unwrap();
        assert_eq!(
            (p.provider, p.output_format, p.timeout_ms),
            (ProviderId::Gemini, OutputFormat::Text, 110_000)
        );
        assert_eq!(p.model_flag(), None);
        assert_eq!(p.json_schema, None);

        for payload in [
            json!({"model": "m"}),
            json!({"prompt": "p"}),
            json!({"prompt": "", "model": "m"}),
        ] {
            let e = err_of(ModelRunPayload::parse(&payload));
            assert_eq!(
                e.result(),
                json!({"message": "Missing prompt or model for gateway model run"})
            );
            assert_eq!(e.job_error, "Missing prompt or model");
        }
        for schema in [None, Some(json!("a string"))] {
            let mut payload = json!({"prompt": "p", "model": "m"});
            if let Some(schema) = schema {
                payload["json_schema"] = schema;
            }
            let e = err_of(ModelRunPayload::parse(&payload));
            assert_eq!(e.field, "json_schema");
            assert_eq!(
                e.result(),
                json!({"message": "Missing json_schema for gateway model run"})
            );
            assert_eq!(e.job_error, "Missing json_schema");
        }
    }

    #[test]
    fn provider_inference_rows() {
        let rows = [
            ("openai/gpt-5", ProviderId::Codex),
            ("gpt-4.1", ProviderId::Codex),
            ("my-codex-mini", ProviderId::Codex),
            ("google/gemini-2.5-pro", ProviderId::Gemini),
            ("gemini-2.5-flash", ProviderId::Gemini),
            ("claude-sonnet-4", ProviderId::ClaudeCode),
            ("__default__", ProviderId::ClaudeCode),
        ];
        for (model, provider) in rows {
            assert_eq!(infer_provider_from_model(model), provider, "{model}");
        }
        // An invalid explicit provider falls back to inference.
        let p = ModelRunPayload::parse(&json!({"prompt": "p", "model": "gemini-x", "provider": "bard", "output_format": "text"}))
            .unwrap();
        assert_eq!(p.provider, ProviderId::Gemini);
    }

    #[test]
    fn shell_session_job_parts_and_messages() {
        let j = ShellSessionJob::parse(&json!({"action": " OPEN ", "resource_id": " res-1 "}));
        assert_eq!(
            j.action,
            Some(ShellJobAction::Spec(ShellSessionAction::Open))
        );
        assert_eq!(j.resource_id, Ok("res-1".to_string()));
        let j = ShellSessionJob::parse(&json!({"action": " Resize ", "cols": 80, "rows": "24"}));
        assert_eq!(j.action, Some(ShellJobAction::Resize));
        assert_eq!(j.resize, Some(ShellResizePayload { cols: 80, rows: 24 }));
        // Each part keeps its own outcome: an unknown or non-string action
        // is `None` (the handler's `Invalid shell session action`) whatever
        // the other fields say.
        for bad in [
            json!({"action": "exec", "resource_id": "r"}),
            json!({"action": 1, "resource_id": "r"}),
        ] {
            let j = ShellSessionJob::parse(&bad);
            assert_eq!(j.action, None);
            assert_eq!(j.resource_id, Ok("r".to_string()));
        }
        let j = ShellSessionJob::parse(&json!({"action": "read", "resource_id": "   "}));
        let e = j.resource_id.unwrap_err();
        assert_eq!(
            (e.field, e.result_message),
            ("resource_id", "Missing resource_id in payload")
        );
    }

    #[test]
    fn shell_action_required_access() {
        use ShellSessionAction::*;
        let rows = [
            (Open, ShellAccess::Write),
            (Write, ShellAccess::Write),
            (Close, ShellAccess::Write),
            (Read, ShellAccess::Read),
            (Status, ShellAccess::Read),
        ];
        for (action, access) in rows {
            assert_eq!(action.required_access(), access, "{action}");
        }
    }

    #[test]
    fn shell_open_payload() {
        let p = ShellOpenPayload::parse(&json!({
            "shell": " /bin/zsh ", "shell_args": ["-l"], "env": {"A": "x", "N": 3, "F": 1.5, "W": 2.0, "B": true},
            "cwd": "  ", "session_id": " s-1 "
        }))
        .unwrap();
        assert_eq!(p.shell.as_deref(), Some("/bin/zsh"));
        assert_eq!(p.shell_args, vec!["-l"]);
        let env: Vec<(&str, &str)> = p
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("A", "x"),
                ("B", "true"),
                ("F", "1.5"),
                ("N", "3"),
                ("W", "2")
            ]
        );
        assert_eq!(p.cwd, None);
        assert_eq!(p.session_id.as_deref(), Some("s-1"));

        let defaults = ShellOpenPayload::parse(&json!({"shell_args": null, "env": null})).unwrap();
        assert_eq!(
            (
                defaults.shell,
                defaults.shell_args.len(),
                defaults.env.len()
            ),
            (None, 0, 0)
        );

        for bad in [json!("-l"), json!(["-l", 1])] {
            let e = err_of(ShellOpenPayload::parse(&json!({"shell_args": bad})));
            assert_eq!(
                e.result_message,
                "Invalid shell_args in payload (expected string array)"
            );
            assert_eq!(e.job_error, "Invalid shell_args in payload");
        }
        for bad in [json!(["A=1"]), json!({"A": null}), json!({"A": {}})] {
            let e = err_of(ShellOpenPayload::parse(&json!({"env": bad})));
            assert_eq!(
                e.result_message,
                "Invalid env in payload (expected string/number/boolean map)"
            );
            assert_eq!(e.job_error, "Invalid env in payload");
        }
        // shell_args is checked before env.
        let e = err_of(ShellOpenPayload::parse(&json!({"shell_args": 1, "env": 1})));
        assert_eq!(e.field, "shell_args");
    }

    #[test]
    fn shell_session_id_write_and_read() {
        assert_eq!(
            parse_session_id(&json!({"session_id": " s "})).unwrap(),
            "s"
        );
        assert_eq!(
            err_of(parse_session_id(&json!({}))).result_message,
            "Missing session_id in payload"
        );

        let w = ShellWritePayload::parse(&json!({"input": "ls", "append_newline": true})).unwrap();
        assert_eq!(w.data(), "ls\n");
        let w = ShellWritePayload::parse(&json!({"input": "", "append_newline": "true"})).unwrap();
        assert_eq!((w.data().as_str(), w.append_newline), ("", false));
        assert_eq!(
            err_of(ShellWritePayload::parse(&json!({"input": 3}))).result_message,
            "Missing input in payload"
        );
        assert_eq!(err_of(ShellWritePayload::parse(&json!({}))).field, "input");

        let rows = [
            (json!({}), 0, 200),
            (json!({"since_sequence": 5, "max_events": 10}), 5, 10),
            (json!({"since_sequence": -3, "max_events": 0}), 0, 1),
            (
                json!({"since_sequence": "7abc", "max_events": 5000}),
                7,
                1000,
            ),
            (json!({"since_sequence": 2.9, "max_events": "x"}), 2, 200),
        ];
        for (payload, since, max) in rows {
            assert_eq!(
                ShellReadPayload::parse(&payload),
                ShellReadPayload {
                    since_sequence: since,
                    max_events: max
                },
                "{payload}"
            );
        }
    }

    #[test]
    fn shell_exec_payload() {
        let p = ShellExecPayload::parse(&json!({
            "resource_id": "r", "command": "ls -la", "timeout_ms": 999_999, "secret_env": {"T": "tok"},
            "resource_uri": "uri", "requested_at": "t"
        }))
        .unwrap();
        assert_eq!(p.timeout_ms, 600_000);
        assert_eq!(p.secret_env, Some(json!({"T": "tok"})));
        let rows = [
            (json!(null), 30_000),
            (json!(0), 1),
            (json!(1500), 1500),
            (json!("abc"), 30_000),
        ];
        for (timeout, expected) in rows {
            let p = ShellExecPayload::parse(
                &json!({"resource_id": "r", "command": "x", "timeout_ms": timeout}),
            )
            .unwrap();
            assert_eq!(p.timeout_ms, expected);
        }
        // resource_id first, then command.
        let e = err_of(ShellExecPayload::parse(&json!({"command": " "})));
        assert_eq!(e.result_message, "Missing resource_id in payload");
        let e = err_of(ShellExecPayload::parse(
            &json!({"resource_id": "r", "command": "  "}),
        ));
        assert_eq!(e.result_message, "Missing command in payload");
    }

    #[test]
    fn envelope_mapping_rows() {
        let sub = JobType::SubagentRun;
        // ok → completed, error null.
        let c = complete_job(
            &sub,
            HandlerOutcome::success(json!({"status": "cancelled"})),
        );
        assert_eq!(
            (c.status, c.error.clone(), c.run_subagent_failure_fallback),
            (JobStatus::Completed, None, false)
        );
        // ok:false → failed, fallback for subagent_run.
        let c = complete_job(
            &sub,
            HandlerOutcome::failure_message("Missing prompt in subagent input"),
        );
        assert_eq!(
            (c.status, c.run_subagent_failure_fallback),
            (JobStatus::Failed, true)
        );
        // ok:false with jobStatus cancelled and skip.
        let c = complete_job(
            &sub,
            HandlerOutcome::cancelled_skip(
                json!({"message": "Subagent not found"}),
                "Subagent not found",
            ),
        );
        assert_eq!(
            (c.status, c.run_subagent_failure_fallback),
            (JobStatus::Cancelled, false)
        );
        // Other job types never run the fallback.
        let c = complete_job(&JobType::ModelRun, HandlerOutcome::failure_message("x"));
        assert_eq!(
            (c.status, c.run_subagent_failure_fallback),
            (JobStatus::Failed, false)
        );
        // A jobStatus other than cancelled is ignored.
        let outcome = HandlerOutcome {
            job_status: Some(JobStatus::Completed),
            ..HandlerOutcome::failure_message("x")
        };
        assert_eq!(
            complete_job(&JobType::Diagnostic, outcome).status,
            JobStatus::Failed
        );
        // handler threw.
        let c = handler_threw(&sub, "boom");
        assert_eq!(
            c.result,
            Some(json!({"message": "Gateway job processing failed", "job_type": "subagent_run"}))
        );
        assert_eq!(
            (
                c.status,
                c.error.as_deref(),
                c.run_subagent_failure_fallback
            ),
            (JobStatus::Failed, Some("boom"), true)
        );
        let c = handler_threw(&JobType::SubagentCancel, "boom");
        assert_eq!(
            c.result,
            Some(
                json!({"message": "Gateway job processing failed", "job_type": "subagent_cancel"})
            )
        );
        assert!(!c.run_subagent_failure_fallback);
        // unsupported type.
        let c = unsupported_job_type(&JobType::parse("teleport"));
        assert_eq!(
            c.result,
            Some(json!({"message": "Unsupported job type", "job_type": "teleport"}))
        );
        assert_eq!(c.error.as_deref(), Some("Unsupported job type: teleport"));
        // idempotency duplicate.
        let c = idempotency_duplicate("key-1", 2);
        assert_eq!(c.status, JobStatus::Cancelled);
        assert_eq!(
            c.result,
            Some(
                json!({"message": MSG_IDEMPOTENCY_DUPLICATE, "idempotency_key": "key-1", "attempt": 2})
            )
        );
        assert_eq!(c.error.as_deref(), Some(MSG_IDEMPOTENCY_DUPLICATE));
    }

    #[test]
    fn update_body_nulls_empty_error_and_missing_result() {
        let c = JobCompletion {
            status: JobStatus::Failed,
            result: None,
            error: Some(String::new()),
            run_subagent_failure_fallback: false,
        };
        assert_eq!(
            c.update_body("2025-01-01T00:00:00.000Z"),
            json!({"status": "failed", "result": null, "error": null, "completed_at": "2025-01-01T00:00:00.000Z"})
        );
    }

    #[test]
    fn final_job_status_matrix_rows() {
        let rows = [
            (JobSituation::HandlerOk, JobStatus::Completed),
            (JobSituation::SubagentMissing, JobStatus::Cancelled),
            (JobSituation::SubagentOnAnotherGateway, JobStatus::Cancelled),
            (JobSituation::DuplicateActiveRun, JobStatus::Cancelled),
            (JobSituation::ResidualAtShutdown, JobStatus::Cancelled),
            (JobSituation::IdempotencyDuplicate, JobStatus::Cancelled),
            (JobSituation::HandlerFailed, JobStatus::Failed),
        ];
        for (situation, status) in rows {
            assert_eq!(final_job_status(situation), status, "{situation:?}");
        }
        let residual = residual_shutdown_completion("Gateway shutting down (SIGTERM)");
        assert_eq!(residual.status, JobStatus::Cancelled);
        assert_eq!(
            residual.result,
            Some(json!({"message": "Gateway shutting down (SIGTERM)", "cancelled": true}))
        );
        assert_eq!(
            idempotency_duplicate("k", 1).status,
            final_job_status(JobSituation::IdempotencyDuplicate)
        );
    }

    /// Regression (prop_payloads): env numbers were printed with
    /// serde_json's formatting (`-0`, `1e21`, `1.5e-6`), not JavaScript's
    /// `String(n)`. Expected texts are what Node prints.
    #[test]
    fn env_numbers_print_like_javascript() {
        for (n, js) in [
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1.5e-6, "0.0000015"),
            (0.000001, "0.000001"),
            (123.456, "123.456"),
            (1e16, "10000000000000000"),
            (-1.5e-10, "-1.5e-10"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
        ] {
            let number = serde_json::Number::from_f64(n).unwrap();
            assert_eq!(js_number_string(&number), js, "{n:e}");
            let p = ShellOpenPayload::parse(&json!({"env": {"N": n}})).unwrap();
            assert_eq!(p.env["N"], js, "{n:e}");
        }
        assert_eq!(js_number_string(&serde_json::Number::from(-42)), "-42");
        assert_eq!(
            js_number_string(&serde_json::Number::from(u64::MAX)),
            "18446744073709552000"
        );
        assert_eq!(
            js_number_string(&serde_json::Number::from(9007199254740993u64)),
            "9007199254740992"
        );
    }
}
