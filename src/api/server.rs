//! The API thread: a Unix socket's clients, served one request at a time.
//!
//! Each request is handed to a dispatcher (which passes it to the VMM
//! thread and waits for the answer); the thread itself only moves bytes.
//! No client can hold it up: sockets are non-blocking, a request that does
//! not arrive whole within [`REQUEST_TIMEOUT`] is answered 408 and its
//! connection closed, so is a client that leaves replies unread, and when
//! [`MAX_CLIENTS`] are connected the one idle the longest makes room.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::http::{Connection, Parsed, Request, Response};

/// Clients connected at once.
pub const MAX_CLIENTS: usize = 64;
/// How long a started request may take to arrive, and replies to be read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted per wake-up, so a flood of them cannot starve the
/// clients already connected.
const ACCEPTS_PER_PASS: usize = 16;

struct Client {
    stream: UnixStream,
    conn: Connection,
    /// When it last made progress (a request served, bytes moved).
    since: Instant,
    /// The peer has closed its side: answer what it sent, then close.
    eof: bool,
}

impl Client {
    /// Waiting for nothing: no partial request, no unread reply.
    fn idle(&self) -> bool {
        !self.conn.has_partial_request() && !self.conn.has_output()
    }
}

/// Serves `listener` until `exit` is signalled, answering each request
/// with `dispatch`; replies already made are written before it returns.
pub fn serve(
    listener: UnixListener,
    exit: &EventFd,
    mut dispatch: impl FnMut(Request) -> Response,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut clients: Vec<Client> = Vec::new();
    loop {
        let mut fds = vec![
            poll_fd(exit.as_raw_fd(), libc::POLLIN),
            poll_fd(listener.as_raw_fd(), libc::POLLIN),
        ];
        for c in &clients {
            // After the peer's end of file, only writing is left.
            let mut events = if c.eof { 0 } else { libc::POLLIN };
            if c.conn.has_output() {
                events |= libc::POLLOUT;
            }
            fds.push(poll_fd(c.stream.as_raw_fd(), events));
        }
        let now = Instant::now();
        let timeout = clients
            .iter()
            .filter(|c| !c.idle())
            .map(|c| (c.since + REQUEST_TIMEOUT).saturating_duration_since(now))
            .min()
            .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            // Replies already made (an InstanceStart's 204 for a guest
            // that stopped at once) still go out, as far as sockets take
            // them without waiting.
            for c in &mut clients {
                let _ = c.conn.write_to(&mut c.stream);
            }
            return Ok(());
        }
        // Clients first (in order, so each meets its pollfd), then new ones.
        let mut client_fds = fds[2..].iter();
        clients.retain_mut(|c| {
            let revents = client_fds.next().map_or(0, |f| f.revents);
            service(c, revents, &mut dispatch)
        });
        let now = Instant::now();
        clients.retain_mut(|c| {
            if c.idle() || now < c.since + REQUEST_TIMEOUT {
                return true;
            }
            if c.conn.has_partial_request() && !c.conn.has_output() {
                tell(
                    &c.stream,
                    &Response::fault(408, "the request did not arrive in time"),
                );
            }
            false
        });
        if fds[1].revents != 0 {
            accept_clients(&listener, &mut clients);
        }
    }
}

/// A last reply to a client being dropped: what its socket takes at once.
fn tell(mut stream: &UnixStream, response: &Response) {
    let _ = stream.write(&response.encode(true));
}

fn poll_fd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Reads, answers and writes for one client; false once it is done for.
fn service(c: &mut Client, revents: libc::c_short, dispatch: &mut impl FnMut(Request) -> Response) -> bool {
    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
        match c.conn.read_from(&mut c.stream) {
            Ok(true) => {}
            Ok(false) => c.eof = true,
            Err(_) => return false,
        }
    }
    loop {
        match c.conn.next_request() {
            Parsed::Request(request, _) => {
                let response = dispatch(request);
                c.conn.queue(&response);
                c.since = Instant::now();
            }
            Parsed::Refused(response) => {
                c.conn.queue(&response);
                break;
            }
            Parsed::Incomplete => break,
        }
    }
    let before = c.conn.has_output();
    if c.conn.write_to(&mut c.stream).is_err() || c.conn.output_overflowed() {
        return false;
    }
    if before && !c.conn.has_output() {
        c.since = Instant::now();
    }
    !((c.conn.closing || c.eof) && !c.conn.has_output())
}

fn accept_clients(listener: &UnixListener, clients: &mut Vec<Client>) {
    for _ in 0..ACCEPTS_PER_PASS {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => return,
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= MAX_CLIENTS {
            // The longest idle client makes room; if all are busy, the
            // newcomer is told to come back.
            let oldest = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.idle())
                .min_by_key(|(_, c)| c.since)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    clients.swap_remove(i);
                }
                None => {
                    tell(&stream, &Response::fault(503, "too many API clients; try again"));
                    continue;
                }
            }
        }
        clients.push(Client {
            stream,
            conn: Connection::default(),
            since: Instant::now(),
            eof: false,
        });
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
