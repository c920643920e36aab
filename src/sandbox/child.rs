//! A command running in the sandbox, shaped like `std::process::Child`.
//!
//! One connection carries both output streams. A pump thread per command
//! reads it and demultiplexes into one bounded buffer per stream: when the
//! buffer of a piped stream is full the pump stops reading the connection,
//! so the agent stops reading the command's pipe and the command blocks,
//! exactly as with a pipe. (Collected output, for `output()`, is cut at the
//! cap instead; a stream nobody asked for is dropped.) The pump also
//! enforces the sandbox's timeout while nobody waits on the child.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::client::{ClientError, ExecControl, ExecEvent, ExecSession, StdinSender};
use super::command::ExitStatus;
use super::conn::AgentConn;
use super::error::SandboxError;
use super::protocol::{Conn, OutputStream, WindowSize};
use super::vm::Shared;
use crate::sync::lock;

/// How a piped stream's buffer behaves, like a pipe's capacity.
pub const PIPE_BUFFER: usize = 1 << 20;

/// Where one output stream goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    /// Buffered up to this many bytes for a reader; full stops the pump.
    Pipe(usize),
    /// Kept up to this many bytes (for `output()`); the rest is dropped.
    Collect(u64),
    /// Written to this process's own stdout or stderr as it arrives.
    Inherit,
    Discard,
}

struct StreamBuf {
    sink: Sink,
    data: VecDeque<u8>,
    cut: bool,
    /// The reading handle is gone: drop what arrives.
    reader_gone: bool,
}

impl StreamBuf {
    fn new(sink: Sink) -> Self {
        StreamBuf {
            sink,
            data: VecDeque::new(),
            cut: false,
            reader_gone: false,
        }
    }
}

struct DemuxState {
    out: StreamBuf,
    err: StreamBuf,
    /// Set once when the pump ends: the exit status or why it failed.
    outcome: Option<Result<ExitStatus, SandboxError>>,
    /// The child was dropped: the pump must stop waiting for readers.
    cancelled: bool,
}

impl DemuxState {
    fn stream(&mut self, which: OutputStream) -> &mut StreamBuf {
        match which {
            OutputStream::Stdout => &mut self.out,
            OutputStream::Stderr => &mut self.err,
        }
    }
}

/// The buffers between the pump and the readers.
pub(crate) struct Demux {
    state: Mutex<DemuxState>,
    changed: Condvar,
}

/// Why the pump stopped early.
enum PushError {
    Cancelled,
    TimedOut,
    Sink(io::Error),
}

impl Demux {
    pub fn new(stdout: Sink, stderr: Sink) -> Arc<Self> {
        Arc::new(Demux {
            state: Mutex::new(DemuxState {
                out: StreamBuf::new(stdout),
                err: StreamBuf::new(stderr),
                outcome: None,
                cancelled: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DemuxState> {
        lock(&self.state)
    }

    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, DemuxState>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, DemuxState> {
        match deadline {
            None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.changed
                    .wait_timeout(guard, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
        }
    }

    /// Hands a chunk of output to its stream; waits while a pipe is full.
    fn push(&self, which: OutputStream, data: Vec<u8>, deadline: Option<Instant>) -> Result<(), PushError> {
        let mut state = self.lock();
        loop {
            if state.cancelled {
                return Err(PushError::Cancelled);
            }
            let buf = state.stream(which);
            if buf.reader_gone {
                return Ok(());
            }
            match buf.sink {
                Sink::Discard => return Ok(()),
                Sink::Inherit => {
                    drop(state);
                    let written = match which {
                        OutputStream::Stdout => write_flush(&mut io::stdout().lock(), &data),
                        OutputStream::Stderr => write_flush(&mut io::stderr().lock(), &data),
                    };
                    return written.map_err(PushError::Sink);
                }
                Sink::Collect(cap) => {
                    let room = cap.saturating_sub(buf.data.len() as u64);
                    let take = room.min(data.len() as u64) as usize;
                    buf.data.extend(&data[..take]);
                    buf.cut |= take < data.len();
                    return Ok(());
                }
                Sink::Pipe(limit) => {
                    if buf.data.len() < limit {
                        buf.data.extend(&data);
                        self.changed.notify_all();
                        return Ok(());
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PushError::TimedOut);
            }
            state = self.wait(state, deadline);
        }
    }

    fn mark_cut(&self, which: OutputStream) {
        self.lock().stream(which).cut = true;
    }

    fn finish(&self, outcome: Result<ExitStatus, SandboxError>) {
        let mut state = self.lock();
        state.outcome.get_or_insert(outcome);
        self.changed.notify_all();
    }

    /// Reads buffered output of a piped stream; 0 at its end.
    fn read(&self, which: OutputStream, out: &mut [u8]) -> io::Result<usize> {
        let mut state = self.lock();
        loop {
            let buf = state.stream(which);
            if !buf.data.is_empty() {
                let n = out.len().min(buf.data.len());
                for (dst, src) in out.iter_mut().zip(buf.data.drain(..n)) {
                    *dst = src;
                }
                self.changed.notify_all();
                return Ok(n);
            }
            if state.outcome.is_some() || out.is_empty() {
                return Ok(0);
            }
            state = self.wait(state, None);
        }
    }

    fn reader_gone(&self, which: OutputStream) {
        let mut state = self.lock();
        let buf = state.stream(which);
        buf.reader_gone = true;
        buf.data = VecDeque::new();
        self.changed.notify_all();
    }

    /// Waits for the pump's outcome. An error is handed out once; later
    /// calls say the command's state is unknown.
    fn wait_outcome(&self) -> Result<ExitStatus, SandboxError> {
        let mut state = self.lock();
        loop {
            match &state.outcome {
                Some(Ok(status)) => return Ok(*status),
                Some(Err(_)) => {
                    let taken = state.outcome.replace(Err(SandboxError::Stopped(
                        "the command failed earlier; its status is unknown".into(),
                    )));
                    if let Some(Err(e)) = taken {
                        return Err(e);
                    }
                }
                None => state = self.wait(state, None),
            }
        }
    }

    fn try_outcome(&self) -> Option<Result<ExitStatus, SandboxError>> {
        let done = self.lock().outcome.is_some();
        done.then(|| self.wait_outcome())
    }

    fn cancel(&self) {
        self.lock().cancelled = true;
        self.changed.notify_all();
    }

    /// Bytes waiting in a stream's buffer.
    #[cfg(test)]
    pub fn lock_len(&self, which: OutputStream) -> usize {
        self.lock().stream(which).data.len()
    }

    /// Takes a collected stream: its bytes and whether they were cut.
    pub fn take(&self, which: OutputStream) -> (Vec<u8>, bool) {
        let mut state = self.lock();
        let buf = state.stream(which);
        (std::mem::take(&mut buf.data).into(), buf.cut)
    }
}

fn write_flush(w: &mut dyn Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data).and_then(|()| w.flush())
}

/// Reads the command's events until it exits (or fails), feeding `demux`.
pub(crate) fn pump(
    mut session: ExecSession<AgentConn>,
    ctl: AgentConn,
    demux: Arc<Demux>,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
) {
    let outcome = loop {
        // Each read may wait only as long as the deadline leaves.
        if deadline.is_some() && ctl.arm(deadline).is_err() {
            break Err(shared.failure(
                deadline,
                SandboxError::Timeout(shared.timeout.unwrap_or_default()),
            ));
        }
        let (which, data) = match session.next_event() {
            Ok(Some(ExecEvent::Stdout(data))) => (OutputStream::Stdout, data),
            Ok(Some(ExecEvent::Stderr(data))) => (OutputStream::Stderr, data),
            Ok(Some(ExecEvent::OutputCut { stream, .. })) => {
                demux.mark_cut(stream);
                continue;
            }
            Ok(Some(ExecEvent::Exited(status))) => break Ok(ExitStatus(status)),
            Ok(None) => break Err(ClientError::AgentBroke("events ended without Exited".into()).into()),
            Err(e) => break Err(shared.failure(deadline, e.into())),
        };
        match demux.push(which, data, deadline) {
            Ok(()) => {}
            Err(PushError::Cancelled) => break Err(SandboxError::Stopped("the child was dropped".into())),
            Err(PushError::TimedOut) => break Err(shared.time_out()),
            Err(PushError::Sink(source)) => {
                break Err(ClientError::Sink {
                    stream: match which {
                        OutputStream::Stdout => "stdout",
                        OutputStream::Stderr => "stderr",
                    },
                    source,
                }
                .into())
            }
        }
    };
    // Closing the connection kills a command that is still running.
    drop(session);
    let _ = ctl.shutdown(Shutdown::Both);
    demux.finish(outcome);
}

/// A command running in the sandbox. Dropping it kills the command (the
/// agent kills a command whose connection closes) and frees its thread.
pub struct Child {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pid: u32,
    control: ExecControl<AgentConn>,
    conn: AgentConn,
    demux: Arc<Demux>,
    pump: Option<JoinHandle<()>>,
}

impl Child {
    pub(crate) fn new(
        session: ExecSession<AgentConn>,
        ctl: AgentConn,
        shared: Arc<Shared>,
        sinks: (Sink, Sink),
        deadline: Option<Instant>,
    ) -> Result<Child, SandboxError> {
        let demux = Demux::new(sinks.0, sinks.1);
        let conn = ctl.try_clone().map_err(|source| SandboxError::Setup {
            what: "duplicating the command's connection",
            source,
        })?;
        let stdin = session.stdin().map(|sender| ChildStdin { sender: Some(sender) });
        let pid = session.pid();
        let control = session.control();
        let pump_demux = demux.clone();
        let pump = std::thread::Builder::new()
            .name("kiln-sandbox-cmd".into())
            .spawn(move || pump(session, ctl, pump_demux, shared, deadline))
            .map_err(|source| SandboxError::Setup {
                what: "starting the command's output thread",
                source,
            })?;
        let piped = |sink| matches!(sink, Sink::Pipe(_));
        Ok(Child {
            stdin,
            stdout: piped(sinks.0).then(|| ChildStdout(demux.clone())),
            stderr: piped(sinks.1).then(|| ChildStderr(demux.clone())),
            pid,
            control,
            conn,
            demux,
            pump: Some(pump),
        })
    }

    /// The command's process id in the guest.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the command to exit. Closes its stdin first (as
    /// `std::process::Child::wait` does), so a command reading it ends.
    pub fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        drop(self.stdin.take());
        self.demux.wait_outcome()
    }

    /// The exit status if the command has exited (and all its output has
    /// arrived), else `None`; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        self.demux.try_outcome().transpose()
    }

    /// Sends SIGKILL to the command's process group. Not an error if it
    /// has already exited.
    pub fn kill(&mut self) -> Result<(), SandboxError> {
        self.control().signal(libc::SIGKILL)
    }

    /// Signals and resizes for this command from any thread.
    pub fn control(&self) -> ChildControl {
        ChildControl {
            control: self.control.clone(),
            demux: self.demux.clone(),
        }
    }

    /// The pump's buffers (for `output()`).
    pub(crate) fn demux(&self) -> &Demux {
        &self.demux
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.demux.lock().outcome.is_none() {
            self.demux.cancel();
            let _ = self.conn.shutdown(Shutdown::Both);
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

/// Sends signals and terminal sizes to a running command; cheap to clone
/// and usable from any thread (e.g. one forwarding SIGWINCH).
#[derive(Clone)]
pub struct ChildControl {
    control: ExecControl<AgentConn>,
    demux: Arc<Demux>,
}

impl ChildControl {
    /// Sends signal `sig` to the command's process group. Not an error if
    /// the command has exited.
    pub fn signal(&self, sig: i32) -> Result<(), SandboxError> {
        let exited = || self.demux.lock().outcome.is_some();
        if exited() {
            return Ok(());
        }
        match self.control.signal(sig) {
            Ok(()) => Ok(()),
            // The connection closed under us: the command is over.
            Err(_) if exited() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells a command on a pty its terminal's new size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), SandboxError> {
        self.control
            .resize(WindowSize { rows, cols })
            .map_err(SandboxError::from)
    }
}

/// The command's stdin. Writes wait for the agent's credit, as a write to
/// a full pipe waits; dropping it sends end-of-file (on a pty: ^D).
pub struct ChildStdin {
    sender: Option<StdinSender<AgentConn>>,
}

impl Write for ChildStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sender {
            Some(sender) => sender.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChildStdin {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.close();
        }
    }
}

/// The command's stdout (with a pty: its terminal output).
pub struct ChildStdout(Arc<Demux>);

/// The command's stderr.
pub struct ChildStderr(Arc<Demux>);

impl Read for ChildStdout {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(OutputStream::Stdout, buf)
    }
}

impl Read for ChildStderr {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(OutputStream::Stderr, buf)
    }
}

impl Drop for ChildStdout {
    fn drop(&mut self) {
        self.0.reader_gone(OutputStream::Stdout);
    }
}

impl Drop for ChildStderr {
    fn drop(&mut self) {
        self.0.reader_gone(OutputStream::Stderr);
    }
}
