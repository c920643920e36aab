//! Why a VM stopped, and how the thread that notices tells the VMM loop.
//!
//! vCPU threads and platform devices (i8042 reset, ACPI sleep register,
//! pvpanic) all call [`ExitNotifier::notify`]; the VMM thread watches the
//! event fd. The first reason recorded wins: a pvpanic followed by the reset
//! the panicking kernel issues is still reported as a panic.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync::lock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 or another orderly power-off.
    PowerOff,
    /// The guest reset itself (i8042 pulse, ACPI reset register).
    Reset,
    /// The guest kernel reported a panic through pvpanic.
    GuestPanic,
    /// KVM_EXIT_SHUTDOWN: the vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not run or emulate the guest.
    InternalError { vcpu: u8, detail: String },
    /// An exit kiln does not handle.
    UnhandledExit { vcpu: u8, detail: String },
    /// The host asked kiln to stop (SIGTERM, SIGINT).
    Signal(i32),
    /// The program running the VM stopped it through a
    /// [`crate::vmm::StopHandle`] (a sandbox's timeout or drop).
    Stopped,
}

impl ExitReason {
    /// Process exit status for this outcome. 0 for an orderly guest stop;
    /// distinct values otherwise so scripts can tell crashes apart.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::Stopped => 0,
            ExitReason::GuestPanic => 3,
            ExitReason::TripleFault { .. } => 4,
            ExitReason::InternalError { .. } | ExitReason::UnhandledExit { .. } => 5,
            ExitReason::Signal(sig) => 128 + sig,
        }
    }

    /// One line for stderr, or None when the stop was orderly.
    pub fn message(&self) -> Option<String> {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::Stopped => None,
            ExitReason::GuestPanic => Some("the guest kernel panicked (reported via pvpanic)".into()),
            ExitReason::TripleFault { vcpu } => Some(format!(
                "the guest triple-faulted on vCPU {vcpu} (KVM_EXIT_SHUTDOWN); check that the kernel matches the boot mode"
            )),
            ExitReason::InternalError { vcpu, detail } => {
                Some(format!("KVM internal error on vCPU {vcpu}: {detail}"))
            }
            ExitReason::UnhandledExit { vcpu, detail } => {
                Some(format!("unhandled KVM exit on vCPU {vcpu}: {detail}"))
            }
            ExitReason::Signal(sig) => Some(format!("stopped by signal {sig}")),
        }
    }
}

struct Inner {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    /// Mirrors `reason.is_some()` for the vCPU hot path, which checks it
    /// after every exit.
    stopping: AtomicBool,
}

/// Cloneable handle: every holder may request a stop.
#[derive(Clone)]
pub struct ExitNotifier(Arc<Inner>);

impl ExitNotifier {
    pub fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(Inner {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })))
    }

    /// Records `reason` unless one is already recorded, and wakes the VMM loop.
    pub fn notify(&self, reason: ExitReason) {
        {
            let mut slot = lock(&self.0.reason);
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        self.0.stopping.store(true, Ordering::Release);
        // A full counter still wakes the reader, so an error here is harmless.
        let _ = self.0.evt.write(1);
    }

    /// Whether any stop has been requested (cheap: no lock).
    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.0.reason).clone()
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.0.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        assert!(!n.is_stopping());
        n.clone().notify(ExitReason::GuestPanic);
        n.notify(ExitReason::Reset);
        assert_eq!(n.reason(), Some(ExitReason::GuestPanic));
        assert!(n.is_stopping());
        assert_eq!(n.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn orderly_stops_exit_zero_and_crashes_do_not() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert!(ExitReason::PowerOff.message().is_none());
        let tf = ExitReason::TripleFault { vcpu: 0 };
        assert_ne!(tf.exit_code(), 0);
        assert!(tf.message().unwrap().contains("triple"));
        assert_ne!(ExitReason::GuestPanic.exit_code(), tf.exit_code());
    }
}
