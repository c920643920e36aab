//! Rate limits on a disk, and the runtime changes the API makes: new
//! limits, a new medium.

use std::fs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request_status::OK;
use super::request_type::IN;
use super::tests::{harness, Harness, DATA, HDR, STATUS};
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::test_utils::{link, other_source, pattern, r, w, wire, DriverRing, D};
use crate::devices::virtio::{VirtioDevice, INTERRUPT_CONFIG};
use crate::rate_limiter::{Clock, ManualTime, RateLimiterConfig, TokenBucketConfig};

fn bucket(size: u64, refill_time: u64) -> Option<TokenBucketConfig> {
    Some(TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    })
}

/// Request `i`: read 512 bytes of sector `i`, with its own header, data
/// and status.
fn read_request(h: &Harness, i: u64) -> Vec<D> {
    h.header_at(HDR + 16 * i, IN, i);
    h.mem.write_obj(0xeeu8, GuestAddress(STATUS + i)).unwrap();
    vec![r(HDR + 16 * i, 16), w(DATA + 512 * i, 512), w(STATUS + i, 1)]
}

/// A harness whose disk has `limits` on a hand-moved clock, with `count`
/// read requests available.
fn limited(limits: RateLimiterConfig, count: u64) -> (Harness, ManualTime, virtio_queue::Queue) {
    let mut h = harness(true);
    h.dev.update_rate_limiter(&limits).unwrap();
    let (clock, time) = Clock::manual();
    h.dev.set_rate_limiter_clock(clock);
    let mut table = Vec::new();
    let mut heads = Vec::new();
    for i in 0..count {
        heads.push(table.len() as u16);
        let chain = read_request(&h, i);
        table.extend(link(&chain, table.len() as u16));
    }
    let q = h.queue_with(&table, &heads);
    (h, time, q)
}

fn timer_fired(h: &mut Harness, q: &mut virtio_queue::Queue) {
    h.dev
        .process_host_event(
            RATE_LIMITER_TIMER,
            event_manager::EventSet::IN,
            std::slice::from_mut(q),
        )
        .unwrap();
}

#[test]
fn a_throttled_disk_leaves_requests_in_the_ring_until_its_timer() {
    // Two requests per second.
    let limits = RateLimiterConfig {
        bandwidth: None,
        ops: bucket(2, 1000),
    };
    let (mut h, time, mut q) = limited(limits, 5);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used_idx(), 2, "two served, three left in the ring");
    assert_eq!(h.dev.throttle_count(), 1);
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 1);
    // A notification while throttled serves nothing and counts no more.
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used_idx(), h.dev.throttle_count()), (2, 1));
    // Half a second later: one more token.
    time.advance(Duration::from_millis(500));
    timer_fired(&mut h, &mut q);
    assert_eq!(h.used_idx(), 3);
    time.advance(Duration::from_secs(5));
    timer_fired(&mut h, &mut q);
    assert_eq!(h.used_idx(), 5);
    let image = pattern(super::tests::IMAGE_LEN);
    for i in 0..5u64 {
        assert_eq!(h.mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(), OK);
        let at = 512 * i as usize;
        assert_eq!(h.guest_bytes(DATA + 512 * i, 512), image[at..at + 512]);
    }
}

#[test]
fn bandwidth_counts_each_requests_data() {
    // 1 KiB per second: two 512-byte reads, then one per half second.
    let limits = RateLimiterConfig {
        bandwidth: bucket(1024, 1000),
        ops: None,
    };
    let (mut h, time, mut q) = limited(limits, 4);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used_idx(), 2);
    time.advance(Duration::from_millis(499));
    timer_fired(&mut h, &mut q);
    assert_eq!(h.used_idx(), 2, "511 bytes are not enough");
    time.advance(Duration::from_millis(1));
    timer_fired(&mut h, &mut q);
    assert_eq!(h.used_idx(), 3);
    assert_eq!(h.dev.throttle_count(), 3);
}

#[test]
fn an_update_lifts_a_throttle() {
    let limits = RateLimiterConfig {
        bandwidth: None,
        ops: bucket(1, 3_600_000),
    };
    let (mut h, _time, mut q) = limited(limits, 3);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used_idx(), 1);
    let off = RateLimiterConfig {
        bandwidth: None,
        ops: bucket(0, 0),
    };
    h.dev.update_rate_limiter(&off).unwrap();
    assert_eq!(h.dev.rate_limiter(), &RateLimiterConfig::default());
    // The limiter wakes the device at once to go on.
    timer_fired(&mut h, &mut q);
    assert_eq!(h.used_idx(), 3);
}

/// The real timer in the real event loop: a disk limited to one request
/// per 20 ms serves three in no less than 40 ms, and the loop keeps
/// serving everything else meanwhile.
#[test]
fn the_timer_brings_a_wired_disk_back_without_stalling_the_loop() {
    let image = TempFile::new().unwrap();
    fs::write(image.as_path(), pattern(64 * 1024)).unwrap();
    let mut config = BlockConfig::new(image.as_path());
    config.read_only = true;
    config.rate_limiter.ops = bucket(1, 20);
    let dev = BlockDevice::new(config).unwrap();
    let h = harness(true);
    let mem = h.mem.clone();
    let mut wired = wire(dev, &mem);
    let (other, served) = other_source(&mut wired.event_loop);
    let ring = DriverRing::at(&mem, 0x8_0000, 16);
    wired.start(1 << crate::devices::virtio::features::VIRTIO_F_VERSION_1, &[ring]);
    let mut heads = Vec::new();
    for i in 0..3u64 {
        let chain = read_request(&h, i);
        let first = (3 * i) as u16;
        ring.set_desc_table(&mem, first, &link(&chain, first));
        heads.push(first);
    }
    ring.publish(&mem, &heads);
    let start = Instant::now();
    wired.kicks[0].write(1).unwrap();
    let mut rounds = 0;
    while ring.used_idx(&mem) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the throttled disk never finished"
        );
        if rounds == 1 {
            // Something else needs the loop while the disk is throttled.
            other.write(1).unwrap();
        }
        rounds += 1;
        wired.event_loop.run_with_timeout(100).unwrap();
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(38), "{elapsed:?}");
    assert_eq!(served.load(Ordering::SeqCst), 1, "the loop served the others");
    // Woken by the timer, not by spinning: a handful of rounds.
    assert!(rounds < 10, "{rounds} rounds for 3 requests");
    let transport = wired.transport.lock().unwrap();
    assert_eq!(transport.device().throttle_count(), 2);
}

#[test]
fn swapping_the_medium_changes_capacity_and_tells_the_driver() {
    let first = TempFile::new().unwrap();
    fs::write(first.as_path(), pattern(64 * 1024)).unwrap();
    let second = TempFile::new().unwrap();
    fs::write(second.as_path(), vec![0x5a; 1024 * 1024]).unwrap();
    let mut config = BlockConfig::new(first.as_path());
    config.read_only = true;
    let h = harness(true);
    let mem = h.mem.clone();
    let wired = wire(BlockDevice::new(config).unwrap(), &mem);
    let ring = DriverRing::at(&mem, 0x8_0000, 16);
    wired.start(1 << crate::devices::virtio::features::VIRTIO_F_VERSION_1, &[ring]);
    let read = |offset: u64| {
        let mut data = [0u8; 4];
        wired.transport.lock().unwrap().read(offset, &mut data);
        u32::from_le_bytes(data)
    };
    let capacity = |t: &dyn Fn(u64) -> u32| u64::from(t(0x100)) | u64::from(t(0x104)) << 32;
    assert_eq!(capacity(&read), 128);
    let generation = read(reg::CONFIG_GENERATION);
    assert_eq!(read(reg::INTERRUPT_STATUS), 0);

    let mut transport = wired.transport.lock().unwrap();
    let err = transport
        .device_mut()
        .swap_backing_file(std::path::Path::new("/nonexistent/kiln.img"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/kiln.img") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(
        transport.device().path(),
        first.as_path(),
        "a failed swap keeps the old medium"
    );
    transport
        .device_mut()
        .swap_backing_file(second.as_path())
        .unwrap();
    assert!(transport.device().is_read_only());
    drop(transport);

    assert_eq!(capacity(&read), 2048);
    assert_ne!(read(reg::CONFIG_GENERATION), generation);
    assert_eq!(read(reg::INTERRUPT_STATUS), INTERRUPT_CONFIG);
    // The new medium is what the guest reads now.
    let chain = read_request(&h, 1000);
    ring.set_desc_table(&mem, 0, &link(&chain, 0));
    ring.publish(&mem, &[0]);
    wired.kicks[0].write(1).unwrap();
    let mut wired = wired;
    wired.run();
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + 1000)).unwrap(), OK);
    assert_eq!(h.guest_bytes(DATA + 512 * 1000, 512), vec![0x5a; 512]);
}

#[test]
fn a_disk_without_limits_never_watches_a_ready_timer() {
    let mut h = harness(false);
    assert_eq!(h.dev.rate_limiter(), &RateLimiterConfig::default());
    let chain = read_request(&h, 0);
    let mut q = h.queue_with(&link(&chain, 0), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used_idx(), h.dev.throttle_count()), (1, 0));
}
