//! Loading a kernel and initrd, and writing what the kernel reads at entry:
//! the zero page (Linux boot protocol) or the PVH start info, each carrying
//! the e820 memory map, the command line and the initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_NOTE};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout;
use super::regs::BootMode;
use crate::vstate::memory::GuestMemoryMmap;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// "HdrS" at offset 0x202 marks a bzImage.
const BZIMAGE_MAGIC: u32 = 0x5372_6448;
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// The kernel decompresses itself to 16 MiB unless told otherwise.
const DEFAULT_KERNEL_PHYS: u64 = 0x100_0000;
const PVH_MAGIC: u32 = 0x336e_c578;
/// Where older kernels without `initrd_addr_max` accept an initrd.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;
/// Bounds on the ELF notes walked, by linux-loader (looking for the PVH
/// entry) and by us (looking for a Linux or Xen owner). A vmlinux has one
/// note segment of well under a KiB; without a bound, 65,535 segments of
/// empty 12-byte notes cost billions of reads.
const MAX_NOTE_SEGMENTS: usize = 16;
const MAX_NOTE_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a kernel kiln can boot (expected an ELF vmlinux or a bzImage)")]
    UnknownFormat(String),
    #[error("{path}: {segments} ELF note segments, {bytes} bytes in all; kiln takes at most {MAX_NOTE_SEGMENTS} segments and {MAX_NOTE_BYTES} bytes, far more than a kernel has: not a kernel kiln can boot")]
    TooManyNotes {
        path: String,
        segments: usize,
        bytes: u64,
    },
    #[error(
        "cannot load kernel {path}: {source}; the file may be truncated or corrupt, or --memory too small"
    )]
    Load {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("the kernel needs at least {need_mib} MiB of guest memory; raise --memory")]
    KernelTooBig { need_mib: u64 },
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory beside the kernel; raise --memory")]
    InitrdTooBig { path: String, size_mib: u64 },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead { path: String, source: std::io::Error },
    #[error("cannot write the boot parameters: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: u64,
    pub mode: BootMode,
    /// One past the last byte the kernel image occupies or will decompress to.
    pub end: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// Whether this looks like a Linux kernel (as opposed to a bare test guest).
    pub is_linux: bool,
}

impl LoadedKernel {
    /// The longest command line the kernel accepts, including the NUL.
    pub fn cmdline_limit(&self) -> usize {
        match &self.setup_header {
            // Protocol 2.06+ states it; older kernels take 255 characters.
            Some(h) if h.version >= 0x0206 => (h.cmdline_size as usize + 1).min(layout::CMDLINE_MAX_SIZE),
            Some(_) => 256,
            None => layout::CMDLINE_MAX_SIZE,
        }
    }

    fn initrd_addr_max(&self) -> u64 {
        match &self.setup_header {
            Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn low_memory_end(mem: &GuestMemoryMmap) -> u64 {
    (mem.last_addr().raw_value() + 1).min(layout::MMIO_GAP_START)
}

/// Loads the kernel at `path` into `mem`, choosing PVH entry when the ELF
/// advertises it.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = open("kernel", path)?;
    let display = || path.display().to_string();
    let load_err = |source| BootError::Load {
        path: display(),
        source,
    };
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    if is_elf {
        // Unreadable program headers are left for Elf::load to explain.
        let notes = note_segments(&mut file).unwrap_or_default();
        let bytes = notes.iter().map(|n| n.len).fold(0, u64::saturating_add);
        if notes.len() > MAX_NOTE_SEGMENTS || bytes > MAX_NOTE_BYTES {
            return Err(BootError::TooManyNotes {
                path: display(),
                segments: notes.len(),
                bytes,
            });
        }
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM_START))).map_err(load_err)?;
        let is_linux = has_linux_note(&mut file, &notes).unwrap_or(false);
        let (entry, mode) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr.raw_value(), BootMode::Pvh),
            _ => (r.kernel_load.raw_value(), BootMode::Linux64),
        };
        return Ok(LoadedKernel {
            entry,
            mode,
            end: r.kernel_end,
            setup_header: None,
            is_linux,
        });
    }
    if read_u32_at(&mut file, BZIMAGE_MAGIC_OFFSET) != Some(BZIMAGE_MAGIC) {
        return Err(BootError::UnknownFormat(display()));
    }
    let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM_START))).map_err(load_err)?;
    let hdr = r.setup_header.unwrap_or_default();
    // The kernel decompresses to its preferred address (or in place, if
    // higher) and needs init_size bytes there.
    let run_at = r.kernel_load.raw_value().max(DEFAULT_KERNEL_PHYS);
    let end = run_at + u64::from(hdr.init_size);
    if end > low_memory_end(mem) {
        return Err(BootError::KernelTooBig {
            need_mib: end.div_ceil(1 << 20) + 1,
        });
    }
    Ok(LoadedKernel {
        entry: r.kernel_load.raw_value() + BZIMAGE_ENTRY64_OFFSET,
        mode: BootMode::Linux64,
        end,
        setup_header: Some(hdr),
        is_linux: true,
    })
}

fn read_u32_at(file: &mut File, offset: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

/// Where a PT_NOTE segment lies in the file.
#[derive(Debug, Clone, Copy)]
struct NoteSegment {
    offset: u64,
    len: u64,
}

/// The ELF's note segments, from one read of its program header table.
fn note_segments(file: &mut File) -> std::io::Result<Vec<NoteSegment>> {
    const PHDR_LEN: usize = std::mem::size_of::<Elf64_Phdr>();
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(ehdr.as_mut_slice())?;
    if usize::from(ehdr.e_phentsize) != PHDR_LEN {
        return Ok(Vec::new());
    }
    // At most 65,535 headers of 56 bytes: under 4 MiB.
    let mut table = vec![0u8; usize::from(ehdr.e_phnum) * PHDR_LEN];
    file.seek(SeekFrom::Start(ehdr.e_phoff))?;
    file.read_exact(&mut table)?;
    Ok(table
        .chunks_exact(PHDR_LEN)
        .filter_map(|raw| {
            let mut phdr = Elf64_Phdr::default();
            phdr.as_mut_slice().copy_from_slice(raw);
            (phdr.p_type == PT_NOTE && phdr.p_filesz > 0).then_some(NoteSegment {
                offset: phdr.p_offset,
                len: phdr.p_filesz,
            })
        })
        .collect())
}

/// Whether a note is owned by "Linux" or "Xen", which tells a Linux kernel
/// from a bare test guest. Stops at the first such note; the caller has
/// bounded the segments' total size.
fn has_linux_note(file: &mut File, segments: &[NoteSegment]) -> std::io::Result<bool> {
    for segment in segments {
        let mut notes = vec![0u8; segment.len as usize];
        file.seek(SeekFrom::Start(segment.offset))?;
        file.read_exact(&mut notes)?;
        if note_owners(&notes).any(|owner| owner == b"Linux" || owner == b"Xen") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The owner names in a note segment, without their NULs. Each note is
/// namesz, descsz, type, then the name and the descriptor, each padded to
/// 4 bytes; the walk ends at the first note that does not fit.
fn note_owners(mut notes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let word = |i: usize| -> Option<usize> {
            Some(u32::from_le_bytes(notes.get(i..i + 4)?.try_into().ok()?) as usize)
        };
        let (namesz, descsz) = (word(0)?, word(4)?);
        let name_end = 12usize.checked_add(namesz)?;
        let name = notes.get(12..name_end)?;
        let next = name_end
            .checked_next_multiple_of(4)
            .and_then(|n| n.checked_add(descsz))
            .and_then(|n| n.checked_next_multiple_of(4));
        notes = next.and_then(|n| notes.get(n..)).unwrap_or_default();
        let len = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Some(&name[..len])
    })
}

/// Where an initrd landed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

/// Picks the initrd's address: as high as the kernel accepts, page-aligned,
/// clear of the kernel.
pub fn initrd_address(size: u64, kernel_end: u64, low_mem_end: u64, addr_max: u64) -> Option<u64> {
    let top = low_mem_end.min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Reads the initrd at `path` into guest memory above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdRegion, BootError> {
    let mut file = open("initrd", path)?;
    let display = path.display().to_string();
    let read_err = |source| BootError::InitrdRead {
        path: display.clone(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    let addr = initrd_address(size, kernel.end, low_memory_end(mem), kernel.initrd_addr_max()).ok_or(
        BootError::InitrdTooBig {
            path: display.clone(),
            size_mib: size >> 20,
        },
    )?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
    Ok(InitrdRegion { addr, size })
}

/// The memory map the guest sees: conventional memory below the EBDA, the
/// EBDA (MP table) and BIOS area (ACPI tables) reserved, then RAM from
/// 1 MiB, split around the 32-bit MMIO gap. Entries are (addr, size, type).
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            layout::EBDA_END - layout::EBDA_START,
            E820_RESERVED,
        ),
        (
            layout::ACPI_START,
            layout::ACPI_END - layout::ACPI_START,
            E820_RESERVED,
        ),
    ];
    for (start, len) in layout::ram_regions(mem_size) {
        let start_above_1m = start.max(layout::HIMEM_START);
        let end = start + len;
        if end > start_above_1m {
            map.push((start_above_1m, end - start_above_1m, E820_RAM));
        }
    }
    map
}

/// What the boot structures point at.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub mem_size: u64,
    pub cmdline_addr: u64,
    /// Length of the command line, without its NUL.
    pub cmdline_len: usize,
    pub initrd: Option<InitrdRegion>,
    pub rsdp: Option<u64>,
}

/// Writes the zero page for the Linux 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.header = BZIMAGE_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp.unwrap_or(0);
    let map = e820_map(info.mem_size);
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

/// Writes the PVH `hvm_start_info`, its memory map and the initrd module.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(info.mem_size)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut modules = Vec::new();
    if let Some(initrd) = info.initrd {
        start.nr_modules = 1;
        start.modlist_paddr = layout::PVH_MODLIST_START;
        modules.push(hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        });
    }
    let mut params = BootParams::new(&start, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&map, GuestAddress(layout::PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
    Ok(())
}

/// Writes whichever boot structure `kernel.mode` needs and returns the
/// address the kernel expects in its boot-info register.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<u64, BootError> {
    match kernel.mode {
        BootMode::Linux64 => write_zero_page(mem, kernel, info).map(|_| layout::ZERO_PAGE_START),
        BootMode::Pvh => write_pvh_start_info(mem, info).map(|_| layout::PVH_INFO_START),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: u64) -> GuestMemoryMmap {
        crate::vstate::memory::create_guest_memory(mib << 20, false).unwrap()
    }

    #[test]
    fn e820_for_several_sizes() {
        let ram = |mib: u64| -> Vec<(u64, u64)> {
            e820_map(mib << 20)
                .into_iter()
                .filter(|e| e.2 == E820_RAM)
                .map(|e| (e.0, e.1))
                .collect()
        };
        let below_1m = (0, layout::EBDA_START);
        assert_eq!(
            ram(64),
            vec![below_1m, (layout::HIMEM_START, (64 << 20) - layout::HIMEM_START)]
        );
        assert_eq!(
            ram(3072),
            vec![below_1m, (layout::HIMEM_START, (3 << 30) - layout::HIMEM_START)]
        );
        assert_eq!(
            ram(8192),
            vec![
                below_1m,
                (layout::HIMEM_START, layout::MMIO_GAP_START - layout::HIMEM_START),
                (layout::MMIO_GAP_END, (8 << 30) - layout::MMIO_GAP_START),
            ]
        );
        // RAM entries describe exactly the RAM there is, less the BIOS hole
        // between the EBDA and 1 MiB; reserved ones cover the MP and ACPI tables.
        for mib in [2u64, 64, 128, 3072, 3073, 4096, 16384] {
            let total: u64 = ram(mib).iter().map(|e| e.1).sum();
            assert_eq!(total, (mib << 20) - (layout::HIMEM_START - layout::EBDA_START));
            let map = e820_map(mib << 20);
            assert!(map.contains(&(layout::ACPI_START, 0x20000, E820_RESERVED)));
            assert!(map.contains(&(layout::EBDA_START, 0x400, E820_RESERVED)));
        }
    }

    #[test]
    fn initrd_goes_high_and_clear_of_the_kernel() {
        let end = 64 << 20;
        assert_eq!(initrd_address(4096, 0x200_0000, end, u64::MAX), Some(end - 4096));
        assert_eq!(initrd_address(4097, 0x200_0000, end, u64::MAX), Some(end - 8192));
        assert_eq!(
            initrd_address(1 << 20, 0, 1 << 30, 0x37ff_ffff),
            Some(0x3800_0000 - (1 << 20))
        );
        assert_eq!(initrd_address(63 << 20, 2 << 20, end, u64::MAX), None);
        assert_eq!(initrd_address(u64::MAX, 0, end, u64::MAX), None);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem(64);
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            mode: BootMode::Linux64,
            end: 0x200_0000,
            setup_header: None,
            is_linux: false,
        };
        let info = BootInfo {
            mem_size: 64 << 20,
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: 12,
            initrd: Some(InitrdRegion {
                addr: 0x300_0000,
                size: 1234,
            }),
            rsdp: Some(layout::ACPI_START),
        };
        assert_eq!(
            write_boot_info(&m, &kernel, &info).unwrap(),
            layout::ZERO_PAGE_START
        );
        let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.acpi_rsdp_addr }, layout::ACPI_START);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.e820_table[3].addr }, layout::HIMEM_START);
    }

    #[test]
    fn pvh_start_info_lists_memory_and_initrd() {
        let m = mem(64);
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            mode: BootMode::Pvh,
            end: 0x200_0000,
            setup_header: None,
            is_linux: true,
        };
        let info = BootInfo {
            mem_size: 64 << 20,
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: 3,
            initrd: Some(InitrdRegion {
                addr: 0x300_0000,
                size: 99,
            }),
            rsdp: None,
        };
        assert_eq!(
            write_boot_info(&m, &kernel, &info).unwrap(),
            layout::PVH_INFO_START
        );
        let s: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!((s.magic, s.memmap_entries, s.nr_modules), (PVH_MAGIC, 4, 1));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 99));
        let e: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(layout::PVH_MEMMAP_START + 3 * 24))
            .unwrap();
        assert_eq!(e.addr, layout::HIMEM_START);
    }

    #[test]
    fn note_owners_parse_and_survive_garbage() {
        let mut notes = Vec::new();
        for (name, desc) in [(&b"Linux\0"[..], &[1u8, 2, 3][..]), (b"Xen\0", &[0u8; 4])] {
            notes.extend((name.len() as u32).to_le_bytes());
            notes.extend((desc.len() as u32).to_le_bytes());
            notes.extend(1u32.to_le_bytes());
            notes.extend(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        fn owners(notes: &[u8]) -> Vec<&[u8]> {
            note_owners(notes).collect()
        }
        assert_eq!(owners(&notes), [&b"Linux"[..], b"Xen"]);
        assert!(owners(&[0xff; 11]).is_empty());
        let mut huge = vec![0xff; 16];
        huge[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(owners(&huge).is_empty());
        // A note whose descriptor runs past the end still names its owner.
        notes.truncate(notes.len() - 4);
        assert_eq!(owners(&notes), [&b"Linux"[..], b"Xen"]);
    }

    /// An ELF header followed by `phnum` PT_NOTE headers that all point at
    /// the same `notes`.
    fn elf_with_notes(phnum: u16, notes: &[u8]) -> Vec<u8> {
        let phoff = std::mem::size_of::<Elf64_Ehdr>();
        let notes_at = phoff + usize::from(phnum) * std::mem::size_of::<Elf64_Phdr>();
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(ELF_MAGIC);
        ehdr.e_ident[4] = 2; // 64-bit
        ehdr.e_ident[5] = 1; // little-endian
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = 62;
        ehdr.e_version = 1;
        ehdr.e_entry = 0x100_0000;
        ehdr.e_phoff = phoff as u64;
        ehdr.e_ehsize = phoff as u16;
        ehdr.e_phentsize = std::mem::size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = phnum;
        let phdr = Elf64_Phdr {
            p_type: PT_NOTE,
            p_offset: notes_at as u64,
            p_filesz: notes.len() as u64,
            p_memsz: notes.len() as u64,
            p_align: 4,
            ..Default::default()
        };
        let mut elf = ehdr.as_slice().to_vec();
        for _ in 0..phnum {
            elf.extend_from_slice(phdr.as_slice());
        }
        elf.extend_from_slice(notes);
        elf
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// 65,535 note segments of 1 MiB of empty 12-byte notes each: before
    /// the bounds, linux-loader alone made ~6e9 reads (still running after
    /// 10 minutes), and with a leading Xen PVH entry note, which stops
    /// linux-loader at once, our walk collected ~6e9 owner names (2 GB
    /// resident within 25 s, and growing). Both are refused at once.
    #[test]
    fn many_note_segments_are_refused_quickly() {
        let m = mem(32);
        let dir = std::env::temp_dir().join(format!("kiln-notes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty_notes = vec![0u8; 12 * 87381];
        let mut pvh_first = note(b"Xen\0", 18, &0x100_0000u32.to_le_bytes());
        pvh_first.resize(empty_notes.len(), 0);
        for (name, notes) in [("empty", &empty_notes), ("pvh", &pvh_first)] {
            let path = dir.join(name);
            std::fs::write(&path, elf_with_notes(u16::MAX, notes)).unwrap();
            let start = std::time::Instant::now();
            let err = load_kernel(&m, &path).unwrap_err();
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{name}: {:?}",
                start.elapsed()
            );
            assert!(
                matches!(err, BootError::TooManyNotes { segments: 65535, .. }),
                "{name}: {err}"
            );
            let msg = err.to_string();
            assert!(
                !msg.contains('\n') && msg.contains("not a kernel kiln can boot"),
                "{msg}"
            );
        }
    }

    /// Within the bounds, the walk finds the owner past other notes.
    #[test]
    fn linux_owner_is_found_within_the_bounds() {
        let dir = std::env::temp_dir().join(format!("kiln-notes-ok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gnu = note(b"GNU\0", 3, &[0; 20]);
        let linux = [gnu.clone(), note(b"Linux\0", 6, b"6.1\0")].concat();
        for (want, phnum, notes) in [(true, MAX_NOTE_SEGMENTS as u16, linux), (false, 1, gnu)] {
            let path = dir.join(format!("{want}"));
            std::fs::write(&path, elf_with_notes(phnum, &notes)).unwrap();
            let mut file = File::open(&path).unwrap();
            let segments = note_segments(&mut file).unwrap();
            assert_eq!(segments.len(), usize::from(phnum));
            assert_eq!(has_linux_note(&mut file, &segments).unwrap(), want);
        }
    }
}
