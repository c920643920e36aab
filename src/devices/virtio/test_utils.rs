//! Shared unit-test harness for virtio devices: the driver's side of a split
//! ring laid out wherever a test wants it (several memory regions, rings
//! overlapping, indices near the wrap), descriptor builders, an interrupt
//! that counts, a queue whose driver publishes at the worst moment, and a
//! device wired to its transport and an event loop.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{DescriptorChain, Error, Queue, QueueGuard, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::status::DRIVER_OK;
use super::{
    Activation, HostEvents, Interrupt, IrqfdInterrupt, MmioEventHandler, MmioTransport, VirtioDevice,
};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT_FLAG: u16 = 4;

/// Guest memory made of `(start, len)` regions.
pub fn memory(regions: &[(u64, usize)]) -> GuestMemoryMmap {
    let ranges: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// Bytes a test can recognise wherever they land: 0, 1, ... 250, 0, ...
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `len` bytes of guest memory at `addr`.
pub fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

#[derive(Default)]
pub struct CountingInterrupt(pub AtomicU32);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, _reason: u32) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A descriptor as the driver fills it in; chains are linked in order.
#[derive(Clone, Copy, Debug)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

/// Device-readable.
pub fn r(addr: u64, len: u32) -> D {
    D { addr, len, flags: 0 }
}

/// Device-writable.
pub fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        flags: WRITE,
    }
}

/// Refers to an indirect table of `entries` descriptors at `addr`.
pub fn indirect(addr: u64, entries: u32) -> D {
    D {
        addr,
        len: 16 * entries,
        flags: INDIRECT_FLAG,
    }
}

pub fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Links `descs` into one chain stored at table index `first`.
pub fn link(descs: &[D], first: u16) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let last = i + 1 == descs.len();
            let flags = if last { d.flags } else { d.flags | NEXT };
            let next = if last { 0 } else { first + i as u16 + 1 };
            raw(d.addr, d.len, flags, next)
        })
        .collect()
}

/// Writes descriptors as a table at `addr` (the queue's, or an indirect one).
pub fn write_table(mem: &GuestMemoryMmap, addr: u64, table: &[RawDescriptor]) {
    for (i, desc) in table.iter().enumerate() {
        mem.write_obj(*desc, GuestAddress(addr + 16 * i as u64)).unwrap();
    }
}

/// The driver's view of one split virtqueue (§2.7): where its three parts
/// live, and the driver's moves on them.
#[derive(Clone, Copy, Debug)]
pub struct DriverRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl DriverRing {
    /// Descriptor table at `base`, the available ring right after it, the
    /// used ring after that (4-aligned), all zeroed.
    pub fn at(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self::with_layout(mem, size, base, avail, used)
    }

    /// The three parts wherever the test wants them, even overlapping.
    pub fn with_layout(mem: &GuestMemoryMmap, size: u16, desc: u64, avail: u64, used: u64) -> Self {
        let ring = Self {
            size,
            desc,
            avail,
            used,
        };
        ring.set_avail_idx(mem, 0);
        mem.write_obj(0u16, GuestAddress(avail)).unwrap();
        mem.write_obj(0u32, GuestAddress(used)).unwrap();
        ring
    }

    /// A ready device-side queue over this ring, as the transport builds
    /// it at DRIVER_OK.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size.max(256)).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used)).unwrap();
        q.set_ready(true);
        q
    }

    /// Like [`DriverRing::queue`], with both rings (and the device) already
    /// at index `start`, e.g. just before the u16 wrap.
    pub fn queue_from(&self, mem: &GuestMemoryMmap, start: u16) -> Queue {
        let mut q = self.queue();
        q.set_next_avail(start);
        q.set_next_used(start);
        self.set_avail_idx(mem, start);
        mem.write_obj(start, GuestAddress(self.used + 2)).unwrap();
        q
    }

    /// Starts the ring afresh (both indices 0) with `table` at descriptor
    /// 0 and `heads` available; returns the device's queue over it.
    pub fn load(&self, mem: &GuestMemoryMmap, table: &[RawDescriptor], heads: &[u16]) -> Queue {
        let ring = Self::with_layout(mem, self.size, self.desc, self.avail, self.used);
        ring.set_desc_table(mem, 0, table);
        ring.publish(mem, heads);
        ring.queue()
    }

    pub fn set_desc_table(&self, mem: &GuestMemoryMmap, first: u16, table: &[RawDescriptor]) {
        write_table(mem, self.desc + 16 * u64::from(first), table);
    }

    /// Publishes `heads` after what is already available.
    pub fn publish(&self, mem: &GuestMemoryMmap, heads: &[u16]) {
        let mut idx = self.avail_idx(mem);
        for &head in heads {
            let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(mem, idx);
    }

    pub fn avail_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// `used_event`, after the available ring (EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    pub fn used_flags(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used)).unwrap()
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// (id, len) of the used-ring entry for used index `i`.
    pub fn used(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The heads on the used ring from index `from` up to its index.
    pub fn used_heads(&self, mem: &GuestMemoryMmap, from: u16) -> Vec<u32> {
        let to = self.used_idx(mem);
        (0..to.wrapping_sub(from))
            .map(|i| self.used(mem, from.wrapping_add(i)).0)
            .collect()
    }
}

/// The virtio-mmio driver start-up (§4.2.3.1): reset, negotiate
/// `features`, set up one queue per ring, DRIVER_OK. Returns the status
/// read back.
pub fn start_driver(transport: &mut dyn BusDevice, features: u64, rings: &[DriverRing]) -> u32 {
    let mut write = |offset: u64, value: u32| transport.write(offset, &value.to_le_bytes());
    const STATUS: u64 = 0x070;
    write(STATUS, 0);
    write(STATUS, 1 | 2);
    for (sel, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
        write(0x024, sel);
        write(0x020, half);
    }
    write(STATUS, 1 | 2 | 8);
    for (index, ring) in rings.iter().enumerate() {
        write(0x030, index as u32);
        write(0x038, u32::from(ring.size));
        for (low, addr) in [(0x080, ring.desc), (0x090, ring.avail), (0x0a0, ring.used)] {
            write(low, addr as u32);
            write(low + 4, (addr >> 32) as u32);
        }
        write(0x044, 1);
    }
    write(STATUS, 1 | 2 | 8 | 4);
    let mut status = [0u8; 4];
    transport.read(STATUS, &mut status);
    u32::from_le_bytes(status)
}

/// When [`RacingQueue`] lets the driver act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// After the device's last read of the available index, before it
    /// turns notifications back on and reads the index again.
    Before,
    /// Right after that re-check.
    After,
}

/// A queue whose driver acts at the worst moments: `race` runs around the
/// re-check inside every `enable_notification`.
pub struct RacingQueue<'h> {
    pub inner: Queue,
    pub race: Box<dyn FnMut(Recheck) + 'h>,
}

impl<'a> QueueGuard<'a> for RacingQueue<'_> {
    type G = &'a mut Queue;
}

impl QueueT for RacingQueue<'_> {
    fn new(max_size: u16) -> Result<Self, Error> {
        Ok(Self {
            inner: Queue::new(max_size)?,
            race: Box::new(|_| {}),
        })
    }
    fn is_valid<M: GuestMemory>(&self, mem: &M) -> bool {
        self.inner.is_valid(mem)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn lock(&mut self) -> &mut Queue {
        &mut self.inner
    }
    fn max_size(&self) -> u16 {
        self.inner.max_size()
    }
    fn size(&self) -> u16 {
        self.inner.size()
    }
    fn set_size(&mut self, size: u16) {
        self.inner.set_size(size)
    }
    fn ready(&self) -> bool {
        self.inner.ready()
    }
    fn set_ready(&mut self, ready: bool) {
        self.inner.set_ready(ready)
    }
    fn set_desc_table_address(&mut self, low: Option<u32>, high: Option<u32>) {
        self.inner.set_desc_table_address(low, high)
    }
    fn set_avail_ring_address(&mut self, low: Option<u32>, high: Option<u32>) {
        self.inner.set_avail_ring_address(low, high)
    }
    fn set_used_ring_address(&mut self, low: Option<u32>, high: Option<u32>) {
        self.inner.set_used_ring_address(low, high)
    }
    fn set_event_idx(&mut self, enabled: bool) {
        self.inner.set_event_idx(enabled)
    }
    fn avail_idx<M>(&self, mem: &M, order: Ordering) -> Result<Wrapping<u16>, Error>
    where
        M: GuestMemory + ?Sized,
    {
        self.inner.avail_idx(mem, order)
    }
    fn used_idx<M: GuestMemory>(&self, mem: &M, order: Ordering) -> Result<Wrapping<u16>, Error> {
        self.inner.used_idx(mem, order)
    }
    fn add_used<M: GuestMemory>(&mut self, mem: &M, head_index: u16, len: u32) -> Result<(), Error> {
        self.inner.add_used(mem, head_index, len)
    }
    fn enable_notification<M: GuestMemory>(&mut self, mem: &M) -> Result<bool, Error> {
        (self.race)(Recheck::Before);
        let more = self.inner.enable_notification(mem);
        (self.race)(Recheck::After);
        more
    }
    fn disable_notification<M: GuestMemory>(&mut self, mem: &M) -> Result<(), Error> {
        self.inner.disable_notification(mem)
    }
    fn needs_notification<M: GuestMemory>(&mut self, mem: &M) -> Result<bool, Error> {
        self.inner.needs_notification(mem)
    }
    fn next_avail(&self) -> u16 {
        self.inner.next_avail()
    }
    fn set_next_avail(&mut self, next_avail: u16) {
        self.inner.set_next_avail(next_avail)
    }
    fn next_used(&self) -> u16 {
        self.inner.next_used()
    }
    fn set_next_used(&mut self, next_used: u16) {
        self.inner.set_next_used(next_used)
    }
    fn desc_table(&self) -> u64 {
        self.inner.desc_table()
    }
    fn avail_ring(&self) -> u64 {
        self.inner.avail_ring()
    }
    fn used_ring(&self) -> u64 {
        self.inner.used_ring()
    }
    fn event_idx_enabled(&self) -> bool {
        self.inner.event_idx_enabled()
    }
    fn pop_descriptor_chain<M>(&mut self, mem: M) -> Option<DescriptorChain<M>>
    where
        M: Clone + Deref,
        M::Target: GuestMemory,
    {
        self.inner.pop_descriptor_chain(mem)
    }
}

/// What the transport hands a device at DRIVER_OK, for a driver that
/// accepted `features`, with a fresh set of host events.
pub fn activation(features: u64, mem: GuestMemoryMmap, interrupt: Arc<dyn Interrupt>) -> Activation {
    Activation::new(features, mem, interrupt, Arc::new(HostEvents::new().unwrap()))
}

/// The event loop a test runs by hand (`run_with_timeout(0)`).
pub type TestLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Counts its eventfd's events: stands for the signal watcher, the
/// console, another device.
struct OtherSource {
    evt: EventFd,
    served: Arc<AtomicU32>,
}

impl MutEventSubscriber for OtherSource {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.evt.read();
        self.served.fetch_add(1, Ordering::SeqCst);
    }
}

/// Another event source in `event_loop`: signal the eventfd, then see how
/// often it was served.
pub fn other_source(event_loop: &mut TestLoop) -> (EventFd, Arc<AtomicU32>) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let served = Arc::new(AtomicU32::new(0));
    event_loop.add_subscriber(Arc::new(Mutex::new(OtherSource {
        evt: evt.try_clone().unwrap(),
        served: served.clone(),
    })));
    (evt, served)
}

/// A device behind its transport, with the transport's handler in an event
/// loop of its own, as `attach_mmio_device` wires it (without KVM).
pub struct Wired<D: VirtioDevice> {
    pub transport: Arc<Mutex<MmioTransport<D>>>,
    pub event_loop: TestLoop,
    /// Clones of the queue notifiers: what a guest's `QueueNotify` signals.
    pub kicks: Vec<EventFd>,
}

pub fn wire<D: VirtioDevice + 'static>(device: D, mem: &GuestMemoryMmap) -> Wired<D> {
    let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem.clone(), irq).unwrap()));
    let handler = MmioEventHandler::new(transport.clone()).unwrap();
    let kicks = handler
        .queue_notifiers()
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let mut event_loop: TestLoop = EventManager::new().unwrap();
    event_loop.add_subscriber(Arc::new(Mutex::new(handler)));
    Wired {
        transport,
        event_loop,
        kicks,
    }
}

impl<D: VirtioDevice + 'static> Wired<D> {
    /// One round of the event loop without waiting; how many events it served.
    pub fn run(&mut self) -> usize {
        self.event_loop.run_with_timeout(0).unwrap()
    }

    /// The driver's start-up over `rings`, with `features`; asserts it
    /// reached DRIVER_OK.
    pub fn start(&self, features: u64, rings: &[DriverRing]) {
        let status = start_driver(&mut *self.transport.lock().unwrap(), features, rings);
        assert_eq!(status & DRIVER_OK, DRIVER_OK, "status {status:#x}");
    }

    /// The driver writes 0 to Status.
    pub fn reset(&self) {
        self.transport.lock().unwrap().write(0x070, &0u32.to_le_bytes());
    }

    pub fn status(&self) -> u32 {
        let mut data = [0u8; 4];
        self.transport.lock().unwrap().read(0x070, &mut data);
        u32::from_le_bytes(data)
    }
}
