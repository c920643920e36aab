//! The system calls through which a [`super::FileBackend`] reads, changes
//! and syncs its image.
//!
//! Production uses [`Os`]: the plain calls. The trait is the seam where
//! tests put a fault injector, to see what the device does when a disk dies
//! or a filesystem fills up, which a test cannot arrange for real on most
//! hosts (a device-mapper `error` target needs privileges and kernel
//! modules a container lacks).

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

pub trait ImageIo: Debug + Send {
    /// `preadv(2)` at `offset`; returns the number of bytes read.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory that is valid for writes for the
    /// whole call and that no Rust reference points into.
    unsafe fn preadv(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize>;

    /// `pwritev(2)` at `offset`; returns the number of bytes written.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory that is valid for reads for the
    /// whole call.
    unsafe fn pwritev(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize>;

    /// `fdatasync(2)`.
    fn fdatasync(&self, file: &File) -> io::Result<()>;

    /// `fallocate(2)` with `FALLOC_FL_KEEP_SIZE`.
    fn fallocate(&self, file: &File, mode: FallocateMode, offset: u64, len: u64) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Os;

impl ImageIo for Os {
    unsafe fn preadv(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize> {
        let (count, offset) = vector_args(iovecs, offset)?;
        // SAFETY: the caller vouches for the iovecs; `count` is their number.
        let ret = unsafe { libc::preadv(file.as_raw_fd(), iovecs.as_ptr(), count, offset) };
        byte_count(ret)
    }

    unsafe fn pwritev(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize> {
        let (count, offset) = vector_args(iovecs, offset)?;
        // SAFETY: the caller vouches for the iovecs; `count` is their number.
        let ret = unsafe { libc::pwritev(file.as_raw_fd(), iovecs.as_ptr(), count, offset) };
        byte_count(ret)
    }

    fn fdatasync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn fallocate(&self, file: &File, mode: FallocateMode, offset: u64, len: u64) -> io::Result<()> {
        let keep_size = true;
        fallocate(file, mode, keep_size, offset, len).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

fn vector_args(iovecs: &[libc::iovec], offset: u64) -> io::Result<(libc::c_int, libc::off_t)> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    Ok((
        libc::c_int::try_from(iovecs.len()).map_err(invalid)?,
        libc::off_t::try_from(offset).map_err(invalid)?,
    ))
}

fn byte_count(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// The fault injector tests put behind a backend.
#[cfg(test)]
pub mod testing {
    use std::fs::File;
    use std::io;
    use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
    use std::sync::Arc;

    use vmm_sys_util::fallocate::FallocateMode;

    use super::{ImageIo, Os};

    /// Forwards to [`Os`], counts syncs, and fails the calls it is told
    /// to. Clones share their state, so a test keeps one to steer the copy
    /// inside a backend.
    #[derive(Debug, Default, Clone)]
    pub struct FaultyIo(Arc<Faults>);

    #[derive(Debug, Default)]
    struct Faults {
        syncs: AtomicUsize,
        /// errno for the next fdatasync only (Linux reports a writeback
        /// error once); 0 for none.
        next_sync_error: AtomicI32,
        /// errno for every write and fallocate, as from a full filesystem;
        /// 0 for none.
        write_error: AtomicI32,
    }

    impl FaultyIo {
        pub fn boxed(&self) -> Box<dyn ImageIo> {
            Box::new(self.clone())
        }

        /// fdatasync calls made so far, failed ones included.
        pub fn syncs(&self) -> usize {
            self.0.syncs.load(Ordering::SeqCst)
        }

        /// The next fdatasync fails with `errno`; later ones succeed again.
        pub fn fail_next_sync(&self, errno: i32) {
            self.0.next_sync_error.store(errno, Ordering::SeqCst);
        }

        /// Every write and fallocate fails with `errno` (0: none do).
        pub fn fail_writes(&self, errno: i32) {
            self.0.write_error.store(errno, Ordering::SeqCst);
        }

        fn write_fault(&self) -> io::Result<()> {
            match self.0.write_error.load(Ordering::SeqCst) {
                0 => Ok(()),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    impl ImageIo for FaultyIo {
        unsafe fn preadv(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize> {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { Os.preadv(file, iovecs, offset) }
        }

        unsafe fn pwritev(&self, file: &File, iovecs: &[libc::iovec], offset: u64) -> io::Result<usize> {
            self.write_fault()?;
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { Os.pwritev(file, iovecs, offset) }
        }

        fn fdatasync(&self, file: &File) -> io::Result<()> {
            self.0.syncs.fetch_add(1, Ordering::SeqCst);
            match self.0.next_sync_error.swap(0, Ordering::SeqCst) {
                0 => Os.fdatasync(file),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }

        fn fallocate(&self, file: &File, mode: FallocateMode, offset: u64, len: u64) -> io::Result<()> {
            self.write_fault()?;
            Os.fallocate(file, mode, offset, len)
        }
    }
}
