//! A real virtio-blk device behind the transport and the event loop: a
//! pass that yields is resumed only after everything else that is ready,
//! and a reset between passes, or a stale notification after a restart,
//! does no harm.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use crate::devices::virtio::block::{request_type, BlockConfig, BlockDevice};
use crate::devices::virtio::features::VIRTIO_F_VERSION_1;
use crate::devices::virtio::queue::PassBudget;
use crate::devices::virtio::status::DEVICE_NEEDS_RESET;
use crate::devices::virtio::test_utils::{link, memory, other_source, r, w, wire, DriverRing, Wired};
use crate::vstate::memory::GuestMemoryMmap;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const STATUS: u64 = 0x10_0800;

struct Rig {
    mem: GuestMemoryMmap,
    wired: Wired<BlockDevice>,
    kick: EventFd,
    other: EventFd,
    other_served: Arc<AtomicU32>,
    _image: TempFile,
}

fn rig() -> Rig {
    let mem = memory(&[(0, 0x40_0000)]);
    let image = TempFile::new().unwrap();
    image.as_file().set_len(1 << 20).unwrap();
    let dev = BlockDevice::new(BlockConfig::new(image.as_path())).unwrap();
    let mut wired = wire(dev, &mem);
    let kick = wired.kicks[0].try_clone().unwrap();
    let (other, other_served) = other_source(&mut wired.event_loop);
    mem.write_slice(&request_type::IN.to_le_bytes(), GuestAddress(HDR))
        .unwrap();
    Rig {
        mem,
        wired,
        kick,
        other,
        other_served,
        _image: image,
    }
}

impl Rig {
    /// Starts the driver on a fresh ring at `base` holding one read
    /// request at head 0, made available `count` times.
    fn start(&self, base: u64, count: u16) -> DriverRing {
        let ring = DriverRing::at(&self.mem, base, 256);
        ring.set_desc_table(&self.mem, 0, &link(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], 0));
        self.wired.start(1 << VIRTIO_F_VERSION_1, &[ring]);
        ring.publish(&self.mem, &vec![0; usize::from(count)]);
        ring
    }

    fn status(&self) -> u32 {
        self.wired.status()
    }
}

/// 200 requests after one kick: each pass serves at most a budget's worth
/// and yields; the other subscriber, ready all along, is served in the
/// very first round of the event loop, not after the queue is empty.
#[test]
fn a_yielded_pass_resumes_after_the_other_ready_events() {
    let mut rig = rig();
    let ring = rig.start(0x1000, 200);
    rig.kick.write(1).unwrap();
    rig.other.write(1).unwrap();
    let mut served = vec![];
    loop {
        let events = rig.wired.run();
        if events == 0 {
            break;
        }
        served.push(ring.used_idx(&rig.mem));
        assert!(served.len() < 50, "never drained: {served:?}");
    }
    assert_eq!(rig.other_served.load(Ordering::SeqCst), 1);
    assert!(
        served[0] <= PassBudget::DEFAULT.chains as u16,
        "first round: {served:?}"
    );
    assert!(served.len() >= 4, "{served:?}");
    assert_eq!(*served.last().unwrap(), 200);
    assert_eq!(rig.status() & DEVICE_NEEDS_RESET, 0);
}

/// The driver resets the device while a pass is pending (yielded and
/// re-armed): the pending pass finds the device stopped, and nothing more
/// of the old ring is touched.
#[test]
fn a_reset_between_passes_stops_the_work() {
    let mut rig = rig();
    let ring = rig.start(0x1000, 200);
    rig.kick.write(1).unwrap();
    assert_eq!(rig.wired.run(), 1);
    let done = ring.used_idx(&rig.mem);
    assert!(done > 0 && done < 200, "{done}");
    rig.wired.reset();
    assert_eq!(rig.wired.run(), 1, "the re-armed pass");
    assert_eq!(rig.wired.run(), 0, "and no more");
    assert_eq!(ring.used_idx(&rig.mem), done);
    assert_eq!(rig.status(), 0);
}

/// A notification left in the eventfd from before a reset reaches the
/// restarted device: it serves the new ring (from its start) and never
/// the old one, and is not taken for a broken ring.
#[test]
fn a_stale_notification_after_restart_is_harmless() {
    let mut rig = rig();
    let old = rig.start(0x1000, 3);
    rig.kick.write(5).unwrap();
    // Restart on a new ring with nothing available yet.
    let new = rig.start(0x8000, 0);
    assert_eq!(rig.wired.run(), 1);
    assert_eq!((old.used_idx(&rig.mem), new.used_idx(&rig.mem)), (0, 0));
    assert_eq!(rig.status() & DEVICE_NEEDS_RESET, 0);
    // Now with requests on it, and a stale count again.
    rig.kick.write(1).unwrap();
    let new = rig.start(0x8000, 2);
    assert_eq!(rig.wired.run(), 1);
    assert_eq!((old.used_idx(&rig.mem), new.used_idx(&rig.mem)), (0, 2));
    assert_eq!(rig.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(rig.status() & DEVICE_NEEDS_RESET, 0);
}
