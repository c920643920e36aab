//! Writing guest console output to a host descriptor from the event loop
//! without ever blocking, and without setting O_NONBLOCK on a file
//! description kiln inherited: the parent shell and the programs it runs
//! next share it, and would find their stdout non-blocking.
//!
//! How, by what the descriptor is (fstat):
//! - a regular file, or a character device that is not a terminal
//!   (/dev/null): writes do not wait for a reader; written directly;
//! - a socket: `send` with MSG_DONTWAIT, per call;
//! - a pipe, FIFO or terminal: a new description of the same object,
//!   opened non-blocking through /proc/self/fd (the inherited one keeps
//!   its flags);
//! - if that reopen fails (a terminal owned by another user, no /proc):
//!   poll for POLLOUT before each write, and write at most what the
//!   object then takes without waiting: a pipe with a free slot takes
//!   PIPE_BUF bytes whole; a terminal reports POLLOUT with fewer than
//!   WAKEUP_CHARS (256) bytes queued and some room, so a write of up to
//!   256 bytes may still wait briefly if the room is smaller (or another
//!   writer took it since the poll): the residual risk of that fallback.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::console_output::ConsoleSink;

/// Largest write to a pipe through the poll fallback: taken whole by a
/// pipe with a free slot.
const PIPE_FALLBACK_CHUNK: usize = 4096;
/// Largest write to a terminal through the poll fallback (n_tty's
/// WAKEUP_CHARS).
const TTY_FALLBACK_CHUNK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Writes never wait on a reader.
    Direct,
    /// send(MSG_DONTWAIT | MSG_NOSIGNAL).
    Socket,
    /// A non-blocking description of our own.
    Reopened,
    /// poll(POLLOUT, 0), then a write of at most this many bytes.
    PollFirst(usize),
}

/// A host descriptor written without blocking (see the module comment).
pub struct HostOutput {
    /// The descriptor kiln was given; written through unless reopened.
    fd: OwnedFd,
    /// The non-blocking description of the same pipe or terminal.
    reopened: Option<OwnedFd>,
    method: Method,
}

impl HostOutput {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fstat fills a local stat for a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(fd.as_raw_fd()) } == 1;
        let kind = st.st_mode & libc::S_IFMT;
        let (method, reopened) = match kind {
            libc::S_IFSOCK => (Method::Socket, None),
            libc::S_IFIFO => reopen_or(&fd, PIPE_FALLBACK_CHUNK),
            _ if tty => reopen_or(&fd, TTY_FALLBACK_CHUNK),
            _ => (Method::Direct, None),
        };
        log::debug!("console output: {method:?} (file type {kind:o}, tty {tty})");
        Ok(Self { fd, reopened, method })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    fn write_fd(&self) -> RawFd {
        self.reopened.as_ref().unwrap_or(&self.fd).as_raw_fd()
    }
}

/// A non-blocking description of what `fd` refers to, or the poll
/// fallback writing at most `chunk` bytes.
fn reopen_or(fd: &OwnedFd, chunk: usize) -> (Method, Option<OwnedFd>) {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let Ok(path) = CString::new(path) else {
        return (Method::PollFirst(chunk), None);
    };
    // O_NOCTTY: a terminal must not become our controlling terminal.
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a valid C string; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), flags) };
    if raw < 0 {
        log::debug!(
            "console output: cannot reopen {path:?} ({}); polling before each write",
            io::Error::last_os_error()
        );
        return (Method::PollFirst(chunk), None);
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    (Method::Reopened, Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Whether `fd` reports POLLOUT within `timeout` (None: now).
fn poll_out(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.map_or(0, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        // POLLERR/POLLHUP: let the write report what went wrong.
        _ => Ok(true),
    }
}

impl ConsoleSink for HostOutput {
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let fd = self.write_fd();
        let data = match self.method {
            Method::PollFirst(max) => {
                if !poll_out(fd, None)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                &data[..data.len().min(max)]
            }
            _ => data,
        };
        // SAFETY: `data` is a valid slice; the descriptor is ours.
        let n = unsafe {
            match self.method {
                Method::Socket => libc::send(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ),
                _ => libc::write(fd, data.as_ptr().cast(), data.len()),
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn writable_fd(&self) -> Option<RawFd> {
        match self.method {
            Method::Direct => None,
            _ => Some(self.write_fd()),
        }
    }

    fn wait_writable(&mut self, timeout: Duration) -> io::Result<()> {
        match self.writable_fd() {
            Some(fd) => poll_out(fd, Some(timeout)).map(|_| ()),
            None => {
                std::thread::sleep(timeout.min(Duration::from_millis(10)));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[path = "host_output_tests.rs"]
mod tests;
