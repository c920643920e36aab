//! What the user asked for: a validated description of one VM.
//!
//! Parsing flags into these types happens in `main.rs`; validation that
//! needs no host access happens here so it is unit-testable. Limits that
//! depend on the host (KVM's vCPU limit, host RAM) are checked in `vmm.rs`.

use std::path::PathBuf;

use crate::arch::x86_64::layout;
use crate::devices::virtio::block::BlockConfig;

/// Command line used when the user gives none: serial console, reboot
/// through the i8042 so a guest `reboot` ends kiln, and a panic reboots
/// after 1 s instead of hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
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
    BadDisk { spec: String, why: String },
    #[error("{0} disks given; kiln supports at most {max}", max = layout::MAX_VIRTIO_DEVICES)]
    TooManyDisks(usize),
    #[error("more than one --disk is marked root")]
    TwoRoots,
    #[error("the root disk must come first (it becomes /dev/vda)")]
    RootNotFirst,
}

/// One `--disk`: the block device plus whether it is the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub block: BlockConfig,
    /// Becomes /dev/vda, and `root=/dev/vda` is added to the command line
    /// unless it already names a root.
    pub root: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;

    /// `path=FILE[,root][,readonly][,id=ID][,cache=unsafe|writeback|none][,shared=on|off]`
    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::BadDisk {
            spec: spec.to_string(),
            why,
        };
        let mut path = None;
        let mut disk = DiskConfig {
            block: BlockConfig::default(),
            root: false,
        };
        for item in spec.split(',') {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            match (key, value) {
                ("path", Some(v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
                ("root", None) => disk.root = true,
                ("readonly" | "ro", None) => disk.block.read_only = true,
                ("readonly" | "ro", Some(v)) => disk.block.read_only = parse_switch(v).map_err(bad)?,
                ("id", Some(v)) => {
                    if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(bad("id= takes at most 20 printable ASCII characters".into()));
                    }
                    disk.block.id = Some(v.to_string());
                }
                ("cache", Some(v)) => disk.block.cache = v.parse().map_err(|e| bad(format!("{e}")))?,
                ("shared", Some(v)) => disk.block.shared = parse_switch(v).map_err(bad)?,
                _ => {
                    return Err(bad(format!(
                        "unknown option {item:?}; use path=FILE, root, readonly, id=ID, cache=unsafe|writeback|none, shared=on"
                    )))
                }
            }
        }
        disk.block.path = path.ok_or_else(|| bad("path=FILE is required".into()))?;
        Ok(disk)
    }
}

fn parse_switch(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {v:?}")),
    }
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
        }
    }

    /// Guest RAM in bytes; fails as [`validate_memory`] does.
    pub fn memory_bytes(&self) -> Result<u64, ConfigError> {
        validate_memory(self.memory_mib)
    }

    /// Checks everything that needs no host access.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.disks.iter().skip(1).any(|d| d.root) {
            return Err(ConfigError::RootNotFirst);
        }
        validate_cpus(u64::from(self.cpus))?;
        self.memory_bytes()?;
        validate_disks(&self.disks)?;
        validate_cmdline(&self.cmdline, layout::CMDLINE_MAX_SIZE)
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
    fn disk_specs_parse() {
        let d: DiskConfig = "path=/img/root.ext4,root".parse().unwrap();
        assert_eq!(d.block.path, PathBuf::from("/img/root.ext4"));
        assert!(d.root && !d.block.read_only && !d.block.shared);
        let d: DiskConfig = "path=d.img,readonly,id=data-1,cache=none,shared=on"
            .parse()
            .unwrap();
        assert!(d.block.read_only && d.block.shared && !d.root);
        assert_eq!(d.block.id.as_deref(), Some("data-1"));
        assert_eq!(d.block.cache, crate::backends::CacheMode::None);
        assert!("ro=off,path=x"
            .parse::<DiskConfig>()
            .is_ok_and(|d| !d.block.read_only));
    }

    #[test]
    fn bad_disk_specs_say_why() {
        for (spec, why) in [
            ("root", "path=FILE is required"),
            ("path=", "unknown option"),
            ("path=x,cache=fast", "unknown cache mode"),
            ("path=x,id=123456789012345678901", "at most 20"),
            ("path=x,id=has space", "printable"),
            ("path=x,bogus", "unknown option \"bogus\""),
            ("path=x,shared=maybe", "expected on or off"),
        ] {
            let err = spec.parse::<DiskConfig>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
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
