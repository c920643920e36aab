//! Writes the seed corpora of the vsock targets under
//! `fuzz/corpus/<target>/seed-*`. `vsock_device`: inputs that take the
//! device through a host-initiated connection with data and close, a
//! guest-initiated one, credit exhaustion both ways, and a hostile mix.
//! `vsock_packet`: a `CONNECT` line and a packet split over descriptors.
//! The files are committed; run this again after changing `vsock_input`:
//!
//!     cd fuzz && cargo run --example write_vsock_seeds
//!
//! Each seed is decoded with `arbitrary` before it is written, so it
//! always reads back as the operations listed here.

use std::path::Path;

use kiln::devices::virtio::vsock::packet::{Header, Op, TYPE_STREAM};
use kiln_fuzz::encode::Encode;
use kiln_fuzz::vsock_input::{Greeting, Hostile, Packet, PacketInput, RxBuffers, VsockInput, VsockOp};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};

/// `Packet::op` values.
const REQUEST: u8 = 0;
const RESPONSE: u8 = 1;
const RST: u8 = 2;
const SHUTDOWN: u8 = 3;
const RW: u8 = 4;
const CREDIT_UPDATE: u8 = 5;
const CREDIT_REQUEST: u8 = 6;
/// `Packet::ports`: guest port 5000 to host port 1000 (listened), 1002
/// (not), and the first connection the device sent a packet for.
const TO_1000: u8 = 0;
const TO_1002: u8 = 2 << 4;
const SEEN: u8 = 2;

fn packet(ports: u8, op: u8, len: u16) -> Packet {
    Packet {
        ports,
        op,
        flags: 0,
        credit: 0,
        len,
        seed: 7,
        cuts: [20, 44, 300],
        indirect: false,
        kick: true,
        hostile: None,
    }
}

fn send(ports: u8, op: u8, len: u16) -> VsockOp {
    VsockOp::Send(packet(ports, op, len))
}

fn hostile(ports: u8, op: u8, h: Hostile) -> VsockOp {
    VsockOp::Send(Packet {
        hostile: Some(h),
        ..packet(ports, op, 100)
    })
}

fn rx(count: u8, size: u8, len: u16) -> VsockOp {
    VsockOp::Receive(RxBuffers {
        count,
        size,
        len,
        cut: 30,
        indirect: true,
        kick: true,
    })
}

fn connect(port: u8, style: u8, extra: u16) -> VsockOp {
    VsockOp::HostConnect(Greeting {
        port,
        style,
        extra,
        raw: *b"GET / HTTP/1.1\r\n",
    })
}

const RUN: VsockOp = VsockOp::Run { rounds: 3 };

/// Writes `input` to `fuzz/corpus/<target>/<file>`.
fn write_input<T>(target: &str, file: &str, input: &T)
where
    T: Encode + for<'a> Arbitrary<'a> + PartialEq + std::fmt::Debug,
{
    let mut bytes = Vec::new();
    input.encode(&mut bytes);
    let decoded = T::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
    assert_eq!(&decoded, input, "{target}/{file} does not read back");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), bytes).unwrap();
}

fn device_input(ops: Vec<VsockOp>) -> VsockInput {
    VsockInput {
        features: 3,
        queue_log2: [6, 6, 2],
        ops,
    }
}

fn write(name: &str, ops: Vec<VsockOp>) {
    write_input("vsock_device", &format!("seed-{name}"), &device_input(ops));
}

fn packet_seeds() {
    write_input(
        "vsock_packet",
        "seed-connect-line",
        &PacketInput {
            chunk: 2,
            spans: [(0x1000, 44), (0x2000, 10), (0, 0), (0, 0)],
            count: 2,
            bytes: b"Connect 1234\r\nand the data".to_vec(),
        },
    );
    let header = Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 5000,
        dst_port: 1000,
        len: 100,
        type_: TYPE_STREAM,
        op: Op::Rw as u16,
        flags: 0,
        buf_alloc: 1 << 18,
        fwd_cnt: 0,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(0..120);
    write_input(
        "vsock_packet",
        "seed-split-packet",
        &PacketInput {
            chunk: 0,
            spans: [(0x1000, 20), (0x1014, 30), (0x1032, 94), (0x1_fff0, 64)],
            count: 3,
            bytes,
        },
    );
}

fn main() {
    packet_seeds();
    // Reproducer: a host-event call for the deadline timer when it is not
    // ready blocked in the timerfd read (forever, the timer unarmed).
    write_input(
        "vsock_device",
        "timeout-spurious-timer-event",
        &device_input(vec![VsockOp::Spurious { token: 1, ready: 1 }]),
    );
    // A host peer asks for guest port 5000 (data right behind its line),
    // the guest accepts, data goes both ways, both sides close.
    write(
        "host-connect-data-close",
        vec![
            rx(7, 1, 2000),
            connect(0, 0, 300),
            RUN,
            send(SEEN, RESPONSE, 0),
            RUN,
            VsockOp::PeerRead { peer: 0, max: 64 },
            send(SEEN, RW, 5000),
            RUN,
            VsockOp::PeerRead { peer: 0, max: 8000 },
            VsockOp::PeerWrite {
                peer: 0,
                len: 3000,
                seed: 1,
            },
            RUN,
            rx(7, 2, 9000),
            RUN,
            VsockOp::PeerShutdown { peer: 0, how: 1 },
            RUN,
            send(SEEN, SHUTDOWN, 0),
            VsockOp::PeerClose { peer: 0 },
            RUN,
            send(SEEN, RST, 0),
        ],
    );
    // The guest connects to host port 1000 (listened) and 1002 (not: an
    // RST), sends and receives, then shuts down.
    write(
        "guest-connect",
        vec![
            rx(7, 1, 3000),
            send(TO_1000, REQUEST, 0),
            send(TO_1002, REQUEST, 0),
            VsockOp::Accept { listener: 0 },
            send(TO_1000, RW, 2000),
            VsockOp::PeerRead { peer: 0, max: 4096 },
            VsockOp::PeerWrite {
                peer: 0,
                len: 6000,
                seed: 9,
            },
            RUN,
            send(TO_1000, CREDIT_REQUEST, 0),
            RUN,
            VsockOp::Listener {
                which: 0,
                open: false,
            },
            send(TO_1000, SHUTDOWN, 0),
            RUN,
            VsockOp::PeerClose { peer: 0 },
            RUN,
        ],
    );
    // A host reader that never reads: the guest sends until the device's
    // buffer is full and beyond (a credit lie). Then a guest that gives no
    // credit: the device asks for some, and gets it.
    let mut exhaust = vec![rx(7, 1, 500), send(TO_1000, REQUEST, 0), RUN];
    exhaust.extend((0..20).map(|_| send(TO_1000, RW, 27_000)));
    exhaust.extend([
        RUN,
        VsockOp::Accept { listener: 1 },
        VsockOp::Send(Packet {
            credit: 3,
            ..packet(1 << 4, REQUEST, 0)
        }),
        VsockOp::Accept { listener: 1 },
        VsockOp::PeerWrite {
            peer: 0,
            len: 20_000,
            seed: 3,
        },
        RUN,
        rx(7, 2, 4000),
        RUN,
        VsockOp::Send(Packet {
            credit: 1,
            ..packet(1 << 4, CREDIT_UPDATE, 0)
        }),
        RUN,
    ]);
    write("credit-exhaustion", exhaust);
    // Hostile guest packets, odd buffers and chains, garbage from host
    // peers, spurious host events, transport and device resets.
    write(
        "hostile-mix",
        vec![
            rx(7, 0, 20),
            rx(3, 3, 60_000),
            hostile(TO_1000, REQUEST, Hostile::SrcCid(5)),
            hostile(TO_1000, REQUEST, Hostile::DstCid(7)),
            hostile(TO_1000, REQUEST, Hostile::Type(2)),
            hostile(TO_1000, REQUEST, Hostile::Op(99)),
            hostile(TO_1000, RW, Hostile::Len(u32::MAX)),
            hostile(TO_1000, RW, Hostile::Truncate(10)),
            hostile(TO_1000, RW, Hostile::Writable),
            hostile(TO_1000, RW, Hostile::InHole),
            send(TO_1002, RW, 10),
            send(TO_1000, REQUEST, 0),
            send(TO_1000, REQUEST, 0),
            hostile(TO_1000, RW, Hostile::FwdCnt(u32::MAX)),
            hostile(TO_1000, SHUTDOWN, Hostile::Flags(u32::MAX)),
            VsockOp::RawChain {
                queue: 1,
                addr: 0x9000,
                len: 0xffff,
                write: false,
                kick: true,
            },
            VsockOp::RawChain {
                queue: 0,
                addr: 0,
                len: 10,
                write: true,
                kick: true,
            },
            connect(0, 8, 0),
            connect(1, 1 | 2, 10),
            connect(2, 0x10, 0),
            connect(3, 4, 0),
            connect(0, 0x20, 0),
            RUN,
            VsockOp::Spurious { token: 1, ready: 1 },
            VsockOp::Spurious { token: 0, ready: 15 },
            VsockOp::Spurious { token: 3, ready: 4 },
            VsockOp::EventBuffers {
                count: 2,
                len: 4,
                kick: true,
            },
            VsockOp::TransportReset,
            RUN,
            VsockOp::Reset {
                features: 0,
                queue_log2: [0, 3, 1],
            },
            send(TO_1000, REQUEST, 0),
            rx(1, 1, 100),
            RUN,
        ],
    );
}
