//! AF_VSOCK sockets for the agent in the guest (std has none).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::protocol::{Conn, Listener};

pub struct VsockListener {
    fd: OwnedFd,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl VsockListener {
    /// Listens on `port` for any CID (the host reaches it as the guest's CID).
    pub fn bind(port: u32) -> io::Result<Self> {
        // SAFETY: socket takes plain integers and returns a new fd or -1.
        let raw = check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: raw is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: addr is a valid sockaddr_vm and the length is its size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        // SAFETY: listen acts on the valid, bound socket.
        check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
        Ok(VsockListener { fd })
    }
}

impl Listener for VsockListener {
    type Conn = VsockStream;
    fn accept_conn(&self) -> io::Result<VsockStream> {
        // SAFETY: null address pointers ask accept4 not to report the peer.
        let raw = check(unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        Ok(VsockStream { file })
    }
}

/// A connected vsock stream: plain read(2)/write(2) through a File.
pub struct VsockStream {
    file: File,
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream {
            file: self.file.try_clone()?,
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown acts on the valid socket fd.
        check(unsafe { libc::shutdown(self.file.as_raw_fd(), how) })?;
        Ok(())
    }
}
