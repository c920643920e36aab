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
