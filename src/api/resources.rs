//! [`VmResources`]: the VM the API describes before `InstanceStart`, built
//! up by PUTs and PATCHes or read whole from Firecracker's `--config-file`.
//!
//! It keeps the request bodies as given (so it can answer GETs with them)
//! and checks every change at once by building kiln's [`VmConfig`] and
//! running its `validate`, the one place kiln's rules live: a change that
//! would make the VM invalid is refused and leaves the resources as they
//! were, so an error reaches the client that caused it, not the later
//! `InstanceStart`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::model::{
    BootSource, CacheType, CpuTemplate, Drive, HugePages, IoEngine, Logger, MachineConfig,
    MachineConfigUpdate, Metrics, NetworkInterface, PartialDrive, PartialNetworkInterface, Vsock,
};
use crate::backends::CacheMode;
use crate::config::{
    self, ConfigError, DiskConfig, DiskError, NetConfig, NetError, VmConfig, VsockConfig, VsockError,
};
use crate::devices::virtio::block::BlockConfig;

/// Why a request (or a config file) cannot be applied. Each message is one
/// line that says what to change: it becomes the answer's `fault_message`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("the request body is not valid: {0}")]
    BadJson(String),
    #[error("the config file is not valid: {0}")]
    BadConfigFile(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("config file key {0:?} names a Firecracker feature kiln does not have; remove it")]
    UnsupportedKey(&'static str),
    #[error("no boot source: PUT /boot-source (\"boot-source\" in a config file) before starting the VM")]
    NoBootSource,
    #[error(
        "cpu_template {0:?} is not supported: kiln gives the guest the host's CPU model; \
         use \"None\" or leave cpu_template out"
    )]
    CpuTemplate(CpuTemplate),
    #[error(
        "huge_pages {0} is not supported: kiln backs guest memory with transparent huge pages, not hugetlbfs; \
         use \"None\" or leave huge_pages out"
    )]
    HugePages(HugePages),
    #[error("machine-config {field}: {why}")]
    Machine {
        field: &'static str,
        why: Box<ConfigError>,
    },
    #[error("PATCH /machine-config with no field to change; give at least one")]
    EmptyPatch,
    #[error("drive {id:?}: {why}")]
    DriveUnsupported { id: String, why: &'static str },
    #[error(
        "drive {id:?}: partuuid {partuuid:?} is not a partition UUID; use hex digits and '-' \
         (e.g. 0eaa91a0-01)"
    )]
    BadPartuuid { id: String, partuuid: String },
    #[error(
        "drive {id:?} cannot be a root device: drive {root:?} is one already; \
         PUT that one with is_root_device false first"
    )]
    SecondRoot { id: String, root: String },
    #[error("drive {id:?}: {why}")]
    Drive { id: String, why: DiskError },
    #[error("no drive with id {0:?}; add it with PUT /drives/{0} first")]
    UnknownDrive(String),
    #[error("network interface {id:?}: {why}")]
    NetUnsupported { id: String, why: &'static str },
    #[error("network interface {id:?}: {why}")]
    Net { id: String, why: NetError },
    #[error("no network interface with id {0:?}; add it with PUT /network-interfaces/{0} first")]
    UnknownNet(String),
    #[error("vsock: {0}")]
    Vsock(VsockError),
    /// kiln's rules across devices (boxed: `ConfigError` is large).
    #[error(transparent)]
    Config(Box<ConfigError>),
    #[error("the id in the path ({path:?}) differs from the one in the body ({body:?}); make them the same")]
    IdMismatch { path: String, body: String },
}

impl From<ConfigError> for ResourceError {
    fn from(why: ConfigError) -> Self {
        Self::Config(Box::new(why))
    }
}

/// Firecracker's rule that a `/drives/{id}` or `/network-interfaces/{id}`
/// body names the id of its path.
pub fn check_path_id(path: &str, body: &str) -> Result<(), ResourceError> {
    if path == body {
        return Ok(());
    }
    Err(ResourceError::IdMismatch {
        path: path.to_string(),
        body: body.to_string(),
    })
}

/// The VM described so far. Drives are kept root first, as they reach
/// the guest (the root is /dev/vda); cards in the order given (eth0, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmResources {
    boot_source: Option<BootSource>,
    machine: MachineConfig,
    drives: Vec<Drive>,
    nets: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
}

/// What Firecracker's `--config-file` gives: the VM, and the logger and
/// metrics the VMM should set up before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub resources: VmResources,
    pub logger: Option<Logger>,
    pub metrics: Option<Metrics>,
}

impl VmResources {
    pub fn boot_source(&self) -> Option<&BootSource> {
        self.boot_source.as_ref()
    }

    /// What `GET /machine-config` answers.
    pub fn machine_config(&self) -> &MachineConfig {
        &self.machine
    }

    pub fn drives(&self) -> &[Drive] {
        &self.drives
    }

    pub fn network_interfaces(&self) -> &[NetworkInterface] {
        &self.nets
    }

    pub fn vsock(&self) -> Option<&Vsock> {
        self.vsock.as_ref()
    }

    /// `PUT /boot-source`: replaces the boot source.
    pub fn set_boot_source(&mut self, boot: BootSource) -> Result<(), ResourceError> {
        self.change(|next| {
            next.boot_source = Some(boot);
            Ok(())
        })
    }

    /// `PUT /machine-config`: replaces the whole machine config (serde has
    /// already refused a body without `vcpu_count` or `mem_size_mib`; the
    /// optional fields fall back to their defaults, as in Firecracker).
    pub fn set_machine_config(&mut self, machine: MachineConfig) -> Result<(), ResourceError> {
        self.change(|next| {
            next.machine = machine;
            Ok(())
        })
    }

    /// `PATCH /machine-config`: changes the fields given.
    pub fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> Result<(), ResourceError> {
        if update.is_empty() {
            return Err(ResourceError::EmptyPatch);
        }
        self.change(|next| {
            next.machine = update.apply(&next.machine);
            Ok(())
        })
    }

    /// `PUT /drives/{id}`: adds the drive, or replaces the one with its id
    /// in place. A root device goes first; there is at most one.
    pub fn put_drive(&mut self, drive: Drive) -> Result<(), ResourceError> {
        self.change(|next| {
            if drive.is_root_device {
                let other_root = next
                    .drives
                    .iter()
                    .find(|d| d.is_root_device && d.drive_id != drive.drive_id);
                if let Some(root) = other_root {
                    return Err(ResourceError::SecondRoot {
                        id: drive.drive_id.clone(),
                        root: root.drive_id.clone(),
                    });
                }
            }
            let old = next.drives.iter().position(|d| d.drive_id == drive.drive_id);
            if let Some(index) = old {
                next.drives.remove(index);
            }
            let index = match old {
                _ if drive.is_root_device => 0,
                Some(index) => index,
                None => next.drives.len(),
            };
            next.drives.insert(index, drive);
            Ok(())
        })
    }

    /// `PATCH /drives/{id}` before boot: a new file and/or new rate limits
    /// (Firecracker's PATCH rules: a bucket given replaces the old one).
    pub fn update_drive(&mut self, patch: &PartialDrive) -> Result<(), ResourceError> {
        self.change(|next| {
            let drive = next
                .drives
                .iter_mut()
                .find(|d| d.drive_id == patch.drive_id)
                .ok_or_else(|| ResourceError::UnknownDrive(patch.drive_id.clone()))?;
            if let Some(path) = &patch.path_on_host {
                drive.path_on_host = Some(path.clone());
            }
            if let Some(limits) = &patch.rate_limiter {
                let mut merged = drive.rate_limiter.unwrap_or_default();
                merged.update(limits);
                drive.rate_limiter = Some(merged);
            }
            Ok(())
        })
    }

    /// `PUT /network-interfaces/{id}`: adds the card, or replaces the one
    /// with its id in place (so the guest's eth numbering stays).
    pub fn put_net(&mut self, net: NetworkInterface) -> Result<(), ResourceError> {
        self.change(|next| {
            match next.nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
                Some(old) => *old = net,
                None => next.nets.push(net),
            }
            Ok(())
        })
    }

    /// `PATCH /network-interfaces/{id}` before boot: new rate limits.
    pub fn update_net(&mut self, patch: &PartialNetworkInterface) -> Result<(), ResourceError> {
        self.change(|next| {
            let net = next
                .nets
                .iter_mut()
                .find(|n| n.iface_id == patch.iface_id)
                .ok_or_else(|| ResourceError::UnknownNet(patch.iface_id.clone()))?;
            for (current, given) in [
                (&mut net.rx_rate_limiter, &patch.rx_rate_limiter),
                (&mut net.tx_rate_limiter, &patch.tx_rate_limiter),
            ] {
                if let Some(limits) = given {
                    let mut merged = current.unwrap_or_default();
                    merged.update(limits);
                    *current = Some(merged);
                }
            }
            Ok(())
        })
    }

    /// `PUT /vsock`: sets or replaces the vsock device.
    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ResourceError> {
        self.change(|next| {
            next.vsock = Some(vsock);
            Ok(())
        })
    }

    /// The VM to build at `InstanceStart`, checked by
    /// [`VmConfig::validate`].
    pub fn vm_config(&self) -> Result<VmConfig, ResourceError> {
        let boot = self.boot_source.as_ref().ok_or(ResourceError::NoBootSource)?;
        self.build(boot)
    }

    /// Applies `edit` to a copy and keeps it only if the VM it describes
    /// is still valid.
    fn change(
        &mut self,
        edit: impl FnOnce(&mut Self) -> Result<(), ResourceError>,
    ) -> Result<(), ResourceError> {
        let mut next = self.clone();
        edit(&mut next)?;
        // Before the boot source is given, the checks run against an empty
        // one: nothing but the kernel's path comes from it, and that is
        // not checked before the build.
        let boot = next.boot_source.clone().unwrap_or_default();
        next.build(&boot)?;
        *self = next;
        Ok(())
    }

    fn build(&self, boot: &BootSource) -> Result<VmConfig, ResourceError> {
        check_machine(&self.machine)?;
        let mut vm = VmConfig::new(&boot.kernel_image_path);
        vm.initrd = boot.initrd_path.clone();
        vm.cmdline = boot_cmdline(boot, self.drives.first());
        vm.acpi = !vm.cmdline.split_whitespace().any(|word| word == "acpi=off");
        vm.cpus = self.machine.vcpu_count;
        vm.memory_mib = self.machine.mem_size_mib;
        vm.disks = self.drives.iter().map(disk_config).collect::<Result<_, _>>()?;
        vm.nets = self.nets.iter().map(net_config).collect::<Result<_, _>>()?;
        vm.vsock = self.vsock.as_ref().map(vsock_config).transpose()?;
        vm.validate()?;
        Ok(vm)
    }

    /// Reads Firecracker's `--config-file` JSON and applies it as the API
    /// calls would, in Firecracker's order: machine config, boot source,
    /// drives, network interfaces, vsock.
    pub fn from_config_file(text: &str) -> Result<ConfigFile, ResourceError> {
        let file: FileShape =
            serde_json::from_str(text).map_err(|e| ResourceError::BadConfigFile(e.to_string()))?;
        file.refuse_unsupported()?;
        for key in file.unknown.keys() {
            log::warn!("config file: ignoring the unknown key {key:?}, as Firecracker does");
        }
        if let Some(metrics) = &file.metrics {
            metrics.check()?;
        }
        let mut resources = VmResources::default();
        if let Some(machine) = file.machine_config {
            resources.set_machine_config(machine)?;
        }
        resources.set_boot_source(file.boot_source)?;
        for drive in file.drives {
            resources.put_drive(drive)?;
        }
        for net in file.network_interfaces {
            resources.put_net(net)?;
        }
        if let Some(vsock) = file.vsock {
            resources.set_vsock(vsock)?;
        }
        Ok(ConfigFile {
            resources,
            logger: file.logger,
            metrics: file.metrics,
        })
    }
}

/// Firecracker's config file. Like Firecracker, it ignores keys it does
/// not know (its `VmmConfig` does not deny them): they are logged. Keys
/// Firecracker knows but kiln cannot honour are refused when given, and
/// `drives` may be left out (Firecracker requires it; nothing is lost by
/// not requiring it).
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileShape {
    boot_source: BootSource,
    #[serde(default)]
    drives: Vec<Drive>,
    machine_config: Option<MachineConfig>,
    #[serde(default)]
    network_interfaces: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
    logger: Option<Logger>,
    metrics: Option<Metrics>,
    balloon: Option<Value>,
    cpu_config: Option<Value>,
    mmds_config: Option<Value>,
    entropy: Option<Value>,
    pmem: Option<Value>,
    memory_hotplug: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

impl FileShape {
    fn refuse_unsupported(&self) -> Result<(), ResourceError> {
        let empty_list = |v: &Value| v.as_array().is_some_and(Vec::is_empty);
        for (key, value) in [
            ("balloon", &self.balloon),
            ("cpu-config", &self.cpu_config),
            ("mmds-config", &self.mmds_config),
            ("entropy", &self.entropy),
            ("pmem", &self.pmem),
            ("memory-hotplug", &self.memory_hotplug),
        ] {
            if value.as_ref().is_some_and(|v| !empty_list(v)) {
                return Err(ResourceError::UnsupportedKey(key));
            }
        }
        Ok(())
    }
}

/// The kernel command line: `boot_args` as given, or kiln's default.
///
/// Firecracker's default (`reboot=k panic=1 nomodule 8250.nr_uarts=0
/// i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce`) turns the
/// serial ports off, so a guest booted without `boot_args` would have no
/// console at all. kiln's [`config::DEFAULT_CMDLINE`] has the same reboot,
/// panic and i8042 settings but keeps ttyS0 as the console, and is what
/// `kiln boot` uses, so both ways of starting a VM boot the same guest.
/// A client that wants the serial port off says so in `boot_args`, as
/// Kata does (`8250.nr_uarts=0`).
///
/// A root drive with a `partuuid` becomes `root=PARTUUID=... ro|rw`, as
/// in Firecracker, unless the line names a root already: the rule kiln's
/// builder applies to the `root=/dev/vda` it adds for a root drive
/// without one.
fn boot_cmdline(boot: &BootSource, first: Option<&Drive>) -> String {
    let mut cmdline = boot
        .boot_args
        .clone()
        .unwrap_or_else(|| config::DEFAULT_CMDLINE.to_string());
    let names_root = cmdline.split_whitespace().any(|w| w.starts_with("root="));
    let root = first.filter(|d| d.is_root_device && !names_root);
    if let Some((drive, uuid)) = root.and_then(|d| d.partuuid.as_ref().map(|u| (d, u))) {
        let mode = if drive.is_read_only.unwrap_or(false) {
            "ro"
        } else {
            "rw"
        };
        cmdline = format!("{} root=PARTUUID={uuid} {mode}", cmdline.trim_end());
    }
    cmdline
}

/// The one vCPU and memory rule set is kiln's; what kiln cannot do at all
/// is refused here by name.
fn check_machine(machine: &MachineConfig) -> Result<(), ResourceError> {
    if machine.smt {
        return Err(ResourceError::Unsupported(
            "machine-config smt: kiln gives each vCPU a core of its own and cannot present \
             them as hyperthreads; set smt to false or leave it out",
        ));
    }
    if machine.track_dirty_pages {
        return Err(ResourceError::Unsupported(
            "machine-config track_dirty_pages: dirty pages serve diff snapshots, which kiln \
             does not take; set it to false or leave it out",
        ));
    }
    match machine.cpu_template {
        None | Some(CpuTemplate::None) => {}
        Some(template) => return Err(ResourceError::CpuTemplate(template)),
    }
    if machine.huge_pages != HugePages::None {
        return Err(ResourceError::HugePages(machine.huge_pages));
    }
    config::validate_cpus(u64::from(machine.vcpu_count)).map_err(|why| ResourceError::Machine {
        field: "vcpu_count",
        why: Box::new(why),
    })?;
    config::validate_memory(machine.mem_size_mib).map_err(|why| ResourceError::Machine {
        field: "mem_size_mib",
        why: Box::new(why),
    })?;
    Ok(())
}

/// One drive as kiln's disk, checked alone by [`DiskConfig::validate`].
fn disk_config(drive: &Drive) -> Result<DiskConfig, ResourceError> {
    let id = &drive.drive_id;
    let unsupported = |why| ResourceError::DriveUnsupported { id: id.clone(), why };
    if drive.socket.is_some() {
        return Err(unsupported(
            "socket (vhost-user-block) is not supported by kiln; give path_on_host instead",
        ));
    }
    let Some(path) = &drive.path_on_host else {
        return Err(unsupported("path_on_host is missing; give the image's file"));
    };
    if drive.io_engine == Some(IoEngine::Async) {
        return Err(unsupported(
            "io_engine Async (io_uring) is not supported by kiln; use Sync or leave io_engine out",
        ));
    }
    if let Some(partuuid) = &drive.partuuid {
        if !drive.is_root_device {
            return Err(unsupported(
                "partuuid names the root partition and needs is_root_device true; \
                 set it, or leave partuuid out",
            ));
        }
        check_partuuid(id, partuuid)?;
    }
    let mut block = BlockConfig::new(path);
    block.read_only = drive.is_read_only.unwrap_or(false);
    block.id = Some(id.clone());
    block.cache = match drive.cache_type.unwrap_or_default() {
        CacheType::Unsafe => CacheMode::Unsafe,
        CacheType::Writeback => CacheMode::Writeback,
    };
    block.rate_limiter = drive.rate_limiter.unwrap_or_default();
    let disk = DiskConfig {
        block,
        root: drive.is_root_device,
    };
    disk.validate()
        .map_err(|why| ResourceError::Drive { id: id.clone(), why })?;
    Ok(disk)
}

/// A partuuid lands in the command line, so it must be one word: a GPT
/// UUID or an MBR `SSSSSSSS-PP`, optionally with the kernel's
/// `/PARTNROFF=N` suffix.
fn check_partuuid(id: &str, partuuid: &str) -> Result<(), ResourceError> {
    let (uuid, offset) = match partuuid.split_once("/PARTNROFF=") {
        Some((uuid, n)) => (uuid, Some(n)),
        None => (partuuid, None),
    };
    let uuid_ok = !uuid.is_empty() && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let offset_ok = offset.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if uuid_ok && offset_ok {
        return Ok(());
    }
    Err(ResourceError::BadPartuuid {
        id: id.to_string(),
        partuuid: partuuid.to_string(),
    })
}

/// One interface as kiln's card, checked alone by [`NetConfig::validate`].
fn net_config(net: &NetworkInterface) -> Result<NetConfig, ResourceError> {
    let id = &net.iface_id;
    if net.mtu.is_some() {
        return Err(ResourceError::NetUnsupported {
            id: id.clone(),
            why: "mtu is not supported by kiln: the guest gets the tap's MTU; set that on the host and leave mtu out",
        });
    }
    let invalid = |why: NetError| ResourceError::Net { id: id.clone(), why };
    let mac = net.guest_mac.as_deref().map(str::parse).transpose();
    let card = NetConfig {
        tap: net.host_dev_name.clone(),
        mac: mac.map_err(|e| invalid(NetError::Mac(e)))?,
        id: Some(id.clone()),
        rx_rate_limiter: net.rx_rate_limiter.unwrap_or_default(),
        tx_rate_limiter: net.tx_rate_limiter.unwrap_or_default(),
    };
    card.validate().map_err(invalid)?;
    Ok(card)
}

fn vsock_config(vsock: &Vsock) -> Result<VsockConfig, ResourceError> {
    let device = VsockConfig {
        cid: vsock.guest_cid,
        socket: PathBuf::from(&vsock.uds_path),
    };
    device.validate().map_err(ResourceError::Vsock)?;
    Ok(device)
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
