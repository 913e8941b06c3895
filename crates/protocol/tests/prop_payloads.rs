//! Property tests for every job payload parser (`jobs.rs`): arbitrary JSON
//! never panics, every refusal is a `PayloadError` naming a field that really
//! is wrong, and generated valid payloads parse to the fields they were
//! generated from.
//!
//! Case counts: `PROPTEST_CASES` when set (the long form, see
//! `scripts/prop-long.sh`), else a small CI default. Failures are not
//! persisted: each one found is pinned as a named regression unit test in
//! `jobs.rs`, and proptest's `proptest-regressions/` files would land in a
//! checkout shared by several engineers.

use panorama_protocol::capabilities::ProviderId;
use panorama_protocol::jobs::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Number, Value};

/// `PROPTEST_CASES` if set (the `proptest!` macro applies it too), else `ci_default`.
fn config(ci_default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(ci_default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- strategies

const KEYS: &[&str] = &[
    "subagent_id",
    "subagentId",
    "run_id",
    "runId",
    "subagent_type",
    "reason",
    "prompt",
    "model",
    "provider",
    "output_format",
    "json_schema",
    "append_system_prompt",
    "reasoning_effort",
    "timeout_ms",
    "action",
    "resource_id",
    "session_id",
    "shell",
    "shell_args",
    "env",
    "cwd",
    "input",
    "append_newline",
    "since_sequence",
    "max_events",
    "command",
    "resource_uri",
    "requested_at",
    "secret_env",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2000i64..2000).prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-1e4f64..1e4).prop_map(Value::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("  ".to_string()),
        prop::sample::select(vec![
            "open",
            " Write ",
            "READ",
            "close",
            "status",
            "json",
            "text",
            "low",
            "high",
            "codex",
            "gemini",
            "claude_code",
            "gpt-5",
            "__default__",
            "12abc",
            "-7",
            "+3",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
        any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A payload: mostly an object over the keys the parsers read, sometimes
/// any JSON at all.
fn payload() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..10).prop_map(
            |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        ),
        1 => json_value(),
    ]
}

// ------------------------------------------------------------------ oracles

fn object(payload: &Value) -> Option<&Map<String, Value>> {
    match payload {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn nonempty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

fn nonblank_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

/// Whether `field` of `payload` is really unusable for the parser that
/// named it. `null` counts as `{}`; any other non-object refuses every field.
fn field_is_bad(payload: &Value, field: &str) -> bool {
    let empty = Map::new();
    let map = match payload {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => return true,
    };
    let get = |k: &str| map.get(k);
    match field {
        "subagent_id" => {
            // The first string among the aliases wins; it must be non-empty.
            match ["subagent_id", "subagentId"]
                .iter()
                .find_map(|k| get(k).and_then(Value::as_str))
            {
                Some(s) => s.is_empty(),
                None => true,
            }
        }
        "prompt" | "model" => !nonempty_str(get(field)),
        "json_schema" => !matches!(get("json_schema"), Some(Value::Object(_))),
        "action" => get("action")
            .and_then(Value::as_str)
            .is_none_or(|a| ShellSessionAction::normalize(a).is_none()),
        "resource_id" | "session_id" => !nonblank_str(get(field)),
        "shell_args" => match get("shell_args") {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => items.iter().any(|i| !i.is_string()),
            Some(_) => true,
        },
        "env" => match get("env") {
            None | Some(Value::Null) => false,
            Some(Value::Object(vars)) => vars
                .values()
                .any(|v| matches!(v, Value::Null | Value::Array(_) | Value::Object(_))),
            Some(_) => true,
        },
        "input" => !get("input").is_some_and(Value::is_string),
        "command" => !nonblank_str(get("command")),
        other => panic!("parser named an unexpected field {other:?}"),
    }
}

/// The invariants of every refusal.
fn check_error(e: &PayloadError, payload: &Value, allowed: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(
        allowed.contains(&e.field),
        "field {:?} is not one this parser checks",
        e.field
    );
    let text = e.to_string();
    prop_assert!(
        text.contains(&format!("`{}`", e.field)),
        "message {text:?} does not name the field"
    );
    prop_assert!(!e.result_message.is_empty() && !e.job_error.is_empty());
    prop_assert_eq!(e.result(), json!({"message": e.result_message}));
    prop_assert!(
        field_is_bad(payload, e.field),
        "refused {:?} although it is fine in {payload}",
        e.field
    );
    if let PayloadProblem::NotAnObject { found } = e.problem {
        prop_assert!(object(payload).is_none() && !payload.is_null());
        prop_assert_eq!(found, json_type_name(payload));
    }
    Ok(())
}

/// Checks `s` against JavaScript's `String(n)` for the double `f` without
/// re-implementing it: it reads back as `f` (`-0` as `0`), is exponential
/// exactly outside 1e-6 <= |f| < 1e21 with a signed exponent, and has no
/// redundant zeros or `.0`.
fn check_js_number(s: &str, f: f64) -> Result<(), TestCaseError> {
    let back: f64 = s
        .parse()
        .map_err(|_| TestCaseError::fail(format!("{s:?} is not a number")))?;
    prop_assert_eq!(back, f, "{:?} does not read back as {:e}", s, f);
    if f == 0.0 {
        prop_assert_eq!(s, "0");
        return Ok(());
    }
    let positional = (1e-6..1e21).contains(&f.abs());
    prop_assert_eq!(!s.contains('e'), positional, "{:?} for {:e}", s, f);
    let mantissa = match s.split_once('e') {
        Some((m, exp)) => {
            prop_assert!(exp.starts_with('+') || exp.starts_with('-'), "{s:?}");
            m
        }
        None => s,
    };
    if let Some((_, frac)) = mantissa.split_once('.') {
        prop_assert!(!frac.is_empty() && !frac.ends_with('0'), "{s:?}");
    }
    Ok(())
}

// ------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(512))]

    /// Every parser on arbitrary JSON: no panic; a refusal names a field
    /// that is really wrong; an acceptance satisfies the parser's contract.
    #[test]
    fn arbitrary_payloads_never_panic_and_errors_name_the_bad_field(p in payload()) {
        match SubagentRunPayload::parse(&p) {
            Ok(r) => prop_assert!(!r.subagent_id.is_empty()),
            Err(e) => check_error(&e, &p, &["subagent_id"])?,
        }
        match SubagentCancelPayload::parse(&p) {
            Ok(r) => {
                prop_assert!(!r.subagent_id.is_empty());
                prop_assert!(!r.reason.is_empty() && r.reason.trim() == r.reason);
                prop_assert!(r.run_id.iter().all(|id| !id.is_empty() && id.trim() == id));
            }
            Err(e) => check_error(&e, &p, &["subagent_id"])?,
        }
        match ModelRunPayload::parse(&p) {
            Ok(r) => {
                prop_assert!(!r.prompt.is_empty() && !r.model.is_empty());
                prop_assert!(r.timeout_ms >= 1);
                prop_assert_eq!(r.json_schema.is_some(), r.output_format == OutputFormat::Json);
                prop_assert!(r.json_schema.iter().all(Value::is_object));
            }
            Err(e) => {
                check_error(&e, &p, &["prompt", "model", "json_schema"])?;
                // Both texts the spec quotes for the two kinds of refusal.
                let expected = if e.field == "json_schema" {
                    (MSG_MODEL_RUN_MISSING_SCHEMA, ERR_MODEL_RUN_MISSING_SCHEMA)
                } else {
                    (MSG_MODEL_RUN_MISSING_PROMPT_OR_MODEL, ERR_MODEL_RUN_MISSING_PROMPT_OR_MODEL)
                };
                prop_assert_eq!((e.result_message, e.job_error), expected);
            }
        }
        let job = ShellSessionJob::parse(&p);
        match &job.resource_id {
            Ok(id) => prop_assert!(!id.is_empty() && id.trim() == id),
            Err(e) => check_error(e, &p, &["resource_id"])?,
        }
        if let Some(action) = job.action {
            let raw = p["action"].as_str().expect("a parsed action is a string");
            prop_assert!(
                ShellSessionAction::normalize(raw).map(ShellJobAction::Spec) == Some(action)
                    || (action == ShellJobAction::Resize && raw.trim().eq_ignore_ascii_case("resize"))
            );
        }
        match parse_resource_id(&p) {
            Ok(id) => prop_assert!(!id.is_empty() && id.trim() == id),
            Err(e) => check_error(&e, &p, &["resource_id"])?,
        }
        match parse_session_id(&p) {
            Ok(id) => prop_assert!(!id.is_empty() && id.trim() == id),
            Err(e) => check_error(&e, &p, &["session_id"])?,
        }
        match ShellOpenPayload::parse(&p) {
            Ok(r) => {
                for v in [&r.shell, &r.cwd, &r.session_id].into_iter().flatten() {
                    prop_assert!(!v.is_empty() && v.trim() == v);
                }
            }
            Err(e) => check_error(&e, &p, &["shell_args", "env"])?,
        }
        match ShellWritePayload::parse(&p) {
            Ok(r) => prop_assert_eq!(
                r.data().len(),
                r.input.len() + usize::from(r.append_newline)
            ),
            Err(e) => check_error(&e, &p, &["input"])?,
        }
        let read = ShellReadPayload::parse(&p);
        prop_assert!(read.since_sequence >= 0);
        prop_assert!((1..=SHELL_READ_MAX_EVENTS_LIMIT).contains(&read.max_events));
        match ShellExecPayload::parse(&p) {
            Ok(r) => {
                prop_assert!(!r.command.trim().is_empty());
                prop_assert!((1..=SHELL_EXEC_MAX_TIMEOUT_MS).contains(&r.timeout_ms));
            }
            Err(e) => check_error(&e, &p, &["resource_id", "command"])?,
        }
    }

    /// Valid `subagent_run` / `subagent_cancel` payloads parse to what was generated.
    #[test]
    fn valid_subagent_payloads_round_trip(
        id in "\\PC{1,16}",
        camel in any::<bool>(),
        run_id in proptest::option::of("\\PC{0,16}"),
        subagent_type in proptest::option::of("\\PC{0,8}"),
        reason in proptest::option::of("\\PC{0,16}"),
    ) {
        let mut m = Map::new();
        m.insert(if camel { "subagentId" } else { "subagent_id" }.into(), json!(id));
        if let Some(r) = &run_id {
            m.insert(if camel { "runId" } else { "run_id" }.into(), json!(r));
        }
        if let Some(t) = &subagent_type {
            m.insert("subagent_type".into(), json!(t));
        }
        if let Some(r) = &reason {
            m.insert("reason".into(), json!(r));
        }
        let p = Value::Object(m);
        let run = SubagentRunPayload::parse(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(run, SubagentRunPayload {
            subagent_id: id.clone(),
            run_id: run_id.clone(),
            subagent_type,
        });
        let cancel = SubagentCancelPayload::parse(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let trimmed = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        prop_assert_eq!(cancel, SubagentCancelPayload {
            subagent_id: id,
            run_id: trimmed(&run_id),
            reason: trimmed(&reason).unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_string()),
        });
    }

    /// Valid `model_run` payloads parse to what was generated.
    #[test]
    fn valid_model_run_payloads_round_trip(
        prompt in "\\PC{1,24}",
        model in prop_oneof![Just("__default__".to_string()), Just("gpt-5".to_string()), "\\PC{1,16}"],
        provider in proptest::option::of(prop::sample::select(vec![ProviderId::ClaudeCode, ProviderId::Codex, ProviderId::Gemini])),
        text_format in any::<bool>(),
        schema in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..4),
        append in proptest::option::of("\\PC{0,16}"),
        effort in proptest::option::of(prop::sample::select(vec![ReasoningEffort::Low, ReasoningEffort::Medium, ReasoningEffort::High])),
        timeout in proptest::option::of(prop_oneof![1u64..10_000_000, Just(u64::MAX)]),
        fraction in 0.0f64..1.0,
    ) {
        let schema = Value::Object(schema.into_iter().collect());
        let mut m = Map::new();
        m.insert("prompt".into(), json!(prompt));
        m.insert("model".into(), json!(model));
        if let Some(p) = provider {
            m.insert("provider".into(), json!(p.as_str()));
        }
        m.insert("output_format".into(), json!(if text_format { "text" } else { "json" }));
        if !text_format {
            m.insert("json_schema".into(), schema.clone());
        }
        if let Some(a) = &append {
            m.insert("append_system_prompt".into(), json!(a));
        }
        if let Some(e) = effort {
            m.insert("reasoning_effort".into(), json!(e.as_str()));
        }
        // A fractional timeout rounds up (JavaScript `Math.ceil`).
        let timeout_value = timeout.map(|t| (t as f64 - fraction).max(f64::MIN_POSITIVE));
        if let Some(t) = timeout_value {
            m.insert("timeout_ms".into(), json!(t));
        }
        let r = ModelRunPayload::parse(&Value::Object(m)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(r.prompt, prompt);
        prop_assert_eq!(&r.model, &model);
        prop_assert_eq!(r.provider, provider.unwrap_or_else(|| infer_provider_from_model(&model)));
        prop_assert_eq!(r.output_format, if text_format { OutputFormat::Text } else { OutputFormat::Json });
        prop_assert_eq!(r.json_schema, (!text_format).then_some(schema));
        prop_assert_eq!(r.append_system_prompt, append);
        prop_assert_eq!(r.reasoning_effort, effort);
        let want = timeout_value.map_or(MODEL_RUN_DEFAULT_TIMEOUT_MS, |t| (t.ceil() as u64).max(1));
        prop_assert_eq!(r.timeout_ms, want);
    }

    /// Valid shell payloads parse to what was generated.
    #[test]
    fn valid_shell_payloads_round_trip(
        action in prop::sample::select(vec![
            ShellSessionAction::Open, ShellSessionAction::Write, ShellSessionAction::Read,
            ShellSessionAction::Close, ShellSessionAction::Status,
        ]),
        upper in any::<bool>(),
        pad in "[ \t]{0,2}",
        resource_id in "\\PC{0,4}[a-z0-9]\\PC{0,4}",
        args in prop::collection::vec("\\PC{0,8}", 0..4),
        env in prop::collection::btree_map("[A-Z_]{1,6}", prop_oneof![
            "\\PC{0,8}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::from(0), Value::Number)),
            // Around the notation switches at 1e-6 and 1e21.
            (1.0f64..10.0, -9i32..24, any::<bool>()).prop_map(|(m, e, neg)| {
                let f = m * 10f64.powi(e) * if neg { -1.0 } else { 1.0 };
                Number::from_f64(f).map_or(Value::from(0), Value::Number)
            }),
        ], 0..4),
        input in "\\PC{0,16}",
        newline in proptest::option::of(json_value()),
        command in "[a-z][\\PC]{0,16}",
        timeout in proptest::option::of(any::<i64>()),
        since in proptest::option::of(any::<i64>()),
    ) {
        let raw_action = format!("{pad}{}{pad}", if upper { action.as_str().to_uppercase() } else { action.as_str().to_string() });
        let mut m = Map::new();
        m.insert("action".into(), json!(raw_action));
        m.insert("resource_id".into(), json!(format!("{pad}{resource_id}{pad}")));
        m.insert("shell_args".into(), json!(args));
        m.insert("env".into(), Value::Object(env.clone().into_iter().collect()));
        m.insert("input".into(), json!(input));
        if let Some(n) = &newline {
            m.insert("append_newline".into(), n.clone());
        }
        m.insert("command".into(), json!(command));
        if let Some(t) = timeout {
            m.insert("timeout_ms".into(), json!(t));
        }
        if let Some(s) = since {
            m.insert("since_sequence".into(), json!(s.to_string()));
        }
        let p = Value::Object(m);
        let fail = |e: PayloadError| TestCaseError::fail(e.to_string());

        let job = ShellSessionJob::parse(&p);
        prop_assert_eq!(job.action, Some(ShellJobAction::Spec(action)));
        prop_assert_eq!(job.resource_id.clone().map_err(fail)?, resource_id.trim());

        let open = ShellOpenPayload::parse(&p).map_err(fail)?;
        prop_assert_eq!(&open.shell_args, &args);
        prop_assert_eq!(open.env.keys().collect::<Vec<_>>(), env.keys().collect::<Vec<_>>());
        for (k, v) in &env {
            let got = open.env[k].as_str();
            match v {
                Value::String(s) => prop_assert_eq!(got, s.as_str()),
                Value::Bool(b) => prop_assert_eq!(got, b.to_string()),
                Value::Number(n) => match n.as_i64().filter(|i| i.unsigned_abs() <= 1 << 53) {
                    Some(i) => prop_assert_eq!(got, i.to_string()),
                    None => check_js_number(got, n.as_f64().expect("finite"))?,
                },
                other => unreachable!("generated env value {other}"),
            }
        }

        let write = ShellWritePayload::parse(&p).map_err(fail)?;
        prop_assert_eq!(&write.input, &input);
        prop_assert_eq!(write.append_newline, newline == Some(Value::Bool(true)));

        let exec = ShellExecPayload::parse(&p).map_err(fail)?;
        prop_assert_eq!(&exec.command, &command);
        prop_assert_eq!(exec.resource_id.as_str(), resource_id.trim());
        prop_assert_eq!(
            exec.timeout_ms,
            timeout.map_or(SHELL_EXEC_DEFAULT_TIMEOUT_MS, |t| t.clamp(1, SHELL_EXEC_MAX_TIMEOUT_MS))
        );

        let read = ShellReadPayload::parse(&p);
        prop_assert_eq!(read.since_sequence, since.map_or(0, |s| s.max(0)));
        prop_assert_eq!(read.max_events, SHELL_READ_DEFAULT_MAX_EVENTS);
    }

    /// The other decoders of control-plane data never panic on arbitrary
    /// input: timestamps (well-formed ones round-trip through their
    /// fields), job rows and capability documents.
    #[test]
    fn other_decoders_never_panic(
        raw in prop_oneof![
            "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{0,9})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?",
            "\\PC{0,32}",
        ],
        (y, mo, d, h, mi, sec, ms) in (1970i64..3000, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60, 0u32..1000),
        row in payload(),
        caps in json_value(),
    ) {
        let _ = panorama_protocol::time::parse_timestamp_ms(&raw);
        let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}Z");
        let t = panorama_protocol::time::parse_timestamp_ms(&text)
            .ok_or_else(|| TestCaseError::fail(format!("{text} refused")))?;
        // Days since the epoch by counting, independently of the parser.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days: i64 = (1970..y).map(|y| if leap(y) { 366 } else { 365 }).sum();
        let month_days = [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        days += month_days[..(mo - 1) as usize].iter().sum::<i64>() + i64::from(d) - 1;
        let want = ((days * 24 + i64::from(h)) * 60 + i64::from(mi)) * 60_000
            + i64::from(sec) * 1000 + i64::from(ms);
        prop_assert_eq!(t, want, "{}", text);
        let _ = panorama_protocol::rows::decode_gateway_job_row(&row);
        let _ = panorama_protocol::capabilities::validate_capabilities_v1(&caps);
    }
}
