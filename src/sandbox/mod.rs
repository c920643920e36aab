//! The sandbox: running untrusted commands in a fresh microVM.
//!
//! [`Sandbox`] is the host side: it boots a microVM in-process whose PID 1
//! is kiln's guest agent, and runs commands and file transfers through it.
//! The wire protocol ([`protocol`]), the transfer format and the agent
//! itself live in the `kiln-agent` crate (`resources/agent/`, with
//! `PROTOCOL.md`), which kiln's build script also compiles statically for
//! the guest ([`guest`] embeds it); they are re-exported here. [`client`]
//! is the host's end of each operation.

mod child;
pub mod client;
mod command;
mod conn;
mod error;
pub mod guest;
mod instance;
mod jailed;
mod vm;

pub use kiln_agent::{agent, protocol, transfer};

pub use child::{Child, ChildControl, ChildStderr, ChildStdin, ChildStdout};
pub use command::{ExitStatus, Output, SandboxCommand, Stdio};
pub use error::SandboxError;
pub use instance::{
    Sandbox, SandboxBuilder, DEFAULT_BOOT_TIMEOUT, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_TRANSFER_LIMIT,
};

#[cfg(test)]
mod sandbox_tests;
