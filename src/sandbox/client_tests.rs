//! The client against the real agent logic over Unix socket pairs, and
//! each end against a hostile peer.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::sandbox::agent::reaper::ReapMode;
use crate::sandbox::agent::{Agent, AgentError};
use crate::sandbox::protocol::{encode_frame, Hello, MAX_FRAME_LEN, PROTOCOL_NAME, STDIN_WINDOW};

fn agent() -> Agent {
    Agent::new(ReapMode::PerChild, || {}).unwrap()
}

/// A connection to a fresh agent thread; the handle yields how it ended.
fn connect() -> (UnixStream, JoinHandle<Result<(), AgentError>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let agent = agent();
    (ours, std::thread::spawn(move || agent.handle(theirs)))
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

fn out(req: &ExecRequest, stdin: Option<Vec<u8>>) -> Output {
    output(connect().0, req, stdin).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-sandbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic bytes that no text filter would pass unchanged (the
/// sandbox tests use it too).
pub(in crate::sandbox) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn start(req: &ExecRequest) -> ExecSession<UnixStream> {
    match ExecSession::start(connect().0, req).unwrap() {
        Started::Running(session) => session,
        Started::SpawnFailed { message, .. } => panic!("spawn failed: {message}"),
    }
}

fn wait_exit(session: &mut ExecSession<UnixStream>) -> ExitStatus {
    while let Some(event) = session.next_event().unwrap() {
        if let ExecEvent::Exited(status) = event {
            return status;
        }
    }
    panic!("no exit event");
}

#[test]
fn exec_echo_reaches_stdout() {
    let o = out(&ExecRequest::new(["echo", "hello", "world"]), None);
    assert_eq!(o.status, ExitStatus::Code(0));
    assert_eq!(o.stdout, b"hello world\n");
    assert!(o.stderr.is_empty());
}

#[test]
fn exec_exit_code_is_reported() {
    assert_eq!(out(&sh("exit 3"), None).status, ExitStatus::Code(3));
}

#[test]
fn exec_stderr_stays_separate() {
    let o = out(&sh("echo out; echo err >&2; echo out2"), None);
    assert_eq!(o.stdout, b"out\nout2\n");
    assert_eq!(o.stderr, b"err\n");
}

#[test]
fn exec_env_and_cwd_are_applied() {
    let mut req = sh("echo \"$GREETING\" \"$(pwd)\" \"$PATH\"");
    req.env.push(("GREETING".into(), "hi there".into()));
    req.cwd = Some("/tmp".into());
    let o = out(&req, None);
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "hi there /tmp /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn exec_ten_mib_of_output_arrives_intact() {
    let dir = scratch("big-out");
    let data = noise(10 << 20, 1);
    let path = dir.join("data");
    std::fs::write(&path, &data).unwrap();
    let o = out(&ExecRequest::new(["cat", path.to_str().unwrap()]), None);
    assert_eq!(o.status, ExitStatus::Code(0));
    assert!(!o.stdout_cut);
    assert!(o.stdout == data, "10 MiB of output differs");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exec_stdin_round_trips_binary_with_eof() {
    let data = noise(3 << 20, 2);
    let mut req = ExecRequest::new(["cat"]);
    req.stdin = true;
    let o = out(&req, Some(data.clone()));
    assert_eq!(o.status, ExitStatus::Code(0));
    assert!(o.stdout == data, "stdin did not round-trip");
}

#[test]
fn exec_missing_command_is_127() {
    let o = out(&ExecRequest::new(["kiln-no-such-command"]), None);
    assert_eq!(o.status, ExitStatus::Code(127));
    let msg = o.spawn_error.unwrap();
    assert!(msg.contains("command not found"), "{msg}");
    let o = out(&ExecRequest::new(["/nonexistent/prog"]), None);
    assert_eq!(o.status, ExitStatus::Code(127));
}

#[test]
fn exec_not_executable_is_126() {
    let dir = scratch("noexec");
    let path = dir.join("script");
    std::fs::write(&path, "#!/bin/sh\necho no\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = out(&ExecRequest::new([path.to_str().unwrap()]), None);
    assert_eq!(o.status, ExitStatus::Code(126), "{:?}", o.spawn_error);
    let mut req = ExecRequest::new(["true"]);
    req.cwd = Some(dir.join("missing").to_str().unwrap().into());
    let o = out(&req, None);
    assert_eq!(o.status, ExitStatus::Code(126));
    assert!(o.spawn_error.unwrap().contains("working directory"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exec_sigkill_reports_signal_137() {
    let mut session = start(&ExecRequest::new(["sleep", "100"]));
    session.control().signal(libc::SIGKILL).unwrap();
    let status = wait_exit(&mut session);
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(status.shell_code(), 137);
}

#[test]
fn exec_signal_gets_through_while_stdin_is_blocked() {
    let mut req = ExecRequest::new(["sleep", "100"]);
    req.stdin = true;
    let mut session = start(&req);
    let stdin = session.stdin().unwrap();
    let writer = std::thread::spawn(move || stdin.send(&vec![0u8; 8 << 20]));
    // Give the writer time to use up its window and block on credit.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !writer.is_finished(),
        "8 MiB went to a command that reads nothing"
    );
    session.control().signal(libc::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut session), ExitStatus::Signal(libc::SIGTERM));
    // The blocked writer is released with an error (the command exited, or
    // its connection closed under a write), not left hanging.
    assert!(writer.join().unwrap().is_err());
}

#[test]
fn exec_stdin_beyond_credit_ends_the_connection() {
    let (mut conn, agent) = connect();
    exchange_hello(&mut conn, "test").unwrap();
    let mut req = ExecRequest::new(["sleep", "100"]);
    req.stdin = true;
    write_frame(&mut conn, &HostMsg::Exec(req), "test").unwrap();
    let started: AgentMsg = read_frame(&mut conn, "test").unwrap().unwrap();
    assert!(matches!(
        started,
        AgentMsg::Started {
            stdin_window: STDIN_WINDOW,
            ..
        }
    ));
    let chunk = HostMsg::Stdin(vec![0; MAX_CHUNK]);
    // The command reads nothing, so at most the window and a pipe's worth
    // can be taken; the agent hangs up long before this loop ends.
    for _ in 0..(4 * STDIN_WINDOW as usize / MAX_CHUNK) {
        if write_frame(&mut conn, &chunk, "test").is_err() {
            break;
        }
    }
    let err = agent.join().unwrap().unwrap_err();
    assert!(matches!(err, AgentError::HostBroke(_)), "{err}");
    // The command was killed, and the host was told why.
    loop {
        match read_frame::<_, AgentMsg>(&mut conn, "test") {
            Ok(Some(AgentMsg::Error(m))) => {
                assert!(m.contains("credit"), "{m}");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no error frame: {other:?}"),
        }
    }
}

#[test]
fn exec_output_over_the_cap_is_cut_and_reported() {
    let mut req = sh("head -c 100000 /dev/zero; echo done >&2");
    req.output_cap = 1000;
    let o = out(&req, None);
    assert_eq!(o.status, ExitStatus::Code(0));
    assert_eq!(o.stdout.len(), 1000);
    assert!(o.stdout_cut);
    assert_eq!(o.stderr, b"done\n");
    assert!(!o.stderr_cut);
}

#[test]
fn exec_pty_gives_a_terminal_of_the_asked_size() {
    let mut req = sh("test -t 0 && test -t 1 && stty size; echo \"$TERM\"");
    req.pty = Some(WindowSize { rows: 33, cols: 101 });
    let o = out(&req, None);
    assert_eq!(o.status, ExitStatus::Code(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "33 101\r\nxterm\r\n");
}

#[test]
fn exec_pty_resize_and_stdin_eof() {
    let mut req = sh("read line; stty size; echo \"got $line\"; cat; echo end");
    req.pty = Some(WindowSize { rows: 10, cols: 20 });
    req.stdin = true;
    let mut session = start(&req);
    session
        .control()
        .resize(WindowSize { rows: 40, cols: 90 })
        .unwrap();
    let stdin = session.stdin().unwrap();
    stdin.send(b"abc\n").unwrap();
    stdin.close().unwrap();
    let mut text = Vec::new();
    let status = loop {
        match session.next_event().unwrap().unwrap() {
            ExecEvent::Stdout(d) => text.extend(d),
            ExecEvent::Exited(s) => break s,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(status, ExitStatus::Code(0));
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("40 90\r\ngot abc\r\n"), "{text:?}");
    assert!(text.ends_with("end\r\n"), "{text:?}");
}

#[test]
fn exec_several_commands_at_once() {
    let t0 = Instant::now();
    let runs: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || out(&sh(&format!("sleep 0.5; echo {i}")), None)))
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.join().unwrap().stdout, format!("{i}\n").as_bytes());
    }
    // Serially this would take 2 s.
    assert!(t0.elapsed() < Duration::from_millis(1800), "{:?}", t0.elapsed());
}

#[test]
fn exec_host_that_stops_reading_stalls_only_its_command() {
    let dir = scratch("stall");
    let mark = dir.join("mark");
    // 32 MiB is far more than any socket and pipe buffers hold.
    let script = format!("head -c 33554432 /dev/zero; touch {}", mark.display());
    let mut stalled = start(&sh(&script));
    assert_eq!(out(&sh("echo other"), None).stdout, b"other\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!mark.exists(), "the command ran on while nobody read its output");
    let mut total = 0usize;
    let status = loop {
        match stalled.next_event().unwrap().unwrap() {
            ExecEvent::Stdout(d) => total += d.len(),
            ExecEvent::Exited(s) => break s,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((status, total), (ExitStatus::Code(0), 32 << 20));
    assert!(mark.exists());
    let _ = std::fs::remove_dir_all(dir);
}

fn gone(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r != 0
}

#[test]
fn exec_dropped_connection_kills_the_command() {
    let session = start(&ExecRequest::new(["sleep", "100"]));
    let pid = session.pid();
    assert!(!gone(pid));
    drop(session);
    let t0 = Instant::now();
    while !gone(pid) {
        assert!(t0.elapsed() < Duration::from_secs(5), "sleep still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` to a fresh agent after a good hello; returns its verdict.
fn agent_given(bytes: &[u8]) -> AgentError {
    let (mut conn, agent) = connect();
    exchange_hello(&mut conn, "test").unwrap();
    let _ = conn.write_all(bytes);
    let _ = conn.shutdown(Shutdown::Write);
    agent.join().unwrap().unwrap_err()
}

#[test]
fn agent_survives_garbage_truncated_and_oversized_frames() {
    let err = agent_given(&[3, 0, 0, 0, 0xde, 0xad, 0xbe]);
    assert!(
        matches!(err, AgentError::Protocol(ProtocolError::Malformed { .. })),
        "{err}"
    );
    let err = agent_given(&[10, 0, 0, 0, 1, 2]);
    assert!(
        matches!(err, AgentError::Protocol(ProtocolError::Truncated { .. })),
        "{err}"
    );
    let err = agent_given(&u32::MAX.to_le_bytes());
    assert!(
        matches!(err, AgentError::Protocol(ProtocolError::FrameTooLarge { .. })),
        "{err}"
    );
    let err = agent_given(&encode_frame(&HostMsg::StdinEof).unwrap());
    assert!(matches!(err, AgentError::HostBroke(_)), "{err}");
    // Garbage in the middle of a command: the command is killed too.
    let mut bytes = encode_frame(&HostMsg::Exec(ExecRequest::new(["sleep", "100"]))).unwrap();
    bytes.extend([1, 0, 0, 0, 250]);
    let err = agent_given(&bytes);
    assert!(
        matches!(err, AgentError::Protocol(ProtocolError::Malformed { .. })),
        "{err}"
    );
    // And the agent still serves.
    assert_eq!(out(&ExecRequest::new(["echo", "ok"]), None).stdout, b"ok\n");
}

#[test]
fn agent_refuses_another_protocol_version() {
    let (mut conn, agent) = connect();
    let old = Hello {
        protocol: PROTOCOL_NAME.into(),
        version: 0,
    };
    write_frame(&mut conn, &old, "test").unwrap();
    let err = agent.join().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Protocol(ProtocolError::VersionMismatch { theirs: 0, .. })
        ),
        "{err}"
    );
}

/// A fake agent: says hello, then sends `bytes` and hangs up.
fn fake_agent(bytes: Vec<u8>) -> UnixStream {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let _ = exchange_hello(&mut theirs, "test");
        let _ = theirs.write_all(&bytes);
        let _ = theirs.shutdown(Shutdown::Write);
        // Read until the client is done, so it sees our bytes, not a reset.
        let _ = std::io::copy(&mut theirs, &mut std::io::sink());
    });
    ours
}

fn frames(msgs: &[AgentMsg]) -> Vec<u8> {
    msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect()
}

#[test]
fn client_survives_garbage_truncated_and_oversized_frames() {
    let req = ExecRequest::new(["true"]);
    type Expect = fn(&ClientError) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (vec![2, 0, 0, 0, 0xff, 0xff], |e| {
            matches!(e, ClientError::Protocol(ProtocolError::Malformed { .. }))
        }),
        (vec![9, 0, 0, 0, 0], |e| {
            matches!(e, ClientError::Protocol(ProtocolError::Truncated { .. }))
        }),
        ((MAX_FRAME_LEN as u32 + 1).to_le_bytes().to_vec(), |e| {
            matches!(e, ClientError::Protocol(ProtocolError::FrameTooLarge { .. }))
        }),
        (frames(&[AgentMsg::Done]), |e| {
            matches!(e, ClientError::AgentBroke(_))
        }),
        (
            frames(&[
                AgentMsg::Started {
                    pid: 1,
                    stdin_window: 0,
                },
                AgentMsg::Stdout(vec![1]),
            ]),
            |e| matches!(e, ClientError::Protocol(ProtocolError::Closed { .. })),
        ),
        (
            frames(&[
                AgentMsg::Started {
                    pid: 1,
                    stdin_window: 0,
                },
                AgentMsg::Done,
            ]),
            |e| matches!(e, ClientError::AgentBroke(_)),
        ),
    ];
    for (bytes, expected) in cases {
        let err = output(fake_agent(bytes.clone()), &req, None).unwrap_err();
        assert!(expected(&err), "{bytes:?}: {err}");
    }
}

#[test]
fn client_caps_output_from_an_agent_that_ignores_the_cap() {
    let mut msgs = vec![AgentMsg::Started {
        pid: 1,
        stdin_window: 0,
    }];
    msgs.extend((0..5).map(|_| AgentMsg::Stdout(vec![b'x'; 1000])));
    msgs.push(AgentMsg::Exited(ExitStatus::Code(0)));
    let mut req = ExecRequest::new(["true"]);
    req.output_cap = 2500;
    let o = output(fake_agent(frames(&msgs)), &req, None).unwrap();
    assert_eq!((o.stdout.len(), o.stdout_cut), (2500, true));
}

#[test]
fn file_of_five_mib_round_trips_byte_exact() {
    let dir = scratch("file");
    let path = dir.join("sub/in.bin");
    let data = noise(5 << 20, 3);
    write_file(connect().0, path.to_str().unwrap(), &data, 0o750).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
    let back = read_file(connect().0, path.to_str().unwrap(), 8 << 20).unwrap();
    assert!(back == data, "file changed in transit");
    let err = read_file(connect().0, path.to_str().unwrap(), 1 << 20).unwrap_err();
    assert!(matches!(err, ClientError::FileTooLarge { .. }), "{err}");
    let err = read_file(connect().0, dir.to_str().unwrap(), 1 << 20).unwrap_err();
    assert!(matches!(err, ClientError::NotAFile { .. }), "{err}");
    let err = read_file(connect().0, "/nonexistent/kiln", 1).unwrap_err();
    assert!(matches!(err, ClientError::Agent(_)), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tree_copies_in_and_out_with_modes_and_symlinks() {
    let dir = scratch("tree");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/blob"), noise(200_000, 4)).unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("a/b/blob", src.join("link")).unwrap();
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let guest = dir.join("guest");
    copy_in(connect().0, &src, guest.to_str().unwrap()).unwrap();
    let back = dir.join("back");
    copy_out(connect().0, guest.to_str().unwrap(), &back, Limits::UNLIMITED).unwrap();
    for copy in [&guest, &back] {
        assert_eq!(std::fs::read(copy.join("a/b/blob")).unwrap(), noise(200_000, 4));
        let mode = |p: &str| std::fs::metadata(copy.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("run.sh"), mode("a")), (0o755, 0o555));
        assert_eq!(
            std::fs::read_link(copy.join("link")).unwrap(),
            PathBuf::from("a/b/blob")
        );
        assert_eq!(std::fs::read(copy.join("empty")).unwrap(), b"");
    }
    let err = copy_out(
        connect().0,
        guest.to_str().unwrap(),
        &dir.join("small"),
        Limits {
            max_bytes: 1000,
            max_entries: 100,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Transfer(TransferError::TooLarge { .. })),
        "{err}"
    );
    for d in [&src, &guest, &back, &dir.join("small")] {
        if d.join("a").exists() {
            std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn copy_out_refuses_paths_that_escape_the_destination() {
    let dir = scratch("escape");
    let dest = dir.join("dest");
    let root = AgentMsg::Entry(Entry::Dir {
        path: String::new(),
        mode: 0o755,
    });
    let cases = [
        vec![
            root.clone(),
            AgentMsg::Entry(Entry::File {
                path: "../evil".into(),
                mode: 0o644,
            }),
        ],
        vec![
            root.clone(),
            AgentMsg::Entry(Entry::File {
                path: "/etc/evil".into(),
                mode: 0o644,
            }),
        ],
        vec![
            root.clone(),
            AgentMsg::Entry(Entry::Symlink {
                path: "l".into(),
                target: dir.to_str().unwrap().into(),
            }),
            AgentMsg::Entry(Entry::File {
                path: "l/evil".into(),
                mode: 0o644,
            }),
        ],
        vec![AgentMsg::Entry(Entry::File {
            path: "x".into(),
            mode: 0o644,
        })],
        vec![AgentMsg::Data(vec![1])],
    ];
    for msgs in cases {
        let _ = std::fs::remove_dir_all(&dest);
        let err = copy_out(fake_agent(frames(&msgs)), "/x", &dest, Limits::UNLIMITED).unwrap_err();
        assert!(matches!(err, ClientError::Transfer(_)), "{msgs:?}: {err}");
        assert!(!dir.join("evil").exists());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn write_failure_in_the_guest_is_reported() {
    let dir = scratch("putfail");
    std::fs::write(dir.join("file"), "").unwrap();
    let dest = dir.join("file/under-a-file");
    let err = write_file(connect().0, dest.to_str().unwrap(), &noise(300_000, 5), 0o644).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent(ref m) if m.contains("under-a-file") || m.contains("file")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn power_off_is_acknowledged_then_done() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let powered = Arc::new(AtomicBool::new(false));
    let flag = powered.clone();
    let agent = Agent::new(ReapMode::PerChild, move || flag.store(true, Ordering::SeqCst)).unwrap();
    let t = std::thread::spawn(move || agent.handle(theirs));
    power_off(ours).unwrap();
    t.join().unwrap().unwrap();
    assert!(powered.load(Ordering::SeqCst));
}

#[test]
fn agent_serves_a_unix_listener() {
    let dir = scratch("listen");
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let agent = agent();
    std::thread::spawn(move || agent.serve(listener));
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let conn = UnixStream::connect(path).unwrap();
                output(conn, &sh(&format!("echo {i}")), None).unwrap().stdout
            })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.join().unwrap(), format!("{i}\n").as_bytes());
    }
    let _ = std::fs::remove_dir_all(dir);
}
