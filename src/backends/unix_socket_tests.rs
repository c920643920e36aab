//! The listening socket's file rules, the handshake line, and connecting
//! to `<socket>_P`, on real sockets in a temporary directory.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;

use vmm_sys_util::tempdir::TempDir;

use super::*;

fn temp() -> TempDir {
    TempDir::new_with_prefix("/tmp/kiln-vsock").unwrap()
}

#[test]
fn vsock_listener_refuses_files_and_live_sockets_and_replaces_stale_ones() {
    let dir = temp();
    let path = dir.as_path().join("v.sock");

    std::fs::write(&path, b"not a socket").unwrap();
    let err = VsockListener::bind(&path).unwrap_err();
    assert!(matches!(err, UnixSocketError::PathExists(_)), "{err}");
    assert!(
        err.to_string().contains("remove it or choose another path"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();

    // Someone listens there: in use.
    let live = UnixListener::bind(&path).unwrap();
    let err = VsockListener::bind(&path).unwrap_err();
    assert!(matches!(err, UnixSocketError::InUse(_)), "{err}");
    // Its owner went away without removing it: stale, replaced.
    drop(live);
    assert!(path.exists());
    let listener = VsockListener::bind(&path).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    assert!(listener.accept().unwrap().is_some());
    assert!(listener.accept().unwrap().is_none(), "non-blocking");
    drop(listener);
    assert!(!path.exists(), "removed on drop");
}

#[test]
fn vsock_listener_leaves_a_replaced_path_alone() {
    let dir = temp();
    let path = dir.as_path().join("v.sock");
    let listener = VsockListener::bind(&path).unwrap();
    // Someone else took the path meanwhile.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    drop(listener);
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
}

#[test]
fn connect_lines_parse() {
    assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(52));
    assert_eq!(parse_connect_line(b"connect 52\n"), Ok(52));
    assert_eq!(parse_connect_line(b"CoNnEcT 0007\r\n"), Ok(7));
    assert_eq!(parse_connect_line(b"CONNECT 4294967295\n"), Ok(u32::MAX));
    for (line, err) in [
        (&b"CONNECT 4294967296\n"[..], HandshakeError::BadPort),
        (b"CONNECT 99999999999\n", HandshakeError::BadPort),
        (b"CONNECT  52\n", HandshakeError::BadPort),
        (b"CONNECT 5x\n", HandshakeError::BadPort),
        (b"CONNECT -1\n", HandshakeError::BadPort),
        (b"CONNECT +1\n", HandshakeError::BadPort),
        (b"CONNECT \n", HandshakeError::BadPort),
        (b"CONNECT 52 \n", HandshakeError::BadPort),
        (b"CONNECT\t52\n", HandshakeError::NotConnect),
        (b"CONNEC 52\n", HandshakeError::NotConnect),
        (b"\x00\xff\xfe garbage\n", HandshakeError::NotConnect),
        (b"GET / HTTP/1.1\r\n", HandshakeError::NotConnect),
    ] {
        assert_eq!(
            parse_connect_line(line),
            Err(err),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    let longest = format!("CONNECT {}\n", "0".repeat(MAX_HANDSHAKE_LINE - 9));
    assert_eq!(longest.len(), MAX_HANDSHAKE_LINE);
    assert_eq!(
        parse_connect_line(longest.as_bytes()),
        Err(HandshakeError::BadPort)
    );
    let over = format!("CONNECT {}\n", "0".repeat(MAX_HANDSHAKE_LINE - 8));
    assert_eq!(parse_connect_line(over.as_bytes()), Err(HandshakeError::TooLong));
}

#[test]
fn handshake_reader_takes_the_line_byte_by_byte_and_nothing_after_it() {
    let (mut peer, mut ours) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut reader = HandshakeReader::default();
    for &byte in b"connect 1234" {
        peer.write_all(&[byte]).unwrap();
        assert_eq!(reader.read_from(&mut ours), Ok(HandshakeStep::NeedMore));
    }
    assert_eq!(reader.read_from(&mut ours), Ok(HandshakeStep::NeedMore));
    peer.write_all(b"\nguest data").unwrap();
    assert_eq!(reader.read_from(&mut ours), Ok(HandshakeStep::Port(1234)));
    let mut rest = [0u8; 10];
    ours.read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b"guest data");
}

#[test]
fn handshake_reader_stops_at_32_bytes_and_at_end_of_stream() {
    let (mut peer, mut ours) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.write_all(&[b'C'; 100]).unwrap();
    let mut reader = HandshakeReader::default();
    assert_eq!(reader.read_from(&mut ours), Err(HandshakeError::TooLong));
    let mut left = Vec::new();
    drop(peer);
    ours.read_to_end(&mut left).unwrap();
    assert_eq!(left.len(), 100 - MAX_HANDSHAKE_LINE, "read no further");

    let (mut peer, mut ours) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.write_all(b"CONNECT 5").unwrap();
    drop(peer);
    let mut reader = HandshakeReader::default();
    assert_eq!(reader.read_from(&mut ours), Err(HandshakeError::Closed));
}

#[test]
fn guest_connections_reach_the_port_path_or_fail_at_once() {
    let dir = temp();
    let socket = dir.as_path().join("v.sock");
    let path = port_path(&socket, 52);
    assert_eq!(path, dir.as_path().join("v.sock_52"));
    let err = connect_nonblocking(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let listener = UnixListener::bind(&path).unwrap();
    let mut stream = connect_nonblocking(&path).unwrap();
    let (mut far, _) = listener.accept().unwrap();
    stream.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    far.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    // Non-blocking: nothing to read is WouldBlock, not a wait.
    let err = stream.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(listener);
    let err = connect_nonblocking(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
    assert!(connect_nonblocking(&long).is_err());
}

#[test]
fn vectored_socket_io_moves_bytes_and_reports_full_and_empty() {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut one = *b"hello ";
    let mut two = *b"world";
    let bufs = [
        VolatileSlice::from(&mut one[..]),
        VolatileSlice::from(&mut two[..]),
    ];
    assert_eq!(send_vectored(a.as_fd(), &bufs).unwrap(), 11);
    let mut into = [0u8; 16];
    let n = recv_vectored(b.as_fd(), &[VolatileSlice::from(&mut into[..])]).unwrap();
    assert_eq!(n, Some(11));
    assert_eq!(&into[..11], b"hello world");
    assert_eq!(
        recv_vectored(b.as_fd(), &[VolatileSlice::from(&mut into[..])]).unwrap(),
        None
    );
    // Fill it: a full socket takes nothing, without blocking.
    let mut big = vec![0u8; 1 << 16];
    let mut sent = 0;
    loop {
        let n = send_vectored(a.as_fd(), &[VolatileSlice::from(&mut big[..])]).unwrap();
        if n == 0 {
            break;
        }
        sent += n;
    }
    assert!(sent > 0);
    assert_eq!(send_bytes(a.as_fd(), b"x").unwrap(), 0);
    drop(b);
    assert_eq!(
        send_bytes(a.as_fd(), b"x").unwrap_err().raw_os_error(),
        Some(libc::EPIPE)
    );
}

#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    let soft = raise_open_file_limit().unwrap();
    // SAFETY: `rlimit` is plain C data; getrlimit writes one.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    assert_eq!(soft, limit.rlim_cur);
    assert_eq!(limit.rlim_cur, limit.rlim_max);
}

/// A live listener whose backlog is full is in use, and checking it does
/// not block (a blocking connect would wait for its owner to accept).
#[test]
fn vsock_listener_check_does_not_block_on_a_full_backlog() {
    let dir = temp();
    let path = dir.as_path().join("v.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let mut queued = Vec::new();
    loop {
        match connect_nonblocking(&path) {
            Ok(stream) => queued.push(stream),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
                break;
            }
        }
        assert!(queued.len() < 100_000, "the backlog never filled");
    }
    let err = VsockListener::bind(&path).unwrap_err();
    assert!(matches!(err, UnixSocketError::InUse(_)), "{err}");
}
