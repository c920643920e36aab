//! What the user asked for: a validated description of one VM.
//!
//! Parsing flags into these types happens in `main.rs`; validation that
//! needs no host access happens here so it is unit-testable. Limits that
//! depend on the host (KVM's vCPU limit, host RAM) are checked in `vmm.rs`.

use std::path::PathBuf;

use crate::arch::x86_64::layout;

/// Command line used when the user gives none: serial console, reboot
/// through the i8042 so a guest `reboot` ends kiln, and a panic reboots
/// after 1 s instead of hanging.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";
pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Below this a Linux kernel cannot even decompress; tiny guests fit easily.
pub const MIN_MEMORY_MIB: u64 = 2;
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
    #[error("--memory {0} MiB is too large for a 64-bit guest address space")]
    MemoryTooLarge(u64),
    #[error("the kernel command line is {len} bytes; the limit is {max} (x86 COMMAND_LINE_SIZE)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
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
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks everything that needs no host access.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cpus(u64::from(self.cpus))?;
        validate_memory(self.memory_mib)?;
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

pub fn validate_memory(mib: u64) -> Result<(), ConfigError> {
    if mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(mib));
    }
    // 46 bits of guest-physical space is what every x86_64 KVM host offers.
    if mib
        .checked_shl(20)
        .is_none_or(|b| b > (1u64 << 46) - layout::MMIO_GAP_END)
    {
        return Err(ConfigError::MemoryTooLarge(mib));
    }
    Ok(())
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
        assert_eq!(c.memory_bytes(), 128 << 20);
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
        assert_eq!(validate_memory(2), Ok(()));
        assert_eq!(validate_memory(64 << 10), Ok(()));
        assert_eq!(
            validate_memory(u64::MAX),
            Err(ConfigError::MemoryTooLarge(u64::MAX))
        );
        assert_eq!(
            validate_memory(1 << 27),
            Err(ConfigError::MemoryTooLarge(1 << 27))
        );
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
