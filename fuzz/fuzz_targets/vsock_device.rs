//! The virtio-vsock device between a fuzzed guest driver and fuzzed host
//! processes on real Unix sockets: the driver sends packets (valid ones
//! mostly, so connections form, and hostile ones) and gives receive and
//! event buffers; host peers connect to the device's socket with a
//! `CONNECT` line (or garbage), write, read, shut down and close, and
//! listeners at `<socket>_P` take guest connections or are closed. The
//! device is driven the way the event loop drives it: queue notifications,
//! passes that yielded run again, the device's ready host fds served in
//! batches, plus spurious host-event calls, transport resets and driver
//! resets. Deadlines (seconds away) are not reached: no input sleeps.
//! See `kiln_fuzz::vsock_input` for the memory layout.
//!
//! Checked after every op:
//! - nothing panics, and every call ends (libFuzzer's -timeout);
//! - the used index in guest memory is the device's, never ahead of the
//!   chains taken, and every used element names a chain in flight (TX
//!   used with length 0, event buffers with 0 or 4);
//! - the device writes only the used rings and the device-writable buffers
//!   of chains in flight; the sentinel at the end of memory never;
//! - every packet in a receive buffer has a valid header: dst_cid the
//!   guest's, a known op, src_cid 2 and type STREAM (an RST answering a
//!   misaddressed packet mirrors that packet's), len within the buffer and
//!   MAX_PAYLOAD and matching the used length, no payload but on RW;
//! - an `OK <port>\n` line is the first thing a host peer reads, with a
//!   port from 2^30 up;
//! - at most MAX_CONNECTIONS connections, none buffering more than
//!   BUF_ALLOC bytes; counters never go down.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use event_manager::EventSet;
use kiln::backends::unix_socket::{connect_nonblocking, port_path};
use kiln::config::VsockConfig;
use kiln::devices::virtio::events::HOST_EVENT_BATCH;
use kiln::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use kiln::devices::virtio::queue::PassBudget;
use kiln::devices::virtio::vsock::muxer::{FIRST_STREAM_TOKEN, TOKEN_KICK, TOKEN_LISTENER, TOKEN_TIMER};
use kiln::devices::virtio::vsock::packet::{Header, Op, HDR_LEN, TYPE_STREAM};
use kiln::devices::virtio::vsock::{
    VsockCountersSnapshot, VsockDevice, VsockFault, BUF_ALLOC, EVENT_QUEUE, FIRST_HOST_PORT, HOST_CID,
    MAX_CONNECTIONS, MAX_PAYLOAD, RX_QUEUE, TX_QUEUE,
};
use kiln::devices::virtio::{Activation, HostEvents, PassEnd, QueueError, VirtioDevice};
use kiln_fuzz::vsock_driver::{Driver, Used};
use kiln_fuzz::vsock_input::*;
use kiln_fuzz::NoInterrupt;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EpollEvent;

const GUEST_CID: u64 = 3;
const MAX_PEERS: usize = 32;
const OPS: [Op; 8] = [
    Op::Request,
    Op::Response,
    Op::Rst,
    Op::Shutdown,
    Op::Rw,
    Op::CreditUpdate,
    Op::CreditRequest,
    Op::Rw,
];

/// The socket directory, one per fuzzing process, removed at exit.
fn socket_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        extern "C" fn remove_dir() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let dir = std::env::temp_dir().join(format!("kiln-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket directory");
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_dir) };
        dir
    })
}

enum PeerKind {
    /// Connected to the device's socket: reads `OK <port>\n` first.
    Host { line: Vec<u8>, done: bool },
    /// Accepted from a guest connection.
    Guest,
}

struct Peer {
    stream: UnixStream,
    kind: PeerKind,
}

struct Harness {
    driver: Driver,
    device: VsockDevice,
    socket: PathBuf,
    events: Arc<HostEvents>,
    queues: Vec<Queue>,
    /// A pass that yielded, per queue: the event loop runs it again.
    yielded: [bool; 3],
    peers: Vec<Peer>,
    listeners: [Option<UnixListener>; LISTENED_PORTS],
    /// (host port, guest port) of connections the device sent packets for.
    seen: Vec<(u32, u32)>,
    /// RW bytes the guest received per connection: its fwd_cnt.
    received: HashMap<(u32, u32), u32>,
    /// dst_cid and type values the guest sent (an RST may mirror them).
    sent_cids: HashSet<u64>,
    sent_types: HashSet<u16>,
    counters: VsockCountersSnapshot,
}

fn acked_features(offered: u64, wanted: u8) -> u64 {
    let mut acked = 1 << VIRTIO_F_VERSION_1;
    if wanted & 1 != 0 {
        acked |= 1 << VIRTIO_F_RING_EVENT_IDX;
    }
    if wanted & 2 != 0 {
        acked |= 1 << VIRTIO_F_INDIRECT_DESC;
    }
    acked & offered
}

impl Harness {
    fn new(features: u8, queue_log2: [u8; 3]) -> Self {
        let socket = socket_dir().join("v.sock");
        let device = VsockDevice::new(&VsockConfig {
            cid: GUEST_CID as u32,
            socket: socket.clone(),
        })
        .expect("vsock device on a fresh path");
        let listeners = std::array::from_fn(|i| Self::listen(&socket, i));
        let mut h = Harness {
            driver: Driver::default(),
            device,
            socket,
            events: Arc::new(HostEvents::new().expect("epoll set")),
            queues: Vec::new(),
            yielded: [false; 3],
            peers: Vec::new(),
            listeners,
            seen: Vec::new(),
            received: HashMap::new(),
            sent_cids: HashSet::new(),
            sent_types: HashSet::new(),
            counters: VsockCountersSnapshot::default(),
        };
        h.start(features, queue_log2);
        h
    }

    fn listen(socket: &std::path::Path, which: usize) -> Option<UnixListener> {
        let path = port_path(socket, HOST_PORTS[which]);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("host listener");
        listener.set_nonblocking(true).unwrap();
        Some(listener)
    }

    /// What a driver does from reset to DRIVER_OK.
    fn start(&mut self, features: u8, queue_log2: [u8; 3]) {
        let acked = acked_features(self.device.device_features(), features);
        self.queues = self.driver.start(acked, queue_log2);
        self.yielded = [false; 3];
        self.seen.clear();
        self.received.clear();
        self.sent_cids.clear();
        self.sent_types.clear();
        self.events = Arc::new(HostEvents::new().expect("epoll set"));
        let mut activation = Activation::new(
            acked,
            self.driver.mem.clone(),
            Arc::new(NoInterrupt),
            self.events.clone(),
        );
        // Reproducible passes: the budget counts, the clock does not.
        activation.rules.budget = PassBudget {
            time: None,
            ..PassBudget::DEFAULT
        };
        self.device
            .activate(activation)
            .expect("activation succeeds with any features offered");
    }

    /// What the transport does on a driver reset (or DEVICE_NEEDS_RESET)
    /// and the driver to start again.
    fn reset(&mut self, features: u8, queue_log2: [u8; 3]) {
        self.device.reset();
        self.events.clear();
        self.start(features, queue_log2);
    }

    /// Offers a chain on queue `q` and, if `kick`, notifies the device.
    fn offer(&mut self, q: usize, spans: &[(u64, u32, bool)], indirect: bool, kick: bool) -> bool {
        let offered = self.driver.offer(q, spans, indirect);
        if kick {
            self.kick(q);
        }
        offered
    }

    fn kick(&mut self, q: usize) {
        self.call(|d, queues| d.process_queue(q, queues).map(|end| (end, Some(q))));
    }

    /// The ports of a packet from `sel` (see `Packet::ports`).
    fn ports(&self, sel: u8) -> (u32, u32) {
        if sel & 2 != 0 && !self.seen.is_empty() {
            let (host, guest) = self.seen[usize::from(sel >> 2) % self.seen.len()];
            return (guest, host);
        }
        (
            GUEST_PORTS[usize::from(sel >> 2) % 4],
            HOST_PORTS[usize::from(sel >> 4) % 4],
        )
    }

    fn send(&mut self, p: &Packet) {
        let (src_port, dst_port) = self.ports(p.ports);
        let op = OPS[usize::from(p.op % 8)];
        let payload_len = if op == Op::Rw {
            u32::from(p.len % 28_000)
        } else {
            0
        };
        let received = self.received.get(&(dst_port, src_port)).copied().unwrap_or(0);
        let buf_alloc = match p.credit % 4 {
            0 | 1 => BUF_ALLOC,
            2 => u32::from(p.credit) * 64,
            _ => 0,
        };
        let mut h = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: payload_len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: if op == Op::Shutdown {
                u32::from(p.flags % 4)
            } else {
                0
            },
            buf_alloc,
            fwd_cnt: received,
        };
        let (mut truncate, mut writable, mut hole) = (0, false, false);
        match p.hostile {
            None => {}
            Some(Hostile::SrcCid(v)) => h.src_cid = v,
            Some(Hostile::DstCid(v)) => h.dst_cid = v,
            Some(Hostile::Type(v)) => h.type_ = v,
            Some(Hostile::Op(v)) => h.op = v,
            Some(Hostile::Len(v)) => h.len = v,
            Some(Hostile::FwdCnt(v)) => h.fwd_cnt = v,
            Some(Hostile::BufAlloc(v)) => h.buf_alloc = v,
            Some(Hostile::Flags(v)) => h.flags = v,
            Some(Hostile::Ports { src, dst }) => (h.src_port, h.dst_port) = (src, dst),
            Some(Hostile::Truncate(n)) => truncate = usize::from(n),
            Some(Hostile::Writable) => writable = true,
            Some(Hostile::InHole) => hole = true,
        }
        self.sent_cids.insert(h.dst_cid);
        self.sent_types.insert(h.type_);
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend((0..payload_len).map(|i| p.seed.wrapping_add(i as u8)));
        bytes.truncate(bytes.len() - truncate % (bytes.len() + 1));
        let total = bytes.len() as u64;
        let mut cuts: Vec<u64> = p.cuts.iter().map(|&c| u64::from(c) % (total + 1)).collect();
        cuts.extend([0, total]);
        cuts.sort_unstable();
        cuts.dedup();
        let base = self.driver.alloc_tx(total);
        self.driver.write(base, &bytes);
        let mut spans: Vec<(u64, u32, bool)> = cuts
            .windows(2)
            .map(|w| (base + w[0], (w[1] - w[0]) as u32, false))
            .collect();
        if spans.is_empty() {
            spans.push((base, 0, false));
        }
        if hole {
            // Everything after the header, in no memory.
            spans.retain(|s| s.0 < base + HDR_LEN as u64);
            if let Some(last) = spans.last_mut() {
                last.1 = last.1.min((base + HDR_LEN as u64 - last.0) as u32);
            }
            spans.push((HOLE.0 + u64::from(p.seed), payload_len.max(1), false));
        }
        if writable {
            let at = self.driver.alloc_tx(16);
            spans.push((at, 16, true));
        }
        self.offer(TX_QUEUE, &spans, p.indirect, p.kick);
    }

    fn receive(&mut self, b: &RxBuffers) {
        for i in 0..u64::from(b.count % 8 + 1) {
            let len = u64::from(b.len);
            let spans: Vec<(u64, u32, bool)> = match b.size % 4 {
                3 => {
                    // A header, then the same memory three times.
                    let room = len % (30 << 10) + 1;
                    let Some(at) = self.driver.alloc_rx(HDR_LEN as u64 + room) else {
                        return;
                    };
                    let payload = (at + HDR_LEN as u64, room as u32, true);
                    vec![(at, HDR_LEN as u32, true), payload, payload, payload]
                }
                size => {
                    let len = match size {
                        0 => len % HDR_LEN as u64,
                        1 => len % 4096,
                        _ => len % (48 << 10),
                    } + i % 2;
                    let Some(at) = self.driver.alloc_rx(len) else {
                        return;
                    };
                    let cut = if len == 0 { 0 } else { u64::from(b.cut) % len };
                    [(at, cut), (at + cut, len - cut)]
                        .into_iter()
                        .filter(|s| s.1 > 0 || len == 0)
                        .map(|(a, l)| (a, l as u32, true))
                        .collect()
                }
            };
            if !self.offer(RX_QUEUE, &spans, b.indirect, false) {
                break;
            }
        }
        if b.kick {
            self.kick(RX_QUEUE);
        }
    }

    fn op(&mut self, op: &VsockOp) {
        match op {
            VsockOp::Send(p) => self.send(p),
            VsockOp::Receive(b) => self.receive(b),
            &VsockOp::EventBuffers { count, len, kick } => {
                for _ in 0..count % 4 + 1 {
                    let len = u64::from(len % 8);
                    let Some(at) = self.driver.alloc_rx(len) else {
                        break;
                    };
                    if !self.offer(EVENT_QUEUE, &[(at, len as u32, true)], false, false) {
                        break;
                    }
                }
                if kick {
                    self.kick(EVENT_QUEUE);
                }
            }
            &VsockOp::RawChain {
                queue,
                addr,
                len,
                write,
                kick,
            } => {
                let q = usize::from(queue % 3);
                let len = u64::from(len);
                let at = if q == TX_QUEUE {
                    TX_AREA.0 + u64::from(addr) % (TX_AREA.1 - TX_AREA.0)
                } else {
                    match self.driver.alloc_rx(len) {
                        Some(at) => at,
                        None => return,
                    }
                };
                let end = if q == TX_QUEUE { TX_AREA.1 } else { RX_AREA.1 };
                let len = len.min(end - at) as u32;
                self.offer(q, &[(at, len, write)], false, kick);
            }
            &VsockOp::Kick { queue } => self.kick(usize::from(queue % 3)),
            &VsockOp::Run { rounds } => self.run(rounds % 4 + 1),
            &VsockOp::Spurious { token, ready } => {
                let token = match token % 8 {
                    0 => TOKEN_LISTENER,
                    1 => TOKEN_TIMER,
                    2 => TOKEN_KICK,
                    _ => FIRST_STREAM_TOKEN + u64::from(token >> 3),
                };
                let mut set = EventSet::empty();
                for (bit, event) in [EventSet::IN, EventSet::OUT, EventSet::HANG_UP, EventSet::ERROR]
                    .into_iter()
                    .enumerate()
                {
                    if ready & (1 << bit) != 0 {
                        set |= event;
                    }
                }
                self.call(|d, queues| d.process_host_event(token, set, queues).map(|e| (e, None)));
            }
            VsockOp::HostConnect(g) => self.host_connect(g),
            &VsockOp::Accept { listener } => {
                let Some(l) = &self.listeners[usize::from(listener) % LISTENED_PORTS] else {
                    return;
                };
                for _ in 0..8 {
                    let Ok((stream, _)) = l.accept() else {
                        break;
                    };
                    if self.peers.len() >= MAX_PEERS {
                        break;
                    }
                    stream.set_nonblocking(true).unwrap();
                    self.peers.push(Peer {
                        stream,
                        kind: PeerKind::Guest,
                    });
                }
            }
            &VsockOp::PeerWrite { peer, len, seed } => {
                let Some(p) = self.peer(peer) else {
                    return;
                };
                let bytes: Vec<u8> = (0..len % 70_000).map(|i| seed.wrapping_add(i as u8)).collect();
                let _ = p.stream.write(&bytes);
            }
            &VsockOp::PeerRead { peer, max } => self.peer_read(peer, max),
            &VsockOp::PeerShutdown { peer, how } => {
                if let Some(p) = self.peer(peer) {
                    let how = [Shutdown::Read, Shutdown::Write, Shutdown::Both][usize::from(how % 3)];
                    let _ = p.stream.shutdown(how);
                }
            }
            &VsockOp::PeerClose { peer } => {
                if !self.peers.is_empty() {
                    let i = usize::from(peer) % self.peers.len();
                    self.peers.swap_remove(i);
                }
            }
            &VsockOp::Listener { which, open } => {
                let which = usize::from(which) % LISTENED_PORTS;
                if open {
                    if self.listeners[which].is_none() {
                        self.listeners[which] = Self::listen(&self.socket, which);
                    }
                } else if self.listeners[which].take().is_some() {
                    let _ = std::fs::remove_file(port_path(&self.socket, HOST_PORTS[which]));
                }
            }
            VsockOp::TransportReset => self.device.transport_reset(),
            &VsockOp::Reset { features, queue_log2 } => self.reset(features, queue_log2),
        }
    }

    fn peer(&mut self, peer: u8) -> Option<&mut Peer> {
        if self.peers.is_empty() {
            return None;
        }
        let i = usize::from(peer) % self.peers.len();
        self.peers.get_mut(i)
    }

    fn host_connect(&mut self, g: &Greeting) {
        if self.peers.len() >= MAX_PEERS {
            return;
        }
        // A full backlog refuses it: that is the device's business.
        let Ok(mut stream) = connect_nonblocking(&self.socket) else {
            return;
        };
        let port = if g.port > 250 {
            u32::from(g.port)
        } else {
            GUEST_PORTS[usize::from(g.port % 4)]
        };
        let mut line = Vec::new();
        if g.style & 0x20 == 0 {
            if g.style & 8 != 0 {
                line.extend_from_slice(&g.raw);
            } else {
                line.extend_from_slice(if g.style & 1 != 0 {
                    b"connect "
                } else {
                    b"CONNECT "
                });
                if g.style & 0x10 != 0 {
                    line.extend_from_slice(format!("{}", u64::from(port) + (1 << 32)).as_bytes());
                } else {
                    line.extend_from_slice(port.to_string().as_bytes());
                }
                if g.style & 4 == 0 {
                    line.extend_from_slice(if g.style & 2 != 0 { b"\r\n" } else { b"\n" });
                }
            }
            line.extend((0..g.extra % 4096).map(|i| i as u8));
        }
        let _ = stream.write(&line);
        self.peers.push(Peer {
            stream,
            kind: PeerKind::Host {
                line: Vec::new(),
                done: false,
            },
        });
    }

    fn peer_read(&mut self, peer: u8, max: u16) {
        let Some(p) = self.peer(peer) else {
            return;
        };
        let mut buf = vec![0u8; usize::from(max)];
        let Ok(n) = p.stream.read(&mut buf) else {
            return;
        };
        let PeerKind::Host { line, done } = &mut p.kind else {
            return;
        };
        for &b in &buf[..n] {
            if *done {
                break;
            }
            line.push(b);
            let ok = match line.len() {
                1 => b == b'O',
                2 => b == b'K',
                3 => b == b' ',
                _ => b.is_ascii_digit() || (b == b'\n' && line.len() > 4),
            };
            assert!(
                ok && line.len() <= 14,
                "a host peer read {line:?}, not an OK line"
            );
            if b == b'\n' {
                let port: u32 = std::str::from_utf8(&line[3..line.len() - 1])
                    .unwrap()
                    .parse()
                    .expect("a port below 2^32");
                assert!(port >= FIRST_HOST_PORT, "host port {port} below 2^30");
                *done = true;
            }
        }
    }

    /// The event loop: passes that yielded, then the device's ready host
    /// fds in batches, as the transport's handler serves them.
    fn run(&mut self, rounds: u8) {
        for _ in 0..rounds {
            let mut work = 0;
            for q in 0..3 {
                if std::mem::take(&mut self.yielded[q]) {
                    work += 1;
                    self.kick(q);
                }
            }
            let mut ready = [EpollEvent::default(); HOST_EVENT_BATCH];
            let count = self.events.ready(&mut ready).expect("epoll_wait");
            for event in &ready[..count] {
                let fd = event.data() as RawFd;
                let Some(watch) = self.events.lookup(fd) else {
                    continue;
                };
                let set = event.event_set();
                let events = self.events.clone();
                let failed =
                    self.call(|d, queues| d.process_host_event(watch.token, set, queues).map(|e| (e, None)));
                if failed {
                    break;
                }
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    events.forget_unless_changed(fd, watch);
                }
            }
            if work + count == 0 {
                break;
            }
        }
    }

    /// One call into the device, and the checks of what it did to guest
    /// memory and the queues. A failed call leaves the device to a driver
    /// reset, as the transport's DEVICE_NEEDS_RESET does; returns whether
    /// it failed.
    fn call(
        &mut self,
        f: impl FnOnce(&mut VsockDevice, &mut [Queue]) -> Result<(PassEnd, Option<usize>), QueueError>,
    ) -> bool {
        let before: Vec<(u16, u16)> = self
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        let result = f(&mut self.device, &mut self.queues);
        self.driver.check_memory();
        for (q, &before) in before.iter().enumerate() {
            for used in self.driver.reap(q, &self.queues[q], before) {
                self.check_used(q, used);
            }
        }
        match result {
            Ok((PassEnd::Yielded, Some(q))) => {
                self.yielded[q] = true;
                false
            }
            Ok(_) => false,
            Err(_) => {
                let log2 = |q: &Queue| q.size().trailing_zeros() as u8;
                let sizes = [
                    log2(&self.queues[0]),
                    log2(&self.queues[1]),
                    log2(&self.queues[2]),
                ];
                let acked = self.driver.acked;
                let features = u8::from(acked & (1 << VIRTIO_F_RING_EVENT_IDX) != 0)
                    | u8::from(acked & (1 << VIRTIO_F_INDIRECT_DESC) != 0) << 1;
                self.reset(features, sizes);
                true
            }
        }
    }

    /// A used element of queue `q`.
    fn check_used(&mut self, q: usize, used: Used) {
        let Used { len, bytes } = used;
        match q {
            TX_QUEUE => assert_eq!(len, 0, "a TX chain used with length {len}"),
            EVENT_QUEUE => {
                assert!(len == 0 || len == 4, "an event of {len} bytes");
                if len == 4 {
                    assert_eq!(bytes[..4], 0u32.to_le_bytes(), "not a transport reset event");
                }
            }
            _ if len > 0 => self.check_packet(&bytes, len),
            _ => {}
        }
    }

    /// A packet the device wrote into a receive buffer of `bytes`.
    fn check_packet(&mut self, bytes: &[u8], used: u32) {
        assert!(
            bytes.len() >= HDR_LEN,
            "a packet in a {}-byte buffer",
            bytes.len()
        );
        let h = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
        let op = h
            .op()
            .unwrap_or_else(|| panic!("the device sent op {}: {h:?}", h.op));
        assert_eq!(h.dst_cid, GUEST_CID, "{h:?}");
        if op == Op::Rst {
            assert!(
                h.src_cid == HOST_CID || self.sent_cids.contains(&h.src_cid),
                "{h:?}"
            );
            assert!(
                h.type_ == TYPE_STREAM || self.sent_types.contains(&h.type_),
                "{h:?}"
            );
        } else {
            assert_eq!((h.src_cid, h.type_), (HOST_CID, TYPE_STREAM), "{h:?}");
        }
        assert!(h.len <= MAX_PAYLOAD, "{h:?}");
        assert!(
            (h.len as usize) <= bytes.len() - HDR_LEN,
            "{h:?} in a {}-byte buffer",
            bytes.len()
        );
        assert_eq!(used, HDR_LEN as u32 + h.len, "used length of {h:?}");
        assert!(op == Op::Rw || h.len == 0, "{h:?}");
        if h.src_cid != HOST_CID {
            return;
        }
        let key = (h.src_port, h.dst_port);
        if op == Op::Rw {
            let n = self.received.entry(key).or_default();
            *n = n.wrapping_add(h.len);
        }
        if !self.seen.contains(&key) {
            if self.seen.len() >= 16 {
                self.seen.remove(0);
            }
            self.seen.push(key);
        }
        if self.received.len() > 1024 {
            self.received.clear();
        }
    }

    /// Connections and their buffers bounded; counters only grew.
    fn check(&mut self) {
        if let Some(muxer) = self.device.muxer() {
            assert!(muxer.len() <= MAX_CONNECTIONS, "{} connections", muxer.len());
            for key in muxer.keys() {
                let conn = muxer.connection(key).unwrap();
                assert!(
                    conn.buffered() <= BUF_ALLOC as usize,
                    "{key:?} buffers {}",
                    conn.buffered()
                );
                assert!(
                    conn.buffer_capacity() <= 2 * BUF_ALLOC as usize,
                    "{key:?} holds {}",
                    conn.buffer_capacity()
                );
            }
        }
        let now = self.device.counters_snapshot();
        let was = &self.counters;
        assert!(now.rx_packets >= was.rx_packets && now.rx_bytes >= was.rx_bytes);
        assert!(now.tx_packets >= was.tx_packets && now.tx_bytes >= was.tx_bytes);
        assert!(now.connections >= was.connections);
        for fault in VsockFault::ALL {
            assert!(now.faults(fault) >= was.faults(fault), "{fault:?} went down");
        }
        self.counters = now;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for which in 0..LISTENED_PORTS {
            if self.listeners[which].take().is_some() {
                let _ = std::fs::remove_file(port_path(&self.socket, HOST_PORTS[which]));
            }
        }
    }
}

fuzz_target!(|input: VsockInput| {
    let mut h = Harness::new(input.features, input.queue_log2);
    for op in input.ops.iter().take(192) {
        h.op(op);
        h.check();
    }
});
