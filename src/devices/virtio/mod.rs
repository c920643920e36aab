//! virtio devices over the virtio-mmio transport (virtio 1.2, modern only).
//!
//! A device implements [`VirtioDevice`]; [`MmioDevices::attach`] gives it
//! the next [`MmioSlot`] and [`attach_mmio_device`] wraps it in an
//! [`MmioTransport`], connects its queue notifications (ioeventfd) and
//! interrupt (irqfd) to KVM, puts it on the MMIO bus and hands its queue
//! notifiers and its own host fds ([`HostEvents`]) to the event loop.
//!
//! A new device kind is a folder here (its `VirtioDevice`), a `pub mod`
//! line below, and one `attach` line in the VMM builder. Shared pieces:
//! [`queue::drain_queue`] for bounded passes, [`ranges`] for a chain's
//! guest memory spans, `test_utils` for unit tests.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::{Bus, BusError};
use crate::devices::EventLoop;
use crate::vstate::memory::GuestMemoryMmap;

pub mod block;
mod chain;
pub mod events;
pub mod handler;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod ranges;
pub mod slots;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

pub use events::{HostEvents, Watched};
pub use handler::MmioEventHandler;
pub use mmio::{MmioError, MmioTransport};
pub use queue::{PassEnd, QueueError, QueueRules};
pub use slots::{MmioDevices, MmioSlot, MmioSlots};

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Transport-level feature bits (virtio 1.2 §6).
pub mod features {
    pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
    pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
    pub const VIRTIO_F_VERSION_1: u32 = 32;
}

/// `InterruptStatus` bits: a used buffer, or a configuration change.
pub const INTERRUPT_VRING: u32 = 1;
pub const INTERRUPT_CONFIG: u32 = 2;

/// A device behind a virtio transport.
///
/// The transport owns the queues and hands them to the device: when the
/// driver notifies a queue ([`VirtioDevice::process_queue`]), and when a
/// host fd the device watches is ready
/// ([`VirtioDevice::process_host_event`]). Calls come on whichever thread
/// saw the event (the VMM thread, or a vCPU thread for a trapped
/// `QueueNotify`), always under the transport's lock, never at the same
/// time.
pub trait VirtioDevice: Send {
    /// virtio device ID (§5), e.g. 2 for block.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (powers of two); the length is the number
    /// of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver, including `VIRTIO_F_VERSION_1`.
    fn device_features(&self) -> u64;
    /// Reads device config space. Any offset and length: bytes past the end
    /// of the config read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Changes whenever the config space changes under the driver (a new
    /// disk size), so a driver can tell a torn read (§4.2.2
    /// `ConfigGeneration`). The device raises `INTERRUPT_CONFIG` too.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Called when the driver sets DRIVER_OK with a consistent setup, on
    /// the vCPU thread that wrote it: must not block. The device may add
    /// its host fds to `ctx.host_events` here or later. If it fails,
    /// [`VirtioDevice::reset`] follows.
    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError>;
    /// Handles buffers the driver made available on queue `index` (always a
    /// ready queue of an activated device), in one bounded pass (see
    /// [`queue::drain_queue`]). All the device's queues are in `queues`, by
    /// index; the others may not be ready. [`PassEnd::Yielded`] asks the
    /// transport for another pass once the event loop has served everything
    /// else. An error marks the device as needing a reset.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError>;
    /// A host fd the device registered under `token` is ready for `ready`
    /// (which may include `EventSet::HANG_UP` or `EventSet::ERROR`: that is
    /// reported once, and the fd is removed after this call unless the
    /// device registered it again). Bounded work, like a queue pass; the
    /// set is level-triggered, so an fd left ready after
    /// [`PassEnd::Yielded`] is reported again after everything else that is
    /// ready. An fd the device cannot serve now must get an empty interest
    /// (see [`HostEvents::modify`]). An error marks the device as needing a
    /// reset. Calls may be spurious (the token was just removed or reused).
    fn process_host_event(
        &mut self,
        token: u64,
        ready: EventSet,
        queues: &mut [Queue],
    ) -> Result<PassEnd, QueueError> {
        let _ = (token, ready, queues);
        Ok(PassEnd::Drained)
    }
    /// Returns to the pre-activation state: drops memory and interrupt, and
    /// removes its fds from the host events (before closing them). The
    /// transport then clears the set anyway. Also called after a failed
    /// activation.
    fn reset(&mut self);
}

/// What a device gets when the driver starts it.
#[derive(Clone)]
pub struct Activation {
    pub acked_features: u64,
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// How to walk the queues (indirect descriptors, pass budget).
    pub rules: QueueRules,
    /// The device's own set of host fds, watched by the event loop.
    pub host_events: Arc<HostEvents>,
}

impl Activation {
    /// The activation for a driver that accepted `acked_features`.
    pub fn new(
        acked_features: u64,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        host_events: Arc<HostEvents>,
    ) -> Self {
        Self {
            acked_features,
            mem,
            interrupt,
            rules: QueueRules::negotiated(acked_features),
            host_events,
        }
    }
}

/// How a device tells the driver something happened; like
/// `vm_superio::Trigger`, plus the reason (`INTERRUPT_VRING` or
/// `INTERRUPT_CONFIG`).
pub trait Interrupt: Send + Sync {
    fn trigger(&self, reason: u32) -> io::Result<()>;
}

/// An interrupt delivered through a KVM irqfd, with the `InterruptStatus`
/// register it shares with the MMIO transport.
#[derive(Debug)]
pub struct IrqfdInterrupt {
    irqfd: EventFd,
    status: AtomicU32,
}

impl IrqfdInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            irqfd,
            status: AtomicU32::new(0),
        }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Current `InterruptStatus` bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver handled `bits` (`InterruptACK`).
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl Interrupt for IrqfdInterrupt {
    fn trigger(&self, reason: u32) -> io::Result<()> {
        // Latch the reason before raising the line so the driver's
        // interrupt handler cannot miss it.
        self.status.fetch_or(reason, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("cannot create an eventfd for a virtio device: {0}; check the open-file limit (ulimit -n)")]
    EventFd(io::Error),
    #[error("cannot connect virtio-mmio interrupt GSI {gsi} to KVM: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("cannot register the queue {queue} notifier at {addr:#x} with KVM: {source}")]
    Ioeventfd {
        queue: usize,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("cannot place a virtio-mmio device at {base:#x}: {source}")]
    Bus { base: u64, source: BusError },
    #[error("virtio-mmio window at {base:#x} is {len:#x} bytes; it needs at least {min:#x}")]
    WindowTooSmall { base: u64, len: u64, min: u64 },
    #[error(transparent)]
    Transport(#[from] MmioError),
    #[error("more than {max} virtio devices (disks, network cards and vsock together); kiln has {max} virtio-mmio slots, remove some")]
    TooManyDevices { max: u32 },
    #[error("virtio device failed to start: {0}")]
    Activation(String),
}

/// A device behind its transport, shared by the MMIO bus, the event loop
/// and the VMM.
pub type SharedTransport<D> = Arc<Mutex<MmioTransport<D>>>;

/// Creates the transport around `device`, registers one ioeventfd per queue
/// (`QueueNotify` with datamatch = queue index) and the irqfd for
/// `slot.gsi` with KVM, inserts the transport into `mmio_bus` at the slot,
/// and adds its queue-event subscriber to `event_loop`.
///
/// `mem` is cloned (its regions are shared, not copied). Needs an in-kernel
/// irqchip for the irqfd. Returns the transport, through which the VMM may
/// change the device while it runs.
pub fn attach_mmio_device<D: VirtioDevice + 'static>(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_loop: &mut EventLoop,
    slot: MmioSlot,
    device: D,
) -> Result<SharedTransport<D>, VirtioError> {
    if slot.len < mmio::CONFIG_SPACE_OFFSET {
        return Err(VirtioError::WindowTooSmall {
            base: slot.base,
            len: slot.len,
            min: mmio::CONFIG_SPACE_OFFSET,
        });
    }
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
    let interrupt = Arc::new(IrqfdInterrupt::new(irqfd));
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        mem.clone(),
        interrupt.clone(),
    )?));
    // KVM and the event loop share the transport's notifiers.
    let handler = MmioEventHandler::new(transport.clone())?;
    let queue_evts = handler.queue_notifiers();

    let notify_addr = IoEventAddress::Mmio(slot.base + mmio::QUEUE_NOTIFY_OFFSET);
    let mut registered = Vec::new();
    let unregister = |registered: &[usize]| {
        for &queue in registered {
            // Best effort: the VM is being torn down after this error anyway.
            let _ = vm.unregister_ioevent(&queue_evts[queue], &notify_addr, queue as u32);
        }
    };
    for (queue, evt) in queue_evts.iter().enumerate() {
        if let Err(source) = vm.register_ioevent(evt, &notify_addr, queue as u32) {
            unregister(&registered);
            return Err(VirtioError::Ioeventfd {
                queue,
                addr: slot.base + mmio::QUEUE_NOTIFY_OFFSET,
                source,
            });
        }
        registered.push(queue);
    }
    if let Err(source) = vm.register_irqfd(interrupt.irqfd(), slot.gsi) {
        unregister(&registered);
        return Err(VirtioError::Irqfd {
            gsi: slot.gsi,
            source,
        });
    }
    if let Err(source) = mmio_bus.insert(slot.base, slot.len, transport.clone()) {
        unregister(&registered);
        let _ = vm.unregister_irqfd(interrupt.irqfd(), slot.gsi);
        return Err(VirtioError::Bus {
            base: slot.base,
            source,
        });
    }
    event_manager::SubscriberOps::add_subscriber(event_loop, Arc::new(Mutex::new(handler)));
    Ok(transport)
}

/// Copies the part of `config` at `offset` into `data`; the rest reads as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqfd_interrupt_latches_and_signals() {
        let irq = IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        irq.trigger(INTERRUPT_VRING).unwrap();
        irq.trigger(INTERRUPT_CONFIG).unwrap();
        assert_eq!(irq.status(), INTERRUPT_VRING | INTERRUPT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.acknowledge(INTERRUPT_VRING);
        assert_eq!(irq.status(), INTERRUPT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn config_reads_clip_and_zero_fill() {
        let config = [1, 2, 3, 4];
        let mut out = [0xff; 3];
        read_config_bytes(&config, 2, &mut out);
        assert_eq!(out, [3, 4, 0]);
        read_config_bytes(&config, 9, &mut out);
        assert_eq!(out, [0, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut out);
        assert_eq!(out, [0, 0, 0]);
    }

    #[test]
    fn attach_wires_kvm_bus_and_event_loop() {
        use vm_memory::GuestAddress;
        use vmm_sys_util::tempfile::TempFile;

        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipping: /dev/kvm is not available");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut bus = Bus::new();
        let mut event_loop = EventLoop::new().unwrap();
        let image = TempFile::new().unwrap();
        image.as_file().set_len(1 << 20).unwrap();
        let disk = || {
            block::BlockDevice::new(block::BlockConfig {
                read_only: true,
                ..block::BlockConfig::new(image.as_path())
            })
            .unwrap()
        };

        let slot = MmioSlot::from_layout(0).unwrap();
        attach_mmio_device(&vm, &mem, &mut bus, &mut event_loop, slot, disk()).unwrap();
        let mut word = [0u8; 4];
        assert!(bus.read(slot.base, &mut word));
        assert_eq!(u32::from_le_bytes(word), mmio::MMIO_MAGIC_VALUE);
        assert!(bus.read(slot.base + 8, &mut word));
        assert_eq!(u32::from_le_bytes(word), block::BLOCK_DEVICE_ID);

        // The same slot again: KVM already has that notifier.
        let err = attach_mmio_device(&vm, &mem, &mut bus, &mut event_loop, slot, disk());
        assert!(
            matches!(err, Err(VirtioError::Ioeventfd { .. })),
            "{:?}",
            err.err()
        );

        // An overlapping window with a free GSI: the bus refuses it and the
        // KVM registrations are undone, so the slot can be used afterwards.
        let clash = MmioSlot {
            index: 1,
            base: slot.base - 0x800,
            gsi: slot.gsi + 1,
            ..slot
        };
        let err = attach_mmio_device(&vm, &mem, &mut bus, &mut event_loop, clash, disk());
        assert!(matches!(err, Err(VirtioError::Bus { .. })), "{:?}", err.err());
        let next = MmioSlot::from_layout(1).unwrap();
        attach_mmio_device(&vm, &mem, &mut bus, &mut event_loop, next, disk()).unwrap();

        let tiny = MmioSlot {
            len: 0x80,
            ..MmioSlot::from_layout(2).unwrap()
        };
        let err = attach_mmio_device(&vm, &mem, &mut bus, &mut event_loop, tiny, disk());
        assert!(matches!(err, Err(VirtioError::WindowTooSmall { .. })));
    }
}
