//! Opening KVM, checking what it can do, and telling what kind of host it is.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The kind of virtualization behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V: runs any guest.
    Hardware,
    /// PVM (`kvm_pvm`): software virtualization that runs small guests but
    /// not an unmodified Linux kernel (it stops on instructions such as
    /// `cmpxchg16b` that its emulator does not handle).
    Pvm,
    /// No known module; treated like hardware.
    Unknown,
}

impl HostKind {
    /// Reads which KVM module is loaded. `sys_module` is `/sys/module` except
    /// in tests.
    pub fn detect_at(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            HostKind::Pvm
        } else if sys_module.join("kvm_intel").exists() || sys_module.join("kvm_amd").exists() {
            HostKind::Hardware
        } else {
            HostKind::Unknown
        }
    }

    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/module"))
    }

    /// Whether an unmodified Linux kernel can boot on this host.
    pub fn boots_linux(self) -> bool {
        self != HostKind::Pvm
    }
}

/// The one-line explanation given when a Linux kernel is refused on PVM.
pub const PVM_HINT: &str = "this host's /dev/kvm is PVM (kvm_pvm, software virtualization), which cannot boot an unmodified Linux kernel; run kiln on a host with VT-x/AMD-V, or inside the emulated host `tools/nested-host -- kiln boot ...` (pass --force to try anyway)";

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: load the KVM module (modprobe kvm_intel or kvm_amd) or run on a host with virtualization enabled")]
    NotFound,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the 'kvm' group")]
    PermissionDenied,
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("/dev/kvm speaks KVM API version {0}, kiln needs 12")]
    ApiVersion(i32),
    #[error("this KVM lacks {0}, which kiln needs")]
    MissingCap(&'static str),
}

/// Capabilities kiln relies on, with the name shown when one is missing.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Opens `/dev/kvm` and checks that it can run a kiln VM.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::NotFound,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(modules: &[&str]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kiln-sysmod-{}-{}",
            std::process::id(),
            modules.join("-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for m in modules {
            std::fs::create_dir_all(dir.join(m)).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn detects_host_kinds() {
        assert_eq!(HostKind::detect_at(&fake_sys(&["kvm", "kvm_pvm"])), HostKind::Pvm);
        assert_eq!(
            HostKind::detect_at(&fake_sys(&["kvm", "kvm_amd"])),
            HostKind::Hardware
        );
        assert_eq!(
            HostKind::detect_at(&fake_sys(&["kvm", "kvm_intel"])),
            HostKind::Hardware
        );
        assert_eq!(HostKind::detect_at(&fake_sys(&["kvm"])), HostKind::Unknown);
        assert!(!HostKind::Pvm.boots_linux());
        assert!(HostKind::Unknown.boots_linux());
    }
}
