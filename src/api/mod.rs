//! The Firecracker-compatible API: request bodies, the pre-boot VM
//! description, the HTTP server and the VMM's side of it.
//!
//! Threads: the API thread ([`server`]) parses requests and [`routes`]
//! them into typed [`action::VmmAction`]s; the VMM thread answers them,
//! before the VM exists from [`preboot`] and once it runs from the
//! [`runtime`] subscriber of its event loop.
pub mod action;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod model;
pub mod preboot;
pub mod resources;
pub mod routes;
pub mod runtime;
pub mod server;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a log or metrics destination: an existing file or an
/// orchestrator's FIFO (as Firecracker, kiln creates none: an API client
/// must not make files appear where kiln may write). Read-write and
/// non-blocking, so neither the open (no reader yet) nor a write (a reader
/// that stopped) ever blocks.
pub(crate) fn open_sink(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                std::io::Error::new(e.kind(), "it does not exist; create it (a file or a FIFO) first")
            }
            _ => e,
        })
}
