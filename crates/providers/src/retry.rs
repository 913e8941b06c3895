//! Retry configuration and classification (providers.md §8).

use serde::Serialize;
use serde_json::Value;

use crate::config::RunOutputFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    ParseError,
    Timeout,
    Capacity,
    Network,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ParseError => "parse_error",
            Self::Timeout => "timeout",
            Self::Capacity => "capacity",
            Self::Network => "network",
        }
    }
}

pub const CAPACITY_MARKERS: &[&str] = &[
    "resource_exhausted",
    "capacity",
    "rate limit",
    "too many requests",
    "429",
];
pub const NETWORK_MARKERS: &[&str] = &[
    "econnreset",
    "etimedout",
    "enotfound",
    "eai_again",
    "socket hang up",
    "network",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub on_parse_error: bool,
    pub on_timeout: bool,
    pub on_capacity: bool,
    pub on_network: bool,
}

impl Default for RetryConfig {
    /// Retries off: one attempt, no backoff.
    fn default() -> Self {
        RetryConfig {
            max_attempts: 1,
            backoff_ms: 0,
            max_backoff_ms: 0,
            on_parse_error: false,
            on_timeout: false,
            on_capacity: false,
            on_network: false,
        }
    }
}

fn pick<'a>(obj: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
}

impl RetryConfig {
    /// Reads `config.retry` (alias `retries`/`retryPolicy`): `max_attempts`,
    /// `backoff_ms`, `max_backoff_ms`, and the booleans `retry_on_parse_error`,
    /// `retry_on_timeout`, `retry_on_capacity`, `retry_on_network` (each also
    /// camelCase or without the `retry_` prefix). Absent → retries off.
    pub fn from_config(config: &Value) -> Self {
        let Some(r) = pick(config, &["retry", "retries", "retryPolicy", "retry_policy"])
            .filter(|v| v.is_object())
        else {
            return Self::default();
        };
        let num = |keys: &[&str]| {
            pick(r, keys)
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite() && *n >= 0.0)
        };
        let flag = |keys: &[&str]| pick(r, keys).and_then(Value::as_bool).unwrap_or(false);
        let backoff_ms = num(&["backoff_ms", "backoffMs"]).unwrap_or(0.0) as u64;
        RetryConfig {
            max_attempts: num(&["max_attempts", "maxAttempts"]).map_or(1, |n| (n as u32).max(1)),
            backoff_ms,
            max_backoff_ms: num(&["max_backoff_ms", "maxBackoffMs"])
                .map_or(backoff_ms, |n| n as u64),
            on_parse_error: flag(&[
                "retry_on_parse_error",
                "retryOnParseError",
                "on_parse_error",
                "parse_error",
            ]),
            on_timeout: flag(&[
                "retry_on_timeout",
                "retryOnTimeout",
                "on_timeout",
                "timeout",
            ]),
            on_capacity: flag(&[
                "retry_on_capacity",
                "retryOnCapacity",
                "on_capacity",
                "capacity",
            ]),
            on_network: flag(&[
                "retry_on_network",
                "retryOnNetwork",
                "on_network",
                "network",
            ]),
        }
    }

    /// Delay before attempt `attempt + 1` (attempt is 1-based):
    /// `backoff_ms * 2^(attempt-1)`, capped at `max_backoff_ms`.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        let d = self.backoff_ms.saturating_mul(factor);
        if self.max_backoff_ms > 0 {
            d.min(self.max_backoff_ms)
        } else {
            d
        }
    }
}

/// One finished attempt, as far as retrying is concerned.
#[derive(Debug, Clone, Default)]
pub struct AttemptOutcome<'a> {
    pub ok: bool,
    pub timed_out: bool,
    pub parse_error: Option<&'a str>,
    pub error: Option<&'a str>,
    pub stderr: &'a str,
    pub cancelled: bool,
}

/// Pure §8 classification: `Some(reason)` when the attempt should be retried
/// (the caller also checks `attempt < max_attempts`).
pub fn classify_retry(
    config: &RetryConfig,
    format: RunOutputFormat,
    outcome: &AttemptOutcome<'_>,
) -> Option<RetryReason> {
    if outcome.cancelled {
        return None;
    }
    if outcome.timed_out {
        return config.on_timeout.then_some(RetryReason::Timeout);
    }
    let haystack = format!("{}\n{}", outcome.error.unwrap_or(""), outcome.stderr).to_lowercase();
    if !outcome.ok || outcome.error.is_some() {
        if config.on_capacity && CAPACITY_MARKERS.iter().any(|m| haystack.contains(m)) {
            return Some(RetryReason::Capacity);
        }
        if config.on_network && NETWORK_MARKERS.iter().any(|m| haystack.contains(m)) {
            return Some(RetryReason::Network);
        }
    }
    if outcome.parse_error.is_some() && format == RunOutputFormat::Json && config.on_parse_error {
        return Some(RetryReason::ParseError);
    }
    None
}

/// Whether another attempt is allowed and wanted.
pub fn should_retry(
    config: &RetryConfig,
    attempt: u32,
    format: RunOutputFormat,
    outcome: &AttemptOutcome<'_>,
) -> Option<(RetryReason, u64)> {
    if attempt >= config.max_attempts {
        return None;
    }
    classify_retry(config, format, outcome).map(|r| (r, config.delay_ms(attempt)))
}

/// `run_progress` payload at attempt start.
pub fn attempt_started_payload(attempt: u32, max_attempts: u32) -> Value {
    serde_json::json!({"phase": "attempt_started", "attempt": attempt, "max_attempts": max_attempts})
}

/// `run_progress` payload of a scheduled retry.
pub fn retry_scheduled_payload(
    attempt: u32,
    max_attempts: u32,
    reason: RetryReason,
    delay_ms: u64,
) -> Value {
    serde_json::json!({"phase": "retry_scheduled", "attempt": attempt, "max_attempts": max_attempts,
        "reason": reason.as_str(), "delay_ms": delay_ms})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_off_and_parsing() {
        let off = RetryConfig::from_config(&json!({}));
        assert_eq!(off, RetryConfig::default());
        assert_eq!(off.max_attempts, 1);
        let on = RetryConfig::from_config(
            &json!({"retry": {"maxAttempts": 3, "backoffMs": 100, "maxBackoffMs": 250,
            "retryOnCapacity": true, "retry_on_timeout": true, "network": true}}),
        );
        assert_eq!(on.max_attempts, 3);
        assert_eq!(
            (on.delay_ms(1), on.delay_ms(2), on.delay_ms(3)),
            (100, 200, 250)
        );
        assert!(on.on_capacity && on.on_timeout && on.on_network && !on.on_parse_error);
    }

    #[test]
    fn classification() {
        let all = RetryConfig {
            max_attempts: 2,
            backoff_ms: 10,
            max_backoff_ms: 0,
            on_parse_error: true,
            on_timeout: true,
            on_capacity: true,
            on_network: true,
        };
        let f = RunOutputFormat::Json;
        let c = |o: AttemptOutcome| classify_retry(&all, f, &o);
        assert_eq!(
            c(AttemptOutcome {
                timed_out: true,
                ..Default::default()
            }),
            Some(RetryReason::Timeout)
        );
        assert_eq!(
            c(AttemptOutcome {
                stderr: "API Error: 429 rate_limit_error",
                ..Default::default()
            }),
            Some(RetryReason::Capacity)
        );
        assert_eq!(
            c(AttemptOutcome {
                error: Some("RESOURCE_EXHAUSTED"),
                ok: true,
                ..Default::default()
            }),
            Some(RetryReason::Capacity)
        );
        assert_eq!(
            c(AttemptOutcome {
                stderr: "Error: read ECONNRESET",
                ..Default::default()
            }),
            Some(RetryReason::Network)
        );
        assert_eq!(
            c(AttemptOutcome {
                ok: true,
                parse_error: Some("x"),
                ..Default::default()
            }),
            Some(RetryReason::ParseError)
        );
        assert_eq!(
            classify_retry(
                &all,
                RunOutputFormat::Text,
                &AttemptOutcome {
                    ok: true,
                    parse_error: Some("x"),
                    ..Default::default()
                }
            ),
            None
        );
        assert_eq!(
            c(AttemptOutcome {
                stderr: "boom",
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            c(AttemptOutcome {
                timed_out: true,
                cancelled: true,
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            classify_retry(
                &RetryConfig::default(),
                f,
                &AttemptOutcome {
                    timed_out: true,
                    ..Default::default()
                }
            ),
            None
        );
        assert_eq!(
            should_retry(
                &all,
                1,
                f,
                &AttemptOutcome {
                    timed_out: true,
                    ..Default::default()
                }
            ),
            Some((RetryReason::Timeout, 10))
        );
        assert_eq!(
            should_retry(
                &all,
                2,
                f,
                &AttemptOutcome {
                    timed_out: true,
                    ..Default::default()
                }
            ),
            None
        );
        assert_eq!(
            retry_scheduled_payload(1, 2, RetryReason::Capacity, 10),
            json!({"phase":"retry_scheduled","attempt":1,"max_attempts":2,"reason":"capacity","delay_ms":10})
        );
        assert_eq!(
            attempt_started_payload(1, 2),
            json!({"phase":"attempt_started","attempt":1,"max_attempts":2})
        );
    }
}
