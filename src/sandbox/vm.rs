//! The sandbox's microVM: `vmm::run_vm_with` on one thread the sandbox
//! owns (plus its vCPU threads), stopped through a [`StopHandle`], and the
//! state every command of the sandbox shares.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::ClientError;
use super::conn::{connect_port, AgentConn};
use super::error::SandboxError;
use super::protocol::{exchange_hello, ProtocolError, AGENT_VSOCK_PORT};
use crate::config::VmConfig;
use crate::exit::ExitReason;
use crate::sync::lock;
use crate::vmm::{self, BootHooks, ConsoleIo, StopHandle, VmmError};

/// How long one connection attempt may wait for the guest's answer (the
/// vsock device itself gives up on a silent guest after 2 s).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(3);
/// Pause between connection attempts while the guest boots.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How early a socket timeout may end a read before its deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);
/// Console bytes quoted in boot errors.
const CONSOLE_TAIL: u64 = 4096;

pub type VmResult = Result<ExitReason, VmmError>;

/// The VMM thread.
pub struct VmThread {
    stop: StopHandle,
    done: Mutex<Receiver<VmResult>>,
    /// The VMM's result once received (taken for a boot error).
    ended: Mutex<Option<VmResult>>,
    handle: Option<JoinHandle<()>>,
}

impl VmThread {
    /// Starts the VMM thread running `config`, its console going to `console`.
    pub fn start(config: VmConfig, console: OwnedFd) -> Result<Self, SandboxError> {
        let stop = StopHandle::new().map_err(|source| SandboxError::Setup {
            what: "creating the VM's stop event",
            source,
        })?;
        let (tx, rx) = mpsc::sync_channel(1);
        let hooks = BootHooks {
            stop: Some(stop.clone()),
            ..BootHooks::default()
        };
        let io = ConsoleIo {
            output: console,
            input: None,
            raw_terminal: false,
            handle_signals: false,
            detach_teardown: false,
        };
        let handle = std::thread::Builder::new()
            .name("kiln-sandbox-vmm".into())
            .spawn(move || {
                let _ = tx.send(vmm::run_vm_with(&config, io, hooks));
            })
            .map_err(|source| SandboxError::Setup {
                what: "starting the VMM thread",
                source,
            })?;
        Ok(VmThread {
            stop,
            done: Mutex::new(rx),
            ended: Mutex::new(None),
            handle: Some(handle),
        })
    }

    /// A VM run elsewhere (a jailed `kiln`), watched by `handle`, which
    /// sends its result on `done`'s other end.
    pub fn from_parts(stop: StopHandle, done: Receiver<VmResult>, handle: JoinHandle<()>) -> Self {
        VmThread {
            stop,
            done: Mutex::new(done),
            ended: Mutex::new(None),
            handle: Some(handle),
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Waits up to `limit` for the VMM to end; true if it has.
    pub fn wait_end(&self, limit: Duration) -> bool {
        let mut ended = lock(&self.ended);
        if ended.is_some() {
            return true;
        }
        match lock(&self.done).recv_timeout(limit) {
            Ok(result) => {
                *ended = Some(result);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            // The thread ended without a result: it panicked.
            Err(RecvTimeoutError::Disconnected) => {
                *ended = Some(Ok(ExitReason::InternalError {
                    vcpu: 0,
                    detail: "the VMM thread panicked".into(),
                }));
                true
            }
        }
    }

    /// The boot error for a VMM that has ended.
    fn end_error(&self, console: &Path) -> SandboxError {
        match lock(&self.ended).take() {
            Some(Err(e)) => SandboxError::Boot(e),
            Some(Ok(reason)) => SandboxError::GuestExited {
                reason,
                console: console_tail(console),
            },
            None => SandboxError::Stopped("the VMM ended".into()),
        }
    }

    /// Stops the VM (if it still runs) and joins the VMM thread, which
    /// joins its vCPU threads and frees the VM before it returns.
    pub fn stop_and_join(&mut self) {
        self.stop.stop();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for VmThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The last bytes of the console file, if the sandbox keeps one.
pub fn console_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    let skip = len.saturating_sub(CONSOLE_TAIL);
    if std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(skip)).is_err()
        || file.take(CONSOLE_TAIL).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

/// Waits until the agent answers a hello, the VM ends, or `limit` passes.
pub fn wait_for_agent(
    vm: &VmThread,
    socket: &Path,
    console: &Path,
    limit: Duration,
) -> Result<(), SandboxError> {
    let deadline = Instant::now() + limit;
    loop {
        if vm.wait_end(Duration::ZERO) {
            return Err(vm.end_error(console));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SandboxError::AgentUnreachable {
                waited: limit,
                console: console_tail(console),
            });
        }
        match connect_port(socket, AGENT_VSOCK_PORT, left.min(ATTEMPT_LIMIT)) {
            Ok(mut conn) => {
                let hello = conn
                    .arm(Some(Instant::now() + left.min(ATTEMPT_LIMIT)))
                    .map_err(|source| ProtocolError::Io {
                        peer: "guest agent",
                        source,
                    })
                    .and_then(|()| exchange_hello(&mut conn, "guest agent"));
                match hello {
                    Ok(()) => return Ok(()),
                    // The agent is there but speaks something else.
                    Err(e @ (ProtocolError::NotKiln(_) | ProtocolError::VersionMismatch { .. })) => {
                        return Err(SandboxError::Agent(ClientError::Protocol(e)))
                    }
                    Err(_) => {}
                }
            }
            Err(e) if e.is_transient() => {}
            Err(e) => {
                return Err(SandboxError::Connect {
                    path: socket.to_path_buf(),
                    source: std::io::Error::other(e),
                })
            }
        }
        // Sleeps, but wakes at once if the VM ends meanwhile.
        vm.wait_end(RETRY_PAUSE);
    }
}

/// What every command of one sandbox shares.
pub struct Shared {
    pub socket: PathBuf,
    pub stop: StopHandle,
    pub timeout: Option<Duration>,
    pub output_cap: u64,
    pub env: Vec<(String, String)>,
    timed_out: AtomicBool,
}

impl Shared {
    pub fn new(
        socket: PathBuf,
        stop: StopHandle,
        timeout: Option<Duration>,
        output_cap: u64,
        env: Vec<(String, String)>,
    ) -> Self {
        Shared {
            socket,
            stop,
            timeout,
            output_cap,
            env,
            timed_out: AtomicBool::new(false),
        }
    }

    /// The deadline of an operation starting now.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    /// `Stopped` if the microVM is gone or going.
    pub fn check_running(&self) -> Result<(), SandboxError> {
        match self.stop.exit_reason() {
            None => Ok(()),
            Some(reason) => Err(SandboxError::Stopped(self.stop_text(&reason))),
        }
    }

    fn stop_text(&self, reason: &ExitReason) -> String {
        if self.timed_out.load(Ordering::Acquire) {
            "a command ran past the timeout".into()
        } else if *reason == ExitReason::Stopped {
            "the sandbox is being dropped".into()
        } else {
            format!(
                "the guest stopped: {}",
                reason
                    .message()
                    .unwrap_or_else(|| format!("{reason:?}").to_lowercase())
            )
        }
    }

    /// Tears the microVM down for an operation that ran past its deadline.
    pub fn time_out(&self) -> SandboxError {
        self.timed_out.store(true, Ordering::Release);
        self.stop.stop();
        SandboxError::Timeout(self.timeout.unwrap_or_default())
    }

    /// What a failed operation reports: its timeout if its deadline has
    /// passed, `Stopped` if the microVM is gone, else the failure itself.
    pub fn failure(&self, deadline: Option<Instant>, error: SandboxError) -> SandboxError {
        // A socket timeout may end a read a tick before the deadline.
        if deadline.is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d) {
            return self.time_out();
        }
        self.check_running().err().unwrap_or(error)
    }

    /// A fresh connection to the agent for one operation, bounded by `deadline`.
    pub fn connect(&self, deadline: Option<Instant>) -> Result<AgentConn, SandboxError> {
        self.check_running()?;
        let limit = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => ATTEMPT_LIMIT,
        };
        let conn = connect_port(&self.socket, AGENT_VSOCK_PORT, limit).map_err(|e| {
            let e = SandboxError::Connect {
                path: self.socket.clone(),
                source: std::io::Error::other(e),
            };
            self.failure(deadline, e)
        })?;
        conn.arm(deadline)
            .map_err(|_| self.failure(deadline, self.time_out()))?;
        Ok(conn)
    }
}
