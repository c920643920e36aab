//! The virtio-vsock device: receive, transmit and event queues over a
//! [`Muxer`] of Unix-socket connections.
//!
//! Host-driven I/O goes through the device contract: the listener, every
//! handshake and connection stream, a deadline timer and a kick eventfd
//! are in the device's [`HostEvents`]. The kick is how a bounded pass asks
//! to be continued: the device signals it and returns, and the event loop
//! brings it back after everything else that is ready.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::{Muxer, TxVerdict, TOKEN_KICK, TOKEN_LISTENER, TOKEN_TIMER};
use super::packet::{
    parse_tx, PacketError, RxBuffer, EVENT_TRANSPORT_RESET, HDR_LEN, MAX_PACKET_DESCRIPTORS,
};
use super::{
    VsockCounters, VsockCountersSnapshot, VsockFault, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VSOCK_DEVICE_ID,
};
use crate::backends::unix_socket::{raise_open_file_limit, UnixSocketError, VsockListener};
use crate::config::VsockConfig;
use crate::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::devices::virtio::queue::{
    chain_at, drain_queue_or_wait, take_available, PassEnd, QueueError, QueueRules, Served, Spent, Take,
};
use crate::devices::virtio::ranges::{total_len, walk_ranges, write_ranges};
use crate::devices::virtio::{
    read_config_bytes, Activation, HostEvents, Interrupt, VirtioDevice, VirtioError, Watched, INTERRUPT_VRING,
};
use crate::vstate::memory::GuestMemoryMmap;

/// Open files wanted for [`super::MAX_CONNECTIONS`] connections and the
/// rest of the VMM; below it, connections beyond the limit are refused.
const WANTED_OPEN_FILES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    #[error(transparent)]
    Socket(#[from] UnixSocketError),
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rules: QueueRules,
    host_events: Arc<HostEvents>,
    muxer: Muxer,
    kick: Watched<EventFd>,
    /// A TX packet waits on the ring for room to answer it.
    tx_waiting: bool,
}

impl Active {
    fn signal(&self) {
        if let Err(e) = self.interrupt.trigger(INTERRUPT_VRING) {
            error_guest!("vsock: cannot signal the guest: {e}");
        }
    }

    /// Brings the device back for more once the loop served the rest.
    fn kick(&self) {
        if let Err(e) = self.kick.get().write(1) {
            log::error!("vsock: cannot schedule more work: {e}");
        }
    }
}

/// A virtio-vsock device for guest `cid`, listening on a Unix socket.
pub struct VsockDevice {
    cid: u64,
    socket: PathBuf,
    /// Open from creation so host peers may connect before the guest is
    /// up (they wait in the backlog); watched only while active.
    listener: VsockListener,
    counters: Arc<VsockCounters>,
    active: Option<Active>,
    /// A transport reset event waits for an event buffer.
    event_pending: bool,
}

impl VsockDevice {
    /// Listens on `config.socket` (replacing a stale socket there) and
    /// raises the open-file limit so that many connections fit.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockDeviceError> {
        match raise_open_file_limit() {
            Ok(n) if n < WANTED_OPEN_FILES => log::warn!(
                "vsock: the open-file limit is {n}; connections beyond it are refused (raise ulimit -n to {WANTED_OPEN_FILES})"
            ),
            Ok(_) => {}
            Err(e) => log::warn!("vsock: cannot raise the open-file limit: {e}"),
        }
        let listener = VsockListener::bind(&config.socket)?;
        Ok(Self {
            cid: u64::from(config.cid),
            socket: config.socket.clone(),
            listener,
            counters: Arc::new(VsockCounters::new()),
            active: None,
            event_pending: false,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The device's counters, live.
    pub fn counters(&self) -> Arc<VsockCounters> {
        self.counters.clone()
    }

    pub fn counters_snapshot(&self) -> VsockCountersSnapshot {
        self.counters.snapshot()
    }

    /// The connections, while active (for tests and the fuzz harness).
    #[doc(hidden)]
    pub fn muxer(&self) -> Option<&Muxer> {
        self.active.as_ref().map(|a| &a.muxer)
    }

    /// Drops every connection (closing the host streams) and tells the
    /// guest with `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, on which it resets
    /// all its sockets: for a restored snapshot, or an operator's reset.
    pub fn transport_reset(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        active.muxer.drop_all();
        self.event_pending = true;
        active.kick();
    }

    /// Posts a pending transport reset event, if the guest gave a buffer.
    fn post_event(&mut self, queues: &mut [Queue]) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = queues.get_mut(EVENT_QUEUE).filter(|q| q.ready()) else {
            return Ok(());
        };
        let walked = std::cell::Cell::new(0);
        let mut used = false;
        // Unusable buffers go back empty; at most a ring's worth.
        for _ in 0..queue.size() {
            if !self.event_pending {
                break;
            }
            let Some(head) = take_available(queue, &active.mem)? else {
                break;
            };
            let chain = chain_at(queue, &active.mem, &walked, &active.rules, head);
            let written = walk_ranges(chain, &active.mem, MAX_PACKET_DESCRIPTORS)
                .ok()
                .filter(|r| r.defect.is_none() && r.readable.is_empty() && total_len(&r.writable) >= 4)
                .and_then(|r| {
                    write_ranges(&active.mem, &r.writable, &EVENT_TRANSPORT_RESET.to_le_bytes()).ok()
                });
            if written == Some(4) {
                queue.add_used(&active.mem, head, 4)?;
                self.event_pending = false;
            } else {
                self.counters.record(VsockFault::RxBadChain);
                queue.add_used(&active.mem, head, 0)?;
            }
            used = true;
        }
        if used && queue.needs_notification(&active.mem)? {
            active.signal();
        }
        Ok(())
    }

    /// One bounded pass handing packets to the guest's receive buffers.
    /// Out of buffers: the waiting connections stay listed (and their
    /// streams unwatched) until the driver adds some. Out of budget: the
    /// kick brings the device back.
    fn serve_rx(&mut self, queues: &mut [Queue]) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = queues.get_mut(RX_QUEUE).filter(|q| q.ready()) else {
            return Ok(());
        };
        let walked = std::cell::Cell::new(0);
        let mut spent = Spent::start();
        let mut used = false;
        queue.disable_notification(&active.mem)?;
        while active.muxer.has_rx_work() {
            if spent.exhausted(&active.rules.budget, walked.get()) {
                active.kick();
                break;
            }
            let position = queue.next_avail();
            let Some(head) = take_available(queue, &active.mem)? else {
                // Seen here, or notified.
                if queue.enable_notification(&active.mem)? {
                    continue;
                }
                break;
            };
            spent.chains += 1;
            let chain = chain_at(queue, &active.mem, &walked, &active.rules, head);
            let rx = walk_ranges(chain, &active.mem, MAX_PACKET_DESCRIPTORS)
                .map_err(PacketError::from)
                .and_then(RxBuffer::new);
            let rx = match rx {
                Ok(rx) => rx,
                Err(e) => {
                    self.counters.record(VsockFault::RxBadChain);
                    debug_guest!("vsock: returning an unusable receive buffer: {e}");
                    queue.add_used(&active.mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            match active.muxer.fill_rx(&active.mem, &rx) {
                Some(len) => {
                    queue.add_used(&active.mem, head, len)?;
                    spent.bytes += u64::from(len);
                    used = true;
                }
                None => {
                    // Nobody had anything after all: the buffer stays. A
                    // connection reset on the way owes an RST now: the
                    // next round sends it.
                    queue.set_next_avail(position);
                    if active.muxer.has_rx_work() {
                        active.kick();
                    }
                    break;
                }
            }
        }
        if !active.muxer.has_rx_work() {
            queue.enable_notification(&active.mem)?;
        }
        if used && queue.needs_notification(&active.mem)? {
            active.signal();
        }
        if active.tx_waiting && active.muxer.can_take_tx() {
            active.kick();
        }
        Ok(())
    }

    /// One bounded pass over the guest's packets.
    fn serve_tx(&mut self, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(PassEnd::Drained);
        };
        let Some(queue) = queues.get_mut(TX_QUEUE).filter(|q| q.ready()) else {
            return Ok(PassEnd::Drained);
        };
        let mem = &active.mem;
        let muxer = &mut active.muxer;
        let counters = &*self.counters;
        let result = drain_queue_or_wait(queue, mem, &active.rules, |chain| {
            if !muxer.can_take_tx() {
                return Take::Wait;
            }
            let packet = walk_ranges(chain, mem, MAX_PACKET_DESCRIPTORS)
                .map_err(PacketError::from)
                .and_then(|ranges| parse_tx(mem, ranges));
            let packet = match packet {
                Ok(packet) => packet,
                Err(e) => {
                    debug_guest!("vsock: refusing a guest packet: {e}");
                    match e.header() {
                        Some(header) => muxer.refuse(&header, VsockFault::TxBadLen),
                        None => counters.record(VsockFault::TxBadChain),
                    }
                    return Take::Done(Served::default());
                }
            };
            match muxer.handle_tx(mem, &packet) {
                TxVerdict::Wait => Take::Wait,
                TxVerdict::Done => Take::Done(Served {
                    used_len: 0,
                    bytes: HDR_LEN as u64 + u64::from(packet.header.len),
                }),
            }
        })?;
        if result.pass.notify {
            active.signal();
        }
        active.tx_waiting = result.waiting;
        Ok(result.pass.end)
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_F_RING_EVENT_IDX,
            VIRTIO_F_INDIRECT_DESC,
        ]
        .into_iter()
        .fold(0, |acc, bit| acc | 1 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug_guest!("vsock: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        let fail =
            |what: &str, e: std::io::Error| VirtioError::Activation(format!("vsock: cannot {what}: {e}"));
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| fail("create an eventfd", e))?;
        let kick = ctx
            .host_events
            .watch(kick, TOKEN_KICK, EventSet::IN)
            .map_err(|e| fail("watch its eventfd", e))?;
        let muxer = Muxer::new(
            self.cid,
            self.socket.clone(),
            ctx.host_events.clone(),
            self.counters.clone(),
        )
        .map_err(|e| fail("create its deadline timer", e))?;
        ctx.host_events
            .add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
            .map_err(|e| fail(&format!("watch {:?}", self.listener.path()), e))?;
        log::info!(
            "vsock: guest CID {} started; host connections on {:?}",
            self.cid,
            self.listener.path()
        );
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rules: ctx.rules,
            host_events: ctx.host_events,
            muxer,
            kick,
            tx_waiting: false,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        match index {
            RX_QUEUE => {
                self.serve_rx(queues)?;
                Ok(PassEnd::Drained)
            }
            TX_QUEUE => {
                if self.active.as_ref().is_some_and(|a| a.tx_waiting) {
                    // The kick resumes it once there is room.
                    return Ok(PassEnd::Drained);
                }
                let end = self.serve_tx(queues)?;
                self.serve_rx(queues)?;
                Ok(end)
            }
            EVENT_QUEUE => {
                self.post_event(queues)?;
                Ok(PassEnd::Drained)
            }
            _ => Ok(PassEnd::Drained),
        }
    }

    fn process_host_event(
        &mut self,
        token: u64,
        ready: EventSet,
        queues: &mut [Queue],
    ) -> Result<PassEnd, QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(PassEnd::Drained);
        };
        let mut end = PassEnd::Drained;
        match token {
            TOKEN_KICK => {
                // A counter: one read takes every kick so far.
                let _ = active.kick.get().read();
                if active.tx_waiting && active.muxer.can_take_tx() {
                    active.tx_waiting = false;
                    if self.serve_tx(queues)? == PassEnd::Yielded {
                        if let Some(active) = &self.active {
                            active.kick();
                        }
                    }
                }
                self.post_event(queues)?;
            }
            TOKEN_TIMER => active.muxer.tick(&self.listener),
            _ => end = active.muxer.host_event(token, ready, &self.listener),
        }
        self.serve_rx(queues)?;
        Ok(end)
    }

    fn reset(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        // The listener stays open (host peers wait in its backlog) but
        // unwatched until the next activation.
        if let Err(e) = active.host_events.remove(self.listener.as_raw_fd()) {
            log::error!("vsock: cannot stop watching {:?}: {e}", self.listener.path());
        }
        self.event_pending = false;
        // Dropping the muxer removes, then closes, every stream and the
        // timer; the kick likewise.
        drop(active);
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "device_hostile_tests.rs"]
mod hostile_tests;
