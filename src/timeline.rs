//! Monotonic boot timestamps: when each phase of a VM's life was reached,
//! measured from one origin (for the `kiln` command, the first thing its
//! `main` does).
//!
//! One [`BootTimeline`] is shared (`Arc`) by the code that reaches each
//! phase: the builder, every vCPU thread, the boot-timer device, the VMM
//! loop. Recording is lock-free and the first record of a phase wins, so a
//! second vCPU entering KVM_RUN, or a guest writing the boot-timer twice,
//! leaves the first time in place. Nothing records on a hot path: each
//! phase is recorded once, at a point the code passes once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The phases of a boot, in the order a normal boot reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The origin: for the `kiln` command, the start of `main` (after the
    /// dynamic loader and Rust's runtime set-up, a fraction of a ms).
    ProcessStart,
    /// KVM_CREATE_VM returned and the VM has its interrupt controller and PIT.
    VmCreated,
    /// Guest RAM is mapped and registered with KVM as memory slots.
    MemoryMapped,
    /// The kernel and the initrd, if any, are in guest memory.
    KernelLoaded,
    /// Devices are on their buses, the boot tables written and every vCPU
    /// configured: the VM is ready to run.
    DevicesReady,
    /// The first vCPU thread (whichever starts first) enters KVM_RUN.
    FirstKvmRun,
    /// The guest wrote 123 to the boot-timer device (its /init started).
    UserSpace,
    /// The VMM loop saw the guest stop (power-off, reset, crash or signal).
    GuestExit,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::ProcessStart,
        Phase::VmCreated,
        Phase::MemoryMapped,
        Phase::KernelLoaded,
        Phase::DevicesReady,
        Phase::FirstKvmRun,
        Phase::UserSpace,
        Phase::GuestExit,
    ];

    /// The phase's name in `--metrics` JSON and the `--boot-timer` line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ProcessStart => "process_start",
            Phase::VmCreated => "vm_created",
            Phase::MemoryMapped => "memory_mapped",
            Phase::KernelLoaded => "kernel_loaded",
            Phase::DevicesReady => "devices_ready",
            Phase::FirstKvmRun => "first_kvm_run",
            Phase::UserSpace => "user_space",
            Phase::GuestExit => "guest_exit",
        }
    }
}

/// When each [`Phase`] was first reached, relative to an origin.
#[derive(Debug)]
pub struct BootTimeline {
    origin: Instant,
    /// Nanoseconds since `origin` plus one, per phase; 0 means not reached.
    marks: [AtomicU64; Phase::ALL.len()],
}

impl BootTimeline {
    /// A timeline whose origin (process start) is now.
    pub fn starting_now() -> Self {
        Self::with_origin(Instant::now())
    }

    /// A timeline whose origin is `origin`; [`Phase::ProcessStart`] is
    /// recorded as that instant.
    pub fn with_origin(origin: Instant) -> Self {
        let timeline = Self {
            origin,
            marks: Default::default(),
        };
        timeline.marks[Phase::ProcessStart as usize].store(1, Ordering::Relaxed);
        timeline
    }

    /// Records that `phase` is reached now, unless it was reached before.
    /// Returns whether this call recorded it.
    pub fn record(&self, phase: Phase) -> bool {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.marks[phase as usize]
            .compare_exchange(0, nanos + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// When `phase` was reached, since the origin; None if not (yet).
    pub fn get(&self, phase: Phase) -> Option<Duration> {
        match self.marks[phase as usize].load(Ordering::Relaxed) {
            0 => None,
            mark => Some(Duration::from_nanos(mark - 1)),
        }
    }

    /// Every phase with its time, in [`Phase::ALL`] order.
    pub fn snapshot(&self) -> [(Phase, Option<Duration>); Phase::ALL.len()] {
        Phase::ALL.map(|p| (p, self.get(p)))
    }

    /// The one-line `--boot-timer` report, once user space is reached:
    /// each earlier phase as ms since the origin, by its metrics name.
    pub fn user_space_report(&self) -> Option<String> {
        let at = self.get(Phase::UserSpace)?;
        let earlier: Vec<String> = Phase::ALL[1..]
            .iter()
            .take_while(|p| **p != Phase::UserSpace)
            .map(|p| match self.get(*p) {
                Some(t) => format!("{} {}", p.name(), millis(t)),
                None => format!("{} -", p.name()),
            })
            .collect();
        Some(format!(
            "boot: user space reached at {} ms ({} ms after start)",
            millis(at),
            earlier.join(", ")
        ))
    }
}

/// Milliseconds with microsecond precision.
fn millis(t: Duration) -> String {
    format!("{:.3}", t.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_recorded_and_other_phases_start_unset() {
        let t = BootTimeline::starting_now();
        assert_eq!(t.get(Phase::ProcessStart), Some(Duration::ZERO));
        for p in &Phase::ALL[1..] {
            assert_eq!(t.get(*p), None, "{p:?}");
        }
        assert_eq!(t.user_space_report(), None);
    }

    #[test]
    fn the_first_record_of_a_phase_wins() {
        let t = BootTimeline::with_origin(Instant::now() - Duration::from_millis(5));
        assert!(t.record(Phase::FirstKvmRun));
        let first = t.get(Phase::FirstKvmRun).unwrap();
        assert!(first >= Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(2));
        assert!(!t.record(Phase::FirstKvmRun));
        assert_eq!(t.get(Phase::FirstKvmRun), Some(first));
        assert!(!t.record(Phase::ProcessStart));
        assert_eq!(t.get(Phase::ProcessStart), Some(Duration::ZERO));
    }

    /// Many threads race to record the same phase: exactly one wins.
    #[test]
    fn concurrent_records_have_one_winner() {
        let t = std::sync::Arc::new(BootTimeline::starting_now());
        let winners: usize = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || usize::from(t.record(Phase::FirstKvmRun)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }

    #[test]
    fn phases_recorded_in_order_are_monotonic() {
        let t = BootTimeline::starting_now();
        for p in &Phase::ALL[1..] {
            t.record(*p);
        }
        let times: Vec<Duration> = t.snapshot().iter().map(|(_, d)| d.unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn report_names_every_earlier_phase_and_marks_missing_ones() {
        let t = BootTimeline::starting_now();
        t.record(Phase::VmCreated);
        t.record(Phase::UserSpace);
        let line = t.user_space_report().unwrap();
        assert!(line.starts_with("boot: user space reached at "), "{line}");
        assert!(line.contains("vm_created 0."), "{line}");
        assert!(line.contains("memory_mapped -"), "{line}");
        assert!(line.ends_with("first_kvm_run - ms after start)"), "{line}");
        assert!(!line.contains("guest_exit"), "{line}");
    }

    #[test]
    fn names_are_distinct_snake_case() {
        let names: std::collections::HashSet<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
