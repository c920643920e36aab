//! Calls from other threads onto a running VM's [`DeviceHandles`], run on
//! the VMM thread as [`DeviceHandles`] requires: whoever serves an API
//! (or a test) queues a closure and wakes the event loop, which runs it
//! between device events. The queue is bounded: a caller faster than the
//! loop is told so instead of growing it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handles::DeviceHandles;

/// Work for the VMM thread on the running VM's devices.
pub type DeviceCall = Box<dyn FnOnce(&DeviceHandles) + Send>;

/// Calls waiting for the VMM thread at most.
pub const QUEUE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DeviceCallError {
    #[error("the VMM has {QUEUE_LEN} device calls waiting already; try again once they ran")]
    Busy,
    #[error("the VM is not running; its devices can no longer be reached")]
    Gone,
    #[error("cannot wake the VMM thread: {0}")]
    Wake(io::Error),
}

/// The calling side; clone it for each thread that calls.
#[derive(Clone)]
pub struct DeviceCaller {
    calls: SyncSender<DeviceCall>,
    wake: Arc<EventFd>,
}

/// The VMM side: [`DeviceCallQueue::into_hook`] makes it a
/// [`super::BootHooks::on_running`] hook.
pub struct DeviceCallQueue {
    calls: Receiver<DeviceCall>,
    wake: Arc<EventFd>,
}

impl DeviceCallQueue {
    /// The hook that runs the queued calls on the VMM thread, with the
    /// running VM's devices, between events.
    pub fn into_hook(self) -> super::RunningHook {
        Box::new(move |vm: super::RunningVm| {
            let runner = DeviceCallRunner::new(self, vm.devices);
            Some(Arc::new(std::sync::Mutex::new(runner))
                as Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>)
        })
    }
}

/// A connected caller and queue.
pub fn device_calls() -> io::Result<(DeviceCaller, DeviceCallQueue)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LEN);
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((
        DeviceCaller {
            calls: tx,
            wake: wake.clone(),
        },
        DeviceCallQueue { calls: rx, wake },
    ))
}

impl DeviceCaller {
    /// Queues `call` to run on the VMM thread with the VM's devices; it runs
    /// once the VM runs, or never if the VM stops first. Send its result
    /// back through a channel of your own.
    pub fn call(&self, call: impl FnOnce(&DeviceHandles) + Send + 'static) -> Result<(), DeviceCallError> {
        self.calls.try_send(Box::new(call)).map_err(|e| match e {
            TrySendError::Full(_) => DeviceCallError::Busy,
            TrySendError::Disconnected(_) => DeviceCallError::Gone,
        })?;
        self.wake.write(1).map_err(DeviceCallError::Wake)
    }
}

/// The event-loop subscriber that runs the calls; it owns the handles, so
/// they go when the event loop does.
struct DeviceCallRunner {
    queue: DeviceCallQueue,
    handles: DeviceHandles,
}

impl DeviceCallRunner {
    fn new(queue: DeviceCallQueue, handles: DeviceHandles) -> Self {
        Self { queue, handles }
    }

    /// Runs what is queued, at most one queue's worth, so a caller that
    /// keeps queueing cannot hold the loop; true if calls may be left.
    fn run_queued(&mut self) -> bool {
        for _ in 0..QUEUE_LEN {
            match self.queue.calls.try_recv() {
                Ok(call) => call(&self.handles),
                Err(_) => return false,
            }
        }
        true
    }
}

impl MutEventSubscriber for DeviceCallRunner {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue.wake.read();
        if self.run_queued() {
            // The rest waits for the loop's next turn.
            let _ = self.queue.wake.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.queue.wake.as_ref(), EventSet::IN)) {
            log::error!(
                "cannot watch for device calls (fd {}): {e}",
                self.queue.wake.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use event_manager::{EventManager, SubscriberOps};

    use super::*;

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    #[test]
    fn calls_run_on_the_loop_with_the_handles_and_the_queue_is_bounded() {
        let (caller, queue) = device_calls().unwrap();
        let mut event_loop: Loop = EventManager::new().unwrap();
        event_loop.add_subscriber(Arc::new(Mutex::new(DeviceCallRunner::new(
            queue,
            DeviceHandles::default(),
        ))));
        let (tx, rx) = mpsc::channel();
        let remote = caller.clone();
        std::thread::spawn(move || {
            remote
                .call(move |handles| {
                    let _ = tx.send((std::thread::current().id(), handles.send_ctrl_alt_del()));
                })
                .unwrap();
        })
        .join()
        .unwrap();
        assert!(rx.try_recv().is_err(), "ran before the loop did");
        assert!(event_loop.run_with_timeout(1000).unwrap() > 0);
        let (thread, result) = rx.try_recv().unwrap();
        assert_eq!(thread, std::thread::current().id());
        // No i8042 in an empty set of handles: a one-line error.
        let err = result.unwrap_err().to_string();
        assert!(err.contains("no i8042") && !err.contains('\n'), "{err}");

        for _ in 0..QUEUE_LEN {
            caller.call(|_| {}).unwrap();
        }
        assert!(matches!(caller.call(|_| {}), Err(DeviceCallError::Busy)));
        assert!(event_loop.run_with_timeout(1000).unwrap() > 0);
        caller.call(|_| {}).unwrap();
        drop(event_loop);
        assert!(matches!(caller.call(|_| {}), Err(DeviceCallError::Gone)));
    }
}
