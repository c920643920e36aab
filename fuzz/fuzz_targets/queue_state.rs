//! One split virtqueue kept across many device passes while the fuzzer
//! plays the driver: it writes descriptors and ring entries, moves the
//! available index (anywhere, including past the queue size and across the
//! u16 wrap), sets `used_event` and the ring flags, and resets the queue,
//! with or without EVENT_IDX, its rings anywhere in guest memory
//! (overlapping each other, straddling regions). Between its moves the device
//! drains the queue, either through `drain_queue` with a handler that walks
//! each chain or through the block device doing real requests.
//!
//! A pass over a queue the driver set up and filled correctly must
//! succeed. Checked after every pass that succeeds: the used index advanced by
//! exactly the chains popped, and, when the used ring does not overlap the
//! available ring (so the device's own writes cannot move the available
//! index under it), every published buffer was consumed, the used ring
//! holds the popped heads with their lengths in order, notifications are
//! re-enabled at the right index, and the driver was notified exactly when
//! the virtio rules (§2.7.10) say. A pass that fails leaves the queue to
//! a driver reset, as the transport's DEVICE_NEEDS_RESET does. Every pass
//! must end (libFuzzer's -timeout), and nothing may panic.
#![no_main]

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use kiln::devices::virtio::block::{BlockConfig, BlockDevice};
use kiln::devices::virtio::queue::{drain_queue, PassBudget, QueueRules, Served};
use kiln::devices::virtio::{Activation, HostEvents, PassEnd, QueueError, VirtioDevice};
use kiln::vstate::memory::GuestMemoryMmap;
use kiln_fuzz::queue_input::Op;
use kiln_fuzz::{guest_memory, in_guest_memory, scratch_file, NoInterrupt, GUEST_REGIONS};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const IMAGE_LEN: u64 = 64 * 1024;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

#[derive(Clone, Copy, Debug)]
struct Layout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Layout {
    fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail + 4 + 2 * u64::from(self.size))
    }

    fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used + 4 + 8 * u64::from(self.size))
    }

    fn used_elem(&self, index: u16) -> GuestAddress {
        GuestAddress(self.used + 4 + 8 * u64::from(index % self.size))
    }

    /// The device writes the used ring; if that can change what the driver
    /// published, a pass may consume more than was available at its start.
    fn rings_overlap(&self) -> bool {
        let size = u64::from(self.size);
        let avail = self.avail..self.avail + 6 + 2 * size;
        let used = self.used..self.used + 6 + 8 * size;
        avail.start < used.end && used.start < avail.end
    }
}

/// The device side's view before a pass.
struct Before {
    next_avail: u16,
    next_used: u16,
    avail_idx: Option<u16>,
}

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    disk: BlockDevice,
    max_size: u16,
    layout: Layout,
    queue: Queue,
    event_idx: bool,
}

impl Harness<'_> {
    fn reset(&mut self, layout: Layout, start: u16) {
        let mut queue = Queue::new(self.max_size).unwrap();
        queue.try_set_size(layout.size).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(layout.desc))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(layout.avail))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(layout.used))
            .unwrap();
        queue.set_event_idx(self.event_idx);
        queue.set_next_avail(start);
        queue.set_next_used(start);
        queue.set_ready(true);
        // A driver starting over publishes nothing yet; the rings may lie
        // outside guest memory, which the passes must survive.
        let _ = self.mem.write_obj(start, GuestAddress(layout.avail + 2));
        let _ = self.mem.write_obj(start, GuestAddress(layout.used + 2));
        self.layout = layout;
        self.queue = queue;
    }

    fn avail_idx(&self) -> Option<u16> {
        self.queue
            .avail_idx(self.mem, Ordering::Acquire)
            .ok()
            .map(|w| w.0)
    }

    fn before(&self) -> Before {
        Before {
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
            avail_idx: self.avail_idx(),
        }
    }

    /// Whether the driver did everything right for this pass: rings inside
    /// guest memory and apart, at most a queue's worth published, every
    /// published head a descriptor of the queue. Such a pass must succeed.
    /// (An available ring at 0 is refused by the transport: virtio-queue
    /// takes it for an unconfigured queue.)
    fn driver_behaves(&self, before: &Before) -> bool {
        let l = self.layout;
        let size = u64::from(l.size);
        let Some(avail_idx) = before.avail_idx else {
            return false;
        };
        let pending = avail_idx.wrapping_sub(before.next_avail);
        l.avail != 0
            && in_guest_memory(l.avail, 6 + 2 * size)
            && in_guest_memory(l.used, 6 + 8 * size)
            && !l.rings_overlap()
            && pending <= l.size
            && (0..pending).all(|i| {
                let slot = u64::from(before.next_avail.wrapping_add(i) % l.size);
                let head: u16 = self.mem.read_obj(GuestAddress(l.avail + 4 + 2 * slot)).unwrap();
                head < l.size
            })
    }

    fn drain(&mut self, reply_len: u32) {
        let before = self.before();
        let behaves = self.driver_behaves(&before);
        let mut heads = Vec::new();
        // No clock in the budget: a pass must end the same way every run.
        let rules = QueueRules {
            indirect: true,
            budget: PassBudget {
                time: None,
                ..PassBudget::DEFAULT
            },
        };
        let result = drain_queue(&mut self.queue, self.mem, &rules, |chain| {
            heads.push(chain.head_index());
            // Walking the chain reads every descriptor, indirect tables
            // included; the walker bounds it.
            let _ = chain.count();
            Served {
                used_len: reply_len,
                bytes: 0,
            }
        });
        let pass = match result {
            Ok(pass) => pass,
            Err(e) => {
                assert!(!behaves, "a well-behaved driver's queue failed: {e}");
                return self.driver_reset(e);
            }
        };
        let popped = heads.len();
        let used_delta = self.check_indices(&before);
        assert_eq!(
            usize::from(used_delta),
            popped % (1 << 16),
            "used index moved by {used_delta} for {popped} chains"
        );
        let l = self.layout;
        assert!(heads.iter().all(|&h| h < l.size), "head out of range handled");
        assert_eq!(usize::try_from(pass.served).unwrap(), popped, "served count");
        // A pass cut short by its budget leaves notifications off and the
        // rest for the next pass.
        if l.rings_overlap() || pass.end == PassEnd::Yielded {
            return;
        }
        // The available ring did not move during the pass.
        let pending = before
            .avail_idx
            .expect("pass succeeded, so the ring was readable")
            .wrapping_sub(before.next_avail);
        assert_eq!(
            popped,
            usize::from(pending),
            "a pass must consume all that was published"
        );
        for (i, &head) in heads
            .iter()
            .enumerate()
            .skip(popped.saturating_sub(usize::from(l.size)))
        {
            let index = before.next_used.wrapping_add(i as u16);
            let id: u32 = self.mem.read_obj(l.used_elem(index)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(l.used_elem(index).0 + 4)).unwrap();
            assert_eq!((id, len), (u32::from(head), reply_len), "used ring entry {index}");
        }
        if self.event_idx {
            let avail_event: u16 = self.mem.read_obj(l.avail_event()).unwrap();
            assert_eq!(avail_event, self.queue.next_avail(), "avail_event after a pass");
        } else {
            let flags: u16 = self.mem.read_obj(GuestAddress(l.used)).unwrap();
            assert_eq!(flags & VRING_USED_F_NO_NOTIFY, 0, "notifications left off");
        }
        let expected = popped > 0
            && (!self.event_idx || {
                // Notify when used_event lies in [old, new) (§2.7.10).
                let used_event = Wrapping(self.mem.read_obj::<u16>(l.used_event()).unwrap());
                let new = Wrapping(self.queue.next_used());
                let old = Wrapping(before.next_used);
                new - used_event - Wrapping(1) < new - old
            });
        assert_eq!(pass.notify, expected, "notification after {popped} chains");
    }

    fn process(&mut self) {
        let before = self.before();
        match self.disk.process_queue(0, std::slice::from_mut(&mut self.queue)) {
            Ok(_) => {
                self.check_indices(&before);
            }
            Err(e) => self.driver_reset(e),
        }
    }

    /// After a successful pass: as many used entries as chains popped, and
    /// the used index in memory says so. Returns how many.
    fn check_indices(&self, before: &Before) -> u16 {
        let avail_delta = self.queue.next_avail().wrapping_sub(before.next_avail);
        let used_delta = self.queue.next_used().wrapping_sub(before.next_used);
        assert_eq!(avail_delta, used_delta, "chains popped but not returned");
        if used_delta > 0 {
            let in_memory: u16 = self.mem.read_obj(GuestAddress(self.layout.used + 2)).unwrap();
            assert_eq!(in_memory, self.queue.next_used(), "used index in guest memory");
        }
        used_delta
    }

    /// The transport sets DEVICE_NEEDS_RESET on a failed pass; the driver
    /// resets the device and sets the queue up again.
    fn driver_reset(&mut self, _error: QueueError) {
        self.reset(self.layout, 0);
    }

    fn run(&mut self, op: &Op) {
        let l = self.layout;
        let size = u64::from(l.size);
        let mem = self.mem;
        // Writes may hit the hole or run past the end: the guest's problem.
        match *op {
            Op::Reset {
                size_log2,
                desc,
                avail,
                used,
                start,
                event_idx,
            } => {
                // EVENT_IDX is negotiated, so it only changes with a reset.
                self.event_idx = event_idx;
                let layout = Layout {
                    size: Op::queue_size(size_log2),
                    desc: Op::ring_addr(desc, 16),
                    avail: Op::ring_addr(avail, 2),
                    used: Op::ring_addr(used, 4),
                };
                self.reset(layout, start);
            }
            Op::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&Op::buffer_addr(addr).to_le_bytes());
                raw[8..12].copy_from_slice(&len.to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..].copy_from_slice(&next.to_le_bytes());
                let at = l.desc + 16 * (u64::from(index) % size);
                let _ = mem.write_slice(&raw, GuestAddress(at));
            }
            Op::Offer { slot, head } => {
                let at = l.avail + 4 + 2 * (u64::from(slot) % size);
                let _ = mem.write_obj(head, GuestAddress(at));
            }
            Op::Publish { count } => {
                if let Some(idx) = self.avail_idx() {
                    let _ = mem.write_obj(idx.wrapping_add(u16::from(count)), GuestAddress(l.avail + 2));
                }
            }
            Op::SetAvailIdx { idx } => {
                let _ = mem.write_obj(idx, GuestAddress(l.avail + 2));
            }
            Op::AvailFlags { flags } => {
                let _ = mem.write_obj(flags, GuestAddress(l.avail));
            }
            Op::UsedEvent { delta } => {
                let value = self.queue.next_used().wrapping_add(delta as u16);
                let _ = mem.write_obj(value, l.used_event());
            }
            Op::WriteMem { addr, bytes } => {
                let _ = mem.write_slice(&bytes, GuestAddress(Op::mem_addr(addr)));
            }
            Op::Drain { reply_len } => self.drain(reply_len),
            Op::Process => self.process(),
        }
    }
}

thread_local! {
    // Created once: the image is emptied and memory zeroed per input.
    static FIXTURE: (GuestMemoryMmap, TempFile) = (guest_memory(), scratch_file());
}

fuzz_target!(|ops: Vec<Op>| {
    FIXTURE.with(|(mem, image)| {
        // Fresh state per input, so every finding reproduces on its own.
        for &(start, len) in &GUEST_REGIONS {
            mem.write_slice(&vec![0; len], GuestAddress(start)).unwrap();
        }
        image.as_file().set_len(0).unwrap();
        image.as_file().set_len(IMAGE_LEN).unwrap();
        let mut disk = BlockDevice::new(BlockConfig::new(image.as_path())).unwrap();
        disk.activate(Activation::new(
            disk.device_features(),
            mem.clone(),
            std::sync::Arc::new(NoInterrupt),
            std::sync::Arc::new(HostEvents::new().unwrap()),
        ))
        .unwrap();
        let max_size = disk.queue_max_sizes()[0];
        let mut h = Harness {
            mem,
            disk,
            max_size,
            layout: DEFAULT_LAYOUT,
            queue: Queue::new(max_size).unwrap(),
            event_idx: false,
        };
        h.reset(DEFAULT_LAYOUT, 0);
        for op in &ops {
            h.run(op);
        }
    });
});

/// Where the rings are until the fuzzer moves them: apart, in the first
/// region.
const DEFAULT_LAYOUT: Layout = Layout {
    size: 16,
    desc: 0x1000,
    avail: 0x2000,
    used: 0x3000,
};
