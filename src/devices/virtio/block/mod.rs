//! virtio-blk (virtio 1.2 §5.2) over a raw image file.

mod device;
pub mod request;

use std::path::PathBuf;

use crate::rate_limiter::RateLimiterConfig;

pub use crate::backends::CacheMode;
pub use device::{BlockDevice, BlockError, RATE_LIMITER_TIMER};

/// virtio device ID of a block device.
pub const BLOCK_DEVICE_ID: u32 = 2;
/// The protocol's unit: request sectors are always 512 bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID response.
pub const ID_BYTES: usize = 20;

/// Block feature bits (§5.2.3).
pub mod features {
    pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
    pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
    pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
}

/// Request types (§5.2.6).
pub mod request_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values (§5.2.6).
pub mod request_status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// What the VMM asks for; the device opens the image itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number the guest sees (GET_ID), at most 20 printable ASCII
    /// bytes; derived from the image's device and inode when absent.
    pub id: Option<String>,
    pub cache: CacheMode,
    /// Let other processes use the image at the same time (no exclusive lock).
    pub shared: bool,
    /// Limits on bytes and requests per second (none by default).
    pub rate_limiter: RateLimiterConfig,
}

impl BlockConfig {
    /// A writable, unshared, write-back cached disk at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod rate_limit_tests;
