//! `kiln exec`: a thin command line over `kiln::Sandbox`. Runs one command
//! in a fresh microVM, streams its output as it is produced, and exits
//! with its status (128+N for signal N, 127/126 when it cannot start, 124
//! on --timeout); 1 for host/setup errors, 2 for usage errors.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use kiln::config;
use kiln::sandbox::{ChildControl, ChildStdin};
use kiln::terminal::RawTerminal;
use kiln::vstate::kvm::{HostKind, PVM_HINT};
use kiln::{Sandbox, SandboxError, Stdio};

/// Exit status for a command that ran past --timeout (as timeout(1)).
const TIMEOUT_STATUS: u8 = 124;

#[derive(Args)]
pub struct ExecArgs {
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = u64::from(kiln::sandbox::DEFAULT_CPUS))]
    cpus: u64,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = kiln::sandbox::DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Kill the microVM if CMD (or a copy) runs longer than SECS seconds
    /// (fractions allowed) and exit 124 with one line on stderr.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Run CMD inside this ext4 image, attached read-only (never written)
    /// under a tmpfs overlay.
    #[arg(long, value_name = "IMAGE")]
    rootfs: Option<PathBuf>,
    /// An extra virtio-blk disk, as for `kiln boot` (repeatable).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<config::DiskConfig>,
    /// A network card on a host tap, as for `kiln boot` (repeatable).
    /// Without --net the guest has no network.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<config::NetConfig>,
    /// Guest kernel instead of the default sandbox guest's (any kernel with
    /// virtio-mmio and vsock).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs whose /init is kiln's agent, instead of the default.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Set an environment variable for CMD (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// CMD's working directory in the guest (default /work).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Copy a host file or directory into the guest before CMD runs
    /// (repeatable; split at the last ':').
    #[arg(long = "copy-in", value_name = "HOST:GUEST")]
    copy_in: Vec<String>,
    /// Copy a guest file or directory out after CMD ends, whatever its
    /// status (repeatable; split at the first ':').
    #[arg(long = "copy-out", value_name = "GUEST:HOST")]
    copy_out: Vec<String>,
    /// Forward stdin to CMD, end-of-file included. Without it CMD's stdin
    /// is empty and kiln does not read its own.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run CMD on a pty: this terminal goes raw and its size (and every
    /// change of it) is passed on; stdout and stderr arrive merged.
    #[arg(short = 't', long)]
    tty: bool,
    /// Append the guest's serial console to PATH (for debugging a guest).
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Boot even where KVM is known not to run Linux (PVM hosts).
    #[arg(long)]
    force: bool,
    /// Run the sandbox's microVM (and this command) in a jail, as `kiln
    /// boot --jail` does (root only). Not with --copy-in, --copy-out or
    /// --console: the jail cannot see host paths.
    #[arg(long, value_name = "SPEC")]
    jail: Option<kiln::config::jail::JailConfig>,
    /// Run the sandbox's VMM without its seccomp filters (for debugging
    /// kiln only; see `kiln boot --no-seccomp`).
    #[arg(long)]
    no_seccomp: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("kiln: {message}");
    ExitCode::from(code)
}

/// A usage error's text, or the parsed pieces.
struct Plan {
    env: Vec<(String, String)>,
    copy_in: Vec<(PathBuf, String)>,
    copy_out: Vec<(String, PathBuf)>,
    timeout: Option<Duration>,
}

fn plan(args: &ExecArgs) -> Result<Plan, String> {
    let env = args
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("-e {kv:?}: expected KEY=VAL")),
        })
        .collect::<Result<_, _>>()?;
    let copy_in = args
        .copy_in
        .iter()
        .map(|spec| match spec.rsplit_once(':') {
            Some((h, g)) if !h.is_empty() && !g.is_empty() => Ok((PathBuf::from(h), g.to_string())),
            _ => Err(format!("--copy-in {spec:?}: expected HOST:GUEST")),
        })
        .collect::<Result<_, _>>()?;
    let copy_out = args
        .copy_out
        .iter()
        .map(|spec| match spec.split_once(':') {
            Some((g, h)) if !g.is_empty() && !h.is_empty() => Ok((g.to_string(), PathBuf::from(h))),
            _ => Err(format!("--copy-out {spec:?}: expected GUEST:HOST")),
        })
        .collect::<Result<_, _>>()?;
    let timeout = match args.timeout {
        None => None,
        Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Some(Duration::from_secs_f64(secs)),
        Some(secs) => return Err(format!("--timeout {secs}: give a positive number of seconds")),
    };
    if args.cpus == 0 || args.cpus > u64::from(config::MAX_CPUS) {
        return Err(format!("--cpus {}: give 1 to {}", args.cpus, config::MAX_CPUS));
    }
    Ok(Plan {
        env,
        copy_in,
        copy_out,
        timeout,
    })
}

/// What a failed sandbox call exits with, after one line on stderr.
fn sandbox_failure(e: &SandboxError) -> ExitCode {
    match e {
        SandboxError::Timeout(limit) => fail(
            TIMEOUT_STATUS,
            format_args!("the command ran past --timeout ({limit:?}); the microVM was torn down"),
        ),
        SandboxError::SpawnFailed { exit_code, message } => {
            fail(u8::try_from(*exit_code).unwrap_or(1), message)
        }
        SandboxError::Config(_) => fail(2, e),
        SandboxError::Boot(vmm) => fail(vmm.exit_code().clamp(1, 2) as u8, e),
        _ => fail(1, e),
    }
}

/// Puts this process in `jail` with the guest's files, rewriting their
/// paths to the jail's names. `Some(status)`: the outer process, whose
/// jailed child has run the command and ended.
fn enter_jail(
    jail: &kiln::config::jail::JailConfig,
    kernel: &mut Option<std::path::PathBuf>,
    initrd: &mut Option<std::path::PathBuf>,
    rootfs: &mut Option<std::path::PathBuf>,
    disks: &mut [kiln::config::DiskConfig],
    nets: &[kiln::config::NetConfig],
) -> Result<Option<u8>, kiln::jail::JailError> {
    let mut vm = kiln::config::VmConfig::new(kernel.clone().unwrap_or_default());
    vm.initrd = initrd.clone();
    if let Some(r) = rootfs.as_ref() {
        let mut block = kiln::devices::virtio::block::BlockConfig::new(r);
        block.read_only = true;
        vm.disks.push(kiln::config::DiskConfig { block, root: false });
    }
    vm.disks.extend(disks.iter().cloned());
    vm.nets = nets.to_vec();
    match kiln::jail::enter(jail, &mut vm)? {
        kiln::jail::JailSide::Outside(code) => return Ok(Some(code)),
        kiln::jail::JailSide::Inside(entry) => entry.finish(&[])?,
    }
    *kernel = Some(vm.kernel);
    *initrd = vm.initrd;
    let mut paths = vm.disks.into_iter().map(|d| d.block.path);
    if rootfs.is_some() {
        *rootfs = paths.next();
    }
    for (d, path) in disks.iter_mut().zip(paths) {
        d.block.path = path;
    }
    Ok(None)
}

pub fn exec(args: ExecArgs) -> ExitCode {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    // Refuse before a multi-minute guest build whose result could not boot here.
    if !HostKind::detect().boots_linux() && !args.force {
        return fail(1, PVM_HINT);
    }
    let mut builder = Sandbox::builder()
        .cpus(args.cpus as u8)
        .memory_mib(args.memory)
        .force(args.force)
        .seccomp(!args.no_seccomp);
    if let Some(t) = plan.timeout {
        builder = builder.timeout(t);
    }
    let (mut kernel, mut initrd) = (args.kernel.clone(), args.initrd.clone());
    if kernel.is_none() || initrd.is_none() {
        // The CLI builds the default guest with its progress on stderr
        // (a first build takes minutes); the library would build it quietly.
        match kiln::default_guest::ensure() {
            Ok(guest) => {
                kernel.get_or_insert(guest.kernel);
                initrd.get_or_insert(guest.sandbox_initrd);
            }
            Err(e) => return fail(1, e),
        }
    }
    let (mut rootfs, mut disks) = (args.rootfs.clone(), args.disks.clone());
    if let Some(jail) = &args.jail {
        if !plan.copy_in.is_empty() || !plan.copy_out.is_empty() || args.console.is_some() {
            return fail(
                2,
                "--jail cannot be combined with --copy-in, --copy-out or --console (the jail cannot see host paths)",
            );
        }
        match enter_jail(
            jail,
            &mut kernel,
            &mut initrd,
            &mut rootfs,
            &mut disks,
            &args.nets,
        ) {
            Ok(None) => {}
            Ok(Some(code)) => return ExitCode::from(code),
            Err(e) => return fail(1, e),
        }
    }
    if let Some(k) = &kernel {
        builder = builder.kernel(k);
    }
    if let Some(i) = &initrd {
        builder = builder.initrd(i);
    }
    if let Some(r) = &rootfs {
        builder = builder.rootfs(r);
    }
    if let Some(c) = &args.console {
        builder = builder.console(c);
    }
    for d in disks {
        builder = builder.disk(d);
    }
    for n in &args.nets {
        builder = builder.net(n.clone());
    }
    let sandbox = match builder.build() {
        Ok(s) => s,
        Err(e) => return sandbox_failure(&e),
    };
    for (host, guest) in &plan.copy_in {
        if let Err(e) = sandbox.copy_in(host, guest) {
            return sandbox_failure(&e);
        }
    }
    let code = match run(&sandbox, &args, &plan) {
        Ok(code) => code,
        Err(e) => return sandbox_failure(&e),
    };
    for (guest, host) in &plan.copy_out {
        if let Err(e) = sandbox.copy_out(guest, host) {
            return sandbox_failure(&e);
        }
    }
    ExitCode::from(code)
}

/// Runs CMD with its output on ours; returns the shell's status for it.
fn run(sandbox: &Sandbox, args: &ExecArgs, plan: &Plan) -> Result<u8, SandboxError> {
    let mut cmd = sandbox.command(args.command[0].clone());
    cmd.args(args.command[1..].iter().cloned())
        .envs(plan.env.iter().cloned())
        .current_dir(args.workdir.clone().unwrap_or_else(|| "/work".into()))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if args.interactive {
        cmd.stdin(Stdio::piped());
    }
    // SIGWINCH goes to a signalfd: blocked before any thread starts, so
    // every thread inherits the mask.
    let winch = if args.tty { winch_fd() } else { None };
    let size = if args.tty { window_size() } else { None };
    if args.tty {
        let (rows, cols) = size.unwrap_or((24, 80));
        cmd.pty(rows, cols);
    }
    let mut child = cmd.spawn()?;
    let _raw = args.tty.then(RawTerminal::new);
    let stdin = child.stdin.take();
    if stdin.is_some() || winch.is_some() {
        let control = child.control();
        // Blocks in read(2) on our stdin: the process exits under it.
        let _ = std::thread::Builder::new()
            .name("kiln-exec-stdin".into())
            .spawn(move || forward_input(stdin, winch, control));
    }
    let status = child.wait()?;
    Ok(status.shell_code().clamp(0, 255) as u8)
}

/// Pumps our stdin into CMD's (then end-of-file) and window-size changes
/// into resizes, in one poll loop.
fn forward_input(mut stdin: Option<ChildStdin>, winch: Option<File>, control: ChildControl) {
    // A File on fd 0, unbuffered: std's Stdin would read ahead.
    let input = std::io::stdin().as_fd().try_clone_to_owned().ok().map(File::from);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = Vec::with_capacity(2);
        if let (Some(_), Some(input)) = (&stdin, &input) {
            fds.push(libc::pollfd {
                fd: input.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(w) = &winch {
            fds.push(libc::pollfd {
                fd: w.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            return;
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for pfd in &fds {
            if pfd.revents == 0 {
                continue;
            }
            if winch.as_ref().is_some_and(|w| w.as_raw_fd() == pfd.fd) {
                let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                let _ = winch.as_ref().map(|mut w| w.read(&mut info));
                if let Some((rows, cols)) = window_size() {
                    if control.resize(rows, cols).is_err() {
                        return;
                    }
                }
            } else if let (Some(pipe), Some(mut input)) = (stdin.as_mut(), input.as_ref()) {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        // End-of-file (or an unreadable stdin, which ends it too).
                        stdin = None;
                    }
                    Ok(n) => {
                        if pipe.write_all(&buf[..n]).is_err() {
                            stdin = None;
                        }
                    }
                }
            }
        }
    }
}

/// The terminal's size, if stdout or stdin is one.
fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it in or fails.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: fd is one of ours; ws is a valid winsize to write.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Blocks SIGWINCH in this thread (threads started later inherit that)
/// and returns a signalfd reading it.
fn winch_fd() -> Option<File> {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is valid and writable; SIGWINCH is a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
    }
    // SAFETY: set is initialised; the old mask is not needed.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return None;
    }
    // SAFETY: -1 asks for a new descriptor; set is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    // SAFETY: a non-negative fd is ours alone.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}
