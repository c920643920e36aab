//! Intel MultiProcessor Specification 1.4 table.
//!
//! Linux only reads this when booted with `acpi=off` (kiln's `--no-acpi`);
//! otherwise the MADT describes the same CPUs and interrupt controllers. Both
//! the floating pointer and the configuration table go in the first KiB of
//! the EBDA, which Linux scans for the `_MP_` signature (it also looks at
//! 639 KiB = `EBDA_START` without needing the BDA's EBDA pointer).
//!
//! The table is serialised by hand into little-endian bytes rather than
//! through `#[repr(packed)]` structs, so no `unsafe impl ByteValued` is needed.

use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::vstate::memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table needs at least one vCPU; use --cpus 1 or more")]
    NoCpus,
    #[error(
        "{requested} vCPUs do not fit in the MP table (at most {max} fit in the EBDA); \
         use fewer vCPUs or boot with ACPI"
    )]
    TooManyCpus { requested: u8, max: u8 },
    #[error(
        "cannot write the MP table to guest memory at {addr:#x}: {source}; is guest RAM at least 1 MiB?"
    )]
    Write {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

/// MP spec 1.4 (the value Linux and every BIOS since 1997 use).
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;

/// Local APIC version of an integrated (xAPIC) LAPIC. Linux treats versions
/// below 0x10 as an external 82489DX and changes its set-up accordingly.
const LAPIC_VERSION: u8 = 0x14;
/// Version register value of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID(1).EAX-style signature (family 6) and EDX features (FPU, APIC):
/// informational only; Linux reads the real values from CPUID.
const CPU_SIGNATURE: u32 = 6 << 8;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity bits 0-1 = 01 (active high), trigger bits 2-3 = 01 (edge).
/// KVM irqfd delivers edge pulses; see `acpi.rs` for why virtio GSIs are
/// edge-triggered too, so both firmware tables agree.
const INT_FLAGS_EDGE_HIGH: u16 = 0b0101;
/// "Conforms to the bus": what the spec's default configurations use for
/// the local interrupt lines.
const INT_FLAGS_CONFORMING: u16 = 0;

const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs" for local interrupt entries.
const ALL_LAPICS: u8 = 0xff;

/// One IO interrupt entry per IOAPIC pin (legacy ISA IRQs 0-15 and the
/// virtio GSIs above them), two local interrupt entries (LINT0, LINT1).
const IO_INTERRUPT_ENTRIES: usize = layout::IOAPIC_PINS as usize;
const LOCAL_INTERRUPT_ENTRIES: usize = 2;

/// Bytes the table needs besides the processor entries.
const FIXED_LEN: usize = FLOATING_POINTER_LEN
    + CONFIG_HEADER_LEN
    + SMALL_ENTRY_LEN // bus
    + SMALL_ENTRY_LEN // IOAPIC
    + IO_INTERRUPT_ENTRIES * SMALL_ENTRY_LEN
    + LOCAL_INTERRUPT_ENTRIES * SMALL_ENTRY_LEN;

const EBDA_LEN: usize = (layout::EBDA_END - layout::EBDA_START) as usize;

/// The most vCPUs the MP table can describe: processor entries fill what
/// the fixed part leaves of the EBDA, and APIC ID 255 is the broadcast ID
/// (the IOAPIC also takes the ID after the last CPU).
pub const MAX_CPUS: u8 = {
    let fit = (EBDA_LEN - FIXED_LEN) / PROCESSOR_ENTRY_LEN;
    if fit < 254 {
        fit as u8
    } else {
        254
    }
};

/// Writes the MP floating pointer and configuration table at `EBDA_START`.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: num_cpus,
            max: MAX_CPUS,
        });
    }
    let bytes = build(num_cpus);
    debug_assert!(bytes.len() <= EBDA_LEN);
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(|source| MptableError::Write {
            addr: layout::EBDA_START,
            source,
        })
}

/// Builds the floating pointer followed by the configuration table.
/// `num_cpus` must be in `1..=MAX_CPUS`.
fn build(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let config_addr = layout::EBDA_START + FLOATING_POINTER_LEN as u64;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..num_cpus {
        let mut flags = CPU_ENABLED;
        if cpu == 0 {
            flags |= CPU_BOOT_PROCESSOR;
        }
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }

    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;

    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    // IOAPIC_START is below 4 GiB by construction of the address map.
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;

    // Identity ISA IRQ n -> IOAPIC pin n for every pin: this is KVM's
    // default GSI routing (including the in-kernel PIT on GSI 0), and it
    // lets `virtio_mmio.device=...:<gsi>` find a route for GSIs 16-23.
    for pin in 0..layout::IOAPIC_PINS as u8 {
        entries.push(ENTRY_IO_INTERRUPT);
        entries.push(INT_TYPE_INT);
        entries.extend_from_slice(&INT_FLAGS_EDGE_HIGH.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
        entry_count += 1;
    }

    // The spec's default wiring: the 8259 on LINT0 as ExtINT, NMI on LINT1.
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.push(ENTRY_LOCAL_INTERRUPT);
        entries.push(int_type);
        entries.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        entry_count += 1;
    }

    let table_len = CONFIG_HEADER_LEN + entries.len();
    let mut config = Vec::with_capacity(table_len);
    config.extend_from_slice(b"PCMP");
    // Both fit: table_len <= EBDA_LEN (1 KiB), checked by the caller.
    config.extend_from_slice(&(table_len as u16).to_le_bytes());
    config.push(SPEC_REV);
    config.push(0); // checksum, filled in below
    config.extend_from_slice(b"KILN    ");
    config.extend_from_slice(b"MICROVM     ");
    config.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    config.extend_from_slice(&0u16.to_le_bytes());
    config.extend_from_slice(&entry_count.to_le_bytes());
    config.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    config.push(0); // extended table checksum
    config.push(0); // reserved
    debug_assert_eq!(config.len(), CONFIG_HEADER_LEN);
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(config_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte paragraphs
    fp.push(SPEC_REV);
    fp.push(0); // checksum, filled in below

    // Feature byte 1 = 0: a configuration table is present. Byte 2 bit 7
    // clear: no IMCR, the 8259 is in virtual-wire mode.
    fp.extend_from_slice(&[0; 5]);
    debug_assert_eq!(fp.len(), FLOATING_POINTER_LEN);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&config);
    fp
}

/// The byte that makes `bytes` (with a zero in its place) sum to 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Reads the table back from guest memory the way a guest would:
    /// floating pointer first, then the table it points to.
    fn read_back(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>) {
        let mut fp = vec![0u8; FLOATING_POINTER_LEN];
        mem.read_slice(&mut fp, GuestAddress(layout::EBDA_START)).unwrap();
        let config_addr = u64::from(u32_at(&fp, 4));
        let mut header = vec![0u8; CONFIG_HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(config_addr)).unwrap();
        let mut config = vec![0u8; usize::from(u16_at(&header, 4))];
        mem.read_slice(&mut config, GuestAddress(config_addr)).unwrap();
        (fp, config)
    }

    #[test]
    fn table_parses_back_with_valid_checksums() {
        for cpus in [1u8, 2, 4, MAX_CPUS] {
            let mem = mem();
            setup_mptable(&mem, cpus).unwrap();
            let (fp, config) = read_back(&mem);

            assert_eq!(&fp[0..4], b"_MP_");
            assert_eq!(fp[8], 1);
            assert_eq!(fp[9], SPEC_REV);
            assert_eq!(sum(&fp), 0);

            assert_eq!(&config[0..4], b"PCMP");
            assert_eq!(sum(&config), 0);
            assert_eq!(u32_at(&config, 36), layout::APIC_START as u32);
            let end = layout::EBDA_START + (FLOATING_POINTER_LEN + config.len()) as u64;
            assert!(end <= layout::EBDA_END);

            // Walk the entries and count what the guest would see.
            let count = usize::from(u16_at(&config, 34));
            let mut off = CONFIG_HEADER_LEN;
            let (mut procs, mut bsps, mut ioapics, mut ints, mut lints) = (0, 0, 0, 0, 0);
            for _ in 0..count {
                match config[off] {
                    ENTRY_PROCESSOR => {
                        assert_eq!(config[off + 1], procs as u8, "APIC ID = index");
                        assert_ne!(config[off + 3] & CPU_ENABLED, 0);
                        if config[off + 3] & CPU_BOOT_PROCESSOR != 0 {
                            bsps += 1;
                            assert_eq!(procs, 0, "the first CPU is the BSP");
                        }
                        procs += 1;
                        off += PROCESSOR_ENTRY_LEN;
                        continue;
                    }
                    ENTRY_BUS => assert_eq!(&config[off + 2..off + 8], b"ISA   "),
                    ENTRY_IOAPIC => {
                        ioapics += 1;
                        assert_eq!(config[off + 1], cpus);
                        assert_eq!(u32_at(&config, off + 4), layout::IOAPIC_START as u32);
                    }
                    ENTRY_IO_INTERRUPT => {
                        assert_eq!(config[off + 5], ints as u8, "ISA IRQ number");
                        assert_eq!(config[off + 7], ints as u8, "IOAPIC pin");
                        ints += 1;
                    }
                    ENTRY_LOCAL_INTERRUPT => lints += 1,
                    t => panic!("unexpected entry type {t}"),
                }
                off += SMALL_ENTRY_LEN;
            }
            assert_eq!(off, config.len());
            assert_eq!(procs, usize::from(cpus));
            assert_eq!(bsps, 1);
            assert_eq!(ioapics, 1);
            assert_eq!(ints, layout::IOAPIC_PINS as usize);
            assert_eq!(lints, 2);
        }
    }

    #[test]
    fn max_cpus_fills_but_does_not_overflow_the_ebda() {
        let full = FIXED_LEN + usize::from(MAX_CPUS) * PROCESSOR_ENTRY_LEN;
        assert!(full <= EBDA_LEN);
        assert!(full + PROCESSOR_ENTRY_LEN > EBDA_LEN || MAX_CPUS == 254);
    }

    #[test]
    fn too_many_or_zero_cpus_error() {
        let mem = mem();
        let err = setup_mptable(&mem, MAX_CPUS + 1).unwrap_err();
        assert!(matches!(err, MptableError::TooManyCpus { max: MAX_CPUS, .. }));
        assert!(err.to_string().contains("fewer vCPUs"));
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus { .. })
        ));
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn missing_memory_errors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(setup_mptable(&mem, 1), Err(MptableError::Write { .. })));
    }
}
