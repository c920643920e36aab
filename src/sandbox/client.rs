//! The host's side of the agent protocol, over one connected stream per
//! operation: run a command ([`ExecSession`], or [`run`] and [`output`]
//! on top of it), move files in and out, power the guest off.
//!
//! The agent is inside the sandbox and so untrusted: every frame it sends
//! is checked, and what the host keeps in memory for it is capped.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use super::protocol::{
    exchange_hello, read_frame, write_frame, AgentMsg, Conn, Entry, ExecRequest, ExitStatus, HostMsg,
    MsgName, OutputStream, ProtocolError, WindowSize, MAX_CHUNK,
};
use super::transfer::{send_tree, Item, Limits, TransferError, TreeWriter};
use crate::sync::lock;

const PEER: &str = "guest agent";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the guest agent reported: {0}")]
    Agent(String),
    #[error("the guest agent broke the protocol: {0}")]
    AgentBroke(String),
    #[error("the command has exited and takes no more stdin")]
    Exited,
    #[error("the command's {stream} could not be written here: {source}")]
    Sink {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path} in the guest is not a regular file; use a tree transfer for directories")]
    NotAFile { path: String },
    #[error("{path} in the guest is larger than the {limit}-byte limit; raise the limit")]
    FileTooLarge { path: String, limit: u64 },
}

fn unexpected(msg: &AgentMsg, context: &str) -> ClientError {
    ClientError::AgentBroke(format!("unexpected {} {context}", msg.name()))
}

/// Stdin credit: how much the host may still send, and whether the
/// command is over (which wakes a sender waiting for credit).
struct Credit {
    state: Mutex<(u64, bool)>,
    granted: Condvar,
}

impl Credit {
    fn add(&self, n: u64) {
        let mut state = lock(&self.state);
        state.0 = state.0.saturating_add(n);
        self.granted.notify_all();
    }
    fn end(&self) {
        lock(&self.state).1 = true;
        self.granted.notify_all();
    }
    /// Waits for credit; takes up to `want` bytes of it.
    fn take(&self, want: usize) -> Result<usize, ClientError> {
        let mut state = lock(&self.state);
        loop {
            if state.1 {
                return Err(ClientError::Exited);
            }
            if state.0 > 0 {
                let n = state.0.min(want as u64) as usize;
                state.0 -= n as u64;
                return Ok(n);
            }
            state = self
                .granted
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// What the command produced, one frame at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The agent cut this stream at its cap.
    OutputCut {
        stream: OutputStream,
        limit: u64,
    },
    /// The last event: all output came before it.
    Exited(ExitStatus),
}

/// The outcome of asking the agent to start a command.
pub enum Started<C: Conn> {
    Running(ExecSession<C>),
    /// As a shell: 127 not found, 126 not executable.
    SpawnFailed {
        exit_code: i32,
        message: String,
    },
}

/// A running command. Read its events with [`ExecSession::next_event`]
/// (which also takes in the stdin credit); write stdin and send signals
/// from other threads through [`ExecSession::stdin`] and
/// [`ExecSession::control`]. Dropping it closes the connection, and the
/// agent kills a command whose connection is gone.
pub struct ExecSession<C: Conn> {
    reader: C,
    writer: Arc<Mutex<C>>,
    credit: Arc<Credit>,
    pid: u32,
    stdin: bool,
    done: bool,
}

impl<C: Conn> Drop for ExecSession<C> {
    fn drop(&mut self) {
        self.credit.end();
        let _ = self.reader.shutdown(Shutdown::Both);
    }
}

impl<C: Conn> ExecSession<C> {
    pub fn start(mut conn: C, req: &ExecRequest) -> Result<Started<C>, ClientError> {
        exchange_hello(&mut conn, PEER)?;
        write_frame(&mut conn, &HostMsg::Exec(req.clone()), PEER)?;
        let reply = read_frame::<_, AgentMsg>(&mut conn, PEER)?.ok_or(ProtocolError::Closed {
            peer: PEER,
            expected: "starting the command",
        })?;
        let (pid, window) = match reply {
            AgentMsg::Started { pid, stdin_window } => (pid, stdin_window),
            AgentMsg::SpawnFailed { exit_code, message } => {
                return Ok(Started::SpawnFailed { exit_code, message })
            }
            AgentMsg::Error(message) => return Err(ClientError::Agent(message)),
            other => return Err(unexpected(&other, "instead of Started")),
        };
        let writer = conn
            .try_clone()
            .map_err(|source| ProtocolError::Io { peer: PEER, source })?;
        Ok(Started::Running(ExecSession {
            reader: conn,
            writer: Arc::new(Mutex::new(writer)),
            credit: Arc::new(Credit {
                state: Mutex::new((u64::from(window), false)),
                granted: Condvar::new(),
            }),
            pid,
            stdin: req.stdin,
            done: false,
        }))
    }

    /// The command's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command's stdin, if the request asked for it.
    pub fn stdin(&self) -> Option<StdinSender<C>> {
        self.stdin.then(|| StdinSender {
            writer: self.writer.clone(),
            credit: self.credit.clone(),
        })
    }

    pub fn control(&self) -> ExecControl<C> {
        ExecControl {
            writer: self.writer.clone(),
        }
    }

    /// The next event; `None` after `Exited`.
    pub fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let event = self.read_event();
        if !matches!(
            event,
            Ok(Some(
                ExecEvent::Stdout(_) | ExecEvent::Stderr(_) | ExecEvent::OutputCut { .. }
            ))
        ) {
            self.done = true;
            self.credit.end();
        }
        event
    }

    fn read_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        loop {
            let msg = read_frame::<_, AgentMsg>(&mut self.reader, PEER)?.ok_or(ProtocolError::Closed {
                peer: PEER,
                expected: "reporting the command's exit",
            })?;
            return Ok(Some(match msg {
                AgentMsg::StdinCredit(n) => {
                    self.credit.add(u64::from(n));
                    continue;
                }
                AgentMsg::Stdout(data) => ExecEvent::Stdout(data),
                AgentMsg::Stderr(data) => ExecEvent::Stderr(data),
                AgentMsg::OutputCut { stream, limit } => ExecEvent::OutputCut { stream, limit },
                AgentMsg::Exited(status) => ExecEvent::Exited(status),
                AgentMsg::Error(message) => return Err(ClientError::Agent(message)),
                other => return Err(unexpected(&other, "while a command runs")),
            }));
        }
    }
}

/// Signals and resizes for a running command; usable from any thread.
pub struct ExecControl<C: Conn> {
    writer: Arc<Mutex<C>>,
}

impl<C: Conn> Clone for ExecControl<C> {
    fn clone(&self) -> Self {
        ExecControl {
            writer: self.writer.clone(),
        }
    }
}

impl<C: Conn> ExecControl<C> {
    /// Sends signal `sig` to the command's process group.
    pub fn signal(&self, sig: i32) -> Result<(), ClientError> {
        write_frame(&mut *lock(&self.writer), &HostMsg::Signal(sig), PEER).map_err(Into::into)
    }

    pub fn resize(&self, size: WindowSize) -> Result<(), ClientError> {
        write_frame(&mut *lock(&self.writer), &HostMsg::Resize(size), PEER).map_err(Into::into)
    }
}

/// The command's stdin. Writes wait for the agent's credit, so a command
/// that does not read makes them wait rather than pile up anywhere.
pub struct StdinSender<C: Conn> {
    writer: Arc<Mutex<C>>,
    credit: Arc<Credit>,
}

impl<C: Conn> StdinSender<C> {
    pub fn send(&self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let n = self.credit.take(data.len().min(MAX_CHUNK))?;
            let msg = HostMsg::Stdin(data[..n].to_vec());
            write_frame(&mut *lock(&self.writer), &msg, PEER)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Sends end-of-file (on a pty: ^D).
    pub fn close(self) -> Result<(), ClientError> {
        write_frame(&mut *lock(&self.writer), &HostMsg::StdinEof, PEER).map_err(Into::into)
    }
}

impl<C: Conn> Write for StdinSender<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map(|()| buf.len()).map_err(|e| match e {
            ClientError::Exited => io::Error::new(io::ErrorKind::BrokenPipe, e),
            e => io::Error::other(e),
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How [`run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: ExitStatus,
    /// Why the command did not start (then `status` is 127 or 126).
    pub spawn_error: Option<String>,
    pub stdout_cut: bool,
    pub stderr_cut: bool,
}

/// Runs a command to its end, streaming its output into `stdout` and
/// `stderr` as it arrives. `stdin`, if any, is pumped from a thread of its
/// own (a blocking source such as a terminal must not hold up the result).
pub fn run<C: Conn>(
    conn: C,
    req: &ExecRequest,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<RunOutcome, ClientError> {
    let mut req = req.clone();
    req.stdin = stdin.is_some();
    let mut session = match ExecSession::start(conn, &req)? {
        Started::Running(session) => session,
        Started::SpawnFailed { exit_code, message } => {
            return Ok(RunOutcome {
                status: ExitStatus::Code(exit_code),
                spawn_error: Some(message),
                stdout_cut: false,
                stderr_cut: false,
            })
        }
    };
    if let (Some(source), Some(sender)) = (stdin, session.stdin()) {
        std::thread::Builder::new()
            .name("sandbox-stdin".into())
            .spawn(move || pump_stdin(source, sender))
            .map_err(|source| ClientError::Sink {
                stream: "stdin",
                source,
            })?;
    }
    let (mut stdout_cut, mut stderr_cut) = (false, false);
    while let Some(event) = session.next_event()? {
        match event {
            ExecEvent::Stdout(data) => {
                stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .map_err(|source| ClientError::Sink {
                        stream: "stdout",
                        source,
                    })?
            }
            ExecEvent::Stderr(data) => {
                stderr
                    .write_all(&data)
                    .and_then(|()| stderr.flush())
                    .map_err(|source| ClientError::Sink {
                        stream: "stderr",
                        source,
                    })?
            }
            ExecEvent::OutputCut { stream, .. } => match stream {
                OutputStream::Stdout => stdout_cut = true,
                OutputStream::Stderr => stderr_cut = true,
            },
            ExecEvent::Exited(status) => {
                return Ok(RunOutcome {
                    status,
                    spawn_error: None,
                    stdout_cut,
                    stderr_cut,
                })
            }
        }
    }
    Err(ClientError::AgentBroke("events ended without Exited".into()))
}

fn pump_stdin<C: Conn>(mut source: Box<dyn Read + Send>, sender: StdinSender<C>) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if sender.send(&buf[..n]).is_err() {
                    // The command exited or the connection is gone.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // An unreadable source ends stdin like EOF would.
            Err(_) => break,
        }
    }
    let _ = sender.close();
}

/// A `Write` that keeps at most `cap` bytes and notes what it dropped.
struct CappedBuf {
    data: Vec<u8>,
    cap: u64,
    cut: bool,
}

impl Write for CappedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.data.len() as u64);
        let take = room.min(buf.len() as u64) as usize;
        self.data.extend_from_slice(&buf[..take]);
        self.cut |= take < buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A finished command's collected output, like `std::process::Output`.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub spawn_error: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More than `output_cap` bytes were produced; the rest was dropped.
    pub stdout_cut: bool,
    pub stderr_cut: bool,
}

/// Runs a command with `stdin` as its input and collects its output, each
/// stream capped here at `req.output_cap` too, whatever the agent does.
pub fn output<C: Conn>(conn: C, req: &ExecRequest, stdin: Option<Vec<u8>>) -> Result<Output, ClientError> {
    let new_buf = || CappedBuf {
        data: Vec::new(),
        cap: req.output_cap,
        cut: false,
    };
    let (mut out, mut err) = (new_buf(), new_buf());
    let stdin = stdin.map(|data| Box::new(io::Cursor::new(data)) as Box<dyn Read + Send>);
    let outcome = run(conn, req, stdin, &mut out, &mut err)?;
    Ok(Output {
        status: outcome.status,
        spawn_error: outcome.spawn_error,
        stdout: out.data,
        stderr: err.data,
        stdout_cut: outcome.stdout_cut || out.cut,
        stderr_cut: outcome.stderr_cut || err.cut,
    })
}

/// Reads the agent's final answer to a request: `Done` or its error.
fn expect_done<C: Conn>(conn: &mut C, context: &'static str) -> Result<(), ClientError> {
    match read_frame::<_, AgentMsg>(conn, PEER)? {
        Some(AgentMsg::Done) => Ok(()),
        Some(AgentMsg::Error(message)) => Err(ClientError::Agent(message)),
        Some(other) => Err(unexpected(&other, context)),
        None => Err(ProtocolError::Closed {
            peer: PEER,
            expected: context,
        }
        .into()),
    }
}

/// Sends a transfer made by `feed`, then reads the agent's answer. If the
/// agent hung up mid-way, its answer (the reason) is still read.
fn put<C: Conn>(
    mut conn: C,
    dest: &str,
    feed: impl FnOnce(&mut C) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    exchange_hello(&mut conn, PEER)?;
    let sent = write_frame(&mut conn, &HostMsg::Put { dest: dest.into() }, PEER)
        .map_err(ClientError::from)
        .and_then(|()| feed(&mut conn))
        .and_then(|()| write_frame(&mut conn, &HostMsg::Done, PEER).map_err(Into::into));
    let answer = expect_done(&mut conn, "answering a transfer");
    match (sent, answer) {
        (Ok(()), answer) => answer,
        (Err(_), Err(agent @ ClientError::Agent(_))) => Err(agent),
        (Err(e), _) => Err(e),
    }
}

fn item_msg(item: Item) -> HostMsg {
    match item {
        Item::Entry(entry) => HostMsg::Entry(entry),
        Item::Data(data) => HostMsg::Data(data),
    }
}

/// Writes `data` to `path` in the guest with permission bits `mode`.
pub fn write_file<C: Conn>(conn: C, path: &str, data: &[u8], mode: u32) -> Result<(), ClientError> {
    put(conn, path, |conn| {
        let entry = Entry::File {
            path: String::new(),
            mode,
        };
        write_frame(conn, &HostMsg::Entry(entry), PEER)?;
        for chunk in data.chunks(MAX_CHUNK) {
            write_frame(conn, &HostMsg::Data(chunk.to_vec()), PEER)?;
        }
        Ok(())
    })
}

/// Copies the host file or tree `src` to `dest` in the guest.
pub fn copy_in<C: Conn>(conn: C, src: &Path, dest: &str) -> Result<(), ClientError> {
    put(conn, dest, |conn| {
        send_tree(src, |item| {
            write_frame(conn, &item_msg(item), PEER).map_err(TransferError::from)
        })
        .map_err(Into::into)
    })
}

fn start_get<C: Conn>(conn: &mut C, src: &str) -> Result<(), ClientError> {
    exchange_hello(conn, PEER)?;
    write_frame(conn, &HostMsg::Get { src: src.into() }, PEER).map_err(Into::into)
}

/// Reads the guest file `path`, refusing more than `max_bytes`.
pub fn read_file<C: Conn>(mut conn: C, path: &str, max_bytes: u64) -> Result<Vec<u8>, ClientError> {
    start_get(&mut conn, path)?;
    let mut data = Vec::new();
    let mut seen_file = false;
    loop {
        match read_frame::<_, AgentMsg>(&mut conn, PEER)? {
            Some(AgentMsg::Entry(Entry::File { path: rel, .. })) if rel.is_empty() && !seen_file => {
                seen_file = true
            }
            Some(AgentMsg::Entry(_)) => return Err(ClientError::NotAFile { path: path.into() }),
            Some(AgentMsg::Data(chunk)) if seen_file => {
                if (data.len() + chunk.len()) as u64 > max_bytes {
                    return Err(ClientError::FileTooLarge {
                        path: path.into(),
                        limit: max_bytes,
                    });
                }
                data.extend_from_slice(&chunk);
            }
            Some(AgentMsg::Done) if seen_file => return Ok(data),
            Some(AgentMsg::Error(message)) => return Err(ClientError::Agent(message)),
            Some(other) => return Err(unexpected(&other, "while reading a file")),
            None => {
                return Err(ProtocolError::Closed {
                    peer: PEER,
                    expected: "finishing the file",
                }
                .into())
            }
        }
    }
}

/// Copies the guest file or tree `src` to `dest` on the host, within `limits`.
pub fn copy_out<C: Conn>(mut conn: C, src: &str, dest: &Path, limits: Limits) -> Result<(), ClientError> {
    start_get(&mut conn, src)?;
    let mut writer = TreeWriter::new(dest, limits);
    loop {
        match read_frame::<_, AgentMsg>(&mut conn, PEER)? {
            Some(AgentMsg::Entry(entry)) => writer.entry(entry)?,
            Some(AgentMsg::Data(data)) => writer.data(&data)?,
            Some(AgentMsg::Done) => return writer.finish().map_err(Into::into),
            Some(AgentMsg::Error(message)) => return Err(ClientError::Agent(message)),
            Some(other) => return Err(unexpected(&other, "while copying out")),
            None => {
                return Err(ProtocolError::Closed {
                    peer: PEER,
                    expected: "finishing the copy",
                }
                .into())
            }
        }
    }
}

/// Asks the agent to power the guest off; returns once it has agreed.
pub fn power_off<C: Conn>(mut conn: C) -> Result<(), ClientError> {
    exchange_hello(&mut conn, PEER)?;
    write_frame(&mut conn, &HostMsg::PowerOff, PEER)?;
    expect_done(&mut conn, "agreeing to power off")
}

#[cfg(test)]
#[path = "client_tests.rs"]
pub(super) mod tests;
