//! Build and run a VM from a [`VmConfig`]: the VMM thread's event loop
//! beside one thread per vCPU, and an orderly teardown.

mod boot_report;
mod builder;
mod device_calls;
mod handles;
mod signals;
mod teardown;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::config::{ConfigError, VmConfig};
pub use crate::devices::legacy::serial::ConsoleInput;
use crate::devices::EventLoop;
use crate::exit::{ExitNotifier, ExitReason};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::terminal::RawTerminal;
use crate::timeline::Phase;
use crate::vstate::memory::{resident_bytes, ProcSelfStatus};
use crate::vstate::vcpu::{self, PauseControl, StartGate, VcpuHandle, VcpuKicker};

pub use boot_report::{BootHooks, RunningHook, RunningVm, UserSpaceReport};
pub use builder::{BuildError, DeviceCounters};
pub use device_calls::{device_calls, DeviceCall, DeviceCallError, DeviceCallQueue, DeviceCaller};
pub use handles::{BlockHandle, DeviceHandles, DeviceUpdateError, I8042Handle, NetHandle};
pub use signals::block_stop_signals;
use signals::ExitWatcher;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("event loop failed: {0}")]
    EventLoop(#[from] event_manager::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Seccomp(SeccompError),
}

impl VmmError {
    /// Usage errors exit 2, everything else about the host or setup 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::Config(_) => 2,
            VmmError::Build(e) if e.is_usage() => 2,
            _ => 1,
        }
    }
}

/// Where the guest's serial console goes and where its input comes from.
pub struct ConsoleIo {
    /// A descriptor (stdout, a pipe, a terminal, a socket, a file) the
    /// event loop writes without ever blocking and without changing its
    /// file status flags (see `devices::legacy::host_output`).
    pub output: OwnedFd,
    pub input: Option<Box<dyn ConsoleInput>>,
    /// Put the host terminal in raw mode while attached.
    pub raw_terminal: bool,
    /// Stop cleanly on SIGTERM/SIGINT (blocks them in this thread).
    pub handle_signals: bool,
    /// Return without waiting for the kernel to destroy the VM (see
    /// `teardown.rs`). Only for a process that exits right after.
    pub detach_teardown: bool,
}

impl ConsoleIo {
    /// The terminal: stdin in, stdout out, raw mode, signals handled.
    /// Fails only if stdout is closed or no descriptor is left.
    pub fn stdio() -> std::io::Result<Self> {
        // A duplicate of stdout, unbuffered: std's Stdout would hold a
        // partial line back in a buffer of its own. (The same file
        // description: its flags, which the parent shell shares, stay.)
        let output = std::io::stdout().as_fd().try_clone_to_owned()?;
        // std's Stdin buffers: it would swallow input that epoll then
        // never reports again. A File on the same descriptor reads exactly
        // what is asked.
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Box::new(std::fs::File::from(fd)) as Box<dyn ConsoleInput>);
        Ok(Self {
            output,
            input,
            raw_terminal: true,
            handle_signals: true,
            detach_teardown: true,
        })
    }
}

/// Stops a VM run by [`run_vm_with`] from any thread (pass a clone in
/// [`BootHooks::stop`]). It is the VM's own exit notifier, the one its
/// devices and vCPUs use, so a stop asked for here is handled exactly as a
/// guest power-off: the event loop ends, vCPUs are joined, the VM is torn
/// down, and `run_vm_with` returns [`ExitReason::Stopped`] (unless the
/// guest had stopped first: the first reason wins).
#[derive(Clone)]
pub struct StopHandle(ExitNotifier);

impl StopHandle {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(ExitNotifier::new()?))
    }

    /// Asks the VM to stop; returns at once. Harmless if it has stopped.
    pub fn stop(&self) {
        self.0.notify(ExitReason::Stopped);
    }

    /// Records how a VM run outside this process ended (a jailed sandbox's
    /// `kiln`); a stop asked earlier keeps its reason.
    pub(crate) fn notify(&self, reason: ExitReason) {
        self.0.notify(reason);
    }

    /// Readable once a stop is asked or recorded.
    pub(crate) fn event_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        self.0.event_fd()
    }

    /// Why the VM stopped or is stopping; `None` while it runs (or before
    /// it started).
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.0.reason()
    }
}

/// Boots the VM described by `config` and runs it until it stops.
pub fn run_vm(config: &VmConfig, io: ConsoleIo) -> Result<ExitReason, VmmError> {
    run_vm_with(config, io, BootHooks::default())
}

/// [`run_vm`], recording the boot's phases on `hooks.timeline` and
/// reporting user space through `hooks.on_user_space`.
pub fn run_vm_with(config: &VmConfig, io: ConsoleIo, mut hooks: BootHooks) -> Result<ExitReason, VmmError> {
    config.validate()?;
    let ConsoleIo {
        output,
        input,
        raw_terminal,
        handle_signals,
        detach_teardown,
    } = io;
    // Signals must be blocked before any thread starts, so that every
    // thread inherits the mask and only the signalfd sees them.
    let exit = match &hooks.stop {
        Some(stop) => stop.0.clone(),
        None => ExitNotifier::new().map_err(BuildError::Setup)?,
    };
    let watcher = ExitWatcher::new(exit.clone(), handle_signals).map_err(BuildError::Setup)?;
    let mut event_loop: EventLoop = EventManager::new().map_err(VmmError::EventLoop)?;
    let timeline = hooks.timeline.clone();
    let on_running = hooks.on_running.take();
    let (boot_timer, reporter) = boot_report::user_space_wiring(hooks).map_err(BuildError::Setup)?;
    let reporter = reporter.map(|r| Arc::new(Mutex::new(r)));
    if let Some(reporter) = &reporter {
        event_loop.add_subscriber(reporter.clone() as Arc<Mutex<dyn MutEventSubscriber + Send>>);
    }
    let instruments = builder::BootInstruments {
        timeline: timeline.clone(),
        boot_timer,
    };
    let vm = builder::build(config, output, input, &exit, &mut event_loop, instruments)?;
    event_loop.add_subscriber(Arc::new(Mutex::new(watcher)) as Arc<Mutex<dyn MutEventSubscriber + Send>>);

    vcpu::install_kick_handler().map_err(BuildError::Setup)?;
    let stop = Arc::new(AtomicBool::new(false));
    let _terminal = raw_terminal.then(RawTerminal::new);
    let mut handles = Vec::with_capacity(vm.vcpus.len());
    let mut result = Ok(());
    let gate = StartGate::default();
    let pause = PauseControl::default();
    // Opened now: under seccomp no file can be opened at the end.
    let proc_status = log::log_enabled!(log::Level::Debug)
        .then(ProcSelfStatus::open)
        .flatten();
    for v in vm.vcpus {
        match VcpuHandle::spawn(v, stop.clone(), config.seccomp, gate.clone(), pause.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => {
                result = Err(VmmError::Thread(e));
                break;
            }
        }
    }
    let mut devices = Some(vm.devices);
    if let (Some(hook), true) = (on_running, result.is_ok()) {
        let running = RunningVm {
            devices: devices.take().unwrap_or_default(),
            pause: pause.clone(),
            vcpus: VcpuKicker::new(&handles),
            exit: exit.clone(),
            timeline: timeline.clone(),
        };
        if let Some(subscriber) = hook(running) {
            event_loop.add_subscriber(subscriber);
        }
    }
    // This thread's filter goes on after it started the vCPU threads (they
    // must not inherit it) and before any of them enters the guest.
    if result.is_ok() {
        let kind = if config.runtime_changes {
            ThreadKind::VmmWithApi
        } else {
            ThreadKind::Vmm
        };
        result = seccomp::install(kind, config.seccomp).map_err(VmmError::Seccomp);
    }
    gate.open(handles.len(), result.is_ok());
    while result.is_ok() && exit.reason().is_none() {
        if let Err(e) = event_loop.run() {
            result = Err(VmmError::EventLoop(e));
        }
    }
    timeline.record(Phase::GuestExit);
    // Parked vCPUs must wake to see the stop.
    pause.resume();
    let left_behind = vcpu::stop_all(&stop, handles);
    // With the vCPUs stopped, no signal can come after this last look.
    if let Some(reporter) = &reporter {
        crate::sync::lock(reporter).finish();
    }
    // What the guest printed last goes out, with a bounded wait.
    crate::sync::lock(&vm.console).finish();
    if log::log_enabled!(log::Level::Debug) {
        match resident_bytes(&vm.memory) {
            Ok(b) => log::debug!(
                "guest memory resident: {} KiB, peak RSS: {} KiB",
                b >> 10,
                proc_status.as_ref().and_then(|s| s.kib("VmHWM")).unwrap_or(0)
            ),
            Err(e) => log::debug!("guest memory residency unknown: {e}"),
        }
    }
    // The event loop (and the devices it holds) go before guest memory,
    // and so do the handles that reach the devices by id.
    drop(event_loop);
    drop(devices);
    for device in &vm.counters {
        log::info!("{device}");
    }
    if left_behind > 0 {
        // That thread may still run the guest or a device. Unmapped, guest
        // memory's addresses could be reused for host data the guest would
        // then reach: keep it, and the VM, until the process exits. No
        // teardown child either: the thread's vCPU holds the VM anyway.
        std::mem::forget(vm.memory);
        std::mem::forget(vm.vm_fd);
    } else {
        if detach_teardown {
            match teardown::detach_vm_teardown(vm.vm_fd.as_raw_fd()) {
                Ok(child) => {
                    log::debug!("VM teardown handed to process {}", child.pid);
                    child.release_at_exit();
                }
                Err(e) => log::debug!("VM teardown stays synchronous: {e}"),
            }
        }
        drop(vm.vm_fd);
        drop(vm.memory);
    }
    result?;
    Ok(exit.reason().unwrap_or(ExitReason::PowerOff))
}
