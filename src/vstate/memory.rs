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
}

/// Maps `mem_size` bytes of guest RAM, split around the MMIO gap.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Map {
        mib: mem_size >> 20,
        source,
    })
}

/// The `KEY: N kB` value of a /proc file such as /proc/meminfo or
/// /proc/self/status, in KiB.
pub fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

    #[test]
    fn resident_counts_touched_pages_only() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let before = resident_bytes(&mem).unwrap();
        mem.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert_eq!(after - before, 2 * 4096);
    }
}
