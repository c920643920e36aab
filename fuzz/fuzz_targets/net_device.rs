//! The virtio-net device between a fuzzed driver and a fuzzed host
//! network: the driver writes descriptors (direct and indirect) and
//! publishes receive and transmit chains, the host end of a socket-pair
//! backend sends frames (any vnet header) and reads what the card sent, and
//! the device is driven the way the event loop drives it (queue
//! notifications, backend readable / writable / hung up), reset and started
//! again with other features. See `kiln_fuzz::net_input` for the memory
//! layout.
//!
//! Checked after every op:
//! - nothing panics, and every call ends (libFuzzer's -timeout; passes run
//!   on the chain, descriptor and byte budget, without the clock, so runs
//!   reproduce);
//! - the used index in guest memory is the device's, it never gets ahead of
//!   the chains taken off the available ring, and chains taken and not yet
//!   used (held receive buffers) never exceed the queue size;
//! - every used element names a head inside the queue;
//! - the device writes only the used rings and the data area, where all
//!   descriptors point: descriptor tables, available rings, indirect tables
//!   and the sentinel at the end of memory are what the driver left;
//! - counters never go down;
//! - every frame reaching the host is at most `MAX_PACKET_LEN` bytes, at
//!   least a header and an Ethernet header, and its header is one kiln's
//!   own `TxRules` for the accepted features returns unchanged.
#![no_main]

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use event_manager::EventSet;
use kiln::backends::tap::{Offloads, SocketBackend};
use kiln::devices::virtio::features::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use kiln::devices::virtio::net::features::{has, missing_dependency};
use kiln::devices::virtio::net::{
    DropReason, MacAddr, NetCountersSnapshot, NetDevice, TxRules, MAX_PACKET_LEN, PROCESS_BACKEND, RX_QUEUE,
    TX_QUEUE, VNET_HDR_LEN,
};
use kiln::devices::virtio::queue::PassBudget;
use kiln::devices::virtio::{Activation, HostEvents, VirtioDevice};
use kiln::vstate::memory::GuestMemoryMmap;
use kiln_fuzz::net_input::*;
use kiln_fuzz::{guest_memory, NoInterrupt, GUEST_END};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MTU: u16 = 1500;
const SENTINEL_BYTE: u8 = 0xa5;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Ethernet header, the smallest frame the card may send.
const ETH_HLEN: usize = 14;

/// What the target knows of one queue, to check the device's moves.
#[derive(Clone, Copy, Default)]
struct Track {
    /// Chains taken off the available ring and used, since activation.
    taken: u64,
    used: u64,
}

struct Harness {
    mem: GuestMemoryMmap,
    device: NetDevice<SocketBackend>,
    peer: UnixDatagram,
    queues: Vec<Queue>,
    acked: u64,
    /// What the driver's part of memory (below `CONTROL_END`) holds.
    control: Vec<u8>,
    /// The driver's next available index per queue.
    avail_idx: [u16; 2],
    track: [Track; 2],
    counters: NetCountersSnapshot,
    recv_buf: Vec<u8>,
}

fn acked_features(offered: u64, wanted: u64) -> u64 {
    let mut acked = (wanted & offered) | 1 << VIRTIO_F_VERSION_1;
    while let Some((feature, _)) = missing_dependency(acked) {
        acked &= !(1 << feature);
    }
    acked
}

fn used_ring(q: usize) -> u64 {
    RINGS[q].2
}

impl Harness {
    fn new(features: u64, rx_log2: u8, tx_log2: u8) -> Self {
        let mem = guest_memory();
        let sentinel = vec![SENTINEL_BYTE; (GUEST_END - SENTINEL_START) as usize];
        mem.write_slice(&sentinel, GuestAddress(SENTINEL_START)).unwrap();
        let (backend, peer) = SocketBackend::pair(Offloads::ALL).unwrap();
        peer.set_nonblocking(true).unwrap();
        let mac = MacAddr::new([0x02, 0, 0, 0, 0, 0x42]).unwrap();
        let device = NetDevice::new(backend, mac, MTU).unwrap();
        let mut h = Harness {
            mem,
            device,
            peer,
            queues: Vec::new(),
            acked: 0,
            control: vec![0; CONTROL_END as usize],
            avail_idx: [0; 2],
            track: [Track::default(); 2],
            counters: NetCountersSnapshot::default(),
            recv_buf: vec![0; 2 * MAX_PACKET_LEN],
        };
        h.start(features, rx_log2, tx_log2);
        h
    }

    /// What a driver does from reset to DRIVER_OK.
    fn start(&mut self, features: u64, rx_log2: u8, tx_log2: u8) {
        self.acked = acked_features(self.device.device_features(), features);
        self.control.fill(0);
        self.mem.write_slice(&self.control, GuestAddress(0)).unwrap();
        let event_idx = has(self.acked, VIRTIO_F_RING_EVENT_IDX);
        self.queues = [rx_log2, tx_log2]
            .iter()
            .zip(RINGS)
            .map(|(&log2, (desc, avail, used))| {
                let mut q = Queue::new(256).unwrap();
                q.try_set_size(NetOp::queue_size(log2)).unwrap();
                q.try_set_desc_table_address(GuestAddress(desc)).unwrap();
                q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
                q.try_set_used_ring_address(GuestAddress(used)).unwrap();
                q.set_event_idx(event_idx);
                q.set_ready(true);
                q
            })
            .collect();
        self.avail_idx = [0; 2];
        self.track = [Track::default(); 2];
        let mut activation = Activation::new(
            self.acked,
            self.mem.clone(),
            Arc::new(NoInterrupt),
            Arc::new(HostEvents::new().expect("epoll set")),
        );
        // Reproducible passes: the budget counts, the clock does not.
        activation.rules.budget = PassBudget {
            time: None,
            ..PassBudget::DEFAULT
        };
        self.device
            .activate(activation)
            .expect("features are consistent, so activation succeeds");
    }

    fn size(&self, q: usize) -> u16 {
        self.queues[q].size()
    }

    /// A driver write below `CONTROL_END`, remembered.
    fn write_control(&mut self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let at = addr as usize;
        self.control[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn descriptor(addr: u32, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let (start, end) = if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            (NetOp::indirect_addr(addr), INDIRECT_END)
        } else {
            (NetOp::buffer_addr(addr), SENTINEL_START)
        };
        let len = u64::from(len).min(end - start) as u32;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&start.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        d
    }

    fn write_data(&self, addr: u32, bytes: &[u8]) {
        let at = NetOp::buffer_addr(addr);
        let len = (bytes.len() as u64).min(SENTINEL_START - at) as usize;
        // The hole is no guest memory; a driver cannot write there either.
        let _ = self.mem.write_slice(&bytes[..len], GuestAddress(at));
    }

    fn op(&mut self, op: &NetOp) {
        match *op {
            NetOp::Desc {
                tx,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let q = usize::from(tx);
                let slot = u64::from(index % self.size(q));
                let d = Self::descriptor(addr, len, flags, next);
                self.write_control(RINGS[q].0 + 16 * slot, &d);
            }
            NetOp::Indirect {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let entries = (INDIRECT_END - INDIRECT_START) / 16;
                let at = INDIRECT_START + 16 * (u64::from(index) % entries);
                let d = Self::descriptor(addr, len, flags, next);
                self.write_control(at, &d);
            }
            NetOp::Offer { tx, head } => {
                let q = usize::from(tx);
                let (_, avail, _) = RINGS[q];
                let slot = u64::from(self.avail_idx[q] % self.size(q));
                self.write_control(avail + 4 + 2 * slot, &head.to_le_bytes());
                self.publish(q, self.avail_idx[q].wrapping_add(1));
            }
            NetOp::Bump { tx, delta } => {
                let q = usize::from(tx);
                self.publish(q, self.avail_idx[q].wrapping_add(delta));
            }
            NetOp::UsedEvent { tx, delta } => {
                let q = usize::from(tx);
                let (_, avail, _) = RINGS[q];
                let event = self.queues[q].next_used().wrapping_add(delta as u16);
                let at = avail + 4 + 2 * u64::from(self.size(q));
                self.write_control(at, &event.to_le_bytes());
            }
            NetOp::WriteMem { addr, bytes } => self.write_data(addr, &bytes),
            NetOp::Fill { addr, len, byte } => self.write_data(addr, &vec![byte; usize::from(len)]),
            NetOp::HostSend { header, len, seed } => {
                let len = (len % 70_000) as usize;
                let mut packet = header.to_vec();
                packet.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
                // A full backend socket drops it, as a full tap would.
                let _ = self.peer.send(&packet);
            }
            NetOp::HostDrain => self.drain_host(),
            NetOp::Kick { tx } => {
                let index = if tx { TX_QUEUE } else { RX_QUEUE };
                self.pass(|h| h.device.process_queue(index, &mut h.queues));
            }
            NetOp::HostEvent { ready } => {
                let mut set = EventSet::empty();
                for (bit, event) in [EventSet::IN, EventSet::OUT, EventSet::HANG_UP, EventSet::ERROR]
                    .into_iter()
                    .enumerate()
                {
                    if ready & (1 << bit) != 0 {
                        set |= event;
                    }
                }
                self.pass(|h| h.device.process_host_event(PROCESS_BACKEND, set, &mut h.queues));
            }
            NetOp::Reset {
                features,
                rx_size_log2,
                tx_size_log2,
            } => self.reset(features, rx_size_log2, tx_size_log2),
        }
    }

    fn publish(&mut self, q: usize, idx: u16) {
        self.avail_idx[q] = idx;
        self.write_control(RINGS[q].1 + 2, &idx.to_le_bytes());
    }

    fn reset(&mut self, features: u64, rx_log2: u8, tx_log2: u8) {
        // What was sent under the old features is checked against them.
        self.drain_host();
        self.device.reset();
        self.start(features, rx_log2, tx_log2);
    }

    /// One call into the device, with the checks of its effects on the
    /// queues. A failed pass leaves the card to a driver reset, as the
    /// transport's DEVICE_NEEDS_RESET does.
    fn pass<R, E: std::fmt::Debug>(&mut self, call: impl FnOnce(&mut Self) -> Result<R, E>) {
        let before: Vec<(u16, u16)> = self
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        let result = call(self);
        for (q, &(next_avail, next_used)) in before.iter().enumerate() {
            let queue = &self.queues[q];
            let taken = queue.next_avail().wrapping_sub(next_avail);
            let used = queue.next_used().wrapping_sub(next_used);
            let track = &mut self.track[q];
            track.taken += u64::from(taken);
            track.used += u64::from(used);
            assert!(
                track.used <= track.taken,
                "queue {q}: {} chains used, only {} taken",
                track.used,
                track.taken
            );
            assert!(
                track.taken - track.used <= u64::from(queue.size()),
                "queue {q}: holds {} chains in a queue of {}",
                track.taken - track.used,
                queue.size()
            );
            let ring = used_ring(q);
            let in_memory: u16 = self.mem.read_obj(GuestAddress(ring + 2)).unwrap();
            assert_eq!(in_memory, queue.next_used(), "queue {q}: used index in memory");
            for i in 0..used {
                let slot = u64::from(next_used.wrapping_add(i) % queue.size());
                let id: u32 = self.mem.read_obj(GuestAddress(ring + 4 + 8 * slot)).unwrap();
                assert!(id < u32::from(queue.size()), "queue {q}: used head {id}");
            }
        }
        if result.is_err() {
            let (rx, tx) = (self.size(RX_QUEUE), self.size(TX_QUEUE));
            self.reset(self.acked, rx.trailing_zeros() as u8, tx.trailing_zeros() as u8);
        }
    }

    /// Everything that reached the host network must be a frame kiln
    /// would send.
    fn drain_host(&mut self) {
        let rules = TxRules::new(self.acked, MTU);
        while let Ok(len) = self.peer.recv(&mut self.recv_buf) {
            assert!(len <= MAX_PACKET_LEN, "a {len}-byte packet reached the host");
            assert!(
                len >= VNET_HDR_LEN + ETH_HLEN,
                "a {len}-byte packet reached the host"
            );
            let raw: [u8; VNET_HDR_LEN] = self.recv_buf[..VNET_HDR_LEN].try_into().unwrap();
            let frame_len = len - VNET_HDR_LEN;
            match rules.check(&raw, frame_len) {
                Ok(clean) => assert_eq!(clean.to_bytes(), raw, "the header sent was not the clean one"),
                Err(e) => panic!("a header kiln refuses reached the host: {e} ({raw:?})"),
            }
        }
    }

    /// The device wrote only the used rings and the data area; counters
    /// only grew.
    fn check(&mut self) {
        let mut control = vec![0u8; CONTROL_END as usize];
        self.mem.read_slice(&mut control, GuestAddress(0)).unwrap();
        for q in 0..2 {
            // The used ring's page is the device's.
            let ring = used_ring(q) as usize;
            control[ring..ring + 0x1000].copy_from_slice(&self.control[ring..ring + 0x1000]);
        }
        if let Some(at) = (0..control.len()).find(|&i| control[i] != self.control[i]) {
            panic!(
                "the device wrote {:#x} over {:#x} at {at:#x}, outside its buffers",
                control[at], self.control[at]
            );
        }
        let mut sentinel = vec![0u8; (GUEST_END - SENTINEL_START) as usize];
        self.mem
            .read_slice(&mut sentinel, GuestAddress(SENTINEL_START))
            .unwrap();
        if let Some(at) = sentinel.iter().position(|&b| b != SENTINEL_BYTE) {
            panic!(
                "the device wrote the sentinel at {:#x}",
                SENTINEL_START + at as u64
            );
        }
        let now = self.device.counters_snapshot();
        let was = &self.counters;
        assert!(now.rx_packets >= was.rx_packets && now.rx_bytes >= was.rx_bytes);
        assert!(now.tx_packets >= was.tx_packets && now.tx_bytes >= was.tx_bytes);
        for reason in DropReason::ALL {
            assert!(
                now.drops(reason) >= was.drops(reason),
                "{reason:?} counter went down"
            );
        }
        self.counters = now;
    }
}

fuzz_target!(|input: NetInput| {
    let mut h = Harness::new(input.features, input.rx_size_log2, input.tx_size_log2);
    for op in input.ops.iter().take(256) {
        h.op(op);
        h.check();
    }
    h.drain_host();
});
