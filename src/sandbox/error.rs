//! What can go wrong with a [`super::Sandbox`]: one typed error for the
//! whole library surface.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::client::ClientError;
use crate::config::ConfigError;
use crate::exit::ExitReason;
use crate::vmm::VmmError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The builder was given something no VM can be made of.
    #[error("invalid sandbox configuration: {0}")]
    Config(#[from] ConfigError),
    /// No kernel or initramfs was given and there is no default to use.
    #[error("{0}")]
    NoGuest(String),
    #[error("cannot set up the sandbox ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The VMM could not build or run the microVM.
    #[error("the sandbox's microVM failed to start: {0}")]
    Boot(#[source] VmmError),
    /// The microVM stopped before its agent answered.
    #[error(
        "the sandbox's microVM stopped while booting ({}){}",
        exit_text(reason),
        console_text(console)
    )]
    GuestExited { reason: ExitReason, console: String },
    /// The microVM runs but its agent did not answer in time.
    #[error(
        "the sandbox's guest agent did not answer within {waited:?}: the guest needs a kernel with \
         virtio-mmio and vsock and an initramfs whose /init is kiln's agent{}",
        console_text(console)
    )]
    AgentUnreachable { waited: Duration, console: String },
    /// The command (or transfer) ran past the sandbox's timeout; the
    /// microVM has been torn down.
    #[error("the command ran past the sandbox's {0:?} timeout; the microVM was torn down")]
    Timeout(Duration),
    /// The microVM is gone (an earlier timeout, or the guest stopped);
    /// build a new sandbox.
    #[error("the sandbox's microVM has stopped ({0}); build a new sandbox")]
    Stopped(String),
    /// The command could not start: `exit_code` is what a shell would
    /// give (127 not found, 126 not executable or a bad working directory).
    #[error("{message}")]
    SpawnFailed { exit_code: i32, message: String },
    /// The call asked for something the sandbox cannot do.
    #[error("{0}")]
    InvalidRequest(String),
    /// The agent answered, but the operation failed or the agent broke
    /// the protocol.
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("cannot reach the sandbox's vsock socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn exit_text(reason: &ExitReason) -> String {
    reason
        .message()
        .unwrap_or_else(|| format!("{reason:?}").to_lowercase())
}

fn console_text(console: &str) -> String {
    if console.is_empty() {
        String::new()
    } else {
        format!("; the console ended with:\n{console}")
    }
}
