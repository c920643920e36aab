//! The bounded store between the guest's UART and the host peer that reads
//! its console: bytes wait here until they form whole lines (or a partial
//! line has waited long enough), and past the capacity new bytes are
//! dropped and counted rather than kept without bound.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A partial line this long goes out without waiting for its newline.
pub const WRITE_THROUGH_BYTES: usize = 4096;

pub struct OutputBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// How many leading bytes may go out now: up to the last newline, or
    /// the whole of a partial line that is long or has waited long enough.
    ready: usize,
    /// When the partial line after `ready` began; None when there is none.
    partial_since: Option<Instant>,
    dropped: u64,
}

impl OutputBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            capacity,
            ready: 0,
            partial_since: None,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes that may be written out now.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Bytes refused because the buffer was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends what fits and drops (and counts) the rest.
    pub fn push(&mut self, data: &[u8]) {
        let accepted = &data[..data.len().min(self.capacity - self.bytes.len())];
        self.dropped += (data.len() - accepted.len()) as u64;
        if accepted.is_empty() {
            return;
        }
        let had_partial = self.bytes.len() > self.ready;
        let start = self.bytes.len();
        self.bytes.extend(accepted);
        let mut partial_began = !had_partial;
        if let Some(i) = accepted.iter().rposition(|&b| b == b'\n') {
            self.ready = start + i + 1;
            partial_began = true;
        }
        if self.bytes.len() - self.ready >= WRITE_THROUGH_BYTES {
            self.ready = self.bytes.len();
        }
        if self.bytes.len() == self.ready {
            self.partial_since = None;
        } else if partial_began {
            // Once per line, not per byte: a clock read is cheap, not free.
            self.partial_since = Some(Instant::now());
        }
    }

    /// Makes a partial line that has waited `delay` ready to go out.
    /// Returns when a partial line still waiting will be due.
    pub fn release_partial(&mut self, now: Instant, delay: Duration) -> Option<Instant> {
        let due = self.partial_since? + delay;
        if now < due {
            return Some(due);
        }
        self.release_all();
        None
    }

    /// Makes everything ready, partial line or not (at exit).
    pub fn release_all(&mut self) {
        self.ready = self.bytes.len();
        self.partial_since = None;
    }

    /// Replaces `chunk` with up to `max` ready bytes, ending at a newline
    /// where one falls inside, so that each write carries whole lines.
    pub fn copy_ready(&self, chunk: &mut Vec<u8>, max: usize) {
        chunk.clear();
        chunk.extend(self.bytes.range(..self.ready.min(max)));
        if self.ready > max {
            if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                chunk.truncate(i + 1);
            }
        }
    }

    /// Forgets the first `n` bytes, which the peer took.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.ready);
        self.bytes.drain(..n);
        self.ready -= n;
        if self.bytes.is_empty() && self.bytes.capacity() > WRITE_THROUGH_BYTES * 16 {
            // Give back what a burst grew, keep enough for ordinary output.
            self.bytes.shrink_to(WRITE_THROUGH_BYTES * 16);
        }
    }

    /// Forgets everything; returns how many bytes that was.
    pub fn clear(&mut self) -> usize {
        let n = self.bytes.len();
        self.bytes.clear();
        self.ready = 0;
        self.partial_since = None;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(5);

    #[test]
    fn whole_lines_are_ready_and_a_partial_line_waits_its_turn() {
        let mut b = OutputBuffer::new(1024);
        for byte in b"hello\n# " {
            b.push(&[*byte]);
        }
        assert_eq!((b.ready(), b.len()), (6, 8));
        let now = Instant::now();
        let due = b.release_partial(now, DELAY).expect("the prompt waits");
        assert!(due <= now + DELAY);
        assert_eq!(b.ready(), 6);
        assert_eq!(b.release_partial(due, DELAY), None);
        assert_eq!(b.ready(), 8);
        // The next partial line has its own clock.
        b.push(b"ls");
        assert!(b.release_partial(now, DELAY).is_some());
    }

    #[test]
    fn a_long_partial_line_goes_out_without_its_newline() {
        let mut b = OutputBuffer::new(1 << 20);
        b.push(&vec![b'x'; WRITE_THROUGH_BYTES - 1]);
        assert_eq!(b.ready(), 0);
        b.push(b"x");
        assert_eq!(b.ready(), WRITE_THROUGH_BYTES);
        assert_eq!(b.release_partial(Instant::now(), DELAY), None);
    }

    #[test]
    fn the_capacity_bounds_the_buffer_and_drops_are_counted() {
        let mut b = OutputBuffer::new(16);
        b.push(b"0123456789\n");
        b.push(b"abcdefghij");
        assert_eq!((b.len(), b.dropped()), (16, 5));
        b.push(b"z");
        assert_eq!((b.len(), b.dropped()), (16, 6));
        let mut chunk = Vec::new();
        b.copy_ready(&mut chunk, 64);
        assert_eq!(chunk, b"0123456789\n");
        b.consume(chunk.len());
        b.push(b"klm\n");
        assert_eq!((b.len(), b.ready(), b.dropped()), (9, 9, 6));
        assert_eq!(b.clear(), 9);
        assert!(b.is_empty());
    }

    #[test]
    fn partial_writes_resume_where_the_peer_stopped() {
        let mut b = OutputBuffer::new(1024);
        b.push(b"first line\nsecond line\n");
        let mut chunk = Vec::new();
        let mut out = Vec::new();
        while b.ready() > 0 {
            b.copy_ready(&mut chunk, 64);
            // The peer takes 3 bytes at a time.
            let n = chunk.len().min(3);
            out.extend_from_slice(&chunk[..n]);
            b.consume(n);
        }
        assert_eq!(out, b"first line\nsecond line\n");
        assert!(b.is_empty());
    }

    #[test]
    fn chunks_end_at_a_line_boundary_when_one_fits() {
        let mut b = OutputBuffer::new(1024);
        b.push(b"aaaa\nbbbb\ncccc\n");
        let mut chunk = Vec::new();
        b.copy_ready(&mut chunk, 12);
        assert_eq!(chunk, b"aaaa\nbbbb\n");
        b.consume(chunk.len());
        b.copy_ready(&mut chunk, 3);
        assert_eq!(chunk, b"ccc", "no newline inside: the chunk is cut");
    }

    #[test]
    fn consuming_more_than_is_ready_is_harmless() {
        let mut b = OutputBuffer::new(64);
        b.push(b"ok\npartial");
        b.consume(100);
        assert_eq!((b.len(), b.ready()), (7, 0));
    }
}
