//! The packet header (§5.10.6) and moving packets through descriptor
//! chains: a TX chain is the header then the payload, device-readable, the
//! header possibly split over descriptors; an RX chain is device-writable
//! room for the header and a payload.
//!
//! Pure functions of bytes and guest memory, usable from a fuzz harness.

use super::MAX_PAYLOAD;
use crate::devices::virtio::ranges::{
    read_ranges, take_front, total_len, write_ranges, ChainRanges, GuestRange, RangeError,
};
use crate::vstate::memory::GuestMemoryMmap;

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;
/// The only socket type offered (no SEQPACKET).
pub const TYPE_STREAM: u16 = 1;
/// Descriptors a packet chain may have.
pub const MAX_PACKET_DESCRIPTORS: usize = 64;

/// `flags` of a SHUTDOWN packet.
pub mod shutdown {
    /// The sender will receive no more.
    pub const RCV: u32 = 1;
    /// The sender will send no more.
    pub const SEND: u32 = 2;
    pub const BOTH: u32 = RCV | SEND;
}

/// Event queue: the transport was reset (§5.10.6.5).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Packet operations (§5.10.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_u16(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, little-endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if it is one we know.
    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

/// Why a chain does not hold a packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet chain: {0}")]
    Chain(#[from] RangeError),
    #[error("a TX chain has device-writable buffers")]
    WritableInTx,
    #[error("a TX chain of {0} bytes is shorter than the {HDR_LEN}-byte header")]
    ShortHeader(u64),
    #[error("the header says {} payload bytes, the chain holds {available}", header.len)]
    LenBeyondChain { header: Header, available: u64 },
    #[error("the header says {} payload bytes, more than the {MAX_PAYLOAD} a packet may carry", header.len)]
    TooLong { header: Header },
    #[error("an RX chain has device-readable buffers")]
    ReadableInRx,
    #[error("an RX chain of {0} bytes has no room for the {HDR_LEN}-byte header")]
    RxTooSmall(u64),
}

impl PacketError {
    /// The header, for a packet whose header could be read: it can be
    /// answered.
    pub fn header(&self) -> Option<Header> {
        match self {
            Self::LenBeyondChain { header, .. } | Self::TooLong { header } => Some(*header),
            _ => None,
        }
    }
}

/// A packet the guest sent: its header and where its payload is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPacket {
    pub header: Header,
    /// Exactly `header.len` bytes, in guest memory.
    pub payload: Vec<GuestRange>,
}

/// Reads the packet in a TX chain's spans. The payload is what the header
/// says, and must be in the chain (extra bytes after it are ignored, as
/// Linux's own device does).
pub fn parse_tx(mem: &GuestMemoryMmap, ranges: ChainRanges) -> Result<TxPacket, PacketError> {
    if let Some(defect) = ranges.defect {
        return Err(PacketError::Chain(defect));
    }
    if !ranges.writable.is_empty() {
        return Err(PacketError::WritableInTx);
    }
    let mut readable = ranges.readable;
    let total = total_len(&readable);
    let head = take_front(&mut readable, HDR_LEN as u64).ok_or(PacketError::ShortHeader(total))?;
    let mut bytes = [0u8; HDR_LEN];
    read_ranges(mem, &head, &mut bytes)?;
    let header = Header::from_bytes(&bytes);
    let available = total_len(&readable);
    let len = check_payload(&header, available)?;
    let payload = take_front(&mut readable, len).ok_or(PacketError::LenBeyondChain { header, available })?;
    Ok(TxPacket { header, payload })
}

/// Checks the header's `len` against the bytes the chain has after it.
pub fn check_payload(header: &Header, available: u64) -> Result<u64, PacketError> {
    if header.len > MAX_PAYLOAD {
        return Err(PacketError::TooLong { header: *header });
    }
    if u64::from(header.len) > available {
        return Err(PacketError::LenBeyondChain {
            header: *header,
            available,
        });
    }
    Ok(u64::from(header.len))
}

/// An RX chain split into room for the header and room for a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxBuffer {
    pub header: Vec<GuestRange>,
    pub payload: Vec<GuestRange>,
}

impl RxBuffer {
    /// Splits a receive chain's spans; refuses a chain that cannot take a
    /// header.
    pub fn new(ranges: ChainRanges) -> Result<Self, PacketError> {
        if let Some(defect) = ranges.defect {
            return Err(PacketError::Chain(defect));
        }
        if !ranges.readable.is_empty() {
            return Err(PacketError::ReadableInRx);
        }
        let mut payload = ranges.writable;
        let total = total_len(&payload);
        let header = take_front(&mut payload, HDR_LEN as u64).ok_or(PacketError::RxTooSmall(total))?;
        Ok(Self { header, payload })
    }

    /// Payload bytes the chain can take.
    pub fn room(&self) -> u64 {
        total_len(&self.payload)
    }

    /// Writes `header`; returns the chain's used length (header + its len).
    pub fn write_header(&self, mem: &GuestMemoryMmap, header: &Header) -> Result<u32, PacketError> {
        write_ranges(mem, &self.header, &header.to_bytes())?;
        Ok(HDR_LEN as u32 + header.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ranges::LastDescriptor;
    use crate::devices::virtio::test_utils::memory;
    use vm_memory::{Bytes, GuestAddress};

    fn readable(ranges: &[(u64, u64)]) -> ChainRanges {
        ChainRanges {
            readable: ranges.iter().map(|&(a, l)| GuestRange::new(a, l)).collect(),
            writable: Vec::new(),
            last: None::<LastDescriptor>,
            defect: None,
        }
    }

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0xa5a5_0001,
            buf_alloc: 1 << 18,
            fwd_cnt: u32::MAX,
        }
    }

    #[test]
    fn vsock_header_round_trips_little_endian() {
        let h = sample();
        let bytes = h.to_bytes();
        assert_eq!(&bytes[..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[30..32], &5u16.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), h);
        assert_eq!(h.op(), Some(Op::Rw));
        assert_eq!(Header { op: 8, ..h }.op(), None);
        assert_eq!(Header { op: 0, ..h }.op(), None);
    }

    #[test]
    fn vsock_tx_packets_parse_across_descriptors_and_refuse_bad_lengths() {
        let mem = memory(&[(0, 0x10000)]);
        let mut bytes = sample().to_bytes().to_vec();
        bytes.extend_from_slice(b"hello, trailing");
        mem.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        // The header split 3 ways; the payload starts inside the last part.
        let packet = parse_tx(&mem, readable(&[(0x1000, 7), (0x1007, 30), (0x1025, 20)])).unwrap();
        assert_eq!(packet.header, sample());
        assert_eq!(packet.payload, [GuestRange::new(0x102c, 5)]);

        assert_eq!(
            parse_tx(&mem, readable(&[(0x1000, 43)])),
            Err(PacketError::ShortHeader(43))
        );
        let short = parse_tx(&mem, readable(&[(0x1000, 44), (0x2000, 4)])).unwrap_err();
        assert!(
            matches!(short, PacketError::LenBeyondChain { available: 4, .. }),
            "{short}"
        );
        assert_eq!(short.header(), Some(sample()));
        let huge = Header {
            len: MAX_PAYLOAD + 1,
            ..sample()
        };
        mem.write_slice(&huge.to_bytes(), GuestAddress(0x3000)).unwrap();
        let err = parse_tx(
            &mem,
            readable(&[(0x3000, 44), (0x4000, 0x8000), (0x4000, 0x8001)]),
        )
        .unwrap_err();
        assert!(matches!(err, PacketError::TooLong { .. }), "{err}");
        let mut writable = readable(&[(0x1000, 49)]);
        writable.writable.push(GuestRange::new(0x5000, 4));
        assert_eq!(parse_tx(&mem, writable), Err(PacketError::WritableInTx));
    }

    #[test]
    fn vsock_rx_buffers_need_room_for_a_header() {
        let chain = |lens: &[u64]| ChainRanges {
            writable: lens
                .iter()
                .enumerate()
                .map(|(i, &l)| GuestRange::new(0x1000 * (i as u64 + 1), l))
                .collect(),
            ..ChainRanges::default()
        };
        assert_eq!(RxBuffer::new(chain(&[43])), Err(PacketError::RxTooSmall(43)));
        let rx = RxBuffer::new(chain(&[40, 100])).unwrap();
        assert_eq!(rx.room(), 96);
        assert_eq!(
            rx.header,
            [GuestRange::new(0x1000, 40), GuestRange::new(0x2000, 4)]
        );
        let mut both = chain(&[100]);
        both.readable.push(GuestRange::new(0x9000, 1));
        assert_eq!(RxBuffer::new(both), Err(PacketError::ReadableInRx));
    }
}
