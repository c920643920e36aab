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
    fn resident_counts_touched_pages_only() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let before = resident_bytes(&mem).unwrap();
        mem.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert_eq!(after - before, 2 * 4096);
    }
}
