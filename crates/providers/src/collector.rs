//! Stream-JSON collector (providers.md §7, runtime.md §3.4).
//!
//! Bytes in, numbered line entries out. Keeps the first 5,000,000 bytes of
//! stdout, the last 2,000 entries and at most 200,000 chars of unterminated
//! line buffer (the tail is kept).

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

pub const MAX_OUTPUT_BYTES: usize = 5_000_000;
pub const MAX_STREAM_EVENTS: usize = 2_000;
pub const MAX_BUFFER_CHARS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorLimits {
    pub max_output_bytes: usize,
    pub max_events: usize,
    pub max_buffer_chars: usize,
}

impl Default for CollectorLimits {
    fn default() -> Self {
        CollectorLimits {
            max_output_bytes: MAX_OUTPUT_BYTES,
            max_events: MAX_STREAM_EVENTS,
            max_buffer_chars: MAX_BUFFER_CHARS,
        }
    }
}

/// One non-empty, trimmed stdout line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamEntry {
    /// 0-based over all lines seen (also the dropped ones).
    pub sequence: u64,
    pub raw: String,
    /// Parsed JSON, or `None` (`null`) for a non-JSON line.
    pub event: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamResult {
    /// The captured stdout (first `max_output_bytes` bytes, lossy UTF-8).
    pub stdout: String,
    pub events: Vec<StreamEntry>,
    /// The stdout copy hit its byte cap, or the line buffer overflowed.
    pub stdout_truncated: bool,
    /// Entries were dropped (oldest first).
    pub events_truncated: bool,
}

impl StreamResult {
    /// What the runner reports as `stdoutTruncated` (OR of all flags).
    pub fn any_truncated(&self) -> bool {
        self.stdout_truncated || self.events_truncated
    }
}

#[derive(Debug, Clone)]
pub struct StreamJsonCollector {
    limits: CollectorLimits,
    stdout: Vec<u8>,
    stdout_truncated: bool,
    buffer_truncated: bool,
    events_truncated: bool,
    /// Undecoded tail bytes of an incomplete UTF-8 sequence.
    pending_bytes: Vec<u8>,
    buffer: String,
    events: VecDeque<StreamEntry>,
    sequence: u64,
}

impl Default for StreamJsonCollector {
    fn default() -> Self {
        Self::new(CollectorLimits::default())
    }
}

impl StreamJsonCollector {
    pub fn new(limits: CollectorLimits) -> Self {
        StreamJsonCollector {
            limits,
            stdout: Vec::new(),
            stdout_truncated: false,
            buffer_truncated: false,
            events_truncated: false,
            pending_bytes: Vec::new(),
            buffer: String::new(),
            events: VecDeque::new(),
            sequence: 0,
        }
    }

    /// Feeds a stdout chunk; returns the entries completed by it (also kept internally).
    pub fn append(&mut self, chunk: &[u8]) -> Vec<StreamEntry> {
        let remaining = self
            .limits
            .max_output_bytes
            .saturating_sub(self.stdout.len());
        if chunk.len() > remaining {
            self.stdout.extend_from_slice(&chunk[..remaining]);
            self.stdout_truncated = true;
        } else {
            self.stdout.extend_from_slice(chunk);
        }
        self.pending_bytes.extend_from_slice(chunk);
        let text = self.decode_pending();
        self.buffer.push_str(&text);
        // Split completed lines off in one pass: draining the buffer line by
        // line would move the rest of a chunk once per line (quadratic).
        let buffer = std::mem::take(&mut self.buffer);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(rel) = buffer[start..].find('\n') {
            let end = start + rel;
            if let Some(entry) = self.parse_line(&buffer[start..end]) {
                out.push(entry);
            }
            start = end + 1;
        }
        self.buffer = buffer[start..].to_string();
        self.cap_buffer();
        out
    }

    /// Decodes `pending_bytes` like one lossy decode of the whole stream
    /// would: each invalid sequence becomes one U+FFFD, and only an
    /// incomplete sequence at the very end is held back for the next chunk.
    /// (Decoding the whole pending run lossily as soon as it held one invalid
    /// byte made the text depend on where chunks were cut.)
    fn decode_pending(&mut self) -> String {
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending_bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending_bytes = rest.to_vec();
        text
    }

    /// Keeps the last `max_buffer_chars` chars of the unterminated line.
    fn cap_buffer(&mut self) {
        // Byte length bounds the char count: count only when it may be over.
        if self.buffer.len() <= self.limits.max_buffer_chars {
            return;
        }
        let chars = self.buffer.chars().count();
        if chars > self.limits.max_buffer_chars {
            let skip = chars - self.limits.max_buffer_chars;
            let cut = self
                .buffer
                .char_indices()
                .nth(skip)
                .map_or(self.buffer.len(), |(i, _)| i);
            self.buffer.drain(..cut);
            self.buffer_truncated = true;
        }
    }

    fn parse_line(&mut self, line: &str) -> Option<StreamEntry> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return None;
        }
        let entry = StreamEntry {
            sequence: self.sequence,
            raw: trimmed.to_string(),
            event: serde_json::from_str(trimmed).ok(),
        };
        self.sequence += 1;
        self.events.push_back(entry.clone());
        if self.events.len() > self.limits.max_events {
            self.events.pop_front();
            self.events_truncated = true;
        }
        Some(entry)
    }

    /// Flushes the unterminated tail and returns everything collected.
    pub fn finalize(mut self) -> (StreamResult, Vec<StreamEntry>) {
        if !self.pending_bytes.is_empty() {
            let tail = String::from_utf8_lossy(&self.pending_bytes).into_owned();
            self.buffer.push_str(&tail);
            self.pending_bytes.clear();
            // The held-back bytes count against the buffer cap too.
            self.cap_buffer();
        }
        let rest = std::mem::take(&mut self.buffer);
        let last = self.parse_line(&rest).into_iter().collect();
        (
            StreamResult {
                stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
                events: self.events.into_iter().collect(),
                stdout_truncated: self.stdout_truncated || self.buffer_truncated,
                events_truncated: self.events_truncated,
            },
            last,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_trims_and_keeps_noise() {
        let mut c = StreamJsonCollector::default();
        let a = c.append(b"{\"a\":1}\n  \nnoise line  \n{\"b\"");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].event, Some(serde_json::json!({"a":1})));
        assert_eq!(a[1].raw, "noise line");
        assert_eq!(a[1].event, None);
        assert_eq!(a[1].sequence, 1);
        assert!(c.append(b":2}").is_empty());
        let (r, last) = c.finalize();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].event, Some(serde_json::json!({"b":2})));
        assert_eq!(r.events.len(), 3);
        assert_eq!(r.stdout, "{\"a\":1}\n  \nnoise line  \n{\"b\":2}");
        assert!(!r.any_truncated());
    }

    #[test]
    fn utf8_split_across_chunks() {
        let mut c = StreamJsonCollector::default();
        let bytes = "{\"t\":\"é\"}\n".as_bytes();
        c.append(&bytes[..7]);
        let out = c.append(&bytes[7..]);
        assert_eq!(out[0].event, Some(serde_json::json!({"t":"é"})));
    }

    #[test]
    fn limits_set_flags() {
        let limits = CollectorLimits {
            max_output_bytes: 10,
            max_events: 2,
            max_buffer_chars: 5,
        };
        let mut c = StreamJsonCollector::new(limits);
        c.append(b"1\n2\n3\n");
        c.append(b"abcdefghij");
        let (r, last) = c.finalize();
        assert_eq!(r.stdout.len(), 10);
        assert!(r.stdout_truncated);
        assert!(r.events_truncated);
        assert_eq!(last[0].raw, "fghij");
        let seqs: Vec<u64> = r.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(MAX_OUTPUT_BYTES, 5_000_000);
        assert_eq!(MAX_STREAM_EVENTS, 2_000);
        assert_eq!(MAX_BUFFER_CHARS, 200_000);
    }

    /// Regression (prop_parsers): an invalid byte in one chunk made the
    /// whole pending run decode lossily, so a valid sequence split across
    /// the next boundary turned into extra U+FFFDs.
    #[test]
    fn invalid_utf8_decodes_the_same_whatever_the_chunking() {
        let bytes = [
            0x80, 0xc2, 0x80, b'x', 0xf0, 0x9f, 0x98, 0x80, b'\n', 0xff, 0xe2, 0x82,
        ];
        let whole = {
            let mut c = StreamJsonCollector::default();
            c.append(&bytes);
            c.finalize()
        };
        for cut in 0..=bytes.len() {
            let mut c = StreamJsonCollector::default();
            let mut seen = c.append(&bytes[..cut]);
            seen.extend(c.append(&bytes[cut..]));
            let (r, last) = c.finalize();
            seen.extend(last);
            assert_eq!(r, whole.0, "cut at {cut}");
            assert_eq!(seen, r.events, "cut at {cut}");
        }
        assert_eq!(whole.0.events[0].raw, "\u{fffd}\u{80}x\u{1f600}");
        assert_eq!(whole.0.events[1].raw, "\u{fffd}\u{fffd}");
    }

    /// Regression (prop_parsers): an incomplete UTF-8 tail held back at the
    /// end was added to the line buffer after its cap was applied.
    #[test]
    fn held_back_bytes_count_against_the_buffer_cap() {
        let limits = CollectorLimits {
            max_output_bytes: 100,
            max_events: 10,
            max_buffer_chars: 3,
        };
        let mut c = StreamJsonCollector::new(limits);
        c.append(b"abc\xf0\x9f");
        let (r, last) = c.finalize();
        assert_eq!(last[0].raw, "bc\u{fffd}");
        assert!(r.stdout_truncated);
    }

    /// Many lines in one chunk are split in one pass (the buffer used to be
    /// drained line by line, moving the rest of the chunk every time).
    #[test]
    fn many_lines_in_one_chunk() {
        let limits = CollectorLimits {
            max_output_bytes: 10,
            max_events: 3,
            max_buffer_chars: 4,
        };
        let mut c = StreamJsonCollector::new(limits);
        let chunk = "7\n".repeat(300_000);
        assert_eq!(c.append(chunk.as_bytes()).len(), 300_000);
        let (r, last) = c.finalize();
        assert!(last.is_empty());
        let seqs: Vec<u64> = r.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![299_997, 299_998, 299_999]);
        assert!(r.events_truncated && r.stdout_truncated);
    }
}
