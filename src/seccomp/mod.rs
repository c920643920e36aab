//! Seccomp filters, one per kind of kiln thread, on by default.
//!
//! Each thread installs its own filter (never TSYNC: in the sandbox
//! library the other threads are the embedding program's) once it holds
//! every descriptor it will use and before the guest runs. A call outside
//! the filter raises SIGSYS; the handler prints one line naming the thread
//! kind and the call, then ends the process with [`VIOLATION_EXIT_CODE`]:
//! a thread that asks for what kiln never does is a bug or an attack, and
//! nothing it holds can be trusted to go on.

mod program;
mod rules;

use std::cell::Cell;
use std::sync::Once;

use seccompiler::BpfProgram;

/// kiln's exit status after a forbidden system call (128 + SIGSYS, what a
/// shell reports for a process SIGSYS killed).
pub const VIOLATION_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// Names a test may put in `KILN_SECCOMP_SELFTEST=KIND:CALL` to make a
/// thread of that kind attempt CALL right after installing its filter.
/// It can only make kiln stop itself, so it is safe to leave in.
const SELFTEST_ENV: &str = "KILN_SECCOMP_SELFTEST";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: devices' queues and host I/O.
    Vmm,
    /// A vCPU: KVM_RUN and the device exits it dispatches.
    Vcpu,
    /// The HTTP API thread.
    Api,
    /// The event loop of a VM an API changes while it runs: also opens a
    /// drive's new image (`PATCH /drives`), existing files only.
    VmmWithApi,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::VmmWithApi => "vmm",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot install the {kind} thread's seccomp filter: {source}; run with --no-seccomp to go without (debugging only)")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// Whether threads install their filters. The one switch `--no-seccomp`
/// and the library's builder turn off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    #[default]
    On,
    Off,
}

thread_local! {
    /// This thread's kind by name, for the SIGSYS line (a static string:
    /// reading it is safe in the handler).
    static KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// `kind`'s filter as a BPF program: allow what its rules list, trap the rest.
pub fn filter(kind: ThreadKind) -> BpfProgram {
    program::compile(rules::rules(kind).into_iter().collect(), libc::SECCOMP_RET_TRAP)
}

/// How many distinct system calls `kind`'s filter lets through.
pub fn allowed_calls(kind: ThreadKind) -> usize {
    rules::rules(kind).len()
}

/// Installs `kind`'s filter on the calling thread (if `mode` is on), then
/// runs the self-test the environment asks for, if it names this kind.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    install_sigsys_handler()?;
    let program = filter(kind);
    KIND.with(|k| k.set(kind.name()));
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })?;
    selftest(kind);
    Ok(())
}

/// `KILN_SECCOMP_SELFTEST=KIND:CALL`: the thread of KIND attempts CALL
/// (execve, open, socket-inet, ioctl), which its filter must refuse.
fn selftest(kind: ThreadKind) {
    let Ok(spec) = std::env::var(SELFTEST_ENV) else {
        return;
    };
    let Some((k, call)) = spec.split_once(':') else {
        return;
    };
    if k != kind.name() {
        return;
    }
    // SAFETY: each call gets valid (or null) pointers to constant data;
    // all of them are meant to be refused before the kernel acts.
    unsafe {
        match call {
            "execve" => {
                let path = c"/bin/true".as_ptr();
                let argv = [path, std::ptr::null()];
                libc::syscall(
                    libc::SYS_execve,
                    path,
                    argv.as_ptr(),
                    std::ptr::null::<*const libc::c_char>(),
                );
            }
            "open" => {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    c"/etc/hostname".as_ptr(),
                    libc::O_RDONLY,
                );
            }
            "socket-inet" => {
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "ioctl" => {
                // KVM_CREATE_VM on stdin: a request no thread uses.
                libc::syscall(libc::SYS_ioctl, 0, 0xae01u64, 0);
            }
            _ => {}
        }
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with an extern "C" handler that only
        // makes async-signal-safe calls (write, _exit).
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handle_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// Names for the calls a compromised or buggy thread would most likely
/// try; others are shown by number.
const CALL_NAMES: &[(i64, &str)] = &[
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_open, "open"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_renameat2, "renameat2"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_epoll_create1, "epoll_create1"),
];

/// A fixed-size line built without allocating (the handler may not).
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The one line the SIGSYS handler prints.
fn violation_line(kind: &str, nr: i64) -> Line {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"kiln: seccomp: the ");
    line.push(kind.as_bytes());
    line.push(b" thread made a forbidden system call, ");
    if let Some((_, name)) = CALL_NAMES.iter().find(|(n, _)| *n == nr) {
        line.push(name.as_bytes());
        line.push(b" (");
        line.push_num(nr as u64);
        line.push(b")");
    } else {
        line.push(b"number ");
        line.push_num(nr as u64);
    }
    line.push(b"; a bug in kiln or an attack from the guest: stopping\n");
    line
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo's SIGSYS fields (si_call_addr, si_syscall) follow the three
    // leading ints and their padding: the call number is at byte 24.
    // SAFETY: the kernel hands a valid siginfo_t for SA_SIGINFO handlers;
    // the offset is the x86_64 layout of its _sigsys member.
    let nr = unsafe { (info as *const u8).add(24).cast::<i32>().read_unaligned() };
    let line = violation_line(KIND.with(Cell::get), i64::from(nr));
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
