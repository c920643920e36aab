//! One command on one connection.
//!
//! Threads: this one reads the host's frames (stdin, EOF, resize, signal)
//! and never blocks on the command, so a signal always gets through; one
//! per output stream pumps the command's pipe into frames, blocking when
//! the host stops reading (then the command blocks on its full pipe); one
//! writes stdin to the command and grants the host credit only for what it
//! wrote; one waits for the exit and sends `Exited` after all output.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::pty::{open_pty, set_size};
use super::reaper::Reaper;
use super::AgentError;
use crate::lock;
use crate::protocol::{
    read_frame, write_frame, AgentMsg, Conn, ExecRequest, ExitStatus, HostMsg, MsgName, OutputStream,
    ProtocolError, MAX_CHUNK, STDIN_WINDOW,
};

const PEER: &str = "host";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The largest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;
/// What a pty turns into end-of-file for the reader (the default VEOF, ^D).
const PTY_EOF: u8 = 0x04;

type Writer<C> = Arc<Mutex<C>>;

fn send<C: Conn>(writer: &Mutex<C>, msg: &AgentMsg) -> Result<(), ProtocolError> {
    write_frame(&mut *lock(writer), msg, PEER)
}

/// A started command: its pid (also its process group: each command runs
/// in its own session) and whether it has finished, after which its
/// process group id may be reused and must not be signalled.
struct Proc {
    pid: libc::pid_t,
    finished: Mutex<bool>,
}

impl Proc {
    fn signal(&self, sig: i32) {
        let finished = lock(&self.finished);
        if !*finished {
            // SAFETY: kill only sends a signal; -pid names the command's group.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }
}

enum StdinItem {
    Data(Vec<u8>),
    Eof,
}

struct Spawned {
    pid: libc::pid_t,
    status: Receiver<ExitStatus>,
    stdin: Option<Box<dyn Write + Send>>,
    outputs: Vec<(OutputStream, Box<dyn Read + Send>)>,
    /// The pty master, kept for resizing.
    pty: Option<File>,
}

/// What a shell would say and exit with when a command cannot start.
fn spawn_failure(program: &str, err: &io::Error) -> (i32, String) {
    match err.kind() {
        io::ErrorKind::NotFound if !program.contains('/') => (127, format!("{program}: command not found")),
        io::ErrorKind::NotFound => (127, format!("{program}: {err}")),
        _ => (126, format!("{program}: {err}")),
    }
}

fn spawn(req: &ExecRequest, reaper: &Reaper) -> Result<Spawned, (i32, String)> {
    let Some(program) = req.argv.first() else {
        return Err((127, "no command given".to_string()));
    };
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root");
    if req.pty.is_some() {
        cmd.env("TERM", "xterm");
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &req.cwd {
        match std::fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err((126, format!("working directory {cwd}: not a directory"))),
            Err(e) => return Err((126, format!("working directory {cwd}: {e}"))),
        }
        cmd.current_dir(cwd);
    }
    let pty = match req.pty {
        Some(size) => {
            let pty = open_pty(size).map_err(|e| (126, format!("opening a pty: {e}")))?;
            let dup = |f: &File| f.try_clone().map_err(|e| (126, format!("opening a pty: {e}")));
            cmd.stdin(dup(&pty.slave)?)
                .stdout(dup(&pty.slave)?)
                .stderr(pty.slave);
            // SAFETY: the closure calls only async-signal-safe functions
            // (setsid, ioctl) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            Some(pty.master)
        }
        None => {
            cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            None
        }
    };
    let (mut child, status) = reaper.spawn(&mut cmd).map_err(|e| spawn_failure(program, &e))?;
    // The Command holds the pty slave: drop it, or the master never sees EOF.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let io_fail = |e: io::Error| (126, format!("setting up the command's terminal: {e}"));
    let (stdin, outputs): (Option<Box<dyn Write + Send>>, Vec<_>) = match &pty {
        Some(master) => (
            Some(Box::new(master.try_clone().map_err(io_fail)?)),
            vec![(
                OutputStream::Stdout,
                Box::new(master.try_clone().map_err(io_fail)?) as Box<dyn Read + Send>,
            )],
        ),
        None => {
            let mut outputs: Vec<(OutputStream, Box<dyn Read + Send>)> = Vec::new();
            if let Some(out) = child.stdout.take() {
                outputs.push((OutputStream::Stdout, Box::new(out)));
            }
            if let Some(err) = child.stderr.take() {
                outputs.push((OutputStream::Stderr, Box::new(err)));
            }
            let stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>);
            (stdin, outputs)
        }
    };
    Ok(Spawned {
        pid,
        status,
        stdin,
        outputs,
        pty,
    })
}

/// Runs `req` and serves its connection until the command has exited and
/// its output is sent, or the host goes away (then the command is killed).
pub(super) fn serve<C: Conn>(mut conn: C, req: ExecRequest, reaper: &Reaper) -> Result<(), AgentError> {
    let writer: Writer<C> = Arc::new(Mutex::new(conn.try_clone().map_err(AgentError::conn)?));
    let spawned = match spawn(&req, reaper) {
        Ok(spawned) => spawned,
        Err((exit_code, message)) => {
            send(&writer, &AgentMsg::SpawnFailed { exit_code, message })?;
            return Ok(());
        }
    };
    let proc = Arc::new(Proc {
        pid: spawned.pid,
        finished: Mutex::new(false),
    });
    send(
        &writer,
        &AgentMsg::Started {
            pid: spawned.pid as u32,
            stdin_window: STDIN_WINDOW,
        },
    )?;

    let mut pumps = Vec::new();
    for (stream, source) in spawned.outputs {
        let writer = writer.clone();
        let cap = req.output_cap;
        pumps.push(thread("output", move || {
            pump_output(source, stream, cap, &writer)
        })?);
    }
    let credit = Arc::new(AtomicU64::new(u64::from(STDIN_WINDOW)));
    let stdin_tx = match spawned.stdin {
        Some(sink) if req.stdin => {
            let (tx, rx) = channel();
            let (writer, credit) = (writer.clone(), credit.clone());
            let is_pty = spawned.pty.is_some();
            thread("stdin", move || feed_stdin(sink, &rx, is_pty, &credit, &writer))?;
            Some(tx)
        }
        _ => None,
    };
    {
        let (writer, proc) = (writer.clone(), proc.clone());
        let status = spawned.status;
        thread("exit", move || finish(&status, pumps, &proc, &writer))?;
    }

    let mut stdin_tx = stdin_tx;
    let result = loop {
        let msg = match read_frame::<_, HostMsg>(&mut conn, PEER) {
            Ok(Some(msg)) => msg,
            Ok(None) => break Ok(()),
            Err(e) => break Err(AgentError::from(e)),
        };
        match msg {
            HostMsg::Stdin(data) => {
                let Some(tx) = &stdin_tx else {
                    break Err(AgentError::HostBroke(
                        "stdin data after EOF or for a command without stdin".into(),
                    ));
                };
                let len = data.len() as u64;
                if data.len() > MAX_CHUNK || len > credit.load(Ordering::Acquire) {
                    break Err(AgentError::HostBroke(format!(
                        "{len} bytes of stdin beyond the credit granted"
                    )));
                }
                credit.fetch_sub(len, Ordering::AcqRel);
                let _ = tx.send(StdinItem::Data(data));
            }
            HostMsg::StdinEof => {
                if let Some(tx) = stdin_tx.take() {
                    let _ = tx.send(StdinItem::Eof);
                }
            }
            HostMsg::Resize(size) => {
                if let Some(master) = &spawned.pty {
                    let _ = set_size(master, size);
                }
            }
            HostMsg::Signal(sig) if (1..=MAX_SIGNAL).contains(&sig) => proc.signal(sig),
            other => {
                break Err(AgentError::HostBroke(format!(
                    "unexpected {} during a command",
                    other.name()
                )))
            }
        }
    };
    // Leaving before the command finished: the host is gone or broke the
    // protocol, and nobody would read the output. The error goes out and
    // the connection closes first, so that the `Exited` the kill causes
    // cannot end the connection before the host hears why.
    if let Err(e) = &result {
        try_send_error(&writer, &e.to_string());
        let _ = conn.shutdown(Shutdown::Both);
    }
    proc.signal(libc::SIGKILL);
    result
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, AgentError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| AgentError::Io {
            what: "starting a thread",
            source,
        })
}

/// Sends a last `Error` if the writer is free soon: a pump blocked on a
/// host that does not read must not keep this thread too.
fn try_send_error<C: Conn>(writer: &Mutex<C>, message: &str) {
    for _ in 0..20 {
        if let Ok(mut w) = writer.try_lock() {
            let _ = write_frame(&mut *w, &AgentMsg::Error(message.to_string()), PEER);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pump_output<C: Conn>(mut source: Box<dyn Read + Send>, stream: OutputStream, cap: u64, writer: &Mutex<C>) {
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut sent = 0u64;
    let mut cut = false;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EIO: the pty's last slave closed. Anything else ends the stream too.
            Err(_) => return,
        };
        if cut {
            // Keep draining, so the command is not blocked by a cap it passed.
            continue;
        }
        let take = (cap - sent).min(n as u64) as usize;
        if take > 0 {
            let data = buf[..take].to_vec();
            let msg = match stream {
                OutputStream::Stdout => AgentMsg::Stdout(data),
                OutputStream::Stderr => AgentMsg::Stderr(data),
            };
            if send(writer, &msg).is_err() {
                return;
            }
            sent += take as u64;
        }
        if take < n {
            cut = true;
            if send(writer, &AgentMsg::OutputCut { stream, limit: cap }).is_err() {
                return;
            }
        }
    }
}

fn feed_stdin<C: Conn>(
    mut sink: Box<dyn Write + Send>,
    items: &Receiver<StdinItem>,
    is_pty: bool,
    credit: &AtomicU64,
    writer: &Mutex<C>,
) {
    // Once the command stops taking stdin, the rest is dropped, still
    // granting credit so the host is not left waiting.
    let mut open = true;
    while let Ok(item) = items.recv() {
        match item {
            StdinItem::Data(data) => {
                if open && sink.write_all(&data).is_err() {
                    open = false;
                }
                credit.fetch_add(data.len() as u64, Ordering::AcqRel);
                // len <= MAX_CHUNK, checked on receipt.
                if send(writer, &AgentMsg::StdinCredit(data.len() as u32)).is_err() {
                    return;
                }
            }
            StdinItem::Eof => {
                if is_pty && open {
                    let _ = sink.write_all(&[PTY_EOF]);
                }
                return;
            }
        }
    }
}

fn finish<C: Conn>(
    status: &Receiver<ExitStatus>,
    pumps: Vec<JoinHandle<()>>,
    proc: &Proc,
    writer: &Mutex<C>,
) {
    // A lost status (cannot happen while the reaper lives) reads as killed.
    let exit = status.recv().unwrap_or(ExitStatus::Signal(libc::SIGKILL));
    for pump in pumps {
        let _ = pump.join();
    }
    *lock(&proc.finished) = true;
    let mut conn = lock(writer);
    let _ = write_frame(&mut *conn, &AgentMsg::Exited(exit), PEER);
    let _ = conn.shutdown(Shutdown::Both);
}
