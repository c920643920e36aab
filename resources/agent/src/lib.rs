//! kiln's sandbox guest agent and the wire protocol it speaks with kiln.
//!
//! - [`protocol`]: frames, messages and the hello both ends exchange
//!   (`PROTOCOL.md` beside `Cargo.toml` describes the exchanges).
//! - [`transfer`]: file and directory transfer, shared by both ends.
//! - [`agent`]: the agent itself, PID 1 of the sandbox guest (`main.rs`).
//!
//! kiln (the host) uses this crate as a library; its `build.rs` builds the
//! `kiln-agent` binary statically for the guest and embeds it.

pub mod agent;
pub mod protocol;
pub mod transfer;

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex` even if a thread panicked while holding it: one failed
/// command must not take the agent's shared state down with it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
