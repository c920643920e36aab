//! ACPI tables for a hardware-reduced x86_64 microVM.
//!
//! Layout in `layout::ACPI_START..layout::ACPI_END`: the RSDP first (Linux
//! also finds it by scanning 0xe0000-0xfffff on 16-byte boundaries, so it
//! works without boot_params.acpi_rsdp_addr), then XSDT, FADT, MADT and DSDT,
//! each on a 16-byte boundary. There is no FACS: hardware-reduced ACPI does
//! not need one (no firmware waking vector, no global lock).
//!
//! Hardware-reduced means no PM1/GPE blocks and no SCI: power-off and reset
//! go through the FADT's sleep control/status and reset registers, which all
//! point at the one-byte `AcpiPmDevice` port. The values the guest writes
//! there come from these tables, so they are taken from `acpi_pm`'s constants
//! rather than repeated.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::devices::legacy::acpi_pm::{RESET_VALUE, SLP_TYP_S5};
use crate::vstate::memory::GuestMemoryMmap;

/// A virtio-mmio device window and the GSI its interrupt arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub len: u64,
    pub gsi: u32,
}

pub struct AcpiConfig<'a> {
    pub num_cpus: u8,
    pub virtio_devices: &'a [MmioDeviceInfo],
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need at least one vCPU; use --cpus 1 or more")]
    NoCpus,
    #[error("{requested} vCPUs is more than the {max} that xAPIC IDs allow; use fewer vCPUs")]
    TooManyCpus { requested: u8, max: u8 },
    #[error("{count} virtio devices is more than the {max} kiln has interrupts for; remove some")]
    TooManyVirtioDevices { count: usize, max: u32 },
    #[error(
        "virtio device {index} window {base:#x}+{len:#x} is not a non-empty range below 4 GiB; \
         this is a kiln bug in device placement"
    )]
    BadMmioWindow { index: usize, base: u64, len: u64 },
    #[error(
        "virtio device {index} uses GSI {gsi} but the IOAPIC has only {pins} pins; \
         this is a kiln bug in interrupt allocation"
    )]
    GsiOutOfRange { index: usize, gsi: u32, pins: u32 },
    #[error(
        "the ACPI tables need {needed} bytes up to the {table}, more than the {available} \
         reserved for them; use fewer vCPUs or devices"
    )]
    TablesTooLarge {
        table: &'static str,
        needed: u64,
        available: u64,
    },
    #[error(
        "cannot write the ACPI {table} to guest memory at {addr:#x}: {source}; \
         is guest RAM at least 1 MiB?"
    )]
    Write {
        table: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// xAPIC IDs are 8 bits, 0xff is the broadcast ID, and the IOAPIC takes the
/// ID after the last vCPU.
pub const MAX_CPUS: u8 = 254;

const OEM_ID: [u8; 6] = *b"KILN  ";
const OEM_REVISION: u32 = 1;
const TABLE_ALIGN: u64 = 16;
const TABLE_HEADER_LEN: usize = 36;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// IA-PC boot architecture flags (FADT offset 109). Bit 0 (LEGACY_DEVICES)
/// stays clear: no PnP BIOS, every ISA device is described in the DSDT.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// kiln emulates no MC146818 at ports 0x70/0x71; this stops Linux from
/// registering rtc_cmos (kvmclock supplies wall-clock time).
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
const IAPC_BOOT_ARCH: u16 = IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT;

/// ISA devices use ISA interrupt semantics: edge-triggered, active high,
/// not shared. Their GSIs equal their ISA IRQs (no overrides).
const ISA_EDGE: bool = true;
/// Edge-triggered for virtio-mmio as well. Interrupts reach the IOAPIC
/// through KVM irqfds, which (without KVM_IRQFD_FLAG_RESAMPLE) raise and
/// immediately lower the line. On a level-triggered pin KVM blocks delivery
/// while Remote IRR is set (until the guest's EOI), and the immediate
/// de-assert drops a pulse that arrives in that window: the device would
/// stall waiting for an interrupt the guest never saw. An edge-triggered pin
/// latches every pulse, and coalesced edges lose nothing because the
/// virtio-mmio handler reads InterruptStatus and drains all used rings.
/// Firecracker and Cloud Hypervisor also declare edge (QEMU's microvm says
/// level, but QEMU drives the line itself). The MP table says edge too.
const VIRTIO_EDGE: bool = true;

/// Places tables one after another in the ACPI area.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, table: &'static str, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = addr + len as u64;
        if end > layout::ACPI_END {
            return Err(AcpiError::TablesTooLarge {
                table,
                needed: end - layout::ACPI_START,
                available: layout::ACPI_END - layout::ACPI_START,
            });
        }
        self.next = end;
        Ok(addr)
    }
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into guest memory and returns the
/// RSDP's address (for boot_params.acpi_rsdp_addr).
pub fn create_acpi_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<GuestAddress, AcpiError> {
    validate(cfg)?;

    let dsdt = build_dsdt(cfg)?;
    let madt = build_madt(cfg.num_cpus);
    let xsdt_len = TABLE_HEADER_LEN + 2 * std::mem::size_of::<u64>();

    let mut placer = Placer {
        next: layout::ACPI_START,
    };
    let rsdp_addr = placer.place("RSDP", Rsdp::len())?;
    let xsdt_addr = placer.place("XSDT", xsdt_len)?;
    let fadt_addr = placer.place("FADT", acpi_tables::fadt::FADT::len())?;
    let madt_addr = placer.place("MADT", madt.len())?;
    let dsdt_addr = placer.place("DSDT", dsdt.len())?;

    let fadt = to_bytes(&build_fadt(dsdt_addr));
    let mut xsdt = XSDT::new(OEM_ID, *b"KILNXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (table, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("XSDT", xsdt_addr, &xsdt),
        ("FADT", fadt_addr, &fadt),
        ("MADT", madt_addr, &madt),
        ("DSDT", dsdt_addr, &dsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write { table, addr, source })?;
    }
    Ok(GuestAddress(rsdp_addr))
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus {
            requested: cfg.num_cpus,
            max: MAX_CPUS,
        });
    }
    if cfg.virtio_devices.len() > layout::MAX_VIRTIO_DEVICES as usize {
        return Err(AcpiError::TooManyVirtioDevices {
            count: cfg.virtio_devices.len(),
            max: layout::MAX_VIRTIO_DEVICES,
        });
    }
    for (index, dev) in cfg.virtio_devices.iter().enumerate() {
        if dev.gsi >= layout::IOAPIC_PINS {
            return Err(AcpiError::GsiOutOfRange {
                index,
                gsi: dev.gsi,
                pins: layout::IOAPIC_PINS,
            });
        }
        mmio_window_32(index, dev)?;
    }
    Ok(())
}

/// The device window as a Memory32Fixed descriptor's base and length.
fn mmio_window_32(index: usize, dev: &MmioDeviceInfo) -> Result<(u32, u32), AcpiError> {
    let bad = || AcpiError::BadMmioWindow {
        index,
        base: dev.base,
        len: dev.len,
    };
    let end = dev.base.checked_add(dev.len).ok_or_else(bad)?;
    if dev.len == 0 || end > 1 << 32 {
        return Err(bad());
    }
    Ok((
        u32::try_from(dev.base).map_err(|_| bad())?,
        u32::try_from(dev.len).map_err(|_| bad())?,
    ))
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn build_fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    // FADTBuilder::new fills in revision 6.5.
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KILNFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button (nor a control-method one).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_gas(layout::ACPI_SLEEP_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_gas(layout::ACPI_SLEEP_PORT);
    fadt.sleep_status_reg = io_gas(layout::ACPI_SLEEP_PORT);
    fadt.finalize()
}

/// Local APIC per vCPU (APIC ID = ACPI UID = index) and one IOAPIC whose
/// 24 pins are GSIs 0-23. No interrupt source overrides: KVM's default GSI
/// routing wires GSI n to IOAPIC pin n for every ISA IRQ, including the
/// in-kernel PIT on GSI 0, so the ACPI default identity mapping is right.
/// (QEMU's "IRQ0 -> GSI 2" override goes with QEMU's custom routing table.)
/// No SCI override either: a hardware-reduced platform has no SCI.
fn build_madt(num_cpus: u8) -> Vec<u8> {
    // APIC_START and IOAPIC_START are below 4 GiB by construction.
    let mut madt = MADT::new(
        OEM_ID,
        *b"KILNAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(num_cpus, layout::IOAPIC_START as u32, 0));
    to_bytes(&madt)
}

fn build_dsdt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();

    // \_S5_: SLP_TYPa, SLP_TYPb and two reserved values. Hardware-reduced
    // OSPM writes only SLP_TYPa, to the sleep control register.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    append_legacy_devices(&mut sb);
    for (index, dev) in cfg.virtio_devices.iter().enumerate() {
        append_virtio_device(&mut sb, index, dev)?;
    }
    body.extend(aml::Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        TABLE_HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        *b"KILNDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

fn append_legacy_devices(sb: &mut Vec<u8>) {
    let hid = |id| aml::Name::new("_HID".into(), &aml::EISAName::new(id));
    let uid0 = aml::Name::new("_UID".into(), &aml::ZERO);

    // COM1. Linux's 8250_pnp driver takes the first I/O resource as the
    // UART base and the first IRQ resource as its interrupt, and replaces
    // the legacy ttyS0 probed at the same port, so ttyS0 stays ttyS0.
    let com1_io = aml::IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, ISA_EDGE, false, false, layout::COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "COM1".into(),
        vec![&hid("PNP0501"), &uid0, &aml::Name::new("_CRS".into(), &com1_crs)],
    )
    .to_aml_bytes(sb);

    // The i8042 (kiln uses it for the CPU reset line). Linux's i8042 PNP
    // probe wants the data port first and the command/status port second.
    // No PNP0F13 device: kiln's i8042 has no PS/2 mouse behind it.
    let data = aml::IO::new(layout::I8042_PORT, layout::I8042_PORT, 1, 1);
    let cmd = aml::IO::new(layout::I8042_PORT + 4, layout::I8042_PORT + 4, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, ISA_EDGE, false, false, layout::I8042_IRQ);
    let kbd_crs = aml::ResourceTemplate::new(vec![&data, &cmd, &kbd_irq]);
    aml::Device::new(
        "PS2K".into(),
        vec![&hid("PNP0303"), &aml::Name::new("_CRS".into(), &kbd_crs)],
    )
    .to_aml_bytes(sb);

    // pvpanic, under QEMU's ACPI id; pvpanic-mmio maps its I/O resource.
    let pvpanic_io = aml::IO::new(layout::PVPANIC_PORT, layout::PVPANIC_PORT, 1, 1);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new("_CRS".into(), &pvpanic_crs),
        ],
    )
    .to_aml_bytes(sb);
}

fn append_virtio_device(sb: &mut Vec<u8>, index: usize, dev: &MmioDeviceInfo) -> Result<(), AcpiError> {
    let (base, len) = mmio_window_32(index, dev)?;
    // `validate` caps the device count well below 256, so the name is
    // always four characters (VR00..VR12).
    let name = format!("VR{index:02X}");
    let uid = index as u32;
    let mem = aml::Memory32Fixed::new(true, base, len);
    let irq = aml::Interrupt::new(true, VIRTIO_EDGE, false, false, dev.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    aml::Device::new(
        name.as_str().into(),
        vec![
            // Linux's virtio_mmio driver matches this ACPI id.
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            // DMA is cache-coherent (x86 assumes so anyway; this makes the
            // table self-describing).
            &aml::Name::new("_CCA".into(), &aml::ONE),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sb);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::acpi_pm::{SLP_EN, SLP_TYP_MASK, SLP_TYP_SHIFT};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn virtio(count: u32) -> Vec<MmioDeviceInfo> {
        (0..count)
            .map(|i| MmioDeviceInfo {
                base: layout::virtio_mmio_base(i),
                len: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::VIRTIO_IRQ_BASE + i,
            })
            .collect()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Reads a whole table (its length is in the header) and checks it is
    /// inside the ACPI area, aligned and correctly checksummed.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, TABLE_HEADER_LEN);
        assert_eq!(&header[0..4], signature);
        let len = u32_at(&header, 4) as usize;
        assert!(addr >= layout::ACPI_START);
        assert!(addr + len as u64 <= layout::ACPI_END);
        assert_eq!(addr % TABLE_ALIGN, 0);
        let bytes = read(mem, addr, len);
        assert_eq!(sum(&bytes), 0, "{} checksum", String::from_utf8_lossy(signature));
        bytes
    }

    struct Tables {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    /// Follows RSDP -> XSDT -> FADT/MADT, FADT -> DSDT as the guest does.
    fn walk(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Tables {
        assert_eq!(rsdp_addr.0, layout::ACPI_START);
        let rsdp = read(mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum");
        assert_eq!(u32_at(&rsdp, 20), 36);
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");

        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = xsdt[TABLE_HEADER_LEN..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(mem, entries[0], b"FACP");
        let madt = table(mem, entries[1], b"APIC");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
        Tables { fadt, madt, dsdt }
    }

    /// The MADT's interrupt controller structures, split by their lengths.
    fn madt_entries(madt: &[u8]) -> impl Iterator<Item = &[u8]> {
        let mut rest = &madt[44..];
        std::iter::from_fn(move || {
            let len = usize::from(*rest.get(1)?);
            assert!(len >= 2 && len <= rest.len(), "MADT entry length {len}");
            let (entry, tail) = rest.split_at(len);
            rest = tail;
            Some(entry)
        })
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn tables_link_up_and_checksum() {
        for (cpus, devices) in [(1u8, 0u32), (1, 19), (4, 3), (254, 19)] {
            let mem = mem();
            let devs = virtio(devices);
            let cfg = AcpiConfig {
                num_cpus: cpus,
                virtio_devices: &devs,
            };
            let t = walk(&mem, create_acpi_tables(&mem, &cfg).unwrap());

            let lapics = madt_entries(&t.madt).filter(|e| e[0] == 0).count();
            assert_eq!(lapics, usize::from(cpus));
            assert_eq!(u32_at(&t.madt, 36), layout::APIC_START as u32);

            assert_eq!(count(&t.dsdt, b"LNRO0005"), devices as usize);
            assert_eq!(count(&t.dsdt, b"QEMU0001"), 1);
            assert_eq!(count(&t.dsdt, b"_S5_"), 1);
        }
    }

    #[test]
    fn madt_has_a_lapic_per_cpu_and_one_ioapic() {
        let mem = mem();
        let cfg = AcpiConfig {
            num_cpus: 3,
            virtio_devices: &[],
        };
        let t = walk(&mem, create_acpi_tables(&mem, &cfg).unwrap());
        let mut cpu = 0u8;
        let mut ioapics = 0;
        for e in madt_entries(&t.madt) {
            match e[0] {
                0 => {
                    assert_eq!(e.len(), 8);
                    assert_eq!(e[2], cpu, "ACPI UID");
                    assert_eq!(e[3], cpu, "APIC ID");
                    assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
                    cpu += 1;
                }
                1 => {
                    ioapics += 1;
                    assert_eq!(e.len(), 12);
                    assert_eq!(e[2], 3, "IOAPIC ID after the CPUs");
                    assert_eq!(u32_at(e, 4), layout::IOAPIC_START as u32);
                    assert_eq!(u32_at(e, 8), 0, "GSI base");
                }
                k => panic!("unexpected MADT entry type {k}"),
            }
        }
        assert_eq!((cpu, ioapics), (3, 1));
    }

    #[test]
    fn fadt_matches_the_acpi_pm_device() {
        let mem = mem();
        let cfg = AcpiConfig {
            num_cpus: 1,
            virtio_devices: &[],
        };
        let t = walk(&mem, create_acpi_tables(&mem, &cfg).unwrap());
        let fadt = &t.fadt;
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT major revision");
        assert_eq!(fadt[131], 5, "FADT minor revision");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(boot_arch & 0b111, 0b110, "8042 present, no VGA, no legacy");

        let port = u64::from(layout::ACPI_SLEEP_PORT);
        let io_byte_gas = |off: usize| {
            assert_eq!(&fadt[off..off + 4], &[1, 8, 0, 1], "SystemIO, 8 bits, byte");
            assert_eq!(u64_at(fadt, off + 4), port);
        };
        io_byte_gas(116); // RESET_REG
        io_byte_gas(244); // SLEEP_CONTROL_REG
        io_byte_gas(256); // SLEEP_STATUS_REG
        assert_eq!(fadt[128], RESET_VALUE);

        // What Linux writes for S5, given the DSDT's \_S5_ package, must be
        // what AcpiPmDevice treats as power-off: NameOp "_S5_" PackageOp
        // PkgLength NumElements(4) BytePrefix SLP_TYPa.
        let at = t.dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
        assert_eq!(t.dsdt[at - 1], 0x08);
        assert_eq!(t.dsdt[at + 4], 0x12);
        assert_eq!(&t.dsdt[at + 6..at + 9], &[4, 0x0a, SLP_TYP_S5]);
        let linux_write = ((t.dsdt[at + 8] << 2) & 0x1c) | 0x20;
        assert_eq!(linux_write & SLP_EN, SLP_EN);
        assert_eq!((linux_write & SLP_TYP_MASK) >> SLP_TYP_SHIFT, SLP_TYP_S5);
        assert_ne!(linux_write, RESET_VALUE);
    }

    #[test]
    fn bad_configs_error() {
        let mem = mem();
        fn cfg(num_cpus: u8, virtio_devices: &[MmioDeviceInfo]) -> AcpiConfig<'_> {
            AcpiConfig {
                num_cpus,
                virtio_devices,
            }
        }
        assert!(matches!(
            create_acpi_tables(&mem, &cfg(0, &[])),
            Err(AcpiError::NoCpus)
        ));
        assert!(matches!(
            create_acpi_tables(&mem, &cfg(255, &[])),
            Err(AcpiError::TooManyCpus { max: 254, .. })
        ));
        let too_many = virtio(layout::MAX_VIRTIO_DEVICES + 1);
        assert!(matches!(
            create_acpi_tables(&mem, &cfg(1, &too_many)),
            Err(AcpiError::TooManyVirtioDevices { .. })
        ));
        let mut dev = virtio(1);
        dev[0].gsi = layout::IOAPIC_PINS;
        assert!(matches!(
            create_acpi_tables(&mem, &cfg(1, &dev)),
            Err(AcpiError::GsiOutOfRange { .. })
        ));
        for (base, len) in [(1 << 32, 0x1000), (0xffff_f000, 0x2000), (0xd000_0000, 0)] {
            let dev = [MmioDeviceInfo { base, len, gsi: 5 }];
            assert!(matches!(
                create_acpi_tables(&mem, &cfg(1, &dev)),
                Err(AcpiError::BadMmioWindow { .. })
            ));
        }
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&small, &cfg(1, &[])),
            Err(AcpiError::Write { table: "RSDP", .. })
        ));
    }

    #[test]
    fn placer_refuses_overflow() {
        let mut p = Placer {
            next: layout::ACPI_START + 1,
        };
        assert_eq!(p.place("XSDT", 8).unwrap(), layout::ACPI_START + 16);
        let err = p.place("DSDT", 0x20000).unwrap_err();
        assert!(matches!(err, AcpiError::TablesTooLarge { table: "DSDT", .. }));
    }

    /// Disassembles every table with ACPICA's `iasl -d` (the acpica-tools
    /// package, which tools/install-deps installs).
    #[test]
    fn iasl_disassembles_every_table() {
        if std::process::Command::new("iasl").arg("-v").output().is_err() {
            eprintln!("iasl is not installed (apt-get install acpica-tools): tables not disassembled");
            return;
        }
        let mem = mem();
        let devs = virtio(layout::MAX_VIRTIO_DEVICES);
        let cfg = AcpiConfig {
            num_cpus: 4,
            virtio_devices: &devs,
        };
        let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
        let t = walk(&mem, rsdp);
        let dir = std::env::temp_dir().join(format!("kiln-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in [("facp", &t.fadt), ("apic", &t.madt), ("dsdt", &t.dsdt)] {
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .output()
                .expect("run iasl");
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {log}");
            assert!(!log.contains("Error"), "iasl -d {name}: {log}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
