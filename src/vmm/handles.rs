//! The running VM's devices by id, for the changes an API makes while the
//! guest runs (Firecracker's `PATCH /drives/{id}` and
//! `PATCH /network-interfaces/{id}`), and its keyboard controller (its
//! `SendCtrlAltDel` action). Use on the VMM thread: each call takes the
//! device's lock for one short change, as a queue pass does.

use crate::backends::tap::TapBackend;
use crate::devices::legacy::i8042::{I8042Device, I8042Error};
use crate::devices::virtio::block::{BlockDevice, BlockError};
use crate::devices::virtio::net::NetDevice;
use crate::devices::virtio::SharedTransport;
use crate::rate_limiter::{RateLimitConfigError, RateLimiterConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A disk behind its transport.
pub type BlockHandle = SharedTransport<BlockDevice>;
/// A network card behind its transport.
pub type NetHandle = SharedTransport<NetDevice<TapBackend>>;
/// The i8042, shared with the port bus.
pub type I8042Handle = Arc<Mutex<I8042Device>>;

#[derive(Debug, thiserror::Error)]
pub enum DeviceUpdateError {
    #[error("no drive with id {0:?}; give the id the drive was added with")]
    UnknownDrive(String),
    #[error("no network interface with id {0:?}; give the id the interface was added with")]
    UnknownNet(String),
    #[error("drive {id:?}: {source}")]
    Drive { id: String, source: BlockError },
    #[error("{what} {id:?}: {source}")]
    RateLimit {
        what: &'static str,
        id: String,
        source: RateLimitConfigError,
    },
    #[error("this VM has no i8042 keyboard controller to send Ctrl+Alt+Del to")]
    NoI8042,
    #[error("cannot send Ctrl+Alt+Del: {0}")]
    I8042(#[from] I8042Error),
}

/// Disks and network cards by id (devices added without an id cannot be
/// changed at run time), and the keyboard controller.
#[derive(Default)]
pub struct DeviceHandles {
    drives: BTreeMap<String, BlockHandle>,
    nets: BTreeMap<String, NetHandle>,
    i8042: Option<I8042Handle>,
}

impl DeviceHandles {
    pub fn set_i8042(&mut self, handle: I8042Handle) {
        self.i8042 = Some(handle);
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard (Firecracker's
    /// `SendCtrlAltDel`). A Linux guest with the AT keyboard driver passes
    /// it to init, which reboots; with `reboot=k` kiln then exits as for
    /// any reset. Fails only if the guest left earlier presses unread.
    pub fn send_ctrl_alt_del(&self) -> Result<(), DeviceUpdateError> {
        let i8042 = self.i8042.as_ref().ok_or(DeviceUpdateError::NoI8042)?;
        crate::sync::lock(i8042).trigger_ctrl_alt_del()?;
        Ok(())
    }

    pub fn add_drive(&mut self, id: String, handle: BlockHandle) {
        self.drives.insert(id, handle);
    }

    pub fn add_net(&mut self, id: String, handle: NetHandle) {
        self.nets.insert(id, handle);
    }

    pub fn drive(&self, id: &str) -> Result<&BlockHandle, DeviceUpdateError> {
        self.drives
            .get(id)
            .ok_or_else(|| DeviceUpdateError::UnknownDrive(id.to_string()))
    }

    pub fn net(&self, id: &str) -> Result<&NetHandle, DeviceUpdateError> {
        self.nets
            .get(id)
            .ok_or_else(|| DeviceUpdateError::UnknownNet(id.to_string()))
    }

    /// New rate limits for drive `id` (Firecracker's PATCH rules).
    pub fn update_drive_rate_limiter(
        &self,
        id: &str,
        patch: &RateLimiterConfig,
    ) -> Result<(), DeviceUpdateError> {
        let mut transport = crate::sync::lock(self.drive(id)?);
        transport
            .device_mut()
            .update_rate_limiter(patch)
            .map_err(|source| DeviceUpdateError::RateLimit {
                what: "drive",
                id: id.to_string(),
                source,
            })
    }

    /// A new medium for drive `id`: the guest sees its size change.
    pub fn swap_drive_file(&self, id: &str, path: &Path) -> Result<(), DeviceUpdateError> {
        let mut transport = crate::sync::lock(self.drive(id)?);
        transport
            .device_mut()
            .swap_backing_file(path)
            .map_err(|source| DeviceUpdateError::Drive {
                id: id.to_string(),
                source,
            })
    }

    /// New rate limits for interface `id`; `None` leaves a direction as is.
    pub fn update_net_rate_limiters(
        &self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), DeviceUpdateError> {
        let mut transport = crate::sync::lock(self.net(id)?);
        transport
            .device_mut()
            .update_rate_limiters(rx, tx)
            .map_err(|source| DeviceUpdateError::RateLimit {
                what: "network interface",
                id: id.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::BlockConfig;
    use crate::devices::virtio::{IrqfdInterrupt, MmioTransport};
    use crate::rate_limiter::TokenBucketConfig;
    use crate::vstate::memory::GuestMemoryMmap;

    #[test]
    fn drives_are_found_by_id_and_unknown_ids_say_so() {
        let image = TempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let bigger = TempFile::new().unwrap();
        bigger.as_file().set_len(8192).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 16)]).unwrap();
        let device = BlockDevice::new(BlockConfig::new(image.as_path())).unwrap();
        let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem, irq).unwrap()));
        let mut handles = DeviceHandles::default();
        handles.add_drive("rootfs".into(), transport.clone());

        let limits = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 100,
            }),
            ops: None,
        };
        handles.update_drive_rate_limiter("rootfs", &limits).unwrap();
        assert_eq!(transport.lock().unwrap().device().rate_limiter(), &limits);
        handles.swap_drive_file("rootfs", bigger.as_path()).unwrap();
        assert_eq!(transport.lock().unwrap().device().capacity_sectors(), 16);

        for err in [
            handles.update_drive_rate_limiter("data", &limits).unwrap_err(),
            handles.swap_drive_file("data", bigger.as_path()).unwrap_err(),
            handles.update_net_rate_limiters("eth0", None, None).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.starts_with("no ") && !text.contains('\n'), "{text}");
        }
        let bad = RateLimiterConfig {
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: None,
                refill_time: 0,
            }),
            bandwidth: None,
        };
        let err = handles
            .update_drive_rate_limiter("rootfs", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("drive \"rootfs\": ops rate limit"), "{err}");
        let err = handles
            .swap_drive_file("rootfs", Path::new("/nonexistent/x.img"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("drive \"rootfs\": ") && err.contains("/nonexistent/x.img"),
            "{err}"
        );
    }
}
