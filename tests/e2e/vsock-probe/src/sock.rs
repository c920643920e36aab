//! Addresses, connections and listeners: AF_VSOCK in the guest, AF_UNIX on
//! the host, with Firecracker's `CONNECT <port>\n` / `OK <hostport>\n`
//! handshake on the socket kiln listens on ("hybrid" vsock).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// Where to connect to, or listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `vsock:CID:PORT` (connect) or `vsock:PORT` (listen, any CID).
    Vsock { cid: u32, port: u32 },
    /// `hybrid:PATH:PORT`: connect to PATH, then `CONNECT PORT`.
    Hybrid { path: PathBuf, port: u32 },
    /// `unix:PATH`: a plain Unix stream socket (e.g. kiln's `<socket>_P`).
    Unix { path: PathBuf },
}

/// `VMADDR_CID_ANY`, for listening.
pub const CID_ANY: u32 = u32::MAX;
/// Longest handshake answer we read (kiln's is at most "OK 4294967295\n").
const MAX_ANSWER: usize = 64;

fn parse_u32(what: &str, s: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{s}' is not a decimal number"));
    }
    s.parse()
        .map_err(|_| format!("{what} '{s}' is larger than 4294967295"))
}

impl Addr {
    /// Parses a connect address: `vsock:CID:PORT`, `hybrid:PATH:PORT` or `unix:PATH`.
    pub fn parse_connect(s: &str) -> Result<Addr, String> {
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| format!("'{s}': a vsock address to connect to is vsock:CID:PORT"))?;
            return Ok(Addr::Vsock {
                cid: parse_u32("CID", cid)?,
                port: parse_u32("port", port)?,
            });
        }
        if let Some(rest) = s.strip_prefix("hybrid:") {
            // The port follows the last ':' (a path may hold colons).
            let (path, port) = rest
                .rsplit_once(':')
                .filter(|(p, _)| !p.is_empty())
                .ok_or_else(|| format!("'{s}': a hybrid address is hybrid:PATH:PORT"))?;
            return Ok(Addr::Hybrid {
                path: path.into(),
                port: parse_u32("port", port)?,
            });
        }
        Self::parse_unix(s)
    }

    /// Parses a listen address: `vsock:PORT` or `unix:PATH`.
    pub fn parse_listen(s: &str) -> Result<Addr, String> {
        if let Some(port) = s.strip_prefix("vsock:") {
            return Ok(Addr::Vsock {
                cid: CID_ANY,
                port: parse_u32("port", port)?,
            });
        }
        Self::parse_unix(s)
    }

    fn parse_unix(s: &str) -> Result<Addr, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Addr::Unix { path: path.into() }),
            _ => Err(format!(
                "'{s}' is not an address: use vsock:CID:PORT / vsock:PORT, hybrid:PATH:PORT or unix:PATH"
            )),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Vsock { cid, port } if *cid == CID_ANY => write!(f, "vsock:{port}"),
            Addr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Addr::Hybrid { path, port } => write!(f, "hybrid:{}:{port}", path.display()),
            Addr::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a connection did not come about.
#[derive(Debug)]
pub enum ConnectError {
    /// Nobody is there: refused, reset, no such socket, or (hybrid) the
    /// stream was closed without an `OK`. What a missing listener looks like.
    Refused(String),
    /// Anything else (a timeout, a malformed answer, ...).
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(m) | ConnectError::Failed(m) => f.write_str(m),
        }
    }
}

fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::ENOENT | libc::EPIPE)
    )
}

fn classify(addr: &Addr, e: io::Error) -> ConnectError {
    let msg = format!("connect to {addr}: {e}");
    if is_refusal(&e) {
        ConnectError::Refused(msg)
    } else {
        ConnectError::Failed(msg)
    }
}

/// Parses kiln's handshake answer `OK <hostport>` (without the '\n').
pub fn parse_ok(line: &str) -> Option<u32> {
    let port = line.strip_suffix('\r').unwrap_or(line).strip_prefix("OK ")?;
    parse_u32("host port", port).ok()
}

/// One connected stream socket, of either family. Methods take `&self`, so
/// one thread can write while another reads.
pub struct Conn {
    fd: OwnedFd,
}

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl Conn {
    /// Connects; `answer_timeout` bounds the wait for a hybrid `OK` line.
    pub fn connect(addr: &Addr, answer_timeout: Duration) -> Result<Conn, ConnectError> {
        match addr {
            Addr::Vsock { cid, port } => connect_vsock(*cid, *port).map_err(|e| classify(addr, e)),
            Addr::Unix { path } => UnixStream::connect(path)
                .map(|s| Conn { fd: s.into() })
                .map_err(|e| classify(addr, e)),
            Addr::Hybrid { path, port } => {
                let stream = UnixStream::connect(path).map_err(|e| classify(addr, e))?;
                let conn = Conn { fd: stream.into() };
                conn.handshake(addr, *port, answer_timeout)?;
                Ok(conn)
            }
        }
    }

    fn handshake(&self, addr: &Addr, port: u32, timeout: Duration) -> Result<(), ConnectError> {
        let failed = |what: String| ConnectError::Failed(format!("{addr}: {what}"));
        self.write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| classify(addr, e))?;
        self.set_timeout(Some(timeout))
            .map_err(|e| failed(e.to_string()))?;
        // One byte at a time: what follows the '\n' is the guest's data.
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8];
            match self.read(&mut byte) {
                Ok(0) => {
                    return Err(ConnectError::Refused(format!(
                        "{addr}: kiln closed the connection without OK (nothing listens on port {port}?)"
                    )))
                }
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() >= MAX_ANSWER => {
                    return Err(failed(format!("answer longer than {MAX_ANSWER} bytes")))
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if is_timeout(&e) => {
                    return Err(failed(format!(
                        "no answer to CONNECT within {:.1}s",
                        timeout.as_secs_f64()
                    )))
                }
                Err(e) => return Err(classify(addr, e)),
            }
        }
        let line = String::from_utf8_lossy(&line);
        if parse_ok(&line).is_none() {
            return Err(failed(format!(
                "answer '{}' is not 'OK <port>'",
                line.escape_debug()
            )));
        }
        self.set_timeout(None).map_err(|e| failed(e.to_string()))
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes; fd is open.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for reads of buf.len() bytes; fd is open.
            let r = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; EOF first is an error.
    pub fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..])? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("peer closed after {got} of {} bytes", buf.len()),
                    ))
                }
                n => got += n,
            }
        }
        Ok(())
    }

    /// Half-close: the peer reads EOF, we can still read.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an open fd.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Bounds every later read and write (None: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = match t {
            Some(t) => libc::timeval {
                tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_usec: t.subsec_micros().max(u32::from(t.is_zero())) as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: tv is a valid timeval for the given length.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// A read or write that ran into `set_timeout`'s bound.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// An I/O error, saying so when it was the connection's timeout.
pub fn io_error(e: &io::Error) -> String {
    if is_timeout(e) {
        "no progress within the timeout (stalled)".into()
    } else {
        e.to_string()
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Conn::read(self, buf)
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Conn::write(self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("AF_VSOCK socket: {e} (is the vsock transport loaded?)"),
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_vm(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    sa.svm_cid = cid;
    sa.svm_port = port;
    sa
}

const SOCKADDR_VM_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn connect_vsock(cid: u32, port: u32) -> io::Result<Conn> {
    let fd = vsock_socket()?;
    let sa = sockaddr_vm(cid, port);
    // SAFETY: sa is a valid sockaddr_vm of the given length.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_vm).cast(),
            SOCKADDR_VM_LEN,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Conn { fd })
}

/// A listening socket of either family.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    pub fn bind(addr: &Addr) -> Result<Listener, String> {
        let err = |e: io::Error| format!("listen on {addr}: {e}");
        match addr {
            Addr::Vsock { port, .. } => {
                let fd = vsock_socket().map_err(err)?;
                let sa = sockaddr_vm(CID_ANY, *port);
                // SAFETY: sa is a valid sockaddr_vm of the given length; fd is open.
                let r = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_vm).cast(),
                        SOCKADDR_VM_LEN,
                    )
                };
                // SAFETY: plain syscall on an open fd (only if bind worked).
                if r < 0 || unsafe { libc::listen(fd.as_raw_fd(), 1024) } < 0 {
                    return Err(err(io::Error::last_os_error()));
                }
                Ok(Listener { fd })
            }
            Addr::Unix { path } => {
                // A socket file left by an earlier run would make bind fail.
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path).map_err(err)?;
                }
                let l = UnixListener::bind(path).map_err(err)?;
                Ok(Listener { fd: l.into() })
            }
            Addr::Hybrid { .. } => Err(format!("cannot listen on {addr}: use vsock:PORT or unix:PATH")),
        }
    }

    pub fn accept(&self) -> io::Result<Conn> {
        loop {
            // SAFETY: null address pointers are allowed; fd is a listening socket.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: fd is a fresh descriptor nobody else owns.
                return Ok(Conn {
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                });
            }
            let e = io::Error::last_os_error();
            // A connection reset while in the backlog is not our failure.
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addresses_parse() {
        assert_eq!(
            Addr::parse_connect("vsock:2:5100"),
            Ok(Addr::Vsock { cid: 2, port: 5100 })
        );
        assert_eq!(
            Addr::parse_connect("hybrid:/tmp/a:b/v.sock:5001"),
            Ok(Addr::Hybrid {
                path: "/tmp/a:b/v.sock".into(),
                port: 5001
            })
        );
        assert_eq!(
            Addr::parse_connect("unix:/tmp/v.sock_5100"),
            Ok(Addr::Unix {
                path: "/tmp/v.sock_5100".into()
            })
        );
        assert_eq!(
            Addr::parse_connect("vsock:2:5100").map(|a| a.to_string()),
            Ok("vsock:2:5100".into())
        );
    }

    #[test]
    fn bad_connect_addresses_say_what_is_wrong() {
        for (bad, want) in [
            ("vsock:5100", "vsock:CID:PORT"),
            ("vsock:x:1", "CID 'x'"),
            ("vsock:2:4294967296", "larger than"),
            ("vsock:2:-1", "not a decimal"),
            ("hybrid:/tmp/v.sock", "hybrid:PATH:PORT"),
            ("hybrid:/tmp/v.sock:x", "port 'x'"),
            ("hybrid::5", "hybrid:PATH:PORT"),
            ("unix:", "is not an address"),
            ("tcp:1.2.3.4:5", "is not an address"),
        ] {
            let e = Addr::parse_connect(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            Addr::parse_listen("vsock:5001"),
            Ok(Addr::Vsock {
                cid: CID_ANY,
                port: 5001
            })
        );
        assert_eq!(
            Addr::parse_listen("vsock:5001").map(|a| a.to_string()),
            Ok("vsock:5001".into())
        );
        assert!(Addr::parse_listen("vsock:2:5001").is_err());
        assert!(Addr::parse_listen("hybrid:/x:1").is_err());
    }

    #[test]
    fn ok_answer_parses() {
        assert_eq!(parse_ok("OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_ok("OK 5\r"), Some(5));
        for bad in ["ok 5", "OK", "OK ", "OK -1", "OK 5 6", "OK 99999999999", "ERR"] {
            assert_eq!(parse_ok(bad), None, "{bad}");
        }
    }
}
