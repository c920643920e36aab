//! Guest memory: anonymous mappings registered with KVM as memory slots.

use vm_memory::GuestAddress;

use crate::arch::x86_64::layout;

/// The guest memory type used throughout kiln.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {source}; use a smaller --memory")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot keep guest memory out of forked processes (madvise MADV_DONTFORK): {0}")]
    DontFork(std::io::Error),
}

/// Huge page size: guest RAM mapped on this boundary can be backed by
/// transparent huge pages, which KVM then maps with 2 MiB stage-2 pages.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `mem_size` bytes of guest RAM, split around the MMIO gap.
///
/// The mappings are `MADV_DONTFORK`: a fork (the VM teardown child) then
/// neither copies their page tables, which for a large guest would cost
/// time and memory, nor shares guest pages with a process that has no use
/// for them.
///
/// With `huge_pages` they sit on 2 MiB boundaries, where transparent huge
/// pages can back them: a guest's first touch of a 2 MiB stretch then
/// costs one host page fault and one stage-2 (EPT/NPT) fault instead of
/// 512 of each, which took about a quarter off the default guest's boot in
/// the nested host. The price: a guest's resident memory grows in 2 MiB
/// steps. They are `MADV_HUGEPAGE` only where the host's THP mode is
/// `madvise` (it asks for that); under `always` alignment is enough, and
/// the advice would add stalls: with the usual `defrag=madvise` a fault
/// in advised memory compacts memory on the spot when no huge page is
/// free (kernel loads of 65 ms turned into 150-250 ms now and then).
pub fn create_guest_memory(mem_size: u64, huge_pages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
    let map_err = |source| MemoryError::Map {
        mib: mem_size >> 20,
        source,
    };
    let mut regions = Vec::new();
    for (start, len) in layout::ram_regions(mem_size) {
        let len = len as usize;
        let hole = if huge_pages {
            AlignedHole::reserve(len)
        } else {
            None
        };
        let mapping = vm_memory::MmapRegion::new(len)
            .map_err(|e| map_err(vm_memory::mmap::FromRangesError::MmapRegion(e)))?;
        // The reservation's remains go once the mapping is made (in the
        // hole, unless another thread took it: then merely unaligned).
        drop(hole);
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or(map_err(vm_memory::mmap::FromRangesError::InvalidGuestRegion))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| map_err(vm_memory::mmap::FromRangesError::Collection(e)))?;
    let advise_huge_pages = huge_pages && thp_mode() == ThpMode::Madvise;
    for region in mem.iter() {
        // SAFETY: the region is a live, page-aligned anonymous mapping of
        // `len` bytes that `mem` owns; MADV_DONTFORK changes only whether a
        // child process inherits it, not its contents or our access to it.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, libc::MADV_DONTFORK) };
        if rc != 0 {
            return Err(MemoryError::DontFork(std::io::Error::last_os_error()));
        }
        if advise_huge_pages {
            // SAFETY: as above; MADV_HUGEPAGE only changes how the kernel
            // backs the pages.
            let _ =
                unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(mem)
}

/// The host's transparent huge page mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThpMode {
    Always,
    Madvise,
    /// `never`, or no THP in this kernel.
    Never,
}

/// The selected mode in a `/sys/kernel/mm/transparent_hugepage/enabled`
/// text (`always [madvise] never`).
pub fn parse_thp_mode(text: &str) -> ThpMode {
    match text.split_whitespace().find(|w| w.starts_with('[')) {
        Some("[always]") => ThpMode::Always,
        Some("[madvise]") => ThpMode::Madvise,
        _ => ThpMode::Never,
    }
}

fn thp_mode() -> ThpMode {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map_or(ThpMode::Never, |t| parse_thp_mode(&t))
}

/// A hole of exactly the mapping's size at a 2 MiB boundary, inside a
/// reservation 2 MiB larger whose remains (`PROT_NONE`) are unmapped on
/// drop. mmap's top-down search puts the next mapping of that size into
/// the hole, so guest RAM lands aligned without vm-memory needing an
/// address (it takes none, and must own its mappings to unmap them).
struct AlignedHole {
    remains: [(usize, usize); 2],
}

impl AlignedHole {
    fn reserve(len: usize) -> Option<Self> {
        let total = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a new inaccessible mapping that nothing else refers to.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        let hole = (base + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
        let hole_end = hole + len;
        let hole_ref = Self {
            remains: [(base, hole - base), (hole_end, base + total - hole_end)],
        };
        // SAFETY: [hole, hole + len) lies inside the reservation just made,
        // which only this function knows of.
        unsafe { libc::munmap(hole as *mut libc::c_void, len) };
        Some(hole_ref)
    }
}

impl Drop for AlignedHole {
    fn drop(&mut self) {
        for (addr, len) in self.remains {
            if len > 0 {
                // SAFETY: what is left of the reservation `reserve` made;
                // nothing else maps there (mmap never overlaps it).
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            }
        }
    }
}

/// The `KEY: N kB` value of a /proc file such as /proc/meminfo or
/// /proc/self/status, in KiB.
pub fn proc_kib(path: &str, key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(path).ok()?, key)
}

/// The kB value of `key` in the text of a /proc status-like file.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// /proc/self/status, opened ahead: a thread under seccomp can read it
/// (pread) but could not open it.
#[derive(Debug)]
pub struct ProcSelfStatus(std::fs::File);

impl ProcSelfStatus {
    pub fn open() -> Option<Self> {
        std::fs::File::open("/proc/self/status").ok().map(Self)
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// The kB value of `key` (e.g. VmHWM, kiln's own peak RSS) now.
    pub fn kib(&self, key: &str) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 8192];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        kib_field(&String::from_utf8_lossy(&buf[..n]), key)
    }
}

/// Bytes of guest memory actually backed by host pages (touched by the
/// guest or by kiln), for benchmarks that separate VMM overhead from it.
pub fn resident_bytes(mem: &GuestMemoryMmap) -> std::io::Result<u64> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: the region is a live mapping of `len` bytes starting at a
        // page boundary, and `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        total += vec.iter().filter(|b| *b & 1 == 1).count() as u64 * page as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn proc_kib_reads_meminfo_and_status() {
        assert!(proc_kib("/proc/meminfo", "MemTotal").is_some_and(|k| k > 0));
        assert!(proc_kib("/proc/self/status", "VmHWM").is_some_and(|k| k > 0));
        assert_eq!(proc_kib("/proc/meminfo", "NoSuchKey"), None);
        assert_eq!(proc_kib("/nonexistent", "MemTotal"), None);
    }

    /// The VmFlags of the mapping holding `addr`, from /proc/self/smaps.
    fn vm_flags(addr: usize) -> Option<Vec<String>> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let bounds: Vec<usize> = range
                    .split('-')
                    .filter_map(|s| usize::from_str_radix(s, 16).ok())
                    .collect();
                in_mapping = matches!(bounds[..], [start, end] if (start..end).contains(&addr));
            } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| in_mapping) {
                return Some(flags.split_whitespace().map(String::from).collect());
            }
        }
        None
    }

    /// Both sides of the MMIO gap: every region is marked `dc` ("do not
    /// copy area on fork", proc(5); `dd` is the core-dump flag).
    #[test]
    fn guest_memory_is_not_inherited_by_forks() {
        use vm_memory::GuestMemoryBackend;
        let mem = create_guest_memory(layout::MMIO_GAP_START + (16 << 20), true).unwrap();
        assert_eq!(mem.num_regions(), 2);
        for region in mem.iter() {
            let flags = vm_flags(region.as_ptr() as usize).expect("guest mapping in smaps");
            assert!(flags.iter().any(|f| f == "dc"), "VmFlags: {flags:?}");
            // MADV_HUGEPAGE ("hg") where the host's THP mode asks for it.
            let advised = flags.iter().any(|f| f == "hg");
            assert_eq!(advised, thp_mode() == ThpMode::Madvise, "VmFlags: {flags:?}");
        }
    }

    #[test]
    fn the_selected_thp_mode_is_the_bracketed_word() {
        assert_eq!(parse_thp_mode("always [madvise] never\n"), ThpMode::Madvise);
        assert_eq!(parse_thp_mode("[always] madvise never"), ThpMode::Always);
        assert_eq!(parse_thp_mode("always madvise [never]"), ThpMode::Never);
        assert_eq!(parse_thp_mode(""), ThpMode::Never);
    }

    /// Guest RAM lands on 2 MiB boundaries. Other test threads map memory
    /// too and may take the hole now and then: most tries must align.
    #[test]
    fn huge_page_guest_memory_is_2mib_aligned() {
        use vm_memory::GuestMemoryBackend;
        let aligned = (0..10)
            .filter(|_| {
                let mem = create_guest_memory(64 << 20, true).unwrap();
                let all = mem
                    .iter()
                    .all(|r| (r.as_ptr() as usize).is_multiple_of(HUGE_PAGE));
                all
            })
            .count();
        assert!(aligned >= 5, "{aligned} of 10 aligned");
        // Without huge pages, nothing is asked of the kernel.
        let mem = create_guest_memory(64 << 20, false).unwrap();
        let region = mem.iter().next().unwrap();
        let flags = vm_flags(region.as_ptr() as usize).unwrap();
        assert!(!flags.iter().any(|f| f == "hg"), "VmFlags: {flags:?}");
    }

    #[test]
    fn resident_counts_touched_pages_only() {
        let mem = create_guest_memory(16 << 20, false).unwrap();
        let before = resident_bytes(&mem).unwrap();
        mem.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert_eq!(after - before, 2 * 4096);
    }
}
