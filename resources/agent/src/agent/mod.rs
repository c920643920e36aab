//! The guest agent: PID 1 of the sandbox guest. It accepts connections
//! (AF_VSOCK in the guest, Unix sockets in tests), and serves each on its
//! own thread: one command, one file transfer, or power-off.

mod exec;
mod files;
pub mod init;
pub mod pty;
pub mod reaper;
pub mod vsock;

use std::io;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use self::reaper::{ReapMode, Reaper};
use super::protocol::{
    exchange_hello, read_frame, write_frame, AgentMsg, Conn, HostMsg, Listener, MsgName, ProtocolError,
};
use super::transfer::TransferError;

const PEER: &str = "host";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the host broke the protocol: {0}")]
    HostBroke(String),
    #[error("{what} failed: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl AgentError {
    fn conn(source: io::Error) -> Self {
        AgentError::Io {
            what: "duplicating the connection",
            source,
        }
    }
}

/// Serves connections. Cheap to clone: clones share the reaper.
#[derive(Clone)]
pub struct Agent {
    reaper: Reaper,
    power_off: Arc<dyn Fn() + Send + Sync>,
}

impl Agent {
    /// `power_off` runs after a power-off request has been acknowledged;
    /// in the guest it does not return.
    pub fn new(mode: ReapMode, power_off: impl Fn() + Send + Sync + 'static) -> Result<Self, AgentError> {
        let reaper = Reaper::new(mode).map_err(|source| AgentError::Io {
            what: "starting the reaper thread",
            source,
        })?;
        Ok(Agent {
            reaper,
            power_off: Arc::new(power_off),
        })
    }

    /// Accepts connections forever, each served on its own thread. Only a
    /// listener that keeps failing to accept ends it.
    pub fn serve<L: Listener>(&self, listener: L) -> Result<(), AgentError> {
        let mut failures = 0u32;
        loop {
            let conn = match listener.accept_conn() {
                Ok(conn) => {
                    failures = 0;
                    conn
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // EMFILE, ENOMEM and the like pass; a listener that only fails is dead.
                    failures += 1;
                    if failures >= 100 {
                        return Err(AgentError::Io {
                            what: "accepting connections",
                            source,
                        });
                    }
                    eprintln!("kiln-agent: accepting a connection failed: {source}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let agent = self.clone();
            let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
                if let Err(e) = agent.handle(conn) {
                    eprintln!("kiln-agent: {e}");
                }
            });
            if let Err(e) = spawned {
                eprintln!("kiln-agent: starting a connection thread failed: {e}");
            }
        }
    }

    /// Serves one connection to its end.
    pub fn handle<C: Conn>(&self, mut conn: C) -> Result<(), AgentError> {
        exchange_hello(&mut conn, PEER)?;
        let first = read_frame::<_, HostMsg>(&mut conn, PEER)?.ok_or(ProtocolError::Closed {
            peer: PEER,
            expected: "asking for anything",
        })?;
        match first {
            HostMsg::Exec(req) => exec::serve(conn, req, &self.reaper),
            HostMsg::Put { dest } => files::put(&mut conn, &dest),
            HostMsg::Get { src } => files::get(&mut conn, &src),
            HostMsg::PowerOff => {
                write_frame(&mut conn, &AgentMsg::Done, PEER)?;
                let _ = conn.shutdown(Shutdown::Both);
                (self.power_off)();
                Ok(())
            }
            other => {
                let err = AgentError::HostBroke(format!(
                    "a connection must start with Exec, Put, Get or PowerOff, not {}",
                    other.name()
                ));
                let _ = write_frame(&mut conn, &AgentMsg::Error(err.to_string()), PEER);
                Err(err)
            }
        }
    }
}
