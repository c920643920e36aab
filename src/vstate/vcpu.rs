//! vCPU threads: each runs KVM_RUN in a loop and dispatches port I/O and
//! MMIO exits to the buses. A kick (a signal plus `immediate_exit`) makes
//! KVM_RUN return so the thread can see it must stop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_EXIT_IO_OUT, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, ExitReason};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::timeline::{BootTimeline, Phase};
use crate::vstate::kvm::{HostKind, PVM_HINT};

/// A vCPU thread's stack: ample for the run loop and the device code it
/// calls, and smaller than a huge page, so that where the host backs
/// anonymous memory with transparent huge pages (`enabled=always`) a
/// stack that happens to sit 2 MiB-aligned does not cost 2 MiB of RSS.
const VCPU_STACK_BYTES: usize = 1 << 20;
/// The real-time signal offset used to kick vCPU threads out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, set by the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set
            // by `Vcpu::run` and cleared before the mapping goes away; a
            // volatile byte store is async-signal-safe.
            unsafe { ptr.write_volatile(1) };
        }
    });
}

fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the kick handler; call once before starting vCPU threads.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Everything one vCPU thread needs.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: ExitNotifier,
    pub host: HostKind,
    /// Where the first KVM_RUN of the VM is recorded.
    pub timeline: Arc<BootTimeline>,
}

impl Vcpu {
    /// Runs until the VM stops or `stop` is raised; records why through
    /// the exit notifier. Parks while `pause` asks.
    pub fn run(mut self, stop: &AtomicBool, pause: &PauseControl) {
        let immediate_exit = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        // Once per thread, before the loop: the first vCPU to get here wins.
        self.timeline.record(Phase::FirstKvmRun);
        // A device on this vCPU (i8042, ACPI) may have asked for the stop:
        // leave at once rather than halt in KVM_RUN until kicked.
        while !stop.load(Ordering::Acquire) && !self.exit.is_stopping() {
            if pause.park_if_asked(stop) {
                continue;
            }
            if let Some(reason) = self.run_once() {
                self.exit.notify(reason);
                break;
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Dispatches the port I/O exit KVM_RUN just returned as `count`
    /// accesses of `size` bytes each. A string instruction (`rep outsb`,
    /// `rep insb`) hands over many accesses in one exit, and kvm-ioctls'
    /// `IoOut`/`IoIn` slice (`size * count` bytes) does not say how to
    /// split it, so this reads the exit itself.
    fn port_io(&mut self) {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_IO the `io` member of the exit union is
        // the one KVM filled in.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        // SAFETY: for KVM_EXIT_IO, KVM put `size * count` bytes (at most a
        // page) at `data_offset` within this vCPU's kvm_run mapping, which
        // lives as long as `self.fd`; this is the slice kvm-ioctls' own
        // `run` builds, and nothing else refers to it while it lives.
        let data = unsafe {
            std::slice::from_raw_parts_mut(
                (run as *mut kvm_run).cast::<u8>().add(io.data_offset as usize),
                len,
            )
        };
        let port = u64::from(io.port);
        if u32::from(io.direction) == KVM_EXIT_IO_OUT {
            self.pio_bus.write_repeated(port, size, data);
        } else {
            self.pio_bus.read_repeated(port, size, data);
        }
    }

    /// One KVM_RUN; returns a reason when the VM must stop.
    fn run_once(&mut self) -> Option<ExitReason> {
        let vcpu = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(..) | VcpuExit::IoIn(..)) => {
                self.port_io();
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio_bus.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio_bus.write(addr, data);
                None
            }
            // With the in-kernel irqchip a HLT only exits when the guest
            // halts with nothing left to wake it: nothing to do but go back.
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault { vcpu }),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic,
                other => ExitReason::UnhandledExit {
                    vcpu,
                    detail: format!("system event {other}"),
                },
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::InternalError {
                vcpu,
                detail: format!("VM entry failed on host CPU {cpu}, hardware reason {reason:#x}"),
            }),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: for KVM_EXIT_INTERNAL_ERROR the `internal` member
                // of the exit union is the one KVM filled in.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                let mut detail = format!("suberror {suberror}");
                if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    detail.push_str(" (instruction emulation failed)");
                }
                if self.host == HostKind::Pvm {
                    detail.push_str("; ");
                    detail.push_str(PVM_HINT);
                }
                Some(ExitReason::InternalError { vcpu, detail })
            }
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(ExitReason::UnhandledExit {
                vcpu,
                detail: format!("{other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the flag so the next KVM_RUN really runs.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::InternalError {
                vcpu,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        }
    }
}

/// Holds vCPU threads back until every kiln thread has its seccomp
/// filter: the VMM thread opens the gate once it has its own, naming how
/// many vCPU threads it started, and no vCPU enters the guest before all
/// of those have installed theirs (or failed to: then none enters).
#[derive(Clone, Default)]
pub struct StartGate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    /// How many vCPU threads the VMM thread started; `None` until it opens.
    started: Option<usize>,
    arrived: usize,
    failed: bool,
}

impl StartGate {
    /// On the VMM thread, once its own filter went on (`filtered`) or
    /// failed: `started` vCPU threads exist and will arrive.
    pub fn open(&self, started: usize, filtered: bool) {
        let mut state = crate::sync::lock(&self.0 .0);
        state.started = Some(started);
        state.failed |= !filtered;
        self.0 .1.notify_all();
    }

    /// On a vCPU thread, after its filter went on (`filtered`) or failed:
    /// waits for the VMM thread and every other vCPU thread, then says
    /// whether all of them are filtered and the guest may run.
    fn arrive(&self, filtered: bool) -> bool {
        let mut state = crate::sync::lock(&self.0 .0);
        state.arrived += 1;
        state.failed |= !filtered;
        self.0 .1.notify_all();
        while state.started.is_none_or(|n| state.arrived < n) {
            state = self
                .0
                 .1
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !state.failed
    }
}

/// Pauses and resumes the vCPUs (Firecracker's `PATCH /vm`): asked, each
/// vCPU thread parks between two KVM_RUNs (a kick gets it out of the
/// guest) until resumed or stopped.
#[derive(Clone, Default)]
pub struct PauseControl(Arc<PauseInner>);

#[derive(Default)]
struct PauseInner {
    asked: AtomicBool,
    /// vCPU threads parked now.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl PauseControl {
    /// On a vCPU thread: parks while a pause is asked; true if it parked.
    fn park_if_asked(&self, stop: &AtomicBool) -> bool {
        if !self.0.asked.load(Ordering::Acquire) {
            return false;
        }
        let mut parked = crate::sync::lock(&self.0.parked);
        *parked += 1;
        self.0.changed.notify_all();
        while self.0.asked.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            parked = self
                .0
                .changed
                .wait(parked)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *parked -= 1;
        self.0.changed.notify_all();
        true
    }

    /// Asks every vCPU to park, kicks them out of the guest, and waits up
    /// to `limit` until all `count` have; false if some did not.
    pub fn pause(&self, vcpus: &VcpuKicker, limit: std::time::Duration) -> bool {
        self.0.asked.store(true, Ordering::Release);
        vcpus.kick_all();
        let deadline = std::time::Instant::now() + limit;
        let mut parked = crate::sync::lock(&self.0.parked);
        while *parked < vcpus.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            parked = self
                .0
                .changed
                .wait_timeout(parked, left.min(std::time::Duration::from_millis(10)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            // A kick that landed before KVM_RUN began is not lost (it sets
            // immediate_exit), but one before the handler pointer was set
            // is: kick again while waiting.
            vcpus.kick_all();
        }
        true
    }

    /// Lets parked vCPUs run again (and unblocks them for a stop).
    pub fn resume(&self) {
        self.0.asked.store(false, Ordering::Release);
        let _parked = crate::sync::lock(&self.0.parked);
        self.0.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.0.asked.load(Ordering::Acquire)
    }
}

/// Kicks the VM's vCPU threads out of KVM_RUN from the VMM thread while
/// the event loop runs (the threads are joined only after it ends).
pub struct VcpuKicker(Vec<libc::pthread_t>);

impl VcpuKicker {
    pub fn new(handles: &[VcpuHandle]) -> Self {
        use std::os::unix::thread::JoinHandleExt;
        Self(handles.iter().map(|h| h.handle.as_pthread_t()).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn kick_all(&self) {
        for &thread in &self.0 {
            // SAFETY: the pthread_t of a thread not yet joined (see the
            // type's doc) stays valid even once the thread has ended.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub index: u8,
    handle: JoinHandle<()>,
}

impl VcpuHandle {
    /// Starts `vcpu` on its own thread; it stops when `stop` is raised
    /// (see [`stop_all`]) or the guest stops. The thread installs its
    /// seccomp filter (per `seccomp`), then enters the guest only once
    /// `gate` says every thread has its filter.
    pub fn spawn(
        vcpu: Vcpu,
        stop: Arc<AtomicBool>,
        seccomp: SeccompMode,
        gate: StartGate,
        pause: PauseControl,
    ) -> std::io::Result<Self> {
        let index = vcpu.index;
        let handle = std::thread::Builder::new()
            .name(format!("kiln-vcpu{index}"))
            .stack_size(VCPU_STACK_BYTES)
            .spawn(move || {
                let filtered = seccomp::install(ThreadKind::Vcpu, seccomp);
                if let Err(e) = &filtered {
                    vcpu.exit.notify(ExitReason::InternalError {
                        vcpu: index,
                        detail: e.to_string(),
                    });
                }
                if gate.arrive(filtered.is_ok()) {
                    vcpu.run(&stop, &pause)
                }
            })?;
        Ok(Self { index, handle })
    }

    /// Interrupts KVM_RUN on this thread (harmless if it already exited).
    pub fn kick(&self) {
        if !self.handle.is_finished() {
            let _ = self.handle.kill(kick_signal());
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub fn join(self) {
        if self.handle.join().is_err() {
            log::error!("vCPU {} thread panicked", self.index);
        }
    }
}

/// How long [`stop_all`] waits for vCPU threads to leave the guest. A
/// left-behind thread keeps its VM and guest memory until the process
/// exits, which a long-lived process (the sandbox library) must not pay
/// for a merely slow host: a nested or loaded host can take a few hundred
/// ms to bring a vCPU out of KVM_RUN.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Stops every vCPU: raise the flag, then kick until each thread is out.
/// A kick that lands just before KVM_RUN sets immediate_exit, so a kicked
/// thread cannot go back into the guest; repeating covers a kick that
/// landed before the thread installed its handler pointer.
///
/// Returns how many threads did not stop within [`STOP_GRACE`] (stuck in
/// a device, say) and were left running: until the process exits they may
/// still use the VM and guest memory, so the caller must keep both.
#[must_use]
pub fn stop_all(stop: &AtomicBool, handles: Vec<VcpuHandle>) -> usize {
    stop.store(true, Ordering::Release);
    let start = std::time::Instant::now();
    while start.elapsed() < STOP_GRACE {
        if handles.iter().all(VcpuHandle::is_finished) {
            break;
        }
        handles.iter().for_each(VcpuHandle::kick);
        // Quick polls first (a vCPU normally leaves KVM_RUN within
        // microseconds), then gentler ones for a slow host.
        let pause = if start.elapsed() < std::time::Duration::from_millis(20) {
            50
        } else {
            1000
        };
        std::thread::sleep(std::time::Duration::from_micros(pause));
    }
    let mut left_behind = 0;
    for h in handles {
        if h.is_finished() {
            h.join();
        } else {
            log::error!("vCPU {} did not stop; leaving it behind", h.index);
            left_behind += 1;
        }
    }
    left_behind
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that ignores the stop flag and kicks stays behind and is
    /// counted; one that honours them is joined.
    #[test]
    fn stop_all_counts_threads_it_could_not_join() {
        install_kick_handler().unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let stuck = {
            let release = release.clone();
            std::thread::spawn(move || {
                while !release.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let obedient = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        let handles = vec![
            VcpuHandle {
                index: 0,
                handle: obedient,
            },
            VcpuHandle {
                index: 1,
                handle: stuck,
            },
        ];
        assert_eq!(stop_all(&stop, handles), 1);
        release.store(true, Ordering::Release);
    }

    /// No vCPU passes the gate before the VMM thread opened it and every
    /// other vCPU arrived; one failed filter anywhere keeps all out.
    #[test]
    fn the_gate_lets_vcpus_run_only_once_every_thread_is_filtered() {
        for (vcpu_ok, vmm_ok, want) in [
            ([true, true, true], true, true),
            ([true, false, true], true, false),
            ([true, true, true], false, false),
        ] {
            let gate = StartGate::default();
            let passed = Arc::new(Mutex::new(Vec::new()));
            let threads: Vec<_> = vcpu_ok
                .into_iter()
                .enumerate()
                .map(|(i, ok)| {
                    let (gate, passed) = (gate.clone(), passed.clone());
                    std::thread::spawn(move || {
                        // The last vCPU is slow to install its filter.
                        if i == 2 {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        let run = gate.arrive(ok);
                        passed.lock().unwrap().push((i, run));
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(10));
            gate.open(3, vmm_ok);
            // The fast ones are still held back by the slow one.
            std::thread::sleep(std::time::Duration::from_millis(10));
            assert!(passed.lock().unwrap().is_empty());
            threads.into_iter().for_each(|t| t.join().unwrap());
            let passed = passed.lock().unwrap();
            assert_eq!(passed.len(), 3);
            assert!(passed.iter().all(|&(_, run)| run == want), "{passed:?}");
        }
    }
}
