//! What the user asked for: a validated description of one VM.
//!
//! The device configs ([`DiskConfig`], [`NetConfig`], [`VsockConfig`]) are
//! plain data, each with one `validate` that the command line and the API
//! both use; each device module also parses its command-line spec with the
//! one spec parser in [`spec`], and device ids follow the one rule in
//! [`id`]. [`VmConfig::validate`] adds the rules across devices. Limits
//! that depend on the host (KVM's vCPU limit, host RAM) are checked in
//! `vmm`; the only host check here is that a vsock socket's directory
//! exists.

pub mod disk;
pub mod id;
pub mod jail;
pub mod net;
pub mod spec;
pub mod vsock;

use std::path::PathBuf;

pub use disk::{DiskConfig, DiskError};
pub use id::IdError;
pub use net::{NetConfig, NetError};
pub use vsock::{VsockConfig, VsockError};

use crate::arch::x86_64::layout;

/// Command line used when the user gives none: serial console, reboot
/// through the i8042 so a guest `reboot` ends kiln, and a panic reboots
/// after 1 s instead of hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
/// What the default guest boots with on top of [`DEFAULT_CMDLINE`]: the
/// kernel's console messages below warnings stay off the serial line
/// (every byte is a trapped port write; half of the default guest's boot
/// time in the nested host went there), and the 8250 driver sets up only
/// the one UART there is instead of probing four.
pub const QUIET_BOOT_ARGS: &str = "quiet 8250.nr_uarts=1";

/// The command line of the default guest (and the sandbox's, and `kiln
/// bench`'s): [`DEFAULT_CMDLINE`] plus [`QUIET_BOOT_ARGS`].
pub fn default_guest_cmdline() -> String {
    format!("{DEFAULT_CMDLINE} {QUIET_BOOT_ARGS}")
}
pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Below this a Linux kernel cannot even decompress; tiny guests fit easily.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Guest RAM must fit, with the 1 GiB MMIO gap below 4 GiB, in the 46 bits
/// of guest-physical address space every x86_64 KVM host offers.
pub const MAX_MEMORY_MIB: u64 = ((1 << 46) - layout::MMIO_GAP_END + layout::MMIO_GAP_START) >> 20;
/// The MP table and our u8 APIC IDs cap the vCPU count below 255.
pub const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("--cpus {0} is more than kiln supports ({MAX_CPUS})")]
    TooManyCpus(u64),
    #[error("--memory {0} MiB is too small; give at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("--memory {0} MiB is more than a guest can address; give at most {MAX_MEMORY_MIB} MiB")]
    MemoryTooLarge(u64),
    #[error("the kernel command line is {len} bytes; the limit is {max} (x86 COMMAND_LINE_SIZE)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("--disk {spec:?}: {why}")]
    BadDisk { spec: String, why: DiskError },
    #[error("--net {spec:?}: {why}")]
    BadNet { spec: String, why: NetError },
    #[error("--vsock {spec:?}: {why}")]
    BadVsock { spec: String, why: VsockError },
    #[error("disk {index} ({}): {why}", path.display())]
    InvalidDisk {
        index: usize,
        path: PathBuf,
        why: DiskError,
    },
    #[error("network card {index} (tap {tap}): {why}")]
    InvalidNet {
        index: usize,
        tap: String,
        why: NetError,
    },
    #[error("vsock: {0}")]
    InvalidVsock(VsockError),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("two network cards use tap {0}; a tap serves one card, so give each its own")]
    SharedTap(String),
    #[error(
        "{count} virtio devices given; kiln supports at most {max}",
        max = layout::MAX_VIRTIO_DEVICES
    )]
    TooManyDevices { count: usize },
    #[error("{0} disks given; kiln supports at most {max}", max = layout::MAX_VIRTIO_DEVICES)]
    TooManyDisks(usize),
    #[error("more than one --disk is marked root")]
    TwoRoots,
    #[error("the root disk must come first (it becomes /dev/vda)")]
    RootNotFirst,
}

/// Checks the disk list as a whole.
pub fn validate_disks(disks: &[DiskConfig]) -> Result<(), ConfigError> {
    if disks.len() > layout::MAX_VIRTIO_DEVICES as usize {
        return Err(ConfigError::TooManyDisks(disks.len()));
    }
    if disks.iter().filter(|d| d.root).count() > 1 {
        return Err(ConfigError::TwoRoots);
    }
    Ok(())
}

/// One VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Base command line; kiln appends device parameters to it.
    pub cmdline: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// Describe the platform with ACPI tables (MP table is always written).
    pub acpi: bool,
    /// Boot a Linux kernel even on a host whose KVM is known not to run one.
    pub force: bool,
    /// virtio-blk disks, in the order the guest should see them.
    pub disks: Vec<DiskConfig>,
    /// virtio-net cards, in the order the guest should see them (eth0,
    /// eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Whether the VMM and vCPU threads run under their seccomp filters.
    pub seccomp: crate::seccomp::SeccompMode,
    /// An API changes the VM while it runs (a drive's new image is opened
    /// on the VMM thread, whose filter then allows that).
    pub runtime_changes: bool,
    /// Guest RAM on 2 MiB boundaries with transparent huge pages (see
    /// [`crate::vstate::memory::create_guest_memory`]).
    pub huge_pages: bool,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            acpi: true,
            force: false,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            seccomp: crate::seccomp::SeccompMode::On,
            runtime_changes: false,
            huge_pages: true,
        }
    }

    /// Guest RAM in bytes; fails as [`validate_memory`] does.
    pub fn memory_bytes(&self) -> Result<u64, ConfigError> {
        validate_memory(self.memory_mib)
    }

    /// Checks everything that needs no host access (but for a vsock
    /// socket's directory): the one entry point for the command line and
    /// the API alike.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.disks.iter().skip(1).any(|d| d.root) {
            return Err(ConfigError::RootNotFirst);
        }
        validate_cpus(u64::from(self.cpus))?;
        self.memory_bytes()?;
        validate_disks(&self.disks)?;
        self.validate_devices()?;
        validate_cmdline(&self.cmdline, layout::CMDLINE_MAX_SIZE)
    }

    /// Each device's own checks (again, for configs the command line did
    /// not parse), then the rules across devices.
    fn validate_devices(&self) -> Result<(), ConfigError> {
        for (index, disk) in self.disks.iter().enumerate() {
            disk.validate().map_err(|why| ConfigError::InvalidDisk {
                index,
                path: disk.block.path.clone(),
                why,
            })?;
        }
        for (index, net) in self.nets.iter().enumerate() {
            net.validate().map_err(|why| ConfigError::InvalidNet {
                index,
                tap: net.tap.clone(),
                why,
            })?;
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate().map_err(ConfigError::InvalidVsock)?;
        }
        let count = self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some());
        if count > layout::MAX_VIRTIO_DEVICES as usize {
            return Err(ConfigError::TooManyDevices { count });
        }
        for (index, net) in self.nets.iter().enumerate() {
            if self.nets[..index].iter().any(|other| other.tap == net.tap) {
                return Err(ConfigError::SharedTap(net.tap.clone()));
            }
        }
        id::check_unique(self.device_ids())?;
        Ok(())
    }

    /// The ids given to any device of this VM: the one list the
    /// uniqueness rule looks at, so a new device kind adds its ids here.
    fn device_ids(&self) -> impl Iterator<Item = &str> {
        let disks = self.disks.iter().filter_map(|d| d.block.id.as_deref());
        let nets = self.nets.iter().filter_map(|n| n.id.as_deref());
        disks.chain(nets)
    }
}

pub fn validate_cpus(cpus: u64) -> Result<u8, ConfigError> {
    match cpus {
        0 => Err(ConfigError::NoCpus),
        n if n > u64::from(MAX_CPUS) => Err(ConfigError::TooManyCpus(n)),
        n => Ok(n as u8),
    }
}

/// Checks a `--memory` size and converts it to bytes: the one place that
/// turns MiB into bytes, so no caller can wrap around.
pub fn validate_memory(mib: u64) -> Result<u64, ConfigError> {
    if mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(mib));
    }
    if mib > MAX_MEMORY_MIB {
        return Err(ConfigError::MemoryTooLarge(mib));
    }
    // A multiplication, not a shift: `checked_shl` only refuses shift
    // counts of 64 or more and silently drops the bits shifted out.
    mib.checked_mul(1 << 20).ok_or(ConfigError::MemoryTooLarge(mib))
}

/// `max` counts the terminating NUL, as the boot protocol's `cmdline_size`
/// plus one does.
pub fn validate_cmdline(cmdline: &str, max: usize) -> Result<(), ConfigError> {
    if cmdline.contains('\0') {
        return Err(ConfigError::CmdlineNul);
    }
    if cmdline.len() >= max {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::BlockConfig;

    #[test]
    fn defaults_are_valid() {
        let c = VmConfig::new("vmlinux");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.memory_bytes(), Ok(128 << 20));
        assert!(c.cmdline.contains("console=ttyS0"));
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(validate_cpus(0), Err(ConfigError::NoCpus));
        assert_eq!(validate_cpus(1), Ok(1));
        assert_eq!(validate_cpus(254), Ok(254));
        assert_eq!(validate_cpus(255), Err(ConfigError::TooManyCpus(255)));
        assert_eq!(validate_cpus(u64::MAX), Err(ConfigError::TooManyCpus(u64::MAX)));
    }

    #[test]
    fn memory_limits() {
        assert_eq!(validate_memory(1), Err(ConfigError::MemoryTooSmall(1)));
        assert_eq!(validate_memory(2), Ok(2 << 20));
        assert_eq!(validate_memory(64 << 10), Ok(64 << 30));
        assert_eq!(
            validate_memory(u64::MAX),
            Err(ConfigError::MemoryTooLarge(u64::MAX))
        );
        assert_eq!(
            validate_memory(1 << 27),
            Err(ConfigError::MemoryTooLarge(1 << 27))
        );
        // 2^44 MiB is 2^64 bytes: a shift wraps it to 0, which would pass.
        for mib in [1 << 44, (1 << 44) + 2048, 1 << 63] {
            assert_eq!(validate_memory(mib), Err(ConfigError::MemoryTooLarge(mib)));
            let mut c = VmConfig::new("k");
            c.memory_mib = mib;
            assert_eq!(c.memory_bytes(), Err(ConfigError::MemoryTooLarge(mib)));
            assert_eq!(c.validate(), Err(ConfigError::MemoryTooLarge(mib)));
        }
    }

    #[test]
    fn disk_list_limits() {
        let disk = |root| DiskConfig {
            block: BlockConfig::new("x"),
            root,
        };
        assert_eq!(
            validate_disks(&[disk(true), disk(true)]),
            Err(ConfigError::TwoRoots)
        );
        let mut c = VmConfig::new("k");
        c.disks = vec![disk(false), disk(true)];
        assert_eq!(c.validate(), Err(ConfigError::RootNotFirst));
        let many = vec![disk(false); layout::MAX_VIRTIO_DEVICES as usize + 1];
        assert_eq!(validate_disks(&many), Err(ConfigError::TooManyDisks(many.len())));
        assert_eq!(validate_disks(&many[1..]), Ok(()));
    }

    fn disk_with_id(id: &str) -> DiskConfig {
        let mut block = BlockConfig::new("x");
        block.id = Some(id.to_string());
        DiskConfig { block, root: false }
    }

    fn net_with_id(tap: &str, id: &str) -> NetConfig {
        NetConfig {
            id: Some(id.to_string()),
            ..NetConfig::new(tap)
        }
    }

    #[test]
    fn ids_are_unique_across_all_devices() {
        let mut c = VmConfig::new("k");
        c.disks = vec![disk_with_id("rootfs"), disk_with_id("data")];
        c.nets = vec![net_with_id("tap0", "net0"), NetConfig::new("tap1")];
        c.vsock = Some(VsockConfig {
            cid: 3,
            socket: "v.sock".into(),
        });
        assert_eq!(c.validate(), Ok(()));

        let mut two_disks = c.clone();
        two_disks.disks[1] = disk_with_id("rootfs");
        assert_eq!(
            two_disks.validate(),
            Err(ConfigError::Id(IdError::Duplicate("rootfs".into())))
        );
        let mut disk_and_net = c.clone();
        disk_and_net.nets[1].id = Some("data".into());
        let err = disk_and_net.validate().unwrap_err();
        assert_eq!(err, ConfigError::Id(IdError::Duplicate("data".into())));
        assert_eq!(
            err.to_string(),
            "id \"data\" is given to more than one device; give each device its own id"
        );
    }

    #[test]
    fn devices_built_without_the_command_line_are_validated() {
        let mut c = VmConfig::new("k");
        c.disks = vec![disk_with_id("ok"), disk_with_id("not ok")];
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::InvalidDisk { index: 1, .. }), "{err}");
        assert!(err.to_string().starts_with("disk 1 (x): id \"not ok\""), "{err}");

        let mut c = VmConfig::new("k");
        c.nets = vec![NetConfig::new("tap0"), NetConfig::new("tap/1")];
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::InvalidNet { index: 1, .. }), "{err}");
        assert!(
            err.to_string().starts_with("network card 1 (tap tap/1): "),
            "{err}"
        );

        let mut c = VmConfig::new("k");
        c.vsock = Some(VsockConfig {
            cid: 2,
            socket: "v.sock".into(),
        });
        assert_eq!(
            c.validate(),
            Err(ConfigError::InvalidVsock(VsockError::ReservedCid(2)))
        );
    }

    #[test]
    fn a_tap_serves_one_card() {
        let mut c = VmConfig::new("k");
        c.nets = vec![
            NetConfig::new("tap0"),
            NetConfig::new("tap1"),
            NetConfig::new("tap0"),
        ];
        assert_eq!(c.validate(), Err(ConfigError::SharedTap("tap0".into())));
    }

    #[test]
    fn all_devices_count_against_the_mmio_slots() {
        let max = layout::MAX_VIRTIO_DEVICES as usize;
        let mut c = VmConfig::new("k");
        c.disks = vec![disk::parse("path=x").unwrap(); max - 2];
        c.nets = vec![NetConfig::new("tap0"), NetConfig::new("tap1")];
        assert_eq!(c.validate(), Ok(()));
        c.vsock = Some(VsockConfig {
            cid: 3,
            socket: "v.sock".into(),
        });
        assert_eq!(c.validate(), Err(ConfigError::TooManyDevices { count: max + 1 }));
    }

    #[test]
    fn cmdline_limits() {
        let max = layout::CMDLINE_MAX_SIZE;
        assert_eq!(validate_cmdline(&"a".repeat(max - 1), max), Ok(()));
        assert_eq!(
            validate_cmdline(&"a".repeat(max), max),
            Err(ConfigError::CmdlineTooLong {
                len: max,
                max: max - 1
            })
        );
        assert_eq!(validate_cmdline("a\0b", max), Err(ConfigError::CmdlineNul));
    }
}
