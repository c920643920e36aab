//! A hostile guest and hostile host peers: every bad packet is answered
//! (RST where the spec says so) and counted, memory stays bounded, and no
//! peer stalls the others or the event loop.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::tests::{guest, hdr, read_now, GUEST_CID};
use super::*;
use crate::devices::virtio::test_utils::{r, w};
use crate::devices::virtio::vsock::muxer::MAX_STRAY_RSTS;
use crate::devices::virtio::vsock::packet::{shutdown, Header, Op, HDR_LEN};
use crate::devices::virtio::vsock::{BUF_ALLOC, MAX_CONNECTIONS, MAX_PAYLOAD};

/// A reply as (op, src_cid, src_port, dst_port).
type Reply = (u16, u64, u32, u32);

/// The replies to one packet.
fn replies(got: &[(Header, Vec<u8>)]) -> Vec<Reply> {
    got.iter()
        .map(|(h, _)| (h.op, h.src_cid, h.src_port, h.dst_port))
        .collect()
}

#[test]
fn bad_headers_are_answered_with_rst_and_counted() {
    let mut g = guest();
    g.post_rx(32, 4096);
    let rst = Op::Rst as u16;
    let cases: [(Header, VsockFault, Vec<Reply>); 7] = [
        (
            Header {
                src_cid: 5,
                ..hdr(Op::Request, 1, 52)
            },
            VsockFault::TxWrongSrcCid,
            vec![],
        ),
        (
            Header {
                dst_cid: 7,
                ..hdr(Op::Request, 1, 52)
            },
            VsockFault::TxWrongDstCid,
            vec![(rst, 7, 52, 1)],
        ),
        (
            Header {
                type_: 2,
                ..hdr(Op::Request, 1, 52)
            },
            VsockFault::TxBadType,
            vec![(rst, 2, 52, 1)],
        ),
        (
            Header {
                op: 99,
                ..hdr(Op::Rw, 1, 52)
            },
            VsockFault::TxBadOp,
            vec![(rst, 2, 52, 1)],
        ),
        (
            hdr(Op::Rw, 1, 52),
            VsockFault::TxUnknownConnection,
            vec![(rst, 2, 52, 1)],
        ),
        (
            hdr(Op::Response, 2, 52),
            VsockFault::TxUnknownConnection,
            vec![(rst, 2, 52, 2)],
        ),
        (
            hdr(Op::CreditRequest, 3, 52),
            VsockFault::TxUnknownConnection,
            vec![(rst, 2, 52, 3)],
        ),
    ];
    for (header, fault, want) in cases {
        let before = g.counters().faults(fault);
        g.send(header, &[]);
        assert_eq!(replies(&g.recv()), want, "{fault:?}");
        assert_eq!(g.counters().faults(fault), before + 1, "{fault:?}");
    }
    // Never an RST for an RST.
    g.send(hdr(Op::Rst, 4, 52), &[]);
    assert!(g.recv().is_empty());
    assert_eq!(g.connections(), 0);
    assert_eq!(g.tx.used_idx(&g.mem), 8, "every chain returned");
}

#[test]
fn lengths_beyond_the_chain_or_64k_reset_the_packet_and_its_connection() {
    let mut g = guest();
    g.post_rx(32, 4096);
    let mut says_more = hdr(Op::Rw, 1, 52);
    says_more.len = 100;
    g.send_raw(&says_more.to_bytes(), &[7; 10]);
    assert_eq!(replies(&g.recv()), [(Op::Rst as u16, 2, 52, 1)]);

    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    let mut too_long = hdr(Op::Rw, 1000, 52);
    too_long.len = MAX_PAYLOAD + 1;
    g.send_raw(&too_long.to_bytes(), &vec![1; MAX_PAYLOAD as usize + 1]);
    assert_eq!(replies(&g.recv()), [(Op::Rst as u16, 2, 52, 1000)]);
    assert_eq!(
        read_now(&mut host),
        (Vec::new(), true),
        "nothing of it reached the host"
    );
    assert_eq!(g.counters().faults(VsockFault::TxBadLen), 2);
    assert_eq!(g.connections(), 0);
}

#[test]
fn a_header_split_across_descriptors_is_read_and_extra_bytes_ignored() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    let mut header = hdr(Op::Rw, 1000, 52);
    header.len = 9;
    let addr = g.tx_addr();
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(b"split up!trailing");
    g.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    g.queue_tx(&[
        r(addr, 10),
        r(addr + 10, 20),
        r(addr + 30, 17),
        r(addr + 47, bytes.len() as u32 - 47),
    ]);
    g.kick_tx();
    assert_eq!(read_now(&mut host).0, b"split up!");
    assert!(g.recv().is_empty());
}

#[test]
fn chains_that_hold_no_packet_are_returned_and_counted() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let header = hdr(Op::Request, 1, 52).to_bytes();
    let addr = g.tx_addr();
    g.mem.write_slice(&header, GuestAddress(addr)).unwrap();
    // Short of a header; device-writable; outside guest memory.
    g.queue_tx(&[r(addr, 20)]);
    g.queue_tx(&[r(addr, HDR_LEN as u32), w(addr + 0x100, 16)]);
    g.queue_tx(&[r(1 << 40, HDR_LEN as u32)]);
    g.kick_tx();
    assert_eq!(g.tx.used_idx(&g.mem), 3);
    assert_eq!(g.counters().faults(VsockFault::TxBadChain), 3);
    assert!(g.recv().is_empty());
    // Receive buffers the device cannot use go back empty.
    let slot = 8;
    g.rx.set_desc_table(
        &g.mem,
        slot,
        &crate::devices::virtio::test_utils::link(&[r(0x90_0000, 64)], slot),
    );
    g.send(hdr(Op::Rw, 1, 52), &[]);
    assert_eq!(g.recv().len(), 1, "the RST went to a good buffer");
}

#[test]
fn a_duplicate_request_resets_the_live_connection() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    g.send(hdr(Op::Request, 1000, 52), &[]);
    assert_eq!(replies(&g.recv()), [(Op::Rst as u16, 2, 52, 1000)]);
    assert_eq!(read_now(&mut host), (Vec::new(), true));
    assert_eq!(g.counters().faults(VsockFault::TxDuplicateRequest), 1);
    assert_eq!(g.connections(), 0);
}

#[test]
fn stray_rsts_wait_for_receive_buffers_and_hold_the_tx_ring_back() {
    let mut g = guest();
    let total = MAX_STRAY_RSTS as u16 + 40;
    let addr = g.tx_addr();
    let mut sent = 0;
    while sent < total {
        for _ in 0..40.min(total - sent) {
            let header = hdr(Op::Rw, 5000 + u32::from(sent), 52).to_bytes();
            let at = addr + u64::from(sent) * HDR_LEN as u64;
            g.mem.write_slice(&header, GuestAddress(at)).unwrap();
            g.queue_tx(&[r(at, HDR_LEN as u32)]);
            sent += 1;
        }
        g.kick_tx();
    }
    assert_eq!(
        g.tx.used_idx(&g.mem),
        MAX_STRAY_RSTS as u16,
        "the rest wait on the ring"
    );
    // Receive buffers drain the queue; the waiting packets are taken up.
    let mut answered = Vec::new();
    while answered.len() < usize::from(total) {
        g.post_rx(128, 256);
        let got = g.recv();
        assert!(!got.is_empty(), "stuck at {}", answered.len());
        answered.extend(got.into_iter().map(|(h, _)| h.dst_port));
    }
    let want: Vec<u32> = (0..u32::from(total)).map(|i| 5000 + i).collect();
    assert_eq!(answered, want, "every packet answered, in order");
    assert_eq!(g.tx.used_idx(&g.mem), total);
}

#[test]
fn without_receive_buffers_host_data_waits_unwatched_then_flows() {
    let mut g = guest();
    g.post_rx(2, 4096);
    let listener = g.listen(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    g.recv();
    host.write_all(&[9; 10_000]).unwrap();
    // One buffer left: used, then the device waits without spinning.
    g.run();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    g.run();
    assert!(g.recv().is_empty());
    g.post_rx(8, 4096);
    let got: usize = g.recv().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got + 4052, 10_000);
}

#[test]
fn the_connection_limit_refuses_guest_and_host_connections() {
    let mut g = guest();
    let listener = g.listen(52);
    listener.set_nonblocking(true).unwrap();
    let mut hosts = Vec::new();
    for i in 0..MAX_CONNECTIONS as u32 {
        if g.rx_available() < 2 {
            g.recv();
            g.post_rx(200, 64);
        }
        g.send(hdr(Op::Request, 10_000 + i, 52), &[]);
        hosts.push(listener.accept().unwrap().0);
    }
    g.recv();
    g.post_rx(8, 64);
    g.send(hdr(Op::Request, 1, 52), &[]);
    assert_eq!(replies(&g.recv()), [(Op::Rst as u16, 2, 52, 1)]);
    let mut late = UnixStream::connect(&g.socket).unwrap();
    g.run();
    assert_eq!(read_now(&mut late), (Vec::new(), true), "closed at once");
    assert_eq!(g.counters().faults(VsockFault::ConnectionLimit), 2);
    assert_eq!(g.connections(), MAX_CONNECTIONS);
}

#[test]
fn late_handshakes_silent_guests_and_undrained_closes_time_out() {
    let mut g = guest();
    g.post_rx(64, 4096);
    // Garbage is closed at once.
    let mut garbage = UnixStream::connect(&g.socket).unwrap();
    garbage.write_all(b"\x16\x03\x01 hello\n").unwrap();
    // A slow handshake holds nothing up for anyone else.
    let mut slow = UnixStream::connect(&g.socket).unwrap();
    slow.write_all(b"CONN").unwrap();
    g.run();
    assert_eq!(read_now(&mut garbage), (Vec::new(), true));
    let (mut fine, fine_port) = g.host_connect(52);
    fine.write_all(b"meanwhile").unwrap();
    g.run();
    assert_eq!(g.recv()[0].1, b"meanwhile");

    // A guest that never answers a host connection.
    let mut unanswered = UnixStream::connect(&g.socket).unwrap();
    unanswered.write_all(b"CONNECT 77\n").unwrap();
    g.run();
    assert_eq!(g.recv()[0].0.op, Op::Request as u16);

    // A host peer that never reads, and a guest that closes on it.
    let listener = g.listen(53);
    let stuck = g.guest_connect(&listener, 2000, 53);
    let chunk = vec![3u8; MAX_PAYLOAD as usize];
    for _ in 0..(BUF_ALLOC / MAX_PAYLOAD) {
        g.send(hdr(Op::Rw, 2000, 53), &chunk);
    }
    let mut close = hdr(Op::Shutdown, 2000, 53);
    close.flags = shutdown::BOTH;
    g.send(close, &[]);
    g.recv();
    assert_eq!(g.connections(), 4, "slow (a handshake), fine, unanswered, stuck");

    std::thread::sleep(Duration::from_millis(3300));
    g.run();
    let rsts: Vec<u32> = g
        .recv()
        .iter()
        .filter(|(h, _)| h.op == Op::Rst as u16)
        .map(|(h, _)| h.dst_port)
        .collect();
    assert_eq!(rsts.len(), 2, "{rsts:?}");
    assert!(rsts.contains(&77) && rsts.contains(&2000), "{rsts:?}");
    assert_eq!(read_now(&mut slow), (Vec::new(), true));
    assert_eq!(read_now(&mut unanswered), (Vec::new(), true));
    let c = g.counters();
    assert_eq!(c.faults(VsockFault::HandshakeFailed), 2);
    assert_eq!(c.faults(VsockFault::GuestConnectTimeout), 1);
    assert_eq!(c.faults(VsockFault::CloseTimeout), 1);
    // The healthy one is untouched.
    g.send(hdr(Op::Rw, 52, fine_port), b"ok");
    assert_eq!(read_now(&mut fine).0, b"ok");
    assert_eq!(g.connections(), 1);
    assert_eq!(GUEST_CID, g.device(|d| d.cid()));
    drop(stuck);
}

/// A host peer that closes with our data unread leaves the stream failed
/// (ECONNRESET): found on a read, it resets the connection, and the RST
/// reaches the guest in the same round of the event loop.
#[test]
fn a_failed_host_stream_resets_its_connection() {
    let mut g = guest();
    g.post_rx(8, 4096);
    let listener = g.listen(52);
    let host = g.guest_connect(&listener, 1000, 52);
    g.send(hdr(Op::Rw, 1000, 52), b"never read");
    drop(host);
    g.run();
    assert_eq!(replies(&g.recv()), [(Op::Rst as u16, 2, 52, 1000)]);
    assert_eq!(g.counters().faults(VsockFault::HostStreamError), 1);
    assert_eq!(g.connections(), 0);
}

/// The device contract allows a host-event call for an fd that is not
/// ready. Reading the deadline timer then must not wait for it to expire,
/// or forever when it is not armed (found by the vsock_device fuzz
/// target; the other tokens are here for the same rule).
#[test]
fn spurious_host_events_never_block() {
    use crate::devices::virtio::vsock::muxer::{FIRST_STREAM_TOKEN, TOKEN_KICK, TOKEN_LISTENER, TOKEN_TIMER};
    use event_manager::EventSet;

    let g = guest();
    let transport = g.wired.transport.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut transport = transport.lock().unwrap();
        for token in [TOKEN_TIMER, TOKEN_KICK, TOKEN_LISTENER, FIRST_STREAM_TOKEN] {
            let ready = EventSet::IN | EventSet::OUT;
            let end = transport.device_mut().process_host_event(token, ready, &mut []);
            assert!(end.is_ok(), "token {token}: {end:?}");
        }
        done.send(()).unwrap();
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(10)).is_ok(),
        "a spurious host event blocked the device"
    );
}
