use std::fs;
use std::time::{Duration, SystemTime};

use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::backends::image_io::testing::FaultyIo;

/// A temp image of `size` bytes where byte i is `i % 251`.
fn patterned_image(size: usize) -> TempFile {
    let tmp = TempFile::new().unwrap();
    fs::write(tmp.as_path(), pattern(size)).unwrap();
    tmp
}

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn contents(tmp: &TempFile) -> Vec<u8> {
    fs::read(tmp.as_path()).unwrap()
}

fn read_vec(backend: &mut FileBackend, offset: u64, lens: &[usize]) -> io::Result<Vec<u8>> {
    let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0xee; n]).collect();
    {
        let slices: Vec<VolatileSlice> = bufs.iter_mut().map(|b| VolatileSlice::from(&mut b[..])).collect();
        backend.read_at(offset, &slices)?;
    }
    Ok(bufs.concat())
}

fn write_vec(backend: &mut FileBackend, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    let mut owned: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    let slices: Vec<VolatileSlice> = owned
        .iter_mut()
        .map(|b| VolatileSlice::from(&mut b[..]))
        .collect();
    backend.write_at(offset, &slices)
}

/// Opens with O_DIRECT, or None where the test filesystem lacks it.
fn open_direct(tmp: &TempFile, read_only: bool) -> Option<FileBackend> {
    match FileBackend::open(tmp.as_path(), read_only, CacheMode::None, false) {
        Ok(b) => Some(b),
        Err(FileBackendError::DirectIoUnsupported { .. }) => {
            eprintln!("skipping: no O_DIRECT on the temp filesystem");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn cache_mode_parses() {
    assert_eq!("none".parse::<CacheMode>().unwrap(), CacheMode::None);
    assert_eq!("unsafe".parse::<CacheMode>().unwrap(), CacheMode::Unsafe);
    assert_eq!("writeback".parse::<CacheMode>().unwrap(), CacheMode::Writeback);
    let err = "fast".parse::<CacheMode>().unwrap_err().to_string();
    assert!(err.contains("writeback"), "{err}");
}

#[test]
fn open_errors_name_the_file() {
    let missing = Path::new("/nonexistent/kiln-disk.img");
    let err = FileBackend::open(missing, false, CacheMode::Writeback, false).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/kiln-disk.img"), "{err}");

    let dir = std::env::temp_dir();
    let err = FileBackend::open(&dir, true, CacheMode::Writeback, false).unwrap_err();
    assert!(matches!(err, FileBackendError::NotADisk { .. }), "{err}");
}

#[test]
fn refuses_size_not_multiple_of_512() {
    let tmp = patterned_image(1000);
    let err = FileBackend::open(tmp.as_path(), false, CacheMode::Writeback, false).unwrap_err();
    assert!(matches!(err, FileBackendError::UnalignedSize { size: 1000, .. }));
    assert!(err.to_string().contains("multiple of 512"));
}

#[test]
fn vectored_read_write_roundtrip() {
    let tmp = patterned_image(8192);
    let mut b = FileBackend::open(tmp.as_path(), false, CacheMode::Writeback, false).unwrap();
    assert_eq!(b.size(), 8192);
    let got = read_vec(&mut b, 512, &[100, 0, 412, 512]).unwrap();
    assert_eq!(got, contents(&tmp)[512..1536]);

    write_vec(&mut b, 1024, &[&[1; 300], &[2; 724]]).unwrap();
    b.flush().unwrap();
    let file = contents(&tmp);
    assert_eq!(file[1024..1324], [1; 300]);
    assert_eq!(file[1324..2048], [2; 724]);
    assert_eq!(file[2048], (2048 % 251) as u8);
}

#[test]
fn more_buffers_than_iov_max() {
    let tmp = patterned_image(4096);
    let mut b = FileBackend::open(tmp.as_path(), false, CacheMode::Unsafe, false).unwrap();
    let lens = vec![2; 2048];
    assert_eq!(read_vec(&mut b, 0, &lens).unwrap(), contents(&tmp));
}

#[test]
fn refuses_ranges_past_the_end() {
    let tmp = patterned_image(4096);
    let mut b = FileBackend::open(tmp.as_path(), false, CacheMode::Writeback, false).unwrap();
    assert!(read_vec(&mut b, 4096 - 511, &[512]).is_err());
    assert!(read_vec(&mut b, u64::MAX, &[1]).is_err());
    assert!(write_vec(&mut b, 4096, &[&[0; 1]]).is_err());
    assert!(b.discard(u64::MAX - 10, 20).is_err());
    assert!(b.write_zeroes(4096, 512, false).is_err());
    assert_eq!(contents(&tmp), pattern(4096));
}

#[test]
fn read_only_never_writes_or_touches_times() {
    let tmp = patterned_image(4096);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let times = fs::FileTimes::new().set_accessed(old).set_modified(old);
    tmp.as_file().set_times(times).unwrap();

    let mut b = FileBackend::open(tmp.as_path(), true, CacheMode::Writeback, false).unwrap();
    assert!(b.is_read_only());
    // Compare with the known pattern: reading the file here would itself
    // update its access time.
    assert_eq!(read_vec(&mut b, 0, &[4096]).unwrap(), pattern(4096));
    let refused = write_vec(&mut b, 0, &[&[9; 512]]).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
    assert!(b.discard(0, 512).is_err());
    assert!(b.write_zeroes(0, 512, true).is_err());
    b.flush().unwrap();
    drop(b);

    let meta = fs::metadata(tmp.as_path()).unwrap();
    assert_eq!(meta.modified().unwrap(), old);
    // We run as the file's owner, so O_NOATIME applies.
    assert_eq!(meta.accessed().unwrap(), old);
    assert_eq!(contents(&tmp), pattern(4096));
}

#[test]
fn writers_lock_each_other_out() {
    let tmp = patterned_image(4096);
    let path = tmp.as_path();
    let first = FileBackend::open(path, false, CacheMode::Writeback, false).unwrap();
    let err = FileBackend::open(path, false, CacheMode::Writeback, false).unwrap_err();
    assert!(matches!(err, FileBackendError::InUse { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("in use by another process") && msg.contains("shared=on"),
        "{msg}"
    );
    assert!(FileBackend::open(path, true, CacheMode::Writeback, false).is_err());
    drop(first);

    let reader = FileBackend::open(path, true, CacheMode::Writeback, false).unwrap();
    let _second_reader = FileBackend::open(path, true, CacheMode::Writeback, false).unwrap();
    let _sharer = FileBackend::open(path, false, CacheMode::Writeback, true).unwrap();
    assert!(FileBackend::open(path, false, CacheMode::Writeback, false).is_err());
    drop(reader);
}

#[test]
fn discard_and_write_zeroes_read_back_zero() {
    let tmp = patterned_image(64 * 1024);
    let mut b = FileBackend::open(tmp.as_path(), false, CacheMode::Writeback, false).unwrap();
    b.write_zeroes(4096, 8192, false).unwrap();
    b.write_zeroes(20480, 1024, true).unwrap();
    b.discard(32768, 4096).unwrap();
    b.discard(0, 0).unwrap();
    let file = contents(&tmp);
    assert_eq!(file.len(), 64 * 1024, "size must not change");
    assert!(file[4096..12288].iter().all(|&x| x == 0));
    assert!(file[20480..21504].iter().all(|&x| x == 0));
    assert_eq!(file[4095], (4095 % 251) as u8);
    assert_eq!(file[12288], (12288 % 251) as u8);
    assert_eq!(file[21504], (21504 % 251) as u8);
}

#[test]
fn zero_fill_fallback_writes_zeroes() {
    let tmp = patterned_image(3 * 1024 * 1024);
    let mut b = FileBackend::open(tmp.as_path(), false, CacheMode::Writeback, false).unwrap();
    b.fill_zeroes(512, 2 * 1024 * 1024 + 512).unwrap();
    let file = contents(&tmp);
    assert_eq!(file[511], (511 % 251) as u8);
    assert!(file[512..2 * 1024 * 1024 + 1024].iter().all(|&x| x == 0));
    assert_eq!(
        file[2 * 1024 * 1024 + 1024],
        ((2 * 1024 * 1024 + 1024) % 251) as u8
    );
}

#[test]
fn direct_io_needs_4k_multiple() {
    let tmp = patterned_image(4096 + 512);
    match FileBackend::open(tmp.as_path(), false, CacheMode::None, false) {
        Err(FileBackendError::UnalignedDirectSize { size: 4608, .. }) => {}
        Err(FileBackendError::DirectIoUnsupported { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn direct_io_handles_unaligned_requests() {
    let size = 3 * 1024 * 1024;
    let tmp = patterned_image(size);
    let Some(mut b) = open_direct(&tmp, false) else {
        return;
    };
    let mut expected = contents(&tmp);
    // 512-aligned but not 4 KiB-aligned, odd buffer split, crosses the
    // bounce-buffer size.
    let offset = 4096 * 3 + 1536;
    let got = read_vec(&mut b, offset as u64, &[700, 1, 1024 * 1024 + 347]).unwrap();
    assert_eq!(got, expected[offset..offset + got.len()]);

    let first: Vec<u8> = (0..1000).map(|i| (i % 7) as u8 + 1).collect();
    let second = vec![0xab; 1024 * 1024 + 536];
    write_vec(&mut b, offset as u64, &[&first, &second]).unwrap();
    b.flush().unwrap();
    expected[offset..offset + 1000].copy_from_slice(&first);
    expected[offset + 1000..offset + 1000 + second.len()].copy_from_slice(&second);
    assert_eq!(contents(&tmp), expected);

    let tail = read_vec(&mut b, (size - 512) as u64, &[512]).unwrap();
    assert_eq!(tail, expected[size - 512..]);
    write_vec(&mut b, (size - 512) as u64, &[&[5; 512]]).unwrap();
    expected[size - 512..].fill(5);
    b.write_zeroes(512, 512, false).unwrap();
    expected[512..1024].fill(0);
    assert_eq!(contents(&tmp), expected);
}

#[test]
fn direct_io_read_only() {
    let tmp = patterned_image(8192);
    let Some(mut b) = open_direct(&tmp, true) else {
        return;
    };
    assert_eq!(
        read_vec(&mut b, 512, &[512, 512]).unwrap(),
        contents(&tmp)[512..1536]
    );
    assert!(write_vec(&mut b, 0, &[&[0; 512]]).is_err());
}

#[test]
fn identity_names_the_inode() {
    let tmp = patterned_image(512);
    let b = FileBackend::open(tmp.as_path(), true, CacheMode::Writeback, false).unwrap();
    let meta = fs::metadata(tmp.as_path()).unwrap();
    assert_eq!(b.identity(), (meta.dev(), meta.ino()));
    assert_eq!(b.path(), tmp.as_path());
}

/// A writable backend over `tmp` whose system calls go through `faults`.
fn faulty(tmp: &TempFile, cache: CacheMode, faults: &FaultyIo) -> FileBackend {
    FileBackend::open(tmp.as_path(), false, cache, false)
        .unwrap()
        .with_io(faults.boxed())
}

#[test]
fn a_failed_sync_fails_every_later_flush() {
    let tmp = patterned_image(8192);
    let faults = FaultyIo::default();
    let mut b = faulty(&tmp, CacheMode::Writeback, &faults);
    write_vec(&mut b, 0, &[&[1; 512]]).unwrap();
    b.flush().unwrap();
    write_vec(&mut b, 512, &[&[2; 512]]).unwrap();
    faults.fail_next_sync(libc::EIO);
    let first = b.flush().unwrap_err().to_string();
    assert!(
        first.contains(&tmp.as_path().display().to_string()) && first.contains("restarted"),
        "{first}"
    );
    // The kernel would now report success: the error was delivered once
    // and the dirty pages are gone.
    for _ in 0..3 {
        assert!(b.flush().is_err(), "a flush after a failed sync must fail");
    }
    // Reads and buffered writes go on.
    write_vec(&mut b, 1024, &[&[3; 512]]).unwrap();
    assert_eq!(read_vec(&mut b, 0, &[1536]).unwrap()[1024..], [3; 512]);
    assert!(b.flush().is_err());
}

#[test]
fn write_through_syncs_every_change_before_returning() {
    let tmp = patterned_image(2 * BOUNCE_LEN);
    let faults = FaultyIo::default();
    let mut b = faulty(&tmp, CacheMode::Writeback, &faults);
    assert!(!b.is_write_through(), "off when opened");
    write_vec(&mut b, 0, &[&[1; 512]]).unwrap();
    assert_eq!(faults.syncs(), 0);

    b.set_write_through(true);
    write_vec(&mut b, 0, &[&[1; 512], &[2; 512]]).unwrap();
    assert_eq!(faults.syncs(), 1);
    b.write_zeroes(4096, 4096, false).unwrap();
    assert_eq!(faults.syncs(), 2);
    b.discard(8192, 4096).unwrap();
    assert_eq!(faults.syncs(), 3);
    // The zero-fill fallback writes in chunks without syncing each one;
    // write_zeroes syncs once after it.
    b.fill_zeroes(0, 3 * BOUNCE_LEN as u64 / 2).unwrap();
    read_vec(&mut b, 0, &[512]).unwrap();
    assert_eq!(faults.syncs(), 3, "no sync per chunk; none for reads");

    b.set_write_through(false);
    write_vec(&mut b, 0, &[&[1; 512]]).unwrap();
    assert_eq!(faults.syncs(), 3);
}

#[test]
fn write_through_write_fails_once_a_sync_has() {
    let tmp = patterned_image(8192);
    let faults = FaultyIo::default();
    let mut b = faulty(&tmp, CacheMode::Writeback, &faults);
    b.set_write_through(true);
    faults.fail_next_sync(libc::EIO);
    assert!(write_vec(&mut b, 0, &[&[1; 512]]).is_err());
    assert!(
        write_vec(&mut b, 512, &[&[1; 512]]).is_err(),
        "a write that cannot be made durable must not complete"
    );
}

#[test]
fn cache_unsafe_never_syncs() {
    let tmp = patterned_image(8192);
    let faults = FaultyIo::default();
    let mut b = faulty(&tmp, CacheMode::Unsafe, &faults);
    b.set_write_through(true);
    write_vec(&mut b, 0, &[&[1; 512]]).unwrap();
    b.write_zeroes(512, 512, true).unwrap();
    b.flush().unwrap();
    assert_eq!(faults.syncs(), 0);
}

#[test]
fn full_filesystem_errors_reach_the_caller() {
    let tmp = patterned_image(3 * 1024 * 1024);
    let faults = FaultyIo::default();
    let mut b = faulty(&tmp, CacheMode::Writeback, &faults);
    faults.fail_writes(libc::ENOSPC);
    let err = write_vec(&mut b, 0, &[&[1; 512]]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let err = b.write_zeroes(0, 4096, false).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(contents(&tmp), pattern(3 * 1024 * 1024));
    faults.fail_writes(0);
    write_vec(&mut b, 0, &[&[1; 512]]).unwrap();
    drop(b);

    // The O_DIRECT path writes through the same calls.
    let faults = FaultyIo::default();
    let Some(b) = open_direct(&tmp, false) else {
        return;
    };
    let mut b = b.with_io(faults.boxed());
    faults.fail_writes(libc::ENOSPC);
    let err = write_vec(&mut b, 1536, &[&[1; 4096]]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
}

/// Shrinks the image as another process would (the kernel does not care
/// which process holds the other file description).
fn truncate_behind(tmp: &TempFile, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(tmp.as_path())
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn shrunk_image_fails_past_the_new_end_and_never_grows_back() {
    for cache in [CacheMode::Writeback, CacheMode::None] {
        let tmp = patterned_image(64 * 1024);
        let mut b = match FileBackend::open(tmp.as_path(), false, cache, true) {
            Ok(b) => b,
            Err(FileBackendError::DirectIoUnsupported { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        truncate_behind(&tmp, 32 * 1024 + 100);
        assert_eq!(b.size(), 64 * 1024, "the size the guest was told stays");

        let err = read_vec(&mut b, 40 * 1024, &[512]).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{cache:?}: {err}");
        assert!(read_vec(&mut b, 32 * 1024, &[512]).is_err(), "straddles the end");
        assert_eq!(read_vec(&mut b, 0, &[4096]).unwrap(), pattern(4096), "{cache:?}");

        let err = write_vec(&mut b, 48 * 1024, &[&[7; 512]]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{cache:?}: {err}");
        assert!(write_vec(&mut b, 32 * 1024, &[&[7; 512]]).is_err());
        assert!(b.write_zeroes(60 * 1024, 4096, false).is_err());
        assert!(b.write_zeroes(60 * 1024, 4096, true).is_err());
        assert_eq!(
            fs::metadata(tmp.as_path()).unwrap().len(),
            32 * 1024 + 100,
            "{cache:?}: the file must not grow back"
        );
        write_vec(&mut b, 4096, &[&[7; 512]]).unwrap();
        b.discard(60 * 1024, 4096).unwrap();
        assert_eq!(contents(&tmp)[4096..4608], [7; 512]);
        assert_eq!(fs::metadata(tmp.as_path()).unwrap().len(), 32 * 1024 + 100);
    }
}
