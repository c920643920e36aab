//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2).
//!
//! The transport keeps the driver-visible register state. Queue setup is
//! only recorded while the driver configures it and validated as a whole
//! when the driver sets DRIVER_OK; only then are `Queue`s built and the
//! device activated. Nothing the guest writes can make it panic.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::events::{HostEvents, HOST_EVENT_BATCH};
use super::features::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use super::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};
use super::{Activation, Interrupt, IrqfdInterrupt, PassEnd, VirtioDevice, VirtioError, INTERRUPT_CONFIG};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// Subsystem vendor ID reported to the driver ("KILN").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KILN");
/// Where the driver writes a queue index to notify it; KVM ioeventfds are
/// registered here.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;
/// Device-specific configuration space starts here.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Register offsets (§4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = super::QUEUE_NOTIFY_OFFSET;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error(
        "virtio device has queue {index} with maximum size {max}; it must be a power of two up to 32768"
    )]
    BadQueueMax { index: usize, max: u16 },
    #[error("the driver set queue {index} to size {size}; it must be a power of two no larger than {max}")]
    QueueSize { index: usize, size: u32, max: u16 },
    #[error("the driver placed queue {index}'s {ring} at {addr:#x}, which is misaligned or zero")]
    QueueAddress {
        index: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("the driver placed queue {index} outside guest memory")]
    QueueOutsideMemory { index: usize },
    #[error("the device failed to activate: {0}")]
    Device(Box<VirtioError>),
    #[error("cannot create a queue notifier eventfd: {0}; check the open-file limit (ulimit -n)")]
    Notifier(io::Error),
    #[error(
        "cannot create the epoll set for a device's host events: {0}; check the open-file limit (ulimit -n)"
    )]
    HostEvents(io::Error),
}

/// What the driver wrote for one queue; turned into a `Queue` at DRIVER_OK.
#[derive(Clone, Copy, Debug)]
struct QueueSetup {
    max_size: u16,
    size: u32,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }

    fn build(&self, index: usize, event_idx: bool, mem: &GuestMemoryMmap) -> Result<Queue, MmioError> {
        let mut queue = Queue::new(self.max_size).map_err(|_| MmioError::BadQueueMax {
            index,
            max: self.max_size,
        })?;
        if !self.ready {
            return Ok(queue);
        }
        let size_err = || MmioError::QueueSize {
            index,
            size: self.size,
            max: self.max_size,
        };
        let size = u16::try_from(self.size).map_err(|_| size_err())?;
        queue.try_set_size(size).map_err(|_| size_err())?;
        let addr_err = |ring, addr| MmioError::QueueAddress { index, ring, addr };
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|_| addr_err("descriptor table", self.desc_table))?;
        // virtio-queue treats an available ring at 0 as "not configured".
        if self.avail_ring == 0 {
            return Err(addr_err("available ring", 0));
        }
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(|_| addr_err("available ring", self.avail_ring))?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(|_| addr_err("used ring", self.used_ring))?;
        // Checked here rather than with `Queue::is_valid`, which logs an
        // error for what is only a guest mistake.
        let size = u64::from(size);
        let rings = [
            (self.desc_table, 16 * size),
            (self.avail_ring, 6 + 2 * size),
            (self.used_ring, 6 + 8 * size),
        ];
        for (addr, len) in rings {
            // At most 6 + 8 * 32768 bytes.
            if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize) {
                return Err(MmioError::QueueOutsideMemory { index });
            }
        }
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(queue)
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqfdInterrupt>,
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver accepted a feature in a word above the first two.
    driver_features_beyond_64: bool,
    queue_sel: u32,
    setups: Vec<QueueSetup>,
    /// Built at DRIVER_OK; empty while the device is not active.
    queues: Vec<Queue>,
    /// One per queue: KVM signals them on `QueueNotify` writes, and we
    /// signal one ourselves when a pass yields with work left.
    queue_notifiers: Vec<EventFd>,
    /// The device's host fds; empty whenever the device is not active.
    host_events: Arc<HostEvents>,
    active: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemoryMmap, interrupt: Arc<IrqfdInterrupt>) -> Result<Self, MmioError> {
        let setups: Vec<QueueSetup> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueSetup::new(max))
            .collect();
        for (index, setup) in setups.iter().enumerate() {
            Queue::new(setup.max_size).map_err(|_| MmioError::BadQueueMax {
                index,
                max: setup.max_size,
            })?;
        }
        let queue_notifiers = setups
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::Notifier)?;
        let host_events = Arc::new(HostEvents::new().map_err(MmioError::HostEvents)?);
        Ok(Self {
            device,
            mem,
            interrupt,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_sel: 0,
            setups,
            queues: Vec::new(),
            queue_notifiers,
            host_events,
            active: false,
        })
    }

    /// The per-queue notifiers, in queue order, to register with KVM as
    /// ioeventfds and to watch in the event loop.
    pub fn queue_notifiers(&self) -> &[EventFd] {
        &self.queue_notifiers
    }

    /// The device's set of host fds, for the event loop to watch.
    pub fn host_events(&self) -> &Arc<HostEvents> {
        &self.host_events
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for a change the VMM makes while the driver runs it (a
    /// new medium, new rate limits); the transport's lock keeps it apart
    /// from queue and host-event processing.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The driver notified queue `index`, through the ioeventfd or a
    /// trapped `QueueNotify` write. Ignored unless the device is active and
    /// the queue ready. Runs one bounded pass; if it yields, the queue's
    /// notifier is signalled so the event loop comes back for the rest
    /// after serving everything else that is ready.
    pub fn notify_queue(&mut self, index: u32) {
        if !self.active {
            debug_guest!("virtio-mmio: notification for queue {index} before DRIVER_OK ignored");
            return;
        }
        let Some(queue) = self.queues.get(index as usize) else {
            warn_guest!("virtio-mmio: driver notified nonexistent queue {index}");
            return;
        };
        if !queue.ready() {
            debug_guest!("virtio-mmio: notification for disabled queue {index} ignored");
            return;
        }
        match self.device.process_queue(index as usize, &mut self.queues) {
            Ok(PassEnd::Drained) => {}
            Ok(PassEnd::Yielded) => self.rearm(index),
            Err(e) => {
                warn_guest!("virtio-mmio: queue {index} failed: {e}");
                self.needs_reset();
            }
        }
    }

    /// Serves the device's ready host fds, at most [`HOST_EVENT_BATCH`] of
    /// them; the rest stay ready for the next round of the event loop.
    /// Returns how many were ready.
    pub fn serve_host_events(&mut self) -> usize {
        if !self.active {
            // Nothing should be watched; make sure nothing spins.
            self.host_events.clear();
            return 0;
        }
        let mut ready = [EpollEvent::default(); HOST_EVENT_BATCH];
        let count = match self.host_events.ready(&mut ready) {
            Ok(count) => count,
            Err(e) => {
                log::error!("virtio-mmio: cannot read the device's host events: {e}");
                return 0;
            }
        };
        for event in &ready[..count] {
            // A failure earlier in this batch stopped the device.
            if !self.active {
                break;
            }
            let Ok(fd) = RawFd::try_from(event.data()) else {
                continue;
            };
            // Removed by the device earlier in this batch.
            let Some(watch) = self.host_events.lookup(fd) else {
                continue;
            };
            let ready = event.event_set();
            if let Err(e) = self
                .device
                .process_host_event(watch.token, ready, &mut self.queues)
            {
                warn_guest!("virtio-mmio: device {} failed: {e}", self.device.device_type());
                self.needs_reset();
                break;
            }
            // Reported forever otherwise, whatever the interest.
            if ready.intersects(EventSet::HANG_UP | EventSet::ERROR)
                && self.host_events.forget_unless_changed(fd, watch)
            {
                log::debug!(
                    "virtio-mmio: device {} host fd (token {}) hung up; no longer watched",
                    self.device.device_type(),
                    watch.token
                );
            }
        }
        count
    }

    /// Stops the device: its own reset, then no host fd is left watched.
    fn stop_device(&mut self) {
        self.device.reset();
        let left = self.host_events.clear();
        if left > 0 {
            log::debug!(
                "virtio-mmio: device {} left {left} host fds watched after its reset",
                self.device.device_type()
            );
        }
    }

    /// Schedules another pass over queue `index`.
    fn rearm(&mut self, index: u32) {
        let Some(notifier) = self.queue_notifiers.get(index as usize) else {
            return;
        };
        if let Err(e) = notifier.write(1) {
            // Only a counter at its maximum refuses, and then a pass is
            // pending anyway.
            log::error!("virtio-mmio: cannot reschedule queue {index}: {e}");
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.stop_device();
        }
        self.active = false;
        self.queues.clear();
        for setup in &mut self.setups {
            *setup = QueueSetup::new(setup.max_size);
        }
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_sel = 0;
        self.interrupt.clear();
    }

    /// Stops the device and asks the driver to reset it (§2.1.2).
    fn needs_reset(&mut self) {
        if self.active {
            self.stop_device();
        }
        self.active = false;
        self.queues.clear();
        self.device_status |= DEVICE_NEEDS_RESET;
        if self.device_status & DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.trigger(INTERRUPT_CONFIG) {
                error_guest!("virtio-mmio: cannot signal the guest: {e}");
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.device_features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 || self.driver_features_beyond_64 {
            warn_guest!("virtio-mmio: driver accepted features {unknown:#x} that were not offered");
            return false;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn_guest!(
                "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)"
            );
            return false;
        }
        true
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        let event_idx = self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let queues = self
            .setups
            .iter()
            .enumerate()
            .map(|(index, setup)| setup.build(index, event_idx, &self.mem))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        let ctx = Activation::new(
            self.driver_features,
            self.mem.clone(),
            interrupt,
            self.host_events.clone(),
        );
        if let Err(e) = self.device.activate(ctx) {
            // It may have got half-way.
            self.stop_device();
            return Err(MmioError::Device(Box::new(e)));
        }
        self.queues = queues;
        self.active = true;
        Ok(())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; drivers echo it back.
        let current = self.device_status & !DEVICE_NEEDS_RESET;
        let requested = value & 0xff & !DEVICE_NEEDS_RESET;
        if requested & current != current {
            warn_guest!(
                "virtio-mmio: driver cleared status bits {:#x} without a reset",
                current & !requested
            );
            return;
        }
        let added = requested & !current;
        let missing_prerequisite = (added & DRIVER != 0 && requested & ACKNOWLEDGE == 0)
            || (added & FEATURES_OK != 0 && requested & DRIVER == 0)
            || (added & DRIVER_OK != 0 && requested & FEATURES_OK == 0);
        if missing_prerequisite {
            warn_guest!("virtio-mmio: driver set status {requested:#x} out of order (was {current:#x})");
            return;
        }
        let mut latched = requested;
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver sees FEATURES_OK missing when it reads status back
            // (§3.1.1), and cannot reach DRIVER_OK.
            latched &= !(FEATURES_OK | DRIVER_OK);
        }
        self.device_status = latched | (self.device_status & DEVICE_NEEDS_RESET);
        if latched & added & DRIVER_OK != 0 {
            if self.device_status & DEVICE_NEEDS_RESET != 0 {
                warn_guest!("virtio-mmio: driver set DRIVER_OK on a device that needs a reset");
            } else if let Err(e) = self.activate() {
                warn_guest!(
                    "virtio-mmio: refusing to start device {}: {e}",
                    self.device.device_type()
                );
                self.needs_reset();
            }
        }
        if added & FAILED != 0 {
            debug_guest!(
                "virtio-mmio: driver gave up on device {}",
                self.device.device_type()
            );
        }
    }

    fn selected_setup(&mut self) -> Option<&mut QueueSetup> {
        self.setups.get_mut(self.queue_sel as usize)
    }

    /// Queue layout may change only before DRIVER_OK and while the queue
    /// is not ready (§4.2.2).
    fn writable_setup(&mut self) -> Option<&mut QueueSetup> {
        let driver_ok = self.device_status & DRIVER_OK != 0;
        let sel = self.queue_sel;
        match self.setups.get_mut(sel as usize) {
            Some(setup) if !driver_ok && !setup.ready => Some(setup),
            Some(_) => {
                warn_guest!("virtio-mmio: driver changed queue {sel} while it is in use");
                None
            }
            None => {
                warn_guest!("virtio-mmio: driver configured nonexistent queue {sel}");
                None
            }
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel as usize;
        let driver_ok = self.device_status & DRIVER_OK != 0;
        let Some(setup) = self.setups.get_mut(sel) else {
            warn_guest!("virtio-mmio: driver enabled nonexistent queue {sel}");
            return;
        };
        match (value, driver_ok) {
            (0, _) => {
                // Stopping a queue is always allowed; the device stops
                // looking at it at once.
                setup.ready = false;
                if let Some(queue) = self.queues.get_mut(sel) {
                    queue.set_ready(false);
                }
            }
            (1, false) => setup.ready = true,
            _ => warn_guest!("virtio-mmio: driver wrote {value} to QueueReady of queue {sel}"),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let features_half = |features: u64, sel: u32| match sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => features_half(self.device.device_features(), self.device_features_sel),
            reg::QUEUE_NUM_MAX => self.selected_setup().map_or(0, |s| u32::from(s.max_size)),
            reg::QUEUE_READY => self.selected_setup().map_or(0, |s| u32::from(s.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status,
            // No shared memory regions: length and base read as all ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.device.config_generation(),
            _ => {
                debug_guest!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let set_half = |target: &mut u64, high: bool| {
            let (shift, keep) = if high {
                (32, 0x0000_0000_ffff_ffff)
            } else {
                (0, 0xffff_ffff_0000_0000)
            };
            *target = (*target & keep) | (u64::from(value) << shift);
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.device_status & FEATURES_OK != 0 {
                    warn_guest!("virtio-mmio: driver changed features after FEATURES_OK");
                } else if self.driver_features_sel <= 1 {
                    set_half(&mut self.driver_features, self.driver_features_sel == 1);
                } else if value != 0 {
                    // Nothing is offered past bit 63: negotiation must fail.
                    self.driver_features_beyond_64 = true;
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(setup) = self.writable_setup() {
                    setup.size = value;
                }
            }
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                if let Some(setup) = self.writable_setup() {
                    set_half(&mut setup.desc_table, offset == reg::QUEUE_DESC_HIGH);
                }
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                if let Some(setup) = self.writable_setup() {
                    set_half(&mut setup.avail_ring, offset == reg::QUEUE_DRIVER_HIGH);
                }
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                if let Some(setup) = self.writable_setup() {
                    set_half(&mut setup.used_ring, offset == reg::QUEUE_DEVICE_HIGH);
                }
            }
            reg::SHM_SEL => {}
            _ => warn_guest!("virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        // Registers are 32 bits wide and aligned (§4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_guest!("virtio-mmio: {}-byte read at {offset:#x} ignored", data.len());
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_guest!("virtio-mmio: {}-byte write at {offset:#x} ignored", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            warn_guest!("virtio-mmio: unaligned write at {offset:#x} ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
