//! The server's clock as seen from this host (control-plane.md §12.5,
//! §17 item 14). Freshness rules compare `team_gateways.last_seen_at`,
//! which the *server* sets, with "now"; a host clock that is off by more
//! than about a minute would then block (or wrongly allow) work even when
//! heartbeats are on time. Every freshness check therefore uses
//! [`ServerClock::server_now_ms`]: local time plus the offset measured from
//! the last server timestamp seen (the `last_seen_at` the heartbeat just
//! set, or an HTTP `Date` header).
//!
//! Until a measurement exists the local clock is used as is.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use panorama_protocol::operational::is_heartbeat_fresh;

/// Offset estimate (`server − local`, in ms).
#[derive(Debug, Default)]
pub struct ServerClock {
    offset_ms: AtomicI64,
    measured: AtomicBool,
}

impl ServerClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a server timestamp (ms since the epoch) produced while a
    /// request was in flight between `sent_local_ms` and `recv_local_ms`;
    /// the server's instant is taken as the midpoint (error ≤ RTT / 2).
    pub fn observe(&self, server_ms: i64, sent_local_ms: i64, recv_local_ms: i64) {
        let (a, b) = (
            sent_local_ms.min(recv_local_ms),
            sent_local_ms.max(recv_local_ms),
        );
        let local_mid = a + (b - a) / 2;
        self.offset_ms
            .store(server_ms - local_mid, Ordering::SeqCst);
        self.measured.store(true, Ordering::SeqCst);
    }

    /// Record an ISO timestamp written by the server (e.g. `last_seen_at`
    /// right after our heartbeat). False if it does not parse.
    pub fn observe_timestamp(
        &self,
        server_iso: &str,
        sent_local_ms: i64,
        recv_local_ms: i64,
    ) -> bool {
        match parse_iso_ms(server_iso) {
            Some(server_ms) => {
                self.observe(server_ms, sent_local_ms, recv_local_ms);
                true
            }
            None => false,
        }
    }

    /// Record an HTTP `Date` header (RFC 7231 IMF-fixdate, 1 s resolution:
    /// the true instant is on average half a second later).
    pub fn observe_date_header(&self, value: &str, recv_local_ms: i64) -> bool {
        match chrono::DateTime::parse_from_rfc2822(value.trim()) {
            Ok(date) => {
                let server_ms = date.timestamp_millis() + 500;
                self.observe(server_ms, recv_local_ms, recv_local_ms);
                true
            }
            Err(_) => false,
        }
    }

    /// `server − local` in ms (0 until measured).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn is_measured(&self) -> bool {
        self.measured.load(Ordering::SeqCst)
    }

    /// The server's "now" given the local `now_ms`.
    pub fn server_now_at(&self, local_now_ms: i64) -> i64 {
        local_now_ms + self.offset_ms()
    }

    /// The server's "now" (local time plus the measured offset).
    pub fn server_now_ms(&self) -> i64 {
        self.server_now_at(crate::timestamp::now_ms())
    }

    /// The 90 s heartbeat freshness rule against the server's clock.
    pub fn is_heartbeat_fresh(&self, last_seen_at: Option<&str>) -> bool {
        is_heartbeat_fresh(last_seen_at, self.server_now_ms())
    }
}

fn parse_iso_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.timestamp_millis())
        .or_else(|| {
            // PostgREST without an offset: `2025-01-01T12:00:00.123456`.
            chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|d| d.and_utc().timestamp_millis())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 1_735_732_800_000; // 2025-01-01T12:00:00Z

    #[test]
    fn unmeasured_clock_is_the_local_clock() {
        let c = ServerClock::new();
        assert!(!c.is_measured());
        assert_eq!(c.server_now_at(NOON), NOON);
    }

    #[test]
    fn offset_from_a_server_timestamp_uses_the_request_midpoint() {
        let c = ServerClock::new();
        // The local clock is 2 minutes fast; the request took 200 ms.
        let local_sent = NOON + 120_000;
        assert!(c.observe_timestamp("2025-01-01T12:00:00.100Z", local_sent, local_sent + 200));
        assert!(c.is_measured());
        assert_eq!(c.offset_ms(), -120_000);
        assert_eq!(c.server_now_at(NOON + 125_000), NOON + 5_000);
        assert!(c.observe_timestamp(
            "2025-01-01T12:00:00.100+00:00",
            local_sent,
            local_sent + 200
        ));
        assert!(c.observe_timestamp("2025-01-01T12:00:00.100", local_sent, local_sent + 200));
        assert_eq!(c.offset_ms(), -120_000);
        assert!(!c.observe_timestamp("yesterday", 0, 0));
    }

    #[test]
    fn offset_from_an_http_date_header() {
        let c = ServerClock::new();
        // Local clock 90 s slow.
        assert!(c.observe_date_header("Wed, 01 Jan 2025 12:00:00 GMT", NOON - 90_000));
        assert_eq!(c.offset_ms(), 90_500);
        assert!(!c.observe_date_header("not a date", NOON));
        assert_eq!(c.offset_ms(), 90_500);
    }

    #[test]
    fn freshness_follows_the_server_clock_not_the_local_one() {
        let c = ServerClock::new();
        let local_now = crate::timestamp::now_ms();
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
        };
        // Our clock is 2 minutes ahead of the server's. The server saw a
        // heartbeat 10 s ago: by the local clock that is 130 s old (stale),
        // by the server's clock it is fresh.
        let server_now = local_now - 120_000;
        let seen = iso(server_now - 10_000);
        assert!(!is_heartbeat_fresh(Some(&seen), local_now));
        c.observe(server_now, local_now, local_now);
        assert!(c.is_heartbeat_fresh(Some(&seen)));
        // Our clock is 2 minutes behind: a heartbeat 100 s old on the server
        // looks 20 s in the future locally (fresh); it is stale.
        let server_now = local_now + 120_000;
        let seen = iso(server_now - 100_000);
        assert!(is_heartbeat_fresh(Some(&seen), local_now));
        c.observe(server_now, local_now, local_now);
        assert!(!c.is_heartbeat_fresh(Some(&seen)));
        assert!(!c.is_heartbeat_fresh(None));
    }
}
