//! Where virtio-mmio devices live in the guest. One allocator hands out the
//! slots of the fixed layout, in order, to every device kind, and owns the
//! one check of how many there may be; ACPI and the kernel command line
//! describe the slots it handed out.

use kvm_ioctls::VmFd;

use super::{attach_mmio_device, SharedTransport, VirtioDevice, VirtioError};
use crate::arch::x86_64::{acpi, layout};
use crate::devices::bus::Bus;
use crate::devices::EventLoop;
use crate::vstate::memory::GuestMemoryMmap;

/// A virtio-mmio device window and its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub index: u32,
    pub base: u64,
    pub len: u64,
    pub gsi: u32,
}

impl MmioSlot {
    /// Slot `index` of the fixed layout, or `None` past `MAX_VIRTIO_DEVICES`.
    pub fn from_layout(index: u32) -> Option<Self> {
        (index < layout::MAX_VIRTIO_DEVICES).then(|| Self {
            index,
            base: layout::virtio_mmio_base(index),
            len: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::VIRTIO_IRQ_BASE + index,
        })
    }

    /// The Linux command-line parameter that announces this device when
    /// there is no ACPI/DT description of it.
    pub fn kernel_cmdline_arg(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len >> 10,
            self.base,
            self.gsi
        )
    }

    /// This slot as the DSDT describes it.
    pub fn acpi_info(&self) -> acpi::MmioDeviceInfo {
        acpi::MmioDeviceInfo {
            base: self.base,
            len: self.len,
            gsi: self.gsi,
        }
    }
}

/// Hands out the layout's slots in order: the first device asked for gets
/// slot 0 (so the root disk, attached first, is /dev/vda).
#[derive(Debug, Default)]
pub struct MmioSlots {
    used: Vec<MmioSlot>,
}

impl MmioSlots {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next free slot; past the last one, the error names the limit.
    pub fn allocate(&mut self) -> Result<MmioSlot, VirtioError> {
        let index = u32::try_from(self.used.len()).unwrap_or(u32::MAX);
        let slot = MmioSlot::from_layout(index).ok_or(VirtioError::TooManyDevices {
            max: layout::MAX_VIRTIO_DEVICES,
        })?;
        self.used.push(slot);
        Ok(slot)
    }

    /// The slots handed out, in order.
    pub fn used(&self) -> &[MmioSlot] {
        &self.used
    }
}

/// The virtio-mmio devices of a VM being built: each device attached takes
/// the next slot, its queue notifiers and interrupt are connected to KVM,
/// and its handler joins the event loop. A new device kind needs one
/// `attach` call in the builder.
pub struct MmioDevices<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    event_loop: &'a mut EventLoop,
    bus: Bus,
    slots: MmioSlots,
}

impl<'a> MmioDevices<'a> {
    pub fn new(vm: &'a VmFd, mem: &'a GuestMemoryMmap, event_loop: &'a mut EventLoop) -> Self {
        Self {
            vm,
            mem,
            event_loop,
            bus: Bus::new(),
            slots: MmioSlots::new(),
        }
    }

    /// Puts `device` in the next slot.
    pub fn attach<D: VirtioDevice + 'static>(&mut self, device: D) -> Result<MmioSlot, VirtioError> {
        self.attach_shared(device).map(|(slot, _)| slot)
    }

    /// Puts `device` in the next slot; also returns its transport, for
    /// changes while the VM runs.
    pub fn attach_shared<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<(MmioSlot, SharedTransport<D>), VirtioError> {
        let slot = self.slots.allocate()?;
        let transport = attach_mmio_device(self.vm, self.mem, &mut self.bus, self.event_loop, slot, device)?;
        Ok((slot, transport))
    }

    /// The MMIO bus with every device on it, and the slots they use.
    pub fn finish(self) -> (Bus, MmioSlots) {
        (self.bus, self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_layout() {
        let slot = MmioSlot::from_layout(1).unwrap();
        assert_eq!(slot.base, layout::VIRTIO_MMIO_START + 0x1000);
        assert_eq!(slot.gsi, layout::VIRTIO_IRQ_BASE + 1);
        assert_eq!(
            slot.kernel_cmdline_arg(),
            format!("virtio_mmio.device=4K@0xd0001000:{}", layout::VIRTIO_IRQ_BASE + 1)
        );
        assert!(MmioSlot::from_layout(layout::MAX_VIRTIO_DEVICES).is_none());
    }

    /// Every slot once, in order; then one clear error naming the limit.
    #[test]
    fn the_allocator_hands_out_every_slot_then_refuses() {
        let mut slots = MmioSlots::new();
        for index in 0..layout::MAX_VIRTIO_DEVICES {
            assert_eq!(slots.allocate().unwrap(), MmioSlot::from_layout(index).unwrap());
        }
        let err = slots.allocate().unwrap_err();
        assert!(matches!(err, VirtioError::TooManyDevices { max } if max == layout::MAX_VIRTIO_DEVICES));
        let message = err.to_string();
        assert!(
            message.contains(&layout::MAX_VIRTIO_DEVICES.to_string()),
            "{message}"
        );
        assert!(!message.contains('\n'));
        assert_eq!(slots.used().len(), layout::MAX_VIRTIO_DEVICES as usize);
        assert_eq!(slots.used()[2].acpi_info().gsi, layout::VIRTIO_IRQ_BASE + 2);
    }
}
