//! What each kind of kiln thread may ask of the kernel once the guest runs.
//!
//! Everything that opens files, creates VMs, maps guest memory or starts
//! threads happens before the filters go on; afterwards a thread only moves
//! bytes between descriptors it already holds, waits, and signals. Two
//! exceptions, both on the VMM thread: the vsock device connects to the
//! host's `<socket>_<port>` listeners (AF_UNIX sockets only) and removes
//! its own socket at exit (`unlink` after an inode check).
//!
//! vCPU threads run device code too: MMIO and port exits go to the device
//! on the vCPU's own thread, and a virtio device's activation or reset
//! (a status register write) adds, drops and closes its host descriptors
//! there. Hence the descriptor calls in the vCPU list.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// One syscall and the argument rules it must match (none: any arguments).
pub type Rule = (i64, Vec<SeccompRule>);

// KVM ioctl numbers (linux/kvm.h): _IO/_IOW(KVMIO = 0xae, nr, size).
const KVM_RUN: u64 = 0xae80;
const KVM_IRQ_LINE: u64 = 0x4008_ae61;

/// Calls every thread kind needs to live: memory for Rust's allocator,
/// futexes for locks and channels, signals (the vCPU kick, signal return),
/// time, descriptors it holds, and its own exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // Anonymous descriptors (no path, no privilege): a device's activation
    // makes its wake-up eventfd and deadline timer, possibly on a vCPU.
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockopt,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The VMM (event-loop) thread's own extras: disk I/O, the vsock host
/// side, and its exit-time clean-up.
const VMM: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_unlink,
    libc::SYS_getrusage,
    libc::SYS_mincore,
    // The teardown child (vmm/teardown.rs), forked once the guest has
    // stopped: its pipe, and in the child its descriptor clean-up.
    libc::SYS_pipe2,
    libc::SYS_close_range,
    libc::SYS_set_robust_list,
];

/// The API thread: one Unix listening socket and its clients.
const API: &[i64] = &[libc::SYS_accept4, libc::SYS_accept, libc::SYS_setsockopt];

fn cond(arg: u8, value: u64) -> SeccompCondition {
    // Built from constants: a failure is a bug in this table, caught by
    // the unit tests that build every filter.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .expect("a valid seccomp condition")
}

fn one(arg: u8, value: u64) -> SeccompRule {
    SeccompRule::new(vec![cond(arg, value)]).expect("a valid seccomp rule")
}

/// Argument `arg` has none of `bits` set.
fn none_of(arg: u8, bits: u64) -> SeccompRule {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bits), 0)
        .expect("a valid seccomp condition");
    SeccompRule::new(vec![c]).expect("a valid seccomp rule")
}

/// ioctl requests allowed for `kind`: argument 1 must be one of them.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    // Terminal (console output and raw-mode restore) and non-blocking
    // sockets (std sets O_NONBLOCK on sockets through FIONBIO).
    let mut v = vec![
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TCSETSF,
        libc::TIOCGWINSZ,
        libc::FIONBIO,
        libc::FIONREAD,
    ];
    match kind {
        ThreadKind::Vcpu => v.push(KVM_RUN),
        ThreadKind::Vmm | ThreadKind::VmmWithApi => v.push(KVM_IRQ_LINE),
        ThreadKind::Api => return vec![libc::FIONBIO, libc::FIONREAD],
    }
    // Tap offloads follow the driver's features: set at activation (a
    // vCPU) or reset.
    v.extend([libc::TUNSETOFFLOAD, libc::TUNSETVNETHDRSZ]);
    v
}

/// Every rule of `kind`'s filter.
pub fn rules(kind: ThreadKind) -> Vec<Rule> {
    let vmm = matches!(kind, ThreadKind::Vmm | ThreadKind::VmmWithApi);
    let extra: &[i64] = match kind {
        ThreadKind::Vmm | ThreadKind::VmmWithApi => VMM,
        ThreadKind::Vcpu => &[],
        ThreadKind::Api => API,
    };
    let mut rules: Vec<Rule> = COMMON.iter().chain(extra).map(|&nr| (nr, vec![])).collect();
    // Memory for the allocator (glibc grows a thread's heap with
    // mprotect), never executable.
    let no_exec = libc::PROT_EXEC as u64;
    rules.push((libc::SYS_mmap, vec![none_of(2, no_exec)]));
    rules.push((libc::SYS_mprotect, vec![none_of(2, no_exec)]));
    let requests = ioctls(kind).into_iter().map(|r| one(1, r)).collect();
    rules.push((libc::SYS_ioctl, requests));
    if kind == ThreadKind::VmmWithApi {
        // A drive's new image: an existing file, never created, truncated
        // or anonymous; then its lock.
        let creates = libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE;
        rules.push((libc::SYS_openat, vec![none_of(2, creates as u64)]));
        rules.push((libc::SYS_flock, vec![]));
    }
    if vmm {
        // Unix sockets only (SOCK_* flags may be or-ed into the type).
        rules.push((libc::SYS_socket, vec![one(0, libc::AF_UNIX as u64)]));
        // fork(2) as glibc makes it (a process, never a thread), for the
        // teardown child, which then names itself.
        let fork = libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD;
        rules.push((libc::SYS_clone, vec![one(0, fork as u64)]));
        rules.push((libc::SYS_prctl, vec![one(0, libc::PR_SET_NAME as u64)]));
    }
    rules
}
