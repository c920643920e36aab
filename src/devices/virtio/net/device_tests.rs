//! The device behind its transport and a real event loop, over a socket
//! backend whose far end (the test) stands for the host network.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::backends::tap::{Offloads, SocketBackend};
use crate::devices::bus::BusDevice;
use crate::devices::virtio::features::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::devices::virtio::net::features::*;
use crate::devices::virtio::net::header::{flags, gso, VirtioNetHdr, NUM_BUFFERS_OFFSET};
use crate::devices::virtio::queue::PassBudget;
use crate::devices::virtio::test_utils::{
    activation, guest_bytes, link, memory, r, w, wire, CountingInterrupt, DriverRing, Wired, D,
};
use crate::vstate::memory::GuestMemoryMmap;

/// Guest memory ends a region here, so buffers can straddle it.
pub(super) const BOUNDARY: u64 = 0x10_0000;
pub(super) const RX_RING: u64 = 0x1000;
pub(super) const TX_RING: u64 = 0x4000;
pub(super) const RX_BUFS: u64 = 0x2_0000;
pub(super) const TX_BUFS: u64 = 0x20_0000;
pub(super) const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
/// The largest frame the device expects without segmentation, at MTU 1500,
/// header included.
pub(super) const UNSEGMENTED: u32 = 12 + 14 + 4 + 1500;

pub(super) fn bits(list: &[u32]) -> u64 {
    list.iter().fold(0, |acc, &bit| with(acc, bit))
}

/// What a plain driver acks: no offloads, no mergeable buffers.
pub(super) fn plain() -> u64 {
    bits(&[
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
    ])
}

/// Receive offloads with segmentation: frames up to 64 KiB.
pub(super) fn guest_tso() -> u64 {
    bits(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ])
}

pub(super) fn mrg() -> u64 {
    bits(&[VIRTIO_NET_F_MRG_RXBUF])
}

/// A recognisable Ethernet frame of `len` bytes.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    frame
}

pub(super) fn device(supported: Offloads) -> (NetDevice<SocketBackend>, UnixDatagram) {
    let (backend, peer) = SocketBackend::pair(supported).unwrap();
    peer.set_nonblocking(true).unwrap();
    let dev = NetDevice::new(backend, MacAddr::new(MAC).unwrap(), 1500).unwrap();
    (dev, peer)
}

pub(super) fn guest_memory() -> GuestMemoryMmap {
    memory(&[(0, BOUNDARY as usize), (BOUNDARY, 0x30_0000)])
}

/// One driver, one card, one event loop.
pub(super) struct Nic {
    pub(super) mem: GuestMemoryMmap,
    pub(super) wired: Wired<NetDevice<SocketBackend>>,
    /// The host network's end of the backend.
    pub(super) peer: UnixDatagram,
    pub(super) rx: DriverRing,
    pub(super) tx: DriverRing,
    pub(super) rx_next_desc: u16,
    pub(super) tx_next_desc: u16,
    pub(super) rx_seen: u16,
    pub(super) tx_seen: u16,
}

pub(super) fn nic(acked: u64, rx_size: u16) -> Nic {
    let mem = guest_memory();
    let (dev, peer) = device(Offloads::ALL);
    let features = dev.device_features();
    assert_eq!(acked & !features, 0, "acking features not offered");
    let wired = wire(dev, &mem);
    let rx = DriverRing::at(&mem, RX_RING, rx_size);
    let tx = DriverRing::at(&mem, TX_RING, 16);
    wired.start(acked, &[rx, tx]);
    Nic {
        mem,
        wired,
        peer,
        rx,
        tx,
        rx_next_desc: 0,
        tx_next_desc: 0,
        rx_seen: 0,
        tx_seen: 0,
    }
}

impl Nic {
    pub(super) fn device<T>(&self, f: impl FnOnce(&NetDevice<SocketBackend>) -> T) -> T {
        f(self.wired.transport.lock().unwrap().device())
    }

    pub(super) fn counters(&self) -> NetCountersSnapshot {
        self.device(|d| d.counters_snapshot())
    }

    /// Runs the loop until a round serves nothing; the events per round.
    pub(super) fn settle(&mut self) -> Vec<usize> {
        let mut rounds = Vec::new();
        loop {
            match self.wired.run() {
                0 => return rounds,
                n => rounds.push(n),
            }
            assert!(rounds.len() < 1000, "never settles");
        }
    }

    pub(super) fn kick(&self, queue: usize) {
        self.wired.kicks[queue].write(1).unwrap();
    }

    /// Publishes raw chains (already linked) on `ring` at the next free
    /// descriptors.
    pub(super) fn publish(
        mem: &GuestMemoryMmap,
        ring: &DriverRing,
        next: &mut u16,
        chains: &[Vec<D>],
    ) -> Vec<u16> {
        let mut heads = Vec::new();
        for chain in chains {
            if *next as usize + chain.len() > ring.size as usize {
                *next = 0;
            }
            ring.set_desc_table(mem, *next, &link(chain, *next));
            heads.push(*next);
            *next += chain.len() as u16;
        }
        ring.publish(mem, &heads);
        heads
    }

    /// The driver posts receive chains (no notification).
    pub(super) fn post_rx(&mut self, chains: &[Vec<D>]) -> Vec<u16> {
        Self::publish(&self.mem, &self.rx, &mut self.rx_next_desc, chains)
    }

    /// `count` one-buffer receive chains of `len` bytes each.
    pub(super) fn post_rx_buffers(&mut self, count: usize, len: u32) -> Vec<u16> {
        let base = RX_BUFS + u64::from(self.rx_next_desc) * u64::from(len);
        let chains: Vec<Vec<D>> = (0..count as u64)
            .map(|i| vec![w(base + i * u64::from(len), len)])
            .collect();
        self.post_rx(&chains)
    }

    /// The driver queues frames to send and notifies.
    pub(super) fn post_tx(&mut self, chains: &[Vec<D>]) -> Vec<u16> {
        let heads = Self::publish(&self.mem, &self.tx, &mut self.tx_next_desc, chains);
        self.kick(TX_QUEUE);
        heads
    }

    /// The host network sends a frame to the guest (zero vnet header).
    pub(super) fn host_send(&self, frame: &[u8]) {
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(frame);
        self.peer.send(&packet).unwrap();
    }

    /// What reached the host network: header and frame.
    pub(super) fn host_recv(&self) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let mut buf = vec![0u8; 70_000];
        let len = self.peer.recv(&mut buf).ok()?;
        let header: [u8; VNET_HDR_LEN] = buf[..VNET_HDR_LEN].try_into().unwrap();
        Some((VirtioNetHdr::from_bytes(&header), buf[VNET_HDR_LEN..len].to_vec()))
    }

    pub(super) fn new_used(mem: &GuestMemoryMmap, ring: &DriverRing, seen: &mut u16) -> Vec<(u32, u32)> {
        let to = ring.used_idx(mem);
        let used = (0..to.wrapping_sub(*seen))
            .map(|i| ring.used(mem, seen.wrapping_add(i)))
            .collect();
        *seen = to;
        used
    }

    /// Receive chains the device returned since the last call: (head, len).
    pub(super) fn rx_used(&mut self) -> Vec<(u32, u32)> {
        Self::new_used(&self.mem, &self.rx, &mut self.rx_seen)
    }

    pub(super) fn tx_used(&mut self) -> Vec<(u32, u32)> {
        Self::new_used(&self.mem, &self.tx, &mut self.tx_seen)
    }

    pub(super) fn interrupt_status(&self) -> u32 {
        let mut data = [0u8; 4];
        self.wired.transport.lock().unwrap().read(0x060, &mut data);
        u32::from_le_bytes(data)
    }

    pub(super) fn ack_interrupt(&self) {
        let status = self.interrupt_status();
        self.wired
            .transport
            .lock()
            .unwrap()
            .write(0x064, &status.to_le_bytes());
    }

    /// Writes a transmit packet (header, then frame) at `addr`.
    pub(super) fn write_packet(&self, addr: u64, header: &VirtioNetHdr, frame: &[u8]) -> u32 {
        let mut packet = header.to_bytes().to_vec();
        packet.extend_from_slice(frame);
        self.mem.write_slice(&packet, GuestAddress(addr)).unwrap();
        packet.len() as u32
    }

    /// Host fds watched: the backend, and [`RATE_LIMITER_TIMERS`].
    pub(super) fn watched(&self) -> usize {
        self.wired.transport.lock().unwrap().host_events().len()
    }
}

/// The receive and transmit rate limiters' timers, always watched while
/// the card runs (never ready unless throttled).
pub(super) const RATE_LIMITER_TIMERS: usize = 2;

/// The header a receive buffer starts with: zero but for `num_buffers`.
pub(super) fn rx_header(num_buffers: u16) -> Vec<u8> {
    let mut header = vec![0u8; VNET_HDR_LEN];
    header[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers.to_le_bytes());
    header
}

#[test]
fn features_and_config_space_describe_the_card() {
    let (dev, _peer) = device(Offloads::ALL);
    let offered = dev.device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_EVENT_IDX,
        crate::devices::virtio::features::VIRTIO_F_INDIRECT_DESC,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert!(has(offered, bit), "feature {bit} not offered");
    }
    // Nothing this device does not implement.
    for bit in [VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_HOST_ECN] {
        assert!(!has(offered, bit), "feature {bit} offered");
    }
    assert_eq!(features::missing_dependency(offered), None);
    let mut config = [0u8; 12];
    dev.read_config(0, &mut config);
    assert_eq!(config, [2, 0, 0, 0, 0, 0x42, 1, 0, 1, 0, 0xdc, 0x05]);

    // A backend without offloads: none offered to the guest.
    let (bare, _peer) = device(Offloads::NONE);
    let offered = bare.device_features();
    for bit in [
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_UFO,
    ] {
        assert!(!has(offered, bit), "feature {bit} offered");
    }
    assert!(has(offered, VIRTIO_NET_F_HOST_TSO4));
}

#[test]
fn activation_sets_the_header_length_and_the_acked_offloads() {
    let nic = nic(plain() | guest_tso(), 16);
    let offloads = nic.device(|d| d.backend().offloads());
    assert_eq!(
        offloads,
        Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Offloads::NONE
        }
    );
    assert_eq!(nic.device(|d| d.backend().vnet_hdr_len()), VNET_HDR_LEN);
    assert_eq!(nic.watched(), 1 + RATE_LIMITER_TIMERS);
    nic.wired.reset();
    assert_eq!(nic.device(|d| d.backend().offloads()), Offloads::NONE);
    nic.wired.start(plain(), &[nic.rx, nic.tx]);
    assert_eq!(nic.device(|d| d.backend().offloads()), Offloads::NONE);
}

#[test]
fn frames_arrive_in_single_chain_buffers() {
    let mut nic = nic(plain(), 16);
    let heads = nic.post_rx_buffers(3, UNSEGMENTED);
    let small = frame(60, 1);
    let full = frame(1514, 2);
    nic.host_send(&small);
    nic.host_send(&full);
    nic.settle();
    assert_eq!(
        nic.rx_used(),
        [(u32::from(heads[0]), 72), (u32::from(heads[1]), 1526)]
    );
    let at = |i: u64| RX_BUFS + i * u64::from(UNSEGMENTED);
    assert_eq!(guest_bytes(&nic.mem, at(0), 12), rx_header(1));
    assert_eq!(guest_bytes(&nic.mem, at(0) + 12, 60), small);
    assert_eq!(guest_bytes(&nic.mem, at(1) + 12, 1514), full);
    let counters = nic.counters();
    assert_eq!((counters.rx_packets, counters.rx_bytes), (2, 1574));
    assert_eq!(counters.rx_drops(), 0);
    assert_eq!(nic.interrupt_status() & 1, 1);
    // The third chain waits for the next frame.
    assert_eq!(nic.device(|d| d.rx_buffers_held()), 1);
    assert!(!nic.device(|d| d.rx_waiting_for_buffers()));
}

#[test]
fn a_mergeable_frame_spans_chains_and_says_how_many() {
    let mut nic = nic(plain() | guest_tso() | mrg(), 64);
    let heads = nic.post_rx_buffers(40, 2048);
    let big = frame(5000, 3);
    nic.host_send(&big);
    nic.settle();
    let used = nic.rx_used();
    assert_eq!(
        used,
        [
            (u32::from(heads[0]), 2048),
            (u32::from(heads[1]), 2048),
            (u32::from(heads[2]), 5012 - 4096)
        ]
    );
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS, 12), rx_header(3));
    // The chains are consecutive in memory here: the frame reads straight.
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 12, 5000), big);

    let small = frame(100, 4);
    nic.host_send(&small);
    nic.settle();
    assert_eq!(nic.rx_used(), [(u32::from(heads[3]), 112)]);
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 3 * 2048, 12), rx_header(1));
    assert_eq!(nic.counters().rx_packets, 2);
}

/// With segmentation offloads a frame may be 64 KiB: the device reads none
/// until its buffers can hold that much, rather than read one it would
/// have to drop.
#[test]
fn mergeable_receive_waits_until_the_largest_frame_fits() {
    let mut nic = nic(plain() | guest_tso() | mrg(), 64);
    nic.post_rx_buffers(10, 2048);
    let f = frame(3000, 5);
    nic.host_send(&f);
    nic.settle();
    assert!(nic.rx_used().is_empty());
    assert!(nic.device(|d| d.rx_waiting_for_buffers()));
    assert_eq!(nic.counters().rx_drops(), 0);
    for _ in 0..3 {
        assert_eq!(nic.wired.run(), 0, "spinning on a frame it cannot take");
    }
    nic.post_rx_buffers(30, 2048);
    nic.kick(RX_QUEUE);
    nic.settle();
    assert_eq!(nic.rx_used().len(), 2);
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 12, 3000), f);
    assert_eq!(nic.counters().rx_packets, 1);
}

#[test]
fn buffers_straddling_a_region_boundary_carry_whole_frames() {
    let mut nic = nic(plain() | bits(&[VIRTIO_NET_F_CSUM]), 16);
    // Receive: one chain of two buffers, the first across the boundary.
    nic.post_rx(&[vec![w(BOUNDARY - 100, 1000), w(BOUNDARY + 0x1000, 1000)]]);
    let f = frame(1400, 6);
    nic.host_send(&f);
    nic.settle();
    assert_eq!(nic.rx_used(), [(0, 1412)]);
    let mut got = guest_bytes(&nic.mem, BOUNDARY - 100, 1000);
    got.extend(guest_bytes(&nic.mem, BOUNDARY + 0x1000, 412));
    assert_eq!(got[..12], rx_header(1)[..]);
    assert_eq!(got[12..], f[..]);

    // Transmit: header and frame across the boundary in one buffer.
    let out = frame(800, 7);
    let len = nic.write_packet(BOUNDARY - 50, &VirtioNetHdr::default(), &out);
    nic.post_tx(&[vec![r(BOUNDARY - 50, len)]]);
    nic.settle();
    let (header, sent) = nic.host_recv().unwrap();
    assert_eq!(header, VirtioNetHdr::default());
    assert_eq!(sent, out);
}

#[test]
fn without_buffers_the_backend_waits_and_nothing_is_lost() {
    let mut nic = nic(plain(), 16);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        nic.host_send(f);
    }
    assert_eq!(nic.settle(), [1], "one look at the backend, then a pause");
    assert!(nic.device(|d| d.rx_waiting_for_buffers()));
    for _ in 0..3 {
        assert_eq!(nic.wired.run(), 0, "spinning on a backend it cannot serve");
    }
    // Buffers without a notification: the device does not know yet.
    nic.post_rx_buffers(3, UNSEGMENTED);
    assert_eq!(nic.wired.run(), 0);
    nic.kick(RX_QUEUE);
    nic.settle();
    let used = nic.rx_used();
    assert_eq!(used.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(used[i].1 as usize, 12 + f.len());
        let at = RX_BUFS + i as u64 * u64::from(UNSEGMENTED);
        assert_eq!(&guest_bytes(&nic.mem, at + 12, f.len()), f);
    }
    let counters = nic.counters();
    assert_eq!((counters.rx_packets, counters.rx_drops()), (3, 0));
    // Used up again, and the next frame waits for the next buffers.
    nic.host_send(&frame(60, 9));
    nic.settle();
    assert!(nic.device(|d| d.rx_waiting_for_buffers()));
    nic.post_rx_buffers(1, UNSEGMENTED);
    nic.kick(RX_QUEUE);
    nic.settle();
    assert_eq!(nic.rx_used().len(), 1);
}

#[test]
fn transmitted_frames_reach_the_backend_with_a_clean_header() {
    let acked = plain() | bits(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4]);
    let mut nic = nic(acked, 16);
    // A partial checksum with receive-only flags and junk in unused fields.
    let out = frame(600, 1);
    let header = VirtioNetHdr {
        flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM | flags::VIRTIO_NET_HDR_F_DATA_VALID,
        gso_type: gso::VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 7,
    };
    nic.write_packet(TX_BUFS, &header, &out);
    // Split: part of the header, the rest of it with the frame's start, the rest.
    nic.post_tx(&[vec![r(TX_BUFS, 5), r(TX_BUFS + 5, 100), r(TX_BUFS + 105, 507)]]);
    // A TSO frame keeps its segmentation.
    let tso = frame(3000, 2);
    let tso_header = VirtioNetHdr {
        flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: gso::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let len = nic.write_packet(TX_BUFS + 0x1_0000, &tso_header, &tso);
    nic.post_tx(&[vec![r(TX_BUFS + 0x1_0000, len)]]);
    nic.settle();

    let (sent_header, sent) = nic.host_recv().unwrap();
    assert_eq!(
        sent_header,
        VirtioNetHdr {
            flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        }
    );
    assert_eq!(sent, out);
    let (sent_header, sent) = nic.host_recv().unwrap();
    assert_eq!(sent_header, tso_header);
    assert_eq!(sent, tso);
    assert!(nic.host_recv().is_none());
    assert_eq!(nic.tx_used(), [(0, 0), (3, 0)]);
    let counters = nic.counters();
    assert_eq!((counters.tx_packets, counters.tx_bytes), (2, 3600));
    assert_eq!(counters.tx_drops(), 0);
    assert_eq!(nic.interrupt_status() & 1, 1);
}

#[test]
fn a_full_backend_holds_transmits_until_it_is_writable() {
    let mut nic = nic(plain(), 16);
    // The host end does not read, and the device's end of the socket pair
    // has the smallest send buffer: it fills after a few frames.
    let fd = nic.device(|d| d.backend().as_raw_fd());
    let one: libc::c_int = 1;
    // SAFETY: SO_SNDBUF reads one int, which `one` is; `fd` is the
    // backend's open socket.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0);
    let frames: Vec<Vec<u8>> = (0..15).map(|i| frame(100, i as u8)).collect();
    let chains: Vec<Vec<D>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = TX_BUFS + i as u64 * 0x1000;
            vec![r(at, nic.write_packet(at, &VirtioNetHdr::default(), f))]
        })
        .collect();
    nic.post_tx(&chains);
    nic.settle();
    let sent = nic.tx_used().len();
    assert!(sent < 15, "the backend never filled up");
    assert!(nic.device(|d| d.tx_waiting_for_backend()));
    for _ in 0..3 {
        assert_eq!(nic.wired.run(), 0, "spinning on a full backend");
    }
    // A notification while waiting changes nothing.
    nic.kick(TX_QUEUE);
    nic.settle();
    assert!(nic.tx_used().is_empty());

    let mut received = Vec::new();
    while received.len() < 15 {
        let before = received.len();
        while let Some((_, f)) = nic.host_recv() {
            received.push(f);
        }
        nic.settle();
        assert!(received.len() > before, "stuck after {before} frames");
    }
    assert_eq!(received, frames, "every frame, in order");
    let counters = nic.counters();
    assert_eq!((counters.tx_packets, counters.tx_drops()), (15, 0));
    assert!(!nic.device(|d| d.tx_waiting_for_backend()));
}

#[test]
fn reset_stops_watching_the_backend_and_a_new_driver_starts_afresh() {
    let mut nic = nic(plain() | mrg(), 16);
    nic.post_rx_buffers(2, UNSEGMENTED);
    nic.host_send(&frame(60, 1));
    nic.settle();
    assert_eq!(nic.rx_used().len(), 1);
    assert_eq!(nic.watched(), 1 + RATE_LIMITER_TIMERS);

    nic.wired.reset();
    assert_eq!(nic.watched(), 0);
    nic.host_send(&frame(70, 2));
    assert_eq!(nic.wired.run(), 0, "a reset card reads nothing");

    // A new driver, new rings: the held chain of the old one is gone.
    nic.rx = DriverRing::at(&nic.mem, RX_RING, 16);
    nic.tx = DriverRing::at(&nic.mem, TX_RING, 16);
    nic.rx_next_desc = 0;
    nic.rx_seen = 0;
    nic.wired.start(plain(), &[nic.rx, nic.tx]);
    assert_eq!(nic.watched(), 1 + RATE_LIMITER_TIMERS);
    nic.settle();
    assert!(nic.device(|d| d.rx_waiting_for_buffers()));
    nic.post_rx_buffers(1, UNSEGMENTED);
    nic.kick(RX_QUEUE);
    nic.settle();
    assert_eq!(nic.rx_used(), [(0, 82)]);
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 12, 70), frame(70, 2));
}

/// The device outside the transport, with a small budget: each call does a
/// bounded amount of work and says whether there is more.
#[test]
fn passes_are_bounded_and_yield() {
    let mem = guest_memory();
    let (mut dev, peer) = device(Offloads::ALL);
    let irq = Arc::new(CountingInterrupt::default());
    let mut ctx = activation(plain(), mem.clone(), irq.clone());
    ctx.rules.budget = PassBudget {
        chains: 4,
        time: None,
        ..PassBudget::DEFAULT
    };
    dev.activate(ctx).unwrap();
    let rx = DriverRing::at(&mem, RX_RING, 16);
    let tx = DriverRing::at(&mem, TX_RING, 16);
    let mut queues: Vec<Queue> = vec![rx.queue(), tx.queue()];

    let chains: Vec<Vec<D>> = (0..10u64)
        .map(|i| vec![w(RX_BUFS + i * 0x1000, UNSEGMENTED)])
        .collect();
    let mut next = 0;
    Nic::publish(&mem, &rx, &mut next, &chains);
    for i in 0..10 {
        let mut packet = vec![0u8; 12];
        packet.extend(frame(60, i));
        peer.send(&packet).unwrap();
    }
    let mut rounds = Vec::new();
    loop {
        let before = rx.used_idx(&mem);
        let end = dev
            .process_host_event(PROCESS_BACKEND, EventSet::IN, &mut queues)
            .unwrap();
        rounds.push((rx.used_idx(&mem) - before, end));
        if end == PassEnd::Drained {
            break;
        }
        assert!(rounds.len() < 10);
    }
    assert_eq!(
        rounds,
        [
            (4, PassEnd::Yielded),
            (4, PassEnd::Yielded),
            (2, PassEnd::Drained)
        ]
    );

    let chains: Vec<Vec<D>> = (0..10u64)
        .map(|i| {
            let at = TX_BUFS + i * 0x1000;
            let mut packet = vec![0u8; 12];
            packet.extend(frame(60, i as u8));
            mem.write_slice(&packet, GuestAddress(at)).unwrap();
            vec![r(at, 72)]
        })
        .collect();
    let mut next = 0;
    Nic::publish(&mem, &tx, &mut next, &chains);
    let mut served = Vec::new();
    loop {
        let before = tx.used_idx(&mem);
        let end = dev.process_queue(TX_QUEUE, &mut queues).unwrap();
        served.push(tx.used_idx(&mem) - before);
        // Make room: the host end reads what arrived.
        let mut buf = [0u8; 2048];
        while peer.recv(&mut buf).is_ok() {}
        if end == PassEnd::Drained {
            break;
        }
        assert!(served.len() < 10);
    }
    assert_eq!(served, [4, 4, 2]);
    assert_eq!(dev.counters_snapshot().tx_packets, 10);
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let mut nic = nic(plain() | bits(&[VIRTIO_F_RING_EVENT_IDX]), 16);
    let mem = nic.mem.clone();
    // The driver wants an interrupt after the second used buffer only.
    nic.rx.set_used_event(&mem, 1);
    nic.post_rx_buffers(4, UNSEGMENTED);
    nic.host_send(&frame(60, 1));
    nic.settle();
    assert_eq!(nic.rx_used().len(), 1);
    assert_eq!(nic.interrupt_status() & 1, 0, "not asked for yet");
    nic.host_send(&frame(60, 2));
    nic.settle();
    assert_eq!(nic.rx_used().len(), 1);
    assert_eq!(nic.interrupt_status() & 1, 1);
    nic.ack_interrupt();
    assert_eq!(nic.interrupt_status(), 0);
}
