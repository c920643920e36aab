//! Turning a [`VmConfig`] into a ready-to-run VM: KVM objects, guest
//! memory, the loaded kernel and boot structures, devices on their buses,
//! and configured (not yet running) vCPUs.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handles::DeviceHandles;
use super::ConsoleInput;
use crate::arch::x86_64::boot::{self, BootError, BootInfo};
use crate::arch::x86_64::{acpi, cpuid, layout, mptable, regs};
use crate::config::{validate_cmdline, ConfigError, VmConfig};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::legacy::acpi_pm::AcpiPmDevice;
use crate::devices::legacy::boot_timer::{BootTimer, BootTimerEvents};
use crate::devices::legacy::console_output::{console_output, ConsoleWriter};
use crate::devices::legacy::host_output::HostOutput;
use crate::devices::legacy::i8042::I8042Device;
use crate::devices::legacy::pvpanic::PvPanicDevice;
use crate::devices::legacy::serial::{EventFdTrigger, SerialDevice, SerialHandler};
use crate::devices::virtio::block::BlockDevice;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::net::{NetCounters, NetDevice, NetDeviceError};
use crate::devices::virtio::vsock::{VsockCounters, VsockDevice, VsockDeviceError};
use crate::devices::virtio::{MmioDevices, MmioSlot, VirtioError};
use crate::devices::EventLoop;
use crate::exit::ExitNotifier;
use crate::timeline::{BootTimeline, Phase};
use crate::vstate::kvm::{open_kvm, HostKind, KvmError, PVM_HINT};
use crate::vstate::memory::{create_guest_memory, proc_kib, GuestMemoryMmap, MemoryError};
use crate::vstate::vcpu::Vcpu;

/// Where KVM may put its real-mode TSS: three pages just below the BIOS.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--cpus {asked} is more than this host's KVM allows ({max})")]
    TooManyCpus { asked: u8, max: usize },
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM")]
    MemoryOverHost { asked: u64, host: u64 },
    #[error("{0}")]
    PvmHost(&'static str),
    #[error("KVM refused to {what}: {source}")]
    KvmOp {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the MP table: {0}")]
    Mptable(#[from] mptable::MptableError),
    #[error("cannot write the ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot place devices: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("cannot set up the VMM: {0}")]
    Setup(std::io::Error),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetDeviceError),
    #[error(transparent)]
    Vsock(#[from] VsockDeviceError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
}

impl BuildError {
    /// Whether the user asked for something impossible (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BuildError::Config(_)
                | BuildError::TooManyCpus { .. }
                | BuildError::MemoryOverHost { .. }
                | BuildError::Virtio(VirtioError::TooManyDevices { .. })
        )
    }
}

/// A device shared between the bus and whoever else drives it.
type SharedDevice = Arc<Mutex<dyn BusDevice>>;

fn kvm_op(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::KvmOp { what, source }
}

/// A VM ready to run. Field order is drop order: vCPUs and the VM go
/// before the memory they point into.
pub struct BuiltVm {
    pub vcpus: Vec<Vcpu>,
    pub vm_fd: VmFd,
    pub memory: GuestMemoryMmap,
    /// Writes the guest console out (an event-loop subscriber); finished
    /// when the VM stops.
    pub console: Arc<Mutex<ConsoleWriter>>,
    /// Live counters of the devices that keep them: network cards in
    /// `--net` order, then the vsock device.
    pub counters: Vec<DeviceCounters>,
    /// Disks and network cards by id, and the i8042, for changes while
    /// the VM runs.
    pub devices: DeviceHandles,
}

/// A device's counters, readable while the VM runs.
pub enum DeviceCounters {
    Net { tap: String, counters: Arc<NetCounters> },
    Vsock { cid: u64, counters: Arc<VsockCounters> },
}

impl std::fmt::Display for DeviceCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceCounters::Net { tap, counters } => write!(f, "virtio-net {tap}: {}", counters.snapshot()),
            DeviceCounters::Vsock { cid, counters } => {
                write!(f, "virtio-vsock cid {cid}: {}", counters.snapshot())
            }
        }
    }
}

/// Host RAM in MiB, from /proc/meminfo; None if unreadable.
fn host_memory_mib() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemTotal").map(|kib| kib >> 10)
}

fn check_host_limits(kvm: &Kvm, config: &VmConfig) -> Result<(), BuildError> {
    let max = kvm.get_max_vcpus();
    if usize::from(config.cpus) > max {
        return Err(BuildError::TooManyCpus {
            asked: config.cpus,
            max,
        });
    }
    if let Some(host) = host_memory_mib() {
        if config.memory_mib > host {
            return Err(BuildError::MemoryOverHost {
                asked: config.memory_mib,
                host,
            });
        }
    }
    Ok(())
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size`
        // bytes, and `BuiltVm` keeps it mapped until after the VM fd and
        // every vCPU are gone.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_op("map guest memory"))?;
    }
    Ok(())
}

/// Builds the kernel command line: the user's, then `root=` for a root
/// disk (unless the user chose one), then, without ACPI, the virtio-mmio
/// devices (with ACPI the DSDT lists them; listing both would register
/// each device twice).
fn build_cmdline(config: &VmConfig, limit: usize, slots: &[MmioSlot]) -> Result<Cmdline, BuildError> {
    let mut extra = Vec::new();
    let user_root = config.cmdline.split_whitespace().any(|w| w.starts_with("root="));
    if let Some(root) = config.disks.first().filter(|d| d.root && !user_root) {
        extra.push("root=/dev/vda".to_string());
        extra.push(if root.block.read_only { "ro" } else { "rw" }.to_string());
    }
    if !config.acpi {
        extra.extend(slots.iter().map(MmioSlot::kernel_cmdline_arg));
    }
    let full = [config.cmdline.trim().to_string(), extra.join(" ")].join(" ");
    let full = full.trim();
    validate_cmdline(full, limit)?;
    let mut cmdline = Cmdline::new(limit).map_err(BuildError::Cmdline)?;
    if !full.is_empty() {
        cmdline.insert_str(full).map_err(BuildError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Every virtio device, each in the next MMIO slot: one line per kind. The
/// caller put the root disk first, so it is /dev/vda; network cards follow
/// in the order given, so the guest probes them as eth0, eth1, ...
fn attach_virtio_devices(
    config: &VmConfig,
    devices: &mut MmioDevices,
    counters: &mut Vec<DeviceCounters>,
    handles: &mut DeviceHandles,
) -> Result<(), BuildError> {
    for disk in &config.disks {
        let (_, transport) = devices.attach_shared(BlockDevice::new(disk.block.clone())?)?;
        if let Some(id) = &disk.block.id {
            handles.add_drive(id.clone(), transport);
        }
    }
    for net in &config.nets {
        let card = NetDevice::open(net)?;
        counters.push(DeviceCounters::Net {
            tap: net.tap.clone(),
            counters: card.counters(),
        });
        let (_, transport) = devices.attach_shared(card)?;
        if let Some(id) = &net.id {
            handles.add_net(id.clone(), transport);
        }
    }
    if let Some(vsock) = &config.vsock {
        let device = VsockDevice::new(vsock)?;
        counters.push(DeviceCounters::Vsock {
            cid: device.cid(),
            counters: device.counters(),
        });
        devices.attach(device)?;
    }
    Ok(())
}

/// Port I/O devices: COM1, i8042, pvpanic, ACPI sleep/reset register.
/// Returns the bus and the console's writer, and gives `handles` the i8042.
fn legacy_devices(
    vm: &VmFd,
    output: OwnedFd,
    input: Option<Box<dyn ConsoleInput>>,
    exit: &ExitNotifier,
    event_loop: &mut EventLoop,
    handles: &mut DeviceHandles,
) -> Result<(Bus, Arc<Mutex<ConsoleWriter>>), BuildError> {
    let mut pio = Bus::new();
    let irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::Setup)?;
    vm.register_irqfd(&irq, layout::COM1_IRQ)
        .map_err(kvm_op("attach the serial interrupt"))?;
    let host = HostOutput::new(output).map_err(BuildError::Setup)?;
    let (output, console) = console_output(Box::new(host)).map_err(BuildError::Setup)?;
    let console = Arc::new(Mutex::new(console));
    event_loop.add_subscriber(console.clone() as Arc<Mutex<dyn MutEventSubscriber + Send>>);
    let (serial, drained) = SerialDevice::new(irq, output).map_err(BuildError::Setup)?;
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(u64::from(layout::COM1_PORT), 8, serial.clone())?;
    let handler = SerialHandler::new(serial, input, drained);
    event_loop.add_subscriber(Arc::new(Mutex::new(handler)) as Arc<Mutex<dyn MutEventSubscriber + Send>>);
    // The keyboard's IRQ 1, as COM1's: an irqfd.
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::Setup)?;
    vm.register_irqfd(&kbd_irq, layout::I8042_IRQ)
        .map_err(kvm_op("attach the keyboard interrupt"))?;
    let i8042 = Arc::new(Mutex::new(I8042Device::new(
        exit.clone(),
        Box::new(EventFdTrigger(kbd_irq)),
    )));
    handles.set_i8042(i8042.clone());
    let devices: [(u16, u64, SharedDevice); 3] = [
        (layout::I8042_PORT, I8042Device::WINDOW_LEN, i8042),
        (
            layout::PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanicDevice::new(exit.clone()))),
        ),
        (
            layout::ACPI_SLEEP_PORT,
            1,
            Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone()))),
        ),
    ];
    for (port, len, dev) in devices {
        pio.insert(u64::from(port), len, dev)?;
    }
    Ok((pio, console))
}

/// What every vCPU shares, and where the boot vCPU starts.
struct VcpuSetup<'a> {
    kvm: &'a Kvm,
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    cpus: u8,
    boot: (regs::BootMode, u64, u64),
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    exit: &'a ExitNotifier,
    host: HostKind,
    timeline: &'a Arc<BootTimeline>,
}

/// Creates and configures every vCPU; the first gets the boot registers.
fn create_vcpus(s: VcpuSetup) -> Result<Vec<Vcpu>, BuildError> {
    let supported = s
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_op("report supported CPUID"))?;
    let options = cpuid::CpuidOptions {
        cpus: s.cpus,
        tsc_deadline: s.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
    let mut vcpus = Vec::with_capacity(usize::from(s.cpus));
    for index in 0..s.cpus {
        let fd =
            s.vm.create_vcpu(u64::from(index))
                .map_err(kvm_op("create a vCPU"))?;
        fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, index, options))
            .map_err(kvm_op("set CPUID"))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lint(&fd)?;
        if index == 0 {
            let (mode, rip, boot_info) = s.boot;
            regs::setup_boot_vcpu(&fd, s.mem, mode, rip, boot_info)?;
        }
        vcpus.push(Vcpu {
            index,
            fd,
            pio_bus: s.pio_bus.clone(),
            mmio_bus: s.mmio_bus.clone(),
            exit: s.exit.clone(),
            host: s.host,
            timeline: s.timeline.clone(),
        });
    }
    Ok(vcpus)
}

/// What the build and the vCPUs record boot phases with.
pub struct BootInstruments {
    pub timeline: Arc<BootTimeline>,
    /// Whom the boot-timer device tells that the guest reached user space.
    pub boot_timer: Arc<dyn BootTimerEvents + Send + Sync>,
}

/// Builds the whole VM; devices with descriptors join `event_loop`.
pub fn build(
    config: &VmConfig,
    output: OwnedFd,
    input: Option<Box<dyn ConsoleInput>>,
    exit: &ExitNotifier,
    event_loop: &mut EventLoop,
    instruments: BootInstruments,
) -> Result<BuiltVm, BuildError> {
    let BootInstruments { timeline, boot_timer } = instruments;
    let host = HostKind::detect();
    let kvm = open_kvm()?;
    check_host_limits(&kvm, config)?;

    // Mapped before the VM exists so that it is unmapped after the VM is
    // gone on every return (locals drop in reverse order).
    let mem_size = config.memory_bytes()?;
    // Huge pages pay off through stage-2 (EPT/NPT) paging; PVM's shadow
    // paging gains nothing from them and would only zero 2 MiB per touch.
    let huge_pages = config.huge_pages && host != HostKind::Pvm;
    let memory = create_guest_memory(mem_size, huge_pages)?;
    let vm = kvm.create_vm().map_err(kvm_op("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_op("set the TSS address"))?;
    timeline.record(Phase::VmCreated);

    // Before the interrupt controller: KVM_SET_USER_MEMORY_REGION then
    // returns in about 0.05 ms, against 4-8 ms once the in-kernel irqchip
    // exists (measured on a 6.18 host, the whole of kiln's start-up time;
    // Firecracker also registers memory first).
    register_memory(&vm, &memory)?;
    timeline.record(Phase::MemoryMapped);

    let kernel = boot::load_kernel(&memory, &config.kernel)?;
    if kernel.is_linux && !host.boots_linux() && !config.force {
        return Err(BuildError::PvmHost(PVM_HINT));
    }
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&memory, path, &kernel)?),
        None => None,
    };
    timeline.record(Phase::KernelLoaded);

    vm.create_irq_chip()
        .map_err(kvm_op("create the interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_op("create the PIT"))?;
    let mut handles = DeviceHandles::default();
    let (pio_bus, console) = legacy_devices(&vm, output, input, exit, event_loop, &mut handles)?;
    let mut virtio = MmioDevices::new(&vm, &memory, event_loop);
    let mut counters = Vec::new();
    attach_virtio_devices(config, &mut virtio, &mut counters, &mut handles)?;
    let (mut mmio_bus, slots) = virtio.finish();
    // Always there (a page of address space, no state worth mentioning):
    // a guest cannot know whether anyone is timing its boot.
    mmio_bus.insert(
        layout::BOOT_TIMER_START,
        layout::BOOT_TIMER_SIZE,
        Arc::new(Mutex::new(BootTimer::new(boot_timer))),
    )?;
    let virtio_devices: Vec<acpi::MmioDeviceInfo> = slots.used().iter().map(MmioSlot::acpi_info).collect();

    let cmdline = build_cmdline(config, kernel.cmdline_limit(), slots.used())?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BuildError::Cmdline)?
        .as_bytes()
        .len();
    load_cmdline(&memory, GuestAddress(layout::CMDLINE_START), &cmdline).map_err(|e| {
        BuildError::Boot(BootError::Load {
            path: "command line".into(),
            source: e,
        })
    })?;

    // The MP table is the only description without ACPI; with ACPI it is
    // a fallback for kernels built without it, written when it fits.
    if !config.acpi || config.cpus <= mptable::MAX_CPUS {
        mptable::setup_mptable(&memory, config.cpus)?;
    }
    let rsdp = if config.acpi {
        let acpi_config = acpi::AcpiConfig {
            num_cpus: config.cpus,
            virtio_devices: &virtio_devices,
        };
        Some(acpi::create_acpi_tables(&memory, &acpi_config)?.raw_value())
    } else {
        None
    };
    let info = BootInfo {
        mem_size,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_len,
        initrd,
        rsdp,
    };
    let boot_info = boot::write_boot_info(&memory, &kernel, &info)?;

    let vcpus = create_vcpus(VcpuSetup {
        kvm: &kvm,
        vm: &vm,
        mem: &memory,
        cpus: config.cpus,
        boot: (kernel.mode, kernel.entry, boot_info),
        pio_bus: Arc::new(pio_bus),
        mmio_bus: Arc::new(mmio_bus),
        exit,
        host,
        timeline: &timeline,
    })?;
    timeline.record(Phase::DevicesReady);
    Ok(BuiltVm {
        vcpus,
        vm_fd: vm,
        memory,
        console,
        counters,
        devices: handles,
    })
}
