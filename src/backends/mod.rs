//! Host-side I/O backends. Nothing in here knows about virtio.

pub mod file;
pub mod image_io;
pub mod tap;
pub mod unix_socket;

pub use file::{CacheMode, FileBackend, FileBackendError};
