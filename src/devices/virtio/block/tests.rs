//! Request handling through the device's queue, as a driver would submit it.

use std::fs;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::features::*;
use super::request_status::{IOERR, OK};
use super::request_type::*;
use super::*;
use crate::devices::virtio::test_utils::guest_bytes;
pub use crate::devices::virtio::test_utils::{
    activation, link, pattern, r, w, CountingInterrupt, DriverRing, D, INDIRECT_FLAG, NEXT, WRITE,
};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemoryMmap;

pub const MEM_SIZE: u64 = 0x10_0000;
/// The queue's rings: descriptor table at 0, then these.
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const HDR: u64 = 0x3_0000;
pub const STATUS: u64 = 0x3_1000;
pub const INDIRECT: u64 = 0x3_2000;
pub const DATA: u64 = 0x4_0000;
pub const IMAGE_LEN: usize = 64 * 1024;
pub const QUEUE_LEN: u16 = 256;

pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub image: TempFile,
    pub dev: BlockDevice,
    pub irq: Arc<CountingInterrupt>,
    /// The driver's side of the request queue.
    pub ring: DriverRing,
}

/// Where the harness's driver keeps the request queue.
pub fn request_ring() -> DriverRing {
    DriverRing {
        size: QUEUE_LEN,
        desc: 0,
        avail: AVAIL_RING,
        used: USED_RING,
    }
}

pub fn harness(read_only: bool) -> Harness {
    harness_with(read_only, Some("kiln-test-disk".into()))
}

pub fn harness_with(read_only: bool, id: Option<String>) -> Harness {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    harness_in(mem, read_only, id)
}

/// A harness over `mem`, which must hold the first `MEM_SIZE` bytes.
pub fn harness_in(mem: GuestMemoryMmap, read_only: bool, id: Option<String>) -> Harness {
    let image = TempFile::new().unwrap();
    fs::write(image.as_path(), pattern(IMAGE_LEN)).unwrap();
    let dev = BlockDevice::new(BlockConfig {
        path: image.as_path().to_path_buf(),
        read_only,
        id,
        ..BlockConfig::default()
    })
    .unwrap();
    Harness::activated(dev, image, mem, u64::MAX)
}

impl Harness {
    /// `dev` activated over `mem`, with the features it offers masked by
    /// `acked`.
    pub fn activated(mut dev: BlockDevice, image: TempFile, mem: GuestMemoryMmap, acked: u64) -> Self {
        let irq = Arc::new(CountingInterrupt::default());
        dev.activate(activation(
            dev.device_features() & acked,
            mem.clone(),
            irq.clone(),
        ))
        .unwrap();
        Self {
            mem,
            image,
            dev,
            irq,
            ring: request_ring(),
        }
    }

    pub fn header(&self, kind: u32, sector: u64) {
        self.header_at(HDR, kind, sector);
    }

    pub fn header_at(&self, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    /// Writes one discard/write-zeroes segment at `addr`.
    pub fn segment(&self, addr: u64, sector: u64, sectors: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&sectors.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&s, GuestAddress(addr)).unwrap();
    }

    /// A fresh queue holding `table` at descriptor index 0 and `heads` in
    /// the available ring.
    pub fn queue_with(&self, table: &[RawDescriptor], heads: &[u16]) -> Queue {
        self.ring.load(&self.mem, table, heads)
    }

    /// Submits one chain and returns the used length the device reported.
    pub fn submit(&mut self, descs: &[D]) -> u32 {
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let mut q = self.queue_with(&link(descs, 0), &[0]);
        self.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
        assert_eq!(self.used_idx(), 1, "the chain must be returned");
        let (id, len) = self.used(0);
        assert_eq!(id, 0);
        len
    }

    pub fn used_idx(&self) -> u16 {
        self.ring.used_idx(&self.mem)
    }

    /// (id, len) of used-ring entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        self.ring.used(&self.mem, i)
    }

    pub fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    pub fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        guest_bytes(&self.mem, addr, len)
    }

    pub fn fill_guest(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        fs::read(self.image.as_path()).unwrap()
    }
}

#[test]
fn read_fills_guest_buffers() {
    let mut h = harness(false);
    h.header(IN, 2);
    let used = h.submit(&[r(HDR, 16), w(DATA, 512), w(DATA + 0x1000, 1024), w(STATUS, 1)]);
    assert_eq!(h.status(), OK);
    assert_eq!(used, 1536 + 1);
    let image = pattern(IMAGE_LEN);
    assert_eq!(h.guest_bytes(DATA, 512), image[1024..1536]);
    assert_eq!(h.guest_bytes(DATA + 0x1000, 1024), image[1536..2560]);
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 1);
}

#[test]
fn write_then_flush_reaches_the_image() {
    let mut h = harness(false);
    h.fill_guest(DATA, &[7; 512]);
    h.fill_guest(DATA + 0x800, &[8; 512]);
    h.header(OUT, 4);
    let used = h.submit(&[r(HDR, 16), r(DATA, 512), r(DATA + 0x800, 512), w(STATUS, 1)]);
    assert_eq!((h.status(), used), (OK, 1));
    h.header(FLUSH, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);
    let image = h.image_bytes();
    assert_eq!(image[2048..2560], [7; 512]);
    assert_eq!(image[2560..3072], [8; 512]);
    assert_eq!(image[..2048], pattern(IMAGE_LEN)[..2048]);
}

#[test]
fn any_descriptor_layout_is_accepted() {
    let mut h = harness(false);
    // Header split 10 + 6; data and status share one descriptor.
    h.header(IN, 1);
    let used = h.submit(&[r(HDR, 10), r(HDR + 10, 6), w(DATA, 513)]);
    assert_eq!(used, 513);
    assert_eq!(h.guest_bytes(DATA, 512), pattern(IMAGE_LEN)[512..1024]);
    assert_eq!(h.guest_bytes(DATA + 512, 1), [OK]);

    // Header and data in one readable descriptor.
    h.header_at(DATA, OUT, 8);
    h.fill_guest(DATA + 16, &[3; 1024]);
    assert_eq!(h.submit(&[r(DATA, 16 + 1024), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);
    assert_eq!(h.image_bytes()[4096..5120], [3; 1024]);
}

#[test]
fn get_id_returns_the_serial() {
    let mut h = harness(false);
    h.header(GET_ID, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]), 21);
    assert_eq!(h.status(), OK);
    let mut expected = [0u8; 20];
    expected[..14].copy_from_slice(b"kiln-test-disk");
    assert_eq!(h.guest_bytes(DATA, 20), expected);

    // A short buffer gets what fits.
    h.fill_guest(DATA, &[0xff; 20]);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 4), w(STATUS, 1)]), 5);
    assert_eq!(h.guest_bytes(DATA, 5), [b'k', b'i', b'l', b'n', 0xff]);
}

#[test]
fn default_id_comes_from_the_image_file() {
    use std::os::unix::fs::MetadataExt;
    let mut h = harness_with(true, None);
    let meta = fs::metadata(h.image.as_path()).unwrap();
    let expected = format!("{:x}-{:x}", meta.dev(), meta.ino());
    h.header(GET_ID, 0);
    h.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    let got = h.guest_bytes(DATA, 20);
    let text = String::from_utf8(got.into_iter().take_while(|&b| b != 0).collect()).unwrap();
    assert!(
        expected.ends_with(&text) && !text.is_empty(),
        "{text} vs {expected}"
    );
}

#[test]
fn discard_and_write_zeroes() {
    let mut h = harness(false);
    h.header(DISCARD, 0);
    h.segment(DATA, 16, 8, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), OK);

    // One segment per write-zeroes request (MAX_WRITE_ZEROES_SEGMENTS).
    h.header(WRITE_ZEROES, 0);
    for (sector, sectors, flags) in [(2, 2, 0), (40, 3, 1)] {
        h.segment(DATA, sector, sectors, flags);
        assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
        assert_eq!(h.status(), OK);
    }
    let image = h.image_bytes();
    assert_eq!(image.len(), IMAGE_LEN);
    assert!(image[1024..2048].iter().all(|&b| b == 0));
    assert!(image[40 * 512..43 * 512].iter().all(|&b| b == 0));
    assert_eq!(image[2048], pattern(IMAGE_LEN)[2048]);
}

#[test]
fn indirect_descriptors_work() {
    let mut h = harness(false);
    h.header(IN, 0);
    let table = link(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], 0);
    for (i, desc) in table.iter().enumerate() {
        h.mem
            .write_obj(*desc, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let used = h.submit(&[D {
        addr: INDIRECT,
        len: 48,
        flags: INDIRECT_FLAG,
    }]);
    assert_eq!((used, h.status()), (513, OK));
    assert_eq!(h.guest_bytes(DATA, 512), pattern(IMAGE_LEN)[..512]);
}

#[test]
fn one_notification_serves_many_requests() {
    let mut h = harness(false);
    h.header(IN, 0);
    h.header_at(HDR + 16, FLUSH, 0);
    let mut table = link(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], 0);
    table.extend(link(&[r(HDR + 16, 16), w(STATUS + 1, 1)], 3));
    let mut q = h.queue_with(&table, &[0, 3]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.used(0), (0, 513));
    assert_eq!(h.used(1), (3, 1));
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 1, "one interrupt for the batch");
}

#[test]
fn features_and_config_space() {
    let h = harness(false);
    let f = h.dev.device_features();
    for bit in [
        32,
        28,
        29,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & 1 << bit, 0, "bit {bit}");
    }
    assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(h.dev.device_type(), BLOCK_DEVICE_ID);
    assert_eq!(h.dev.queue_max_sizes(), [256]);
    let mut capacity = [0u8; 8];
    h.dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), (IMAGE_LEN / 512) as u64);
    assert_eq!(h.dev.capacity_sectors(), (IMAGE_LEN / 512) as u64);
    let mut blk_size = [0u8; 4];
    h.dev.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 512);

    let ro = harness(true);
    let f = ro.dev.device_features();
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    assert!(ro.dev.is_read_only());
}

#[test]
fn open_errors_are_one_clear_line() {
    let image = TempFile::new().unwrap();
    fs::write(image.as_path(), [0u8; 512]).unwrap();
    let path = image.as_path().to_path_buf();
    let err = BlockDevice::new(BlockConfig {
        id: Some("x".repeat(21)),
        ..BlockConfig::new(&path)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("20"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    let err = BlockDevice::new(BlockConfig::new("/nonexistent/disk.img"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/disk.img"), "{err}");

    fs::write(image.as_path(), [0u8; 700]).unwrap();
    let err = BlockDevice::new(BlockConfig::new(&path))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("multiple of 512"), "{err}");
}

#[test]
fn reset_stops_processing() {
    let mut h = harness(false);
    h.dev.reset();
    h.header(IN, 0);
    let mut q = h.queue_with(&link(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], 0), &[0]);
    h.dev.process_queue(0, std::slice::from_mut(&mut q)).unwrap();
    assert_eq!(h.used_idx(), 0);
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 0);
}

#[test]
fn cache_none_requests_work() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let image = TempFile::new().unwrap();
    fs::write(image.as_path(), pattern(IMAGE_LEN)).unwrap();
    let config = BlockConfig {
        cache: CacheMode::None,
        ..BlockConfig::new(image.as_path())
    };
    let dev = match BlockDevice::new(config) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let mut h = Harness::activated(dev, image, mem, u64::MAX);
    h.fill_guest(DATA, &[9; 1024]);
    h.header(OUT, 3);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 1024), w(STATUS, 1)]), 1);
    h.header(IN, 3);
    assert_eq!(
        h.submit(&[r(HDR, 16), w(DATA + 0x1000, 1024), w(STATUS, 1)]),
        1025
    );
    assert_eq!(h.guest_bytes(DATA + 0x1000, 1024), [9; 1024]);
    assert_eq!(h.status(), OK);
    assert_eq!(h.image_bytes()[1536..2560], [9; 1024]);
    assert_ne!(h.status(), IOERR);
}
