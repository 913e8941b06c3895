//! Property tests for the hub's parsers of client text: the PostgREST query
//! grammar (`postgrest.rs`), Phoenix frames (`realtime/frame.rs`) and
//! Realtime `postgres_changes` filters (`realtime/filter.rs`).
//!
//! Case counts: `PROPTEST_CASES` when set (the long form, see
//! `scripts/prop-long.sh`), else a small CI default. Failures are not
//! persisted: each one found is pinned as a named regression unit test next
//! to the code it broke, and proptest's `proptest-regressions/` files would
//! land in a checkout shared by several engineers.

use panorama_hub::changes::{ChangeKind, Row};
use panorama_hub::postgrest::{
    parse_query, Filter, IsValue, Op, Operand, Order, Query, MAX_LOGIC_DEPTH,
};
use panorama_hub::realtime::filter::{parse_filter, Binding};
use panorama_hub::realtime::frame::{BinaryPush, Frame, Vsn};
use panorama_hub::{schema, values};
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

/// Query text built from the grammar's own punctuation, percent escapes and
/// operator words, so that random strings reach deep into the parser.
fn query_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "select=",
            "order=",
            "limit=",
            "offset=",
            "on_conflict=",
            "columns=",
            "or=",
            "and=",
            "not.or=",
            "not.and=",
            "&",
            "=",
            "(",
            ")",
            ",",
            ".",
            "\"",
            "\\",
            "not.",
            "eq.",
            "neq.",
            "gt.",
            "gte.",
            "lt.",
            "lte.",
            "like.",
            "ilike.",
            "is.",
            "in.",
            "or(",
            "and(",
            "null",
            "true",
            "*",
            "desc",
            "asc",
            "nullsfirst",
            "nullslast",
            "%",
            "%2",
            "%28",
            "%29",
            "%2C",
            "%22",
            "%FF",
            "%C3",
            "+",
            "id",
            "status",
            ":",
            "-",
            ">",
            "!",
            "é",
        ])
        .prop_map(str::to_string),
        "[a-z0-9_]{1,5}",
        "\\PC{1,3}",
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

const RESERVED: &[&str] = &[
    "select",
    "order",
    "limit",
    "offset",
    "on_conflict",
    "columns",
    "or",
    "and",
    "not",
];

fn column() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,8}".prop_filter("reserved word", |c| !RESERVED.contains(&c.as_str()))
}

fn scalar_op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![
        Op::Eq,
        Op::Neq,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::Like,
        Op::Ilike,
    ])
}

fn op_text(op: &Op) -> &'static str {
    match op {
        Op::Eq => "eq",
        Op::Neq => "neq",
        Op::Gt => "gt",
        Op::Gte => "gte",
        Op::Lt => "lt",
        Op::Lte => "lte",
        Op::Like => "like",
        Op::Ilike => "ilike",
        Op::Is => "is",
        Op::In => "in",
    }
}

fn is_value() -> impl Strategy<Value = (IsValue, String)> {
    prop::sample::select(vec![
        (IsValue::Null, "null"),
        (IsValue::Null, "NULL"),
        (IsValue::True, "true"),
        (IsValue::False, "False"),
        (IsValue::Unknown, "unknown"),
    ])
    .prop_map(|(v, t)| (v, t.to_string()))
}

/// `in` list items: `None` is the bare word null.
fn list_items() -> impl Strategy<Value = Vec<Option<String>>> {
    prop::collection::vec(
        proptest::option::weighted(0.85, prop_oneof!["[a-zA-Z0-9_ .:-]{1,8}", "\\PC{0,8}"]),
        0..5,
    )
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `(a,"b,c",null)`: bare when the item cannot be misread, else quoted.
fn render_list(items: &[Option<String>]) -> String {
    let rendered: Vec<String> = items
        .iter()
        .map(|item| match item {
            None => "null".to_string(),
            Some(s)
                if !s.is_empty()
                    && s != "null"
                    && !s.starts_with('"')
                    && !s.contains([',', '(', ')', '"']) =>
            {
                s.clone()
            }
            Some(s) => quote(s),
        })
        .collect();
    format!("({})", rendered.join(","))
}

/// A condition with the text a client would write for it after `column=`
/// (top level: `value_in_tree == false`) or after `column.` (logic tree).
fn condition(in_tree: bool) -> impl Strategy<Value = (Filter, String)> {
    let value = prop_oneof![3 => "[a-zA-Z0-9_ .:-]{0,10}", 1 => "\\PC{0,10}"];
    let operand = prop_oneof![
        3 => (scalar_op(), value).prop_map(move |(op, v)| {
            // Inside a tree a value ends at ',' or ')' unless quoted.
            let text = if in_tree
                && (v.is_empty() || v.starts_with('"') || v.contains([',', ')', '(', '"', '\\']))
            {
                quote(&v)
            } else {
                v.clone()
            };
            (op.clone(), Operand::Value(v), format!("{}.{text}", op_text(&op)))
        }),
        1 => is_value().prop_map(|(v, t)| (Op::Is, Operand::Is(v), format!("is.{t}"))),
        1 => list_items().prop_map(|items| {
            let text = format!("in.{}", render_list(&items));
            (Op::In, Operand::List(items), text)
        }),
    ];
    (column(), operand, any::<bool>()).prop_map(move |(column, (op, operand, text), negated)| {
        let f = Filter::Cond {
            column: column.clone(),
            op,
            operand,
        };
        let text = if negated { format!("not.{text}") } else { text };
        let f = if negated { Filter::Not(Box::new(f)) } else { f };
        (
            f,
            if in_tree {
                format!("{column}.{text}")
            } else {
                text
            },
        )
    })
}

/// A logic tree item and its text: conditions, nested `or(…)`/`and(…)`, `not.`.
fn tree_item() -> impl Strategy<Value = (Filter, String)> {
    condition(true).prop_recursive(4, 24, 4, |inner| {
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(inner, 1..4),
        )
            .prop_map(|(is_or, negated, items)| {
                let (filters, texts): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                let f = if is_or {
                    Filter::Or(filters)
                } else {
                    Filter::And(filters)
                };
                let word = if is_or { "or" } else { "and" };
                let text = format!(
                    "{}{word}({})",
                    if negated { "not." } else { "" },
                    texts.join(",")
                );
                (if negated { Filter::Not(Box::new(f)) } else { f }, text)
            })
    })
}

/// One query parameter and the part of the `Query` it sets.
#[derive(Debug, Clone)]
enum Param {
    Select(Option<Vec<String>>),
    Order(Vec<Order>),
    Limit(u64),
    Offset(u64),
    Filter(Filter),
}

fn param() -> impl Strategy<Value = (Param, String, String)> {
    prop_oneof![
        prop_oneof![
            Just(None),
            prop::collection::vec(column(), 1..4).prop_map(Some),
        ]
        .prop_map(|names| {
            let text = names.as_ref().map_or("*".to_string(), |n| n.join(","));
            (Param::Select(names), "select".to_string(), text)
        }),
        prop::collection::vec(
            (
                column(),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>())
            ),
            1..3,
        )
        .prop_map(|items| {
            let mut orders = Vec::new();
            let mut texts = Vec::new();
            for (column, desc, nulls) in items {
                let mut text = column.clone();
                if let Some(d) = desc {
                    text.push_str(if d { ".desc" } else { ".asc" });
                }
                if let Some(n) = nulls {
                    text.push_str(if n { ".nullsfirst" } else { ".nullslast" });
                }
                orders.push(Order {
                    column,
                    descending: desc == Some(true),
                    nulls_first: nulls,
                });
                texts.push(text);
            }
            (Param::Order(orders), "order".to_string(), texts.join(","))
        }),
        any::<u64>().prop_map(|n| (Param::Limit(n), "limit".to_string(), n.to_string())),
        any::<u64>().prop_map(|n| (Param::Offset(n), "offset".to_string(), n.to_string())),
        (column(), condition(false)).prop_map(|(col, (f, text))| {
            // Rename the generated column to the key's column.
            let f = rename(f, &col);
            (Param::Filter(f), col, text)
        }),
        (
            prop::sample::select(vec!["or", "and", "not.or", "not.and"]),
            prop::collection::vec(tree_item(), 1..4)
        )
            .prop_map(|(key, items)| {
                let (filters, texts): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                let f = if key.ends_with("or") {
                    Filter::Or(filters)
                } else {
                    Filter::And(filters)
                };
                let f = if key.starts_with("not.") {
                    Filter::Not(Box::new(f))
                } else {
                    f
                };
                (
                    Param::Filter(f),
                    key.to_string(),
                    format!("({})", texts.join(",")),
                )
            }),
    ]
}

fn rename(f: Filter, col: &str) -> Filter {
    match f {
        Filter::Cond { op, operand, .. } => Filter::Cond {
            column: col.to_string(),
            op,
            operand,
        },
        Filter::Not(inner) => Filter::Not(Box::new(rename(*inner, col))),
        other => other,
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn reference() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        "\\PC{0,8}".prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        reference(),
        reference(),
        any::<String>(),
        "\\PC{0,16}",
        json_value(),
    )
        .prop_map(|(join_ref, ref_, topic, event, payload)| {
            // A null payload decodes as {} (Phoenix's default), so generate
            // what survives the trip.
            let payload = if payload.is_null() {
                json!({})
            } else {
                payload
            };
            Frame::new(join_ref, ref_, &topic, &event, payload)
        })
}

/// SQL LIKE by dynamic programming over (pattern, text) suffixes: the
/// oracle for the matcher, written independently of it.
fn like_oracle(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '%' => Tok::Any,
            '_' => Tok::One,
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let t: Vec<char> = text.chars().collect();
    // m[i][j]: toks[i..] matches t[j..].
    let mut m = vec![vec![false; t.len() + 1]; toks.len() + 1];
    m[toks.len()][t.len()] = true;
    for i in (0..toks.len()).rev() {
        for j in (0..=t.len()).rev() {
            m[i][j] = match &toks[i] {
                Tok::Any => m[i + 1][j] || (j < t.len() && m[i][j + 1]),
                Tok::One => j < t.len() && m[i + 1][j + 1],
                Tok::Lit(c) => j < t.len() && t[j] == *c && m[i + 1][j + 1],
            };
        }
    }
    m[0][0]
}

fn job_row(status: &str) -> Row {
    json!({
        "id": "9f0c3a64-8a8e-4e5e-9a0b-0d4c1f2e3a4b",
        "team_id": "0b6d2f9e-35a4-4a57-9d0b-2b1c6f0e1a01",
        "gateway_id": null,
        "status": status,
        "attempt": 1,
        "payload": {},
        "error": null,
        "created_at": "2025-01-01T12:00:00.123456+00:00",
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

// ------------------------------------------------------------- postgrest

proptest! {
    #![proptest_config(config(512))]

    /// Any query string: no panic; a refusal is a 400 PGRST100 with a
    /// message and details.
    #[test]
    fn postgrest_arbitrary_queries_never_panic(raw in prop_oneof![query_text(), any::<String>()]) {
        if let Err(e) = parse_query(&raw) {
            prop_assert_eq!(e.code.as_str(), "PGRST100");
            prop_assert_eq!(e.status, 400);
            prop_assert!(!e.message.is_empty());
            prop_assert!(e.details.as_deref().is_some_and(|d| !d.is_empty()));
        }
    }

    /// Nesting depth is bounded: deep trees are a PGRST100, never a stack
    /// overflow; trees within the bound parse.
    #[test]
    fn postgrest_deep_logic_trees_are_refused_not_overflowed(
        depth in prop_oneof![1usize..=MAX_LOGIC_DEPTH + 2, 1usize..5_000],
        word in prop::sample::select(vec!["or(", "and(", "not.or(", "not.and("]),
    ) {
        let raw = format!("or=({}a.eq.1{})", word.repeat(depth - 1), ")".repeat(depth - 1));
        match parse_query(&raw) {
            Ok(q) => prop_assert!(depth <= MAX_LOGIC_DEPTH && q.filters.len() == 1),
            Err(e) => {
                prop_assert!(depth > MAX_LOGIC_DEPTH, "depth {depth} refused: {e:?}");
                prop_assert_eq!(e.code.as_str(), "PGRST100");
            }
        }
    }

    /// Generated valid parameters, form-encoded as supabase-js does, parse
    /// to exactly what was generated.
    #[test]
    fn postgrest_valid_queries_parse_to_what_was_generated(
        params in prop::collection::vec(param(), 0..6),
    ) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        let mut want = Query::default();
        for (p, key, value) in &params {
            ser.append_pair(key, value);
            match p.clone() {
                Param::Select(s) => want.select = s,
                Param::Order(o) => want.order = o,
                Param::Limit(n) => want.limit = Some(n),
                Param::Offset(n) => want.offset = Some(n),
                Param::Filter(f) => want.filters.push(f),
            }
        }
        let raw = ser.finish();
        let got = parse_query(&raw).map_err(|e| TestCaseError::fail(format!("{raw}: {e:?}")))?;
        prop_assert_eq!(got, want, "query {}", raw);
    }
}

// --------------------------------------------------------------- frames

proptest! {
    #![proptest_config(config(512))]

    /// Any text, and any JSON text: decoding never panics and errors explain.
    #[test]
    fn frames_decode_arbitrary_text_without_panicking(
        text in prop_oneof![any::<String>(), json_value().prop_map(|v| v.to_string())],
    ) {
        match Frame::decode(&text) {
            Ok(f) => {
                // Whatever was accepted re-encodes to a frame that decodes the same.
                prop_assert_eq!(Frame::decode(&f.encode(Vsn::V2)).ok(), Some(f));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// encode → decode is the identity for 2.0.0 and drops only the
    /// join_ref (not sent by the server) for 1.0.0.
    #[test]
    fn frames_round_trip_both_serializers(f in frame()) {
        let v2 = Frame::decode(&f.encode(Vsn::V2)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&v2, &f);
        let v1 = Frame::decode(&f.encode(Vsn::V1)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(v1, Frame { join_ref: Value::Null, ..f });
    }

    /// Binary pushes: arbitrary bytes never panic; generated pushes decode
    /// to their fields and reflect as the matching broadcast.
    #[test]
    fn binary_pushes_decode_and_reflect(
        noise in prop::collection::vec(any::<u8>(), 0..64),
        join_ref in "\\PC{0,6}",
        ref_ in "\\PC{0,6}",
        topic in "\\PC{0,40}",
        event in "\\PC{0,20}",
        metadata in prop::collection::vec(any::<u8>(), 0..40),
        encoding in 0u8..2,
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Some(p) = BinaryPush::decode(&noise) {
            prop_assert_eq!(noise[0], 3);
            let total = 7 + p.join_ref.len() + p.ref_.len() + p.topic.len() + p.event.len()
                + p.metadata.len() + p.payload.len();
            prop_assert_eq!(total, noise.len());
        }
        let fields = [join_ref.as_bytes(), ref_.as_bytes(), topic.as_bytes(), event.as_bytes(), &metadata];
        prop_assume!(fields.iter().all(|f| f.len() <= 255));
        let mut bytes = vec![3u8];
        bytes.extend(fields.iter().map(|f| f.len() as u8));
        bytes.push(encoding);
        for f in fields {
            bytes.extend_from_slice(f);
        }
        bytes.extend_from_slice(&payload);
        let p = BinaryPush::decode(&bytes).ok_or_else(|| TestCaseError::fail("valid push refused"))?;
        prop_assert_eq!(
            (&p.join_ref, &p.ref_, &p.topic, &p.event, &p.metadata, p.encoding, &p.payload),
            (&join_ref, &ref_, &topic, &event, &metadata, encoding, &payload)
        );
        let out = p.to_broadcast().ok_or_else(|| TestCaseError::fail("no broadcast"))?;
        let mut want = vec![4u8, topic.len() as u8, event.len() as u8, metadata.len() as u8, encoding];
        want.extend_from_slice(topic.as_bytes());
        want.extend_from_slice(event.as_bytes());
        want.extend_from_slice(&metadata);
        want.extend_from_slice(&payload);
        prop_assert_eq!(out, want);
    }
}

// ------------------------------------------------------- realtime filters

proptest! {
    #![proptest_config(config(512))]

    /// Any filter text against no table and a real one, and any binding
    /// entry: no panic, errors are explanations; parsed filters evaluate
    /// against a row without panicking.
    #[test]
    fn realtime_filters_never_panic(
        text in prop_oneof![query_text(), any::<String>()],
        entry in json_value(),
        status in "\\PC{0,12}",
    ) {
        for table in [None, Some(&schema::GATEWAY_JOBS)] {
            if let Err(e) = parse_filter(&text, table) {
                prop_assert!(!e.is_empty());
            }
        }
        if let Err(e) = Binding::parse(&entry, 1) {
            prop_assert!(!e.is_empty());
        }
        let entry = json!({"event": "*", "schema": "public", "table": "gateway_jobs", "filter": text});
        if let Ok(b) = Binding::parse(&entry, 1) {
            let _ = b.matches(&schema::GATEWAY_JOBS, ChangeKind::Insert, &job_row(&status));
        }
    }

    /// `like`/`ilike` filters agree with an independent SQL LIKE oracle.
    #[test]
    fn realtime_like_matches_the_oracle(
        pattern in "[ab%_*\\\\]{0,10}",
        text in "[ab%_\\\\]{0,10}",
        ci in any::<bool>(),
    ) {
        let op = if ci { "ilike" } else { "like" };
        let entry = json!({"event": "*", "schema": "public", "table": "gateway_jobs",
            "filter": format!("status={op}.{pattern}")});
        let b = Binding::parse(&entry, 1).map_err(TestCaseError::fail)?;
        let got = b.matches(&schema::GATEWAY_JOBS, ChangeKind::Insert, &job_row(&text));
        // Realtime reads `*` as `%`.
        prop_assert_eq!(got, like_oracle(&pattern.replace('*', "%"), &text));
    }

    /// Filter values and body values are cast per column type without
    /// panicking; a refused filter value is a 22P02; an accepted timestamp's
    /// canonical text re-parses to itself.
    #[test]
    fn column_casts_never_panic(
        text in prop_oneof![
            query_text(),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?",
            "-?[0-9]{1,20}",
            any::<String>(),
        ],
        value in json_value(),
    ) {
        for table in schema::TABLES {
            for col in table.columns {
                if let Err(e) = values::cast_text(col, &text) {
                    prop_assert_eq!(e.code.as_str(), "22P02");
                }
                let _ = values::cast_json(table, col, &value);
            }
        }
        // The canonical text (microseconds, like timestamptz) is a fixed
        // point: casting what the hub stored gives the same text back.
        if let Some(t) = values::parse_timestamp(&text) {
            let canonical = values::format_timestamp(t);
            let again = values::parse_timestamp(&canonical).map(values::format_timestamp);
            prop_assert_eq!(again.as_deref(), Some(canonical.as_str()));
        }
    }
}
