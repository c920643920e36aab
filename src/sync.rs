//! Locking shared device state.
//!
//! [`lock`] locks a mutex even if a thread panicked while holding it:
//! device and VM state stays usable for the guest to reset a device and
//! for an orderly shutdown, which beats turning one panic into many. It is
//! the agent crate's, so both sides of the sandbox share one definition.

pub use kiln_agent::lock;
