//! Input of the `vsock_device` target: a guest driver sending and
//! receiving vsock packets, and host processes on real Unix sockets (peers
//! that connect to the device's socket, listeners at `<socket>_P` that
//! guest connections reach), around one virtio-vsock device.
//!
//! The ops are structured so that connections actually form: packet fields
//! are valid unless a `Hostile` change says otherwise, ports come from a
//! small set or from packets the device sent, and the harness builds the
//! descriptor chains itself (header split anywhere, payload over several
//! descriptors, indirect tables). Guest memory layout:
//!
//! - below `DATA_START`, written only by the harness except the used
//!   rings: each queue's descriptor table, available ring and used ring in
//!   a page of its own, and indirect tables;
//! - `RX_AREA`: receive and event buffers (device-writable);
//! - `TX_AREA`: packets (device-readable), across the hole at
//!   0x2_0000..0x2_1000, which a packet lands in only on purpose;
//! - the sentinel from `SENTINEL_START` to the end, never written.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use crate::encode::{variant, Encode};
use crate::encode_fields;

/// (descriptor table, available ring, used ring) of RX (0), TX (1) and
/// the event queue (2); a page each, room for 256 entries.
pub const RINGS: [(u64, u64, u64); 3] = [
    (0x0000, 0x1000, 0x2000),
    (0x3000, 0x4000, 0x5000),
    (0x6000, 0x7000, 0x8000),
];
/// Indirect tables: `INDIRECT_TABLE` bytes for each of the first
/// `INDIRECT_HEADS` heads of each queue.
pub const INDIRECT_START: u64 = 0x9000;
pub const INDIRECT_TABLE: u64 = 128;
pub const INDIRECT_HEADS: u16 = 16;
pub const DATA_START: u64 = 0xb000;
pub const RX_AREA: (u64, u64) = (DATA_START, 0x1_7000);
pub const TX_AREA: (u64, u64) = (0x1_7000, SENTINEL_START);
/// Not guest memory (see `GUEST_REGIONS`).
pub const HOLE: (u64, u64) = (0x2_0000, 0x2_1000);
pub const SENTINEL_START: u64 = 0x2_8000;

/// Guest ports host peers ask for, and the guest connects from.
pub const GUEST_PORTS: [u32; 4] = [5000, 5001, 5002, 1024];
/// Host ports guest connections go to; the harness listens at
/// `<socket>_P` for the first `LISTENED_PORTS` of them (unless closed).
pub const HOST_PORTS: [u32; 4] = [1000, 1001, 1002, 1003];
pub const LISTENED_PORTS: usize = 2;

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct VsockInput {
    /// Bit 0: EVENT_IDX, bit 1: INDIRECT_DESC (VERSION_1 always).
    pub features: u8,
    /// Queue sizes `1 << (log2 % 9)`.
    pub queue_log2: [u8; 3],
    pub ops: Vec<VsockOp>,
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum VsockOp {
    /// The guest puts a packet on the TX queue.
    Send(Packet),
    /// The guest gives receive buffers.
    Receive(RxBuffers),
    /// The guest gives `count % 4 + 1` event buffers of `len % 8` bytes.
    EventBuffers {
        count: u8,
        len: u8,
        kick: bool,
    },
    /// One descriptor on queue `queue % 3`, `addr` and `len` anywhere in
    /// that queue's area (TX: the hole too), writable or not.
    RawChain {
        queue: u8,
        addr: u16,
        len: u16,
        write: bool,
        kick: bool,
    },
    /// The driver notifies queue `queue % 3`.
    Kick {
        queue: u8,
    },
    /// The event loop: `rounds % 4 + 1` rounds of passes that yielded and
    /// of the device's ready host fds.
    Run {
        rounds: u8,
    },
    /// A host-event call whether or not the fd is ready (the contract
    /// allows spurious calls): `token % 8` picks the listener, timer,
    /// kick, or a stream token; `ready` bits IN, OUT, HUP, ERR.
    Spurious {
        token: u8,
        ready: u8,
    },
    /// A host process connects to the device's socket and greets it.
    HostConnect(Greeting),
    /// Host listener `listener` accepts what waits (guest connections).
    Accept {
        listener: u8,
    },
    /// A peer writes `len % 70_000` bytes counting up from `seed`.
    PeerWrite {
        peer: u8,
        len: u32,
        seed: u8,
    },
    /// A peer reads up to `max` bytes.
    PeerRead {
        peer: u8,
        max: u16,
    },
    /// `how % 3`: shut down reading, writing, both.
    PeerShutdown {
        peer: u8,
        how: u8,
    },
    PeerClose {
        peer: u8,
    },
    /// Opens or closes the host listener at `<socket>_P`.
    Listener {
        which: u8,
        open: bool,
    },
    /// `VsockDevice::transport_reset`.
    TransportReset,
    /// The driver resets the device and starts it again.
    Reset {
        features: u8,
        queue_log2: [u8; 3],
    },
}

/// A guest packet: valid, unless `hostile`.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Bits 0-1: 0-1 a (guest port, host port) pair from `GUEST_PORTS`
    /// and `HOST_PORTS` (bits 2-5 pick), 2-3 the ports of a connection the
    /// device sent a packet for (bits 2-7 pick one).
    pub ports: u8,
    /// `op % 8`: REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE,
    /// CREDIT_REQUEST, RW.
    pub op: u8,
    /// SHUTDOWN flags (`% 4`).
    pub flags: u8,
    /// `% 4`: 0-1 buf_alloc BUF_ALLOC, 2 `credit * 64` bytes, 3 none;
    /// fwd_cnt is what the guest took of the connection's data.
    pub credit: u8,
    /// RW payload bytes (`% 40_000`); other ops carry none.
    pub len: u16,
    pub seed: u8,
    /// Where the chain is cut into descriptors (each `% (chain length +
    /// 1)`; 0 and repeats cut nothing).
    pub cuts: [u16; 3],
    pub indirect: bool,
    pub kick: bool,
    pub hostile: Option<Hostile>,
}

#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    SrcCid(u64),
    DstCid(u64),
    Type(u16),
    Op(u16),
    /// The header's len, whatever the chain holds.
    Len(u32),
    FwdCnt(u32),
    BufAlloc(u32),
    Flags(u32),
    Ports {
        src: u32,
        dst: u32,
    },
    /// The chain ends this many bytes early.
    Truncate(u16),
    /// A device-writable descriptor at the end of the chain.
    Writable,
    /// The payload in the hole: not guest memory.
    InHole,
}

/// `count % 8 + 1` receive buffers.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct RxBuffers {
    pub count: u8,
    /// `% 4`: 0 `len % 44` bytes (too small), 1 `len % 4096`, 2 `len %
    /// 48 KiB`, 3 a header then 3 descriptors over the same `len % 30
    /// KiB` (more room than memory, to reach MAX_PAYLOAD).
    pub size: u8,
    pub len: u16,
    /// Cut into descriptors there (`% buffer length`).
    pub cut: u16,
    pub indirect: bool,
    pub kick: bool,
}

/// What a host peer sends after connecting.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// Guest port asked for: `GUEST_PORTS[port % 4]`, or `port` itself
    /// above 250.
    pub port: u8,
    /// Bits: 0 lowercase, 1 CRLF, 2 stop before the newline, 3 `raw`
    /// instead, 4 a port number above u32, 5 nothing at all.
    pub style: u8,
    /// Data after the line (`% 4096` bytes).
    pub extra: u16,
    pub raw: [u8; 16],
}

/// Input of the `vsock_packet` target.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct PacketInput {
    /// The handshake reader gets `chunk % 5 + 1` bytes per read.
    pub chunk: u8,
    /// Chain spans (address, length); the first `count % 5` are used.
    pub spans: [(u32, u16); 4],
    pub count: u8,
    /// A handshake line, and what guest memory holds from 0x1000.
    pub bytes: Vec<u8>,
}

impl VsockOp {
    pub fn queue_size(log2: u8) -> u16 {
        1 << (log2 % 9)
    }
}

encode_fields!(VsockInput {
    features,
    queue_log2,
    ops
});
encode_fields!(Packet {
    ports,
    op,
    flags,
    credit,
    len,
    seed,
    cuts,
    indirect,
    kick,
    hostile
});
encode_fields!(RxBuffers {
    count,
    size,
    len,
    cut,
    indirect,
    kick
});
encode_fields!(Greeting {
    port,
    style,
    extra,
    raw
});

encode_fields!(PacketInput {
    chunk,
    spans,
    count,
    bytes
});

impl Encode for Hostile {
    fn encode(&self, out: &mut Vec<u8>) {
        const VARIANTS: u32 = 12;
        match *self {
            Hostile::SrcCid(v) | Hostile::DstCid(v) => {
                variant(out, u32::from(matches!(self, Hostile::DstCid(_))), VARIANTS);
                v.encode(out);
            }
            Hostile::Type(v) => {
                variant(out, 2, VARIANTS);
                v.encode(out);
            }
            Hostile::Op(v) => {
                variant(out, 3, VARIANTS);
                v.encode(out);
            }
            Hostile::Len(v) => {
                variant(out, 4, VARIANTS);
                v.encode(out);
            }
            Hostile::FwdCnt(v) => {
                variant(out, 5, VARIANTS);
                v.encode(out);
            }
            Hostile::BufAlloc(v) => {
                variant(out, 6, VARIANTS);
                v.encode(out);
            }
            Hostile::Flags(v) => {
                variant(out, 7, VARIANTS);
                v.encode(out);
            }
            Hostile::Ports { src, dst } => {
                variant(out, 8, VARIANTS);
                src.encode(out);
                dst.encode(out);
            }
            Hostile::Truncate(v) => {
                variant(out, 9, VARIANTS);
                v.encode(out);
            }
            Hostile::Writable => variant(out, 10, VARIANTS),
            Hostile::InHole => variant(out, 11, VARIANTS),
        }
    }
}

impl Encode for VsockOp {
    fn encode(&self, out: &mut Vec<u8>) {
        const VARIANTS: u32 = 16;
        match self {
            VsockOp::Send(packet) => {
                variant(out, 0, VARIANTS);
                packet.encode(out);
            }
            VsockOp::Receive(buffers) => {
                variant(out, 1, VARIANTS);
                buffers.encode(out);
            }
            VsockOp::EventBuffers { count, len, kick } => {
                variant(out, 2, VARIANTS);
                count.encode(out);
                len.encode(out);
                kick.encode(out);
            }
            VsockOp::RawChain {
                queue,
                addr,
                len,
                write,
                kick,
            } => {
                variant(out, 3, VARIANTS);
                queue.encode(out);
                addr.encode(out);
                len.encode(out);
                write.encode(out);
                kick.encode(out);
            }
            VsockOp::Kick { queue } => {
                variant(out, 4, VARIANTS);
                queue.encode(out);
            }
            VsockOp::Run { rounds } => {
                variant(out, 5, VARIANTS);
                rounds.encode(out);
            }
            VsockOp::Spurious { token, ready } => {
                variant(out, 6, VARIANTS);
                token.encode(out);
                ready.encode(out);
            }
            VsockOp::HostConnect(greeting) => {
                variant(out, 7, VARIANTS);
                greeting.encode(out);
            }
            VsockOp::Accept { listener } => {
                variant(out, 8, VARIANTS);
                listener.encode(out);
            }
            VsockOp::PeerWrite { peer, len, seed } => {
                variant(out, 9, VARIANTS);
                peer.encode(out);
                len.encode(out);
                seed.encode(out);
            }
            VsockOp::PeerRead { peer, max } => {
                variant(out, 10, VARIANTS);
                peer.encode(out);
                max.encode(out);
            }
            VsockOp::PeerShutdown { peer, how } => {
                variant(out, 11, VARIANTS);
                peer.encode(out);
                how.encode(out);
            }
            VsockOp::PeerClose { peer } => {
                variant(out, 12, VARIANTS);
                peer.encode(out);
            }
            VsockOp::Listener { which, open } => {
                variant(out, 13, VARIANTS);
                which.encode(out);
                open.encode(out);
            }
            VsockOp::TransportReset => variant(out, 14, VARIANTS),
            VsockOp::Reset { features, queue_log2 } => {
                variant(out, 15, VARIANTS);
                features.encode(out);
                queue_log2.encode(out);
            }
        }
    }
}
