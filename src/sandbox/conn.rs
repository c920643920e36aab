//! A connection to the guest agent through kiln's vsock Unix socket:
//! connect, ask for the agent's port with `CONNECT <port>\n`, read the
//! `OK <host port>\n` line, and from then on the stream is the agent's.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::protocol::Conn;

/// The longest answer line the muxer sends ("OK " and a port): anything
/// longer is not kiln's vsock device.
const MAX_ANSWER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket is not there or not accepting yet (the VMM is starting).
    #[error("the vsock socket is not accepting connections: {0}")]
    NoSocket(io::Error),
    /// The muxer closed the connection without `OK`: nothing listens on
    /// the port in the guest yet (or the guest did not answer in time).
    #[error("nothing listens on the agent's vsock port yet")]
    NotListening,
    #[error("the vsock handshake failed: {0}")]
    Io(io::Error),
    #[error("the vsock socket answered {0:?}, not `OK <port>`; is it kiln's vsock socket?")]
    BadAnswer(String),
}

impl ConnectError {
    /// Worth trying again while the guest boots.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::NoSocket(_) | ConnectError::NotListening => true,
            ConnectError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::ConnectionReset
            ),
            ConnectError::BadAnswer(_) => false,
        }
    }
}

/// A stream to the agent. Writes never raise SIGPIPE (the library must
/// not depend on how its caller set that signal up).
pub struct AgentConn {
    stream: UnixStream,
}

/// Connects to guest `port` through the vsock socket at `path`; the
/// handshake may take up to `limit`.
pub fn connect_port(path: &Path, port: u32, limit: Duration) -> Result<AgentConn, ConnectError> {
    let stream = UnixStream::connect(path).map_err(ConnectError::NoSocket)?;
    let limit = limit.max(Duration::from_millis(1));
    let conn = AgentConn { stream };
    conn.stream
        .set_read_timeout(Some(limit))
        .and_then(|()| conn.stream.set_write_timeout(Some(limit)))
        .map_err(ConnectError::Io)?;
    conn.write_all_nosig(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::with_capacity(MAX_ANSWER);
    loop {
        let mut byte = [0u8; 1];
        // Byte by byte: what follows the line is the agent's, not ours.
        match (&conn.stream).read(&mut byte) {
            Ok(0) if line.is_empty() => return Err(ConnectError::NotListening),
            Ok(0) => return Err(ConnectError::BadAnswer(String::from_utf8_lossy(&line).into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_ANSWER => {
                return Err(ConnectError::BadAnswer(String::from_utf8_lossy(&line).into()))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ConnectError::Io(e)),
        }
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|p| p.parse::<u32>().is_ok());
    if !ok {
        return Err(ConnectError::BadAnswer(String::from_utf8_lossy(&line).into()));
    }
    conn.arm(None).map_err(ConnectError::Io)?;
    Ok(conn)
}

impl AgentConn {
    /// Bounds every later blocking read and write by `deadline` (shared by
    /// all clones: it is the socket's). Fails at once if it has passed.
    pub fn arm(&self, deadline: Option<Instant>) -> io::Result<()> {
        let limit = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Some(left)
            }
        };
        self.stream.set_read_timeout(limit)?;
        self.stream.set_write_timeout(limit)
    }

    fn write_all_nosig(&self, mut buf: &[u8]) -> Result<(), ConnectError> {
        let mut writer = self;
        while !buf.is_empty() {
            match writer.write(buf) {
                Ok(0) => return Err(ConnectError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnectError::Io(e)),
            }
        }
        Ok(())
    }
}

impl Read for AgentConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for &AgentConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: send reads at most buf.len() bytes from buf, which is a
        // valid slice; the descriptor is our connected socket.
        let n = unsafe {
            libc::send(
                self.stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for AgentConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for AgentConn {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(AgentConn {
            stream: self.stream.try_clone()?,
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}

#[cfg(test)]
impl AgentConn {
    /// A connection over an existing stream (tests serve the agent on one
    /// end of a socket pair).
    pub fn from_stream(stream: UnixStream) -> Self {
        AgentConn { stream }
    }
}
