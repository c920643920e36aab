//! Guest physical address map for x86_64 microVMs.
//!
//! Everything kiln places in guest memory or on the bus has its address here,
//! so the boot code, ACPI tables and device wiring cannot disagree.

/// GDT lives in low memory, below anything the kernel reclaims early.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries follow the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initrd), after room for 8 memory map entries.
pub const PVH_MODLIST_START: u64 = 0x6100;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapping page tables: PML4, PDPT and one page directory per GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// How much the boot page tables identity-map, with 2 MiB pages.
pub const BOOT_IDENTITY_MAP_GIB: u64 = 4;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux COMMAND_LINE_SIZE, including the trailing NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Extended BIOS data area: the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
/// The end of conventional memory in the e820 map.
pub const EBDA_END: u64 = 0xa0000;
/// BIOS read-only area Linux scans for the RSDP; ACPI tables go here too.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// First byte above 1 MiB; bzImage protected-mode code is loaded here.
pub const HIMEM_START: u64 = 0x100000;

/// The 32-bit MMIO hole: guest RAM that would overlap it moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The boot-timer device (the guest writes 123 here once its user space
/// runs): Firecracker's address, the first page of the gap.
pub const BOOT_TIMER_START: u64 = 0xc000_0000;
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// virtio-mmio device windows, one page each, after the boot timer.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// Legacy port I/O devices.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_IRQ: u32 = 1;
/// pvpanic: the guest writes here when it panics (QEMU's convention).
pub const PVPANIC_PORT: u16 = 0x505;
/// ACPI hardware-reduced sleep control / status and reset register.
pub const ACPI_SLEEP_PORT: u16 = 0x600;

/// GSIs handed to virtio-mmio devices, one each. 0-4 are legacy ISA,
/// 5 upwards are free on the in-kernel IOAPIC (24 pins).
pub const VIRTIO_IRQ_BASE: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;
/// How many virtio-mmio devices one VM can have.
pub const MAX_VIRTIO_DEVICES: u32 = IOAPIC_PINS - VIRTIO_IRQ_BASE;

// The fixed areas must not overlap; checked when compiling.
const _: () = {
    assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
    assert!(PVH_MEMMAP_START + 8 * 24 <= PVH_MODLIST_START);
    assert!(PVH_MODLIST_START + 32 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= PML4_START);
    assert!(PDE_START + BOOT_IDENTITY_MAP_GIB * 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(BOOT_TIMER_START >= MMIO_GAP_START);
    assert!(BOOT_TIMER_START + BOOT_TIMER_SIZE <= VIRTIO_MMIO_START);
    assert!(VIRTIO_MMIO_START + MAX_VIRTIO_DEVICES as u64 * VIRTIO_MMIO_SIZE <= IOAPIC_START);
};

/// Guest RAM regions for `mem_size` bytes, split around the MMIO gap.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

/// The guest-physical window of virtio-mmio device `index`.
pub fn virtio_mmio_base(index: u32) -> u64 {
    VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(64 << 20), vec![(0, 64 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
    }
}
