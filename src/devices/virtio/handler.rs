//! Event-loop side of a virtio-mmio device: watches the per-queue
//! ioeventfds KVM signals on `QueueNotify` writes and the device's own set
//! of host fds, and runs the device's processing on the VMM thread.

use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::error;
use vmm_sys_util::eventfd::EventFd;

use super::events::HostEvents;
use super::{MmioTransport, VirtioDevice, VirtioError};

/// The event data of the device's host-event set; queue `i` has data `i`.
const HOST_EVENTS_DATA: u32 = u32::MAX;

pub struct MmioEventHandler<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    /// One per queue, in queue order; the event data is the queue index.
    queue_evts: Vec<EventFd>,
    host_events: Arc<HostEvents>,
}

impl<D: VirtioDevice> MmioEventHandler<D> {
    /// A handler for the transport's queue notifiers and host events.
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Result<Self, VirtioError> {
        let (queue_evts, host_events) = {
            let t = crate::sync::lock(&transport);
            let evts = t
                .queue_notifiers()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(VirtioError::EventFd)?;
            (evts, t.host_events().clone())
        };
        Ok(Self {
            transport,
            queue_evts,
            host_events,
        })
    }

    /// The queue notifiers, in queue order, to register with KVM.
    pub fn queue_notifiers(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn transport(&self) -> MutexGuard<'_, MmioTransport<D>> {
        // A vCPU thread that panicked mid-access leaves consistent enough
        // state for the guest to reset the device.
        crate::sync::lock(&self.transport)
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioEventHandler<D> {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                error!("virtio-mmio: cannot watch queue {index} notifications: {e:?}");
            }
        }
        let host = Events::with_data(&*self.host_events, HOST_EVENTS_DATA, EventSet::IN);
        if let Err(e) = ops.add(host) {
            error!("virtio-mmio: cannot watch the device's host fds: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let index = events.data();
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            error!("virtio-mmio: event source {index} failed; no longer watching it");
            let _ = ops.remove(events);
            return;
        }
        if index == HOST_EVENTS_DATA {
            // Level-triggered: fds left ready bring us back next round.
            self.transport().serve_host_events();
            return;
        }
        let Some(evt) = self.queue_evts.get(index as usize) else {
            error!("virtio-mmio: event for unknown queue {index}");
            return;
        };
        // Drain first: notifications arriving while we process re-arm it,
        // and the device is never left with unseen work. A notification
        // before DRIVER_OK is drained and then ignored by the transport.
        let _ = evt.read();
        self.transport().notify_queue(index);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::queue::QueueError;
    use crate::devices::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use crate::devices::virtio::{Activation, IrqfdInterrupt, PassEnd, VirtioError};
    use crate::vstate::memory::GuestMemoryMmap;

    struct Counter(Arc<AtomicUsize>);

    impl VirtioDevice for Counter {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn device_features(&self) -> u64 {
            1 << 32
        }
        fn read_config(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: Activation) -> Result<(), VirtioError> {
            Ok(())
        }
        fn process_queue(&mut self, _: usize, _: &mut [Queue]) -> Result<PassEnd, QueueError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(PassEnd::Drained)
        }
        fn reset(&mut self) {}
    }

    fn write32(t: &mut MmioTransport<Counter>, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn ioeventfd_drives_queue_processing_only_when_active() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(Counter(calls.clone()), mem, irq).unwrap(),
        ));
        let handler = MmioEventHandler::new(transport.clone()).unwrap();
        let kick = handler.queue_notifiers()[0].try_clone().unwrap();
        let mut event_loop: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        event_loop.add_subscriber(Arc::new(Mutex::new(handler)));

        // Before DRIVER_OK: drained, ignored.
        kick.write(1).unwrap();
        assert_eq!(event_loop.run_with_timeout(0).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(event_loop.run_with_timeout(0).unwrap(), 0, "event was drained");

        {
            let mut t = transport.lock().unwrap();
            write32(&mut t, 0x070, ACKNOWLEDGE | DRIVER);
            write32(&mut t, 0x024, 1);
            write32(&mut t, 0x020, 1);
            write32(&mut t, 0x070, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            write32(&mut t, 0x030, 0);
            write32(&mut t, 0x080, 0x1000);
            write32(&mut t, 0x090, 0x2000);
            write32(&mut t, 0x0a0, 0x3000);
            write32(&mut t, 0x044, 1);
            write32(&mut t, 0x070, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
            assert!(t.is_active());
        }
        kick.write(3).unwrap();
        assert_eq!(event_loop.run_with_timeout(0).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod pass_tests;

#[cfg(test)]
#[path = "host_event_tests.rs"]
mod host_event_tests;
