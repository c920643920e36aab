//! Input of the `queue_state` target: a driver moving one split virtqueue
//! (§2.7) between the device's passes over it.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use crate::encode::{variant, Encode};
use crate::GUEST_END;

/// Descriptor and buffer addresses are taken modulo this: a little past
/// the end of guest memory, so some point outside it.
pub const ADDR_SPACE: u64 = GUEST_END + 0x1_0000;

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// What a driver does after a reset: it negotiates EVENT_IDX or not
    /// and sets up a fresh queue of `1 << (size_log2 % 9)` entries (1 to
    /// 256) with its rings at these addresses (`% GUEST_END`, aligned as
    /// §2.7 requires), both ring indices starting at `start` (as after
    /// that many requests, so the u16 wrap is near).
    Reset {
        size_log2: u8,
        desc: u32,
        avail: u32,
        used: u32,
        start: u16,
        event_idx: bool,
    },
    /// Writes descriptor `index % size`; `addr` is taken `% ADDR_SPACE`.
    Desc {
        index: u16,
        addr: u32,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Puts `head` into available-ring slot `slot % size`.
    Offer {
        slot: u16,
        head: u16,
    },
    /// Moves the available index forward by `count`.
    Publish {
        count: u8,
    },
    /// Sets the available index to anything.
    SetAvailIdx {
        idx: u16,
    },
    AvailFlags {
        flags: u16,
    },
    /// Sets `used_event` to the device's next used index plus `delta`.
    UsedEvent {
        delta: i16,
    },
    /// 16 bytes of guest memory at `addr % GUEST_END`: request headers,
    /// indirect tables, or anything in the rings.
    WriteMem {
        addr: u32,
        bytes: [u8; 16],
    },
    /// `drain_queue` with a handler that walks each chain and reports
    /// `reply_len` bytes written.
    Drain {
        reply_len: u32,
    },
    /// The block device processes the queue (real requests on an image).
    Process,
}

impl Op {
    pub fn queue_size(size_log2: u8) -> u16 {
        1 << (size_log2 % 9)
    }

    pub fn ring_addr(addr: u32, align: u64) -> u64 {
        (u64::from(addr) % GUEST_END) & !(align - 1)
    }

    pub fn buffer_addr(addr: u32) -> u64 {
        u64::from(addr) % ADDR_SPACE
    }

    pub fn mem_addr(addr: u32) -> u64 {
        u64::from(addr) % GUEST_END
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        const VARIANTS: u32 = 10;
        match self {
            Op::Reset {
                size_log2,
                desc,
                avail,
                used,
                start,
                event_idx,
            } => {
                variant(out, 0, VARIANTS);
                size_log2.encode(out);
                desc.encode(out);
                avail.encode(out);
                used.encode(out);
                start.encode(out);
                event_idx.encode(out);
            }
            Op::Desc {
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
            Op::Offer { slot, head } => {
                variant(out, 2, VARIANTS);
                slot.encode(out);
                head.encode(out);
            }
            Op::Publish { count } => {
                variant(out, 3, VARIANTS);
                count.encode(out);
            }
            Op::SetAvailIdx { idx } => {
                variant(out, 4, VARIANTS);
                idx.encode(out);
            }
            Op::AvailFlags { flags } => {
                variant(out, 5, VARIANTS);
                flags.encode(out);
            }
            Op::UsedEvent { delta } => {
                variant(out, 6, VARIANTS);
                delta.encode(out);
            }
            Op::WriteMem { addr, bytes } => {
                variant(out, 7, VARIANTS);
                addr.encode(out);
                bytes.encode(out);
            }
            Op::Drain { reply_len } => {
                variant(out, 8, VARIANTS);
                reply_len.encode(out);
            }
            Op::Process => variant(out, 9, VARIANTS),
        }
    }
}
