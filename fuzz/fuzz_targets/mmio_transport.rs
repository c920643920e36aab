//! Drives the virtio-mmio transport around a real virtio-blk device with
//! arbitrary register reads, writes (any offset and size, config space
//! included), notifications and guest memory writes, and checks after
//! every step what the driver can rely on:
//!
//! - status bits only accumulate until a reset, in order (DRIVER_OK needs
//!   FEATURES_OK needs DRIVER needs ACKNOWLEDGE), and FEATURES_OK stays
//!   set only for features the device offered, VERSION_1 among them;
//! - the device is active exactly when DRIVER_OK is set without
//!   DEVICE_NEEDS_RESET, was activated with the features the driver wrote,
//!   and a well-formed queue setup is never refused;
//! - the queue layout is frozen from DRIVER_OK: the device only ever sees
//!   the layout the driver wrote before, and only on a ready queue inside
//!   guest memory;
//! - a reset returns everything to zero; DEVICE_NEEDS_RESET raised on a
//!   running device comes with a configuration interrupt;
//! - identification registers, device features and the config space read
//!   as they should, and misaligned register accesses read as zero.
#![no_main]

use std::sync::{Arc, Mutex, MutexGuard};

use kiln::devices::bus::BusDevice;
use kiln::devices::virtio::block::{BlockConfig, BlockDevice, BLOCK_DEVICE_ID};
use kiln::devices::virtio::features::VIRTIO_F_VERSION_1;
use kiln::devices::virtio::mmio::{CONFIG_SPACE_OFFSET, MMIO_MAGIC_VALUE, MMIO_VERSION, VENDOR_ID};
use kiln::devices::virtio::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK};
use kiln::devices::virtio::{
    Activation, IrqfdInterrupt, MmioTransport, PassEnd, QueueError, VirtioDevice, VirtioError,
    INTERRUPT_CONFIG, INTERRUPT_VRING,
};
use kiln::vstate::memory::GuestMemoryMmap;
use kiln_fuzz::mmio_input::{reg, Op};
use kiln_fuzz::{guest_memory, in_guest_memory, scratch_file, GUEST_REGIONS};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const IMAGE_LEN: u64 = 64 * 1024;

/// A queue's layout as the driver wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Layout {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Layout {
    fn of(queue: &Queue) -> Self {
        Self {
            size: u32::from(queue.size()),
            desc: queue.desc_table(),
            avail: queue.avail_ring(),
            used: queue.used_ring(),
        }
    }

    /// Whether a device must accept this layout (§2.7 alignment, sizes a
    /// power of two up to the maximum, rings in guest memory). kiln also
    /// refuses an available ring at 0, which virtio-queue reserves.
    fn acceptable(&self, max_size: u16) -> bool {
        let size = u64::from(self.size);
        self.size.is_power_of_two()
            && self.size <= u32::from(max_size)
            && self.desc.is_multiple_of(16)
            && self.avail.is_multiple_of(2)
            && self.avail != 0
            && self.used.is_multiple_of(4)
            && in_guest_memory(self.desc, 16 * size)
            && in_guest_memory(self.avail, 6 + 2 * size)
            && in_guest_memory(self.used, 6 + 8 * size)
    }
}

/// What the device saw, and what the harness expects it to see.
#[derive(Default)]
struct Seen {
    /// Features the device is active with.
    active: Option<u64>,
    /// The layout the driver wrote for each queue before DRIVER_OK, for
    /// the device to check what it is handed.
    frozen: Option<(Layout, bool)>,
}

/// The block device, with checks on every call the transport makes.
struct Observed {
    inner: BlockDevice,
    seen: Arc<Mutex<Seen>>,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioDevice for Observed {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        let acked = ctx.acked_features;
        let offered = self.inner.device_features();
        assert!(
            lock(&self.seen).active.is_none(),
            "activated twice without a reset"
        );
        assert_eq!(acked & !offered, 0, "activated with features never offered");
        assert_ne!(acked & 1 << VIRTIO_F_VERSION_1, 0, "activated without VERSION_1");
        self.inner.activate(ctx)?;
        lock(&self.seen).active = Some(acked);
        Ok(())
    }
    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        {
            let queue = &queues[index];
            let seen = lock(&self.seen);
            assert!(
                seen.active.is_some(),
                "queue {index} processed on an inactive device"
            );
            assert!(queue.ready(), "queue {index} processed while not ready");
            let layout = Layout::of(queue);
            assert!(
                layout.acceptable(self.inner.queue_max_sizes()[index]),
                "device handed a bad queue: {layout:x?}"
            );
            let frozen = seen.frozen.expect("DRIVER_OK seen by the harness");
            assert_eq!((layout, true), frozen, "queue layout changed after DRIVER_OK");
        }
        self.inner.process_queue(index, queues)
    }
    fn reset(&mut self) {
        lock(&self.seen).active = None;
        self.inner.reset()
    }
}

/// The driver-side state the harness tracks from its own writes, by the
/// rules of §4.2.2 (only queue 0 exists).
#[derive(Default)]
struct Driver {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// A non-zero write to a feature word past the second.
    features_beyond_64: bool,
    queue_sel: u32,
    layout: Layout,
    ready: bool,
}

struct Harness {
    t: MmioTransport<Observed>,
    seen: Arc<Mutex<Seen>>,
    irq: Arc<IrqfdInterrupt>,
    mem: GuestMemoryMmap,
    driver: Driver,
    offered: u64,
    max_size: u16,
    capacity: u64,
}

impl Harness {
    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xa5; len];
        self.t.read(offset, &mut data);
        data
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let data = self.read(offset, 4);
        u32::from_le_bytes([data[0], data[1], data[2], data[3]])
    }

    /// A guest write, with the driver model updated first from the state
    /// the device had before it.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 4 && offset.is_multiple_of(4) && offset < CONFIG_SPACE_OFFSET {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.model_write(offset, value);
        }
        let status_before = self.t.device_status();
        self.t.write(offset, data);
        self.check(offset, data, status_before);
    }

    fn model_write(&mut self, offset: u64, value: u32) {
        let d = &mut self.driver;
        let driver_ok = d.status & DRIVER_OK != 0;
        let layout_open = !driver_ok && !d.ready && d.queue_sel == 0;
        let set_half = |target: &mut u64, high: bool| {
            let shift = if high { 32 } else { 0 };
            *target = *target & !(0xffff_ffff << shift) | u64::from(value) << shift;
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => d.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => d.driver_features_sel = value,
            reg::DRIVER_FEATURES if d.status & FEATURES_OK == 0 => match d.driver_features_sel {
                0 | 1 => set_half(&mut d.driver_features, d.driver_features_sel == 1),
                _ => d.features_beyond_64 |= value != 0,
            },
            reg::QUEUE_SEL => d.queue_sel = value,
            reg::QUEUE_NUM if layout_open => d.layout.size = value,
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH if layout_open => {
                set_half(&mut d.layout.desc, offset == reg::QUEUE_DESC_HIGH)
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH if layout_open => {
                set_half(&mut d.layout.avail, offset == reg::QUEUE_DRIVER_HIGH)
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH if layout_open => {
                set_half(&mut d.layout.used, offset == reg::QUEUE_DEVICE_HIGH)
            }
            reg::QUEUE_READY if d.queue_sel == 0 => match value {
                0 => d.ready = false,
                1 if !driver_ok => d.ready = true,
                _ => {}
            },
            reg::STATUS if value == 0 => {
                *d = Driver {
                    layout: Layout {
                        size: u32::from(self.max_size),
                        ..Layout::default()
                    },
                    ..Driver::default()
                }
            }
            _ => {}
        }
    }

    fn features_acceptable(&self) -> bool {
        let d = &self.driver;
        d.driver_features & !self.offered == 0
            && d.driver_features & 1 << VIRTIO_F_VERSION_1 != 0
            && !d.features_beyond_64
    }

    /// The invariants, after a write of `data` at `offset` (empty for reads
    /// and notifications).
    fn check(&mut self, offset: u64, data: &[u8], status_before: u32) {
        let status = self.read_reg(reg::STATUS);
        assert_eq!(status, self.t.device_status());
        let reset = offset == reg::STATUS && data == [0, 0, 0, 0];
        if reset {
            assert_eq!(status, 0, "reset left status {status:#x}");
            assert_eq!(self.irq.status(), 0, "reset left an interrupt pending");
        } else {
            assert_eq!(
                status & status_before,
                status_before,
                "status went from {status_before:#x} to {status:#x} without a reset"
            );
        }
        for (bit, needs) in [
            (DRIVER_OK, FEATURES_OK),
            (FEATURES_OK, DRIVER),
            (DRIVER, ACKNOWLEDGE),
        ] {
            assert!(
                status & bit == 0 || status & needs != 0,
                "status {status:#x} out of order"
            );
        }
        if status & FEATURES_OK != 0 {
            assert!(
                self.features_acceptable(),
                "FEATURES_OK kept for features {:#x} (offered {:#x})",
                self.driver.driver_features,
                self.offered
            );
        }

        let running = status & DRIVER_OK != 0 && status & DEVICE_NEEDS_RESET == 0;
        assert_eq!(self.t.is_active(), running, "active with status {status:#x}");
        let active_with = lock(&self.seen).active;
        assert_eq!(active_with.is_some(), running, "device and transport disagree");
        if let Some(acked) = active_with {
            assert_eq!(
                acked, self.driver.driver_features,
                "activated with other features"
            );
        }

        let raised = status & !status_before;
        if raised & DRIVER_OK != 0 {
            // The layout is frozen from here; the device checks it.
            let layout = self.driver.layout;
            lock(&self.seen).frozen = Some((layout, self.driver.ready));
            if !self.driver.ready || layout.acceptable(self.max_size) {
                assert!(running, "refused a good setup {layout:x?}, status {status:#x}");
            }
        }
        if raised & DEVICE_NEEDS_RESET != 0 && status & DRIVER_OK != 0 {
            assert_ne!(
                self.irq.status() & INTERRUPT_CONFIG,
                0,
                "DEVICE_NEEDS_RESET without a config interrupt"
            );
        }
        self.driver.status = status;

        let sel = self.driver.queue_sel;
        let ready = self.read_reg(reg::QUEUE_READY);
        assert_eq!(ready, u32::from(sel == 0 && self.driver.ready), "QueueReady");
    }

    /// What a register read must return, where that is fixed.
    fn expected_read(&mut self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if offset >= CONFIG_SPACE_OFFSET {
            // Capacity in sectors; the rest of the config space is the
            // device's business.
            let capacity = self.capacity.to_le_bytes();
            let start = usize::try_from(offset - CONFIG_SPACE_OFFSET).ok()?;
            return (start + len <= capacity.len()).then(|| capacity[start..start + len].to_vec());
        }
        if len != 4 || !offset.is_multiple_of(4) {
            return Some(vec![0; len]);
        }
        let d = &self.driver;
        let features_word = |sel: u32| match sel {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        };
        let value = match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => BLOCK_DEVICE_ID,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => features_word(d.device_features_sel),
            reg::QUEUE_NUM_MAX => match d.queue_sel {
                0 => u32::from(self.max_size),
                _ => 0,
            },
            reg::QUEUE_READY => u32::from(d.queue_sel == 0 && d.ready),
            reg::INTERRUPT_STATUS => {
                let value = self.irq.status();
                assert_eq!(value & !(INTERRUPT_VRING | INTERRUPT_CONFIG), 0);
                value
            }
            reg::STATUS => self.t.device_status(),
            reg::CONFIG_GENERATION => 0,
            _ => return None,
        };
        Some(value.to_le_bytes().to_vec())
    }

    fn read_checked(&mut self, offset: u64, len: usize) {
        let expected = self.expected_read(offset, len);
        let status_before = self.t.device_status();
        let got = self.read(offset, len);
        if let Some(expected) = expected {
            assert_eq!(got, expected, "read of {len} bytes at {offset:#x}");
        }
        self.check(offset, &[], status_before);
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Read { offset, size } => self.read_checked(Op::window_offset(offset), Op::access_len(size)),
            Op::Write { offset, size, value } => {
                let bytes = value.to_le_bytes();
                self.write(Op::window_offset(offset), &bytes[..Op::access_len(size)]);
            }
            Op::ReadReg { reg } => self.read_checked(Op::reg_offset(reg), 4),
            Op::WriteReg { reg, value } => self.write(Op::reg_offset(reg), &value.to_le_bytes()),
            Op::Notify { queue } => {
                let status_before = self.t.device_status();
                self.t.notify_queue(queue);
                self.check(reg::QUEUE_NOTIFY, &[], status_before);
            }
            Op::WriteMem { addr, bytes } => {
                let addr = Op::guest_addr(addr);
                // May run into the hole or past the end; the guest's
                // problem, not ours.
                let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
            }
            Op::Init(init) => {
                for (offset, value) in init.writes() {
                    self.write(offset, &value.to_le_bytes());
                }
            }
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
        let inner = BlockDevice::new(BlockConfig::new(image.as_path())).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let device = Observed {
            inner,
            seen: seen.clone(),
        };
        let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let offered = device.device_features();
        let max_size = device.queue_max_sizes()[0];
        let t = MmioTransport::new(device, mem.clone(), irq.clone()).unwrap();
        let mut h = Harness {
            t,
            seen,
            irq,
            mem: mem.clone(),
            driver: Driver {
                layout: Layout {
                    size: u32::from(max_size),
                    ..Layout::default()
                },
                ..Driver::default()
            },
            offered,
            max_size,
            capacity: IMAGE_LEN / 512,
        };
        for op in &ops {
            h.run(op);
        }
        // Leave the eventfd counter low for the next input.
        let _ = h.irq.irqfd().read();
    });
});
