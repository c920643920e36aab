//! The host side of the sandbox above the VM: a fake kiln vsock socket
//! (CONNECT/OK, then the real agent logic on the stream) stands in for the
//! microVM, so commands, pipes, timeouts and transfers run for real.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::agent::reaper::ReapMode;
use super::agent::Agent;
use super::client::tests::noise;
use super::conn::{connect_port, ConnectError};
use super::protocol::DEFAULT_OUTPUT_CAP;
use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-sbx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How the fake vsock socket answers a `CONNECT` line.
#[derive(Clone, Copy)]
enum Answer {
    /// `OK`, then the agent serves the stream.
    Agent,
    /// Closes at once, as kiln's muxer does when nothing listens.
    Hangup,
    /// Some other text.
    Garbage(&'static str),
}

/// Serves `socket` like kiln's vsock device in front of the agent: reads
/// the CONNECT line, answers, and hands the stream to the agent logic.
fn fake_vsock(socket: &Path, answer: Answer) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap();
    let agent = Agent::new(ReapMode::PerChild, || {}).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                let mut byte = [0u8];
                while stream.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                assert_eq!(line, b"CONNECT 1024");
                match answer {
                    Answer::Agent => {
                        stream.write_all(b"OK 1073741824\n").unwrap();
                        let _ = agent.handle(stream);
                    }
                    Answer::Hangup => {}
                    Answer::Garbage(text) => {
                        let _ = stream.write_all(text.as_bytes());
                    }
                }
            });
        }
    });
}

fn sandbox_with(name: &str, timeout: Option<Duration>, cap: u64) -> (Sandbox, PathBuf) {
    let dir = scratch(name);
    let socket = dir.join("vsock");
    fake_vsock(&socket, Answer::Agent);
    (Sandbox::over_socket(socket, timeout, cap), dir)
}

fn sandbox(name: &str) -> Sandbox {
    sandbox_with(name, None, DEFAULT_OUTPUT_CAP).0
}

#[test]
fn connect_reads_the_ok_line_and_leaves_what_follows() {
    let dir = scratch("conn-ok");
    let socket = dir.join("vsock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 13];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"CONNECT 1024\n");
        // The agent's first bytes come in the same write as the answer.
        s.write_all(b"OK 99\nAGENT").unwrap();
    });
    let mut conn = connect_port(&socket, 1024, Duration::from_secs(5)).unwrap();
    let mut rest = String::new();
    conn.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "AGENT");
    server.join().unwrap();
}

#[test]
fn connect_hangup_means_not_listening_and_is_retried() {
    let dir = scratch("conn-hangup");
    let socket = dir.join("vsock");
    fake_vsock(&socket, Answer::Hangup);
    let err = connect_port(&socket, 1024, Duration::from_secs(5)).err().unwrap();
    assert!(matches!(err, ConnectError::NotListening), "{err}");
    assert!(err.is_transient());
    let missing = connect_port(&dir.join("none"), 1024, Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(matches!(missing, ConnectError::NoSocket(_)) && missing.is_transient());
}

#[test]
fn connect_refuses_an_answer_that_is_not_ok() {
    let dir = scratch("conn-bad");
    for (i, text) in ["ERR nope\n", "OK notaport\n", "OK 1", &"x".repeat(4096)]
        .into_iter()
        .enumerate()
    {
        let socket = dir.join(format!("vsock{i}"));
        fake_vsock(
            &socket,
            Answer::Garbage(Box::leak(text.to_string().into_boxed_str())),
        );
        let err = connect_port(&socket, 1024, Duration::from_secs(5)).err().unwrap();
        assert!(matches!(err, ConnectError::BadAnswer(_)), "{text:?}: {err}");
        assert!(!err.is_transient());
    }
}

#[test]
fn connect_times_out_on_a_silent_socket() {
    let dir = scratch("conn-silent");
    let socket = dir.join("vsock");
    let listener = UnixListener::bind(&socket).unwrap();
    let start = Instant::now();
    let err = connect_port(&socket, 1024, Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(listener);
}

#[test]
fn output_collects_streams_and_status() {
    let sb = sandbox("output");
    let out = sb
        .command("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.status.signal(), None);
    assert!(!out.status.success());
    assert_eq!(out.status.to_string(), "exit status: 3");
}

#[test]
fn output_feeds_stdin_bytes_larger_than_the_window() {
    let sb = sandbox("stdin-bytes");
    let data = noise(3 << 20, 7);
    let out = sb.command("cat").stdin(data.clone()).output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data, "stdin did not round-trip");
}

#[test]
fn env_and_cwd_reach_the_command() {
    let sb = sandbox("env");
    let out = sb
        .command("sh")
        .args(["-c", "echo \"$A $B\"; pwd"])
        .env("A", "one")
        .envs([("B", "two")])
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "one two\n/tmp\n");
}

#[test]
fn spawn_failures_are_127_and_126_like_a_shell() {
    let sb = sandbox("spawnfail");
    let out = sb.command("kiln-no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let err = sb.command("kiln-no-such-command").spawn().err().unwrap();
    assert!(
        matches!(err, SandboxError::SpawnFailed { exit_code: 127, .. }),
        "{err}"
    );
    let status = sb
        .command("true")
        .current_dir("/nonexistent-dir")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(126));
}

#[test]
fn spawn_with_piped_streams_round_trips_stdin() {
    let sb = sandbox("spawn-pipes");
    let mut child = sb
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(child.id() > 0);
    assert!(child.stderr.is_none());
    let data = noise(2 << 20, 3);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            stdin.write_all(&data).unwrap();
            // Dropping stdin is end-of-file.
        })
    };
    let mut back = Vec::new();
    stdout.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "piped stdin did not come back intact");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_full_pipe_stops_reading_the_connection() {
    let sb = sandbox("backpressure");
    let total = 8usize << 20;
    let mut child = sb
        .command("head")
        .args(["-c", &total.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Nobody reads: the command is held back, and no more than one pipe
    // buffer (plus a chunk) waits here.
    assert!(
        child.try_wait().unwrap().is_none(),
        "8 MiB went into a 1 MiB pipe"
    );
    let buffered = child.demux().lock_len(protocol::OutputStream::Stdout);
    assert!(buffered <= child::PIPE_BUFFER + protocol::MAX_CHUNK, "{buffered}");
    let mut all = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), total);
    assert!(child.wait().unwrap().success());
}

#[test]
fn kill_ends_the_command_with_signal_nine() {
    let sb = sandbox("kill");
    let mut child = sb.command("sleep").arg("100").spawn().unwrap();
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(status.shell_code(), 137);
    // Killing an exited command is not an error.
    child.kill().unwrap();
    assert_eq!(child.try_wait().unwrap(), Some(status));
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn dropping_a_child_kills_its_command() {
    let sb = sandbox("drop-child");
    let child = sb.command("sleep").arg("100").spawn().unwrap();
    let pid = child.id();
    assert!(alive(pid));
    drop(child);
    // The agent (in this process here) kills a command whose connection closed.
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "command {pid} outlived its Child"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_timeout_tears_down_then_later_calls_are_stopped() {
    let (sb, _) = sandbox_with("timeout", Some(Duration::from_millis(300)), DEFAULT_OUTPUT_CAP);
    assert!(sb.command("true").status().unwrap().success());
    let start = Instant::now();
    let err = sb.command("sleep").arg("100").output().err().unwrap();
    assert!(matches!(err, SandboxError::Timeout(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(
        sb.stop_handle().exit_reason(),
        Some(crate::exit::ExitReason::Stopped)
    );
    let later = sb.command("true").status().err().unwrap();
    assert!(matches!(later, SandboxError::Stopped(_)), "{later}");
    assert!(later.to_string().contains("timeout"), "{later}");
    let file = sb.read_file("/etc/hostname").err().unwrap();
    assert!(matches!(file, SandboxError::Stopped(_)), "{file}");
}

#[test]
fn the_timeout_holds_for_a_child_nobody_waits_on() {
    let (sb, _) = sandbox_with(
        "timeout-child",
        Some(Duration::from_millis(300)),
        DEFAULT_OUTPUT_CAP,
    );
    let mut child = sb.command("sleep").arg("100").spawn().unwrap();
    let start = Instant::now();
    while sb.stop_handle().exit_reason().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the timeout never fired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = child.wait().err().unwrap();
    assert!(matches!(err, SandboxError::Timeout(_)), "{err}");
}

#[test]
fn a_stopped_vm_fails_calls_with_stopped() {
    let sb = sandbox("stopped");
    sb.stop_handle().stop();
    let err = sb.command("true").output().err().unwrap();
    assert!(matches!(err, SandboxError::Stopped(_)), "{err}");
}

#[test]
fn output_over_the_cap_is_cut_and_reported() {
    let (sb, _) = sandbox_with("cap", None, 1000);
    let out = sb
        .command("sh")
        .args(["-c", "head -c 5000 /dev/zero; echo e >&2"])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_cut);
    assert!(!out.stderr_cut);
    assert_eq!(out.stderr, b"e\n");
}

#[test]
fn four_commands_at_once_and_twenty_in_a_row() {
    let sb = sandbox("many");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let sb = &sb;
                s.spawn(move || {
                    sb.command("sh")
                        .args(["-c", &format!("sleep 0.2; echo {i}")])
                        .output()
                        .unwrap()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap().stdout, format!("{i}\n").as_bytes());
        }
    });
    for i in 0..20 {
        let out = sb.command("echo").arg(i.to_string()).output().unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
}

#[test]
fn files_round_trip_byte_exact() {
    let sb = sandbox("files");
    let dir = scratch("files-data");
    let data = noise(5 << 20, 9);
    let guest = dir.join("guest/in.bin");
    sb.write_file(guest.to_str().unwrap(), &data).unwrap();
    assert!(sb.read_file(guest.to_str().unwrap()).unwrap() == data);
    let out = dir.join("out.bin");
    sb.copy_out(guest.to_str().unwrap(), &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    let copied = dir.join("copied.bin");
    sb.copy_in(&out, copied.to_str().unwrap()).unwrap();
    assert!(std::fs::read(&copied).unwrap() == data);
    let err = sb.read_file(dir.join("missing").to_str().unwrap()).err().unwrap();
    assert!(matches!(err, SandboxError::Agent(_)), "{err}");
}

#[test]
fn stdin_cannot_be_inherited_and_stdout_cannot_be_bytes() {
    let sb = sandbox("invalid");
    let err = sb.command("true").stdin(Stdio::inherit()).spawn().err().unwrap();
    assert!(matches!(err, SandboxError::InvalidRequest(_)), "{err}");
    let err = sb
        .command("true")
        .stdout(Stdio::from("x"))
        .output()
        .err()
        .unwrap();
    assert!(matches!(err, SandboxError::InvalidRequest(_)), "{err}");
}
