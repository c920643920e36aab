//! Receive and transmit rate limits on a card behind a real event loop:
//! the limiter's timer, not spinning, brings a throttled side back.

use std::time::{Duration, Instant};

use super::tests::{frame, nic, plain, rx_header, Nic, RX_BUFS, TX_BUFS, UNSEGMENTED};
use crate::devices::virtio::net::header::VirtioNetHdr;
use crate::devices::virtio::test_utils::{guest_bytes, r};
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

fn limits(bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> RateLimiterConfig {
    let bucket = |(size, refill_time)| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    RateLimiterConfig {
        bandwidth: bandwidth.map(bucket),
        ops: ops.map(bucket),
    }
}

fn limit(nic: &Nic, rx: Option<&RateLimiterConfig>, tx: Option<&RateLimiterConfig>) {
    let mut transport = nic.wired.transport.lock().unwrap();
    transport.device_mut().update_rate_limiters(rx, tx).unwrap();
}

/// Runs the loop, waiting for events, until `done` or 5 s.
fn run_until(nic: &mut Nic, mut done: impl FnMut(&mut Nic) -> bool) -> (Duration, usize) {
    let start = Instant::now();
    let mut rounds = 0;
    while !done(nic) {
        assert!(start.elapsed() < Duration::from_secs(5), "never finished");
        nic.wired.event_loop.run_with_timeout(100).unwrap();
        rounds += 1;
    }
    (start.elapsed(), rounds)
}

#[test]
fn a_throttled_transmit_waits_for_its_timer() {
    let mut nic = nic(plain(), 16);
    // Two frames at once, then one per 25 ms.
    limit(&nic, None, Some(&limits(None, Some((2, 50)))));
    let chains: Vec<_> = (0..4u64)
        .map(|i| {
            let at = TX_BUFS + i * 0x1000;
            let len = nic.write_packet(at, &VirtioNetHdr::default(), &frame(100, i as u8));
            vec![r(at, len)]
        })
        .collect();
    let start = Instant::now();
    nic.post_tx(&chains);
    nic.settle();
    assert_eq!(nic.tx_used().len(), 2, "two sent, two left in the ring");
    assert_eq!(nic.counters().tx_throttled, 1);
    assert!(
        !nic.device(|d| d.tx_waiting_for_backend()),
        "waits for the timer, not the tap"
    );
    let mut sent = 2;
    let (_, rounds) = run_until(&mut nic, |nic| {
        sent += nic.tx_used().len();
        sent == 4
    });
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(45), "{elapsed:?}");
    assert!(rounds < 10, "{rounds} rounds: woken by the timer, not spinning");
    for i in 0..4u8 {
        assert_eq!(nic.host_recv().unwrap().1, frame(100, i));
    }
    assert_eq!(nic.counters().tx_packets, 4);
}

#[test]
fn a_throttled_receive_stops_watching_the_backend_until_its_timer() {
    let mut nic = nic(plain(), 16);
    limit(&nic, Some(&limits(None, Some((1, 40)))), None);
    let heads = nic.post_rx_buffers(4, UNSEGMENTED);
    nic.kick(super::RX_QUEUE);
    let start = Instant::now();
    for i in 0..3 {
        nic.host_send(&frame(60, i));
    }
    // Settles although the backend stays readable: it is not watched.
    nic.settle();
    assert_eq!(nic.rx_used(), [(u32::from(heads[0]), 72)]);
    assert_eq!(nic.counters().rx_throttled, 1);
    let mut received = 1;
    run_until(&mut nic, |nic| {
        received += nic.rx_used().len();
        received == 3
    });
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(75), "{elapsed:?}");
    for i in 0..3u64 {
        let at = RX_BUFS + i * u64::from(UNSEGMENTED);
        assert_eq!(guest_bytes(&nic.mem, at, 12), rx_header(1));
        assert_eq!(guest_bytes(&nic.mem, at + 12, 60), frame(60, i as u8));
    }
}

#[test]
fn receive_bandwidth_is_charged_after_each_frame() {
    let mut nic = nic(plain(), 16);
    // 1000 bytes per hour: frames go while any byte is left, then the
    // overdraft must be repaid first.
    limit(&nic, Some(&limits(Some((1000, 3_600_000)), None)), None);
    nic.post_rx_buffers(4, UNSEGMENTED);
    nic.kick(super::RX_QUEUE);
    for i in 0..3 {
        nic.host_send(&frame(600, i));
    }
    nic.settle();
    assert_eq!(nic.rx_used().len(), 2);
    let counters = nic.counters();
    assert_eq!((counters.rx_packets, counters.rx_throttled), (2, 1));
    // Lifting the limit lets the third in.
    limit(&nic, Some(&limits(Some((0, 0)), None)), None);
    run_until(&mut nic, |nic| nic.rx_used().len() == 1);
    assert_eq!(nic.counters().rx_packets, 3);
}

#[test]
fn rate_limiter_updates_are_checked_before_either_changes() {
    let nic = nic(plain(), 16);
    let good = limits(Some((1000, 100)), None);
    let bad = limits(None, Some((5, 0)));
    let mut transport = nic.wired.transport.lock().unwrap();
    let device = transport.device_mut();
    assert!(device.update_rate_limiters(Some(&good), Some(&bad)).is_err());
    assert_eq!(
        device.rate_limiters(),
        (&RateLimiterConfig::default(), &RateLimiterConfig::default())
    );
    device.update_rate_limiters(Some(&good), None).unwrap();
    device.update_rate_limiters(None, Some(&good)).unwrap();
    assert_eq!(device.rate_limiters(), (&good, &good));
    // `{}` keeps both.
    let empty = RateLimiterConfig::default();
    device.update_rate_limiters(Some(&empty), Some(&empty)).unwrap();
    assert_eq!(device.rate_limiters(), (&good, &good));
}
