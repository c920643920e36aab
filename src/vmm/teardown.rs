//! Letting kiln exit as soon as its guest has stopped.
//!
//! Destroying a KVM VM that has an in-kernel irqchip waits for several RCU
//! grace periods inside the kernel: about 15 ms on a PVM host, however
//! small the guest, and more than the whole boot of a tiny guest. The CLI
//! therefore hands the last reference to the VM to a child process that
//! holds nothing else, and exits; the child closes it once kiln is gone.
//! Devices, disk images (and their locks) and the terminal are all released
//! by kiln itself before it returns, exactly as without this.
//!
//! Guest RAM is mapped `MADV_DONTFORK` (see `vstate::memory`), so the fork
//! copies no page tables for it however large the guest.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The forked child holding the VM. It exits when every copy of the pipe's
/// write end is closed, i.e. when this process has exited.
#[derive(Debug)]
pub struct TeardownChild {
    pub pid: libc::pid_t,
    write_end: OwnedFd,
}

impl TeardownChild {
    /// Keeps the write end open for the rest of this process's life: its
    /// closing at exit is what lets the child go.
    pub fn release_at_exit(self) {
        std::mem::forget(self.write_end);
    }
}

/// Forks a child that keeps only `vm_fd` (and its end of a pipe) open
/// until this process exits, then exits itself, letting the kernel finish
/// tearing the VM down. The child runs only async-signal-safe system
/// calls, so other threads may exist, but none should hold `vm_fd`'s VM
/// (a vCPU thread) or the child would not be the VM's last holder.
/// Dropping the returned handle instead of calling
/// [`TeardownChild::release_at_exit`] lets the child go at once.
pub fn detach_vm_teardown(vm_fd: RawFd) -> io::Result<TeardownChild> {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created these two descriptors and nothing else
    // owns them.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the child below only makes async-signal-safe system calls
    // before `_exit`, so the state of other threads does not matter to it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: only close_range, prctl, read and _exit, all
            // async-signal-safe; the descriptors kept are ours.
            unsafe { child(vm_fd, pipe[0]) }
        }
        pid => {
            // The child has its own copy of the read end.
            drop(read_end);
            Ok(TeardownChild { pid, write_end })
        }
    }
}

/// The ranges of descriptors to close so that only `keep` stay open:
/// everything below, between and above them, up to the largest descriptor
/// number there can be.
fn ranges_to_close(mut keep: [RawFd; 2]) -> impl Iterator<Item = (u32, u32)> {
    keep.sort_unstable();
    let mut next = 0u32;
    let mut ranges = [None; 3];
    for (slot, fd) in ranges.iter_mut().zip(keep) {
        let fd = fd as u32;
        if fd > next {
            *slot = Some((next, fd - 1));
        }
        next = fd.saturating_add(1);
    }
    ranges[2] = Some((next, u32::MAX));
    ranges.into_iter().flatten()
}

/// # Safety
/// Runs in a freshly forked child; makes only async-signal-safe calls.
unsafe fn child(vm_fd: RawFd, read_end: RawFd) -> ! {
    // Everything but the two descriptors we need: no terminal, no disk
    // images (their locks must go with kiln), no event fds, and above all
    // not the pipe's write end, whose copy here would keep the pipe (and
    // so this process and the VM) alive forever.
    for (first, last) in ranges_to_close([vm_fd, read_end]) {
        if libc::syscall(libc::SYS_close_range, first, last, 0u32) != 0 {
            // No close_range (Linux before 5.9): holding unknown
            // descriptors is worse than a slower exit, so let go of the VM
            // now and kiln's own close destroys it.
            libc::_exit(0);
        }
    }
    // Named only once the descriptors are closed: tests wait for it.
    libc::prctl(libc::PR_SET_NAME, c"kiln-teardown".as_ptr());
    let mut byte = 0u8;
    // Blocks until every write end is closed, i.e. kiln has exited.
    while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0
        && *libc::__errno_location() == libc::EINTR
    {}
    libc::_exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn close_ranges_cover_everything_but_the_kept_fds() {
        let all = |keep| ranges_to_close(keep).collect::<Vec<_>>();
        assert_eq!(
            all([9, 3]),
            vec![(0, 2), (4, 8), (10, u32::MAX)],
            "the last range must reach the top (u32::MAX as i32 was -1)"
        );
        assert_eq!(all([0, 1]), vec![(2, u32::MAX)]);
        assert_eq!(all([0, 5]), vec![(1, 4), (6, u32::MAX)]);
        assert_eq!(all([4, 5]), vec![(0, 3), (6, u32::MAX)]);
    }

    fn fds_of(pid: libc::pid_t) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Forks the real child from this (many-threaded, many-fd) test
    /// process, with descriptors above and below the kept ones, and reads
    /// what it holds once it has named itself (it closes first).
    #[test]
    fn child_keeps_only_the_vm_fd_and_its_pipe() {
        let vm = std::fs::File::open("/dev/null").unwrap();
        // A descriptor above everything kept, as an image or eventfd can be.
        // SAFETY: fcntl duplicates a descriptor we own into a new one that
        // nothing else owns.
        let above = unsafe {
            let fd = libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1000);
            assert!(fd >= 1000, "{}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        let child = detach_vm_teardown(vm.as_raw_fd()).unwrap();
        let comm = format!("/proc/{}/comm", child.pid);
        let start = Instant::now();
        while std::fs::read_to_string(&comm).unwrap().trim() != "kiln-teardown" {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "child never named itself"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let fds = fds_of(child.pid);
        assert_eq!(fds.len(), 2, "child holds {fds:?}");
        assert!(fds.contains(&vm.as_raw_fd()), "child holds {fds:?}");
        let pipe = fds.iter().find(|&&fd| fd != vm.as_raw_fd()).unwrap();
        let target = std::fs::read_link(format!("/proc/{}/fd/{pipe}", child.pid)).unwrap();
        assert!(target.to_string_lossy().starts_with("pipe:"), "{target:?}");
        // Its pipe is the read end: our write end's close lets it go.
        let pid = child.pid;
        drop(child);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(above);
    }
}
