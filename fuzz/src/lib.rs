//! What kiln's fuzz targets share: guest memory shaped like a real guest's,
//! a virtio-blk device on a scratch image, and the structured inputs of the
//! stateful targets together with an encoder that writes seed inputs in the
//! byte format `arbitrary` reads (see `examples/write_seeds.rs`).

pub mod encode;
pub mod mmio_input;
pub mod net_input;
pub mod queue_input;
pub mod vsock_driver;
pub mod vsock_input;

use std::path::Path;
use std::sync::Arc;

use kiln::devices::virtio::block::{BlockConfig, BlockDevice};
use kiln::devices::virtio::{Activation, HostEvents, Interrupt, VirtioDevice};
use kiln::vstate::memory::GuestMemoryMmap;
use vm_memory::GuestAddress;
use vmm_sys_util::tempfile::TempFile;

/// Guest RAM: two adjacent regions (so buffers and rings can straddle a
/// region boundary) and a hole before the third, as around the 3-4 GiB gap.
pub const GUEST_REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x2_1000, 0xf000)];
/// One past the last guest address.
pub const GUEST_END: u64 = 0x3_0000;

pub fn guest_memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = GUEST_REGIONS
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("fuzz guest memory")
}

/// Whether `[addr, addr + len)` is all guest RAM, worked out from
/// `GUEST_REGIONS` alone (not with vm-memory) so checks against it are
/// independent of the code under test.
pub fn in_guest_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    // Merge adjacent regions, then the range must sit inside one run.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(start, size) in &GUEST_REGIONS {
        let region_end = start + size as u64;
        match runs.last_mut() {
            Some(run) if run.1 == start => run.1 = region_end,
            _ => runs.push((start, region_end)),
        }
    }
    runs.iter()
        .any(|&(start, run_end)| addr >= start && end <= run_end)
}

/// Interrupts go nowhere; the targets check the rings instead.
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn trigger(&self, _reason: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file on tmpfs when there is one: the targets create, write and sync
/// it millions of times, and a disk-backed sync is slow.
pub fn scratch_file() -> TempFile {
    let shm = Path::new("/dev/shm");
    let file = if shm.is_dir() {
        TempFile::new_in(shm)
    } else {
        TempFile::new()
    };
    file.expect("scratch file for fuzzing")
}

/// A writable virtio-blk device and the image file it keeps open.
pub struct ScratchDisk {
    pub device: BlockDevice,
    pub image: TempFile,
}

pub fn scratch_disk(image_len: u64) -> ScratchDisk {
    let image = scratch_file();
    image.as_file().set_len(image_len).expect("size scratch image");
    let device = BlockDevice::new(BlockConfig::new(image.as_path())).expect("open scratch image");
    ScratchDisk { device, image }
}

/// `scratch_disk`, activated with every feature it offers on `mem`.
pub fn active_scratch_disk(image_len: u64, mem: &GuestMemoryMmap) -> ScratchDisk {
    let mut disk = scratch_disk(image_len);
    let features = disk.device.device_features();
    disk.device
        .activate(Activation::new(
            features,
            mem.clone(),
            Arc::new(NoInterrupt),
            Arc::new(HostEvents::new().expect("epoll set")),
        ))
        .expect("activate scratch disk");
    disk
}
