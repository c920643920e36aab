//! Feeds guest-controlled queue contents to the virtio-blk device: a
//! descriptor table, available-ring heads, request header, discard segments
//! and data all come from the fuzzer. The device must never panic.
#![no_main]

use std::cell::RefCell;

use kiln::devices::virtio::VirtioDevice;
use kiln::vstate::memory::GuestMemoryMmap;
use kiln_fuzz::{active_scratch_disk, ScratchDisk};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 0x10_0000;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Fuzz bytes beyond the rings are copied here, where descriptors will
/// mostly point (headers, segments, data).
const PAYLOAD: u64 = 0x3000;
const QUEUE_SIZE: u16 = 16;
const IMAGE_LEN: u64 = 64 * 1024;

struct Target {
    mem: GuestMemoryMmap,
    disk: ScratchDisk,
}

fn target() -> Target {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let disk = active_scratch_disk(IMAGE_LEN, &mem);
    Target { mem, disk }
}

thread_local! {
    // Reused: mapping memory and opening the image per input is slow.
    static TARGET: RefCell<Target> = RefCell::new(target());
}

fuzz_target!(|data: &[u8]| {
    let table_len = usize::from(QUEUE_SIZE) * 16;
    if data.len() < table_len + 4 {
        return;
    }
    let (table, rest) = data.split_at(table_len);
    let (ring, payload) = rest.split_at(4);
    let heads = usize::from(ring[0] % 8);
    let event_idx = ring[1] & 1 != 0;
    TARGET.with(|t| {
        let mut t = t.borrow_mut();
        let Target { mem, disk } = &mut *t;
        mem.write_slice(table, GuestAddress(DESC_TABLE)).unwrap();
        // Available ring: flags, idx, then head indices taken from the
        // payload (they may point anywhere).
        mem.write_obj(0u16, GuestAddress(AVAIL_RING)).unwrap();
        mem.write_obj(
            u16::from_le_bytes([ring[2], ring[3]]) % 32,
            GuestAddress(AVAIL_RING + 2),
        )
        .unwrap();
        for i in 0..heads {
            let head = payload.get(i).copied().unwrap_or(0) % 20;
            mem.write_obj(u16::from(head), GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
                .unwrap();
        }
        let n = payload.len().min(MEM_SIZE - PAYLOAD as usize);
        mem.write_slice(&payload[..n], GuestAddress(PAYLOAD)).unwrap();

        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        // Errors are fine (the transport would mark the device broken);
        // panics are not.
        let _ = disk.device.process_queue(0, std::slice::from_mut(&mut q));
    });
});
