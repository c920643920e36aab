//! Queue handling shared by devices.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};

use crate::vstate::memory::GuestMemoryMmap;

/// A descriptor chain borrowed from guest memory.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the driver made {pending} buffers available on a queue of {size}; it needs a reset")]
    AvailIndexTooFar { pending: u16, size: u16 },
    #[error("the driver's available ring cannot be read; it needs a reset")]
    NoProgress,
    #[error("the driver made descriptor {head} available on a queue of {size}; it needs a reset")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("cannot access the queue in guest memory ({0}); the driver needs to reset the device")]
    Ring(#[from] virtio_queue::Error),
}

/// Drains `queue`: hands each available chain to `handle`, which returns
/// how many bytes it wrote into the chain, and puts the chain on the used
/// ring. Notifications from the driver are off while we work and the queue
/// is re-checked after turning them back on, so no buffer is missed.
///
/// Returns whether the driver wants a used-buffer notification (honouring
/// `VIRTIO_F_RING_EVENT_IDX`); the caller sends it.
pub fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut handle: F) -> Result<bool, QueueError>
where
    F: FnMut(Chain<'_>) -> u32,
{
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        check_avail_index(queue, mem)?;
        let mut popped = 0u32;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // Checked here because virtio-queue would log an error for it.
            if head >= queue.size() {
                return Err(QueueError::HeadOutOfRange {
                    head,
                    size: queue.size(),
                });
            }
            let written = handle(chain);
            queue.add_used(mem, head, written)?;
            used_any = true;
            popped += 1;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
        // More work appeared while notifications were off; but if this pass
        // consumed nothing, popping is failing and looping would spin.
        if popped == 0 {
            return Err(QueueError::NoProgress);
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

/// The driver may never have more buffers outstanding than the queue holds;
/// `virtio-queue` would log an error on every pop and yield nothing.
fn check_avail_index(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(QueueError::AvailIndexTooFar {
            pending,
            size: queue.size(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn one_desc(vq: &MockSplitQueue<GuestMemoryMmap>, count: u16) {
        let descs: Vec<RawDescriptor> = (0..count)
            .map(|i| RawDescriptor::from(Descriptor::new(0x8000 + u64::from(i) * 0x100, 0x100, 0, 0)))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
    }

    #[test]
    fn drains_every_chain_and_fills_used_ring() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        one_desc(&vq, 3);
        let mut heads = Vec::new();
        let notify = drain_queue(&mut q, &mem, |chain| {
            heads.push(chain.head_index());
            7
        })
        .unwrap();
        assert!(notify);
        assert_eq!(heads, [0, 1, 2]);
        assert_eq!(vq.used().idx().load(), 3);
        let elem = vq.used().ring().ref_at(2).unwrap().load();
        assert_eq!((elem.id(), elem.len()), (2, 7));
    }

    #[test]
    fn empty_queue_needs_no_notification() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(!drain_queue(&mut q, &mem, |_| 0).unwrap());
    }

    #[test]
    fn event_idx_suppresses_notification_until_used_event() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        // The mock's used ring overlaps the end of its available ring,
        // where used_event lives; move it out of the way.
        q.set_used_ring_address(Some(0x4000), Some(0));
        q.set_event_idx(true);
        // used_event (after the avail ring) = 5: notify only once used idx
        // passes 5.
        let used_event = vq.avail_addr().unchecked_add(4 + 2 * 16);
        mem.write_obj(5u16, used_event).unwrap();
        one_desc(&vq, 2);
        assert!(!drain_queue(&mut q, &mem, |_| 0).unwrap());
        let descs: Vec<RawDescriptor> = (0..4)
            .map(|_| RawDescriptor::from(Descriptor::new(0x8000, 0x10, 0, 0)))
            .collect();
        vq.add_desc_chains(&descs, 2).unwrap();
        assert!(drain_queue(&mut q, &mem, |_| 0).unwrap());
    }

    #[test]
    fn refuses_avail_index_beyond_queue_size() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(17);
        let mut calls = 0;
        let err = drain_queue(&mut q, &mem, |_| {
            calls += 1;
            0
        })
        .unwrap_err();
        assert!(matches!(
            err,
            QueueError::AvailIndexTooFar {
                pending: 17,
                size: 16
            }
        ));
        assert_eq!(calls, 0);
    }

    #[test]
    fn head_index_past_queue_is_an_error_not_a_hang() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(200);
        vq.avail().idx().store(1);
        let err = drain_queue(&mut q, &mem, |_| panic!("must not be handled")).unwrap_err();
        assert!(
            matches!(err, QueueError::HeadOutOfRange { head: 200, size: 16 }),
            "{err}"
        );
    }
}
