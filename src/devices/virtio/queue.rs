//! Queue handling shared by devices: one bounded pass over a queue.
//!
//! A pass hands available chains to the device until the queue is empty
//! or the pass has spent its [`PassBudget`]; then it returns, and the
//! transport re-arms the queue's notifier so that the event loop serves
//! signals, the console and other devices before the next pass. A guest
//! that keeps its ring full therefore gets steady service but never holds
//! the VMM thread.

use std::cell::Cell;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

pub use super::chain::{Chain, ChainFault};
use super::features::VIRTIO_F_INDIRECT_DESC;
use crate::vstate::memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the driver made {pending} buffers available on a queue of {size}; it needs a reset")]
    AvailIndexTooFar { pending: u16, size: u16 },
    #[error("the driver made descriptor {head} available on a queue of {size}; it needs a reset")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("cannot access the queue in guest memory ({0}); the driver needs to reset the device")]
    Ring(#[from] virtio_queue::Error),
}

/// The most one pass may do before it yields. A pass stops before a chain
/// once any limit is reached, so the last chain may overshoot it by up to
/// one request's worth: devices bound that separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassBudget {
    /// Chains taken off the ring, plus rechecks that found none.
    pub chains: u32,
    /// Descriptors read, indirect ones included.
    pub descriptors: u64,
    /// Bytes of I/O the device reported (see [`Served::bytes`]).
    pub bytes: u64,
    /// Wall-clock time, for I/O that is slow for reasons the counts cannot
    /// see (a slow disk, a sync); `None` only in tests that need passes to
    /// be exactly reproducible.
    pub time: Option<Duration>,
}

impl PassBudget {
    /// A pass costs well under a millisecond of VMM time for small
    /// requests and a few milliseconds at the byte or descriptor limit.
    pub const DEFAULT: Self = Self {
        chains: 64,
        descriptors: 4096,
        bytes: 4 << 20,
        time: Some(Duration::from_millis(20)),
    };
}

/// What a device did with one chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Bytes written into the chain, for the used ring.
    pub used_len: u32,
    /// Bytes the device moved or wrote on the chain's behalf (data read or
    /// written, zeroes written), charged to the pass budget.
    pub bytes: u64,
}

/// How a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassEnd {
    /// The ring is empty and driver notifications are back on.
    Drained,
    /// The budget ran out with buffers still available: the caller must
    /// schedule another pass (the transport re-arms the queue notifier).
    Yielded,
}

/// The outcome of one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub end: PassEnd,
    /// The driver wants a used-buffer notification (honouring
    /// `VIRTIO_F_RING_EVENT_IDX`); the caller sends it.
    pub notify: bool,
    /// Chains put on the used ring.
    pub served: u32,
}

/// How a device walks its queues; fixed when the driver starts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRules {
    /// `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
    pub budget: PassBudget,
}

impl QueueRules {
    /// The rules for a driver that accepted `acked_features`.
    pub fn negotiated(acked_features: u64) -> Self {
        Self {
            indirect: acked_features & (1 << VIRTIO_F_INDIRECT_DESC) != 0,
            budget: PassBudget::DEFAULT,
        }
    }
}

/// What a pass has used of its budget so far; for devices that run passes
/// of their own (net receive), too.
pub(crate) struct Spent {
    start: Instant,
    pub chains: u32,
    pub bytes: u64,
}

impl Spent {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            chains: 0,
            bytes: 0,
        }
    }

    pub fn exhausted(&self, budget: &PassBudget, descriptors: u64) -> bool {
        self.chains >= budget.chains
            || descriptors >= budget.descriptors
            || self.bytes >= budget.bytes
            || budget.time.is_some_and(|limit| self.start.elapsed() >= limit)
    }
}

/// One pass over `queue`: hands each available chain to `handle`, which
/// serves it, and puts the chain on the used ring, until the ring is empty
/// or `rules.budget` is spent.
///
/// Driver notifications are off while we work. The available index is
/// read once per round, and only what it announced is taken, so the ring
/// is never read beyond what the driver published (virtio-queue's own pop
/// would read the index again and log an error of its own if the driver
/// had moved it too far meanwhile). An empty round turns notifications
/// back on and checks the index again, so a buffer published at any
/// moment is either seen here or notified.
pub fn drain_queue<Q, F>(
    queue: &mut Q,
    mem: &GuestMemoryMmap,
    rules: &QueueRules,
    mut handle: F,
) -> Result<Pass, QueueError>
where
    Q: QueueT,
    F: FnMut(Chain<'_>) -> Served,
{
    drain_queue_or_wait(queue, mem, rules, |chain| Take::Done(handle(chain))).map(|p| p.pass)
}

/// What a device did with a chain [`drain_queue_or_wait`] offered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Served: the chain goes on the used ring.
    Done(Served),
    /// The device cannot take the chain now (its backend is full): the
    /// chain stays available, untouched, and the pass ends.
    Wait,
}

/// The outcome of [`drain_queue_or_wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingPass {
    pub pass: Pass,
    /// The device turned a chain down ([`Take::Wait`]); `pass.end` is then
    /// [`PassEnd::Drained`] and driver notifications stay off: the device
    /// must come back to the queue itself once its backend can take more,
    /// as the driver will not notify it (nor is the notifier re-armed).
    pub waiting: bool,
}

/// [`drain_queue`] for a device whose backend may fill up (a tap): a
/// chain it cannot take now is left on the ring rather than dropped, and
/// the pass stops there.
pub fn drain_queue_or_wait<Q, F>(
    queue: &mut Q,
    mem: &GuestMemoryMmap,
    rules: &QueueRules,
    mut handle: F,
) -> Result<WaitingPass, QueueError>
where
    Q: QueueT,
    F: FnMut(Chain<'_>) -> Take,
{
    let walked = Cell::new(0u64);
    let mut spent = Spent::start();
    let mut served = 0u32;
    let mut waiting = false;
    let end = 'pass: loop {
        queue.disable_notification(mem)?;
        let pending = pending_chains(queue, mem)?;
        if pending == 0 {
            if !queue.enable_notification(mem)? {
                break PassEnd::Drained;
            }
            // Published after our read: the next round takes it. Charged,
            // so a driver flipping its index cannot keep us here.
            spent.chains += 1;
            if spent.exhausted(&rules.budget, walked.get()) {
                break PassEnd::Yielded;
            }
            continue;
        }
        for _ in 0..pending {
            // Every pass that sees work serves at least one chain.
            if served > 0 && spent.exhausted(&rules.budget, walked.get()) {
                break 'pass PassEnd::Yielded;
            }
            let position = queue.next_avail();
            let head = pop_head(queue, mem)?;
            let chain = Chain::new(
                mem,
                &walked,
                GuestAddress(queue.desc_table()),
                queue.size(),
                head,
                rules.indirect,
            );
            let result = match handle(chain) {
                Take::Done(result) => result,
                Take::Wait => {
                    // Back on the ring: the next pass starts with it.
                    queue.set_next_avail(position);
                    waiting = true;
                    break 'pass PassEnd::Drained;
                }
            };
            queue.add_used(mem, head, result.used_len)?;
            served += 1;
            spent.chains += 1;
            spent.bytes = spent.bytes.saturating_add(result.bytes);
        }
    };
    let notify = served > 0 && queue.needs_notification(mem)?;
    Ok(WaitingPass {
        pass: Pass { end, notify, served },
        waiting,
    })
}

/// Takes the next chain the driver made available, if there is one, and
/// returns its head; the caller must put it on the used ring eventually
/// (or the driver never gets the buffer back). For a device that gathers
/// buffers before it knows how many it needs and keeps them across passes
/// (net receive with mergeable buffers). Leaves driver notifications as
/// they are.
pub fn take_available<Q: QueueT>(queue: &mut Q, mem: &GuestMemoryMmap) -> Result<Option<u16>, QueueError> {
    if pending_chains(queue, mem)? == 0 {
        return Ok(None);
    }
    pop_head(queue, mem).map(Some)
}

/// The chain at `head` of `queue`, walked by `rules`, its descriptors
/// counted in `walked`.
pub fn chain_at<'a, Q: QueueT>(
    queue: &Q,
    mem: &'a GuestMemoryMmap,
    walked: &'a Cell<u64>,
    rules: &QueueRules,
    head: u16,
) -> Chain<'a> {
    Chain::new(
        mem,
        walked,
        GuestAddress(queue.desc_table()),
        queue.size(),
        head,
        rules.indirect,
    )
}

/// Chains published and not yet taken, from one read of the available
/// index. The driver may never have more outstanding than the queue holds.
fn pending_chains<Q: QueueT>(queue: &Q, mem: &GuestMemoryMmap) -> Result<u16, QueueError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(QueueError::AvailIndexTooFar {
            pending,
            size: queue.size(),
        });
    }
    Ok(pending)
}

/// Takes the next head off the available ring; the caller knows from
/// [`pending_chains`] that the driver published it.
fn pop_head<Q: QueueT>(queue: &mut Q, mem: &GuestMemoryMmap) -> Result<u16, QueueError> {
    let size = queue.size();
    let next = queue.next_avail();
    // flags, idx, then the ring; the activation checked it lies in memory.
    // `size` is not 0: the caller saw 1 to `size` chains pending.
    let slot = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(next % size))
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let head = u16::from_le(
        mem.read_obj::<u16>(GuestAddress(slot))
            .map_err(virtio_queue::Error::GuestMemory)?,
    );
    queue.set_next_avail(next.wrapping_add(1));
    // Also checked by virtio-queue's add_used, which would log an error.
    if head >= size {
        return Err(QueueError::HeadOutOfRange { head, size });
    }
    Ok(head)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
