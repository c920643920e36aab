//! The receive path: frames from the backend straight into the guest's
//! receive buffers.
//!
//! A frame is read from the backend only once the device holds buffers
//! for it, so no frame is lost while the guest has buffers: a frame read is
//! delivered, or dropped because it is larger than anything the guest gave
//! (counted). The device takes chains off the receive queue and holds them
//! across passes until a frame fills them:
//!
//! - without `VIRTIO_NET_F_MRG_RXBUF` a frame goes into one chain, so one
//!   held chain is enough;
//! - with it, a frame may span several chains (`num_buffers` says how
//!   many), and a read waits until the held chains can take the largest
//!   frame the backend may produce with the negotiated offloads (or until
//!   the device holds the whole ring, or as many buffers as one read can
//!   use).
//!
//! When the guest has no (or not enough) buffers, the device stops
//! watching the backend until the driver notifies the receive queue: no
//! spinning on a readable tap the device cannot serve.

use std::cell::Cell;

use virtio_queue::{Queue, QueueT};
use vm_memory::VolatileSlice;

use super::counters::{DropReason, NetCounters};
use super::header::{set_num_buffers, ETH_HLEN, VLAN_HLEN, VNET_HDR_LEN};
use super::MAX_PACKET_LEN;
use crate::backends::tap::{NetBackend, MAX_FRAME_BUFFERS};
use crate::devices::virtio::queue::{chain_at, take_available, QueueError, QueueRules, Spent};
use crate::devices::virtio::ranges::{guest_slices, total_len, walk_ranges, GuestRange, RangeError};
use crate::rate_limiter::{RateLimiter, TokenKind};
use crate::vstate::memory::GuestMemoryMmap;

/// A receive chain the device has taken off the ring and not yet used.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldChain {
    head: u16,
    /// Its device-writable spans, in order, all in guest memory.
    ranges: Vec<GuestRange>,
    len: u64,
}

/// How one receive pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxEnd {
    /// The backend has no frame waiting.
    BackendEmpty,
    /// The guest has not given enough buffers: stop watching the backend
    /// until the driver notifies the receive queue. Notifications are on.
    NeedBuffers,
    /// The pass spent its budget; the backend may have more.
    Yielded,
    /// The receive rate limit is spent: stop watching the backend until
    /// the limiter's timer fires.
    Throttled,
}

/// Whether the held chains can take a frame.
enum Fill {
    Ready,
    /// The ring is empty and driver notifications are on.
    Empty,
    /// The budget ran out on unusable chains.
    OutOfBudget,
}

/// What the receive side keeps between passes.
#[derive(Debug)]
pub struct Receiver {
    held: Vec<HeldChain>,
    /// Descriptor spans in `held`: one read takes at most
    /// [`MAX_FRAME_BUFFERS`] buffers.
    held_ranges: usize,
    held_bytes: u64,
    mergeable: bool,
    /// Bytes the held chains must add up to before a frame is read
    /// (mergeable buffers only).
    needed: u64,
}

/// Largest frame, header included, the backend hands out without
/// segmentation offloads for a link of `mtu`: the MTU does not count the
/// Ethernet header or a VLAN tag.
pub fn unsegmented_packet_len(mtu: u16) -> usize {
    (VNET_HDR_LEN + ETH_HLEN + VLAN_HLEN + usize::from(mtu)).min(MAX_PACKET_LEN)
}

impl Receiver {
    /// `mergeable`: `VIRTIO_NET_F_MRG_RXBUF` was negotiated; `max_packet`:
    /// the largest frame (header included) the backend may produce.
    pub fn new(mergeable: bool, max_packet: usize) -> Self {
        Self {
            held: Vec::new(),
            held_ranges: 0,
            held_bytes: 0,
            mergeable,
            needed: max_packet as u64,
        }
    }

    /// Chains taken off the ring and not yet used.
    #[cfg(test)]
    pub fn held_chains(&self) -> usize {
        self.held.len()
    }

    fn ready_to_read(&self, queue_size: u16) -> bool {
        if self.held.is_empty() {
            return false;
        }
        !self.mergeable
            || self.held_bytes >= self.needed
            || self.held.len() >= usize::from(queue_size)
            || self.held_ranges >= MAX_FRAME_BUFFERS
    }

    /// One bounded pass: reads frames from `backend` into the guest's
    /// buffers until the backend is empty, the guest's buffers run out or
    /// the budget or the rate limit is spent. Returns how it ended and
    /// whether the driver wants an interrupt. A frame's size is known only
    /// once it is read, so the limiter admits a read while it has any
    /// bandwidth left and is charged the frame's bytes afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn pass<B: NetBackend>(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        rules: &QueueRules,
        backend: &mut B,
        counters: &NetCounters,
        limiter: &mut RateLimiter,
    ) -> Result<(RxEnd, bool), QueueError> {
        let walked = Cell::new(0u64);
        let mut spent = Spent::start();
        let mut used = false;
        // The driver need not tell us of new buffers while we are busy:
        // we look at the ring each time we need one.
        queue.disable_notification(mem)?;
        let end = loop {
            if spent.exhausted(&rules.budget, walked.get()) {
                break RxEnd::Yielded;
            }
            match self.fill(queue, mem, rules, &walked, &mut spent, &mut used, counters)? {
                Fill::Ready => {}
                Fill::Empty => break RxEnd::NeedBuffers,
                Fill::OutOfBudget => break RxEnd::Yielded,
            }
            if !limiter.consume_unsized() {
                break RxEnd::Throttled;
            }
            match self.receive_one(queue, mem, backend, counters)? {
                Some(bytes) => {
                    limiter.charge(bytes.saturating_sub(VNET_HDR_LEN) as u64, TokenKind::Bytes);
                    spent.chains += 1;
                    spent.bytes = spent.bytes.saturating_add(bytes as u64);
                    used |= bytes > 0;
                }
                None => {
                    limiter.undo(1, TokenKind::Ops);
                    break RxEnd::BackendEmpty;
                }
            }
        };
        let notify = used && queue.needs_notification(mem)?;
        Ok((end, notify))
    }

    /// Takes chains off the ring until a frame can be read.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        rules: &QueueRules,
        walked: &Cell<u64>,
        spent: &mut Spent,
        used: &mut bool,
        counters: &NetCounters,
    ) -> Result<Fill, QueueError> {
        while !self.ready_to_read(queue.size()) {
            let Some(head) = take_available(queue, mem)? else {
                // Empty: ask for a notification, then look once more, so a
                // buffer published meanwhile is seen here or notified.
                if queue.enable_notification(mem)? {
                    continue;
                }
                return Ok(Fill::Empty);
            };
            if let Err(reason) = self.hold(queue, mem, rules, walked, head) {
                // The driver gets the chain back empty.
                counters.record_drop(reason);
                debug_guest!(
                    "virtio-net: returning an unusable receive chain: {}",
                    reason.as_str()
                );
                queue.add_used(mem, head, 0)?;
                *used = true;
                spent.chains += 1;
                if spent.exhausted(&rules.budget, walked.get()) {
                    return Ok(Fill::OutOfBudget);
                }
            }
        }
        Ok(Fill::Ready)
    }

    /// Checks the chain at `head` and holds it, or says why it is unusable.
    fn hold(
        &mut self,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        rules: &QueueRules,
        walked: &Cell<u64>,
        head: u16,
    ) -> Result<(), DropReason> {
        let chain = chain_at(queue, mem, walked, rules, head);
        let ranges = walk_ranges(chain, mem, MAX_FRAME_BUFFERS).map_err(|_| DropReason::RxBadChain)?;
        match ranges.defect {
            None => {}
            Some(RangeError::ReadableAfterWritable) => return Err(DropReason::RxChainNotWritable),
            Some(_) => return Err(DropReason::RxBadChain),
        }
        if !ranges.readable.is_empty() || ranges.writable.is_empty() {
            return Err(DropReason::RxChainNotWritable);
        }
        let len = total_len(&ranges.writable);
        // Every chain may be the first of a frame, which starts with the
        // whole header.
        if len < VNET_HDR_LEN as u64 {
            return Err(DropReason::RxChainTooSmall);
        }
        self.held_ranges += ranges.writable.len();
        self.held_bytes = self.held_bytes.saturating_add(len);
        self.held.push(HeldChain {
            head,
            ranges: ranges.writable,
            len,
        });
        Ok(())
    }

    /// Reads one frame into the held chains. Returns the bytes delivered
    /// (0 for a dropped frame), or `None` if the backend had none.
    fn receive_one<B: NetBackend>(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        backend: &mut B,
        counters: &NetCounters,
    ) -> Result<Option<usize>, QueueError> {
        let chains = if self.mergeable {
            self.held.len()
        } else {
            self.held.len().min(1)
        };
        // What one read can use of each held chain: the backend takes at
        // most MAX_FRAME_BUFFERS buffers, and ranges split where guest
        // memory regions end.
        let mut slices: Vec<VolatileSlice<'_>> = Vec::new();
        let mut room = Vec::with_capacity(chains);
        for chain in &self.held[..chains] {
            let Ok(chain_slices) = guest_slices(mem, &chain.ranges) else {
                // Checked when the chain was held; guest memory does not
                // shrink.
                room.push(0);
                continue;
            };
            let fit = chain_slices.len().min(MAX_FRAME_BUFFERS - slices.len());
            room.push(chain_slices[..fit].iter().map(|s| s.len()).sum::<usize>());
            slices.extend_from_slice(&chain_slices[..fit]);
            if slices.len() == MAX_FRAME_BUFFERS {
                break;
            }
        }
        let capacity: usize = room.iter().sum();
        let len = match backend.read_frame(&slices) {
            Ok(None) => return Ok(None),
            Ok(Some(len)) => len,
            Err(e) => {
                counters.record_drop(DropReason::RxBackend);
                warn_guest!("virtio-net: {e}");
                return Ok(None);
            }
        };
        if len > capacity {
            // Cut short by the backend; the chains stay held for the next.
            counters.record_drop(DropReason::RxChainTooSmall);
            debug_guest!(
                "virtio-net: dropping a received {len}-byte frame; the guest's buffers hold {capacity}"
            );
            return Ok(Some(0));
        }
        if len < VNET_HDR_LEN + ETH_HLEN {
            counters.record_drop(DropReason::RxBackend);
            debug_guest!("virtio-net: dropping a received frame of {len} bytes, header included");
            return Ok(Some(0));
        }
        // Spread over the held chains in order.
        let mut lens = Vec::new();
        let mut left = len;
        for &fit in &room {
            if left == 0 {
                break;
            }
            let take = left.min(fit);
            lens.push(take);
            left -= take;
        }
        let num_buffers = u16::try_from(lens.len()).unwrap_or(u16::MAX);
        // The first chain holds the whole header (see `hold`).
        if set_num_buffers(&slices, num_buffers).is_err() {
            return Ok(Some(0));
        }
        let used: Vec<HeldChain> = self.held.drain(..lens.len()).collect();
        for (chain, take) in used.iter().zip(lens) {
            self.held_ranges -= chain.ranges.len();
            self.held_bytes -= chain.len;
            // A chain is under 4 GiB (the walk checks), so is `take`.
            queue.add_used(mem, chain.head, take as u32)?;
        }
        counters.record_rx(len - VNET_HDR_LEN);
        Ok(Some(len))
    }
}
