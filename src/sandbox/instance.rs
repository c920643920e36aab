//! [`Sandbox`]: a live microVM running kiln's guest agent, and its builder.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{self, ClientError};
use super::command::SandboxCommand;
use super::conn::connect_port;
use super::error::SandboxError;
use super::jailed;
use super::protocol::{AGENT_VSOCK_PORT, DEFAULT_OUTPUT_CAP};
use super::transfer::Limits;
use super::vm::{wait_for_agent, Shared, VmThread};
use crate::config::jail::JailConfig;
use crate::config::{DiskConfig, NetConfig, VmConfig, VsockConfig};
use crate::devices::virtio::block::BlockConfig;
use crate::seccomp::SeccompMode;

/// Guest memory unless the builder says otherwise: room for the kernel,
/// the initramfs, tmpfs files and an interpreter or two.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// vCPUs unless the builder says otherwise.
pub const DEFAULT_CPUS: u8 = 1;
/// How long `build()` waits for the agent unless told otherwise. Generous:
/// a nested or emulated host boots slowly; a guest that stops is reported
/// at once whatever this is.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest file `read_file` and tree `copy_out` take unless told otherwise.
pub const DEFAULT_TRANSFER_LIMIT: u64 = 1 << 30;
/// The guest's vsock address; the only guest on its private socket.
const GUEST_CID: u32 = 3;
/// How long drop waits for the guest to power off before stopping it.
const POWER_OFF_LIMIT: Duration = Duration::from_secs(2);
/// Entries a `copy_out` may create.
const MAX_COPY_OUT_ENTRIES: u64 = 1_000_000;

/// The default sandbox guest: kiln's kernel and the initramfs whose
/// `/init` is kiln's agent.
fn default_guest() -> Result<(PathBuf, PathBuf), SandboxError> {
    // Quietly: the library never prints on its caller's behalf (a first
    // build's progress is in the error if it fails).
    crate::default_guest::ensure_quietly()
        .map(|g| (g.kernel, g.sandbox_initrd))
        .map_err(|e| SandboxError::NoGuest(e.to_string()))
}

/// Builds a [`Sandbox`]; see [`Sandbox::builder`].
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    memory_mib: u64,
    cpus: u8,
    timeout: Option<Duration>,
    boot_timeout: Duration,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    disks: Vec<DiskConfig>,
    nets: Vec<NetConfig>,
    output_cap: u64,
    transfer_limit: u64,
    env: Vec<(String, String)>,
    console: Option<PathBuf>,
    force: bool,
    seccomp: SeccompMode,
    jail: Option<JailConfig>,
    kiln_binary: Option<PathBuf>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder {
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            timeout: None,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            kernel: None,
            initrd: None,
            rootfs: None,
            disks: Vec::new(),
            nets: Vec::new(),
            output_cap: DEFAULT_OUTPUT_CAP,
            transfer_limit: DEFAULT_TRANSFER_LIMIT,
            env: Vec::new(),
            console: None,
            force: false,
            seccomp: SeccompMode::On,
            jail: None,
            kiln_binary: None,
        }
    }
}

impl SandboxBuilder {
    /// Guest memory in MiB (default 256).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1).
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.cpus = cpus;
        self
    }

    /// Limit for each command and transfer: past it the microVM is torn
    /// down, that call returns [`SandboxError::Timeout`] and every later
    /// call [`SandboxError::Stopped`]. No limit by default.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// How long `build()` waits for the guest agent (default 60 s).
    pub fn boot_timeout(mut self, limit: Duration) -> Self {
        self.boot_timeout = limit;
        self
    }

    /// The guest kernel, instead of kiln's default sandbox guest; any
    /// kernel with virtio-mmio and vsock does.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// The initramfs: its `/init` must be kiln's agent.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Runs commands inside this ext4 image, attached read-only (its file
    /// is never written) under a tmpfs overlay.
    pub fn rootfs(mut self, image: impl Into<PathBuf>) -> Self {
        self.rootfs = Some(image.into());
        self
    }

    /// An extra virtio-blk disk (after the rootfs, if any).
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.disks.push(disk);
        self
    }

    /// A network card on a host tap. Without one the guest has no network.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.nets.push(net);
        self
    }

    /// Bytes of stdout and of stderr kept per command (default 64 MiB);
    /// the rest is dropped and reported as cut.
    pub fn output_cap(mut self, bytes: u64) -> Self {
        self.output_cap = bytes;
        self
    }

    /// Largest file `read_file` returns, and bytes `copy_out` writes
    /// (default 1 GiB).
    pub fn transfer_limit(mut self, bytes: u64) -> Self {
        self.transfer_limit = bytes;
        self
    }

    /// An environment variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends the guest's serial console to this file (by default it is
    /// dropped); boot errors then quote its last lines.
    pub fn console(mut self, path: impl Into<PathBuf>) -> Self {
        self.console = Some(path.into());
        self
    }

    /// Boot even where KVM is known not to run Linux (PVM hosts).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Whether the sandbox's VMM and vCPU threads run under their seccomp
    /// filters (default on; off is for debugging kiln). The filters apply
    /// to those threads only, never to the program's own.
    pub fn seccomp(mut self, on: bool) -> Self {
        self.seccomp = if on { SeccompMode::On } else { SeccompMode::Off };
        self
    }

    /// Runs the microVM in a jail, as `kiln boot --jail` does: a fresh
    /// directory holding only the VM's files, new namespaces, the jail's
    /// user and cgroup limits (the program must run as root). The VMM is
    /// then a `kiln` process (see [`SandboxBuilder::kiln_binary`]), not
    /// threads of this one; everything else works as without a jail.
    /// `console` still names a host file: kiln's output goes there.
    pub fn jail(mut self, jail: JailConfig) -> Self {
        self.jail = Some(jail);
        self
    }

    /// The `kiln` binary a jailed sandbox runs (default: `kiln` on `PATH`).
    pub fn kiln_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.kiln_binary = Some(path.into());
        self
    }

    fn vm_config(&self, kernel: PathBuf, initrd: PathBuf, socket: PathBuf) -> Result<VmConfig, SandboxError> {
        let mut config = VmConfig::new(kernel);
        config.initrd = Some(initrd);
        config.cmdline = crate::config::default_guest_cmdline();
        config.cpus = crate::config::validate_cpus(u64::from(self.cpus))?;
        config.memory_mib = self.memory_mib;
        config.force = self.force;
        config.seccomp = self.seccomp;
        if let Some(image) = &self.rootfs {
            let mut block = BlockConfig::new(image);
            block.read_only = true;
            config.disks.push(DiskConfig { block, root: false });
            config.cmdline.push_str(" kiln.rootfs=/dev/vda");
        }
        config.disks.extend(self.disks.iter().cloned());
        config.nets = self.nets.clone();
        config.vsock = Some(VsockConfig {
            cid: GUEST_CID,
            socket,
        });
        config.validate()?;
        Ok(config)
    }

    /// Boots the microVM and waits until its agent answers. Fails with a
    /// typed error if the VM cannot start, stops while booting, or its
    /// agent does not answer within the boot timeout.
    pub fn build(self) -> Result<Sandbox, SandboxError> {
        let (kernel, initrd) = match (&self.kernel, &self.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            (None, None) => default_guest()?,
            _ => {
                return Err(SandboxError::NoGuest(
                    "give both the kernel and the agent's initramfs, or neither for the default guest".into(),
                ))
            }
        };
        let console_path = self.console.clone().unwrap_or_default();
        let console = open_console(self.console.as_deref())?;
        let (vm, socket, dir) = match &self.jail {
            None => {
                let dir = PrivateDir::create()?;
                let socket = dir.path.join("vsock");
                let config = self.vm_config(kernel, initrd, socket.clone())?;
                (VmThread::start(config, console)?, socket, Some(dir))
            }
            Some(jail) => {
                // The socket's name inside the jail; the jailed kiln makes
                // it, the host reaches it under the jail's directory.
                let inside = Path::new("/").join(jailed::JAIL_SOCKET);
                let config = self.vm_config(kernel, initrd, inside)?;
                let args = jailed::boot_args(&config, jail)?;
                let kiln = self
                    .kiln_binary
                    .clone()
                    .unwrap_or_else(|| jailed::DEFAULT_KILN_BINARY.into());
                (
                    jailed::start(&kiln, args, console)?,
                    jailed::host_socket(jail),
                    None,
                )
            }
        };
        let shared = Arc::new(Shared::new(
            socket,
            vm.stop_handle(),
            self.timeout,
            self.output_cap,
            self.env,
        ));
        // On failure, dropping `vm` stops and joins it, then `dir` goes.
        wait_for_agent(&vm, &shared.socket, &console_path, self.boot_timeout)?;
        Ok(Sandbox {
            shared,
            vm: Some(vm),
            dir,
            transfer_limit: self.transfer_limit,
        })
    }
}

fn open_console(path: Option<&Path>) -> Result<OwnedFd, SandboxError> {
    let file = match path {
        Some(path) => OpenOptions::new().create(true).append(true).open(path),
        None => File::options().write(true).open("/dev/null"),
    };
    file.map(OwnedFd::from).map_err(|source| SandboxError::Setup {
        what: "opening the console sink",
        source,
    })
}

/// A 0700 directory of this sandbox's own (its vsock socket lives there),
/// removed on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create() -> Result<Self, SandboxError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!("kiln-sandbox-{}-{n}-{nanos:x}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => {
                    return Err(SandboxError::Setup {
                        what: "creating the sandbox's private directory",
                        source,
                    })
                }
            }
        }
        Err(SandboxError::Setup {
            what: "creating the sandbox's private directory",
            source: last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()),
        })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A fresh microVM running kiln's guest agent, for running commands you
/// do not trust: each sandbox has its own kernel, memory and filesystem.
///
/// Commands are built like `std::process::Command` with
/// [`Sandbox::command`]; several may run at once (one vsock connection
/// each). Files move in and out with [`Sandbox::write_file`],
/// [`Sandbox::read_file`], [`Sandbox::copy_in`] and [`Sandbox::copy_out`].
/// Dropping the sandbox powers the guest off (or stops it), joins the VMM
/// thread and its vCPU threads, unmaps guest memory and removes its
/// private directory. The library never prints, exits, or touches the
/// caller's signals or terminal.
///
/// ```no_run
/// use std::time::Duration;
/// use kiln::{Sandbox, Stdio};
/// use std::io::{Read, Write};
///
/// let sandbox = Sandbox::builder()
///     .kernel("vmlinux")
///     .initrd("sandbox-initrd.cpio.gz")
///     .memory_mib(256)
///     .timeout(Duration::from_secs(10))
///     .build()?;
/// let out = sandbox.command("sh").arg("-c").arg("echo $((6*7))").output()?;
/// assert_eq!(out.stdout, b"42\n");
///
/// let mut child = sandbox
///     .command("tr")
///     .arg("a-z")
///     .arg("A-Z")
///     .stdin(Stdio::piped())
///     .stdout(Stdio::piped())
///     .spawn()?;
/// child.stdin.take().unwrap().write_all(b"shout")?;
/// let mut upper = String::new();
/// child.stdout.take().unwrap().read_to_string(&mut upper)?;
/// assert!(child.wait()?.success());
///
/// sandbox.write_file("/work/in.bin", &[0, 1, 2])?;
/// assert_eq!(sandbox.read_file("/work/in.bin")?, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `examples/sandbox.rs` is the same as a program to run.
pub struct Sandbox {
    shared: Arc<Shared>,
    /// `None` only in tests that serve the agent without a VM.
    vm: Option<VmThread>,
    dir: Option<PrivateDir>,
    transfer_limit: u64,
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// A command to run in the sandbox.
    pub fn command(&self, program: impl Into<String>) -> SandboxCommand {
        SandboxCommand::new(self.shared.clone(), program)
    }

    /// Runs a transfer on a fresh connection within the sandbox's timeout.
    fn transfer<T>(
        &self,
        op: impl FnOnce(super::conn::AgentConn) -> Result<T, ClientError>,
    ) -> Result<T, SandboxError> {
        let deadline = self.shared.deadline();
        let conn = self.shared.connect(deadline)?;
        op(conn).map_err(|e| match e {
            // What the guest said about the operation is its answer, not a
            // broken sandbox.
            ClientError::Agent(_)
            | ClientError::NotAFile { .. }
            | ClientError::FileTooLarge { .. }
            | ClientError::Transfer(_) => SandboxError::Agent(e),
            e => self.shared.failure(deadline, e.into()),
        })
    }

    /// Writes `data` to the guest file `path` (mode 0644), creating its
    /// parent directories.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        self.transfer(|conn| client::write_file(conn, path, data, 0o644))
    }

    /// Reads the guest file `path` (at most the transfer limit).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let limit = self.transfer_limit;
        self.transfer(|conn| client::read_file(conn, path, limit))
    }

    /// Copies the host file or directory `host` to `guest`.
    pub fn copy_in(&self, host: &Path, guest: &str) -> Result<(), SandboxError> {
        self.transfer(|conn| client::copy_in(conn, host, guest))
    }

    /// Copies the guest file or directory `guest` to `host`.
    pub fn copy_out(&self, guest: &str, host: &Path) -> Result<(), SandboxError> {
        let limits = Limits {
            max_bytes: self.transfer_limit,
            max_entries: MAX_COPY_OUT_ENTRIES,
        };
        self.transfer(|conn| client::copy_out(conn, guest, host, limits))
    }

    /// The microVM's stop handle (for tests).
    #[cfg(test)]
    pub(crate) fn stop_handle(&self) -> crate::vmm::StopHandle {
        self.shared.stop.clone()
    }

    /// A sandbox whose "guest" is whatever serves `socket` as kiln's vsock
    /// socket would: tests serve the agent logic there without a VM.
    #[cfg(test)]
    pub(crate) fn over_socket(socket: PathBuf, timeout: Option<Duration>, output_cap: u64) -> Self {
        let stop = crate::vmm::StopHandle::new().unwrap();
        Sandbox {
            shared: Arc::new(Shared::new(socket, stop, timeout, output_cap, Vec::new())),
            vm: None,
            dir: None,
            transfer_limit: DEFAULT_TRANSFER_LIMIT,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.as_mut() {
            if self.shared.check_running().is_ok() {
                // A clean power-off lets the guest sync its disks; bounded,
                // then the VMM stops it anyway.
                let deadline = Instant::now() + POWER_OFF_LIMIT;
                if let Ok(conn) = connect_port(&self.shared.socket, AGENT_VSOCK_PORT, POWER_OFF_LIMIT) {
                    if conn.arm(Some(deadline)).is_ok() && client::power_off(conn).is_ok() {
                        vm.wait_end(deadline.saturating_duration_since(Instant::now()));
                    }
                }
            }
            vm.stop_and_join();
        }
        drop(self.dir.take());
    }
}
