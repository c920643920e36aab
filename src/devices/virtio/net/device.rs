//! The virtio-net device: one receive and one transmit queue over a
//! [`NetBackend`] (a tap).
//!
//! Host-driven I/O goes through the device contract: the backend's fd is
//! in the device's [`HostEvents`] under [`PROCESS_BACKEND`], watched for
//! readable while the guest has receive buffers, and for writable while a
//! transmit waits for room in the backend. Queue notifications bring new
//! receive buffers (which resume watching a paused backend) and frames to
//! transmit. Every pass is bounded by the queue rules' budget.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::VolatileSlice;

use super::config_space::NetConfigSpace;
use super::counters::{DropReason, NetCounters, NetCountersSnapshot};
use super::features::{self, has};
use super::header::{split_tx_header, TxRules, VNET_HDR_LEN};
use super::rx::{unsegmented_packet_len, Receiver, RxEnd};
use super::{
    guest_offload_features, guest_offloads, ConfigSpaceError, MacAddr, MAX_PACKET_LEN, NET_DEVICE_ID,
};
use crate::backends::tap::{NetBackend, NetBackendError, Offloads, TapBackend, MAX_FRAME_BUFFERS};
use crate::config::NetConfig;
use crate::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::devices::virtio::queue::{
    drain_queue_or_wait, Chain, PassEnd, QueueError, QueueRules, Served, Take,
};
use crate::devices::virtio::ranges::{guest_slices, total_len, walk_ranges};
use crate::devices::virtio::{Activation, HostEvents, Interrupt, VirtioDevice, VirtioError, INTERRUPT_VRING};
use crate::rate_limiter::{
    RateLimitConfigError, RateLimiter, RateLimiterConfig, RateLimiterError, TokenKind,
};
use crate::vstate::memory::GuestMemoryMmap;

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The host-event token of the backend's fd.
pub const PROCESS_BACKEND: u64 = 1;
/// The host-event token of the receive rate limiter's timer.
pub const RX_RATE_LIMITER_TIMER: u64 = 2;
/// The host-event token of the transmit rate limiter's timer.
pub const TX_RATE_LIMITER_TIMER: u64 = 3;
/// The MTU a card reports when its tap's cannot be read.
pub const DEFAULT_MTU: u16 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetDeviceError {
    #[error(transparent)]
    Backend(#[from] NetBackendError),
    #[error("network card on {tap}: {source}")]
    Config { tap: String, source: ConfigSpaceError },
    #[error("network card on {tap}: {source}")]
    RateLimiter { tap: String, source: RateLimiterError },
}

/// What the device has while the driver runs it.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rules: QueueRules,
    host_events: Arc<HostEvents>,
    tx_rules: TxRules,
    rx: Receiver,
    /// The guest has no receive buffers: the backend is not watched for
    /// readable until the driver notifies the receive queue.
    rx_waiting_for_buffers: bool,
    /// The receive rate limit is spent: the backend is not watched for
    /// readable until the limiter's timer fires.
    rx_throttled: bool,
    /// Transmitting goes on when the backend is writable: it was full, or
    /// a pass started there yielded.
    tx_on_writable: bool,
    /// What the backend's fd is watched for now; `None` once it is no
    /// longer in the set (it hung up).
    interest: Option<EventSet>,
}

impl Active {
    fn wanted_interest(&self) -> EventSet {
        let mut interest = EventSet::empty();
        if !self.rx_waiting_for_buffers && !self.rx_throttled {
            interest |= EventSet::IN;
        }
        if self.tx_on_writable {
            interest |= EventSet::OUT;
        }
        interest
    }

    /// Brings the backend's registration in line with what the device
    /// waits for.
    fn update_interest(&mut self, fd: i32) {
        let wanted = self.wanted_interest();
        let Some(current) = self.interest else {
            return;
        };
        if current == wanted {
            return;
        }
        match self.host_events.modify(fd, PROCESS_BACKEND, wanted) {
            Ok(()) => self.interest = Some(wanted),
            Err(e) => {
                log::error!("virtio-net: cannot change what the backend fd is watched for: {e}");
                self.interest = None;
            }
        }
    }

    fn signal(&self) {
        if let Err(e) = self.interrupt.trigger(INTERRUPT_VRING) {
            error_guest!("virtio-net: cannot signal the guest: {e}");
        }
    }
}

/// A virtio-net card on a [`NetBackend`].
pub struct NetDevice<B: NetBackend> {
    backend: B,
    features: u64,
    config: NetConfigSpace,
    counters: Arc<NetCounters>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    active: Option<Active>,
}

impl NetDevice<TapBackend> {
    /// Opens (or creates) the tap `config` names; the card reports the
    /// tap's MTU.
    pub fn open(config: &NetConfig) -> Result<Self, NetDeviceError> {
        let backend = TapBackend::open(&config.tap)?;
        let mtu = backend.mtu().unwrap_or(DEFAULT_MTU);
        let mut card = Self::new(backend, config.mac_or_default(), mtu)?;
        let limiter = |limits: &RateLimiterConfig| {
            RateLimiter::new(limits).map_err(|source| NetDeviceError::RateLimiter {
                tap: config.tap.clone(),
                source,
            })
        };
        card.rx_limiter = limiter(&config.rx_rate_limiter)?;
        card.tx_limiter = limiter(&config.tx_rate_limiter)?;
        Ok(card)
    }
}

impl<B: NetBackend> NetDevice<B> {
    /// A card with address `mac` and link MTU `mtu`, link up.
    pub fn new(backend: B, mac: MacAddr, mtu: u16) -> Result<Self, NetDeviceError> {
        let config = NetConfigSpace::new(mac, mtu).map_err(|source| NetDeviceError::Config {
            tap: backend.name().to_string(),
            source,
        })?;
        let features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_F_RING_EVENT_IDX,
            VIRTIO_F_INDIRECT_DESC,
            features::VIRTIO_NET_F_MAC,
            features::VIRTIO_NET_F_MTU,
            features::VIRTIO_NET_F_STATUS,
            features::VIRTIO_NET_F_MRG_RXBUF,
            // A tap takes partial checksums and any segmentation from us.
            features::VIRTIO_NET_F_CSUM,
            features::VIRTIO_NET_F_HOST_TSO4,
            features::VIRTIO_NET_F_HOST_TSO6,
            features::VIRTIO_NET_F_HOST_UFO,
        ]
        .into_iter()
        .fold(
            guest_offload_features(backend.supported_offloads()),
            features::with,
        );
        let limiter = || {
            RateLimiter::new(&RateLimiterConfig::default()).map_err(|source| NetDeviceError::RateLimiter {
                tap: backend.name().to_string(),
                source,
            })
        };
        Ok(Self {
            rx_limiter: limiter()?,
            tx_limiter: limiter()?,
            backend,
            features,
            config,
            counters: Arc::new(NetCounters::new()),
            active: None,
        })
    }

    /// The receive and transmit limits in force.
    pub fn rate_limiters(&self) -> (&RateLimiterConfig, &RateLimiterConfig) {
        (self.rx_limiter.config(), self.tx_limiter.config())
    }

    /// Changes the rate limits while the VM runs, with Firecracker's PATCH
    /// rules for each (`None`: that direction stays as it is). Both are
    /// checked before either changes.
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), RateLimitConfigError> {
        for patch in [rx, tx].into_iter().flatten() {
            patch.validate()?;
        }
        if let Some(patch) = rx {
            self.rx_limiter.update(patch)?;
        }
        if let Some(patch) = tx {
            self.tx_limiter.update(patch)?;
        }
        Ok(())
    }

    /// The card's counters, live: readable from any thread.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    pub fn counters_snapshot(&self) -> NetCountersSnapshot {
        self.counters.snapshot()
    }

    pub fn mac(&self) -> MacAddr {
        self.config.mac
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the device is waiting for receive buffers (and not watching
    /// its backend for frames meanwhile).
    pub fn rx_waiting_for_buffers(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.rx_waiting_for_buffers)
    }

    /// Receive chains taken off the ring and waiting for a frame.
    #[cfg(test)]
    pub fn rx_buffers_held(&self) -> usize {
        self.active.as_ref().map_or(0, |a| a.rx.held_chains())
    }

    /// Whether transmitting waits for the backend to become writable.
    pub fn tx_waiting_for_backend(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.tx_on_writable)
    }

    /// One receive pass; pauses watching the backend when the guest has no
    /// buffers.
    fn receive(&mut self, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        let fd = self.backend.as_raw_fd();
        let Some(active) = self.active.as_mut() else {
            return Ok(PassEnd::Drained);
        };
        let Some(queue) = queues.get_mut(RX_QUEUE).filter(|q| q.ready()) else {
            // No receive queue: nowhere to put frames, ever.
            active.rx_waiting_for_buffers = true;
            active.update_interest(fd);
            return Ok(PassEnd::Drained);
        };
        let (end, notify) = active.rx.pass(
            queue,
            &active.mem,
            &active.rules,
            &mut self.backend,
            &self.counters,
            &mut self.rx_limiter,
        )?;
        if notify {
            active.signal();
        }
        match end {
            RxEnd::NeedBuffers => {
                active.rx_waiting_for_buffers = true;
                active.update_interest(fd);
            }
            RxEnd::Throttled if !active.rx_throttled => {
                self.counters.record_throttle(true);
                active.rx_throttled = true;
                active.update_interest(fd);
            }
            _ => {}
        }
        Ok(if end == RxEnd::Yielded {
            PassEnd::Yielded
        } else {
            PassEnd::Drained
        })
    }

    /// One transmit pass. `from_backend`: called because the backend became
    /// writable, where a yielded pass continues (the queue notifier is
    /// re-armed only for passes the driver started).
    fn transmit(&mut self, queues: &mut [Queue], from_backend: bool) -> Result<PassEnd, QueueError> {
        let fd = self.backend.as_raw_fd();
        let Some(active) = self.active.as_mut() else {
            return Ok(PassEnd::Drained);
        };
        let Some(queue) = queues.get_mut(TX_QUEUE).filter(|q| q.ready()) else {
            active.tx_on_writable = false;
            active.update_interest(fd);
            return Ok(PassEnd::Drained);
        };
        let backend = &mut self.backend;
        let counters = &*self.counters;
        let limiter = &mut self.tx_limiter;
        let mem = &active.mem;
        let tx_rules = active.tx_rules;
        let throttles = limiter.throttle_count();
        let result = drain_queue_or_wait(queue, mem, &active.rules, |chain| {
            transmit_chain(backend, counters, limiter, &tx_rules, mem, chain)
        })?;
        if result.pass.notify {
            active.signal();
        }
        if self.tx_limiter.throttle_count() > throttles {
            self.counters.record_throttle(false);
        }
        // Throttled: the limiter's timer resumes it, not the backend.
        let throttled = result.waiting && self.tx_limiter.is_blocked();
        active.tx_on_writable =
            (result.waiting && !throttled) || (from_backend && result.pass.end == PassEnd::Yielded);
        active.update_interest(fd);
        Ok(if active.tx_on_writable || throttled {
            PassEnd::Drained
        } else {
            result.pass.end
        })
    }
}

/// Sends the frame in one transmit chain, or drops it and says why.
fn transmit_chain<B: NetBackend>(
    backend: &mut B,
    counters: &NetCounters,
    limiter: &mut RateLimiter,
    tx_rules: &TxRules,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Take {
    let dropped = |reason: DropReason, why: &dyn std::fmt::Display| {
        counters.record_drop(reason);
        debug_guest!("virtio-net: dropping a transmitted frame: {why}");
        Take::Done(Served::default())
    };
    // One buffer goes to the clean header.
    let ranges = match walk_ranges(chain, mem, MAX_FRAME_BUFFERS - 1) {
        Ok(ranges) => ranges,
        Err(e) => return dropped(DropReason::TxBadChain, &e),
    };
    if let Some(defect) = &ranges.defect {
        return dropped(DropReason::TxBadChain, defect);
    }
    if !ranges.writable.is_empty() {
        return dropped(DropReason::TxBadChain, &"the chain has device-writable buffers");
    }
    let len = total_len(&ranges.readable);
    if len > MAX_PACKET_LEN as u64 {
        return dropped(
            DropReason::TxTooLarge,
            &format_args!("{len} bytes with the header, over {MAX_PACKET_LEN}"),
        );
    }
    let slices = match guest_slices(mem, &ranges.readable) {
        Ok(slices) => slices,
        Err(e) => return dropped(DropReason::TxBadChain, &e),
    };
    let (raw, frame) = match split_tx_header(&slices) {
        Ok(split) => split,
        Err(e) => return dropped(e.drop_reason(), &e),
    };
    // At most MAX_PACKET_LEN, checked above.
    let frame_len = len as usize - VNET_HDR_LEN;
    let header = match tx_rules.check(&raw, frame_len) {
        Ok(header) => header,
        Err(e) => return dropped(e.drop_reason(), &e),
    };
    // Charged for what goes out: a frame dropped above costs nothing.
    if !limiter.consume(1, TokenKind::Ops) {
        return Take::Wait;
    }
    if !limiter.consume(frame_len as u64, TokenKind::Bytes) {
        limiter.undo(1, TokenKind::Ops);
        return Take::Wait;
    }
    let mut header = header.to_bytes();
    let mut bufs = Vec::with_capacity(frame.len() + 1);
    bufs.push(VolatileSlice::from(&mut header[..]));
    bufs.extend(frame);
    match backend.write_frame(&bufs) {
        Ok(Some(_)) => {
            counters.record_tx(frame_len);
            Take::Done(Served {
                used_len: 0,
                bytes: len,
            })
        }
        Ok(None) => {
            // Not sent: the frame is tried again when the backend has room.
            limiter.undo(1, TokenKind::Ops);
            limiter.undo(frame_len as u64, TokenKind::Bytes);
            Take::Wait
        }
        Err(e) => {
            counters.record_drop(DropReason::TxBackend);
            warn_guest!("virtio-net: {e}");
            Take::Done(Served {
                used_len: 0,
                bytes: len,
            })
        }
    }
}

impl<B: NetBackend> VirtioDevice for NetDevice<B> {
    fn device_type(&self) -> u32 {
        NET_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No field of a modern device's config space is writable.
        debug_guest!(
            "virtio-net: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        let acked = ctx.acked_features;
        if let Some((feature, needs)) = features::missing_dependency(acked) {
            return Err(VirtioError::Activation(format!(
                "the driver accepted virtio-net feature {feature} without feature {needs}, which it needs"
            )));
        }
        let backend_error = |e: NetBackendError| VirtioError::Activation(e.to_string());
        // virtio 1.x: the 12-byte header, with or without mergeable buffers.
        self.backend
            .set_vnet_hdr_len(VNET_HDR_LEN)
            .map_err(backend_error)?;
        let offloads = guest_offloads(acked);
        self.backend.set_offloads(offloads).map_err(backend_error)?;
        let segmented = offloads.tso4 || offloads.tso6 || offloads.ufo || offloads.uso4 || offloads.uso6;
        let max_packet = if segmented {
            MAX_PACKET_LEN
        } else {
            unsegmented_packet_len(self.config.mtu)
        };
        ctx.host_events
            .add(self.backend.as_raw_fd(), PROCESS_BACKEND, EventSet::IN)
            .map_err(|e| VirtioError::Activation(format!("cannot watch {}: {e}", self.backend.name())))?;
        // Never readable unless throttled: watching them costs nothing.
        for (limiter, token) in [
            (&self.rx_limiter, RX_RATE_LIMITER_TIMER),
            (&self.tx_limiter, TX_RATE_LIMITER_TIMER),
        ] {
            ctx.host_events
                .add(limiter.as_raw_fd(), token, EventSet::IN)
                .map_err(|e| VirtioError::Activation(format!("cannot watch a rate-limit timer: {e}")))?;
        }
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rules: ctx.rules,
            host_events: ctx.host_events,
            tx_rules: TxRules::new(acked, self.config.mtu),
            rx: Receiver::new(has(acked, features::VIRTIO_NET_F_MRG_RXBUF), max_packet),
            rx_waiting_for_buffers: false,
            rx_throttled: false,
            tx_on_writable: false,
            interest: Some(EventSet::IN),
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        match index {
            RX_QUEUE => {
                let fd = self.backend.as_raw_fd();
                if let Some(active) = self.active.as_mut() {
                    if active.rx_waiting_for_buffers {
                        active.rx_waiting_for_buffers = false;
                        active.update_interest(fd);
                    }
                }
                // The backend's readiness brings the device back for the
                // rest of a yielded pass.
                self.receive(queues).map(|_| PassEnd::Drained)
            }
            TX_QUEUE => {
                if self.tx_waiting_for_backend() || self.tx_limiter.is_blocked() {
                    // The backend's readiness, or the limiter's timer,
                    // resumes it.
                    return Ok(PassEnd::Drained);
                }
                self.transmit(queues, false)
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
        match token {
            PROCESS_BACKEND => {}
            RX_RATE_LIMITER_TIMER => {
                self.rx_limiter.on_timer();
                if active.rx_throttled {
                    active.rx_throttled = false;
                    active.update_interest(self.backend.as_raw_fd());
                }
                // The backend, readable again, brings the device back.
                return Ok(PassEnd::Drained);
            }
            TX_RATE_LIMITER_TIMER => {
                self.tx_limiter.on_timer();
                if active.tx_on_writable {
                    // Waiting for the backend, not for the limiter.
                    return Ok(PassEnd::Drained);
                }
                if self.transmit(queues, false)? == PassEnd::Yielded {
                    // The timer is no longer ready, and the driver does not
                    // notify while a pass is pending: come back soon.
                    self.tx_limiter.wake_soon();
                }
                return Ok(PassEnd::Drained);
            }
            _ => return Ok(PassEnd::Drained),
        }
        if ready.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Reported once: the backend is gone (a deleted tap) and would
            // be reported forever. The card is cut off until a reset.
            log::error!(
                "virtio-net: {} failed or went away; the card no longer sends or receives",
                self.backend.name()
            );
            if let Err(e) = active.host_events.remove(self.backend.as_raw_fd()) {
                log::error!("virtio-net: cannot stop watching {}: {e}", self.backend.name());
            }
            active.interest = None;
            return Ok(PassEnd::Drained);
        }
        let mut end = PassEnd::Drained;
        if ready.contains(EventSet::OUT) && active.tx_on_writable {
            end = self.transmit(queues, true)?;
        }
        if ready.contains(EventSet::IN)
            && !self.rx_waiting_for_buffers()
            && self.receive(queues)? == PassEnd::Yielded
        {
            end = PassEnd::Yielded;
        }
        Ok(end)
    }

    fn reset(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        // Removed before anything else can reuse the fd number.
        if let Err(e) = active.host_events.remove(self.backend.as_raw_fd()) {
            log::error!("virtio-net: cannot stop watching {}: {e}", self.backend.name());
        }
        for limiter in [&self.rx_limiter, &self.tx_limiter] {
            if let Err(e) = active.host_events.remove(limiter.as_raw_fd()) {
                log::error!("virtio-net: cannot stop watching a rate-limit timer: {e}");
            }
        }
        // Frames for a driver that has gone: no offloads it might not
        // accept next time.
        if let Err(e) = self.backend.set_offloads(Offloads::NONE) {
            log::warn!("virtio-net: {e}");
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "device_hostile_tests.rs"]
mod hostile_tests;

#[cfg(test)]
#[path = "rate_limit_tests.rs"]
mod rate_limit_tests;
