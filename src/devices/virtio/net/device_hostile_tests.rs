//! What a hostile guest or a failing backend can do to the card: every bad
//! frame or chain dropped and counted, never a reset, a panic or a spin.

use std::os::unix::net::UnixDatagram;

use event_manager::EventSet;

use super::tests::*;
use super::*;
use crate::devices::virtio::net::header::{flags, gso, VirtioNetHdr};
use crate::devices::virtio::net::DropReason;
use crate::devices::virtio::test_utils::{guest_bytes, r, raw, w, D, NEXT, WRITE};

#[test]
fn a_frame_larger_than_the_buffers_is_dropped_and_counted() {
    let mut nic = nic(plain(), 16);
    nic.post_rx_buffers(1, 200);
    nic.host_send(&frame(1000, 1));
    let fits = frame(100, 2);
    nic.host_send(&fits);
    nic.settle();
    // The chain was not used up by the dropped frame.
    assert_eq!(nic.rx_used(), [(0, 112)]);
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 12, 100), fits);
    let counters = nic.counters();
    assert_eq!(counters.drops(DropReason::RxChainTooSmall), 1);
    assert_eq!(counters.rx_packets, 1);
}

#[test]
fn unusable_receive_chains_come_back_empty_and_are_counted() {
    let mut nic = nic(plain(), 16);
    let mem = nic.mem.clone();
    // Descriptor 0 loops on itself; written by hand.
    nic.rx
        .set_desc_table(&mem, 0, &[raw(RX_BUFS, 2048, WRITE | NEXT, 0)]);
    nic.rx.publish(&mem, &[0]);
    nic.rx_next_desc = 1;
    nic.post_rx(&[
        vec![r(RX_BUFS, 100), w(RX_BUFS + 0x1000, 2048)],
        vec![w(RX_BUFS, 4)],
        vec![w(0x1_0000_0000, 2048)],
        vec![w(RX_BUFS + 0x4000, UNSEGMENTED)],
    ]);
    let f = frame(500, 3);
    nic.host_send(&f);
    nic.settle();
    let used = nic.rx_used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0, 0, 0, 512]);
    assert_eq!(guest_bytes(&nic.mem, RX_BUFS + 0x4000 + 12, 500), f);
    let counters = nic.counters();
    assert_eq!(
        counters.drops(DropReason::RxBadChain),
        2,
        "the loop and outside memory"
    );
    assert_eq!(counters.drops(DropReason::RxChainNotWritable), 1);
    assert_eq!(counters.drops(DropReason::RxChainTooSmall), 1);
    assert_eq!(counters.rx_packets, 1);
    assert_eq!(nic.wired.status() & 64, 0, "no reset needed");
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted() {
    // MTU negotiated; no offloads at all.
    let mut nic = nic(plain(), 16);
    let mem = nic.mem.clone();
    let plain_header = VirtioNetHdr::default();
    let at = |i: u64| TX_BUFS + i * 0x2_0000;
    let cases: Vec<(DropReason, Vec<D>)> = vec![
        // Over 65,550 bytes of frame.
        (DropReason::TxTooLarge, {
            let len = nic.write_packet(at(0), &plain_header, &frame(65_551, 1));
            vec![r(at(0), len)]
        }),
        // Over the negotiated MTU, unsegmented.
        (DropReason::TxTooLarge, {
            let len = nic.write_packet(at(1), &plain_header, &frame(1519, 1));
            vec![r(at(1), len)]
        }),
        // Shorter than an Ethernet header.
        (DropReason::TxTooShort, vec![r(at(2), 12 + 13)]),
        // A truncated header.
        (DropReason::TxBadHeader, vec![r(at(2), 8)]),
        // An unknown segmentation type.
        (DropReason::TxBadHeader, {
            let header = VirtioNetHdr {
                gso_type: 7,
                ..plain_header
            };
            let len = nic.write_packet(at(3), &header, &frame(100, 1));
            vec![r(at(3), len)]
        }),
        // Segmentation that was not negotiated.
        (DropReason::TxGsoNotNegotiated, {
            let header = VirtioNetHdr {
                flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: gso::VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
                ..plain_header
            };
            let len = nic.write_packet(at(4), &header, &frame(3000, 1));
            vec![r(at(4), len)]
        }),
        // A partial checksum without CSUM negotiated.
        (DropReason::TxCsumNotNegotiated, {
            let header = VirtioNetHdr {
                flags: flags::VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 16,
                ..plain_header
            };
            let len = nic.write_packet(at(5), &header, &frame(100, 1));
            vec![r(at(5), len)]
        }),
        // A device-writable buffer in a transmit chain.
        (DropReason::TxBadChain, {
            let len = nic.write_packet(at(6), &plain_header, &frame(100, 1));
            vec![r(at(6), len), w(at(6) + 0x1000, 100)]
        }),
        // A buffer outside guest memory.
        (DropReason::TxBadChain, vec![r(0x1_0000_0000, 112)]),
    ];
    for (reason, chain) in &cases {
        let before = nic.counters().drops(*reason);
        nic.post_tx(std::slice::from_ref(chain));
        nic.settle();
        assert!(nic.host_recv().is_none(), "{reason:?} frame went out");
        assert_eq!(nic.counters().drops(*reason), before + 1, "{reason:?}");
        let used = nic.tx_used();
        assert_eq!(used.len(), 1, "{reason:?}");
        assert_eq!(used[0].1, 0);
    }
    // A chain looping on itself, written by hand at descriptor 15.
    nic.tx.set_desc_table(&mem, 15, &[raw(at(6), 112, NEXT, 15)]);
    nic.tx.publish(&mem, &[15]);
    nic.kick(TX_QUEUE);
    nic.settle();
    assert_eq!(nic.tx_used(), [(15, 0)]);
    let counters = nic.counters();
    assert_eq!(counters.drops(DropReason::TxBadChain), 3);
    assert_eq!(counters.tx_drops(), cases.len() as u64 + 1);
    assert_eq!(counters.tx_packets, 0);
    assert_eq!(nic.wired.status() & 64, 0, "no reset needed");

    // And the card still works.
    let good = frame(200, 9);
    let len = nic.write_packet(at(7), &plain_header, &good);
    nic.post_tx(&[vec![r(at(7), len)]]);
    nic.settle();
    assert_eq!(nic.host_recv().unwrap().1, good);
}

/// A datagram peer that closes leaves our end writable with sends failing:
/// the guest's frames are dropped and counted, nothing spins.
#[test]
fn a_backend_that_goes_away_costs_frames_not_the_loop() {
    let mut nic = nic(plain(), 16);
    let peer = std::mem::replace(&mut nic.peer, UnixDatagram::unbound().unwrap());
    drop(peer);
    assert_eq!(nic.wired.run(), 0);
    let len = nic.write_packet(TX_BUFS, &VirtioNetHdr::default(), &frame(100, 1));
    nic.post_tx(&[vec![r(TX_BUFS, len)]]);
    nic.settle();
    assert_eq!(nic.tx_used(), [(0, 0)]);
    assert_eq!(nic.counters().drops(DropReason::TxBackend), 1);
    assert_eq!(nic.wired.run(), 0);
}

/// A tap that fails (its interface deleted) reports an error or hang-up
/// once; the card stops using it and asks for no further events, and
/// pausing receive later does not touch the fd the set already dropped.
#[test]
fn a_backend_error_cuts_the_card_off_quietly() {
    let mut nic = nic(plain(), 16);
    {
        let mut transport = nic.wired.transport.lock().unwrap();
        let end = transport
            .device_mut()
            .process_host_event(PROCESS_BACKEND, EventSet::IN | EventSet::ERROR, &mut [])
            .unwrap();
        assert_eq!(end, PassEnd::Drained);
    }
    assert_eq!(
        nic.watched(),
        super::tests::RATE_LIMITER_TIMERS,
        "only the timers"
    );
    nic.host_send(&frame(60, 1));
    assert!(nic.settle().is_empty());
    assert_eq!(nic.wired.status() & 64, 0, "no reset needed");
    // A new driver starts with the backend watched again.
    nic.wired.reset();
    nic.wired.start(plain(), &[nic.rx, nic.tx]);
    assert_eq!(nic.watched(), 1 + super::tests::RATE_LIMITER_TIMERS);
}
