//! A sandbox whose microVM runs in a jail: `kiln boot --jail` as a child
//! process, the sandbox talking to its vsock socket under the jail's
//! directory.
//!
//! The library cannot jail the VMM in its own process: entering the jail
//! forks, and after a fork only the calling thread exists while the
//! embedding program's threads may hold locks the child needs. So it runs
//! the `kiln` binary, which sets the jail up before any thread starts.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use super::error::SandboxError;
use super::vm::VmThread;
use crate::config::jail::JailConfig;
use crate::config::{DiskConfig, NetConfig, VmConfig};
use crate::exit::ExitReason;
use crate::seccomp::{SeccompMode, VIOLATION_EXIT_CODE};
use crate::vmm::StopHandle;

/// The vsock socket's name inside the jail (the host sees it under the
/// jail's directory).
pub const JAIL_SOCKET: &str = "sandbox.vsock";
/// The binary run when the builder names none: `kiln` on `PATH`.
pub const DEFAULT_KILN_BINARY: &str = "kiln";
/// What kiln exits with when the jail's memory limit killed the VMM.
const OOM_EXIT_CODE: i32 = 128 + libc::SIGKILL;

/// `kiln boot` arguments for `config` in `jail`. Fails if a path cannot be
/// written in a spec (a comma), rather than boot a different VM.
pub fn boot_args(config: &VmConfig, jail: &JailConfig) -> Result<Vec<OsString>, SandboxError> {
    fn spec<T>(flag: &str, value: &T) -> Result<[OsString; 2], SandboxError>
    where
        T: std::fmt::Display + std::str::FromStr + PartialEq,
    {
        let text = value.to_string();
        if text.parse::<T>().ok().as_ref() != Some(value) {
            return Err(SandboxError::InvalidRequest(format!(
                "{flag} {text:?} cannot be passed to the jailed kiln as it is; rename the paths \
                 without commas"
            )));
        }
        Ok([flag.into(), text.into()])
    }
    let mut args: Vec<OsString> = vec!["boot".into(), "--kernel".into(), config.kernel.clone().into()];
    if let Some(initrd) = &config.initrd {
        args.extend(["--initrd".into(), initrd.clone().into()]);
    }
    args.extend([
        "--cmdline".into(),
        config.cmdline.clone().into(),
        "--cpus".into(),
        config.cpus.to_string().into(),
        "--memory".into(),
        config.memory_mib.to_string().into(),
    ]);
    for disk in &config.disks {
        args.extend(spec::<DiskConfig>("--disk", disk)?);
    }
    for net in &config.nets {
        args.extend(spec::<NetConfig>("--net", net)?);
    }
    if let Some(vsock) = &config.vsock {
        args.extend(spec("--vsock", vsock)?);
    }
    args.extend(spec("--jail", jail)?);
    if !config.acpi {
        args.push("--no-acpi".into());
    }
    if !config.huge_pages {
        args.push("--no-huge-pages".into());
    }
    if config.force {
        args.push("--force".into());
    }
    if config.seccomp == SeccompMode::Off {
        args.push("--no-seccomp".into());
    }
    Ok(args)
}

/// Starts `kiln` with `args`, its output going to `console`, and a thread
/// that stops it when the sandbox asks (SIGTERM, which the jail forwards)
/// and reports how it ended.
pub fn start(kiln: &Path, args: Vec<OsString>, console: OwnedFd) -> Result<VmThread, SandboxError> {
    let setup = |what, source| SandboxError::Setup { what, source };
    let stop = StopHandle::new().map_err(|e| setup("creating the VM's stop event", e))?;
    let err = console
        .try_clone()
        .map_err(|e| setup("sharing the console sink", e))?;
    let child = Command::new(kiln)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(console))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| {
            setup(
                "starting the jailed kiln (SandboxBuilder::kiln_binary names it; default: kiln on PATH)",
                e,
            )
        })?;
    let (tx, rx) = mpsc::sync_channel(1);
    let watched = stop.clone();
    let handle = std::thread::Builder::new()
        .name("kiln-sandbox-jail".into())
        .spawn(move || {
            let reason = watch(child, &watched);
            watched.notify(reason.clone());
            let _ = tx.send(Ok(reason));
        })
        .map_err(|e| setup("starting the jail's watcher thread", e))?;
    Ok(VmThread::from_parts(stop, rx, handle))
}

/// Waits for `child` to end, sending it SIGTERM once `stop` is asked.
fn watch(mut child: Child, stop: &StopHandle) -> ExitReason {
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open takes a pid and flags; the result is a new fd we
    // own or -1. The child is not reaped before we wait, so the pid is it.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a fresh descriptor no one else owns.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
    let mut asked = false;
    loop {
        if !asked && stop.exit_reason().is_some() {
            asked = true;
            // SAFETY: kill on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match child.try_wait() {
            Ok(Some(status)) => return reason_of(status, asked),
            Ok(None) => {}
            Err(e) => {
                return ExitReason::InternalError {
                    vcpu: 0,
                    detail: format!("cannot wait for the jailed kiln: {e}"),
                }
            }
        }
        let evt = stop.event_fd().as_raw_fd();
        let mut fds = vec![libc::pollfd {
            fd: evt,
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(p) = &pidfd {
            fds.push(libc::pollfd {
                fd: p.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Without a pidfd (kernels before 5.3), look again every 100 ms.
        let timeout = if pidfd.is_some() { -1 } else { 100 };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = stop.event_fd().read();
        }
    }
}

/// How the VM ended, from the jailed kiln's exit status.
fn reason_of(status: ExitStatus, asked: bool) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    if asked {
        return ExitReason::Stopped;
    }
    let internal = |detail: String| ExitReason::InternalError { vcpu: 0, detail };
    match (status.code(), status.signal()) {
        (Some(0), _) => ExitReason::PowerOff,
        (Some(3), _) => ExitReason::GuestPanic,
        (Some(4), _) => ExitReason::TripleFault { vcpu: 0 },
        (Some(OOM_EXIT_CODE), _) => internal("the jail's memory limit killed the VMM".into()),
        (Some(VIOLATION_EXIT_CODE), _) => internal("the jailed VMM made a forbidden system call".into()),
        (Some(code), _) => internal(format!(
            "the jailed kiln exited with status {code} (its messages are in the console file)"
        )),
        (None, Some(signal)) => ExitReason::Signal(signal),
        (None, None) => internal("the jailed kiln ended".into()),
    }
}

/// Where the host finds the jailed VM's vsock socket.
pub fn host_socket(jail: &JailConfig) -> PathBuf {
    jail.dir.join(JAIL_SOCKET)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn config() -> VmConfig {
        let mut c = VmConfig::new("/k/vmlinux");
        c.initrd = Some("/k/initrd".into());
        c.cmdline = "console=ttyS0 quiet".into();
        c.disks.push("path=/img/root.ext4,ro,id=r".parse().unwrap());
        c.nets.push("tap=t0,rx-bw=1M/100".parse().unwrap());
        c.vsock = Some(format!("cid=3,socket=/{JAIL_SOCKET}").parse().unwrap());
        c.seccomp = SeccompMode::Off;
        c
    }

    #[test]
    fn boot_args_name_every_part_of_the_vm_and_the_jail() {
        let jail: JailConfig = "/srv/j,uid=7,gid=8,cgroup=memory.max=1G".parse().unwrap();
        let args: Vec<String> = boot_args(&config(), &jail)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let text = args.join(" ");
        for part in [
            "boot --kernel /k/vmlinux --initrd /k/initrd --cmdline console=ttyS0 quiet",
            "--disk path=/img/root.ext4,readonly=on",
            "--net tap=t0,rx-bw=1048576/100",
            "--vsock cid=3,socket=/sandbox.vsock",
            "--jail /srv/j,uid=7,gid=8,cgroup=memory.max=1G",
            "--no-seccomp",
        ] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert!(
            !text.contains("--force") && !text.contains("--no-acpi") && !text.contains("--no-huge-pages")
        );
    }

    #[test]
    fn a_path_with_a_comma_is_refused_not_mangled() {
        let mut c = config();
        c.disks[0].block.path = "/img/a,b.ext4".into();
        let jail: JailConfig = "/srv/j".parse().unwrap();
        let e = boot_args(&c, &jail).unwrap_err().to_string();
        assert!(e.contains("comma"), "{e}");
    }

    #[test]
    fn exit_statuses_become_exit_reasons() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(reason_of(code(0), false), ExitReason::PowerOff);
        assert_eq!(reason_of(code(3), false), ExitReason::GuestPanic);
        assert_eq!(reason_of(code(143), true), ExitReason::Stopped);
        assert_eq!(reason_of(ExitStatus::from_raw(9), false), ExitReason::Signal(9));
        for (c, word) in [(137, "memory"), (159, "forbidden"), (1, "status 1")] {
            match reason_of(code(c), false) {
                ExitReason::InternalError { detail, .. } => assert!(detail.contains(word), "{detail}"),
                other => panic!("{c}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_binary_is_a_setup_error_naming_the_builder_option() {
        let console = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let e = match start(Path::new("/nonexistent/kiln"), vec![], console) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("started"),
        };
        assert!(e.contains("kiln_binary"), "{e}");
    }

    #[test]
    fn stopping_terminates_the_child_and_reports_stopped() {
        let console = OwnedFd::from(std::fs::File::options().write(true).open("/dev/null").unwrap());
        // `sleep` stands in for kiln: SIGTERM ends it.
        let vm = start(Path::new("/bin/sleep"), vec!["30".into()], console).unwrap();
        let started = std::time::Instant::now();
        let mut vm = vm;
        vm.stop_and_join();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(vm.stop_handle().exit_reason(), Some(ExitReason::Stopped));
    }
}
