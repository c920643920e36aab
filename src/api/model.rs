//! The bodies of Firecracker's API, with its field names, so that its
//! clients (Kata Containers, the Firecracker SDKs, plain `curl` scripts)
//! talk to kiln unchanged.
//!
//! These types only carry what a request says. Whether kiln can do it is
//! decided once, when [`super::resources::VmResources`] turns them into
//! kiln's own configs: a field kiln cannot honour is refused there with a
//! message, never dropped. A struct refuses unknown fields exactly where
//! Firecracker's does (all but [`Metrics`]), so a typo is an error here as
//! it is there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::resources::ResourceError;
pub use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// Parses one request body. serde's message is one line and names the
/// field and position, which is what a client needs to fix its request.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ResourceError> {
    serde_json::from_slice(body).map_err(|e| ResourceError::BadJson(e.to_string()))
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// The whole kernel command line; absent means kiln's default (see
    /// `resources`), not an empty line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Firecracker's CPU templates, all named so that asking for one gets
/// kiln's own refusal rather than serde's "unknown variant".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// How guest memory is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Transparent => "Transparent",
            Self::Hugetlbfs2M => "2M",
        })
    }
}

/// `PUT /machine-config`, and what `GET /machine-config` answers.
/// `vcpu_count` is a u8 as in Firecracker, so 256 is a type error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker leaves it out of its answer when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    /// Firecracker's defaults, which are also kiln's: one vCPU, 128 MiB.
    fn default() -> Self {
        Self {
            vcpu_count: crate::config::DEFAULT_CPUS,
            mem_size_mib: crate::config::DEFAULT_MEMORY_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: what is given replaces, the rest stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether the PATCH asks for nothing (Firecracker refuses that).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `base` with this update applied.
    pub fn apply(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            cpu_template: self.cpu_template.or(base.cpu_template),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

/// A drive's cache mode. Firecracker's default is `Unsafe` (no flush
/// advertised), and a client that leaves the field out gets that here too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

/// How a drive's file is read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

/// `PUT /drives/{drive_id}`. `path_on_host` is optional here only because
/// Firecracker's vhost-user drives (`socket`) have none; kiln needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}`: a new file and/or new rate limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /network-interfaces/{iface_id}`. The MAC stays text here: kiln's
/// own parser reads it, with kiln's message, when the card is built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Newer Firecrackers take it; named so that kiln can refuse it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`. `vsock_id` is deprecated in Firecracker, which accepts
/// and ignores it; Kata still sends `"root"`, so kiln does the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// A log level, read as Firecracker reads it: any case, and `Warning` for
/// `Warn` (its older spelling, which clients still send).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    Off,
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Off => log::LevelFilter::Off,
            Self::Trace => log::LevelFilter::Trace,
            Self::Debug => log::LevelFilter::Debug,
            Self::Info => log::LevelFilter::Info,
            Self::Warn => log::LevelFilter::Warn,
            Self::Error => log::LevelFilter::Error,
        }
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" | "warning" => Self::Warn,
            "error" => Self::Error,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown log level {name:?}; use Error, Warning, Info, Debug, Trace or Off"
                )))
            }
        })
    }
}

/// `PUT /logger`. Without `log_path` the log goes where kiln's goes
/// already (Firecracker: standard output).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`. The one body Firecracker does not check for unknown
/// fields, so neither does kiln; its two newer fields kiln cannot honour
/// are named so that [`Metrics::check`] refuses them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_id: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

impl Metrics {
    /// Refuses what kiln's metrics writer cannot do.
    pub fn check(&self) -> Result<(), ResourceError> {
        if self.emit_id {
            return Err(ResourceError::Unsupported(
                "metrics emit_id: kiln's metrics lines carry no instance id; set it to false or leave it out",
            ));
        }
        if self.properties.is_some() {
            return Err(ResourceError::Unsupported(
                "metrics properties: kiln's metrics lines carry no extra fields; leave properties out",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionInfo {
    pub action_type: ActionType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    Paused,
    Resumed,
}

/// `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub state: VmRunState,
}

/// The instance's state as `GET /` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    #[default]
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /`: answered, never received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

/// `GET /version`: Firecracker's field name, kiln's version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub fault_message: String,
}

impl ApiError {
    /// The JSON of an error answer carrying `message`.
    pub fn json(message: impl fmt::Display) -> String {
        let body = Self {
            fault_message: message.to_string(),
        };
        // A struct of one String always serialises.
        serde_json::to_string(&body).unwrap_or_else(|_| String::from(r#"{"fault_message":""}"#))
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
