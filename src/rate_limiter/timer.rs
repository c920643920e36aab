//! A non-blocking one-shot timerfd: readable once it expires, never
//! readable while disarmed, so a device can keep it in its host events all
//! the time at no cost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

#[derive(Debug)]
pub struct OneShotTimer {
    fd: OwnedFd,
}

impl OneShotTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is
        // checked before use.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Fires once after `after` (at least 1 ns; 0 would disarm it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        self.settime(&spec)
    }

    fn settime(&self, spec: &libc::itimerspec) -> io::Result<()> {
        // SAFETY: `fd` is a timerfd we own; `spec` is a valid itimerspec and
        // the old value is not requested.
        let ret = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, spec, std::ptr::null_mut()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears an expiry so the fd is no longer readable; returns whether it
    /// had expired.
    pub fn acknowledge(&self) -> bool {
        let mut expirations = 0u64;
        // SAFETY: reads 8 bytes into a u64 we own from a non-blocking fd we
        // own.
        let ret = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        ret == 8 && expirations > 0
    }
}

impl AsRawFd for OneShotTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
