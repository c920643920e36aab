//! A raw disk image in a host file or block device.
//!
//! All I/O is positional (no shared file offset). Guest buffers arrive as
//! `VolatileSlice`s: the guest may change them while we work, so they are only
//! touched by the kernel (vectored I/O) or by volatile copies, never through
//! Rust references.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use log::warn;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::VolatileSlice;
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

/// Images must be a whole number of these.
pub const SECTOR_SIZE: u64 = 512;
/// O_DIRECT offset, length and buffer alignment. 4 KiB satisfies every
/// logical block size in common use, so the device need not be probed.
const DIRECT_IO_ALIGN: usize = 4096;
/// Bounce buffer size for O_DIRECT, and chunk size for zero-filling.
const BOUNCE_LEN: usize = 1 << 20;
/// The kernel refuses more iovecs than this in one call.
const IOV_MAX: usize = 1024;

/// How the host page cache is used for the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Host page cache; guest flushes are ignored. Fast, but a host crash
    /// loses data the guest believes is stable.
    Unsafe,
    /// Host page cache; guest flushes reach stable storage.
    #[default]
    Writeback,
    /// O_DIRECT: bypass the host page cache. Flushes still reach storage.
    None,
}

impl FromStr for CacheMode {
    type Err = FileBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unsafe" => Ok(Self::Unsafe),
            "writeback" => Ok(Self::Writeback),
            "none" => Ok(Self::None),
            other => Err(FileBackendError::UnknownCacheMode(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileBackendError {
    #[error("unknown cache mode {0:?}; use unsafe, writeback or none")]
    UnknownCacheMode(String),
    #[error("cannot open disk image {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot open disk image {} with cache=none: its filesystem does not support O_DIRECT; \
         use cache=writeback",
        path.display()
    )]
    DirectIoUnsupported { path: PathBuf },
    #[error("disk image {} is not a regular file or block device", path.display())]
    NotADisk { path: PathBuf },
    #[error("disk image {} is in use by another process; pass shared=on to allow", path.display())]
    InUse { path: PathBuf },
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot read the size of disk image {}: {source}", path.display())]
    Size { path: PathBuf, source: io::Error },
    #[error(
        "disk image {} is {size} bytes, not a multiple of 512; resize it (e.g. truncate -s)",
        path.display()
    )]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error(
        "disk image {} is {size} bytes; cache=none needs a multiple of 4096, so resize it or \
         use cache=writeback",
        path.display()
    )]
    UnalignedDirectSize { path: PathBuf, size: u64 },
}

/// An open disk image.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    cache: CacheMode,
    identity: (u64, u64),
    /// Allocated on first O_DIRECT transfer; over-sized so an aligned
    /// `BOUNCE_LEN` window always fits.
    bounce: Vec<u8>,
}

impl FileBackend {
    /// Opens `path`. A read-only image is opened `O_RDONLY` (plus `O_NOATIME`
    /// when we own it) and is never written, synced or touched otherwise.
    /// A writable image is locked exclusively unless `shared`; a read-only or
    /// shared one takes a shared lock, so it still excludes exclusive users.
    pub fn open(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        shared: bool,
    ) -> Result<Self, FileBackendError> {
        let direct = cache == CacheMode::None;
        let mut file = open_image(path, read_only, direct)?;
        let size_err = |source| FileBackendError::Size {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(size_err)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(FileBackendError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        lock_image(&file, path, read_only || shared)?;
        // Seeking to the end also works for block devices, whose metadata
        // length is 0. The position itself is never used.
        let size = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(FileBackendError::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }
        if direct && !size.is_multiple_of(DIRECT_IO_ALIGN as u64) {
            return Err(FileBackendError::UnalignedDirectSize {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            cache,
            identity: (meta.dev(), meta.ino()),
            bounce: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image size in bytes; always a multiple of [`SECTOR_SIZE`].
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `(st_dev, st_ino)`: names the image uniquely on this host.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Fills `bufs`, in order, from the image starting at `offset`.
    pub fn read_at(&mut self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let len = total_len(bufs);
        self.check_range(offset, len)?;
        if len == 0 {
            Ok(())
        } else if self.cache == CacheMode::None {
            self.read_direct(offset, bufs, len)
        } else {
            self.transfer_vectored(offset, bufs, Direction::Read)
        }
    }

    /// Writes `bufs`, in order, to the image starting at `offset`.
    pub fn write_at(&mut self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.check_writable()?;
        let len = total_len(bufs);
        self.check_range(offset, len)?;
        if len == 0 {
            Ok(())
        } else if self.cache == CacheMode::None {
            self.write_direct(offset, bufs, len)
        } else {
            self.transfer_vectored(offset, bufs, Direction::Write)
        }
    }

    /// Makes every completed write stable. A no-op for read-only images
    /// (nothing to flush, and syncing would touch the file) and for
    /// `cache=unsafe`.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.read_only || self.cache == CacheMode::Unsafe {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Tells the host the range is unused. Advisory: succeeds without doing
    /// anything where the filesystem cannot punch holes.
    pub fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        match self.fallocate(true, offset, len) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes the range read as zeroes. With `may_deallocate` it is punched
    /// out; otherwise it stays allocated (the guest may rely on that, e.g.
    /// to preallocate). Falls back to writing zeroes.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, may_deallocate: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if may_deallocate {
            match self.fallocate(true, offset, len) {
                Err(e) if is_unsupported(&e) => {}
                other => return other,
            }
        }
        match self.fallocate(false, offset, len) {
            Err(e) if is_unsupported(&e) => self.fill_zeroes(offset, len),
            other => other,
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("disk image {} is read-only", self.path.display()),
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} run past the end of disk image {} ({} bytes)",
                    self.path.display(),
                    self.size
                ),
            )),
        }
    }

    fn transfer_vectored(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_>],
        direction: Direction,
    ) -> io::Result<()> {
        // The guards keep the guest mappings valid for the whole transfer.
        let guards: Vec<PtrGuardMut> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.ptr_guard_mut())
            .collect();
        let mut iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        let fd = self.file.as_raw_fd();
        let mut first = 0;
        let mut pos = offset;
        while first < iovecs.len() {
            let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
            let count = batch.len() as libc::c_int;
            let file_offset =
                libc::off_t::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: each iovec describes a live guest-memory slice (held by
            // `guards`) and `count` is the length of `batch`; the kernel only
            // touches those ranges, and nothing holds Rust references to them.
            let ret = unsafe {
                match direction {
                    Direction::Read => libc::preadv(fd, batch.as_ptr(), count, file_offset),
                    Direction::Write => libc::pwritev(fd, batch.as_ptr(), count, file_offset),
                }
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if ret == 0 {
                return Err(match direction {
                    Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                    Direction::Write => io::ErrorKind::WriteZero.into(),
                });
            }
            pos += ret as u64;
            advance_iovecs(&mut iovecs, &mut first, ret as usize);
        }
        Ok(())
    }

    fn read_direct(&mut self, offset: u64, bufs: &[VolatileSlice<'_>], len: u64) -> io::Result<()> {
        let bounce = aligned_bounce(&mut self.bounce);
        let mut guest = GuestCursor::new(bufs);
        let mut done = 0;
        while done < len {
            let w = DirectWindow::new(offset + done, len - done);
            // The image size is a multiple of the alignment, so the widened
            // window never reaches past its end.
            self.file.read_exact_at(&mut bounce[..w.span], w.start)?;
            guest.copy_from_host(&bounce[w.skip..w.skip + w.want])?;
            done += w.want as u64;
        }
        Ok(())
    }

    fn write_direct(&mut self, offset: u64, bufs: &[VolatileSlice<'_>], len: u64) -> io::Result<()> {
        let bounce = aligned_bounce(&mut self.bounce);
        let mut guest = GuestCursor::new(bufs);
        let mut done = 0;
        while done < len {
            let w = DirectWindow::new(offset + done, len - done);
            let block = &mut bounce[..w.span];
            let end = w.skip + w.want;
            // Blocks we only partly overwrite keep their other bytes.
            if w.skip != 0 {
                self.file.read_exact_at(&mut block[..DIRECT_IO_ALIGN], w.start)?;
            }
            let tail = w.span - DIRECT_IO_ALIGN;
            let partial_tail = !end.is_multiple_of(DIRECT_IO_ALIGN);
            let tail_is_head = tail == 0 && w.skip != 0;
            if partial_tail && !tail_is_head {
                self.file
                    .read_exact_at(&mut block[tail..], w.start + tail as u64)?;
            }
            guest.copy_to_host(&mut block[w.skip..end])?;
            self.file.write_all_at(block, w.start)?;
            done += w.want as u64;
        }
        Ok(())
    }

    fn fill_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let chunk = usize::try_from(len).unwrap_or(BOUNCE_LEN).min(BOUNCE_LEN);
        let mut zeroes = vec![0u8; chunk];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            let slice = VolatileSlice::from(&mut zeroes[..n]);
            self.write_at(offset + done, &[slice])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Punches a hole in, or zero-allocates, the range; never changes the size.
    fn fallocate(&self, punch_hole: bool, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        loop {
            let mode = if punch_hole {
                FallocateMode::PunchHole
            } else {
                FallocateMode::ZeroRange
            };
            let keep_size = true;
            match fallocate(&self.file, mode, keep_size, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

fn open_image(path: &Path, read_only: bool, direct: bool) -> Result<File, FileBackendError> {
    let flags = if direct { libc::O_DIRECT } else { 0 };
    let failed = |source: io::Error| {
        if direct && source.raw_os_error() == Some(libc::EINVAL) {
            FileBackendError::DirectIoUnsupported {
                path: path.to_path_buf(),
            }
        } else {
            FileBackendError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    if read_only {
        // O_NOATIME keeps reads from updating the image's access time, but
        // only the file's owner (or CAP_FOWNER) may ask for it.
        match OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_NOATIME)
            .open(path)
        {
            Ok(file) => return Ok(file),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
        .map_err(failed)
}

/// Takes an advisory `flock` on the image, without waiting.
fn lock_image(file: &File, path: &Path, shared: bool) -> Result<(), FileBackendError> {
    let locked = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(FileBackendError::InUse {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) if matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP)) => {
            warn!(
                "cannot lock disk image {}: {e}; nothing stops another process from using it",
                path.display()
            );
            Ok(())
        }
        Err(TryLockError::Error(source)) => Err(FileBackendError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

fn total_len(bufs: &[VolatileSlice<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Drops the first `n` transferred bytes from `iovecs[*first..]`.
fn advance_iovecs(iovecs: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 {
        let Some(iov) = iovecs.get_mut(*first) else {
            return;
        };
        if n >= iov.iov_len {
            n -= iov.iov_len;
            *first += 1;
        } else {
            iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
            iov.iov_len -= n;
            n = 0;
        }
    }
}

/// The aligned `BOUNCE_LEN` window of `buf`, allocating it on first use.
fn aligned_bounce(buf: &mut Vec<u8>) -> &mut [u8] {
    if buf.is_empty() {
        *buf = vec![0; BOUNCE_LEN + DIRECT_IO_ALIGN];
    }
    let misalignment = buf.as_ptr().addr() % DIRECT_IO_ALIGN;
    let skip = (DIRECT_IO_ALIGN - misalignment) % DIRECT_IO_ALIGN;
    &mut buf[skip..skip + BOUNCE_LEN]
}

/// One O_DIRECT transfer: `want` bytes at image offset `start + skip`,
/// widened to the aligned range `start..start + span`.
struct DirectWindow {
    start: u64,
    skip: usize,
    want: usize,
    span: usize,
}

impl DirectWindow {
    fn new(pos: u64, remaining: u64) -> Self {
        let align = DIRECT_IO_ALIGN as u64;
        let start = pos - pos % align;
        let skip = (pos - start) as usize;
        let want = remaining.min((BOUNCE_LEN - skip) as u64) as usize;
        let span = (skip + want).next_multiple_of(DIRECT_IO_ALIGN);
        Self {
            start,
            skip,
            want,
            span,
        }
    }
}

/// Walks a list of guest slices, copying to or from host buffers.
struct GuestCursor<'s, 'm> {
    bufs: &'s [VolatileSlice<'m>],
    index: usize,
    offset: usize,
}

impl<'s, 'm> GuestCursor<'s, 'm> {
    fn new(bufs: &'s [VolatileSlice<'m>]) -> Self {
        Self {
            bufs,
            index: 0,
            offset: 0,
        }
    }

    /// The next piece of guest memory, at most `max` bytes long.
    fn next_piece(&mut self, max: usize) -> io::Result<VolatileSlice<'m>> {
        loop {
            let slice = self
                .bufs
                .get(self.index)
                .ok_or_else(|| io::Error::other("guest buffers end before the transfer does"))?;
            let room = slice.len() - self.offset;
            if room == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = room.min(max);
            let piece = slice.subslice(self.offset, n).map_err(io::Error::other)?;
            self.offset += n;
            return Ok(piece);
        }
    }

    fn copy_from_host(&mut self, mut src: &[u8]) -> io::Result<()> {
        while !src.is_empty() {
            let piece = self.next_piece(src.len())?;
            piece.copy_from(&src[..piece.len()]);
            src = &src[piece.len()..];
        }
        Ok(())
    }

    fn copy_to_host(&mut self, mut dst: &mut [u8]) -> io::Result<()> {
        while !dst.is_empty() {
            let piece = self.next_piece(dst.len())?;
            let n = piece.copy_to(&mut dst[..piece.len()]);
            dst = &mut dst[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
