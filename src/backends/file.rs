//! A raw disk image in a host file or block device.
//!
//! All I/O is positional (no shared file offset). Guest buffers arrive as
//! `VolatileSlice`s: the guest may change them while we work, so they are only
//! touched by the kernel (vectored I/O) or by volatile copies, never through
//! Rust references.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use log::warn;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::VolatileSlice;
use vmm_sys_util::fallocate::FallocateMode;

use super::image_io::{ImageIo, Os};

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
    /// Host page cache, and the image is never synced on the guest's behalf:
    /// flushes are ignored, and so is write-through (a driver that did not
    /// negotiate flushes). Fast, but a host crash loses data the guest
    /// believes is stable. As `cache=unsafe` in QEMU and `Unsafe` in
    /// Firecracker.
    Unsafe,
    /// Host page cache; guest flushes reach stable storage.
    #[default]
    Writeback,
    /// O_DIRECT: bypass the host page cache. Flushes still reach storage.
    None,
}

impl CacheMode {
    /// The name `cache=` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsafe => "unsafe",
            Self::Writeback => "writeback",
            Self::None => "none",
        }
    }
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
    /// Fixed at open; the guest is told this size.
    size: u64,
    /// A regular file, which another process may shrink under us (a block
    /// device keeps its size).
    regular_file: bool,
    read_only: bool,
    cache: CacheMode,
    /// Sync every change before it returns; see [`FileBackend::set_write_through`].
    write_through: bool,
    identity: (u64, u64),
    io: Box<dyn ImageIo>,
    /// Why a sync failed, once one has; see [`FileBackend::flush`].
    failed_sync: Option<io::Error>,
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
            regular_file: kind.is_file(),
            read_only,
            cache,
            write_through: false,
            identity: (meta.dev(), meta.ino()),
            io: Box::new(Os),
            failed_sync: None,
            bounce: Vec::new(),
        })
    }

    /// Routes the image's system calls through `io`: the fault-injection seam.
    #[cfg(test)]
    pub(crate) fn with_io(mut self, io: Box<dyn ImageIo>) -> Self {
        self.io = io;
        self
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

    /// With write-through on, every write, write-zeroes and discard is on
    /// stable storage before it returns, as [`FileBackend::flush`] would
    /// leave it: what a driver is promised when it has no flush command.
    /// (One fdatasync per request rather than O_DSYNC: that would need the
    /// image reopened, which breaks its lock, and the O_DIRECT and
    /// zero-filling paths would sync once per chunk.) `cache=unsafe` never
    /// syncs, so there it changes nothing. Off when opened.
    pub fn set_write_through(&mut self, on: bool) {
        self.write_through = on;
    }

    pub fn is_write_through(&self) -> bool {
        self.write_through
    }

    /// Fills `bufs`, in order, from the image starting at `offset`. Fails
    /// where the file has shrunk since it was opened.
    pub fn read_at(&mut self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let len = total_len(bufs);
        self.check_range(offset, len)?;
        let result = if len == 0 {
            Ok(())
        } else if self.cache == CacheMode::None {
            self.read_direct(offset, bufs, len)
        } else {
            self.transfer_vectored(offset, bufs, Direction::Read)
        };
        result.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.shrunk_error(offset, len),
            _ => e,
        })
    }

    /// Writes `bufs`, in order, to the image starting at `offset`. Never
    /// grows the file back if another process has shrunk it.
    pub fn write_at(&mut self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.write_unsynced(offset, bufs)?;
        self.sync_if_write_through()
    }

    fn write_unsynced(&mut self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.check_writable()?;
        let len = total_len(bufs);
        self.check_range(offset, len)?;
        self.check_not_shrunk(offset, len)?;
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
    ///
    /// A failed sync is sticky. Linux reports a writeback error to a file
    /// once and drops the pages it could not write, so the next fdatasync
    /// would succeed with the data gone; with O_DIRECT, what failed may be
    /// the metadata or the disk's own cache, which is no better. So once a
    /// sync fails every later flush fails too, for the life of the backend
    /// (a guest reset does not bring the data back): the operator checks
    /// the host storage and restarts the VM. Reads and writes go on: the
    /// guest's latest data is still in the page cache, and refusing them
    /// would not save anything; a write that must be durable at once
    /// (write-through) ends in a flush, and so fails.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.read_only || self.cache == CacheMode::Unsafe {
            return Ok(());
        }
        let cause = match self.failed_sync.take() {
            Some(cause) => cause,
            None => match self.io.fdatasync(&self.file) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::error!(
                        "cannot sync disk image {}: {e}; the guest's recent writes may be lost, and \
                         every later flush will fail: check the host storage, then restart the VM",
                        self.path.display()
                    );
                    e
                }
            },
        };
        let error = io::Error::new(
            cause.kind(),
            format!(
                "disk image {} could not be synced ({cause}); writes may have been lost since, so \
                 it cannot be flushed again until the VM is restarted",
                self.path.display()
            ),
        );
        self.failed_sync = Some(cause);
        Err(error)
    }

    /// Tells the host the range is unused. Advisory: succeeds without doing
    /// anything where the filesystem cannot punch holes.
    pub fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        match self.fallocate(true, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            other => other?,
        }
        self.sync_if_write_through()
    }

    /// Makes the range read as zeroes. With `may_deallocate` it is punched
    /// out; otherwise it stays allocated (the guest may rely on that, e.g.
    /// to preallocate). Falls back to writing zeroes.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, may_deallocate: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        self.check_not_shrunk(offset, len)?;
        self.zero_unsynced(offset, len, may_deallocate)?;
        self.sync_if_write_through()
    }

    fn zero_unsynced(&mut self, offset: u64, len: u64, may_deallocate: bool) -> io::Result<()> {
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

    fn sync_if_write_through(&mut self) -> io::Result<()> {
        if self.write_through {
            self.flush()
        } else {
            Ok(())
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

    /// Refuses a write reaching past the end of a file that has shrunk
    /// since it was opened (another process truncated it): the write would
    /// silently grow it back. The guest keeps the size it was told, so it
    /// gets an error for that range. A truncation between this check and
    /// the write still races with us; only cooperating processes (the
    /// image lock) rule that out.
    fn check_not_shrunk(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.regular_file || len == 0 {
            return Ok(());
        }
        let current = self.file.metadata()?.len();
        if offset.saturating_add(len) > current {
            return Err(self.shrunk_error(offset, len));
        }
        Ok(())
    }

    fn shrunk_error(&self, offset: u64, len: u64) -> io::Error {
        let current = self
            .file
            .metadata()
            .map_or_else(|e| e.to_string(), |m| m.len().to_string());
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{len} bytes at offset {offset} are past the end of disk image {}, which shrank from \
                 {} to {current} bytes while in use; another process must have truncated it",
                self.path.display(),
                self.size
            ),
        )
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
        // SAFETY: each iovec describes a live guest-memory slice (held by
        // `guards`); the kernel only touches those ranges, and nothing holds
        // Rust references to them.
        unsafe { transfer(&*self.io, &self.file, &mut iovecs, offset, direction) }
    }

    fn read_direct(&mut self, offset: u64, bufs: &[VolatileSlice<'_>], len: u64) -> io::Result<()> {
        let bounce = aligned_bounce(&mut self.bounce);
        let mut guest = GuestCursor::new(bufs);
        let mut done = 0;
        while done < len {
            let w = DirectWindow::new(offset + done, len - done);
            // The image size is a multiple of the alignment, so the widened
            // window never reaches past its end.
            transfer_host(
                &*self.io,
                &self.file,
                &mut bounce[..w.span],
                w.start,
                Direction::Read,
            )?;
            guest.copy_from_host(&bounce[w.skip..w.skip + w.want])?;
            done += w.want as u64;
        }
        Ok(())
    }

    fn write_direct(&mut self, offset: u64, bufs: &[VolatileSlice<'_>], len: u64) -> io::Result<()> {
        let (io, file) = (&*self.io, &self.file);
        let bounce = aligned_bounce(&mut self.bounce);
        let mut guest = GuestCursor::new(bufs);
        let mut done = 0;
        while done < len {
            let w = DirectWindow::new(offset + done, len - done);
            let block = &mut bounce[..w.span];
            let end = w.skip + w.want;
            // Blocks we only partly overwrite keep their other bytes.
            if w.skip != 0 {
                transfer_host(io, file, &mut block[..DIRECT_IO_ALIGN], w.start, Direction::Read)?;
            }
            let tail = w.span - DIRECT_IO_ALIGN;
            let partial_tail = !end.is_multiple_of(DIRECT_IO_ALIGN);
            let tail_is_head = tail == 0 && w.skip != 0;
            if partial_tail && !tail_is_head {
                transfer_host(
                    io,
                    file,
                    &mut block[tail..],
                    w.start + tail as u64,
                    Direction::Read,
                )?;
            }
            guest.copy_to_host(&mut block[w.skip..end])?;
            transfer_host(io, file, block, w.start, Direction::Write)?;
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
            self.write_unsynced(offset + done, &[slice])?;
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
            match self.io.fallocate(&self.file, mode, offset, len) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Moves `iovecs` to or from the image at `offset`, resuming after short
/// transfers and interruptions.
///
/// # Safety
///
/// Every iovec must describe memory that stays valid for the whole call
/// (writable, for a read) and that no Rust reference points into.
unsafe fn transfer(
    io: &dyn ImageIo,
    file: &File,
    iovecs: &mut [libc::iovec],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let mut first = 0;
    let mut pos = offset;
    while first < iovecs.len() {
        let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
        // SAFETY: `batch` is part of `iovecs`, which the caller vouches for.
        let done = unsafe {
            match direction {
                Direction::Read => io.preadv(file, batch, pos),
                Direction::Write => io.pwritev(file, batch, pos),
            }
        };
        match done {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) => {
                return Err(match direction {
                    Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                    Direction::Write => io::ErrorKind::WriteZero.into(),
                })
            }
            Ok(n) => {
                pos += n as u64;
                advance_iovecs(iovecs, &mut first, n);
            }
        }
    }
    Ok(())
}

/// [`transfer`] for one host buffer.
fn transfer_host(
    io: &dyn ImageIo,
    file: &File,
    buf: &mut [u8],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let mut iovec = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is borrowed mutably for the whole call, so the memory
    // is valid and nothing else refers to it.
    unsafe { transfer(io, file, &mut iovec, offset, direction) }
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
