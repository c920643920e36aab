//! The sandbox: running untrusted commands in a fresh microVM. The wire
//! protocol, file transfer and the guest agent live in the `kiln-agent`
//! crate (`resources/agent/`, with `PROTOCOL.md`), which kiln's build
//! script also compiles statically for the guest; they are re-exported
//! here. The host's side of the protocol is [`client`].

pub mod client;
pub mod guest;

pub use kiln_agent::{agent, protocol, transfer};
