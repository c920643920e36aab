//! The model pieces together with a socket backend: frames go from guest
//! memory to the host and back the way the device will move them.

use std::io::ErrorKind;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::features::*;
use super::header::{self, flags, gso, split_tx_header, TxRules};
use super::*;
use crate::backends::tap::{NetBackend, SocketBackend};
use crate::vstate::memory::GuestMemoryMmap;

/// Two adjacent regions, so buffers can straddle the boundary at 64 KiB.
fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000), (GuestAddress(0x1_0000), 0x2_0000)]).unwrap()
}

/// Host views of guest ranges, split where regions end.
fn slices<'m>(mem: &'m GuestMemoryMmap, ranges: &[(u64, usize)]) -> Vec<VolatileSlice<'m>> {
    ranges
        .iter()
        .flat_map(|&(addr, len)| GuestMemoryBackend::get_slices(mem, GuestAddress(addr), len))
        .map(|s| s.unwrap())
        .collect()
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    frame
}

#[test]
fn feature_helpers_stay_in_range() {
    assert!(has(1 << 63, 63));
    assert!(!has(u64::MAX, 64));
    assert!(!has(u64::MAX, u32::MAX));
    assert_eq!(with(0, 64), 0);
    assert_eq!(with(0, VIRTIO_NET_F_HOST_USO), 1 << 56);
    // Spot checks against the spec's numbering.
    assert_eq!(
        [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_GUEST_USO4
        ],
        [0, 5, 15, 54]
    );
}

#[test]
fn feature_dependencies_are_enforced() {
    assert_eq!(missing_dependency(0), None);
    let tso = with(0, VIRTIO_NET_F_HOST_TSO4);
    assert_eq!(
        missing_dependency(tso),
        Some((VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_CSUM))
    );
    assert_eq!(missing_dependency(with(tso, VIRTIO_NET_F_CSUM)), None);
    // ECN needs either TCP segmentation.
    let ecn = with(with(0, VIRTIO_NET_F_GUEST_CSUM), VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(
        missing_dependency(ecn),
        Some((VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4))
    );
    assert_eq!(missing_dependency(with(ecn, VIRTIO_NET_F_GUEST_TSO6)), None);
    assert_eq!(
        missing_dependency(with(0, VIRTIO_NET_F_MQ)),
        Some((VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ))
    );
    // Everything accepted together is consistent.
    assert_eq!(missing_dependency(u64::MAX), None);
}

#[test]
fn receive_offloads_follow_the_guest_features() {
    let guest_csum = with(0, VIRTIO_NET_F_GUEST_CSUM);
    assert_eq!(guest_offloads(0), Offloads::NONE);
    // Segmentation without checksum offload is not a valid set: none.
    assert_eq!(guest_offloads(with(0, VIRTIO_NET_F_GUEST_TSO4)), Offloads::NONE);
    // Transmit features say nothing about what the guest receives.
    assert_eq!(
        guest_offloads(with(with(0, VIRTIO_NET_F_CSUM), VIRTIO_NET_F_HOST_TSO4)),
        Offloads::NONE
    );
    assert_eq!(
        guest_offloads(guest_csum),
        Offloads {
            csum: true,
            ..Offloads::NONE
        }
    );
    let tso6 = with(guest_csum, VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(
        guest_offloads(tso6),
        Offloads {
            csum: true,
            tso6: true,
            ..Offloads::NONE
        }
    );
    assert_eq!(guest_offloads(u64::MAX), Offloads::ALL);

    assert_eq!(guest_offload_features(Offloads::NONE), 0);
    assert_eq!(
        guest_offload_features(Offloads {
            csum: false,
            ..Offloads::ALL
        }),
        0
    );
    let all = guest_offload_features(Offloads::ALL);
    assert_eq!(guest_offloads(all), Offloads::ALL);
    assert_eq!(missing_dependency(all), None);
    assert!(
        !has(all, VIRTIO_NET_F_CSUM),
        "a receive offload offered a transmit feature"
    );
    // ECN is not offered without TCP segmentation to go with it.
    let ecn_only = Offloads {
        csum: true,
        tso_ecn: true,
        ..Offloads::NONE
    };
    assert_eq!(guest_offload_features(ecn_only), guest_csum);
}

#[test]
fn transmitted_frame_reaches_the_backend_with_a_clean_header() {
    let mem = guest_memory();
    let counters = NetCounters::new();
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();
    peer.set_nonblocking(true).unwrap();
    let rules = TxRules::new(with(with(0, VIRTIO_NET_F_CSUM), VIRTIO_NET_F_HOST_TSO4), 1500);

    // The driver's header asks for TSO, with a receive-only flag and a stray
    // num_buffers; header and frame straddle the region boundary.
    let hdr = VirtioNetHdr {
        flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM | flags::VIRTIO_NET_HDR_F_DATA_VALID,
        gso_type: gso::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 7,
    };
    let payload = frame(4000, 1);
    let header_at = 0x1_0000 - 5;
    let frame_at = 0x1_0000 + 0x100;
    mem.write_slice(&hdr.to_bytes(), GuestAddress(header_at)).unwrap();
    mem.write_slice(&payload[..1000], GuestAddress(frame_at)).unwrap();
    mem.write_slice(&payload[1000..], GuestAddress(0x200)).unwrap();
    let chain = slices(
        &mem,
        &[(header_at, VNET_HDR_LEN), (frame_at, 1000), (0x200, 3000)],
    );
    assert_eq!(chain.len(), 4, "the header should be split over two regions");

    let (raw, frame_bufs) = split_tx_header(&chain).unwrap();
    let clean = rules.check(&raw, header::total_len(&frame_bufs)).unwrap();
    let mut clean_bytes = clean.to_bytes();
    let mut out = vec![VolatileSlice::from(&mut clean_bytes[..])];
    out.extend(frame_bufs);
    assert_eq!(backend.write_frame(&out).unwrap(), Some(VNET_HDR_LEN + 4000));
    counters.record_tx(4000);

    let mut got = vec![0u8; MAX_PACKET_LEN];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(n, VNET_HDR_LEN + 4000);
    let sent = VirtioNetHdr::from_bytes(got[..VNET_HDR_LEN].try_into().unwrap());
    assert_eq!(
        sent,
        VirtioNetHdr {
            flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            num_buffers: 0,
            ..hdr
        }
    );
    assert_eq!(got[VNET_HDR_LEN..n], payload[..]);

    // A header asking for segmentation the driver did not negotiate: the
    // frame is counted as dropped and nothing reaches the host.
    let tso6 = VirtioNetHdr {
        gso_type: gso::VIRTIO_NET_HDR_GSO_TCPV6,
        ..hdr
    };
    mem.write_slice(&tso6.to_bytes(), GuestAddress(header_at))
        .unwrap();
    let (raw, frame_bufs) = split_tx_header(&chain).unwrap();
    let err = rules.check(&raw, header::total_len(&frame_bufs)).unwrap_err();
    counters.record_drop(err.drop_reason());
    assert_eq!(peer.recv(&mut got).unwrap_err().kind(), ErrorKind::WouldBlock);

    let snapshot = counters.snapshot();
    assert_eq!((snapshot.tx_packets, snapshot.tx_bytes), (1, 4000));
    assert_eq!(snapshot.drops(DropReason::TxGsoNotNegotiated), 1);
}

#[test]
fn received_frame_lands_in_guest_buffers_with_num_buffers_set() {
    let mem = guest_memory();
    let counters = NetCounters::new();
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();

    // The host side leaves num_buffers as it finds it (zero here).
    let payload = frame(3000, 9);
    let sent = [&VirtioNetHdr::default().to_bytes()[..], &payload[..]].concat();
    peer.send(&sent).unwrap();
    mem.write_slice(&[0xee; 64], GuestAddress(0x1_0000 - 32)).unwrap();
    let chain = slices(&mem, &[(0x1_0000 - 4, 1000), (0x4000, 4000)]);
    let capacity = header::total_len(&chain);
    let len = backend.read_frame(&chain).unwrap().unwrap();
    assert!(len <= capacity);
    header::set_num_buffers(&chain, 1).unwrap();
    counters.record_rx(len - VNET_HDR_LEN);

    let mut got = vec![0u8; len];
    mem.read_slice(&mut got[..1000], GuestAddress(0x1_0000 - 4))
        .unwrap();
    mem.read_slice(&mut got[1000..], GuestAddress(0x4000)).unwrap();
    let hdr = VirtioNetHdr::from_bytes(got[..VNET_HDR_LEN].try_into().unwrap());
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(got[VNET_HDR_LEN..], payload[..]);
    // Nothing before the chain was touched.
    let mut before = [0u8; 28];
    mem.read_slice(&mut before, GuestAddress(0x1_0000 - 32)).unwrap();
    assert_eq!(before, [0xee; 28]);

    // A frame larger than the chain: the device sees it did not fit.
    peer.send(&[&VirtioNetHdr::default().to_bytes()[..], &frame(2000, 3)[..]].concat())
        .unwrap();
    let small = slices(&mem, &[(0x8000, 1500)]);
    let len = backend.read_frame(&small).unwrap().unwrap();
    assert!(len > header::total_len(&small));
    counters.record_drop(DropReason::RxChainTooSmall);

    let snapshot = counters.snapshot();
    assert_eq!((snapshot.rx_packets, snapshot.rx_bytes), (1, 3000));
    assert_eq!(snapshot.drops(DropReason::RxChainTooSmall), 1);
    assert_eq!(snapshot.rx_drops(), 1);
}
