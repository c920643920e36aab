//! Input of the `net_device` target: a driver and the host network moving
//! frames through a virtio-net card whose backend is one end of a socket
//! pair (the target holds the other end, the "peer").
//!
//! Guest memory is split so the target can tell what the device may write:
//! the descriptor tables, available rings and indirect tables are written
//! only through structured ops whose descriptors point into the data area,
//! so the device may write the used rings and the data area and nothing
//! else, and the sentinel at the end of memory never.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use crate::encode::{encode_rest, variant, Encode};

/// Rings of the receive (0) and transmit (1) queues: descriptor table,
/// available ring, used ring, each in a page of its own (room for 256
/// entries).
pub const RINGS: [(u64, u64, u64); 2] = [(0x0000, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000)];
/// Indirect descriptor tables.
pub const INDIRECT_START: u64 = 0x6000;
pub const INDIRECT_END: u64 = 0x8000;
/// Buffers: straddles the region boundary at 64 KiB and the hole at
/// 0x2_0000..0x2_1000 (see `GUEST_REGIONS`).
pub const DATA_START: u64 = 0x8000;
pub const SENTINEL_START: u64 = 0x2_8000;
/// Below this the harness alone writes, except the used rings.
pub const CONTROL_END: u64 = DATA_START;

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct NetInput {
    /// Accepted features: taken with what the card offers, VERSION_1
    /// added, then features whose prerequisite is missing removed.
    pub features: u64,
    /// Queue sizes `1 << (log2 % 9)` for the first activation.
    pub rx_size_log2: u8,
    pub tx_size_log2: u8,
    pub ops: Vec<NetOp>,
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum NetOp {
    /// Writes descriptor `index % size` of queue `tx as usize`. `addr`
    /// lands in the data area (in the indirect area with INDIRECT) and
    /// `len` is clipped to end there.
    Desc {
        tx: bool,
        index: u16,
        addr: u32,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Writes entry `index` of the indirect area, mapped like `Desc`.
    Indirect {
        index: u16,
        addr: u32,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Puts `head` in the next available slot and publishes it.
    Offer { tx: bool, head: u16 },
    /// Moves the available index by `delta` without writing slots.
    Bump { tx: bool, delta: u16 },
    /// Sets `used_event` to the device's used index plus `delta`.
    UsedEvent { tx: bool, delta: i16 },
    /// 16 bytes into the data area at `addr % data length`.
    WriteMem { addr: u32, bytes: [u8; 16] },
    /// `len` copies of `byte` into the data area (a frame body).
    Fill { addr: u32, len: u16, byte: u8 },
    /// The host network sends `header` and a frame of `len % 70_000`
    /// bytes counting up from `seed`.
    HostSend { header: [u8; 12], len: u32, seed: u8 },
    /// Reads what reached the host network and checks it.
    HostDrain,
    /// The driver notifies queue `tx as usize`.
    Kick { tx: bool },
    /// The backend fd is ready: bit 0 readable, 1 writable, 2 hung up,
    /// 3 error.
    HostEvent { ready: u8 },
    /// The driver resets the card and starts it again with these features
    /// and queue sizes.
    Reset {
        features: u64,
        rx_size_log2: u8,
        tx_size_log2: u8,
    },
}

impl NetOp {
    pub fn queue_size(size_log2: u8) -> u16 {
        1 << (size_log2 % 9)
    }

    pub fn buffer_addr(addr: u32) -> u64 {
        DATA_START + u64::from(addr) % (SENTINEL_START - DATA_START)
    }

    pub fn indirect_addr(addr: u32) -> u64 {
        INDIRECT_START + u64::from(addr) % (INDIRECT_END - INDIRECT_START)
    }
}

impl Encode for NetInput {
    fn encode(&self, out: &mut Vec<u8>) {
        self.features.encode(out);
        self.rx_size_log2.encode(out);
        self.tx_size_log2.encode(out);
        out.extend(encode_rest(&self.ops));
    }
}

impl Encode for NetOp {
    fn encode(&self, out: &mut Vec<u8>) {
        const VARIANTS: u32 = 12;
        match self {
            NetOp::Desc {
                tx,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                variant(out, 0, VARIANTS);
                tx.encode(out);
                index.encode(out);
                addr.encode(out);
                len.encode(out);
                flags.encode(out);
                next.encode(out);
            }
            NetOp::Indirect {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                variant(out, 1, VARIANTS);
                index.encode(out);
                addr.encode(out);
                len.encode(out);
                flags.encode(out);
                next.encode(out);
            }
            NetOp::Offer { tx, head } => {
                variant(out, 2, VARIANTS);
                tx.encode(out);
                head.encode(out);
            }
            NetOp::Bump { tx, delta } => {
                variant(out, 3, VARIANTS);
                tx.encode(out);
                delta.encode(out);
            }
            NetOp::UsedEvent { tx, delta } => {
                variant(out, 4, VARIANTS);
                tx.encode(out);
                delta.encode(out);
            }
            NetOp::WriteMem { addr, bytes } => {
                variant(out, 5, VARIANTS);
                addr.encode(out);
                bytes.encode(out);
            }
            NetOp::Fill { addr, len, byte } => {
                variant(out, 6, VARIANTS);
                addr.encode(out);
                len.encode(out);
                byte.encode(out);
            }
            NetOp::HostSend { header, len, seed } => {
                variant(out, 7, VARIANTS);
                header.encode(out);
                len.encode(out);
                seed.encode(out);
            }
            NetOp::HostDrain => variant(out, 8, VARIANTS),
            NetOp::Kick { tx } => {
                variant(out, 9, VARIANTS);
                tx.encode(out);
            }
            NetOp::HostEvent { ready } => {
                variant(out, 10, VARIANTS);
                ready.encode(out);
            }
            NetOp::Reset {
                features,
                rx_size_log2,
                tx_size_log2,
            } => {
                variant(out, 11, VARIANTS);
                features.encode(out);
                rx_size_log2.encode(out);
                tx_size_log2.encode(out);
            }
        }
    }
}
