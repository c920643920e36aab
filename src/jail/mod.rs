//! `--jail`: kiln, started as root, puts the VM in a jail of its own before
//! any guest code runs, in the steps of Firecracker's jailer: a per-VM
//! directory holding only what the VM uses, new mount, PID, IPC and UTS
//! namespaces (and a new or given network namespace), `pivot_root` into
//! the directory, other descriptors closed, the environment cleared,
//! rlimits, `no_new_privs`, then the uid and gid dropped. A cgroup per VM
//! carries its CPU, memory and pids limits.
//!
//! The calling process forks: the child (PID 1 of the new PID namespace)
//! goes into the jail and runs the VM; the parent stays outside, passes
//! SIGTERM/SIGINT/SIGHUP on, waits, says why if the child was killed for
//! its memory, and removes the directory and the cgroups.
//!
//! Paths: the kernel, initrd and disk images keep their host paths on the
//! command line and are bind-mounted into the directory (`/kernel`,
//! `/initrd`, `/disk0`, ...); a vsock `socket=PATH` is inside the jail, so
//! host peers reach it at DIR/PATH.

pub mod cgroup;
mod root;

use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::config::jail::JailConfig;
use crate::config::VmConfig;
use cgroup::VmCgroups;
use root::JailRoot;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "--jail needs root (it makes namespaces, device nodes and cgroups); run kiln as root or drop --jail"
    )]
    NotRoot,
    #[error("--jail must be set up before kiln starts threads, but {0} run; this is a bug in kiln")]
    Threads(usize),
    #[error("--jail {0}: the directory exists and is not empty; give a new or empty one")]
    DirNotEmpty(PathBuf),
    #[error("--jail: cannot {what}: {source}")]
    Setup { what: String, source: std::io::Error },
    #[error("--jail cgroup key {0}: kiln sets cpu.*, memory.* and pids.* limits only")]
    CgroupKey(String),
    #[error("--jail: no cgroup hierarchy on this host has the {0} controller; mount one or drop that limit")]
    NoController(String),
    #[error("--jail: the cgroup {0} already exists (another VM with this directory name?); remove it or pick another")]
    CgroupExists(PathBuf),
    #[error("--jail: cannot {what}: {source}")]
    Cgroup { what: String, source: std::io::Error },
}

impl JailError {
    fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Setup { what, source }
    }
}

/// Which side of the fork a caller of [`enter`] is on.
pub enum JailSide {
    /// In the forked child, not yet in the jail: open what must be opened
    /// outside it, then [`JailEntry::finish`]; then run the VM (with the
    /// config's paths rewritten) and exit.
    Inside(JailEntry),
    /// Outside: the jailed VM has ended and everything is cleaned up;
    /// exit with this status.
    Outside(u8),
}

/// The child's last step into the jail.
pub struct JailEntry {
    root: JailRoot,
    jail: JailConfig,
}

impl JailEntry {
    /// Enters the jail; `keep` are the descriptors the jailed side still
    /// needs besides 0, 1 and 2 (all others are closed).
    pub fn finish(self, keep: &[RawFd]) -> Result<(), JailError> {
        self.root.enter(&self.jail, keep)
    }
}

/// Sets the jail up for `config` and forks (see the module doc).
pub fn enter(jail: &JailConfig, config: &mut VmConfig) -> Result<JailSide, JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    // fork(2) copies only the calling thread: with others running, the
    // child could inherit a lock held forever.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads > 1 {
        return Err(JailError::Threads(threads));
    }
    let root = JailRoot::prepare(jail, config)?;
    let name = jail
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "vm".to_string());
    let mut cgroups = match VmCgroups::create(&name, &jail.cgroups) {
        Ok(c) => c,
        Err(e) => {
            root.remove();
            return Err(e);
        }
    };
    // Blocked before the fork: a SIGTERM meant for the outer process then
    // waits for its forwarding loop (instead of killing it before it can
    // clean up), and the child, PID 1 of its namespace, keeps TERM and INT
    // pending until its VMM's signalfd reads them (the kernel drops
    // signals that PID 1 neither blocks nor handles).
    let forwarded = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: masking signals of this single-threaded process; `old` is a local.
    let old = unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &forwarded, &mut old);
        old
    };
    match fork_into_pid_namespace() {
        Err(e) => {
            // SAFETY: restoring the mask saved above.
            unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            cgroups.remove();
            root.remove();
            Err(e)
        }
        Ok(Fork::Child(go)) => {
            let restore = signal_set(&[libc::SIGHUP, libc::SIGCHLD]);
            // SAFETY: unmasking in this (single-threaded) child.
            unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &restore, std::ptr::null_mut()) };
            // The parent moves us into the cgroups, then lets us go on.
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte into a local buffer from our pipe end.
            let n = unsafe { libc::read(go, byte.as_mut_ptr().cast(), 1) };
            // SAFETY: our descriptor, not used again.
            unsafe { libc::close(go) };
            if n != 1 {
                // SAFETY: the parent is gone or gave up: end at once.
                unsafe { libc::_exit(1) };
            }
            Ok(JailSide::Inside(JailEntry {
                root,
                jail: jail.clone(),
            }))
        }
        Ok(Fork::Parent { child, go }) => {
            let code = match cgroups.add(child) {
                Ok(()) => {
                    // SAFETY: one byte from a local to our pipe end.
                    unsafe { libc::write(go, [1u8].as_ptr().cast(), 1) };
                    // SAFETY: our descriptor, not used again.
                    unsafe { libc::close(go) };
                    wait_forwarding_signals(child, &cgroups)
                }
                Err(e) => {
                    // SAFETY: our own child; closing `go` also ends it.
                    unsafe {
                        libc::close(go);
                        libc::kill(child, libc::SIGKILL);
                    }
                    wait_forwarding_signals(child, &cgroups);
                    cgroups.remove();
                    root.remove();
                    return Err(e);
                }
            };
            cgroups.remove();
            root.remove();
            Ok(JailSide::Outside(code))
        }
    }
}

enum Fork {
    /// In the child: the read end of the parent's go-ahead pipe.
    Child(RawFd),
    Parent {
        child: libc::pid_t,
        go: RawFd,
    },
}

/// Forks a child that is PID 1 of a new PID namespace.
fn fork_into_pid_namespace() -> Result<Fork, JailError> {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::setup("create a pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: affects only children made from now on.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(JailError::setup("make a PID namespace")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the process is single-threaded (checked by `enter`), so the
    // child may go on as a normal program.
    match unsafe { libc::fork() } {
        -1 => Err(JailError::setup("fork")(std::io::Error::last_os_error())),
        0 => {
            // SAFETY: closing our copy of the write end; the parent's
            // death must end the jailed VM too.
            unsafe {
                libc::close(pipe[1]);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(Fork::Child(pipe[0]))
        }
        child => {
            // SAFETY: our copy of the read end.
            unsafe { libc::close(pipe[0]) };
            Ok(Fork::Parent { child, go: pipe[1] })
        }
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Waits for `child`, passing SIGTERM, SIGINT and SIGHUP on (all blocked
/// by [`enter`] before the fork); returns kiln's exit status.
fn wait_forwarding_signals(child: libc::pid_t, cgroups: &VmCgroups) -> u8 {
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        let mut status = 0;
        // SAFETY: our own child; `status` is a local.
        match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
            0 => {}
            -1 => return 1,
            _ => return exit_code(status, cgroups),
        }
        // SAFETY: `set` and `timeout` are valid; the info is not needed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

fn exit_code(status: libc::c_int, cgroups: &VmCgroups) -> u8 {
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status) as u8;
    }
    let sig = libc::WTERMSIG(status);
    if sig == libc::SIGKILL && cgroups.oom_killed() {
        eprintln!(
            "kiln: the VM was killed: it went over its memory limit ({}); raise --jail cgroup=memory.max or give the guest less --memory",
            cgroups.memory_limit().unwrap_or_else(|| "memory.max".to_string())
        );
    } else {
        eprintln!("kiln: the jailed VMM was killed by signal {sig}");
    }
    (128 + sig).clamp(0, 255) as u8
}
