//! The sandbox: running untrusted commands in a fresh microVM. This holds
//! the pieces both ends share and the guest agent itself; `PROTOCOL.md`
//! beside this file describes the wire protocol.

pub mod agent;
pub mod client;
pub mod protocol;
pub mod transfer;
