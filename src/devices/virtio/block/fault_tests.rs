//! A disk that fails under the guest: a sync error, a full filesystem, an
//! image shrunk by another process, and a driver without the flush command.
//! The guest always gets a status, IOERR wherever its data is not safe and
//! never OK over lost data, and the device keeps serving requests.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use vm_memory::GuestAddress;
use vmm_sys_util::tempfile::TempFile;

use super::features::VIRTIO_BLK_F_FLUSH;
use super::request_status::{IOERR, OK};
use super::request_type::*;
use super::tests::*;
use super::*;
use crate::backends::image_io::testing::FaultyIo;
use crate::backends::FileBackend;
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemoryMmap;

const ALL_BUT_FLUSH: u64 = !(1 << VIRTIO_BLK_F_FLUSH);

/// A device over `image` whose system calls go through the returned fault
/// injector, activated with the offered features masked by `acked`.
fn faulty_harness(image: TempFile, cache: CacheMode, shared: bool, acked: u64) -> (Harness, FaultyIo) {
    let faults = FaultyIo::default();
    let backend = FileBackend::open(image.as_path(), false, cache, shared)
        .unwrap()
        .with_io(faults.boxed());
    let dev = BlockDevice::with_backend(
        backend,
        *b"kiln-fault-test\0\0\0\0\0",
        crate::rate_limiter::RateLimiter::new(&Default::default()).unwrap(),
    );
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    (Harness::activated(dev, image, mem, acked), faults)
}

fn patterned_image() -> TempFile {
    let image = TempFile::new().unwrap();
    fs::write(image.as_path(), pattern(IMAGE_LEN)).unwrap();
    image
}

/// Writes `len` bytes of `byte` at `sector`; returns the status.
fn write(h: &mut Harness, sector: u64, byte: u8, len: u32) -> u8 {
    h.fill_guest(DATA, &vec![byte; len as usize]);
    h.header(OUT, sector);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, len), w(STATUS, 1)]), 1);
    h.status()
}

/// Reads `len` bytes at `sector`; returns the status and the used length.
fn read(h: &mut Harness, sector: u64, len: u32) -> (u8, u32) {
    h.header(IN, sector);
    let used = h.submit(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)]);
    (h.status(), used)
}

fn flush(h: &mut Harness) -> u8 {
    h.header(FLUSH, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    h.status()
}

fn write_zeroes(h: &mut Harness, sector: u64, sectors: u32) -> u8 {
    h.header(WRITE_ZEROES, 0);
    h.segment(DATA, sector, sectors, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
    h.status()
}

#[test]
fn flush_after_a_failed_sync_keeps_failing() {
    let (mut h, faults) = faulty_harness(patterned_image(), CacheMode::Writeback, false, !0);
    assert_eq!(write(&mut h, 0, 1, 512), OK);
    assert_eq!(flush(&mut h), OK);
    assert_eq!(write(&mut h, 1, 2, 512), OK);
    faults.fail_next_sync(libc::EIO);
    assert_eq!(flush(&mut h), IOERR);
    // The kernel reported the error once; a second fdatasync would succeed
    // with the written data gone.
    for _ in 0..3 {
        assert_eq!(flush(&mut h), IOERR, "no OK over lost data");
    }
    assert_eq!(read(&mut h, 0, 1024), (OK, 1025), "reads go on");
    assert_eq!(h.guest_bytes(DATA, 1024)[512..], [2; 512]);
}

#[test]
fn driver_without_flush_gets_durable_writes() {
    let (mut h, faults) = faulty_harness(patterned_image(), CacheMode::Writeback, false, ALL_BUT_FLUSH);
    assert_eq!(write(&mut h, 0, 1, 1024), OK);
    assert_eq!(faults.syncs(), 1, "synced before completion");
    assert_eq!(write_zeroes(&mut h, 8, 8), OK);
    assert_eq!(faults.syncs(), 2);
    assert_eq!(read(&mut h, 0, 512).0, OK);
    assert_eq!(faults.syncs(), 2, "reads are not synced");

    // Write-through ends with the driver: reset restores write-back, and a
    // driver that negotiates flushes gets it.
    h.dev.reset();
    let irq = h.irq.clone();
    h.dev
        .activate(activation(h.dev.device_features(), h.mem.clone(), irq))
        .unwrap();
    assert_eq!(write(&mut h, 0, 3, 1024), OK);
    assert_eq!(faults.syncs(), 2);
    assert_eq!(flush(&mut h), OK);
    assert_eq!(faults.syncs(), 3);
    assert_eq!(h.image_bytes()[..1024], [3; 1024]);

    // And the other way round.
    h.dev.reset();
    let irq = h.irq.clone();
    h.dev
        .activate(activation(
            h.dev.device_features() & ALL_BUT_FLUSH,
            h.mem.clone(),
            irq,
        ))
        .unwrap();
    assert_eq!(write(&mut h, 0, 4, 512), OK);
    assert_eq!(faults.syncs(), 4);
}

#[test]
fn write_through_write_that_cannot_be_synced_fails() {
    let (mut h, faults) = faulty_harness(patterned_image(), CacheMode::Writeback, false, ALL_BUT_FLUSH);
    faults.fail_next_sync(libc::EIO);
    assert_eq!(write(&mut h, 0, 1, 512), IOERR);
    assert_eq!(write(&mut h, 1, 1, 512), IOERR, "the failure is sticky");
    assert_eq!(read(&mut h, 0, 512).0, OK);
}

#[test]
fn cache_unsafe_never_syncs_even_without_flush() {
    let (mut h, faults) = faulty_harness(patterned_image(), CacheMode::Unsafe, false, ALL_BUT_FLUSH);
    assert_eq!(write(&mut h, 0, 1, 512), OK);
    assert_eq!(write_zeroes(&mut h, 8, 8), OK);
    assert_eq!(faults.syncs(), 0);
}

#[test]
fn enospc_gets_ioerr() {
    let (mut h, faults) = faulty_harness(patterned_image(), CacheMode::Writeback, false, !0);
    faults.fail_writes(libc::ENOSPC);
    assert_eq!(write(&mut h, 0, 1, 4096), IOERR);
    assert_eq!(write_zeroes(&mut h, 8, 8), IOERR);
    assert_eq!(h.image_bytes(), pattern(IMAGE_LEN));
    assert_eq!(read(&mut h, 0, 512).0, OK);
    // Space freed on the host: the same device carries on.
    faults.fail_writes(0);
    assert_eq!(write(&mut h, 0, 1, 4096), OK);
    assert_eq!(flush(&mut h), OK);
}

/// Runs `test` on a thread of its own in a private mount namespace, with a
/// `size`-byte tmpfs mounted at the directory it is given: a filesystem
/// that really fills up. The mount disappears with the thread, even if the
/// test panics. `None` (with the reason printed) where the host does not
/// allow it: no root, or no mount namespaces.
fn on_tiny_tmpfs<T: Send + 'static>(
    size: usize,
    test: impl FnOnce(&Path) -> T + Send + 'static,
) -> Option<T> {
    let dir = std::env::temp_dir().join(format!("kiln-tiny-tmpfs-{}", std::process::id()));
    fs::create_dir(&dir).unwrap();
    let mount_point = dir.clone();
    let outcome = std::thread::spawn(move || {
        let target = CString::new(mount_point.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: unshare and mount take NUL-terminated strings that outlive
        // the calls, or null where the argument is unused. The new namespace
        // belongs to this thread alone; making it private first keeps the
        // tmpfs from propagating to the host's namespace.
        let mounted = unsafe {
            libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                ) == 0
        };
        if !mounted {
            return Err(std::io::Error::last_os_error());
        }
        Ok(test(&mount_point))
    })
    .join();
    let _ = fs::remove_dir(&dir);
    match outcome {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            eprintln!("skipping: cannot mount a private tmpfs: {e}");
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[test]
fn full_filesystem_gets_ioerr() {
    on_tiny_tmpfs(16 * 1024, |dir| {
        // A sparse image four times the size of its filesystem.
        let image = TempFile::new_in(dir).unwrap();
        image.as_file().set_len(IMAGE_LEN as u64).unwrap();
        let (mut h, _) = faulty_harness(image, CacheMode::Writeback, false, !0);
        assert_eq!(write(&mut h, 0, 1, 32 * 1024), IOERR);
        assert_eq!(write_zeroes(&mut h, 64, 64), IOERR);
        assert_eq!(read(&mut h, 0, 512).0, OK);
        assert_eq!(fs::metadata(h.image.as_path()).unwrap().len(), IMAGE_LEN as u64);
    });
}

#[test]
fn shared_image_truncated_under_the_guest() {
    let (mut h, _) = faulty_harness(patterned_image(), CacheMode::Writeback, true, !0);
    let shrunk = IMAGE_LEN as u64 / 2;
    let status = std::process::Command::new("truncate")
        .arg(format!("--size={shrunk}"))
        .arg(h.image.as_path())
        .status()
        .unwrap();
    assert!(status.success());

    let past_end = shrunk / 512 + 8;
    assert_eq!(read(&mut h, past_end, 512), (IOERR, 1));
    assert_eq!(read(&mut h, shrunk / 512 - 1, 1024).0, IOERR, "straddles the end");
    assert_eq!(write(&mut h, past_end, 1, 512), IOERR);
    assert_eq!(write_zeroes(&mut h, past_end, 8), IOERR);
    assert_eq!(
        fs::metadata(h.image.as_path()).unwrap().len(),
        shrunk,
        "the file must not grow back"
    );
    // What is left of the image still works.
    assert_eq!(read(&mut h, 0, 512), (OK, 513));
    assert_eq!(h.guest_bytes(DATA, 512), pattern(512));
    assert_eq!(write(&mut h, 1, 9, 512), OK);
    assert_eq!(h.image_bytes()[512..1024], [9; 512]);
    // The guest is not told: capacity stays what it was at open (kiln does
    // not watch the file, so there is no config-change interrupt).
    assert_eq!(h.dev.capacity_sectors(), IMAGE_LEN as u64 / 512);
    let mut capacity = [0u8; 8];
    h.dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), IMAGE_LEN as u64 / 512);
}
