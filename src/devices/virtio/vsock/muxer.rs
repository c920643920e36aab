//! Every connection of one device: the map keyed by (host port, guest
//! port), host-port allocation, handshakes on the listening socket,
//! deadlines, and the order in which connections get the guest's receive
//! buffers.
//!
//! Memory is bounded by [`MAX_CONNECTIONS`]: replies owed to the guest are
//! flags on their connection, the list of connections waiting for receive
//! buffers holds each at most once, and the RSTs for packets that match no
//! connection wait in a queue of [`MAX_STRAY_RSTS`]; when that is full the
//! device leaves the guest's packets on the TX ring until receive buffers
//! free it (back-pressure, not loss).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, Connection, Filled, State};
use super::packet::{Header, Op, RxBuffer, TxPacket, TYPE_STREAM};
use super::{VsockCounters, VsockFault, FIRST_HOST_PORT, HOST_CID, MAX_CONNECTIONS};
use crate::backends::unix_socket::{
    connect_nonblocking, port_path, HandshakeReader, HandshakeStep, VsockListener,
};
use crate::devices::virtio::{HostEvents, PassEnd, Watched};
use crate::vstate::memory::GuestMemoryMmap;

/// Host-event tokens of the device's own fds; streams get tokens from
/// [`FIRST_STREAM_TOKEN`] up, never reused.
pub const TOKEN_LISTENER: u64 = 1;
pub const TOKEN_TIMER: u64 = 2;
pub const TOKEN_KICK: u64 = 3;
pub const FIRST_STREAM_TOKEN: u64 = 16;
/// A host peer must send its `CONNECT` line within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The guest must answer a host connection within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A closing connection must hand its buffered data to the host within
/// this, or it is reset (a host peer that never reads cannot pin it).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often deadlines are checked while there are any.
pub const TICK: Duration = Duration::from_millis(250);
/// RSTs for packets that match no connection, waiting for receive buffers.
pub const MAX_STRAY_RSTS: usize = 256;
/// Connections accepted per call (bounded work per host event).
pub const ACCEPTS_PER_CALL: usize = 16;

/// The deadline timer. Non-blocking: the device contract allows a call
/// for an fd that is not ready, and reading a timer that has not expired
/// would wait for it (forever, when it is not armed).
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    // SAFETY: plain timerfd_create(2); the result is checked.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a timerfd we just created and nothing else owns.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

/// What the TX path did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxVerdict {
    Done,
    /// No room to answer now: leave the packet on the ring.
    Wait,
}

struct Handshake {
    stream: Watched<UnixStream>,
    reader: HandshakeReader,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    socket: PathBuf,
    host_events: Arc<HostEvents>,
    counters: Arc<VsockCounters>,
    timer: Watched<TimerFd>,
    timer_armed: bool,
    conns: HashMap<ConnKey, Connection>,
    handshakes: HashMap<u64, Handshake>,
    /// Connection tokens.
    tokens: HashMap<u64, ConnKey>,
    next_token: u64,
    next_host_port: u32,
    /// Connections with a packet for the guest, each at most once.
    rx_list: VecDeque<ConnKey>,
    stray_rsts: VecDeque<Header>,
    /// The listener is not watched: the process ran out of fds.
    listener_paused: bool,
}

impl Muxer {
    /// `socket`: the listening path, whose `_P` siblings guest
    /// connections reach. Registers its deadline timer in `host_events`.
    pub fn new(
        guest_cid: u64,
        socket: PathBuf,
        host_events: Arc<HostEvents>,
        counters: Arc<VsockCounters>,
    ) -> std::io::Result<Self> {
        let timer = host_events.watch(nonblocking_timer()?, TOKEN_TIMER, EventSet::IN)?;
        Ok(Self {
            guest_cid,
            socket,
            host_events,
            counters,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            rx_list: VecDeque::new(),
            stray_rsts: VecDeque::new(),
            listener_paused: false,
        })
    }

    /// Connections and handshakes held.
    pub fn len(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn connection(&self, key: ConnKey) -> Option<&Connection> {
        self.conns.get(&key)
    }

    pub fn keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.conns.keys().copied()
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_rx_work(&self) -> bool {
        !self.stray_rsts.is_empty() || !self.rx_list.is_empty()
    }

    /// Whether the TX path can take packets (an RST may be owed for any).
    pub fn can_take_tx(&self) -> bool {
        self.stray_rsts.len() < MAX_STRAY_RSTS
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        match self.timer.get_mut().reset(TICK, Some(TICK)) {
            Ok(()) => self.timer_armed = true,
            Err(e) => log::error!("vsock: cannot arm the deadline timer: {e}"),
        }
    }

    fn stray_rst(&mut self, to: &Header) {
        if to.op == Op::Rst as u16 {
            return;
        }
        self.stray_rsts.push_back(Header {
            src_cid: to.dst_cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: to.type_,
            op: Op::Rst as u16,
            ..Header::default()
        });
    }

    /// One packet from the guest.
    pub fn handle_tx(&mut self, mem: &GuestMemoryMmap, packet: &TxPacket) -> TxVerdict {
        if !self.can_take_tx() {
            return TxVerdict::Wait;
        }
        let h = packet.header;
        self.counters.record_tx(h.len);
        let refuse = |this: &mut Self, fault: VsockFault, why: &str| {
            this.counters.record(fault);
            debug_guest!("vsock: refusing a guest packet (op {}): {why}", h.op);
        };
        if h.src_cid != self.guest_cid {
            // Not the guest's address: nobody to answer.
            refuse(self, VsockFault::TxWrongSrcCid, "wrong source CID");
            return TxVerdict::Done;
        }
        if h.dst_cid != HOST_CID {
            refuse(
                self,
                VsockFault::TxWrongDstCid,
                "only the host (CID 2) is reachable",
            );
            self.stray_rst(&h);
            return TxVerdict::Done;
        }
        let key = ConnKey {
            host_port: h.dst_port,
            guest_port: h.src_port,
        };
        let op = match (h.type_, h.op()) {
            (TYPE_STREAM, Some(op)) => op,
            (TYPE_STREAM, None) => {
                refuse(self, VsockFault::TxBadOp, "unknown operation");
                self.fail(key, VsockFault::TxBadOp, &h);
                return TxVerdict::Done;
            }
            _ => {
                refuse(self, VsockFault::TxBadType, "not a stream socket");
                self.fail(key, VsockFault::TxBadType, &h);
                return TxVerdict::Done;
            }
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.guest_connect(key, &h),
                // Linux resets what it no longer knows; never answer one.
                Op::Rst => {}
                _ => {
                    refuse(self, VsockFault::TxUnknownConnection, "no such connection");
                    self.stray_rst(&h);
                }
            }
            return TxVerdict::Done;
        };
        if conn.state == State::Resetting {
            // An RST is on its way; the guest's RST settles it sooner.
            if op == Op::Rst {
                self.remove(key);
            }
            return TxVerdict::Done;
        }
        conn.update_peer_credit(&h);
        let result = match op {
            Op::Request => {
                self.counters.record(VsockFault::TxDuplicateRequest);
                self.reset(key, VsockFault::TxDuplicateRequest);
                return TxVerdict::Done;
            }
            Op::Response if conn.state == State::Connecting => {
                self.counters.record_connection();
                conn.on_response(&h)
            }
            Op::Rw if conn.state == State::Established => conn.on_rw(mem, &packet.payload, h.len),
            Op::Response | Op::Rw => {
                self.counters.record(VsockFault::TxBadState);
                self.reset(key, VsockFault::TxBadState);
                return TxVerdict::Done;
            }
            Op::Rst => {
                self.remove(key);
                return TxVerdict::Done;
            }
            Op::Shutdown => conn.on_shutdown(h.flags),
            Op::CreditUpdate => Ok(()),
            Op::CreditRequest => {
                conn.on_credit_request();
                Ok(())
            }
        };
        if let Err(e) = result {
            self.counters.record(e.fault());
            debug_guest!("vsock: resetting connection {key:?}: {e}");
            self.reset(key, e.fault());
        }
        self.refresh(key);
        TxVerdict::Done
    }

    /// A packet whose header is readable but whose payload is not what it
    /// says: its connection is reset, or it is answered with an RST.
    pub fn refuse(&mut self, header: &Header, fault: VsockFault) {
        self.counters.record(fault);
        if header.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            host_port: header.dst_port,
            guest_port: header.src_port,
        };
        self.fail(key, fault, header);
    }

    /// A bad packet: resets its connection if there is one, else answers
    /// it with an RST.
    fn fail(&mut self, key: ConnKey, fault: VsockFault, h: &Header) {
        if self.conns.contains_key(&key) {
            self.reset(key, fault);
        } else {
            self.stray_rst(h);
        }
    }

    /// A guest REQUEST to host port `key.host_port`: connects to
    /// `<socket>_<port>`, or answers RST.
    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.len() >= MAX_CONNECTIONS {
            self.counters.record(VsockFault::ConnectionLimit);
            warn_guest!("vsock: refusing a guest connection: {MAX_CONNECTIONS} connections are open");
            self.stray_rst(h);
            return;
        }
        let path = port_path(&self.socket, key.host_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                self.counters.record(VsockFault::HostConnectFailed);
                debug_guest!("vsock: guest connection to {path:?} refused: {e}");
                self.stray_rst(h);
                return;
            }
        };
        let token = self.take_token();
        let watched = match self.host_events.watch(stream, token, EventSet::empty()) {
            Ok(watched) => watched,
            Err(e) => {
                log::error!("vsock: cannot watch a host stream: {e}");
                self.stray_rst(h);
                return;
            }
        };
        log::debug!("vsock: guest port {} connected to {path:?}", key.guest_port);
        self.counters.record_connection();
        self.conns
            .insert(key, Connection::accepted(key, self.guest_cid, watched, h));
        self.tokens.insert(token, key);
        self.refresh(key);
    }

    /// Closes the host side and owes the guest an RST.
    fn reset(&mut self, key: ConnKey, fault: VsockFault) {
        if let Some(conn) = self.conns.get_mut(&key) {
            log::debug!("vsock: resetting {key:?} ({})", fault.as_str());
            if let Some(token) = conn.token() {
                self.tokens.remove(&token);
            }
            conn.close(true);
        }
        self.refresh(key);
    }

    /// Forgets a connection (closing its stream).
    fn remove(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if let Some(token) = conn.token() {
            self.tokens.remove(&token);
        }
        if conn.queued {
            self.rx_list.retain(|k| *k != key);
        }
        self.resume_listener_after_close();
    }

    /// Brings a connection's list membership, interest and lifetime in line
    /// with its state.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state == State::Resetting && !conn.wants_rx() {
            self.remove(key);
            return;
        }
        if conn.finished() {
            log::debug!("vsock: {key:?} closed both ways");
            if let Some(token) = conn.token() {
                self.tokens.remove(&token);
            }
            conn.close(true);
        } else if conn.state == State::Established && conn.draining() && conn.deadline.is_none() {
            conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            self.arm_timer();
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.wants_rx() && !conn.queued {
            conn.queued = true;
            self.rx_list.push_back(key);
        }
        conn.update_interest();
    }

    /// Writes the next packet for the guest into `rx`; returns the chain's
    /// used length, or `None` if no connection has a packet now.
    pub fn fill_rx(&mut self, mem: &GuestMemoryMmap, rx: &RxBuffer) -> Option<u32> {
        if let Some(header) = self.stray_rsts.pop_front() {
            return match rx.write_header(mem, &header) {
                Ok(used) => {
                    self.counters.record_rx(0);
                    Some(used)
                }
                Err(_) => Some(0),
            };
        }
        // Each listed connection once at most: a connection that turns out
        // to have nothing leaves the list.
        for _ in 0..self.rx_list.len() {
            let key = self.rx_list.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.fill(mem, rx) {
                Ok(Filled::Packet { used, payload }) => {
                    self.counters.record_rx(payload);
                    self.refresh(key);
                    return Some(used);
                }
                Ok(Filled::Nothing) => self.refresh(key),
                Err(e) => {
                    self.counters.record(e.fault());
                    debug_guest!("vsock: resetting connection {key:?}: {e}");
                    self.reset(key, e.fault());
                }
            }
        }
        None
    }

    /// A host fd of ours is ready.
    pub fn host_event(&mut self, token: u64, ready: EventSet, listener: &VsockListener) -> PassEnd {
        if token == TOKEN_LISTENER {
            return self.accept(listener);
        }
        if self.handshakes.contains_key(&token) {
            self.handshake_event(token);
        } else if let Some(&key) = self.tokens.get(&token) {
            self.stream_event(key, ready);
        }
        PassEnd::Drained
    }

    fn accept(&mut self, listener: &VsockListener) -> PassEnd {
        for _ in 0..ACCEPTS_PER_CALL {
            let stream = match listener.accept() {
                Ok(Some(stream)) => stream,
                Ok(None) => return PassEnd::Drained,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Accepting again would fail again at once: wait for a
                    // connection to close (or the next deadline tick).
                    log::warn!(
                        "vsock: cannot accept host connections: {e}; raise the open-file limit (ulimit -n)"
                    );
                    self.pause_listener(listener, true);
                    return PassEnd::Drained;
                }
                Err(e) => {
                    log::debug!("vsock: accept failed: {e}");
                    continue;
                }
            };
            if self.len() >= MAX_CONNECTIONS {
                self.counters.record(VsockFault::ConnectionLimit);
                log::warn!("vsock: refusing a host connection: {MAX_CONNECTIONS} connections are open");
                continue;
            }
            let token = self.take_token();
            match self.host_events.watch(stream, token, EventSet::IN) {
                Ok(stream) => {
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            reader: HandshakeReader::default(),
                            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                        },
                    );
                    self.arm_timer();
                }
                Err(e) => log::error!("vsock: cannot watch a host connection: {e}"),
            }
        }
        PassEnd::Yielded
    }

    fn pause_listener(&mut self, listener: &VsockListener, pause: bool) {
        let interest = if pause { EventSet::empty() } else { EventSet::IN };
        match self
            .host_events
            .modify(listener.as_raw_fd(), TOKEN_LISTENER, interest)
        {
            Ok(()) => self.listener_paused = pause,
            Err(e) => log::error!("vsock: cannot change what the listener is watched for: {e}"),
        }
        if pause {
            self.arm_timer();
        }
    }

    /// A connection closed: a paused listener may accept again. (The
    /// listener fd is the device's; the tick resumes it.)
    fn resume_listener_after_close(&mut self) {
        if self.listener_paused {
            self.arm_timer();
        }
    }

    fn handshake_event(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = match hs.reader.read_from(&mut hs.stream.get_mut()) {
            Ok(HandshakeStep::NeedMore) => return,
            Ok(HandshakeStep::Port(port)) => port,
            Err(e) => {
                self.counters.record(VsockFault::HandshakeFailed);
                log::debug!("vsock: closing a host connection: {e}");
                self.handshakes.remove(&token);
                self.resume_listener_after_close();
                return;
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        // Whatever follows the line waits in the stream for the guest.
        if let Err(e) = hs.stream.set_interest(EventSet::empty()) {
            log::error!("vsock: cannot pause a host connection: {e}");
            return;
        }
        let key = ConnKey {
            host_port: self.allocate_host_port(port),
            guest_port: port,
        };
        log::debug!(
            "vsock: host connection to guest port {port} as host port {}",
            key.host_port
        );
        let conn = Connection::connecting(key, self.guest_cid, hs.stream, Instant::now() + CONNECT_TIMEOUT);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        self.refresh(key);
    }

    /// The next free host port from 2^30 up, wrapping below `u32::MAX`.
    fn allocate_host_port(&mut self, guest_port: u32) -> u32 {
        // At most MAX_CONNECTIONS are taken, so this ends within as many.
        loop {
            let port = self.next_host_port;
            self.next_host_port = if port >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                host_port: port,
                guest_port,
            };
            if !self.conns.contains_key(&key) {
                return port;
            }
        }
    }

    fn stream_event(&mut self, key: ConnKey, ready: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if ready.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            conn.on_hang_up();
        }
        if ready.intersects(EventSet::IN) && conn.state == State::Established {
            conn.readable = true;
        }
        if let Err(e) = conn.flush() {
            self.counters.record(e.fault());
            log::debug!("vsock: resetting {key:?}: {e}");
            self.reset(key, e.fault());
        }
        self.refresh(key);
    }

    /// Deadlines: handshakes that took too long, guests that did not
    /// answer, closings that did not drain. Resumes a paused listener.
    pub fn tick(&mut self, listener: &VsockListener) {
        // Read the expirations so the timer stops being readable (EAGAIN
        // on a spurious call: nothing expired).
        let _ = self.timer.get_mut().wait();
        let now = Instant::now();
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(&token, _)| token)
            .collect();
        for token in late {
            self.counters.record(VsockFault::HandshakeFailed);
            log::debug!("vsock: closing a host connection that sent no CONNECT line in time");
            self.handshakes.remove(&token);
        }
        let late: Vec<(ConnKey, State)> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| (c.key, c.state))
            .collect();
        for (key, state) in late {
            let fault = if state == State::Connecting {
                VsockFault::GuestConnectTimeout
            } else {
                VsockFault::CloseTimeout
            };
            self.counters.record(fault);
            self.reset(key, fault);
        }
        if self.listener_paused {
            self.pause_listener(listener, false);
        }
        let pending = !self.handshakes.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !pending && !self.listener_paused {
            if let Err(e) = self.timer.get_mut().clear() {
                log::error!("vsock: cannot stop the deadline timer: {e}");
            }
            self.timer_armed = false;
        }
    }

    /// Forgets every connection and handshake at once (closing the host
    /// streams), as a transport reset does; the guest is not told
    /// per connection.
    pub fn drop_all(&mut self) {
        self.rx_list.clear();
        self.stray_rsts.clear();
        self.tokens.clear();
        self.handshakes.clear();
        self.conns.clear();
        if self.listener_paused {
            self.arm_timer();
        }
    }
}
