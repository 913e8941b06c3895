//! Property tests for the two parsers of untrusted agent output: the
//! stream-JSON collector (bytes in arbitrary chunks) and the per-provider
//! line normalizers (arbitrary lines, arbitrary JSON, mutated fixtures).
//!
//! Case counts: `PROPTEST_CASES` when set (the long form, see
//! `scripts/prop-long.sh`), else a small CI default per property.
//! Failures are not persisted: every failure found is pinned as a named
//! regression unit test next to the code it broke, and proptest's
//! `proptest-regressions/` files would land in a checkout shared by several
//! engineers.

use panorama_providers::collector::{CollectorLimits, StreamEntry, StreamJsonCollector};
use panorama_providers::normalize::{
    normalize_all, normalizer_for, trim_event_payload, NormalizedEvent, RunEventType,
    MAX_EVENT_PAYLOAD_CHARS,
};
use panorama_providers::ProviderId;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

/// `PROPTEST_CASES` if set, else `ci_default`. (The `proptest!` macro also
/// applies `PROPTEST_CASES` over any config; reading it here keeps the
/// plain-`TestRunner` property below on the same knob.)
fn config(ci_default: u32) -> Config {
    scaled_config(ci_default, 1)
}

/// `PROPTEST_CASES / divisor` (at least 1) if set, else `ci_default`: for a
/// property whose every case is expensive.
fn scaled_config(ci_default: u32, divisor: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(ci_default, |n| (n / divisor).max(1));
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- strategies

/// Bytes that look like agent stdout: JSON fragments, newlines, whitespace,
/// multi-byte UTF-8 and invalid UTF-8, so that chunk boundaries land inside
/// every kind of token.
fn stdout_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        2 => Just(b"  ".to_vec()),
        3 => Just(br#"{"type":"x","n":1}"#.to_vec()),
        2 => Just(br#"{"a":"#.to_vec()),
        2 => Just("é€😀".as_bytes().to_vec()),
        // Lone continuation, overlong, surrogate and truncated sequences.
        2 => prop::sample::select(vec![
            vec![0x80u8],
            vec![0xc0, 0xaf],
            vec![0xed, 0xa0, 0x80],
            vec![0xf0, 0x9f],
            vec![0xe2, 0x82],
            vec![0xff],
            vec![0xc3],
        ]),
        4 => prop::collection::vec(any::<u8>(), 0..12),
        4 => "[ -~]{0,16}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
}

/// Cut points into `len` bytes (sorted, may repeat: empty chunks are legal).
fn split(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    for c in cuts.iter_mut() {
        *c %= bytes.len() + 1;
    }
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(&bytes[start..c]);
        start = c;
    }
    out.push(&bytes[start..]);
    out
}

/// Feeds `chunks`; returns every entry handed out (appends, then the
/// finalize tail) and the final result.
fn collect(
    limits: CollectorLimits,
    chunks: &[&[u8]],
) -> (
    Vec<StreamEntry>,
    panorama_providers::collector::StreamResult,
) {
    let mut c = StreamJsonCollector::new(limits);
    let mut seen = Vec::new();
    for chunk in chunks {
        seen.extend(c.append(chunk));
    }
    let (result, last) = c.finalize();
    seen.extend(last);
    (seen, result)
}

/// What the collector must yield for a whole stream without limits: the
/// lossy-decoded text split on `\n`, trimmed, blank lines dropped.
fn model_entries(bytes: &[u8]) -> Vec<StreamEntry> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| StreamEntry {
            sequence: i as u64,
            raw: l.to_string(),
            event: serde_json::from_str(l).ok(),
        })
        .collect()
}

const KEYS: &[&str] = &[
    "type",
    "message",
    "content",
    "id",
    "text",
    "role",
    "item",
    "name",
    "input",
    "tool_use_id",
    "is_error",
    "session_id",
    "thread_id",
    "model",
    "result",
    "subtype",
    "status",
    "stats",
    "error",
    "errors",
    "usage",
    "stop_reason",
    "duration_ms",
];

const TYPES: &[&str] = &[
    "system",
    "assistant",
    "user",
    "result",
    "stream_event",
    "rate_limit_event",
    "text",
    "tool_use",
    "tool_result",
    "thread.started",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "item.completed",
    "item.started",
    "agent_message",
    "reasoning",
    "error",
    "init",
    "message",
    "error_max_turns",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "\\PC{0,6}",
    ]
}

/// Any JSON value, biased towards the keys and `type` values the
/// normalizers branch on so that generated objects reach deep code paths.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(TYPES).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object with a known `type`, so every branch of every normalizer is hit.
fn typed_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((key(), json_value()), 0..6),
    )
        .prop_map(|(t, kv)| {
            let mut m: Map<String, Value> = kv.into_iter().collect();
            m.insert("type".into(), Value::from(t));
            Value::Object(m)
        })
}

fn provider() -> impl Strategy<Value = ProviderId> {
    prop::sample::select(vec![
        ProviderId::ClaudeCode,
        ProviderId::Codex,
        ProviderId::Gemini,
    ])
}

/// One stdout line: JSON text of a value, a typed object, or raw text.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => typed_object().prop_map(|v| v.to_string()),
        2 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{0,40}",
        1 => any::<String>(),
    ]
}

/// Upper bound of a payload's serialization after [`trim_event_payload`]:
/// the preview is at most 200,000 chars of serialized JSON, which
/// re-escapes to at most 2 chars each (`"` and `\`; control characters are
/// already escaped), plus the fixed keys and `original_bytes`.
const MAX_TRIMMED_PAYLOAD_CHARS: usize = 2 * MAX_EVENT_PAYLOAD_CHARS + 100;

/// The invariants every normalized event must hold.
fn check_events(events: &[NormalizedEvent], lines: &[String]) -> Result<(), TestCaseError> {
    for e in events {
        match e {
            NormalizedEvent::Run {
                event_type,
                payload,
            } => {
                // Normalizers only ever emit these three; the lifecycle
                // events belong to the runner.
                prop_assert!(
                    matches!(
                        event_type,
                        RunEventType::Message | RunEventType::ToolCall | RunEventType::ToolResult
                    ),
                    "unexpected event type {event_type:?}"
                );
                prop_assert_eq!(RunEventType::parse(event_type.as_str()), Some(*event_type));
                prop_assert!(payload.is_object(), "payload is not an object: {payload}");
                prop_assert!(payload.to_string().chars().count() <= MAX_TRIMMED_PAYLOAD_CHARS);
            }
            NormalizedEvent::Unknown { raw } => {
                prop_assert!(!raw.is_empty());
                prop_assert!(
                    lines.iter().any(|l| l.trim() == raw.as_str()),
                    "unknown raw {raw:?} is not one of the input lines"
                );
            }
        }
    }
    Ok(())
}

fn run_lines(provider: ProviderId, lines: &[String]) -> Result<(), TestCaseError> {
    let mut n = normalizer_for(provider);
    // The transcript form splits on '\n', so compare against the pieces.
    let text = lines.join("\n");
    let pieces: Vec<String> = text.split('\n').map(str::to_string).collect();
    let events = normalize_all(n.as_mut(), &text);
    check_events(&events, &pieces)?;
    // The summary must stay serializable (it is reported as JSON).
    prop_assert!(serde_json::to_value(n.summary()).is_ok());
    Ok(())
}

fn fixture_lines(dir: &str) -> Vec<String> {
    let root = format!("{}/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
    // Hand-written fixtures plus the ones recorded from real CLI versions
    // (`<dir>/<version>/*.jsonl`).
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {root}: {e}"))
        .map(|e| e.expect("fixture dir entry").path())
        .flat_map(|p| {
            if p.is_dir() {
                std::fs::read_dir(&p)
                    .unwrap_or_else(|e| panic!("cannot list {}: {e}", p.display()))
                    .map(|e| e.expect("fixture dir entry").path())
                    .collect()
            } else {
                vec![p]
            }
        })
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A mutation applied at a path inside a fixture line's JSON.
#[derive(Debug, Clone)]
enum Mutation {
    Drop,
    Replace(Value),
}

/// Walks `path` (indices into object keys / array items, taken modulo the
/// size) and applies the mutation to the member reached.
fn mutate(v: &mut Value, path: &[usize], m: &Mutation) {
    let Some((&step, rest)) = path.split_first() else {
        if let Mutation::Replace(new) = m {
            *v = new.clone();
        }
        return;
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(step % map.len()).cloned().expect("key");
            if rest.is_empty() {
                match m {
                    Mutation::Drop => {
                        map.remove(&key);
                    }
                    Mutation::Replace(new) => {
                        map.insert(key, new.clone());
                    }
                }
            } else if let Some(child) = map.get_mut(&key) {
                mutate(child, rest, m);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = step % items.len();
            if rest.is_empty() {
                match m {
                    Mutation::Drop => {
                        items.remove(i);
                    }
                    Mutation::Replace(new) => items[i] = new.clone(),
                }
            } else {
                mutate(&mut items[i], rest, m);
            }
        }
        other => {
            if let Mutation::Replace(new) = m {
                *other = new.clone();
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => Just(Mutation::Drop),
        // Wrong types for the fields the normalizers read.
        3 => prop_oneof![
            Just(Value::Null),
            Just(Value::Bool(true)),
            Just(Value::from(-1)),
            Just(Value::from(1.5)),
            Just(Value::from("")),
            Just(Value::Array(vec![])),
            Just(Value::Object(Map::new())),
            json_value(),
        ]
        .prop_map(Mutation::Replace),
    ]
}

// ------------------------------------------------------------ collector

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes at arbitrary chunk boundaries: no panic, the same
    /// entries and result as one chunk, and both equal the line model.
    #[test]
    fn collector_is_chunk_split_invariant(
        bytes in stdout_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let limits = CollectorLimits::default();
        let (whole_entries, whole) = collect(limits, &[&bytes]);
        let (chunked_entries, chunked) = collect(limits, &split(&bytes, cuts));
        prop_assert_eq!(&chunked_entries, &whole_entries);
        prop_assert_eq!(&chunked, &whole);
        prop_assert_eq!(&whole_entries, &model_entries(&bytes));
        prop_assert_eq!(&whole.events, &whole_entries);
        prop_assert_eq!(whole.stdout.clone(), String::from_utf8_lossy(&bytes).into_owned());
        prop_assert!(!whole.any_truncated());
    }

    /// Tiny limits: every cap holds and the flags tell exactly when one hit.
    #[test]
    fn collector_respects_limits(
        bytes in stdout_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max_output_bytes in 0usize..48,
        max_events in 0usize..6,
        max_buffer_chars in 0usize..12,
    ) {
        let limits = CollectorLimits { max_output_bytes, max_events, max_buffer_chars };
        let chunks = split(&bytes, cuts);
        let mut c = StreamJsonCollector::new(limits);
        let mut handed_out = Vec::new();
        for chunk in &chunks {
            handed_out.extend(c.append(chunk));
        }
        let (r, last) = c.finalize();
        // The unterminated tail is what the buffer kept: never over its cap.
        for e in &last {
            prop_assert!(e.raw.chars().count() <= max_buffer_chars,
                "final line {:?} longer than {max_buffer_chars} chars", e.raw);
        }
        handed_out.extend(last);
        let kept = bytes.len().min(max_output_bytes);
        prop_assert_eq!(r.stdout.clone(), String::from_utf8_lossy(&bytes[..kept]).into_owned());
        if bytes.len() > max_output_bytes {
            prop_assert!(r.stdout_truncated);
        }
        prop_assert!(r.events.len() <= max_events);
        prop_assert_eq!(r.events_truncated, handed_out.len() > max_events);
        // The kept entries are the newest ones, in order.
        let newest = &handed_out[handed_out.len() - r.events.len()..];
        prop_assert_eq!(&r.events[..], newest);
        for (i, e) in handed_out.iter().enumerate() {
            prop_assert_eq!(e.sequence, i as u64);
            prop_assert!(!e.raw.is_empty() && e.raw.trim() == e.raw);
        }
    }
}

// ------------------------------------------------------------ normalizers

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary lines (JSON of any shape, typed objects, raw text).
    #[test]
    fn normalizers_survive_arbitrary_lines(
        provider in provider(),
        lines in prop::collection::vec(line(), 0..12),
    ) {
        run_lines(provider, &lines)?;
    }

    /// The real fixtures with fields dropped or replaced by wrong types.
    #[test]
    fn normalizers_survive_mutated_fixtures(
        provider in provider(),
        mutations in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::collection::vec(any::<usize>(), 1..5), mutation()),
            1..6,
        ),
    ) {
        let dir = match provider {
            ProviderId::ClaudeCode => "claude",
            ProviderId::Codex => "codex",
            ProviderId::Gemini => "gemini",
        };
        let mut lines = fixture_lines(dir);
        for (which, path, m) in &mutations {
            let i = which.index(lines.len());
            if let Ok(mut v) = serde_json::from_str::<Value>(&lines[i]) {
                mutate(&mut v, path, m);
                lines[i] = v.to_string();
            }
        }
        run_lines(provider, &lines)?;
    }

}

/// Payloads over the cap are replaced by the bounded preview object;
/// payloads within it are kept as they are. Each case serializes a
/// ~200,000-char payload (the cap is a constant), so this property runs a
/// hundredth of the long form's cases; it uses a plain `TestRunner` because
/// the `proptest!` macro would apply `PROPTEST_CASES` over the scaled count.
#[test]
fn trimmed_payloads_are_bounded() {
    let unit = prop::collection::vec(
        prop::sample::select(vec!['a', 'z', '"', '\\', 'é', '😀', '\n', '\u{1}']),
        1..5,
    )
    .prop_map(String::from_iter);
    let mut runner = proptest::test_runner::TestRunner::new(scaled_config(16, 100));
    let result = runner.run(
        &(unit, 0usize..64, any::<bool>()),
        |(unit, extra, below)| {
            // A string whose serialization lands just below or above the cap.
            let per = serde_json::to_string(&unit).unwrap().chars().count() - 2;
            let n = (MAX_EVENT_PAYLOAD_CHARS - 2) / per;
            let n = if below {
                n.saturating_sub(extra / per + 1)
            } else {
                n + extra + 1
            };
            let payload = Value::String(unit.repeat(n));
            let serialized = payload.to_string();
            let trimmed = trim_event_payload(payload.clone());
            if serialized.chars().count() <= MAX_EVENT_PAYLOAD_CHARS {
                prop_assert_eq!(&trimmed, &payload);
            } else {
                prop_assert_eq!(&trimmed["truncated"], &Value::Bool(true));
                prop_assert_eq!(
                    trimmed["original_bytes"].as_u64(),
                    Some(serialized.len() as u64)
                );
                let preview = trimmed["preview"].as_str().unwrap_or_default();
                prop_assert_eq!(preview.chars().count(), MAX_EVENT_PAYLOAD_CHARS);
                prop_assert!(serialized.starts_with(preview));
                prop_assert!(trimmed.to_string().chars().count() <= MAX_TRIMMED_PAYLOAD_CHARS);
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}
