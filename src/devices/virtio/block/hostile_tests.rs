//! A guest that lies: every malformed request gets the virtio error status
//! (or, with no usable status byte, is returned unanswered), never a panic,
//! and never an access outside guest memory or the image.

use std::fs;
use std::sync::atomic::Ordering;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::request_status::{IOERR, OK, UNSUPP};
use super::request_type::*;
use super::tests::*;
use crate::devices::virtio::features::VIRTIO_F_INDIRECT_DESC;
use crate::devices::virtio::queue::{PassEnd, QueueError};
use crate::devices::virtio::test_utils::{indirect, memory, raw, write_table};
use crate::devices::virtio::VirtioDevice;

const CAPACITY: u64 = (IMAGE_LEN / 512) as u64;
const UNANSWERED: u32 = 0;

/// Submits and checks the reply and that the image is untouched.
fn expect(h: &mut Harness, descs: &[D], status: u8) {
    let before = h.image_bytes();
    assert_eq!(h.submit(descs), 1, "status byte only");
    assert_eq!(h.status(), status, "{descs:?}");
    assert_eq!(h.image_bytes(), before, "image must not change");
}

fn expect_unanswered(h: &mut Harness, descs: &[D]) {
    let before = h.image_bytes();
    assert_eq!(h.submit(descs), UNANSWERED, "{descs:?}");
    assert_eq!(h.status(), 0xee, "no status may be written");
    assert_eq!(h.image_bytes(), before);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut h = harness(false);
    for kind in [2, 3, 5, 10, 14, 15, 0x8000_0000, u32::MAX] {
        h.header(kind, 0);
        expect(&mut h, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], UNSUPP);
        expect(&mut h, &[r(HDR, 16), w(STATUS, 1)], UNSUPP);
    }
}

#[test]
fn read_only_disk_refuses_every_write() {
    let mut h = harness(true);
    let mtime = fs::metadata(h.image.as_path()).unwrap().modified().unwrap();
    h.fill_guest(DATA, &[1; 512]);
    h.header(OUT, 0);
    expect(&mut h, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], IOERR);
    h.segment(DATA, 0, 1, 0);
    h.header(DISCARD, 0);
    expect(&mut h, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], IOERR);
    h.header(WRITE_ZEROES, 0);
    expect(&mut h, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], IOERR);
    h.header(FLUSH, 0);
    expect(&mut h, &[r(HDR, 16), w(STATUS, 1)], OK);
    h.header(IN, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 513);
    assert_eq!(h.status(), OK);
    assert_eq!(
        fs::metadata(h.image.as_path()).unwrap().modified().unwrap(),
        mtime
    );
}

#[test]
fn descriptors_outside_guest_memory() {
    let mut h = harness(false);
    h.header(IN, 0);
    // Straddles the end of memory; wholly outside; wraps the address space;
    // absurd length.
    for (addr, len) in [
        (MEM_SIZE - 256, 512),
        (MEM_SIZE + 0x1000, 512),
        (u64::MAX - 255, 512),
        (DATA, u32::MAX - 64),
    ] {
        expect(&mut h, &[r(HDR, 16), w(addr, len), w(STATUS, 1)], IOERR);
    }
    // The chain's total length overflows u32: virtio-queue stops iterating,
    // so the status byte cannot be found.
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, u32::MAX), w(STATUS, 1)]);
    h.header(OUT, 0);
    expect(&mut h, &[r(HDR, 16), r(u64::MAX - 511, 512), w(STATUS, 1)], IOERR);
    expect(&mut h, &[r(MEM_SIZE, 16), w(STATUS, 1)], IOERR);
}

#[test]
fn unusable_status_descriptor_leaves_request_unanswered() {
    let mut h = harness(false);
    h.header(IN, 0);
    // Read-only status; zero-length status; status outside memory.
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, 512), r(STATUS, 1)]);
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, 512), w(STATUS, 0)]);
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, 512), w(MEM_SIZE, 1)]);
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, 512), w(u64::MAX, 1)]);
    expect_unanswered(&mut h, &[r(HDR, 16)]);
    assert_eq!(h.guest_bytes(DATA, 512), [0; 512], "nothing read in");
}

#[test]
fn looping_and_dangling_chains_end() {
    let mut h = harness(false);
    h.header(IN, 0);
    // 0 -> 1 -> 0 -> ...
    let table = [
        RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 1)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, NEXT | WRITE, 0)),
    ];
    let mut q = h.queue_with(&table, &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used_idx(), h.used(0)), (1, (0, UNANSWERED)));

    // next index past the queue.
    let table = [RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 300))];
    let mut q = h.queue_with(&table, &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used(0), (0, UNANSWERED));

    // Nested indirect tables are refused by the iterator.
    let inner = RawDescriptor::from(Descriptor::new(INDIRECT, 16, INDIRECT_FLAG, 0));
    h.mem.write_obj(inner, GuestAddress(INDIRECT)).unwrap();
    let table = [RawDescriptor::from(Descriptor::new(
        INDIRECT,
        16,
        INDIRECT_FLAG,
        0,
    ))];
    let mut q = h.queue_with(&table, &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used(0), (0, UNANSWERED));
}

#[test]
fn too_many_descriptors_is_an_io_error() {
    let mut h = harness(false);
    h.header(IN, 0);
    let mut descs = vec![r(HDR, 16)];
    descs.extend((0..200).map(|i| w(DATA + 512 * i, 512)));
    descs.push(w(STATUS, 1));
    expect(&mut h, &descs, IOERR);
}

#[test]
fn wrong_directions() {
    let mut h = harness(false);
    h.header(IN, 0);
    // Header writable.
    expect(&mut h, &[w(HDR, 16), w(DATA, 512), w(STATUS, 1)], IOERR);
    // Read with device-readable data.
    expect(&mut h, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], IOERR);
    // Readable after writable.
    expect(
        &mut h,
        &[r(HDR, 16), w(DATA, 512), r(DATA + 512, 512), w(STATUS, 1)],
        IOERR,
    );
    h.fill_guest(DATA, &[5; 512]);
    h.header(OUT, 0);
    // Write with device-writable data: must not write the image.
    expect(&mut h, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], IOERR);
    expect(
        &mut h,
        &[r(HDR, 16), r(DATA, 512), w(DATA + 512, 512), w(STATUS, 1)],
        IOERR,
    );
    h.header(FLUSH, 0);
    expect(&mut h, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], IOERR);
    h.header(GET_ID, 0);
    expect(&mut h, &[r(HDR, 16), w(STATUS, 1)], IOERR);
    expect(&mut h, &[r(HDR, 16), r(DATA, 20), w(STATUS, 1)], IOERR);
}

#[test]
fn short_header_is_an_io_error() {
    let mut h = harness(false);
    h.header(IN, 0);
    expect(&mut h, &[r(HDR, 8), w(DATA, 512), w(STATUS, 1)], IOERR);
    expect(&mut h, &[r(HDR, 0), w(STATUS, 1)], IOERR);
}

#[test]
fn requests_past_the_end_of_the_image() {
    let mut h = harness(false);
    h.fill_guest(DATA, &[6; 1024]);
    for (sector, len) in [
        (CAPACITY, 512),
        (CAPACITY - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX / 512, 1024),
    ] {
        for kind in [IN, OUT] {
            h.header(kind, sector);
            let data = if kind == IN { w(DATA, len) } else { r(DATA, len) };
            expect(&mut h, &[r(HDR, 16), data, w(STATUS, 1)], IOERR);
        }
    }
    // The last sector is fine.
    h.header(IN, CAPACITY - 1);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 513);
    assert_eq!(h.status(), OK);
}

#[test]
fn lengths_must_be_whole_sectors() {
    let mut h = harness(false);
    for kind in [IN, OUT] {
        h.header(kind, 0);
        for len in [1, 511, 513, 1000] {
            let data = if kind == IN { w(DATA, len) } else { r(DATA, len) };
            expect(&mut h, &[r(HDR, 16), data, w(STATUS, 1)], IOERR);
        }
    }
}

#[test]
fn malformed_discard_and_write_zeroes() {
    let mut h = harness(false);
    let table = |h: &mut Harness, kind, len, status| {
        h.header(kind, 0);
        expect(h, &[r(HDR, 16), r(DATA, len), w(STATUS, 1)], status);
    };
    // Discard may not ask to unmap; unknown flags are unsupported.
    h.segment(DATA, 0, 1, 1);
    table(&mut h, DISCARD, 16, UNSUPP);
    h.segment(DATA, 0, 1, 2);
    table(&mut h, DISCARD, 16, UNSUPP);
    table(&mut h, WRITE_ZEROES, 16, UNSUPP);
    // Past the end, sector overflow, over the size limit.
    for (sector, sectors) in [(CAPACITY, 1), (CAPACITY - 1, 2), (u64::MAX, 1), (0, u32::MAX)] {
        h.segment(DATA, sector, sectors, 0);
        table(&mut h, DISCARD, 16, IOERR);
        table(&mut h, WRITE_ZEROES, 16, IOERR);
    }
    // Not whole segments, none, or too many.
    h.segment(DATA, 0, 1, 0);
    table(&mut h, DISCARD, 15, IOERR);
    table(&mut h, WRITE_ZEROES, 17, IOERR);
    for i in 0..17 {
        h.segment(DATA + 16 * i, i, 1, 0);
    }
    table(&mut h, DISCARD, 16 * 17, IOERR);
    h.header(WRITE_ZEROES, 0);
    expect(&mut h, &[r(HDR, 16), w(STATUS, 1)], IOERR);
    // Write-zeroes takes one segment at most.
    table(&mut h, WRITE_ZEROES, 32, IOERR);
    // A bad segment after a good one fails the whole request up front.
    h.segment(DATA + 16, CAPACITY, 1, 0);
    table(&mut h, DISCARD, 32, IOERR);
}

#[test]
fn avail_ring_lies_mark_the_queue_broken() {
    let mut h = harness(false);
    let mut q = h.queue_with(&[], &[]);
    h.mem.write_obj(300u16, GuestAddress(q.avail_ring() + 2)).unwrap();
    assert!(matches!(
        h.dev.process_queue(0, std::slice::from_mut(&mut q)),
        Err(QueueError::AvailIndexTooFar { .. })
    ));
    // A head index past the queue cannot be put on the used ring.
    let mut q = h.queue_with(&[], &[1000]);
    assert!(h.dev.process_queue(0, std::slice::from_mut(&mut q)).is_err());
}

/// xorshift64: deterministic, dependency-free pseudo-randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_descriptor(rng: &mut Rng, table_len: u16) -> RawDescriptor {
    let addr = match rng.below(8) {
        0 => rng.next(),
        1 => MEM_SIZE - rng.below(1024),
        2 => INDIRECT,
        3 => HDR,
        4 => STATUS,
        _ => DATA + 512 * rng.below(64),
    };
    let len = match rng.below(8) {
        0 => rng.next() as u32,
        1 => rng.pick(&[0, 1, 15, 16, 17, 48, u32::MAX]),
        2 => 16,
        3 => 1,
        _ => 512 * rng.below(9) as u32,
    };
    let junk = if rng.below(16) == 0 { rng.next() as u16 } else { 0 };
    let flags = rng.pick(&[0, NEXT, WRITE, NEXT | WRITE, NEXT, NEXT | WRITE, INDIRECT_FLAG]) | junk;
    let next = if rng.below(8) == 0 {
        rng.next() as u16
    } else {
        rng.below(u64::from(table_len)) as u16
    };
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// A well-formed chain at index 0 (header, data, status) with, now and
/// then, one field of one descriptor replaced by something random.
fn plausible_chain(rng: &mut Rng) -> Vec<RawDescriptor> {
    let data_writable = rng.below(2) == 0;
    let mut descs = vec![r(HDR, 16)];
    for i in 0..rng.below(4) {
        let len = 512 * (1 + rng.below(4) as u32);
        let addr = DATA + 0x1000 * (1 + i);
        descs.push(if data_writable { w(addr, len) } else { r(addr, len) });
    }
    if rng.below(3) == 0 {
        // Discard/write-zeroes segments live at DATA.
        descs.push(r(DATA, 16 * (1 + rng.below(3) as u32)));
    }
    descs.push(w(STATUS, 1));
    let mut table = link(&descs, 0);
    if rng.below(3) == 0 {
        let victim = rng.below(table.len() as u64) as usize;
        let d = Descriptor::from(table[victim]);
        let (mut addr, mut len, mut flags, mut next) = (d.addr().0, d.len(), d.flags(), d.next());
        let any = rng.next();
        match rng.below(4) {
            0 => addr = rng.pick(&[any, MEM_SIZE - 8, u64::MAX]),
            1 => len = rng.pick(&[0, 1, 511, u32::MAX, any as u32]),
            2 => flags ^= rng.pick(&[NEXT, WRITE, INDIRECT_FLAG]),
            _ => next = rng.next() as u16,
        }
        table[victim] = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
    }
    table
}

/// Random descriptor tables, headers and segments through parsing and
/// execution: no panic, the image never changes size, a read-only image
/// never changes at all, and the used ring never grows past what was made
/// available.
#[test]
fn random_chains_never_escape() {
    for read_only in [false, true] {
        let mut h = harness(read_only);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(read_only));
        let original = h.image_bytes();
        let (mut transfers, mut completed) = (0, 0);
        for round in 0..4000 {
            let mut table = if rng.below(2) == 0 {
                plausible_chain(&mut rng)
            } else {
                Vec::new()
            };
            let table_len = (table.len() + 1 + rng.below(12) as usize) as u16;
            while table.len() < usize::from(table_len) {
                table.push(random_descriptor(&mut rng, table_len));
            }
            for i in 0..rng.below(6) {
                let desc = random_descriptor(&mut rng, 6);
                h.mem.write_obj(desc, GuestAddress(INDIRECT + 16 * i)).unwrap();
            }
            let any = rng.next();
            let kind = rng.pick(&[IN, IN, OUT, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES, any as u32]);
            let sector = rng.pick(&[0, 1, 7, 30, CAPACITY - 1, CAPACITY, u64::MAX, any]);
            h.fill_guest(STATUS, &[0xee]);
            h.header(kind, sector);
            for i in 0..4 {
                let (any, anywhere) = (rng.next(), rng.below(CAPACITY));
                let sector = rng.pick(&[0, CAPACITY - 1, anywhere, any]);
                let sectors = rng.pick(&[1, 2, 8, any as u32]);
                let flags = rng.pick(&[0, 0, 1, (any >> 32) as u32]);
                h.segment(DATA + 16 * i, sector, sectors, flags);
            }
            let heads: Vec<u16> = (0..1 + rng.below(4))
                .map(|n| {
                    if n == 0 && rng.below(4) != 0 {
                        0
                    } else if rng.below(10) == 0 {
                        rng.next() as u16
                    } else {
                        rng.below(u64::from(table_len)) as u16
                    }
                })
                .collect();
            let mut q = h.queue_with(&table, &heads);
            if rng.below(20) == 0 {
                q.set_event_idx(true);
            }
            let _ = h.dev.process_queue(0, std::slice::from_mut(&mut q));
            assert!(
                usize::from(h.used_idx()) <= heads.len(),
                "round {round}: used ring overran"
            );
            if h.status() == OK {
                completed += 1;
            }
            transfers += (0..h.used_idx()).filter(|&i| h.used(i).1 > 1).count();
            let image = h.image_bytes();
            assert_eq!(image.len(), IMAGE_LEN, "round {round}: image size changed");
            if read_only {
                assert_eq!(image, original, "round {round}: read-only image written");
            }
        }
        assert!(h.irq.0.load(Ordering::SeqCst) > 0, "some requests completed");
        eprintln!("read_only={read_only}: {completed} completed OK, {transfers} read data");
        assert!(
            transfers > 0 && completed > 0,
            "the generator must reach execution"
        );
    }
}

/// Guest memory in several regions, as kiln lays it out around the
/// 32-bit MMIO hole: buffers may straddle two adjacent regions, but not
/// run into the gap between 3 and 4 GiB.
#[test]
fn buffers_across_memory_regions() {
    let gap_start = 0xc000_0000u64;
    let high = 1u64 << 32;
    let mem = memory(&[
        (0, MEM_SIZE as usize),
        (MEM_SIZE, MEM_SIZE as usize),
        (gap_start - 0x1000, 0x1000),
        (high, 0x1000),
    ]);
    let mut h = harness_in(mem, false, None);
    let image = pattern(IMAGE_LEN);
    // A read into a buffer across the boundary of two adjacent regions.
    let across = MEM_SIZE - 256;
    h.header(IN, 1);
    assert_eq!(h.submit(&[r(HDR, 16), w(across, 512), w(STATUS, 1)]), 513);
    assert_eq!(
        (h.status(), h.guest_bytes(across, 512)),
        (OK, image[512..1024].to_vec())
    );
    // A write from there, with the header and status above 4 GiB.
    h.header_at(high, OUT, 4);
    assert_eq!(h.submit(&[r(high, 16), r(across, 512), w(high + 0x100, 1)]), 1);
    assert_eq!(h.guest_bytes(high + 0x100, 1), [OK]);
    assert_eq!(h.image_bytes()[2048..2560], image[512..1024]);
    // Into the gap: refused, nothing read or written.
    for kind in [IN, OUT] {
        h.header(kind, 0);
        let data = if kind == IN {
            w(gap_start - 256, 512)
        } else {
            r(gap_start - 256, 512)
        };
        expect(&mut h, &[r(HDR, 16), data, w(STATUS, 1)], IOERR);
    }
    // A status byte there cannot be written: no answer.
    h.header(IN, 0);
    expect_unanswered(&mut h, &[r(HDR, 16), w(DATA, 512), w(gap_start, 1)]);
}

/// The status byte where the driver also put the header: the request is
/// executed as the header said, then the status overwrites it.
#[test]
fn status_byte_inside_the_header() {
    let mut h = harness(false);
    h.header(IN, 2);
    h.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let mut q = h.queue_with(&link(&[r(HDR, 16), w(DATA, 512), w(HDR, 1)], 0), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used(0), (0, 513));
    assert_eq!(h.guest_bytes(HDR, 1), [OK]);
    assert_eq!(h.guest_bytes(DATA, 512), pattern(IMAGE_LEN)[1024..1536]);
    // A read whose data lands on its own header and status.
    h.header(IN, 0);
    let mut q = h.queue_with(&link(&[r(HDR, 16), w(HDR, 512), w(HDR + 511, 1)], 0), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used(0), (0, 513));
    assert_eq!(h.guest_bytes(HDR, 511), pattern(IMAGE_LEN)[..511]);
    assert_eq!(h.guest_bytes(HDR + 511, 1), [OK]);
}

/// The status byte inside the rings. On the used ring it is overwritten
/// by the completion; on the available index it makes the ring
/// inconsistent, which ends in a queue error (a reset), never a hang.
#[test]
fn status_byte_inside_a_ring() {
    let mut h = harness(false);
    h.header(IN, 0);
    let read = |status| link(&[r(HDR, 16), w(DATA, 512), w(status, 1)], 0);
    let mut q = h.queue_with(&read(USED_RING + 4), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used_idx(), h.used(0)), (1, (0, 513)));

    // Descriptor table entry 0 holds the status descriptor's own address.
    let mut q = h.queue_with(&read(0), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used_idx(), h.used(0)), (1, (0, 513)));

    // The low byte of the available index: 1 becomes 0 (OK).
    let mut q = h.queue_with(&read(0x1002), &[0]);
    let avail_idx = GuestAddress(q.avail_ring() + 2);
    assert_eq!(avail_idx, GuestAddress(0x1002));
    let err = h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap_err();
    assert!(matches!(err, QueueError::AvailIndexTooFar { .. }), "{err}");
    assert_eq!(h.used_idx(), 1, "the request itself completed");
}

/// Indirect chains through the device: mid-chain is served, INDIRECT
/// together with NEXT or without the feature is returned unanswered.
#[test]
fn indirect_chains_through_the_device() {
    let mut h = harness(false);
    h.header(IN, 0);
    write_table(&h.mem, INDIRECT, &link(&[w(DATA, 512), w(STATUS, 1)], 0));
    let mid_chain = [r(HDR, 16), indirect(INDIRECT, 2)];
    assert_eq!(h.submit(&mid_chain), 513);
    assert_eq!(h.status(), OK);

    let with_next = [
        raw(HDR, 16, NEXT, 1),
        raw(INDIRECT, 32, INDIRECT_FLAG | NEXT, 2),
        raw(STATUS, 1, WRITE, 0),
    ];
    h.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let mut q = h.queue_with(&with_next, &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!((h.used(0), h.status()), ((0, UNANSWERED), 0xee));

    // A driver that did not accept VIRTIO_F_INDIRECT_DESC.
    let features = h.dev.device_features() & !(1 << VIRTIO_F_INDIRECT_DESC);
    h.dev
        .activate(activation(features, h.mem.clone(), h.irq.clone()))
        .unwrap();
    expect_unanswered(&mut h, &mid_chain);
}

/// The largest indirect table through the device: 65,535 linked entries
/// ending in a status byte. Far over `seg_max`; the device stops looking
/// for the status after a bounded walk and returns the chain unanswered,
/// and a pass takes only as many such chains as its descriptor budget.
#[test]
fn largest_indirect_table_through_the_device() {
    let mem = memory(&[(0, 0x40_0000)]);
    let mut h = harness_in(mem, false, None);
    let table_at = 0x20_0000;
    let entries = u16::MAX;
    let table: Vec<_> = (0..entries)
        .map(|i| match i {
            0 => raw(HDR, 16, NEXT, 1),
            _ if i + 1 == entries => raw(STATUS, 1, WRITE, 0),
            _ => raw(DATA, 0, WRITE | NEXT, i + 1),
        })
        .collect();
    write_table(&h.mem, table_at, &table);
    h.header(IN, 0);
    h.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let huge = [raw(table_at, 16 * u32::from(entries), INDIRECT_FLAG, 0)];
    let mut q = h.queue_with(&huge, &[0; 8]);
    let start = std::time::Instant::now();
    assert_eq!(
        h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap(),
        PassEnd::Yielded
    );
    let took = start.elapsed();
    // The descriptor budget ends the pass after 4 such chains; on a loaded
    // host the pass's time budget may end it sooner, never later.
    let served = h.used_idx();
    assert!((1..=4).contains(&served), "{served} chains in one pass");
    for i in 0..served {
        assert_eq!(h.used(i), (0, UNANSWERED), "chain {i}");
    }
    assert_eq!(h.status(), 0xee);
    eprintln!("one pass with 65,535-entry requests: {took:?}");
    assert!(took < std::time::Duration::from_millis(100), "{took:?}");

    // Within the walk limit, the status is still found: an I/O error.
    let long: Vec<_> = (0..1000u16)
        .map(|i| match i {
            0 => raw(HDR, 16, NEXT, 1),
            999 => raw(STATUS, 1, WRITE, 0),
            _ => raw(DATA, 0, WRITE | NEXT, i + 1),
        })
        .collect();
    write_table(&h.mem, table_at, &long);
    expect(&mut h, &[indirect(table_at, 1000)], IOERR);
}

/// One request can only ask for a bounded amount of work: the limits the
/// device advertises and enforces keep it within `MAX_REQUEST_BYTES`.
#[test]
fn one_request_is_bounded() {
    use super::device::{
        MAX_REQUEST_BYTES, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEGMENTS, SEG_MAX, SIZE_MAX,
    };
    assert!(u64::from(SEG_MAX) * u64::from(SIZE_MAX) <= MAX_REQUEST_BYTES);
    assert!(
        u64::from(MAX_WRITE_ZEROES_SEGMENTS) * u64::from(MAX_WRITE_ZEROES_SECTORS) * 512 <= MAX_REQUEST_BYTES
    );
    let mut h = harness(false);
    let mut config = [0u8; 60];
    h.dev.read_config(0, &mut config);
    let word = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!((word(8), word(12)), (SIZE_MAX, SEG_MAX));
    assert_eq!(
        (word(48), word(52)),
        (MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEGMENTS)
    );
    // One sector more than advertised is refused before any work.
    h.header(WRITE_ZEROES, 0);
    h.segment(DATA, 0, MAX_WRITE_ZEROES_SECTORS + 1, 0);
    expect(&mut h, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], IOERR);
}
