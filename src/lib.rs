//! kiln: a KVM microVM monitor.
//!
//! The library builds and runs a VM from a [`config::VmConfig`], and runs
//! untrusted commands in a fresh microVM with [`Sandbox`]; the `kiln`
//! binary is a thin CLI over it.

// First, so its logging macros are in scope in every module below.
#[macro_use]
mod guest_log;

pub mod api;
pub mod arch;
pub mod backends;
pub mod bench;
pub mod config;
pub mod default_guest;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod metrics;
pub mod rate_limiter;
pub mod sandbox;
pub mod seccomp;
pub mod sync;
pub mod terminal;
pub mod timeline;
pub mod vmm;
pub mod vstate;

pub use sandbox::{Child, ExitStatus, Output, Sandbox, SandboxBuilder, SandboxError, Stdio};
