//! The pure parsers of virtio-vsock, against references written here:
//! a host peer's `CONNECT <port>\n` line (whole, and read in pieces by the
//! handshake reader, which must stop right after the newline), the packet
//! header, a TX chain split into header and payload (spans anywhere,
//! some outside guest memory) and an RX chain split into header room and
//! payload room.
#![no_main]

use std::io::{self, Read};

use kiln::backends::unix_socket::{
    parse_connect_line, HandshakeError, HandshakeReader, HandshakeStep, MAX_HANDSHAKE_LINE,
};
use kiln::devices::virtio::ranges::{total_len, ChainRanges, GuestRange};
use kiln::devices::virtio::vsock::packet::{parse_tx, Header, PacketError, RxBuffer, HDR_LEN};
use kiln::devices::virtio::vsock::MAX_PAYLOAD;
use kiln_fuzz::vsock_input::PacketInput;
use kiln_fuzz::{guest_memory, GUEST_END};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// What a `CONNECT` line means, by its definition: at most 32 bytes, an
/// optional "\n" after an optional "\r", "connect " in any case, then 1
/// to 10 decimal digits of a u32.
fn reference_port(line: &[u8]) -> Option<u32> {
    if line.len() > MAX_HANDSHAKE_LINE {
        return None;
    }
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_suffix('\r').unwrap_or(s);
    let (word, port) = s.split_at_checked(8)?;
    if !word.eq_ignore_ascii_case("connect ") || port.is_empty() || port.len() > 10 {
        return None;
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Hands out `chunk` bytes per read, then "would block" once between
/// reads, as a slow peer's nonblocking socket does.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
    blocked: bool,
    taken: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.blocked = !self.blocked;
        if self.blocked || self.taken == self.bytes.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.chunk).min(self.bytes.len() - self.taken);
        buf[..n].copy_from_slice(&self.bytes[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

fn check_handshake(bytes: &[u8], chunk: usize) {
    assert_eq!(parse_connect_line(bytes).ok(), reference_port(bytes), "{bytes:?}");
    let mut reader = HandshakeReader::default();
    let mut peer = Trickle {
        bytes,
        chunk,
        blocked: false,
        taken: 0,
    };
    let result = loop {
        match reader.read_from(&mut peer) {
            Ok(HandshakeStep::NeedMore) if peer.taken < bytes.len() => continue,
            other => break other,
        }
    };
    let newline = bytes.iter().take(MAX_HANDSHAKE_LINE).position(|&b| b == b'\n');
    match newline {
        Some(at) => {
            if let Some(port) = reference_port(&bytes[..=at]) {
                assert_eq!(result, Ok(HandshakeStep::Port(port)), "{bytes:?}");
            } else {
                assert!(result.is_err(), "{bytes:?}: {result:?}");
            }
            assert_eq!(peer.taken, at + 1, "the reader took bytes after the line");
        }
        None if bytes.len() >= MAX_HANDSHAKE_LINE => {
            assert_eq!(result, Err(HandshakeError::TooLong), "{bytes:?}");
            assert_eq!(peer.taken, MAX_HANDSHAKE_LINE);
        }
        None => assert_eq!(result, Ok(HandshakeStep::NeedMore), "{bytes:?}"),
    }
}

fn check_packets(input: &PacketInput) {
    let mem = guest_memory();
    let data = &input.bytes[..input.bytes.len().min(0x8000)];
    mem.write_slice(data, GuestAddress(0x1000)).unwrap();
    let spans: Vec<GuestRange> = input.spans[..usize::from(input.count % 5)]
        .iter()
        .map(|&(addr, len)| GuestRange::new(u64::from(addr) % (GUEST_END + 0x1000), u64::from(len)))
        .collect();
    let total = total_len(&spans);
    // The chain's first HDR_LEN bytes, read span by span (None where a
    // part is not in guest memory).
    let mut head: Vec<Option<u8>> = Vec::new();
    for span in &spans {
        let n = (HDR_LEN - head.len()).min(span.len as usize);
        let mut part = vec![0u8; n];
        match mem.read_slice(&mut part, span.addr) {
            Ok(()) => head.extend(part.into_iter().map(Some)),
            Err(_) => head.extend(std::iter::repeat_n(None, n)),
        }
    }
    let tx = ChainRanges {
        readable: spans.clone(),
        ..ChainRanges::default()
    };
    match parse_tx(&mem, tx) {
        Ok(packet) => {
            let header: Vec<u8> = head.iter().map(|b| b.expect("header in memory")).collect();
            assert_eq!(packet.header, Header::from_bytes(header[..].try_into().unwrap()));
            assert!(packet.header.len <= MAX_PAYLOAD);
            assert_eq!(total_len(&packet.payload), u64::from(packet.header.len));
            assert!(total >= HDR_LEN as u64 + u64::from(packet.header.len));
        }
        Err(PacketError::ShortHeader(n)) => assert!(n == total && total < HDR_LEN as u64),
        Err(PacketError::TooLong { header }) => assert!(header.len > MAX_PAYLOAD),
        Err(PacketError::LenBeyondChain { header, available }) => {
            assert_eq!(available, total - HDR_LEN as u64);
            assert!(u64::from(header.len) > available);
        }
        Err(PacketError::Chain(_)) => assert!(head.iter().any(Option::is_none)),
        Err(e) => panic!("a readable chain refused for {e}"),
    }
    let rx = ChainRanges {
        writable: spans,
        ..ChainRanges::default()
    };
    match RxBuffer::new(rx) {
        Ok(rx) => assert_eq!(rx.room(), total - HDR_LEN as u64),
        Err(PacketError::RxTooSmall(n)) => assert!(n == total && total < HDR_LEN as u64),
        Err(e) => panic!("a writable chain refused for {e}"),
    }
    if let Some(bytes) = input.bytes.get(..HDR_LEN) {
        let bytes: [u8; HDR_LEN] = bytes.try_into().unwrap();
        assert_eq!(Header::from_bytes(&bytes).to_bytes(), bytes);
    }
}

fuzz_target!(|input: PacketInput| {
    check_handshake(&input.bytes, usize::from(input.chunk % 5) + 1);
    check_packets(&input);
});
