//! The sandbox: running untrusted commands in a fresh microVM.
//!
//! [`Sandbox`] is the host side: it boots a microVM in-process whose PID 1
//! is kiln's guest agent, and runs commands and file transfers through it.
//! The wire protocol ([`protocol`], described in `PROTOCOL.md` beside this
//! file), the transfer format and the agent itself are shared with the
//! guest; [`client`] is the host's end of each operation.

pub mod agent;
mod child;
pub mod client;
mod command;
mod conn;
mod error;
mod instance;
pub mod protocol;
pub mod transfer;
mod vm;

pub use child::{Child, ChildControl, ChildStderr, ChildStdin, ChildStdout};
pub use command::{ExitStatus, Output, SandboxCommand, Stdio};
pub use error::SandboxError;
pub use instance::{
    Sandbox, SandboxBuilder, DEFAULT_BOOT_TIMEOUT, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_TRANSFER_LIMIT,
};

#[cfg(test)]
mod sandbox_tests;
