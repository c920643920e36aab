//! The boot timer: a guest writes the byte 123 at offset 0 of its window
//! (guest physical `layout::BOOT_TIMER_START`, 0xc000_0000) to say "user
//! space reached". This is Firecracker's convention (address and value), so
//! guests built for its boot-time tests work unchanged; kiln's default
//! guest does it first thing in /init (`devmem 0xc0000000 8 123`).
//!
//! Like vm-superio's devices, it knows nothing of KVM or the VMM: it tells
//! whoever wants to know through [`BootTimerEvents`]. Only a one-byte write
//! of 123 at offset 0 counts (as in Firecracker); anything else is ignored,
//! reads return zeros, and only the first signal is passed on.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::timeline::{BootTimeline, Phase};

/// The value a guest writes to signal that its user space started.
pub const USER_SPACE_REACHED: u8 = 123;

/// What the boot timer reports.
pub trait BootTimerEvents {
    /// The guest signalled that its user space started (called once).
    fn user_space_reached(&self);
}

impl<T: BootTimerEvents + ?Sized> BootTimerEvents for Arc<T> {
    fn user_space_reached(&self) {
        (**self).user_space_reached();
    }
}

impl BootTimerEvents for BootTimeline {
    fn user_space_reached(&self) {
        self.record(Phase::UserSpace);
    }
}

/// Ignores every event.
pub struct NoEvents;

impl BootTimerEvents for NoEvents {
    fn user_space_reached(&self) {}
}

pub struct BootTimer<EV: BootTimerEvents> {
    events: EV,
    signalled: bool,
}

impl<EV: BootTimerEvents> BootTimer<EV> {
    pub fn new(events: EV) -> Self {
        Self {
            events,
            signalled: false,
        }
    }

    /// Whether the guest has signalled user space.
    pub fn signalled(&self) -> bool {
        self.signalled
    }
}

impl<EV: BootTimerEvents + Send> BusDevice for BootTimer<EV> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [USER_SPACE_REACHED] || self.signalled {
            return;
        }
        self.signalled = true;
        self.events.user_space_reached();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl BootTimerEvents for Count {
        fn user_space_reached(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn timer() -> (BootTimer<Arc<Count>>, Arc<Count>) {
        let count = Arc::new(Count::default());
        (BootTimer::new(count.clone()), count)
    }

    #[test]
    fn a_byte_of_123_at_offset_zero_signals_once() {
        let (mut dev, count) = timer();
        dev.write(0, &[USER_SPACE_REACHED]);
        assert!(dev.signalled());
        dev.write(0, &[USER_SPACE_REACHED]);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn other_values_offsets_and_widths_are_ignored() {
        let (mut dev, count) = timer();
        for v in (0..=255u8).filter(|v| *v != USER_SPACE_REACHED) {
            dev.write(0, &[v]);
        }
        dev.write(1, &[USER_SPACE_REACHED]);
        dev.write(0xfff, &[USER_SPACE_REACHED]);
        dev.write(0, &[USER_SPACE_REACHED, 0, 0, 0]);
        dev.write(0, &[]);
        assert!(!dev.signalled());
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reads_return_zeros() {
        let (mut dev, _) = timer();
        let mut b = [0xffu8; 8];
        dev.read(0, &mut b);
        assert_eq!(b, [0; 8]);
        dev.read(7, &mut []);
    }

    /// Wired to a timeline, a second write does not move the time.
    #[test]
    fn records_user_space_on_a_timeline_and_keeps_the_first_time() {
        let timeline = Arc::new(BootTimeline::starting_now());
        let mut dev = BootTimer::new(timeline.clone());
        dev.write(0, &[7]);
        assert_eq!(timeline.get(Phase::UserSpace), None);
        dev.write(0, &[USER_SPACE_REACHED]);
        let first = timeline.get(Phase::UserSpace).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let mut again = BootTimer::new(timeline.clone());
        again.write(0, &[USER_SPACE_REACHED]);
        assert_eq!(timeline.get(Phase::UserSpace), Some(first));
        let _ = BootTimer::new(NoEvents).signalled();
    }
}
