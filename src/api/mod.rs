//! The Firecracker-compatible API: request bodies, the pre-boot VM
//! description, the HTTP server and the VMM's side of it.
pub mod http;
pub mod server;
