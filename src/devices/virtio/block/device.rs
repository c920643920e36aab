//! The virtio-blk device model: features, config space, and request
//! execution against a [`FileBackend`].

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::features::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use super::request::{self, Limits, Operation, Parsed};
use super::request_status::{IOERR, OK};
use super::{BlockConfig, CacheMode, BLOCK_DEVICE_ID, ID_BYTES, SECTOR_SIZE};
use crate::backends::{FileBackend, FileBackendError};
use crate::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::devices::virtio::queue::{
    drain_queue_or_wait, Chain, PassEnd, QueueError, QueueRules, Served, Take,
};
use crate::devices::virtio::ranges::{guest_slices, total_len, write_ranges};
use crate::devices::virtio::{
    read_config_bytes, Activation, HostEvents, Interrupt, VirtioDevice, VirtioError, INTERRUPT_CONFIG,
    INTERRUPT_VRING,
};
use crate::rate_limiter::{
    RateLimitConfigError, RateLimiter, RateLimiterConfig, RateLimiterError, TokenKind,
};
use crate::vstate::memory::GuestMemoryMmap;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most data one request may read or write, or zeroes it may write.
/// A request runs to completion on the VMM thread, so this bounds how long
/// one request can hold it: 8 MiB took 2-3 ms here, where 128 MiB took
/// 25-60 ms, and over 300 ms when ext4 had to allocate the blocks first.
/// Linux splits its requests at 1.25 to 4 MiB anyway.
pub const MAX_REQUEST_BYTES: u64 = 8 << 20;
/// Data segments per request (`seg_max`); with header and status a direct
/// chain still fits the queue.
pub const SEG_MAX: u32 = 128;
/// Largest single data segment (`size_max`): `SEG_MAX` of them make
/// `MAX_REQUEST_BYTES`.
pub const SIZE_MAX: u32 = (MAX_REQUEST_BYTES / SEG_MAX as u64) as u32;
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEGMENTS: u32 = 16;
/// One segment of `MAX_REQUEST_BYTES`: where the image cannot allocate
/// zeroed blocks, the backend writes real zeroes.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = (MAX_REQUEST_BYTES / SECTOR_SIZE) as u32;
pub const MAX_WRITE_ZEROES_SEGMENTS: u32 = 1;
/// Discard granularity hint: 4 KiB, the usual filesystem block.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// `virtio_blk_config` up to and including `write_zeroes_may_unmap` and its
/// padding; later fields belong to features we do not offer and read as 0.
const CONFIG_LEN: usize = 60;
/// The host-event token of the rate limiter's timer.
pub const RATE_LIMITER_TIMER: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Backend(#[from] FileBackendError),
    #[error(
        "disk id {id:?} for {} is invalid: use at most 20 printable ASCII characters",
        path.display()
    )]
    InvalidId { id: String, path: PathBuf },
    #[error("disk {}: {source}", path.display())]
    RateLimiter { path: PathBuf, source: RateLimiterError },
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rules: QueueRules,
    host_events: Arc<HostEvents>,
}

/// How the image was opened, to open another the same way.
#[derive(Clone, Copy, Debug)]
struct OpenMode {
    cache: CacheMode,
    shared: bool,
}

/// A virtio-blk device with one request queue.
pub struct BlockDevice {
    backend: FileBackend,
    open_mode: OpenMode,
    id: [u8; ID_BYTES],
    features: u64,
    config: [u8; CONFIG_LEN],
    /// Bumped whenever the config space changes under the driver.
    config_generation: u32,
    limits: Limits,
    limiter: RateLimiter,
    active: Option<Active>,
}

impl BlockDevice {
    /// Opens the image named in `config`.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let backend = FileBackend::open(&config.path, config.read_only, config.cache, config.shared)?;
        let id = match &config.id {
            Some(id) => parse_id(id).ok_or_else(|| BlockError::InvalidId {
                id: id.clone(),
                path: config.path.clone(),
            })?,
            None => default_id(backend.identity()),
        };
        let limiter = RateLimiter::new(&config.rate_limiter).map_err(|source| BlockError::RateLimiter {
            path: config.path.clone(),
            source,
        })?;
        let mut device = Self::with_backend(backend, id, limiter);
        device.open_mode = OpenMode {
            cache: config.cache,
            shared: config.shared,
        };
        Ok(device)
    }

    pub(super) fn with_backend(backend: FileBackend, id: [u8; ID_BYTES], limiter: RateLimiter) -> Self {
        let read_only = backend.is_read_only();
        let mut features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_F_RING_EVENT_IDX,
            VIRTIO_F_INDIRECT_DESC,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_SIZE_MAX,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | 1 << bit);
        // A read-only disk has nothing to discard or zero.
        features |= if read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        };
        let limits = Limits {
            capacity: backend.size(),
            read_only,
            // Header and status may share descriptors with data, or not.
            max_descriptors: SEG_MAX as usize + 2,
            max_data_len: MAX_REQUEST_BYTES,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_segments: MAX_DISCARD_SEGMENTS,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
            max_write_zeroes_segments: MAX_WRITE_ZEROES_SEGMENTS,
        };
        Self {
            config: config_space(backend.size() / SECTOR_SIZE),
            backend,
            open_mode: OpenMode {
                cache: CacheMode::default(),
                shared: false,
            },
            id,
            features,
            config_generation: 0,
            limits,
            limiter,
            active: None,
        }
    }

    /// Disk size in 512-byte sectors, fixed when the image is opened (or
    /// swapped, see [`BlockDevice::swap_backing_file`]). If another
    /// process shrinks a shared image, the guest is not told: its requests
    /// past the new end get IOERR.
    pub fn capacity_sectors(&self) -> u64 {
        self.limits.capacity / SECTOR_SIZE
    }

    /// The GET_ID response: NUL-padded ASCII.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    pub fn is_read_only(&self) -> bool {
        self.limits.read_only
    }

    pub fn path(&self) -> &Path {
        self.backend.path()
    }

    /// The limits in force.
    pub fn rate_limiter(&self) -> &RateLimiterConfig {
        self.limiter.config()
    }

    /// Times a request had to wait for its rate limit.
    pub fn throttle_count(&self) -> u64 {
        self.limiter.throttle_count()
    }

    /// Changes the rate limits while the VM runs (Firecracker's PATCH
    /// rules: a bucket given replaces, one absent stays, size 0 removes).
    pub fn update_rate_limiter(&mut self, patch: &RateLimiterConfig) -> Result<(), RateLimitConfigError> {
        self.limiter.update(patch)
    }

    /// Puts another image behind the disk while the VM runs (a new medium),
    /// opened with the drive's mode (read-only or not, cache, sharing).
    /// The capacity in the config space follows the new image, and a
    /// running driver gets a configuration-change interrupt so it sees the
    /// new size. On error the old image stays.
    pub fn swap_backing_file(&mut self, path: &Path) -> Result<(), BlockError> {
        let read_only = self.limits.read_only;
        let mut backend = FileBackend::open(path, read_only, self.open_mode.cache, self.open_mode.shared)?;
        backend.set_write_through(self.backend.is_write_through());
        // Writes that completed to the guest are on the old image already;
        // a write-back cache still wants them on disk before it goes.
        if !read_only {
            if let Err(e) = self.backend.flush() {
                log::warn!(
                    "virtio-blk: flushing {} before the swap: {e}",
                    self.backend.path().display()
                );
            }
        }
        self.backend = backend;
        self.limits.capacity = self.backend.size();
        self.config[..8].copy_from_slice(&(self.backend.size() / SECTOR_SIZE).to_le_bytes());
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(INTERRUPT_CONFIG) {
                error_guest!("virtio-blk: cannot tell the guest of the new medium: {e}");
            }
        }
        Ok(())
    }

    /// The same limits on `clock`: tests move time by hand.
    #[cfg(test)]
    pub(crate) fn set_rate_limiter_clock(&mut self, clock: crate::rate_limiter::Clock) {
        self.limiter = RateLimiter::with_clock(self.limiter.config(), clock).unwrap();
    }

    /// One pass over the request queue.
    fn serve_queue(&mut self, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        let Self {
            backend,
            id,
            limits,
            limiter,
            active,
            ..
        } = self;
        let (Some(active), Some(queue)) = (active.as_ref(), queues.get_mut(0)) else {
            return Ok(PassEnd::Drained);
        };
        let mem = &active.mem;
        let result = drain_queue_or_wait(queue, mem, &active.rules, |chain| {
            handle_chain(backend, id, limits, limiter, mem, chain)
        })?;
        if result.pass.notify {
            if let Err(e) = active.interrupt.trigger(INTERRUPT_VRING) {
                error_guest!("virtio-blk: cannot signal the guest: {e}");
            }
        }
        // Throttled (`waiting`): the requests stay in the ring and the
        // limiter's timer brings the device back.
        Ok(result.pass.end)
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        BLOCK_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // `writeback` is the only writable field, and needs CONFIG_WCE.
        debug_guest!(
            "virtio-blk: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        // Never readable unless throttled: watching it costs nothing.
        ctx.host_events
            .add(self.limiter.as_raw_fd(), RATE_LIMITER_TIMER, EventSet::IN)
            .map_err(|e| VirtioError::Activation(format!("cannot watch the disk's rate-limit timer: {e}")))?;
        // A driver without the flush command assumes there is no volatile
        // write cache (Linux: virtblk_get_cache_mode), so each write must be
        // durable when it completes.
        let flush_negotiated = ctx.acked_features & (1 << VIRTIO_BLK_F_FLUSH) != 0;
        self.backend.set_write_through(!flush_negotiated);
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rules: ctx.rules,
            host_events: ctx.host_events,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        if index != 0 {
            return Ok(PassEnd::Drained);
        }
        self.serve_queue(queues)
    }

    fn process_host_event(
        &mut self,
        token: u64,
        _ready: EventSet,
        queues: &mut [Queue],
    ) -> Result<PassEnd, QueueError> {
        if token != RATE_LIMITER_TIMER || self.active.is_none() {
            return Ok(PassEnd::Drained);
        }
        self.limiter.on_timer();
        let end = self.serve_queue(queues)?;
        if end == PassEnd::Yielded {
            // The timer is no longer ready and the driver does not notify
            // while notifications are off: come back after the others.
            self.limiter.wake_soon();
        }
        Ok(PassEnd::Drained)
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            if let Err(e) = active.host_events.remove(self.limiter.as_raw_fd()) {
                log::error!("virtio-blk: cannot stop watching the rate-limit timer: {e}");
            }
        }
        self.backend.set_write_through(false);
    }
}

/// Parses and executes one request; reports the bytes written into the
/// chain (data plus status; 0 if it could not be answered) and the I/O it
/// cost.
fn handle_chain(
    backend: &mut FileBackend,
    id: &[u8; ID_BYTES],
    limits: &Limits,
    limiter: &mut RateLimiter,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Take {
    match request::parse(chain, mem, limits) {
        Parsed::Valid { op, status } => {
            let bytes = op.io_bytes();
            if !limiter.consume(1, TokenKind::Ops) {
                return Take::Wait;
            }
            if !limiter.consume(bytes, TokenKind::Bytes) {
                limiter.undo(1, TokenKind::Ops);
                return Take::Wait;
            }
            Take::Done(execute_request(op, status, backend, id, mem))
        }
        Parsed::Unanswerable(error) => {
            warn_guest!("virtio-blk: returning a request unanswered: {error}");
            Take::Done(Served::default())
        }
        Parsed::Invalid { error, status } => {
            warn_guest!("virtio-blk: rejecting a request: {error}");
            Take::Done(Served {
                used_len: complete(mem, status, error.status(), 0),
                bytes: 0,
            })
        }
    }
}

/// Executes a valid request and writes its status.
fn execute_request(
    op: Operation,
    status: GuestAddress,
    backend: &mut FileBackend,
    id: &[u8; ID_BYTES],
    mem: &GuestMemoryMmap,
) -> Served {
    let bytes = op.io_bytes();
    let (code, written) = match execute(op, backend, id, mem) {
        Ok(written) => (OK, written),
        Err(e) => {
            warn_guest!("virtio-blk: I/O on {} failed: {e}", backend.path().display());
            (IOERR, 0)
        }
    };
    Served {
        used_len: complete(mem, status, code, written),
        bytes,
    }
}

fn complete(mem: &GuestMemoryMmap, status: GuestAddress, code: u8, written: u32) -> u32 {
    match mem.write_obj(code, status) {
        Ok(()) => written.saturating_add(1),
        // Checked during parsing; guest memory does not shrink.
        Err(e) => {
            error_guest!("virtio-blk: cannot write request status: {e}");
            written
        }
    }
}

/// Runs a validated request; returns how many data bytes reached the guest.
fn execute(
    op: Operation,
    backend: &mut FileBackend,
    id: &[u8; ID_BYTES],
    mem: &GuestMemoryMmap,
) -> io::Result<u32> {
    match op {
        Operation::Read { offset, data } => {
            backend.read_at(offset, &guest_slices(mem, &data)?)?;
            Ok(u32::try_from(total_len(&data)).unwrap_or(u32::MAX))
        }
        Operation::Write { offset, data } => {
            backend.write_at(offset, &guest_slices(mem, &data)?)?;
            Ok(0)
        }
        Operation::Flush => backend.flush().map(|()| 0),
        Operation::GetId { data } => {
            let written = write_ranges(mem, &data, id).map_err(io::Error::other)?;
            Ok(written as u32)
        }
        Operation::Discard(extents) => {
            for e in extents {
                backend.discard(e.offset, e.len)?;
            }
            Ok(0)
        }
        Operation::WriteZeroes(extents) => {
            for e in extents {
                backend.write_zeroes(e.offset, e.len, e.unmap)?;
            }
            Ok(0)
        }
    }
}

/// A user-supplied id: at most 20 printable ASCII bytes, NUL-padded.
fn parse_id(id: &str) -> Option<[u8; ID_BYTES]> {
    if id.len() > ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return None;
    }
    let mut out = [0u8; ID_BYTES];
    out[..id.len()].copy_from_slice(id.as_bytes());
    Some(out)
}

/// Derived from the image's device and inode: stable for the same file,
/// distinct between files. Keeps the (more distinctive) end if too long.
fn default_id((dev, ino): (u64, u64)) -> [u8; ID_BYTES] {
    let text = format!("{dev:x}-{ino:x}");
    let bytes = text.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(ID_BYTES)..];
    let mut out = [0u8; ID_BYTES];
    out[..tail.len()].copy_from_slice(tail);
    out
}

/// `virtio_blk_config` (§5.2.4), little-endian.
fn config_space(capacity_sectors: u64) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        config[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &capacity_sectors.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // 16: geometry, not offered.
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // 24: topology; 32: writeback, unused0, num_queues: not offered.
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEGMENTS.to_le_bytes());
    // write_zeroes_may_unmap: with the unmap flag we punch holes.
    put(56, &[1]);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_printable_ascii() {
        let id = parse_id("disk-1 root").unwrap();
        assert_eq!(&id[..11], b"disk-1 root");
        assert!(id[11..].iter().all(|&b| b == 0));
        assert_eq!(parse_id("a".repeat(20).as_str()).unwrap(), [b'a'; 20]);
        assert!(parse_id(&"a".repeat(21)).is_none());
        assert!(parse_id("tab\there").is_none());
        assert!(parse_id("caf\u{e9}").is_none());
    }

    #[test]
    fn default_id_keeps_the_distinctive_end() {
        assert_eq!(&default_id((0x803, 0x1f))[..8], b"803-1f\0\0");
        let long = default_id((u64::MAX, 0x1234_5678_9abc_def0));
        assert_eq!(&long, b"fff-123456789abcdef0");
    }

    #[test]
    fn config_space_layout() {
        let c = config_space(0x1234);
        assert_eq!(c[0..8], 0x1234u64.to_le_bytes());
        assert_eq!(c[8..12], SIZE_MAX.to_le_bytes());
        assert_eq!(c[12..16], SEG_MAX.to_le_bytes());
        assert_eq!(c[20..24], 512u32.to_le_bytes());
        assert_eq!(c[36..40], MAX_DISCARD_SECTORS.to_le_bytes());
        assert_eq!(c[44..48], DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        assert_eq!(c[48..52], MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        assert_eq!(c[56], 1);
        assert_eq!(c[57..60], [0, 0, 0]);
    }
}
