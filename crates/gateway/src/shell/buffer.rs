//! The per-session event buffer (runtime.md §5.6): sequence numbers from 1,
//! eviction by count and by a byte estimate, non-destructive paged reads.

use std::collections::VecDeque;

use panorama_protocol::results::{ShellSessionEvent, ShellStream};

/// Max buffered events per session.
pub const MAX_SHELL_SESSION_EVENTS: usize = 800;
/// Max buffered bytes per session (estimate, see [`estimate_event_bytes`]).
pub const MAX_SHELL_SESSION_BUFFER_BYTES: usize = 1_000_000;
/// Fixed per-event overhead in the byte estimate.
pub const SHELL_EVENT_OVERHEAD_BYTES: usize = 64;

/// UTF-8 length of the data plus 64.
pub fn estimate_event_bytes(data: &str) -> usize {
    data.len() + SHELL_EVENT_OVERHEAD_BYTES
}

/// One page of a `read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<ShellSessionEvent>,
    pub has_more: bool,
    pub latest_sequence: u64,
}

#[derive(Debug, Clone)]
pub struct EventBuffer {
    events: VecDeque<ShellSessionEvent>,
    next_sequence: u64,
    buffered_bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Default for EventBuffer {
    fn default() -> Self {
        EventBuffer::with_limits(MAX_SHELL_SESSION_EVENTS, MAX_SHELL_SESSION_BUFFER_BYTES)
    }
}

impl EventBuffer {
    pub fn with_limits(max_events: usize, max_bytes: usize) -> Self {
        EventBuffer {
            events: VecDeque::new(),
            next_sequence: 1,
            buffered_bytes: 0,
            max_events,
            max_bytes,
        }
    }

    /// Appends an event unless `data` is empty; returns whether it did. Then
    /// evicts the oldest events while over either limit.
    pub fn append(&mut self, stream: ShellStream, data: &str, timestamp: &str) -> bool {
        if data.is_empty() {
            return false;
        }
        let event = ShellSessionEvent {
            sequence: self.next_sequence,
            stream,
            data: data.to_string(),
            timestamp: timestamp.to_string(),
        };
        self.next_sequence += 1;
        self.buffered_bytes += estimate_event_bytes(&event.data);
        self.events.push_back(event);
        while self.events.len() > self.max_events || self.buffered_bytes > self.max_bytes {
            let Some(removed) = self.events.pop_front() else {
                break;
            };
            self.buffered_bytes = self
                .buffered_bytes
                .saturating_sub(estimate_event_bytes(&removed.data));
        }
        true
    }

    /// `next sequence - 1`: 0 before the first event.
    pub fn latest_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Sequence of the oldest buffered event.
    pub fn first_sequence(&self) -> Option<u64> {
        self.events.front().map(|e| e.sequence)
    }

    /// Events with `sequence > since`, oldest first, at most `max` of them.
    pub fn read(&self, since: i64, max: i64) -> EventPage {
        let max = usize::try_from(max.max(0)).unwrap_or(usize::MAX);
        let mut pending = self
            .events
            .iter()
            .filter(|e| i128::from(e.sequence) > i128::from(since));
        let events: Vec<ShellSessionEvent> = pending.by_ref().take(max).cloned().collect();
        let has_more = pending.next().is_some();
        EventPage {
            events,
            has_more,
            latest_sequence: self.latest_sequence(),
        }
    }
}

/// Incremental UTF-8 decoder for terminal output: a multi-byte character
/// split across two reads is kept until its tail arrives; invalid bytes
/// become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail_len(&self.pending);
        let split = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..split]).into_owned();
        self.pending.drain(..split);
        text
    }

    /// Whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of a trailing, possibly incomplete UTF-8 sequence (0..=3).
fn incomplete_tail_len(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back
        }
        let needed = if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            return 0;
        };
        return if back < needed { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2025-01-01T00:00:00.000Z";

    #[test]
    fn sequences_start_at_one_and_skip_empty_data() {
        let mut b = EventBuffer::default();
        assert_eq!(b.latest_sequence(), 0);
        assert!(!b.append(ShellStream::Stdout, "", TS));
        assert!(b.append(ShellStream::Stdout, "a", TS));
        assert!(b.append(ShellStream::System, "b", TS));
        assert_eq!(b.latest_sequence(), 2);
        let page = b.read(0, 200);
        assert_eq!(
            page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(!page.has_more);
    }

    #[test]
    fn evicts_by_count_and_bytes() {
        let mut b = EventBuffer::default();
        for i in 0..1000 {
            b.append(ShellStream::Stdout, &format!("{i}"), TS);
        }
        assert_eq!(b.len(), 800);
        assert_eq!(b.first_sequence(), Some(201));
        let mut b = EventBuffer::default();
        let chunk = "x".repeat(100_000 - 64);
        for _ in 0..15 {
            b.append(ShellStream::Stdout, &chunk, TS);
        }
        assert_eq!(b.len(), 10);
        assert_eq!(b.buffered_bytes(), 1_000_000);
        assert_eq!(b.first_sequence(), Some(6));
        // A single event larger than the cap evicts everything, itself included.
        b.append(ShellStream::Stdout, &"y".repeat(1_000_000), TS);
        assert!(b.is_empty());
        assert_eq!(b.buffered_bytes(), 0);
        assert_eq!(b.latest_sequence(), 16);
    }

    #[test]
    fn read_pages_with_has_more() {
        let mut b = EventBuffer::default();
        for i in 0..5 {
            b.append(ShellStream::Stdout, &format!("{i}"), TS);
        }
        let p = b.read(1, 2);
        assert_eq!(
            p.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(p.has_more);
        let p = b.read(3, 2);
        assert_eq!(
            p.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(!p.has_more);
        assert_eq!(p.latest_sequence, 5);
        assert!(b.read(5, 10).events.is_empty());
    }

    #[test]
    fn utf8_chunker_joins_split_characters() {
        let mut c = Utf8Chunker::default();
        let bytes = "héllo €".as_bytes();
        let mut out = String::new();
        for byte in bytes {
            out.push_str(&c.push(std::slice::from_ref(byte)));
        }
        out.push_str(&c.finish());
        assert_eq!(out, "héllo €");
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(c.push(&[0xe2, 0x82]), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }
}
