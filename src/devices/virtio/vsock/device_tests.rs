//! The device behind its transport and a real event loop: the test plays
//! the guest's driver (mock queues in guest memory) and the host peers
//! (real Unix sockets in a temporary directory).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::devices::virtio::test_utils::{link, memory, pattern, r, w, wire, DriverRing, Wired, D};
use crate::devices::virtio::vsock::packet::{shutdown, Header, Op, HDR_LEN, TYPE_STREAM};
use crate::devices::virtio::vsock::{BUF_ALLOC, FIRST_HOST_PORT, MAX_PAYLOAD};
use crate::vstate::memory::GuestMemoryMmap;

pub(super) const GUEST_CID: u64 = 3;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x4000;
const EVENT_RING: u64 = 0x7000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x200_0000;
/// Room for a header and the largest payload, page-rounded.
const STRIDE: u64 = 0x1_1000;
pub(super) const RING: u16 = 256;

pub(super) fn features() -> u64 {
    1 << 32 | 1 << 29 | 1 << 28
}

/// A guest packet header from guest port `src` to host port `dst`.
pub(super) fn hdr(op: Op, src: u32, dst: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: 2,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: BUF_ALLOC,
        ..Header::default()
    }
}

/// The guest's driver and the host's directory.
pub(super) struct Guest {
    pub(super) mem: GuestMemoryMmap,
    pub(super) wired: Wired<VsockDevice>,
    /// Holds the socket directory while the test runs.
    pub(super) _dir: TempDir,
    pub(super) socket: PathBuf,
    pub(super) rx: DriverRing,
    pub(super) tx: DriverRing,
    pub(super) event: DriverRing,
    rx_posted: u16,
    rx_seen: u16,
    tx_next: u16,
}

pub(super) fn guest() -> Guest {
    let dir = TempDir::new_with_prefix("/tmp/kiln-vsock").unwrap();
    let socket = dir.as_path().join("v.sock");
    let dev = VsockDevice::new(&crate::config::VsockConfig {
        cid: GUEST_CID as u32,
        socket: socket.clone(),
    })
    .unwrap();
    let mem = memory(&[(0, 64 << 20)]);
    let wired = wire(dev, &mem);
    let rx = DriverRing::at(&mem, RX_RING, RING);
    let tx = DriverRing::at(&mem, TX_RING, RING);
    let event = DriverRing::at(&mem, EVENT_RING, 16);
    wired.start(features(), &[rx, tx, event]);
    Guest {
        mem,
        wired,
        _dir: dir,
        socket,
        rx,
        tx,
        event,
        rx_posted: 0,
        rx_seen: 0,
        tx_next: 0,
    }
}

impl Guest {
    pub(super) fn device<T>(&self, f: impl FnOnce(&VsockDevice) -> T) -> T {
        f(self.wired.transport.lock().unwrap().device())
    }

    pub(super) fn counters(&self) -> VsockCountersSnapshot {
        self.device(|d| d.counters_snapshot())
    }

    pub(super) fn connections(&self) -> usize {
        self.device(|d| d.muxer().map_or(0, |m| m.len()))
    }

    /// Serves the event loop until nothing is ready.
    pub(super) fn run(&mut self) {
        for _ in 0..100_000 {
            if self.wired.run() == 0 {
                return;
            }
        }
        panic!("the device never went idle");
    }

    /// Gives `count` receive buffers of `len` bytes each.
    pub(super) fn post_rx(&mut self, count: u16, len: u32) {
        assert!(u64::from(len) <= STRIDE);
        for _ in 0..count {
            assert!(self.rx_posted.wrapping_sub(self.rx_seen) < RING, "RX ring full");
            let slot = self.rx_posted % RING;
            let addr = RX_BUFS + u64::from(slot) * STRIDE;
            self.rx
                .set_desc_table(&self.mem, slot, &link(&[w(addr, len)], slot));
            self.rx.publish(&self.mem, &[slot]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.wired.kicks[RX_QUEUE].write(1).unwrap();
        self.run();
    }

    /// Receive buffers given and not yet used.
    pub(super) fn rx_available(&self) -> u16 {
        self.rx_posted.wrapping_sub(self.rx.used_idx(&self.mem))
    }

    /// Packets the device put in receive buffers since the last call.
    pub(super) fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let to = self.rx.used_idx(&self.mem);
        while self.rx_seen != to {
            let (id, len) = self.rx.used(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = RX_BUFS + u64::from(id) * STRIDE;
            let mut bytes = [0u8; HDR_LEN];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            let header = Header::from_bytes(&bytes);
            assert_eq!(len, HDR_LEN as u32 + header.len, "used length");
            let mut payload = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((header, payload));
        }
        out
    }

    /// Publishes a TX chain made of `descs` without running the loop.
    pub(super) fn queue_tx(&mut self, descs: &[D]) {
        let first = self.tx_next;
        assert!(usize::from(first) + descs.len() <= usize::from(RING));
        self.tx.set_desc_table(&self.mem, first, &link(descs, first));
        self.tx.publish(&self.mem, &[first]);
        self.tx_next = (first + descs.len() as u16) % (RING - 8);
    }

    /// Where the TX chain starting at the next descriptor keeps its bytes.
    pub(super) fn tx_addr(&self) -> u64 {
        TX_BUFS + u64::from(self.tx_next) * STRIDE
    }

    /// Sends a packet (header and payload in two descriptors) and runs.
    pub(super) fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.len = payload.len() as u32;
        self.send_raw(&header.to_bytes(), payload);
    }

    /// Sends `header_bytes` then `payload` as written, whatever the header
    /// says.
    pub(super) fn send_raw(&mut self, header_bytes: &[u8], payload: &[u8]) {
        let addr = self.tx_addr();
        self.mem.write_slice(header_bytes, GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        let mut descs = vec![r(addr, header_bytes.len() as u32)];
        if !payload.is_empty() {
            descs.push(r(addr + HDR_LEN as u64, payload.len() as u32));
        }
        self.queue_tx(&descs);
        self.kick_tx();
    }

    pub(super) fn kick_tx(&mut self) {
        self.wired.kicks[TX_QUEUE].write(1).unwrap();
        self.run();
    }

    /// A host peer connects and asks for guest port `port`; the guest sees
    /// the REQUEST and accepts it. Returns the stream (after `OK`) and the
    /// host port.
    pub(super) fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.run();
        let got = self.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        let request = got[0].0;
        assert_eq!(request.op, Op::Request as u16);
        assert_eq!((request.src_cid, request.dst_cid), (2, GUEST_CID));
        assert_eq!(request.dst_port, port);
        assert!(request.src_port >= FIRST_HOST_PORT);
        self.send(hdr(Op::Response, port, request.src_port), &[]);
        let ok = read_line(&mut stream);
        assert_eq!(ok, format!("OK {}\n", request.src_port));
        (stream, request.src_port)
    }

    /// The guest connects from `guest_port` to host port `host_port`, where
    /// `listener` listens; returns the host's end.
    pub(super) fn guest_connect(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        host_port: u32,
    ) -> UnixStream {
        self.send(hdr(Op::Request, guest_port, host_port), &[]);
        let got = self.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.op, Op::Response as u16);
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, guest_port));
        let (stream, _) = listener.accept().unwrap();
        stream
    }

    pub(super) fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.socket.display())).unwrap()
    }
}

/// Reads one line, byte by byte, waiting at most a second.
pub(super) fn read_line(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        stream.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whatever the stream has now, without waiting.
pub(super) fn read_now(stream: &mut UnixStream) -> (Vec<u8>, bool) {
    stream.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let eof = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(e) => panic!("{e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    (out, eof)
}

/// The payload of every RW among `packets`, concatenated; asserts they
/// are all RW.
fn data_of(packets: &[(Header, Vec<u8>)]) -> Vec<u8> {
    packets
        .iter()
        .flat_map(|(h, p)| {
            assert_eq!(h.op, Op::Rw as u16, "{h:?}");
            p.clone()
        })
        .collect()
}

#[test]
fn vsock_config_space_and_features() {
    let g = guest();
    let mut cid = [0u8; 8];
    g.device(|d| d.read_config(0, &mut cid));
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    assert_eq!(g.device(|d| d.device_features()), features());
    assert_eq!(g.device(|d| d.device_type()), VSOCK_DEVICE_ID);
    assert!(g.socket.exists());
}

#[test]
fn host_connect_gets_ok_and_moves_data_both_ways() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let (mut host, host_port) = g.host_connect(52);
    assert_eq!(host_port, FIRST_HOST_PORT);

    host.write_all(b"ping").unwrap();
    g.run();
    let got = g.recv();
    assert_eq!(data_of(&got), b"ping");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 52));
    assert_eq!(got[0].0.buf_alloc, BUF_ALLOC);

    g.send(hdr(Op::Rw, 52, host_port), b"pong");
    assert_eq!(read_now(&mut host), (b"pong".to_vec(), false));
    assert_eq!(g.counters().connections, 1);

    // A second one gets the next host port.
    let (_second, next) = g.host_connect(52);
    assert_eq!(next, FIRST_HOST_PORT + 1);
}

#[test]
fn data_sent_with_the_connect_line_waits_for_the_guest() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let mut host = UnixStream::connect(&g.socket).unwrap();
    host.write_all(b"CONNECT 7\nearly bytes").unwrap();
    g.run();
    let request = g.recv()[0].0;
    g.send(hdr(Op::Response, 7, request.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", request.src_port));
    assert_eq!(data_of(&g.recv()), b"early bytes");
}

#[test]
fn host_connect_to_a_port_nobody_listens_on_is_closed() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let mut host = UnixStream::connect(&g.socket).unwrap();
    host.write_all(b"connect 99\n").unwrap();
    g.run();
    let request = g.recv()[0].0;
    g.send(hdr(Op::Rst, 99, request.src_port), &[]);
    assert_eq!(read_now(&mut host), (Vec::new(), true));
    assert_eq!(g.connections(), 0);
}

#[test]
fn guest_connects_to_the_port_path_or_gets_a_reset() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    g.send(hdr(Op::Rw, 1000, 52), b"hello host");
    assert_eq!(read_now(&mut host).0, b"hello host");
    host.write_all(b"hello guest").unwrap();
    g.run();
    assert_eq!(data_of(&g.recv()), b"hello guest");

    g.send(hdr(Op::Request, 1001, 53), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (53, 1001));
    assert_eq!(g.counters().faults(VsockFault::HostConnectFailed), 1);
}

#[test]
fn a_host_reader_that_never_reads_stops_the_guest_at_buf_alloc_only_for_its_connection() {
    let mut g = guest();
    g.post_rx(64, 4096);
    let listener = g.listen(52);
    let stuck = g.guest_connect(&listener, 1000, 52);
    let mut flowing = g.guest_connect(&listener, 1001, 52);
    let chunk = pattern(MAX_PAYLOAD as usize);
    // The guest may send buf_alloc beyond what the host stream took, and
    // it learns what the stream took from fwd_cnt; send what credit allows.
    let mut sent: u64 = 0;
    let mut fwd_cnt = 0u32;
    loop {
        let credit = u64::from(BUF_ALLOC) - (sent - u64::from(fwd_cnt));
        if credit == 0 {
            break;
        }
        let n = credit.min(chunk.len() as u64) as usize;
        g.send(hdr(Op::Rw, 1000, 52), &chunk[..n]);
        sent += n as u64;
        for (h, _) in g.recv() {
            if h.dst_port == 1000 {
                fwd_cnt = h.fwd_cnt;
            }
        }
        assert!(sent < 64 << 20, "the guest was never stopped");
    }
    let key = crate::devices::virtio::vsock::connection::ConnKey {
        host_port: 52,
        guest_port: 1000,
    };
    let held = |g: &Guest| {
        g.device(|d| {
            d.muxer()
                .unwrap()
                .connection(key)
                .map(|c| (c.buffered(), c.buffer_capacity()))
        })
    };
    let (buffered, capacity) = held(&g).unwrap();
    assert!(
        buffered > 0 && buffered as u64 <= u64::from(BUF_ALLOC),
        "{buffered}"
    );
    assert!(capacity <= 2 * BUF_ALLOC as usize, "{capacity}");
    // The other connection still flows both ways.
    g.send(hdr(Op::Rw, 1001, 52), b"still here");
    assert_eq!(read_now(&mut flowing).0, b"still here");
    flowing.write_all(b"and back").unwrap();
    g.run();
    assert_eq!(data_of(&g.recv()), b"and back");

    // A guest that goes on regardless is lying: reset before the buffer
    // passes buf_alloc, counted.
    let mut reset = false;
    for _ in 0..8 {
        g.send(hdr(Op::Rw, 1000, 52), &chunk);
        if let Some((buffered, _)) = held(&g) {
            assert!(buffered as u64 <= u64::from(BUF_ALLOC), "{buffered}");
        }
        if g.recv()
            .iter()
            .any(|(h, _)| h.op == Op::Rst as u16 && h.dst_port == 1000)
        {
            reset = true;
            break;
        }
    }
    assert!(reset, "the lying guest was never reset");
    assert_eq!(g.counters().faults(VsockFault::TxCreditLie), 1);
    assert!(held(&g).is_none());
    drop(stuck);
}

#[test]
fn the_guest_without_credit_stops_our_reads_and_a_credit_update_resumes_them() {
    let mut g = guest();
    g.post_rx(64, 4096);
    let listener = g.listen(52);
    let mut small = hdr(Op::Request, 1000, 52);
    small.buf_alloc = 8192;
    g.send(small, &[]);
    assert_eq!(g.recv()[0].0.op, Op::Response as u16);
    let (mut host, _) = listener.accept().unwrap();
    let data = pattern(100_000);
    host.set_nonblocking(true).unwrap();
    let written = host.write(&data).unwrap();
    g.run();
    let got = g.recv();
    let (rw, rest): (Vec<_>, Vec<_>) = got.into_iter().partition(|(h, _)| h.op == Op::Rw as u16);
    assert_eq!(data_of(&rw), &data[..8192]);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0.op, Op::CreditRequest as u16);
    // Nothing more, however often the loop runs: no spinning either.
    g.run();
    assert!(g.recv().is_empty());

    let mut update = hdr(Op::CreditUpdate, 1000, 52);
    update.buf_alloc = 8192;
    update.fwd_cnt = 8192;
    g.send(update, &[]);
    let (rw, rest): (Vec<_>, Vec<_>) = g.recv().into_iter().partition(|(h, _)| h.op == Op::Rw as u16);
    assert!(written >= 16384);
    assert_eq!(data_of(&rw), &data[8192..16384]);
    assert_eq!(rest.len(), 1);
    assert_eq!(
        rest[0].0.op,
        Op::CreditRequest as u16,
        "asks again at the next stall"
    );
}

#[test]
fn a_host_that_shuts_its_write_side_still_gets_everything_the_guest_sends() {
    let mut g = guest();
    g.post_rx(16, 4096);
    let (mut host, host_port) = g.host_connect(52);
    host.write_all(b"last words").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    g.run();
    let got = g.recv();
    assert_eq!(data_of(&got[..1]), b"last words");
    assert_eq!(got[1].0.op, Op::Shutdown as u16);
    assert_eq!(got[1].0.flags, shutdown::SEND);

    g.send(hdr(Op::Rw, 52, host_port), b"still listening?");
    g.send(hdr(Op::Rw, 52, host_port), b" yes");
    assert_eq!(read_now(&mut host), (b"still listening? yes".to_vec(), false));

    // The guest closes: the host sees the end, the guest an RST.
    let mut close = hdr(Op::Shutdown, 52, host_port);
    close.flags = shutdown::BOTH;
    g.send(close, &[]);
    assert_eq!(read_now(&mut host), (Vec::new(), true));
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(g.connections(), 0);
}

#[test]
fn a_guest_that_shuts_its_send_side_still_gets_host_data() {
    let mut g = guest();
    g.post_rx(16, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    g.send(hdr(Op::Rw, 1000, 52), b"request");
    let mut half = hdr(Op::Shutdown, 1000, 52);
    half.flags = shutdown::SEND;
    g.send(half, &[]);
    assert_eq!(read_now(&mut host), (b"request".to_vec(), true));
    host.write_all(b"reply").unwrap();
    g.run();
    assert_eq!(data_of(&g.recv()), b"reply");
    // The host finishes too: both directions are done.
    drop(host);
    g.run();
    let got = g.recv();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.op, got[0].0.flags),
        (Op::Shutdown as u16, shutdown::SEND)
    );
    assert_eq!(got[1].0.op, Op::Rst as u16, "both sides done");
    assert_eq!(g.connections(), 0);
}

#[test]
fn a_host_peer_that_closes_entirely_is_shut_both_ways_for_the_guest() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    host.write_all(b"bye").unwrap();
    drop(host);
    g.run();
    let got = g.recv();
    assert_eq!(data_of(&got[..1]), b"bye");
    assert_eq!(
        (got[1].0.op, got[1].0.flags),
        (Op::Shutdown as u16, shutdown::BOTH)
    );
    // The guest's answer to that (Linux sends RST) ends it.
    g.send(hdr(Op::Rst, 1000, 52), &[]);
    assert_eq!(g.connections(), 0);
}

#[test]
fn a_thousand_connections_each_echo_through_the_device() {
    const COUNT: u32 = 1100;
    let mut g = guest();
    let listener = g.listen(52);
    listener.set_nonblocking(true).unwrap();
    let mut hosts = Vec::new();
    for i in 0..COUNT {
        if g.rx_available() < 4 {
            g.post_rx(RING / 2, 256);
        }
        g.send(hdr(Op::Request, 10_000 + i, 52), &[]);
        let got = g.recv();
        assert_eq!(got.len(), 1, "connection {i}: {got:?}");
        assert_eq!(got[0].0.op, Op::Response as u16);
        hosts.push(listener.accept().unwrap().0);
    }
    assert_eq!(g.connections(), COUNT as usize);
    for (i, host) in hosts.iter_mut().enumerate() {
        if g.rx_available() < 4 {
            g.post_rx(RING / 2, 256);
        }
        let msg = format!("to guest {i}");
        host.write_all(msg.as_bytes()).unwrap();
        g.run();
        let got = g.recv();
        assert_eq!(data_of(&got), msg.as_bytes());
        assert_eq!(got[0].0.dst_port, 10_000 + i as u32);
        g.send(hdr(Op::Rw, 10_000 + i as u32, 52), msg.as_bytes());
        assert_eq!(read_now(host).0, msg.as_bytes());
    }
    assert_eq!(g.counters().connections, u64::from(COUNT));
    let none = g.counters().nonzero_faults().count();
    assert_eq!(none, 0, "{}", g.counters());
}

#[test]
fn transport_reset_drops_every_connection_and_tells_the_guest() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let (mut host, _) = g.host_connect(52);
    let event_buf = 0x8000;
    g.event.set_desc_table(&g.mem, 0, &link(&[w(event_buf, 4)], 0));
    g.mem.write_obj(0xffff_ffffu32, GuestAddress(event_buf)).unwrap();
    g.event.publish(&g.mem, &[0]);
    g.wired.kicks[EVENT_QUEUE].write(1).unwrap();
    g.run();
    assert_eq!(g.event.used_idx(&g.mem), 0, "kept until needed");

    g.wired.transport.lock().unwrap().device_mut().transport_reset();
    g.run();
    assert_eq!(g.event.used_idx(&g.mem), 1);
    assert_eq!(g.event.used(&g.mem, 0), (0, 4));
    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(event_buf)).unwrap(), 0);
    assert_eq!(read_now(&mut host), (Vec::new(), true));
    assert_eq!(g.connections(), 0);
    assert!(g.recv().is_empty(), "no per-connection RSTs");
}

#[test]
fn device_reset_closes_everything_and_keeps_the_listener() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let (mut host, _) = g.host_connect(52);
    let mut pending = UnixStream::connect(&g.socket).unwrap();
    pending.write_all(b"CONN").unwrap();
    g.run();
    g.wired.reset();
    assert_eq!(read_now(&mut host), (Vec::new(), true));
    assert_eq!(read_now(&mut pending), (Vec::new(), true));
    assert!(g.wired.transport.lock().unwrap().host_events().is_empty());
    assert!(g.socket.exists());

    // A host peer may connect while the device is down: it waits.
    let mut early = UnixStream::connect(&g.socket).unwrap();
    early.write_all(b"CONNECT 5\n").unwrap();
    g.run();
    g.rx_seen = 0;
    g.rx_posted = 0;
    let rx = DriverRing::at(&g.mem, RX_RING, RING);
    let tx = DriverRing::at(&g.mem, TX_RING, RING);
    let event = DriverRing::at(&g.mem, EVENT_RING, 16);
    g.wired.start(features(), &[rx, tx, event]);
    g.tx_next = 0;
    g.post_rx(8, 4096);
    let got = g.recv();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0.op, got[0].0.dst_port), (Op::Request as u16, 5));
}

#[test]
fn dropping_the_device_removes_its_socket() {
    let g = guest();
    let socket = g.socket.clone();
    assert!(socket.exists());
    drop(g.wired);
    assert!(!socket.exists());
}
