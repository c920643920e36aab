//! The guest driver of the `vsock_device` target: builds descriptor chains
//! in guest memory (see `vsock_input` for the layout), offers them, takes
//! them back from the used rings, and checks what the device did to guest
//! memory and the rings.
//!
//! It keeps a shadow of guest memory and, per byte, how many
//! device-writable buffers in flight cover it: after each call into the
//! device, every byte that changed must be in a used ring or in such a
//! buffer (never a TX buffer, a descriptor table, an available ring or the
//! sentinel).

use std::collections::{BTreeSet, HashMap};

use kiln::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX};
use kiln::devices::virtio::vsock::TX_QUEUE;
use kiln::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::vsock_input::*;
use crate::{guest_memory, GUEST_END, GUEST_REGIONS};

const SENTINEL_BYTE: u8 = 0xa5;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A descriptor chain offered and not used yet.
struct Chain {
    /// Descriptor slots it takes (the head first).
    slots: Vec<u16>,
    /// Its device-writable spans, in order.
    writable: Vec<(u64, u64)>,
}

/// The driver's side of one queue.
#[derive(Default)]
struct Ring {
    size: u16,
    free: BTreeSet<u16>,
    in_flight: HashMap<u16, Chain>,
    avail_idx: u16,
    /// Used elements taken back so far.
    used_seen: u16,
    /// Chains the device took off the available ring, and used.
    taken: u64,
    used: u64,
}

/// One used element: its length and what its writable spans hold.
pub struct Used {
    pub len: u32,
    pub bytes: Vec<u8>,
}

pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub acked: u64,
    /// What guest memory below the sentinel holds, as far as the driver
    /// knows (the hole reads as zeroes).
    shadow: Vec<u8>,
    scratch: Vec<u8>,
    /// Per byte: how many device-writable spans in flight cover it.
    writable: Vec<u16>,
    rings: [Ring; 3],
    rx_next: u64,
    tx_next: u64,
}

fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

pub fn in_hole(addr: u64) -> bool {
    (HOLE.0..HOLE.1).contains(&addr)
}

impl Default for Driver {
    fn default() -> Self {
        let mem = guest_memory();
        let sentinel = vec![SENTINEL_BYTE; (GUEST_END - SENTINEL_START) as usize];
        mem.write_slice(&sentinel, GuestAddress(SENTINEL_START)).unwrap();
        Self {
            mem,
            acked: 0,
            shadow: vec![0; SENTINEL_START as usize],
            scratch: vec![0; SENTINEL_START as usize],
            writable: vec![0; SENTINEL_START as usize],
            rings: Default::default(),
            rx_next: RX_AREA.0,
            tx_next: TX_AREA.0,
        }
    }
}

impl Driver {
    /// Clears the rings and sets up queues of `1 << (log2 % 9)` entries.
    pub fn start(&mut self, acked: u64, queue_log2: [u8; 3]) -> Vec<Queue> {
        self.acked = acked;
        self.write(0, &vec![0u8; DATA_START as usize]);
        self.writable.fill(0);
        let event_idx = acked & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for ((ring, log2), (desc, avail, used)) in self.rings.iter_mut().zip(queue_log2).zip(RINGS) {
            let size = VsockOp::queue_size(log2);
            *ring = Ring {
                size,
                free: (0..size).collect(),
                ..Ring::default()
            };
            let mut q = Queue::new(256).unwrap();
            q.try_set_size(size).unwrap();
            q.try_set_desc_table_address(GuestAddress(desc)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
            q.try_set_used_ring_address(GuestAddress(used)).unwrap();
            q.set_event_idx(event_idx);
            q.set_ready(true);
            queues.push(q);
        }
        queues
    }

    /// A driver write, remembered; the part in the hole goes nowhere.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        let end = (addr + bytes.len() as u64).min(SENTINEL_START);
        let mut at = addr;
        while at < end {
            if in_hole(at) {
                at = HOLE.1;
                continue;
            }
            let stop = if at < HOLE.0 { end.min(HOLE.0) } else { end };
            let part = &bytes[(at - addr) as usize..(stop - addr) as usize];
            self.mem.write_slice(part, GuestAddress(at)).unwrap();
            self.shadow[at as usize..stop as usize].copy_from_slice(part);
            at = stop;
        }
    }

    /// `len` bytes of the receive area no buffer in flight uses, so the
    /// device's writes to one buffer never land in another.
    pub fn alloc_rx(&mut self, len: u64) -> Option<u64> {
        let len = len.min(RX_AREA.1 - RX_AREA.0);
        for start in [self.rx_next, RX_AREA.0] {
            let start = if start + len > RX_AREA.1 { RX_AREA.0 } else { start };
            let span = start as usize..(start + len) as usize;
            if self.writable[span].iter().all(|&n| n == 0) {
                self.rx_next = start + len;
                return Some(start);
            }
        }
        None
    }

    /// `len` bytes of the transmit area, in guest memory (not across the
    /// hole); packets in flight may be overwritten, as a guest may.
    pub fn alloc_tx(&mut self, len: u64) -> u64 {
        let run_end = |at: u64| if at < HOLE.0 { HOLE.0 } else { TX_AREA.1 };
        let at = [self.tx_next, HOLE.1, TX_AREA.0]
            .into_iter()
            .find(|&at| at >= TX_AREA.0 && !in_hole(at) && at + len <= run_end(at))
            .unwrap_or(TX_AREA.0);
        self.tx_next = at + len;
        at
    }

    /// Writes a chain of `spans` (addr, len, device-writable) and offers
    /// it on queue `q`, directly or through an indirect table (at most 8
    /// spans). Returns whether the ring had room.
    pub fn offer(&mut self, q: usize, spans: &[(u64, u32, bool)], indirect: bool) -> bool {
        let ring = &self.rings[q];
        let indirect = indirect
            && self.acked & (1 << VIRTIO_F_INDIRECT_DESC) != 0
            && ring.free.first().is_some_and(|&h| h < INDIRECT_HEADS);
        let wanted = if indirect { 1 } else { spans.len() };
        if spans.is_empty() || ring.free.len() < wanted {
            return false;
        }
        let slots: Vec<u16> = ring.free.iter().copied().take(wanted).collect();
        let head = slots[0];
        let entry = |i: usize, next: u16| {
            let (addr, len, write) = spans[i];
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < spans.len() {
                flags |= F_NEXT;
            }
            descriptor(addr, len, flags, next)
        };
        let desc_table = RINGS[q].0;
        if indirect {
            let table = (q as u64 * u64::from(INDIRECT_HEADS) + u64::from(head)) * INDIRECT_TABLE;
            let at = INDIRECT_START + table;
            for i in 0..spans.len() {
                self.write(at + 16 * i as u64, &entry(i, i as u16 + 1));
            }
            let d = descriptor(at, 16 * spans.len() as u32, F_INDIRECT, 0);
            self.write(desc_table + 16 * u64::from(head), &d);
        } else {
            for (i, &slot) in slots.iter().enumerate() {
                let next = slots.get(i + 1).copied().unwrap_or(0);
                self.write(desc_table + 16 * u64::from(slot), &entry(i, next));
            }
        }
        let writable: Vec<(u64, u64)> = spans
            .iter()
            .filter(|s| s.2)
            .map(|&(a, l, _)| (a, u64::from(l)))
            .collect();
        // Writable spans of a TX chain are no room for the device.
        if q != TX_QUEUE {
            self.count_writable(&writable, true);
        }
        let ring = &mut self.rings[q];
        for slot in &slots {
            ring.free.remove(slot);
        }
        ring.in_flight.insert(head, Chain { slots, writable });
        let (_, avail, _) = RINGS[q];
        let slot = u64::from(ring.avail_idx % ring.size);
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        let idx = ring.avail_idx;
        self.write(avail + 4 + 2 * slot, &head.to_le_bytes());
        self.write(avail + 2, &idx.to_le_bytes());
        true
    }

    fn count_writable(&mut self, spans: &[(u64, u64)], add: bool) {
        for &(a, l) in spans {
            for n in &mut self.writable[a as usize..(a + l) as usize] {
                *n = if add { *n + 1 } else { *n - 1 };
            }
        }
    }

    /// After a call into the device: queue `q` moved from `before` (next
    /// available, next used) to `queue`. Checks the moves and returns the
    /// used elements, whose chains are the driver's again.
    pub fn reap(&mut self, q: usize, queue: &Queue, before: (u16, u16)) -> Vec<Used> {
        let ring = &mut self.rings[q];
        ring.taken += u64::from(queue.next_avail().wrapping_sub(before.0));
        ring.used += u64::from(queue.next_used().wrapping_sub(before.1));
        assert!(
            ring.used <= ring.taken,
            "queue {q}: {} chains used, only {} taken",
            ring.used,
            ring.taken
        );
        assert!(
            ring.taken - ring.used <= u64::from(queue.size()),
            "queue {q}: holds {} chains in a queue of {}",
            ring.taken - ring.used,
            queue.size()
        );
        let used_ring = RINGS[q].2;
        let in_memory: u16 = self.mem.read_obj(GuestAddress(used_ring + 2)).unwrap();
        assert_eq!(in_memory, queue.next_used(), "queue {q}: used index in memory");
        let mut out = Vec::new();
        while self.rings[q].used_seen != queue.next_used() {
            let ring = &mut self.rings[q];
            let at = used_ring + 4 + 8 * u64::from(ring.used_seen % ring.size);
            ring.used_seen = ring.used_seen.wrapping_add(1);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let chain = u16::try_from(id)
                .ok()
                .and_then(|id| ring.in_flight.remove(&id))
                .unwrap_or_else(|| panic!("queue {q}: used head {id} is no chain in flight"));
            ring.free.extend(&chain.slots);
            if q != TX_QUEUE {
                self.count_writable(&chain.writable, false);
            }
            let mut bytes = Vec::new();
            for &(a, l) in &chain.writable {
                bytes.extend_from_slice(&self.shadow[a as usize..(a + l) as usize]);
            }
            out.push(Used { len, bytes });
        }
        out
    }

    /// The device wrote only the used rings and writable buffers in
    /// flight, never the sentinel; the shadow takes what it wrote. Call
    /// after each call into the device, before `reap`.
    pub fn check_memory(&mut self) {
        for &(start, len) in &GUEST_REGIONS {
            let end = (start + len as u64).min(SENTINEL_START);
            if start < end {
                let part = &mut self.scratch[start as usize..end as usize];
                self.mem.read_slice(part, GuestAddress(start)).unwrap();
            }
        }
        const CHUNK: usize = 256;
        let chunks = self.scratch.chunks(CHUNK).zip(self.shadow.chunks_mut(CHUNK));
        for (c, (now, was)) in chunks.enumerate() {
            if now == was {
                continue;
            }
            for i in (0..now.len()).filter(|&i| now[i] != was[i]) {
                let at = c * CHUNK + i;
                let used_ring = RINGS.iter().any(|r| (r.2..r.2 + 0x1000).contains(&(at as u64)));
                assert!(
                    used_ring || self.writable[at] > 0,
                    "the device wrote {:#x} over {:#x} at {at:#x}, outside its buffers",
                    now[i],
                    was[i]
                );
            }
            was.copy_from_slice(now);
        }
        let mut sentinel = [0u8; 256];
        for at in (SENTINEL_START..GUEST_END).step_by(sentinel.len()) {
            self.mem.read_slice(&mut sentinel, GuestAddress(at)).unwrap();
            assert!(
                sentinel.iter().all(|&b| b == SENTINEL_BYTE),
                "the device wrote the sentinel near {at:#x}"
            );
        }
    }
}
