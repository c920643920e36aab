use std::io::Cursor;
use std::os::unix::net::UnixStream;

use super::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
    let frame = encode_frame(&msg).unwrap();
    assert_eq!(
        u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
        frame.len() - 4
    );
    let mut r = Cursor::new(frame);
    let back: T = read_frame(&mut r, "test").unwrap().unwrap();
    assert_eq!(back, msg);
    assert!(read_frame::<_, T>(&mut r, "test").unwrap().is_none());
}

#[test]
fn every_message_round_trips() {
    round_trip(Hello::ours());
    let mut req = ExecRequest::new(["sh", "-c", "echo hi"]);
    req.env.push(("A".into(), "b=c".into()));
    req.cwd = Some("/tmp".into());
    req.pty = Some(WindowSize { rows: 24, cols: 80 });
    req.stdin = true;
    for msg in [
        HostMsg::Exec(req),
        HostMsg::Stdin((0..=255).collect()),
        HostMsg::StdinEof,
        HostMsg::Resize(WindowSize { rows: 1, cols: 2 }),
        HostMsg::Signal(9),
        HostMsg::Put { dest: "/a".into() },
        HostMsg::Get { src: "/b".into() },
        HostMsg::Entry(Entry::Dir {
            path: "d".into(),
            mode: 0o755,
        }),
        HostMsg::Entry(Entry::Symlink {
            path: "l".into(),
            target: "../x".into(),
        }),
        HostMsg::Data(vec![0, 1, 2]),
        HostMsg::Done,
        HostMsg::PowerOff,
    ] {
        round_trip(msg);
    }
    for msg in [
        AgentMsg::Started {
            pid: 7,
            stdin_window: STDIN_WINDOW,
        },
        AgentMsg::SpawnFailed {
            exit_code: 127,
            message: "x: command not found".into(),
        },
        AgentMsg::StdinCredit(5),
        AgentMsg::Stdout(vec![1; MAX_CHUNK]),
        AgentMsg::Stderr(vec![]),
        AgentMsg::OutputCut {
            stream: OutputStream::Stderr,
            limit: 9,
        },
        AgentMsg::Exited(ExitStatus::Signal(9)),
        AgentMsg::Entry(Entry::File {
            path: "f".into(),
            mode: 0o644,
        }),
        AgentMsg::Data(vec![]),
        AgentMsg::Done,
        AgentMsg::Error("no".into()),
    ] {
        round_trip(msg);
    }
}

#[test]
fn exit_status_maps_like_a_shell() {
    assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    assert!(ExitStatus::Code(0).success());
    assert!(!ExitStatus::Signal(15).success());
}

fn read_host(bytes: Vec<u8>) -> Result<Option<HostMsg>, ProtocolError> {
    read_frame(&mut Cursor::new(bytes), "test")
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn truncated_length_prefix_is_an_error() {
    let err = read_host(vec![5, 0]).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Truncated {
                expected: 4,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_payload_is_an_error() {
    let mut frame = encode_frame(&HostMsg::Stdin(vec![7; 100])).unwrap();
    frame.truncate(50);
    let err = read_host(frame).unwrap_err();
    assert!(matches!(err, ProtocolError::Truncated { got: 50, .. }), "{err}");
}

#[test]
fn oversized_frame_is_refused_before_reading_it() {
    // Only the prefix exists: the reader must refuse on the length alone.
    let len = (MAX_FRAME_LEN as u32 + 1).to_le_bytes().to_vec();
    let err = read_host(len).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, .. } if len == MAX_FRAME_LEN + 1),
        "{err}"
    );
    let err = read_host(u32::MAX.to_le_bytes().to_vec()).unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
}

#[test]
fn garbage_payloads_are_malformed() {
    for payload in [
        &[][..],                                  // empty: no variant at all
        &[200],                                   // no such variant
        &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // Stdin with an absurd length
        &[0, 1],                                  // Exec cut short
    ] {
        let err = read_host(framed(payload)).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Malformed { .. }),
            "{payload:?}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut payload = postcard::to_stdvec(&HostMsg::StdinEof).unwrap();
    payload.push(0);
    let err = read_host(framed(&payload)).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
}

#[test]
fn sender_refuses_frames_over_the_maximum() {
    let err = encode_frame(&AgentMsg::Stdout(vec![0; MAX_FRAME_LEN])).unwrap_err();
    assert!(matches!(err, ProtocolError::TooLargeToSend { .. }), "{err}");
}

#[test]
fn hello_succeeds_between_equals() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || exchange_hello(&mut b, "a"));
    exchange_hello(&mut a, "b").unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn hello_version_mismatch_is_reported() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let old = Hello {
            protocol: PROTOCOL_NAME.into(),
            version: PROTOCOL_VERSION + 1,
        };
        write_frame(&mut b, &old, "test").unwrap();
        read_frame::<_, Hello>(&mut b, "test").unwrap()
    });
    let err = exchange_hello(&mut a, "guest agent").unwrap_err();
    assert!(
        matches!(err, ProtocolError::VersionMismatch { ours, theirs, .. }
            if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("kiln guest"), "{err}");
    // Our hello still went out, so the other side can say the same.
    assert_eq!(t.join().unwrap(), Some(Hello::ours()));
}

#[test]
fn hello_from_a_stranger_is_refused() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let other = Hello {
            protocol: "ssh".into(),
            version: PROTOCOL_VERSION,
        };
        write_frame(&mut b, &other, "test").unwrap();
        // Stay connected until our hello is in, or its write could fail first.
        let _ = read_frame::<_, Hello>(&mut b, "test");
    });
    let err = exchange_hello(&mut a, "guest agent").unwrap_err();
    assert!(
        matches!(err, ProtocolError::NotKiln(ref p) if p == "ssh"),
        "{err}"
    );
    t.join().unwrap();
}

#[test]
fn hello_from_a_peer_that_hangs_up_is_an_error() {
    let (mut a, b) = UnixStream::pair().unwrap();
    drop(b);
    let err = exchange_hello(&mut a, "guest agent").unwrap_err();
    // The write may fail first (EPIPE) or the read find EOF: both are errors.
    assert!(
        matches!(err, ProtocolError::Closed { .. } | ProtocolError::Io { .. }),
        "{err}"
    );
}
