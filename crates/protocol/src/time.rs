//! Timestamp parsing without a clock.
//!
//! The gateway compares server-set `timestamptz` values with its own clock.
//! Parsing lives here so that every caller applies the same rule; the current
//! time is always a parameter, never read here.

/// Parses an ISO 8601 / RFC 3339 timestamp into Unix milliseconds.
///
/// Accepted: `YYYY-MM-DD`, optionally followed by `T`, `t` or a space and
/// `HH:MM[:SS[.fraction]]`, optionally followed by `Z`, `z` or an offset
/// `±HH`, `±HHMM` or `±HH:MM`. That covers PostgREST's
/// `2025-01-01T12:00:00.123456+00:00` and JavaScript's
/// `2025-01-01T12:00:00.000Z`. A missing offset means UTC (the server always
/// sends one; JavaScript would use local time, which a host-side gateway must
/// not depend on).
pub fn parse_timestamp_ms(raw: &str) -> Option<i64> {
    let s = raw.trim().as_bytes();
    let mut cursor = Cursor { bytes: s, pos: 0 };

    let year = cursor.digits(4)? as i64;
    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }

    let mut millis_of_day: i64 = 0;
    let mut offset_minutes: i64 = 0;
    if !cursor.done() {
        match cursor.next()? {
            b'T' | b't' | b' ' => {}
            _ => return None,
        }
        let hour = cursor.digits(2)?;
        cursor.expect(b':')?;
        let minute = cursor.digits(2)?;
        let mut second = 0;
        let mut millis = 0;
        if cursor.peek() == Some(b':') {
            cursor.next();
            second = cursor.digits(2)?;
            if cursor.peek() == Some(b'.') || cursor.peek() == Some(b',') {
                cursor.next();
                millis = cursor.fraction_millis()?;
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        millis_of_day = ((hour as i64 * 60 + minute as i64) * 60 + second as i64) * 1000 + millis;
        if !cursor.done() {
            offset_minutes = cursor.offset_minutes()?;
        }
    }
    if !cursor.done() {
        return None;
    }

    let days = days_from_civil(year, month, day);
    Some(days * 86_400_000 + millis_of_day - offset_minutes * 60_000)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn digits(&mut self, count: usize) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self.next()?;
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(byte - b'0');
        }
        Some(value)
    }

    /// Reads one or more fraction digits and keeps millisecond precision
    /// (truncating, as `Date.parse` does).
    fn fraction_millis(&mut self) -> Option<i64> {
        let start = self.pos;
        let mut millis = 0i64;
        while let Some(byte) = self.peek().filter(u8::is_ascii_digit) {
            let index = self.pos - start;
            if index < 3 {
                millis = millis * 10 + i64::from(byte - b'0');
            }
            self.pos += 1;
        }
        let count = self.pos - start;
        if count == 0 {
            return None;
        }
        for _ in count..3 {
            millis *= 10;
        }
        Some(millis)
    }

    fn offset_minutes(&mut self) -> Option<i64> {
        let sign = match self.next()? {
            b'Z' | b'z' => return self.done().then_some(0),
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let hours = self.digits(2)? as i64;
        let mut minutes = 0;
        if !self.done() {
            if self.peek() == Some(b':') {
                self.next();
            }
            minutes = self.digits(2)? as i64;
        }
        if hours > 23 || minutes > 59 {
            return None;
        }
        Some(sign * (hours * 60 + minutes))
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_javascript_iso_strings() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_timestamp_ms("2025-01-01T12:00:30.000Z"),
            Some(1_735_732_830_000)
        );
    }

    #[test]
    fn parses_postgrest_timestamptz_with_micro_fraction_and_offset() {
        assert_eq!(
            parse_timestamp_ms("2025-01-01T12:00:30.123456+00:00"),
            Some(1_735_732_830_123)
        );
        assert_eq!(
            parse_timestamp_ms("2025-01-01 14:00:30+02"),
            Some(1_735_732_830_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-01-01T07:00:30-0500"),
            Some(1_735_732_830_000)
        );
    }

    #[test]
    fn date_only_and_missing_offset_mean_utc() {
        assert_eq!(parse_timestamp_ms("2000-03-01"), Some(951_868_800_000));
        assert_eq!(
            parse_timestamp_ms("2000-02-29T00:00"),
            Some(951_782_400_000)
        );
    }

    #[test]
    fn rejects_garbage_and_impossible_dates() {
        for raw in [
            "",
            "not a date",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00Zjunk",
            "2025-01-01T00:00:00.Z",
            "2025/01/01",
        ] {
            assert_eq!(parse_timestamp_ms(raw), None, "{raw:?}");
        }
    }
}
