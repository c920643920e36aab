//! Initial vCPU state: GDT, identity page tables, segment and control
//! registers, general registers, FPU, MSRs and local APIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::vstate::memory::GuestMemoryMmap;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the initial {what} of vCPU state: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// How the guest kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 64-bit long mode with paging, `rsi` = zero page (Linux boot protocol).
    Linux64,
    /// 32-bit protected mode without paging, `rbx` = `hvm_start_info` (PVH).
    Pvh,
}

/// A GDT entry from its flags (access byte + granularity nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into the segment KVM wants; `index` is its slot.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        // 4 KiB granularity: KVM wants the limit in bytes.
        limit = (limit << 12) | 0xfff;
    }
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        // An unusable segment is one that is not present.
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for `mode`. Linux's 64-bit protocol wants __BOOT_CS = 0x10
/// and __BOOT_DS = 0x18; PVH only needs flat 32-bit code and data.
pub fn boot_gdt(mode: BootMode) -> [u64; 5] {
    let code = match mode {
        BootMode::Linux64 => 0xa09b, // 64-bit code, present, execute/read
        BootMode::Pvh => 0xc09b,     // 32-bit code, 4 KiB granularity
    };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff), // flat read/write data
        gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS, needed by VMX entry checks
    ]
}

/// Identity-maps the first `BOOT_IDENTITY_MAP_GIB` GiB with 2 MiB pages.
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    mem.write_obj(
        layout::PDPTE_START | PTE_PRESENT_RW,
        GuestAddress(layout::PML4_START),
    )?;
    for gib in 0..layout::BOOT_IDENTITY_MAP_GIB {
        let pd = layout::PDE_START + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(layout::PDPTE_START + gib * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | PTE_PRESENT_RW | PDE_HUGE_PAGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

/// Writes the GDT and an empty IDT and returns the special registers for `mode`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: BootMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))?;

    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[2], 2);
    let data = segment_from_gdt(gdt[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[4], 4);

    match mode {
        BootMode::Linux64 => {
            setup_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// General registers at kernel entry: `boot_info` is the zero page (rsi)
/// for Linux64, the start info (rbx) for PVH.
pub fn boot_regs(mode: BootMode, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry,
        ..Default::default()
    };
    match mode {
        BootMode::Linux64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
        BootMode::Pvh => regs.rbx = boot_info,
    }
    regs
}

/// Sets the boot vCPU's registers for entry at `entry`.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: BootMode,
    entry: u64,
    boot_info: u64,
) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm_err("read of special registers"))?;
    let sregs = setup_sregs(mem, mode, sregs)?;
    vcpu.set_sregs(&sregs).map_err(kvm_err("special registers"))?;
    vcpu.set_regs(&boot_regs(mode, entry, boot_info))
        .map_err(kvm_err("general registers"))
}

/// FPU control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("FPU state"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSRs a freshly reset CPU would have, as the kernel expects them.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware would, so
/// the legacy timer reaches the BSP before the kernel programs the IOAPIC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("read of the local APIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = set_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_round_trip() {
        let code64 = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code64, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(code64, 2);
        assert_eq!(
            (s.selector, s.l, s.db, s.g, s.present, s.s, s.type_),
            (0x10, 1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 3);
        assert_eq!((data.selector, data.db, data.l, data.type_), (0x18, 1, 0, 3));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), 4);
        assert_eq!((tss.s, tss.type_, tss.unusable), (0, 0xb, 0));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        let based = segment_from_gdt(gdt_entry(0x93, 0x1234_5678, 0xabcde), 1);
        assert_eq!((based.base, based.limit, based.g), (0x1234_5678, 0xabcde, 0));
    }

    #[test]
    fn pvh_gdt_is_32_bit() {
        let gdt = boot_gdt(BootMode::Pvh);
        let cs = segment_from_gdt(gdt[2], 2);
        assert_eq!((cs.l, cs.db), (0, 1));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let m = mem();
        setup_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPTE_START | 3);
        for gib in 0..4u64 {
            let pdpte: u64 = m.read_obj(GuestAddress(layout::PDPTE_START + gib * 8)).unwrap();
            assert_eq!(pdpte, (layout::PDE_START + gib * 0x1000) | 3);
        }
        let first: u64 = m.read_obj(GuestAddress(layout::PDE_START)).unwrap();
        assert_eq!(first, 0x83);
        let last: u64 = m
            .read_obj(GuestAddress(layout::PDE_START + 4 * 0x1000 - 8))
            .unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn long_mode_sregs() {
        let m = mem();
        let s = setup_sregs(&m, BootMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, layout::PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.ds.selector, s.ss.selector), (0x10, 0x18, 0x18));
        assert_eq!(s.gdt.base, layout::BOOT_GDT_START);
        let written: u64 = m.read_obj(GuestAddress(layout::BOOT_GDT_START + 16)).unwrap();
        assert_eq!(written, boot_gdt(BootMode::Linux64)[2]);
    }

    #[test]
    fn pvh_sregs_have_paging_off() {
        let s = setup_sregs(&mem(), BootMode::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!(s.efer, 0);
    }

    #[test]
    fn entry_registers() {
        let r = boot_regs(BootMode::Linux64, 0x100_0000, layout::ZERO_PAGE_START);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, layout::ZERO_PAGE_START, 2));
        let r = boot_regs(BootMode::Pvh, 0x100_0000, layout::PVH_INFO_START);
        assert_eq!((r.rbx, r.rsi), (layout::PVH_INFO_START, 0));
    }

    #[test]
    fn lint_delivery_modes() {
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(set_delivery_mode(0, APIC_MODE_EXTINT), 0x700);
        assert_eq!(boot_msr_entries().len(), 11);
    }
}
