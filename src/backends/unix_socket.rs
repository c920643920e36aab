//! Host side of a vsock device on Unix sockets, in Firecracker's scheme:
//! kiln listens on one socket path for host-initiated connections, each of
//! which starts with a `CONNECT <port>\n` line; a guest connecting to host
//! port P reaches a listener at `<path>_P`. Nothing here knows about
//! virtio.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Longest `CONNECT <port>\n` line, newline included.
pub const MAX_HANDSHAKE_LINE: usize = 32;
/// Most iovecs one vectored call passes (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("vsock socket {0:?} exists and is not a socket; remove it or choose another path")]
    PathExists(PathBuf),
    #[error("vsock socket {0:?} is in use by another process; stop it or choose another path")]
    InUse(PathBuf),
    #[error("cannot remove the stale vsock socket {path:?}: {source}; remove it by hand")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on vsock socket {path:?}: {source}; check the directory's permissions")]
    Bind { path: PathBuf, source: io::Error },
}

/// Why a handshake line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the handshake line is longer than {MAX_HANDSHAKE_LINE} bytes")]
    TooLong,
    #[error("the handshake line does not start with \"CONNECT \"")]
    NotConnect,
    #[error("the port in the handshake line is not a decimal number below 2^32")]
    BadPort,
    #[error("the host peer closed the connection before finishing its handshake line")]
    Closed,
}

/// The listening socket at the configured path. Dropping it removes the
/// path, if it still is this socket.
#[derive(Debug)]
pub struct VsockListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created.
    identity: (u64, u64),
}

impl VsockListener {
    /// Listens on `path`, non-blocking. An existing file there is refused,
    /// unless it is a socket nobody listens on any more (a kiln that did
    /// not exit cleanly), which is replaced.
    pub fn bind(path: &Path) -> Result<Self, UnixSocketError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(UnixSocketError::PathExists(path.to_path_buf()));
            }
            // Without blocking: a live listener with a full backlog would
            // hold a blocking connect.
            match connect_nonblocking(path) {
                Ok(_) => return Err(UnixSocketError::InUse(path.to_path_buf())),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path).map_err(|source| UnixSocketError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                // Someone's (full backlog, no permission): not ours to take.
                Err(_) => return Err(UnixSocketError::InUse(path.to_path_buf())),
            }
        }
        let bind_error = |source| UnixSocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next waiting connection, non-blocking; `None` if there is none.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for VsockListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        // Another kiln may have replaced a path we left behind; not ours.
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("vsock: cannot remove {:?}: {e}", self.path);
            }
        }
    }
}

/// Parses a whole handshake line (with its '\n'): `CONNECT`, any case, one
/// space, a decimal port; a '\r' before the '\n' is tolerated (telnet and
/// `socat CRLF` send one). The entry point for a fuzz target too.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HandshakeError> {
    if line.len() > MAX_HANDSHAKE_LINE {
        return Err(HandshakeError::TooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    const WORD: &[u8] = b"CONNECT ";
    if line.len() < WORD.len() || !line[..WORD.len()].eq_ignore_ascii_case(WORD) {
        return Err(HandshakeError::NotConnect);
    }
    let digits = &line[WORD.len()..];
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort);
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| Some(n * 10 + u64::from(d - b'0')))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(HandshakeError::BadPort)
}

/// Where a handshake stands after reading what the peer sent so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// The line is not complete yet; wait for the stream to be readable.
    NeedMore,
    /// The peer asked for this guest port.
    Port(u32),
}

/// Reads a `CONNECT <port>\n` line one byte at a time, so that nothing the
/// peer sends after the line is consumed: it belongs to the guest.
#[derive(Clone, Debug, Default)]
pub struct HandshakeReader {
    line: Vec<u8>,
}

impl HandshakeReader {
    /// Reads what is there, up to the end of the line (at most
    /// [`MAX_HANDSHAKE_LINE`] bytes in all: bounded work per call).
    pub fn read_from(&mut self, stream: &mut impl io::Read) -> Result<HandshakeStep, HandshakeError> {
        while self.line.len() < MAX_HANDSHAKE_LINE {
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {
                    self.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        return parse_connect_line(&self.line).map(HandshakeStep::Port);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(HandshakeStep::NeedMore),
                Err(_) => return Err(HandshakeError::Closed),
            }
        }
        Err(HandshakeError::TooLong)
    }
}

/// `<socket>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to the listener at `path` without blocking: a Unix stream
/// connect completes at once or fails (ENOENT, ECONNREFUSED, EAGAIN for a
/// full backlog). The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: `sockaddr_un` is plain C data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays for the NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just opened and nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a valid `sockaddr_un` of `len` bytes that
        // outlives the call; the kernel only reads it.
        let ret = unsafe {
            libc::connect(
                socket.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if ret == 0 {
            return Ok(UnixStream::from(socket));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// iovecs over `bufs`, at most [`MAX_IOVECS`] (a short transfer is fine).
fn iovecs<B: BitmapSlice>(
    bufs: &[VolatileSlice<'_, B>],
) -> (Vec<vm_memory::volatile_memory::PtrGuardMut>, Vec<libc::iovec>) {
    let guards: Vec<_> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .take(MAX_IOVECS)
        .map(|b| b.ptr_guard_mut())
        .collect();
    let iovecs = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    (guards, iovecs)
}

/// Reads from a stream socket into `bufs` without blocking: `Ok(None)` if
/// nothing is there, `Ok(Some(0))` at end of stream.
pub fn recv_vectored<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
) -> io::Result<Option<usize>> {
    let (_guards, mut iovecs) = iovecs(bufs);
    if iovecs.is_empty() {
        return Ok(Some(0));
    }
    loop {
        // SAFETY: `msghdr` is plain C data; all zeroes is "no name, no
        // control data".
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        // SAFETY: each iovec describes live memory (held by `_guards`)
        // that nothing holds Rust references to; the kernel writes only
        // inside them, and `msg` points only at the iovecs.
        let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        match usize::try_from(ret) {
            Ok(n) => return Ok(Some(n)),
            Err(_) => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                e => return Err(e),
            },
        }
    }
}

/// Writes `bufs` to a stream socket without blocking (and without
/// SIGPIPE): how much it took, `Ok(0)` if it is full.
pub fn send_vectored<B: BitmapSlice>(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
    let (_guards, mut iovecs) = iovecs(bufs);
    if iovecs.is_empty() {
        return Ok(0);
    }
    loop {
        // SAFETY: `msghdr` is plain C data; all zeroes is "no name, no
        // control data".
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        // SAFETY: each iovec describes live memory (held by `_guards`);
        // the kernel only reads it, and `msg` points only at the iovecs.
        let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        match usize::try_from(ret) {
            Ok(n) => return Ok(n),
            Err(_) => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                e => return Err(e),
            },
        }
    }
}

/// Writes `bytes` to a stream socket without blocking (or SIGPIPE).
pub fn send_bytes(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is live for the call; the kernel only reads it.
        let ret = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(ret) {
            Ok(n) => return Ok(n),
            Err(_) => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                e => return Err(e),
            },
        }
    }
}

/// Raises the soft open-file limit to the hard one, so that a thousand
/// or more connections fit; returns the soft limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    // SAFETY: `rlimit` is plain C data; all zeroes is valid.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes one `rlimit`, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit`, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
#[path = "unix_socket_tests.rs"]
mod tests;
