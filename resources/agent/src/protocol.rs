//! The wire protocol between kiln (the host) and the sandbox guest agent.
//!
//! Every message is one frame: a `u32` little-endian payload length, then
//! the payload, a [`postcard`] encoding of [`Hello`], [`HostMsg`] or
//! [`AgentMsg`]. Each connection carries one operation (one command, one
//! transfer, or power-off); `PROTOCOL.md` at the crate root describes the
//! exchanges and why streams and back-pressure are shaped the way they are.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
/// What [`Hello::protocol`] says, so a stray peer is told apart from an old agent.
pub const PROTOCOL_NAME: &str = "kiln-agent";
/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Largest payload a frame may carry; larger lengths end the connection.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest data chunk (stdin, stdout, stderr, file data) either side sends.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Output kept per stream unless an exec asks otherwise.
pub const DEFAULT_OUTPUT_CAP: u64 = 64 << 20;
/// Stdin bytes the host may have in flight before the agent grants more.
pub const STDIN_WINDOW: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the connection to the {peer} failed: {source}")]
    Io {
        peer: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {peer} closed the connection in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        peer: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "the {peer} sent a {len}-byte frame, larger than the {MAX_FRAME_LEN}-byte maximum; \
         it is not speaking this protocol or is broken"
    )]
    FrameTooLarge { peer: &'static str, len: usize },
    #[error("a frame from the {peer} does not decode ({detail}); it is not speaking this protocol")]
    Malformed { peer: &'static str, detail: String },
    #[error("refusing to send a {len}-byte frame (maximum {MAX_FRAME_LEN}); this is a bug in kiln")]
    TooLargeToSend { len: usize },
    #[error("the peer says it speaks {0:?}, not {PROTOCOL_NAME}; check what listens on this port")]
    NotKiln(String),
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the {peer} speaks {theirs}; \
         rebuild the sandbox guest with this kiln (`kiln guest`)"
    )]
    VersionMismatch {
        peer: &'static str,
        ours: u32,
        theirs: u32,
    },
    #[error("the {peer} closed the connection before {expected}")]
    Closed {
        peer: &'static str,
        expected: &'static str,
    },
    #[error("unexpected message from the {peer} {context}: {got}")]
    Unexpected {
        peer: &'static str,
        context: &'static str,
        got: String,
    },
}

/// The first frame each side sends on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: String,
    pub version: u32,
}

impl Hello {
    pub fn ours() -> Self {
        Hello {
            protocol: PROTOCOL_NAME.to_string(),
            version: PROTOCOL_VERSION,
        }
    }
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// Run one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH` when it has no '/'.
    pub argv: Vec<String>,
    /// Set on top of the agent's defaults (`PATH`, `HOME`, and `TERM` with a pty).
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's own (`/`) when `None`.
    pub cwd: Option<String>,
    /// Run on a pty of this size (stdout and stderr then arrive merged as stdout).
    pub pty: Option<WindowSize>,
    /// Whether the host sends stdin; without it the command reads `/dev/null`.
    pub stdin: bool,
    /// Bytes of stdout and of stderr forwarded before the rest is cut.
    pub output_cap: u64,
}

impl ExecRequest {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            pty: None,
            stdin: false,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell reports: the code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(sig) => 128 + sig,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// One item of a file tree in transfer. Paths are relative to the root of
/// the transfer, '/'-separated, without `.` or `..`; "" is the root itself.
/// A `File` is followed by its data chunks, ended by the next entry or `Done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32 },
    Symlink { path: String, target: String },
}

/// Frames from kiln to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Opens an exec connection.
    Exec(ExecRequest),
    /// At most the stdin credit granted so far.
    Stdin(Vec<u8>),
    StdinEof,
    Resize(WindowSize),
    /// Sent to the command's process group.
    Signal(i32),
    /// Opens a transfer into the guest: entries and data follow, then `Done`.
    Put {
        dest: String,
    },
    /// Opens a transfer out of the guest: the agent answers with entries and data, then `Done`.
    Get {
        src: String,
    },
    Entry(Entry),
    Data(Vec<u8>),
    Done,
    /// Opens a power-off connection: the agent answers `Done`, then powers the guest off.
    PowerOff,
}

/// Frames from the agent to kiln.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    Started {
        pid: u32,
        stdin_window: u32,
    },
    /// The command could not start; `exit_code` is what a shell would give (127, 126).
    SpawnFailed {
        exit_code: i32,
        message: String,
    },
    /// The agent wrote this many more stdin bytes to the command.
    StdinCredit(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The stream passed its cap: the rest is discarded.
    OutputCut {
        stream: OutputStream,
        limit: u64,
    },
    /// The command ended and all its output has been sent; the last frame.
    Exited(ExitStatus),
    Entry(Entry),
    Data(Vec<u8>),
    Done,
    /// The operation failed; the last frame.
    Error(String),
}

/// A short name of a message for error text, without its (possibly large) data.
pub trait MsgName {
    fn name(&self) -> String;
}

impl MsgName for HostMsg {
    fn name(&self) -> String {
        match self {
            HostMsg::Stdin(d) => format!("Stdin({} bytes)", d.len()),
            HostMsg::Data(d) => format!("Data({} bytes)", d.len()),
            other => format!("{other:?}").chars().take(120).collect(),
        }
    }
}

impl MsgName for AgentMsg {
    fn name(&self) -> String {
        match self {
            AgentMsg::Stdout(d) => format!("Stdout({} bytes)", d.len()),
            AgentMsg::Stderr(d) => format!("Stderr({} bytes)", d.len()),
            AgentMsg::Data(d) => format!("Data({} bytes)", d.len()),
            other => format!("{other:?}").chars().take(120).collect(),
        }
    }
}

/// Encodes `msg` as one frame and writes it.
pub fn write_frame<W: Write + ?Sized, T: Serialize>(
    w: &mut W,
    msg: &T,
    peer: &'static str,
) -> Result<(), ProtocolError> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf)
        .and_then(|()| w.flush())
        .map_err(|source| ProtocolError::Io { peer, source })
}

/// The bytes of one frame: length prefix and payload.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let buf = postcard::to_extend(msg, vec![0u8; 4]).map_err(|e| ProtocolError::Malformed {
        peer: "local encoder",
        detail: e.to_string(),
    })?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::TooLargeToSend { len });
    }
    let mut buf = buf;
    // len <= MAX_FRAME_LEN, so it fits a u32.
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Reads one frame. `Ok(None)` when the peer closed cleanly between frames.
pub fn read_frame<R: Read + ?Sized, T: DeserializeOwned>(
    r: &mut R,
    peer: &'static str,
) -> Result<Option<T>, ProtocolError> {
    let mut len_bytes = [0u8; 4];
    let got = read_full(r, &mut len_bytes, peer)?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        return Err(ProtocolError::Truncated {
            peer,
            expected: 4,
            got,
        });
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge { peer, len });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload, peer)?;
    if got < len {
        return Err(ProtocolError::Truncated {
            peer,
            expected: 4 + len,
            got: 4 + got,
        });
    }
    decode_payload(&payload, peer).map(Some)
}

/// Decodes a whole payload; trailing bytes are as wrong as missing ones.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8], peer: &'static str) -> Result<T, ProtocolError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(ProtocolError::Malformed {
            peer,
            detail: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(ProtocolError::Malformed {
            peer,
            detail: e.to_string(),
        }),
    }
}

/// Reads until `buf` is full or EOF; returns how much was read.
fn read_full<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    peer: &'static str,
) -> Result<usize, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ProtocolError::Io { peer, source }),
        }
    }
    Ok(got)
}

/// Sends our hello, reads the peer's and checks it. Both sides send first,
/// so neither waits on the other; a mismatch is reported on both ends.
pub fn exchange_hello<C: Read + Write + ?Sized>(
    conn: &mut C,
    peer: &'static str,
) -> Result<(), ProtocolError> {
    write_frame(conn, &Hello::ours(), peer)?;
    let theirs: Hello = read_frame(conn, peer)?.ok_or(ProtocolError::Closed {
        peer,
        expected: "saying hello",
    })?;
    if theirs.protocol != PROTOCOL_NAME {
        return Err(ProtocolError::NotKiln(theirs.protocol));
    }
    if theirs.version != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            peer,
            ours: PROTOCOL_VERSION,
            theirs: theirs.version,
        });
    }
    Ok(())
}

/// A byte stream both sides use: a Unix socket (tests, kiln's vsock
/// muxer) or an AF_VSOCK socket (the agent in the guest). One handle is
/// read by one thread while clones write from others.
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// Where the agent accepts connections.
pub trait Listener: Send {
    type Conn: Conn;
    fn accept_conn(&self) -> io::Result<Self::Conn>;
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn accept_conn(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
