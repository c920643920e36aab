//! One connection between a guest port and a host Unix stream: its state,
//! the credit accounting both ways (§5.10.6.3) and the bounded buffer for
//! guest data the host stream has not taken yet.
//!
//! Guest → host: payload goes from guest memory straight to the stream;
//! what the stream does not take waits in `tx_buf`, never more than
//! [`BUF_ALLOC`] (the credit we advertise), and later payloads queue behind
//! it. Host → guest: the stream is read straight into the guest's receive
//! buffer, only while the guest has credit for it: nothing is buffered on
//! the host side that way.
//!
//! Replies are flags, not queued packets, so a connection's memory is
//! bounded whatever the guest does. The muxer owns the queue order; this
//! type only answers "what is my next packet" and "what do I wait for".

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{shutdown, Header, Op, RxBuffer, TYPE_STREAM};
use super::{VsockFault, BUF_ALLOC, HOST_CID, MAX_PAYLOAD};
use crate::backends::unix_socket::{recv_vectored, send_bytes, send_vectored};
use crate::devices::virtio::ranges::{guest_slices, take_front, GuestRange};
use crate::devices::virtio::Watched;
use crate::vstate::memory::GuestMemoryMmap;

/// A connection's address: the host side's port and the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("the guest sent {sent} bytes beyond the {BUF_ALLOC}-byte credit it was given")]
    CreditLie { sent: u64 },
    #[error("the guest sent data after shutting down its sending side")]
    DataAfterShutdown,
    #[error("the host stream failed: {0}")]
    Host(#[from] io::Error),
    #[error("the guest's payload is not in guest memory")]
    GuestMemory,
}

impl ConnectionError {
    pub fn fault(&self) -> VsockFault {
        match self {
            Self::CreditLie { .. } => VsockFault::TxCreditLie,
            Self::DataAfterShutdown => VsockFault::TxBadState,
            Self::Host(_) => VsockFault::HostStreamError,
            Self::GuestMemory => VsockFault::TxBadChain,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: waiting for the guest's RESPONSE to our REQUEST.
    Connecting,
    Established,
    /// The host stream is closed; an RST to the guest is all that is left.
    Resetting,
}

/// Control packets owed to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    /// SHUTDOWN with SEND: the host stream reached its end.
    shutdown: bool,
    rst: bool,
}

/// The next packet for the guest and its payload length.
pub enum Filled {
    /// A packet is in the buffer; `used` bytes of the chain are written.
    Packet { used: u32, payload: u32 },
    /// Nothing to send now.
    Nothing,
}

pub struct Connection {
    pub key: ConnKey,
    pub state: State,
    guest_cid: u64,
    /// `None` once closed (resetting).
    stream: Option<Watched<UnixStream>>,
    /// What the stream is registered for; `None` when it is not in the
    /// host events (closed, or hung up).
    interest: Option<EventSet>,
    /// `OK <port>\n` still to write, before any guest data.
    greeting: Vec<u8>,
    tx_buf: VecDeque<u8>,
    /// Guest bytes handed to the host stream (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_told: u32,
    /// Payload bytes sent to the guest (wrapping).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// One CREDIT_REQUEST per stall.
    credit_requested: bool,
    guest_shut_send: bool,
    guest_shut_recv: bool,
    host_eof: bool,
    host_write_shut: bool,
    /// The host peer closed its end entirely: it receives nothing more.
    host_closed: bool,
    /// The host stream may have data for the guest.
    pub readable: bool,
    owed: Owed,
    /// On the muxer's list of connections with packets for the guest.
    pub queued: bool,
    /// When the connection gives up: the guest's answer to a host
    /// connection, or draining at close.
    pub deadline: Option<Instant>,
}

impl Connection {
    /// A host-initiated connection: a REQUEST to the guest is owed.
    pub fn connecting(key: ConnKey, guest_cid: u64, stream: Watched<UnixStream>, deadline: Instant) -> Self {
        let mut conn = Self::new(key, guest_cid, stream, State::Connecting);
        conn.owed.request = true;
        conn.deadline = Some(deadline);
        conn
    }

    /// A guest-initiated connection the host accepted: a RESPONSE is owed.
    pub fn accepted(key: ConnKey, guest_cid: u64, stream: Watched<UnixStream>, request: &Header) -> Self {
        let mut conn = Self::new(key, guest_cid, stream, State::Established);
        conn.owed.response = true;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn.readable = true;
        conn
    }

    fn new(key: ConnKey, guest_cid: u64, stream: Watched<UnixStream>, state: State) -> Self {
        Self {
            key,
            state,
            guest_cid,
            stream: Some(stream),
            interest: Some(EventSet::empty()),
            greeting: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            host_eof: false,
            host_write_shut: false,
            host_closed: false,
            readable: false,
            owed: Owed::default(),
            queued: false,
            deadline: None,
        }
    }

    /// The host-event token of its stream, if it has one.
    pub fn token(&self) -> Option<u64> {
        self.stream.as_ref().map(Watched::token)
    }

    /// Bytes of guest data waiting for the host stream.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Heap the connection holds for guest data (at most [`BUF_ALLOC`]
    /// plus what `VecDeque` rounds up to).
    pub fn buffer_capacity(&self) -> usize {
        self.tx_buf.capacity()
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the guest's credit fields from any packet it sent.
    pub fn update_peer_credit(&mut self, header: &Header) {
        let before = self.peer_credit();
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        if self.peer_credit() > before {
            self.credit_requested = false;
        }
    }

    /// The guest answered our REQUEST: established; the host peer hears
    /// `OK <host port>\n` before any data.
    pub fn on_response(&mut self, header: &Header) -> Result<(), ConnectionError> {
        self.update_peer_credit(header);
        self.state = State::Established;
        self.deadline = None;
        self.greeting = format!("OK {}\n", self.key.host_port).into_bytes();
        self.readable = true;
        self.flush()
    }

    /// The guest owes nothing more than being told about our credit.
    pub fn on_credit_request(&mut self) {
        self.owed.credit_update = true;
    }

    /// Guest SHUTDOWN with `flags`.
    pub fn on_shutdown(&mut self, flags: u32) -> Result<(), ConnectionError> {
        self.guest_shut_send |= flags & shutdown::SEND != 0;
        self.guest_shut_recv |= flags & shutdown::RCV != 0;
        if self.guest_shut_recv {
            self.readable = false;
        }
        self.flush()
    }

    /// Guest RW: `payload` goes to the host stream, what it does not take
    /// into the buffer. More than the credit we gave is a lie.
    pub fn on_rw(
        &mut self,
        mem: &GuestMemoryMmap,
        payload: &[GuestRange],
        len: u32,
    ) -> Result<(), ConnectionError> {
        if self.guest_shut_send {
            return Err(ConnectionError::DataAfterShutdown);
        }
        // In flight from the guest's view: what waits here plus this.
        let in_flight = self.tx_buf.len() as u64 + u64::from(len);
        if in_flight > u64::from(BUF_ALLOC) {
            return Err(ConnectionError::CreditLie {
                sent: in_flight - u64::from(BUF_ALLOC),
            });
        }
        let slices = guest_slices(mem, payload).map_err(|_| ConnectionError::GuestMemory)?;
        let mut skip = 0;
        if self.greeting.is_empty() && self.tx_buf.is_empty() && !self.host_write_shut {
            if let Some(stream) = &self.stream {
                skip = send_vectored(stream.get().as_fd(), &slices)?;
                self.fwd_cnt = self.fwd_cnt.wrapping_add(skip as u32);
            }
        }
        // What the stream did not take waits, behind what already did,
        // copied through a small bounce buffer.
        let mut bounce = [0u8; 4096];
        for slice in &slices {
            let mut at = skip.min(slice.len());
            skip -= at;
            while at < slice.len() {
                let n = (slice.len() - at).min(bounce.len());
                let part = slice.subslice(at, n).map_err(|_| ConnectionError::GuestMemory)?;
                part.copy_to(&mut bounce[..n]);
                self.tx_buf.extend(&bounce[..n]);
                at += n;
            }
        }
        self.note_forwarded();
        Ok(())
    }

    /// Writes what waits (greeting, then guest data) to the host stream;
    /// shuts the stream's write side once the guest will send no more and
    /// everything is out.
    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let fd = stream.get().as_fd();
        while !self.greeting.is_empty() {
            let n = send_bytes(fd, &self.greeting)?;
            if n == 0 {
                return Ok(());
            }
            self.greeting.drain(..n);
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = send_bytes(fd, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        if self.tx_buf.is_empty() {
            // Give back memory a burst took.
            self.tx_buf.shrink_to(0);
            if self.guest_shut_send && !self.host_write_shut {
                self.host_write_shut = true;
                // ENOTCONN: the peer has gone already; nothing to shut.
                let _ = stream.get().shutdown(Shutdown::Write);
            }
        }
        self.note_forwarded();
        Ok(())
    }

    /// Owes the guest a credit update once it is down to half its credit.
    fn note_forwarded(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= BUF_ALLOC / 2 {
            self.owed.credit_update = true;
        }
    }

    /// Closes the host stream; only an RST to the guest is left (if
    /// `tell_guest`).
    pub fn close(&mut self, tell_guest: bool) {
        self.stream = None;
        self.interest = None;
        self.state = State::Resetting;
        self.owed = Owed {
            rst: tell_guest,
            ..Owed::default()
        };
        self.readable = false;
        self.greeting = Vec::new();
        self.tx_buf = VecDeque::new();
        self.deadline = None;
    }

    /// The stream hung up or failed: it is no longer watched (the host
    /// events forget it); what is left in it is read on the guest's pace.
    pub fn on_hang_up(&mut self) {
        self.interest = None;
        // Both directions shut and we did not shut ours: the peer closed.
        self.host_closed |= !self.host_write_shut;
        if !self.guest_shut_recv && self.state == State::Established {
            self.readable = true;
        }
    }

    /// Whether host data may still go to the guest.
    fn may_read(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_shut_recv
    }

    /// Whether to read the host stream now.
    fn should_read(&self) -> bool {
        self.may_read() && self.readable && self.peer_credit() > 0
    }

    /// Whether to ask the guest for credit: it has none and we have not
    /// asked since.
    fn should_request_credit(&self) -> bool {
        self.may_read() && self.peer_credit() == 0 && !self.credit_requested
    }

    /// Whether a packet for the guest is (possibly) ready.
    pub fn wants_rx(&self) -> bool {
        let o = &self.owed;
        o.rst
            || o.request
            || o.response
            || o.credit_update
            || o.shutdown
            || self.should_read()
            || self.should_request_credit()
    }

    /// Both sides are done and the guest data is out: reset and forget.
    pub fn finished(&self) -> bool {
        self.state == State::Established
            && self.guest_shut_send
            && (self.host_eof || self.guest_shut_recv)
            && self.greeting.is_empty()
            && self.tx_buf.is_empty()
            && !self.owed.shutdown
    }

    /// The guest is closing and only our draining holds the connection.
    pub fn draining(&self) -> bool {
        self.guest_shut_send && (self.guest_shut_recv || self.host_eof)
    }

    /// What the stream should be watched for now.
    fn wanted_interest(&self) -> EventSet {
        let mut interest = EventSet::empty();
        if self.may_read() && !self.queued && self.peer_credit() > 0 {
            interest |= EventSet::IN;
        }
        if !self.greeting.is_empty() || !self.tx_buf.is_empty() {
            interest |= EventSet::OUT;
        }
        interest
    }

    /// Brings the stream's registration in line with what it waits for.
    pub fn update_interest(&mut self) {
        let wanted = self.wanted_interest();
        let (Some(stream), Some(current)) = (&self.stream, self.interest) else {
            return;
        };
        if current == wanted {
            return;
        }
        match stream.set_interest(wanted) {
            Ok(()) => self.interest = Some(wanted),
            Err(e) => {
                log::error!("vsock: cannot change what a host stream is watched for: {e}");
                self.interest = None;
            }
        }
    }

    fn header(&mut self, op: Op) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        self.owed.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.host_port,
            dst_port: self.key.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Puts the next packet owed to the guest into `rx`, control first,
    /// then data read from the host stream (at most the guest's credit,
    /// the buffer's room and [`MAX_PAYLOAD`]), then our SHUTDOWN once the
    /// stream has ended.
    pub fn fill(&mut self, mem: &GuestMemoryMmap, rx: &RxBuffer) -> Result<Filled, ConnectionError> {
        let control = |conn: &mut Self, op: Op, flags: u32| {
            let mut header = conn.header(op);
            header.flags = flags;
            header
        };
        let header = if self.owed.rst {
            self.owed.rst = false;
            control(self, Op::Rst, 0)
        } else if self.owed.request {
            self.owed.request = false;
            control(self, Op::Request, 0)
        } else if self.owed.response {
            self.owed.response = false;
            control(self, Op::Response, 0)
        } else if let Some(header) = self.fill_data(mem, rx)? {
            header
        } else if self.owed.shutdown {
            self.owed.shutdown = false;
            // A peer that closed entirely takes no more data either: the
            // guest hears both, and answers with its RST.
            let flags = if self.host_closed {
                shutdown::BOTH
            } else {
                shutdown::SEND
            };
            control(self, Op::Shutdown, flags)
        } else if self.owed.credit_update || (self.should_read() && rx.room() == 0) {
            // A buffer too small for data still gets a packet, so a guest
            // posting such buffers cannot make us spin on it.
            control(self, Op::CreditUpdate, 0)
        } else if self.should_request_credit() {
            self.credit_requested = true;
            control(self, Op::CreditRequest, 0)
        } else {
            return Ok(Filled::Nothing);
        };
        let used = rx
            .write_header(mem, &header)
            .map_err(|_| ConnectionError::GuestMemory)?;
        Ok(Filled::Packet {
            used,
            payload: header.len,
        })
    }

    /// Reads host data into `rx`'s payload room, if the guest can take it.
    fn fill_data(&mut self, mem: &GuestMemoryMmap, rx: &RxBuffer) -> Result<Option<Header>, ConnectionError> {
        if !self.should_read() {
            return Ok(None);
        }
        let max = u64::from(self.peer_credit().min(MAX_PAYLOAD)).min(rx.room());
        if max == 0 {
            return Ok(None);
        }
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        let mut room = rx.payload.clone();
        let ranges = take_front(&mut room, max).unwrap_or_default();
        let slices = guest_slices(mem, &ranges).map_err(|_| ConnectionError::GuestMemory)?;
        match recv_vectored(stream.get().as_fd(), &slices)? {
            None => {
                self.readable = false;
                Ok(None)
            }
            Some(0) => {
                self.host_eof = true;
                self.readable = false;
                self.owed.shutdown = true;
                Ok(None)
            }
            Some(n) => {
                // At most MAX_PAYLOAD.
                let n = n as u32;
                self.rx_cnt = self.rx_cnt.wrapping_add(n);
                let mut header = self.header(Op::Rw);
                header.len = n;
                Ok(Some(header))
            }
        }
    }
}
