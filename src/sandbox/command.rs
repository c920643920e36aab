//! A command to run in a sandbox, built like `std::process::Command`.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use super::child::{Child, Sink, PIPE_BUFFER};
use super::client::{ExecSession, Started};
use super::error::SandboxError;
use super::protocol::{self, Conn, ExecRequest, OutputStream, WindowSize};
use super::vm::Shared;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus(pub(crate) protocol::ExitStatus);

impl ExitStatus {
    /// The exit code, or `None` if a signal ended the command.
    pub fn code(&self) -> Option<i32> {
        match self.0 {
            protocol::ExitStatus::Code(c) => Some(c),
            protocol::ExitStatus::Signal(_) => None,
        }
    }

    /// The signal that ended the command, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.0 {
            protocol::ExitStatus::Signal(s) => Some(s),
            protocol::ExitStatus::Code(_) => None,
        }
    }

    pub fn success(&self) -> bool {
        self.0.success()
    }

    /// What a shell reports: the code, or 128+N for signal N.
    pub fn shell_code(&self) -> i32 {
        self.0.shell_code()
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            protocol::ExitStatus::Code(c) => write!(f, "exit status: {c}"),
            protocol::ExitStatus::Signal(s) => write!(f, "signal: {s}"),
        }
    }
}

/// A finished command's output, like `std::process::Output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The stream passed the sandbox's output cap; the rest was dropped.
    pub stdout_cut: bool,
    pub stderr_cut: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StdioKind {
    Piped,
    Null,
    Inherit,
    Bytes(Vec<u8>),
}

/// Where a command's stream goes, like `std::process::Stdio`. Unlike
/// std's, nothing is inherited unless asked: the library never writes to
/// its caller's stdout or stderr on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stdio(StdioKind);

impl Stdio {
    /// A pipe: `Child::stdin`/`stdout`/`stderr` hold its end.
    pub fn piped() -> Self {
        Stdio(StdioKind::Piped)
    }
    /// Nothing: stdin reads end-of-file, output is dropped.
    pub fn null() -> Self {
        Stdio(StdioKind::Null)
    }
    /// For stdout and stderr: written to this process's own stdout or
    /// stderr as it arrives. Not available for stdin.
    pub fn inherit() -> Self {
        Stdio(StdioKind::Inherit)
    }
}

impl From<Vec<u8>> for Stdio {
    /// Stdin with these bytes, then end-of-file.
    fn from(bytes: Vec<u8>) -> Self {
        Stdio(StdioKind::Bytes(bytes))
    }
}

impl From<&[u8]> for Stdio {
    fn from(bytes: &[u8]) -> Self {
        Stdio(StdioKind::Bytes(bytes.to_vec()))
    }
}

impl From<&str> for Stdio {
    fn from(text: &str) -> Self {
        Stdio(StdioKind::Bytes(text.as_bytes().to_vec()))
    }
}

impl From<String> for Stdio {
    fn from(text: String) -> Self {
        Stdio(StdioKind::Bytes(text.into_bytes()))
    }
}

/// A command for [`super::Sandbox::command`]. By default stdin is empty
/// and output is dropped, except that [`SandboxCommand::output`] collects
/// stdout and stderr.
pub struct SandboxCommand {
    shared: Arc<Shared>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    pty: Option<WindowSize>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
}

impl SandboxCommand {
    pub(crate) fn new(shared: Arc<Shared>, program: impl Into<String>) -> Self {
        SandboxCommand {
            shared,
            argv: vec![program.into()],
            env: Vec::new(),
            cwd: None,
            pty: None,
            stdin: None,
            stdout: None,
            stderr: None,
        }
    }

    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.argv.push(arg.into());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable on top of the guest's defaults (`PATH`, `HOME`,
    /// `TERM` with a pty) and the sandbox's own.
    pub fn env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The working directory in the guest.
    pub fn current_dir(&mut self, dir: impl Into<String>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// `Stdio::piped()`, `Stdio::null()`, or bytes (`Vec<u8>`, `&str`...).
    pub fn stdin(&mut self, stdin: impl Into<Stdio>) -> &mut Self {
        self.stdin = Some(stdin.into());
        self
    }

    pub fn stdout(&mut self, stdout: Stdio) -> &mut Self {
        self.stdout = Some(stdout);
        self
    }

    pub fn stderr(&mut self, stderr: Stdio) -> &mut Self {
        self.stderr = Some(stderr);
        self
    }

    /// Runs the command on a pty of this size: stdout and stderr then
    /// arrive merged as stdout, and closing stdin sends ^D.
    pub fn pty(&mut self, rows: u16, cols: u16) -> &mut Self {
        self.pty = Some(WindowSize { rows, cols });
        self
    }

    /// Runs the command to its end and collects its output (each stream
    /// up to the sandbox's output cap). A command that cannot start gives
    /// status 127 or 126, as a shell would, with the reason on stderr.
    pub fn output(&mut self) -> Result<Output, SandboxError> {
        let cap = self.shared.output_cap;
        let sink = |s: &Option<Stdio>| match s.as_ref().map(|s| &s.0) {
            None | Some(StdioKind::Piped) => Ok(Sink::Collect(cap)),
            Some(other) => output_sink(other),
        };
        let sinks = (sink(&self.stdout)?, sink(&self.stderr)?);
        self.run(sinks)
    }

    /// Runs the command to its end; its output goes where `stdout` and
    /// `stderr` say (dropped by default).
    pub fn status(&mut self) -> Result<ExitStatus, SandboxError> {
        let sinks = (self.spawn_sink(&self.stdout)?, self.spawn_sink(&self.stderr)?);
        let sinks = (uncollected(sinks.0), uncollected(sinks.1));
        self.run(sinks).map(|o| o.status)
    }

    fn run(&mut self, sinks: (Sink, Sink)) -> Result<Output, SandboxError> {
        let stdin = match self.stdin.as_ref().map(|s| &s.0) {
            None | Some(StdioKind::Null) | Some(StdioKind::Piped) => None,
            Some(StdioKind::Bytes(b)) => Some(b.clone()),
            Some(StdioKind::Inherit) => return Err(inherit_stdin()),
        };
        let mut child = match self.start(sinks, stdin.is_some()) {
            Ok(child) => child,
            Err(SandboxError::SpawnFailed { exit_code, message }) => {
                return Ok(Output {
                    status: ExitStatus(protocol::ExitStatus::Code(exit_code)),
                    stdout: Vec::new(),
                    stderr: format!("{message}\n").into_bytes(),
                    stdout_cut: false,
                    stderr_cut: false,
                })
            }
            Err(e) => return Err(e),
        };
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that exits without reading it all is not an error.
            let _ = pipe.write_all(&bytes);
        }
        let status = child.wait()?;
        let (stdout, stdout_cut) = child.demux().take(OutputStream::Stdout);
        let (stderr, stderr_cut) = child.demux().take(OutputStream::Stderr);
        Ok(Output {
            status,
            stdout,
            stderr,
            stdout_cut,
            stderr_cut,
        })
    }

    fn spawn_sink(&self, stdio: &Option<Stdio>) -> Result<Sink, SandboxError> {
        match stdio.as_ref().map(|s| &s.0) {
            None | Some(StdioKind::Null) => Ok(Sink::Discard),
            Some(StdioKind::Piped) => Ok(Sink::Pipe(PIPE_BUFFER)),
            Some(other) => output_sink(other),
        }
    }

    /// Starts the command. [`Child`]'s streams are `Some` where `Stdio::piped()`
    /// was asked for. A command that cannot start is
    /// [`SandboxError::SpawnFailed`] (with the shell's 127 or 126).
    pub fn spawn(&mut self) -> Result<Child, SandboxError> {
        let sinks = (self.spawn_sink(&self.stdout)?, self.spawn_sink(&self.stderr)?);
        let stdin = match self.stdin.as_ref().map(|s| &s.0) {
            None | Some(StdioKind::Null) => None,
            Some(StdioKind::Piped) => Some(None),
            Some(StdioKind::Bytes(b)) => Some(Some(b.clone())),
            Some(StdioKind::Inherit) => return Err(inherit_stdin()),
        };
        let mut child = self.start(sinks, stdin.is_some())?;
        if let Some(Some(bytes)) = stdin {
            // Bytes given up front are written, then end-of-file: the
            // caller gets no stdin handle.
            if let Some(mut pipe) = child.stdin.take() {
                let _ = pipe.write_all(&bytes);
            }
        }
        Ok(child)
    }

    fn request(&self, stdin: bool) -> ExecRequest {
        let mut req = ExecRequest::new(self.argv.iter().cloned());
        req.env = self.shared.env.clone();
        req.env.extend(self.env.iter().cloned());
        req.cwd = self.cwd.clone();
        req.pty = self.pty;
        req.stdin = stdin;
        req.output_cap = self.shared.output_cap;
        req
    }

    fn start(&self, sinks: (Sink, Sink), stdin: bool) -> Result<Child, SandboxError> {
        let shared = &self.shared;
        let deadline = shared.deadline();
        let conn = shared.connect(deadline)?;
        let ctl = conn.try_clone().map_err(|source| SandboxError::Setup {
            what: "duplicating the command's connection",
            source,
        })?;
        let session = match ExecSession::start(conn, &self.request(stdin)) {
            Ok(Started::Running(session)) => session,
            Ok(Started::SpawnFailed { exit_code, message }) => {
                return Err(SandboxError::SpawnFailed { exit_code, message })
            }
            Err(e) => return Err(shared.failure(deadline, e.into())),
        };
        Child::new(session, ctl, shared.clone(), sinks, deadline)
    }
}

fn output_sink(kind: &StdioKind) -> Result<Sink, SandboxError> {
    match kind {
        StdioKind::Piped => Ok(Sink::Pipe(PIPE_BUFFER)),
        StdioKind::Null => Ok(Sink::Discard),
        StdioKind::Inherit => Ok(Sink::Inherit),
        StdioKind::Bytes(_) => Err(SandboxError::InvalidRequest(
            "bytes can only be given as stdin; use Stdio::piped() for output".into(),
        )),
    }
}

/// `status()` hands out no handles: a pipe nobody can read is dropped.
fn uncollected(sink: Sink) -> Sink {
    match sink {
        Sink::Pipe(_) | Sink::Collect(_) => Sink::Discard,
        other => other,
    }
}

fn inherit_stdin() -> SandboxError {
    SandboxError::InvalidRequest(
        "a sandbox command cannot inherit stdin; use Stdio::piped() and write to Child::stdin".into(),
    )
}
