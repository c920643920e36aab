//! A device's own host file descriptors (a tap, sockets), watched by the
//! event loop while the device is active.
//!
//! Each transport owns one [`HostEvents`]: an epoll set of its own that
//! the device's [`super::MmioEventHandler`] registers in the event loop
//! once. The device changes the set with plain `epoll_ctl` calls, which
//! are thread-safe, wherever it runs: in `activate` and `reset` on a vCPU
//! thread, in its processing on the VMM thread. So registration never
//! waits for the VMM thread, and a reset has removed every fd before the
//! device closes any of them.
//!
//! The set is level-triggered: the event loop sees it readable while any
//! fd in it is ready, and the handler serves at most
//! [`HOST_EVENT_BATCH`] of them per round, so one busy device cannot hold
//! the VMM thread.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::EventSet;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

/// Host events served per readiness of a device's set; the rest wait for
/// the next round of the event loop, after everything else that is ready.
pub const HOST_EVENT_BATCH: usize = 32;

/// Interest flags that would break level-triggered serving: an
/// edge-triggered fd that yields with data left is never reported again.
const FORBIDDEN: EventSet = EventSet::EDGE_TRIGGERED
    .union(EventSet::ONE_SHOT)
    .union(EventSet::EXCLUSIVE)
    .union(EventSet::WAKE_UP);

/// One registered fd.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    pub token: u64,
    /// Changes with every add or modify, so the handler can tell whether
    /// the device touched the fd while handling its event.
    pub serial: u64,
}

#[derive(Default)]
struct Registry {
    watched: HashMap<RawFd, Watch>,
    next_serial: u64,
}

/// The device's own set of host fds, watched by the event loop while it
/// exists. Each fd is registered with a token of the device's choosing,
/// which [`super::VirtioDevice::process_host_event`] gets back.
///
/// Rules for devices: use non-blocking fds (a call may be spurious);
/// remove an fd before closing it ([`Watched`] does that on drop); an fd
/// the device cannot serve now (no guest buffers) gets an empty interest
/// until it can. A hang-up or error is reported once: the fd is then no
/// longer watched, unless the device registered it again during that call.
pub struct HostEvents {
    epoll: Epoll,
    /// What is in `epoll`, keyed by fd (the epoll data is the fd). Held
    /// across each `epoll_ctl` so the two never disagree.
    registry: Mutex<Registry>,
}

impl HostEvents {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            registry: Mutex::new(Registry::default()),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        crate::sync::lock(&self.registry)
    }

    fn control(&self, op: ControlOperation, fd: RawFd, interest: EventSet) -> io::Result<()> {
        if interest.intersects(FORBIDDEN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "host events are level-triggered; edge-triggered, one-shot, exclusive and wake-up interest is not supported",
            ));
        }
        let data = u64::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        self.epoll.ctl(op, fd, EpollEvent::new(interest, data))
    }

    /// Watches `fd` for `interest` (e.g. `EventSet::IN`); hang-ups and
    /// errors are always reported.
    pub fn add(&self, fd: RawFd, token: u64, interest: EventSet) -> io::Result<()> {
        self.register(ControlOperation::Add, fd, token, interest)
    }

    /// Changes what `fd` is watched for, and its token. An empty interest
    /// stops readiness calls (not hang-ups) without forgetting the fd.
    pub fn modify(&self, fd: RawFd, token: u64, interest: EventSet) -> io::Result<()> {
        self.register(ControlOperation::Modify, fd, token, interest)
    }

    fn register(&self, op: ControlOperation, fd: RawFd, token: u64, interest: EventSet) -> io::Result<()> {
        let mut registry = self.registry();
        self.control(op, fd, interest)?;
        let serial = registry.next_serial;
        registry.next_serial += 1;
        registry.watched.insert(fd, Watch { token, serial });
        Ok(())
    }

    /// Stops watching `fd`. An fd that is not watched is fine.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let mut registry = self.registry();
        registry.watched.remove(&fd);
        Self::delete(&self.epoll, fd)
    }

    fn delete(epoll: &Epoll, fd: RawFd) -> io::Result<()> {
        match epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()) {
            // Never added, or closed (which removed it) and not reused.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EBADF)) => Ok(()),
            other => other,
        }
    }

    /// Watches `fd` until the returned guard is dropped, which removes it
    /// before closing it.
    pub fn watch<F: AsRawFd>(
        self: &Arc<Self>,
        fd: F,
        token: u64,
        interest: EventSet,
    ) -> io::Result<Watched<F>> {
        self.add(fd.as_raw_fd(), token, interest)?;
        Ok(Watched {
            fd,
            token,
            events: self.clone(),
        })
    }

    /// Removes every fd; returns how many there were. The transport calls
    /// this whenever the device stops, after the device's own reset.
    pub fn clear(&self) -> usize {
        let mut registry = self.registry();
        let count = registry.watched.len();
        for (fd, _) in registry.watched.drain() {
            if let Err(e) = Self::delete(&self.epoll, fd) {
                log::error!("virtio: cannot stop watching host fd {fd}: {e}");
            }
        }
        count
    }

    /// How many fds are watched.
    pub fn len(&self) -> usize {
        self.registry().watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ready fds, without waiting: (fd, what is ready). Public for the
    /// fuzz harness, which plays the transport's handler.
    #[doc(hidden)]
    pub fn ready(&self, events: &mut [EpollEvent]) -> io::Result<usize> {
        match self.epoll.wait(0, events) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }

    /// What `fd` is registered as, if it still is.
    #[doc(hidden)]
    pub fn lookup(&self, fd: RawFd) -> Option<Watch> {
        self.registry().watched.get(&fd).copied()
    }

    /// Removes `fd` if it is still registered as `watch`: after a hang-up
    /// or error the device did not answer by registering it again, which
    /// would otherwise be reported forever. Returns whether it did.
    #[doc(hidden)]
    pub fn forget_unless_changed(&self, fd: RawFd, watch: Watch) -> bool {
        let mut registry = self.registry();
        if registry.watched.get(&fd) != Some(&watch) {
            return false;
        }
        registry.watched.remove(&fd);
        if let Err(e) = Self::delete(&self.epoll, fd) {
            log::error!("virtio: cannot stop watching host fd {fd}: {e}");
        }
        true
    }
}

impl AsRawFd for HostEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// An fd watched in a [`HostEvents`] for as long as this lives: dropping
/// it removes the fd from the set first, then closes it, so the set never
/// holds an fd the device has closed.
pub struct Watched<F: AsRawFd> {
    fd: F,
    token: u64,
    events: Arc<HostEvents>,
}

impl<F: AsRawFd> Watched<F> {
    pub fn get(&self) -> &F {
        &self.fd
    }

    pub fn get_mut(&mut self) -> &mut F {
        &mut self.fd
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    /// Watches for `interest` from now on; empty to pause readiness calls.
    pub fn set_interest(&self, interest: EventSet) -> io::Result<()> {
        self.events.modify(self.fd.as_raw_fd(), self.token, interest)
    }
}

impl<F: AsRawFd> Drop for Watched<F> {
    fn drop(&mut self) {
        // `self.fd` is closed after this, when the fields drop.
        if let Err(e) = self.events.remove(self.fd.as_raw_fd()) {
            log::error!(
                "virtio: cannot stop watching host fd {}: {e}",
                self.fd.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn ready(events: &HostEvents) -> Vec<(RawFd, EventSet)> {
        let mut buf = [EpollEvent::default(); HOST_EVENT_BATCH];
        let n = events.ready(&mut buf).unwrap();
        buf[..n]
            .iter()
            .map(|e| (e.data() as RawFd, e.event_set()))
            .collect()
    }

    #[test]
    fn registry_follows_the_epoll_set() {
        let events = HostEvents::new().unwrap();
        let (a, mut peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        events.add(fd, 7, EventSet::IN).unwrap();
        assert!(events.add(fd, 8, EventSet::IN).is_err(), "twice");
        assert_eq!(events.lookup(fd).unwrap().token, 7);
        peer.write_all(b"x").unwrap();
        assert_eq!(ready(&events), [(fd, EventSet::IN)]);
        events.modify(fd, 9, EventSet::empty()).unwrap();
        assert_eq!(events.lookup(fd).unwrap().token, 9);
        assert!(ready(&events).is_empty(), "no interest, no readiness");
        events.remove(fd).unwrap();
        events.remove(fd).unwrap();
        assert!(events.is_empty());
        assert!(events.modify(fd, 9, EventSet::IN).is_err(), "not watched");
    }

    #[test]
    fn edge_triggered_interest_is_refused() {
        let events = HostEvents::new().unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        let err = events
            .add(a.as_raw_fd(), 1, EventSet::IN | EventSet::EDGE_TRIGGERED)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(events.is_empty());
    }

    /// The guard removes the fd before closing it: with a second handle on
    /// the same socket still open, a closed-but-registered fd would go on
    /// being reported under a number nobody can remove any more.
    #[test]
    fn a_dropped_guard_removes_before_closing() {
        let events = Arc::new(HostEvents::new().unwrap());
        let (a, mut peer) = UnixStream::pair().unwrap();
        let other_handle = a.try_clone().unwrap();
        let watched = events.watch(a, 3, EventSet::IN).unwrap();
        peer.write_all(b"x").unwrap();
        assert_eq!(ready(&events).len(), 1);
        drop(watched);
        assert!(events.is_empty());
        assert!(ready(&events).is_empty());
        drop(other_handle);
    }

    #[test]
    fn clear_removes_everything() {
        let events = HostEvents::new().unwrap();
        let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        for (token, (a, peer)) in pairs.iter().enumerate() {
            events.add(a.as_raw_fd(), token as u64, EventSet::IN).unwrap();
            (&*peer).write_all(b"x").unwrap();
        }
        assert_eq!(ready(&events).len(), 3);
        assert_eq!(events.clear(), 3);
        assert!(ready(&events).is_empty());
        assert_eq!(events.clear(), 0);
    }

    #[test]
    fn forgetting_respects_a_new_registration() {
        let events = HostEvents::new().unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        events.add(fd, 1, EventSet::IN).unwrap();
        let before = events.lookup(fd).unwrap();
        events.modify(fd, 1, EventSet::IN).unwrap();
        assert!(!events.forget_unless_changed(fd, before));
        let now = events.lookup(fd).unwrap();
        assert!(events.forget_unless_changed(fd, now));
        assert!(events.is_empty());
    }
}
