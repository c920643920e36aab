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

/// Maps `mem_size` bytes of guest RAM, split around the MMIO gap.
///
/// The mappings are `MADV_DONTFORK`: a fork (the VM teardown child) then
/// neither copies their page tables, which for a large guest would cost
/// time and memory, nor shares guest pages with a process that has no use
/// for them.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let regions: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Map {
        mib: mem_size >> 20,
        source,
    })?;
    for region in mem.iter() {
        // SAFETY: the region is a live, page-aligned anonymous mapping of
        // `len` bytes that `mem` owns; MADV_DONTFORK changes only whether a
        // child process inherits it, not its contents or our access to it.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, libc::MADV_DONTFORK) };
        if rc != 0 {
            return Err(MemoryError::DontFork(std::io::Error::last_os_error()));
        }
    }
    Ok(mem)
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
        let mem = create_guest_memory(layout::MMIO_GAP_START + (16 << 20)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        for region in mem.iter() {
            let flags = vm_flags(region.as_ptr() as usize).expect("guest mapping in smaps");
            assert!(flags.iter().any(|f| f == "dc"), "VmFlags: {flags:?}");
        }
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
