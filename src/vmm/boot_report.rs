//! Boot instrumentation of a run: the timeline every phase is recorded on,
//! and an optional report made on the VMM thread when the guest reaches
//! user space (the boot-timer device fires on a vCPU thread, which must not
//! block on the caller's output).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::legacy::boot_timer::BootTimerEvents;
use crate::timeline::{BootTimeline, Phase};

/// A callback run once on the VMM thread when the guest reaches user space.
pub type UserSpaceReport = Box<dyn FnOnce(&BootTimeline) + Send>;

/// What a caller attaches to [`super::run_vm_with`].
pub struct BootHooks {
    pub timeline: Arc<BootTimeline>,
    pub on_user_space: Option<UserSpaceReport>,
    /// Lets another thread stop the VM; `None`: only the guest (or, with
    /// `ConsoleIo::handle_signals`, a signal) stops it.
    pub stop: Option<super::StopHandle>,
    /// Called on the VMM thread once the VM is built and its vCPUs started,
    /// before the guest runs: gets what can change a running VM and may
    /// return an event-loop subscriber that uses it (the API's runtime, or
    /// [`super::DeviceCallQueue::into_hook`] for another thread's calls).
    pub on_running: Option<RunningHook>,
}

/// What can change a running VM from the VMM thread.
pub struct RunningVm {
    /// Disks and network cards by id.
    pub devices: super::handles::DeviceHandles,
    pub pause: crate::vstate::vcpu::PauseControl,
    pub vcpus: crate::vstate::vcpu::VcpuKicker,
    pub exit: crate::exit::ExitNotifier,
    pub timeline: Arc<BootTimeline>,
}

/// See [`BootHooks::on_running`].
pub type RunningHook = Box<
    dyn FnOnce(RunningVm) -> Option<Arc<std::sync::Mutex<dyn event_manager::MutEventSubscriber + Send>>>
        + Send,
>;

impl Default for BootHooks {
    /// A fresh timeline (origin: now) and no report.
    fn default() -> Self {
        Self {
            timeline: Arc::new(BootTimeline::starting_now()),
            on_user_space: None,
            stop: None,
            on_running: None,
        }
    }
}

/// The boot timer's events when someone waits for the report: record on
/// the timeline, then wake the VMM loop.
pub struct UserSpaceSignal {
    timeline: Arc<BootTimeline>,
    wake: EventFd,
}

impl BootTimerEvents for UserSpaceSignal {
    fn user_space_reached(&self) {
        if self.timeline.record(Phase::UserSpace) {
            // A full counter still wakes the reader: nothing to handle.
            let _ = self.wake.write(1);
        }
    }
}

/// The VMM loop's side: runs the report when woken.
pub struct UserSpaceReporter {
    timeline: Arc<BootTimeline>,
    wake: EventFd,
    report: Option<UserSpaceReport>,
}

/// The boot timer's events for `hooks`, and the subscriber that reports
/// (None when there is no report to make).
pub fn user_space_wiring(
    hooks: BootHooks,
) -> std::io::Result<(Arc<dyn BootTimerEvents + Send + Sync>, Option<UserSpaceReporter>)> {
    let Some(report) = hooks.on_user_space else {
        return Ok((hooks.timeline, None));
    };
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let signal = UserSpaceSignal {
        timeline: hooks.timeline.clone(),
        wake: wake.try_clone()?,
    };
    let reporter = UserSpaceReporter {
        timeline: hooks.timeline,
        wake,
        report: Some(report),
    };
    Ok((Arc::new(signal), Some(reporter)))
}

impl UserSpaceReporter {
    /// Runs the report if the guest reached user space and it has not run
    /// yet: a guest that signals and stops at once can end the event loop
    /// before the loop sees the wake-up.
    pub fn finish(&mut self) {
        if self.timeline.get(Phase::UserSpace).is_some() {
            if let Some(report) = self.report.take() {
                report(&self.timeline);
            }
        }
    }
}

impl MutEventSubscriber for UserSpaceReporter {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let _ = self.wake.read();
        self.finish();
        // Reported once: nothing more to watch.
        let _ = ops.remove(events);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!(
                "cannot watch for the boot timer (fd {}): {e}",
                self.wake.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::legacy::boot_timer::{BootTimer, USER_SPACE_REACHED};

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    /// The device fires on one thread; the report runs once, on the loop's.
    #[test]
    fn the_report_runs_once_on_the_event_loop() {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        let hooks = BootHooks {
            on_user_space: Some(Box::new(move |t: &BootTimeline| {
                sink.lock().unwrap().push(t.user_space_report());
            })),
            ..BootHooks::default()
        };
        let timeline = hooks.timeline.clone();
        let (events, reporter) = user_space_wiring(hooks).unwrap();
        let mut event_loop: Loop = EventManager::new().unwrap();
        event_loop.add_subscriber(Arc::new(Mutex::new(reporter.unwrap())));
        let mut dev = BootTimer::new(events);
        std::thread::spawn(move || {
            dev.write(0, &[USER_SPACE_REACHED]);
            dev.write(0, &[USER_SPACE_REACHED]);
        })
        .join()
        .unwrap();
        assert!(event_loop.run_with_timeout(1000).unwrap() > 0);
        assert_eq!(event_loop.run_with_timeout(10).unwrap(), 0);
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert!(reports[0]
            .as_ref()
            .unwrap()
            .starts_with("boot: user space reached at "));
        assert!(timeline.get(Phase::UserSpace).is_some());
    }

    /// A signal the loop never saw (the guest stopped at once) is reported
    /// at the end, once; a guest that never signalled gets no report.
    #[test]
    fn finish_reports_a_signal_the_loop_never_saw() {
        let count = Arc::new(Mutex::new(0));
        let sink = count.clone();
        let hooks = BootHooks {
            on_user_space: Some(Box::new(move |_: &BootTimeline| *sink.lock().unwrap() += 1)),
            ..BootHooks::default()
        };
        let (events, reporter) = user_space_wiring(hooks).unwrap();
        let mut reporter = reporter.unwrap();
        reporter.finish();
        assert_eq!(*count.lock().unwrap(), 0, "no signal, no report");
        BootTimer::new(events).write(0, &[USER_SPACE_REACHED]);
        reporter.finish();
        reporter.finish();
        assert_eq!(*count.lock().unwrap(), 1);
    }

    /// Without a report, the device records straight onto the timeline.
    #[test]
    fn without_a_report_the_timeline_still_records() {
        let hooks = BootHooks::default();
        let timeline = hooks.timeline.clone();
        let (events, reporter) = user_space_wiring(hooks).unwrap();
        assert!(reporter.is_none());
        BootTimer::new(events).write(0, &[USER_SPACE_REACHED]);
        assert!(timeline.get(Phase::UserSpace).is_some());
    }
}
