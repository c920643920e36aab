//! Input of the `mmio_transport` target: what a driver does to a
//! virtio-mmio device, one access at a time.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use kiln::devices::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

use crate::encode::{variant, Encode};
use crate::GUEST_END;

/// Register offsets: the transport's own table.
pub use kiln::devices::virtio::mmio::reg;

/// Size of a virtio-mmio window: the bus never hands the device an offset
/// beyond it.
pub const WINDOW: u64 = kiln::arch::x86_64::layout::VIRTIO_MMIO_SIZE;

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read of `1 + size % 8` bytes at `offset % WINDOW`.
    Read {
        offset: u16,
        size: u8,
    },
    /// A write of the low `1 + size % 8` bytes of `value`.
    Write {
        offset: u16,
        size: u8,
        value: u64,
    },
    /// An aligned 32-bit read of register `reg % 64`, the common access.
    ReadReg {
        reg: u8,
    },
    WriteReg {
        reg: u8,
        value: u32,
    },
    /// A notification through the ioeventfd, which the event loop turns
    /// into `notify_queue`.
    Notify {
        queue: u32,
    },
    /// The driver writes 16 bytes of guest memory at `addr % GUEST_END`:
    /// descriptors, rings, requests.
    WriteMem {
        addr: u32,
        bytes: [u8; 16],
    },
    /// A driver's whole initialisation with these values, so that an
    /// active device is one step away.
    Init(Init),
}

#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init {
    pub features: u64,
    /// Queue 0 gets `1 << (queue_size_log2 % 16)` entries.
    pub queue_size_log2: u8,
    /// Ring addresses, taken `% GUEST_END`.
    pub desc: u32,
    pub avail: u32,
    pub used: u32,
    pub ready: bool,
}

impl Op {
    pub fn access_len(size: u8) -> usize {
        1 + usize::from(size % 8)
    }

    pub fn window_offset(offset: u16) -> u64 {
        u64::from(offset) % WINDOW
    }

    pub fn reg_offset(reg: u8) -> u64 {
        u64::from(reg % 64) * 4
    }

    pub fn guest_addr(addr: u32) -> u64 {
        u64::from(addr) % GUEST_END
    }
}

impl Init {
    /// The register writes, in the order a driver does them (§3.1.1).
    pub fn writes(&self) -> Vec<(u64, u32)> {
        let at = |addr: u32| Op::guest_addr(addr) as u32;
        vec![
            (reg::STATUS, 0),
            (reg::STATUS, ACKNOWLEDGE),
            (reg::STATUS, ACKNOWLEDGE | DRIVER),
            (reg::DRIVER_FEATURES_SEL, 0),
            (reg::DRIVER_FEATURES, self.features as u32),
            (reg::DRIVER_FEATURES_SEL, 1),
            (reg::DRIVER_FEATURES, (self.features >> 32) as u32),
            (reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK),
            (reg::QUEUE_SEL, 0),
            (reg::QUEUE_NUM, 1 << (self.queue_size_log2 % 16)),
            (reg::QUEUE_DESC_LOW, at(self.desc)),
            (reg::QUEUE_DESC_HIGH, 0),
            (reg::QUEUE_DRIVER_LOW, at(self.avail)),
            (reg::QUEUE_DRIVER_HIGH, 0),
            (reg::QUEUE_DEVICE_LOW, at(self.used)),
            (reg::QUEUE_DEVICE_HIGH, 0),
            (reg::QUEUE_READY, u32::from(self.ready)),
            (reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        ]
    }
}

impl Encode for Init {
    fn encode(&self, out: &mut Vec<u8>) {
        self.features.encode(out);
        self.queue_size_log2.encode(out);
        self.desc.encode(out);
        self.avail.encode(out);
        self.used.encode(out);
        self.ready.encode(out);
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        const VARIANTS: u32 = 7;
        match self {
            Op::Read { offset, size } => {
                variant(out, 0, VARIANTS);
                offset.encode(out);
                size.encode(out);
            }
            Op::Write { offset, size, value } => {
                variant(out, 1, VARIANTS);
                offset.encode(out);
                size.encode(out);
                value.encode(out);
            }
            Op::ReadReg { reg } => {
                variant(out, 2, VARIANTS);
                reg.encode(out);
            }
            Op::WriteReg { reg, value } => {
                variant(out, 3, VARIANTS);
                reg.encode(out);
                value.encode(out);
            }
            Op::Notify { queue } => {
                variant(out, 4, VARIANTS);
                queue.encode(out);
            }
            Op::WriteMem { addr, bytes } => {
                variant(out, 5, VARIANTS);
                addr.encode(out);
                bytes.encode(out);
            }
            Op::Init(init) => {
                variant(out, 6, VARIANTS);
                init.encode(out);
            }
        }
    }
}
