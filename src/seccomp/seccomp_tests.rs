use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;

const KINDS: [ThreadKind; 4] = [
    ThreadKind::Vmm,
    ThreadKind::Vcpu,
    ThreadKind::Api,
    ThreadKind::VmmWithApi,
];

/// What a forked child did after installing `kind`'s filter and running
/// `attempt`: its exit status (the code, or 1000 + the signal) and what it
/// wrote to stderr. The filter is built and the handler installed before
/// the fork, so the child only makes system calls (the test harness has
/// other threads; nothing in the child may take a lock).
fn in_filtered_child(kind: ThreadKind, attempt: fn()) -> (i32, String) {
    let program = filter(kind);
    install_sigsys_handler().unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child makes only system calls before _exit (see above).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain system calls on descriptors this child owns.
        unsafe {
            libc::dup2(fds[1], 2);
            // Other tests' descriptors (sockets whose close they wait to
            // see) must not live on in this child.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            KIND.with(|k| k.set(kind.name()));
            if seccompiler::apply_filter(&program).is_err() {
                libc::_exit(90);
            }
            attempt();
            libc::_exit(0);
        }
    }
    // SAFETY: the parent owns both ends; the child has its own copies.
    let (mut read_end, write_end) = unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(write_end);
    let mut err = String::new();
    read_end.read_to_string(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1000 + libc::WTERMSIG(status)
    };
    (code, err)
}

fn execve() {
    let path = c"/bin/true".as_ptr();
    let argv = [path, std::ptr::null()];
    // SAFETY: valid, NUL-terminated arguments.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            path,
            argv.as_ptr(),
            std::ptr::null::<*const libc::c_char>(),
        )
    };
}

fn open_new_path() {
    // SAFETY: a constant path.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/etc/hostname".as_ptr(),
            libc::O_RDONLY,
        )
    };
}

fn create_file() {
    // SAFETY: a constant path; refused before the kernel acts.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/tmp/kiln-seccomp-should-not-exist".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT,
            0o600,
        )
    };
}

/// Opens an existing file and locks it, then says so.
fn open_existing_and_lock() {
    // SAFETY: a constant path; the descriptor is only locked and closed.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY,
        );
        libc::syscall(libc::SYS_flock, fd, libc::LOCK_SH | libc::LOCK_NB);
        libc::syscall(libc::SYS_close, fd);
        libc::syscall(libc::SYS_write, 2, c"opened".as_ptr(), 6);
    }
}

fn inet_socket() {
    // SAFETY: no pointers.
    unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
}

fn foreign_ioctl() {
    // SAFETY: KVM_CREATE_VM on stderr: refused before it reaches a driver.
    unsafe { libc::syscall(libc::SYS_ioctl, 2, 0xae01u64, 0) };
}

fn executable_mapping() {
    // SAFETY: an anonymous mapping; refused before the kernel acts.
    unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
}

fn clone_process() {
    // SAFETY: a raw fork-like clone; refused before the kernel acts.
    unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
}

fn everyday_calls() {
    let mut buf = [0u8; 8];
    // SAFETY: an anonymous read-write mapping, then made read-only.
    unsafe {
        let p = libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::syscall(libc::SYS_mprotect, p, 4096, libc::PROT_READ);
    }
    let mut ts: libc::timespec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid buffers of the sizes given.
    unsafe {
        libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), buf.len(), 0);
        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
        libc::syscall(libc::SYS_write, 2, c"alive".as_ptr(), 5);
        libc::syscall(libc::SYS_ioctl, 2, libc::FIONBIO, &0i32);
    }
}

#[test]
fn every_filter_builds_and_says_how_many_calls_it_allows() {
    for kind in KINDS {
        let program = filter(kind);
        let n = allowed_calls(kind);
        eprintln!(
            "seccomp: the {} filter allows {n} system calls ({} BPF instructions)",
            kind.name(),
            program.len()
        );
        assert!((20..80).contains(&n), "{}: {n}", kind.name());
    }
}

#[test]
fn forbidden_calls_stop_the_process_with_one_line_naming_them() {
    let cases: [(ThreadKind, fn(), &str); 12] = [
        (ThreadKind::VmmWithApi, create_file, "openat (257)"),
        (ThreadKind::VmmWithApi, execve, "execve (59)"),
        (ThreadKind::Vmm, executable_mapping, "mmap (9)"),
        (ThreadKind::Vcpu, executable_mapping, "mmap (9)"),
        (ThreadKind::Vmm, execve, "execve (59)"),
        (ThreadKind::Vmm, open_new_path, "openat (257)"),
        (ThreadKind::Vmm, inet_socket, "socket (41)"),
        (ThreadKind::Vmm, clone_process, "clone (56)"),
        (ThreadKind::Vcpu, execve, "execve (59)"),
        (ThreadKind::Vcpu, foreign_ioctl, "ioctl (16)"),
        (ThreadKind::Vcpu, inet_socket, "socket (41)"),
        (ThreadKind::Api, open_new_path, "openat (257)"),
    ];
    for (kind, attempt, call) in cases {
        let (code, err) = in_filtered_child(kind, attempt);
        assert_eq!(code, VIOLATION_EXIT_CODE, "{} {call}: {err}", kind.name());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "kiln: seccomp: the {} thread made a forbidden system call, {call};",
                kind.name()
            )),
            "{err}"
        );
    }
}

#[test]
fn everyday_calls_pass_every_filter() {
    for kind in KINDS {
        let (code, err) = in_filtered_child(kind, everyday_calls);
        assert_eq!((code, err.as_str()), (0, "alive"), "{}", kind.name());
    }
}

#[test]
fn an_api_driven_vmm_opens_existing_files_only() {
    let (code, err) = in_filtered_child(ThreadKind::VmmWithApi, open_existing_and_lock);
    assert_eq!((code, err.as_str()), (0, "opened"));
    let (code, _) = in_filtered_child(ThreadKind::Vmm, open_existing_and_lock);
    assert_eq!(code, VIOLATION_EXIT_CODE);
    assert!(!std::path::Path::new("/tmp/kiln-seccomp-should-not-exist").exists());
}

#[test]
fn the_violation_line_names_unknown_calls_by_number() {
    let line = violation_line("unfiltered", 999);
    let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
    assert_eq!(
        text,
        "kiln: seccomp: the unfiltered thread made a forbidden system call, number 999; a bug in kiln or an attack from the guest: stopping\n"
    );
}

#[test]
fn off_installs_nothing() {
    install(ThreadKind::Vmm, SeccompMode::Off).unwrap();
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(status.contains("Seccomp:\t0"), "{status}");
}
