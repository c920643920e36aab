//! Each kind of descriptor is written without blocking and without
//! touching the inherited description's flags.

use super::*;
use std::io::Read;
use std::os::fd::AsFd;

fn status_flags(fd: RawFd) -> i32 {
    // SAFETY: F_GETFL only reads the description's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

/// Fills `out` until it refuses output; returns how much it took.
fn fill(out: &mut HostOutput) -> usize {
    let chunk = [b'x'; 4096];
    let mut total = 0;
    loop {
        match out.try_write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("{e}"),
        }
        assert!(total < 64 << 20, "never refused output");
    }
}

#[test]
fn a_full_pipe_refuses_output_and_the_inherited_description_stays_blocking() {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let fd = OwnedFd::from(writer);
    let raw = fd.as_raw_fd();
    let mut out = HostOutput::new(fd).unwrap();
    assert_eq!(out.method(), Method::Reopened);
    let taken = fill(&mut out);
    assert_eq!(taken, 64 << 10, "the default pipe size");
    assert_eq!(status_flags(raw) & libc::O_NONBLOCK, 0);
    // The reopened description is of the same pipe.
    let mut buf = vec![0u8; 4096];
    reader.read_exact(&mut buf).unwrap();
    let fd = out.writable_fd().unwrap();
    assert!(poll_out(fd, None).unwrap());
    assert_eq!(out.try_write(b"more").unwrap(), 4);
}

#[test]
fn the_poll_fallback_writes_only_when_the_pipe_has_room() {
    let (_reader, writer) = std::io::pipe().unwrap();
    let fd = OwnedFd::from(writer);
    let mut out = HostOutput {
        reopened: None,
        method: Method::PollFirst(PIPE_FALLBACK_CHUNK),
        fd,
    };
    assert_eq!(fill(&mut out), 64 << 10);
}

#[test]
fn a_full_socket_refuses_output() {
    let (_peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut out = HostOutput::new(OwnedFd::from(ours)).unwrap();
    assert_eq!(out.method(), Method::Socket);
    assert!(fill(&mut out) > 0);
}

#[test]
fn a_pty_is_reopened_and_refuses_output_when_full() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; the rest may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both are fresh descriptors we own.
    let (_master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let raw = slave.as_raw_fd();
    let mut out = HostOutput::new(slave).unwrap();
    assert_eq!(out.method(), Method::Reopened);
    assert!(fill(&mut out) > 0);
    assert_eq!(status_flags(raw) & libc::O_NONBLOCK, 0);
}

#[test]
fn regular_files_and_dev_null_are_written_directly() {
    let path = std::env::temp_dir().join(format!("kiln-host-output-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let mut out = HostOutput::new(OwnedFd::from(file)).unwrap();
    assert_eq!(out.method(), Method::Direct);
    assert!(out.writable_fd().is_none());
    assert_eq!(out.try_write(b"hello\n").unwrap(), 6);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
    std::fs::remove_file(&path).unwrap();
    let null = std::fs::File::options().write(true).open("/dev/null").unwrap();
    let out = HostOutput::new(null.as_fd().try_clone_to_owned().unwrap()).unwrap();
    assert_eq!(out.method(), Method::Direct);
}
