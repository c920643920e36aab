//! The VMM loop's stop watcher: the exit notifier plus, for the CLI, a
//! signalfd for SIGTERM/SIGINT/SIGHUP.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::exit::{ExitNotifier, ExitReason};

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

pub struct ExitWatcher {
    exit: ExitNotifier,
    signals: Option<File>,
    /// The thread's signal mask before the stop signals were blocked, put
    /// back when the VM is gone: a caller that goes on (the API's pre-boot
    /// loop after a failed start, a library) must not stay deaf to them.
    old_mask: Option<libc::sigset_t>,
}

/// The stop signals as a set.
fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in STOP_SIGNALS {
        // SAFETY: as above; the signal numbers are valid.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Applies `how` with `set` to this thread's mask; returns the old mask.
fn set_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset_t is a valid place for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for the call.
    let rc = unsafe { libc::pthread_sigmask(how, set, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// Blocks the stop signals in the calling thread (threads it starts
/// later inherit the mask). A helper thread started before the VM (the
/// API's) calls it so the signals go to the VMM thread's signalfd.
pub fn block_stop_signals() -> io::Result<()> {
    set_mask(libc::SIG_BLOCK, &stop_set()).map(drop)
}

/// Blocks the stop signals in this thread and returns a signalfd that
/// reads them, with the mask from before.
fn stop_signal_fd() -> io::Result<(File, libc::sigset_t)> {
    let set = stop_set();
    let old = set_mask(libc::SIG_BLOCK, &set)?;
    // SAFETY: -1 asks for a new descriptor; `set` is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let _ = set_mask(libc::SIG_SETMASK, &old);
        return Err(e);
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok((unsafe { File::from_raw_fd(fd) }, old))
}

impl Drop for ExitWatcher {
    fn drop(&mut self) {
        // Dropped with the event loop, on the thread that made it.
        if let Some(old) = self.old_mask.take() {
            self.signals = None;
            let _ = set_mask(libc::SIG_SETMASK, &old);
        }
    }
}

impl ExitWatcher {
    /// Watches `exit` (shared with whoever may stop the VM from outside)
    /// and, with `handle_signals`, the stop signals.
    pub fn new(exit: ExitNotifier, handle_signals: bool) -> io::Result<Self> {
        let (signals, old_mask) = match handle_signals {
            true => {
                let (file, old) = stop_signal_fd()?;
                (Some(file), Some(old))
            }
            false => (None, None),
        };
        Ok(Self {
            exit,
            signals,
            old_mask,
        })
    }

    fn read_signal(&mut self) {
        let Some(file) = self.signals.as_mut() else {
            return;
        };
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        if file.read_exact(&mut info).is_ok() {
            // ssi_signo is the first field.
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            self.exit.notify(ExitReason::Signal(signo as i32));
        }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.exit.event_fd().as_raw_fd() {
            let _ = self.exit.event_fd().read();
        } else {
            self.read_signal();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event_fd(), EventSet::IN)) {
            log::error!("cannot watch the VM exit event: {e}");
        }
        if let Some(file) = &self.signals {
            if let Err(e) = ops.add(Events::new(file, EventSet::IN)) {
                log::error!("cannot watch for stop signals: {e}");
            }
        }
    }
}
