//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and
//! host processes, with the host side on Unix sockets in Firecracker's
//! scheme (see [`crate::backends::unix_socket`]).
//!
//! - [`packet`]: the 44-byte header, reading a TX chain and writing an RX
//!   chain.
//! - [`connection`]: one connection's state, credit accounting and its
//!   bounded host-bound buffer.
//! - [`muxer`]: every connection and handshake, keyed and bounded; the
//!   queues' packets in and out; deadlines.
//! - [`counters`]: packets, bytes and every refused packet or connection.
//! - [`VsockDevice`]: the device (`device.rs`).
//!
//! Everything runs on the event loop through the device's host events: the
//! listener, each handshake and connection stream, a timer for deadlines
//! and an eventfd the device signals to come back for unfinished work.

pub mod connection;
pub mod counters;
mod device;
pub mod muxer;
pub mod packet;

pub use counters::{VsockCounters, VsockCountersSnapshot, VsockFault};
pub use device::{VsockDevice, VsockDeviceError};

/// virtio device ID of a socket device.
pub const VSOCK_DEVICE_ID: u32 = 19;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The host's CID: where guest connections go.
pub const HOST_CID: u64 = 2;
/// The most connections (handshakes included) one device holds.
pub const MAX_CONNECTIONS: usize = 2048;
/// Largest payload of one packet, either way.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Per-connection host-bound buffer: the `buf_alloc` we advertise.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// First host port handed to host-initiated connections (as Firecracker).
pub const FIRST_HOST_PORT: u32 = 1 << 30;
