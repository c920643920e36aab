//! Letting kiln exit as soon as its guest has stopped.
//!
//! Destroying a KVM VM that has an in-kernel irqchip waits for several RCU
//! grace periods inside the kernel: about 15 ms on a PVM host, however
//! small the guest, and more than the whole boot of a tiny guest. The CLI
//! therefore hands the last reference to the VM to a child process that
//! holds nothing else, and exits; the child closes it once kiln is gone.
//! Devices, disk images (and their locks) and the terminal are all released
//! by kiln itself before it returns, exactly as without this.

use std::io;
use std::os::fd::RawFd;

/// Forks a child that keeps only `vm_fd` open until this process exits,
/// then exits itself, letting the kernel finish tearing the VM down.
/// Call with no other threads running.
pub fn detach_vm_teardown(vm_fd: RawFd) -> io::Result<()> {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    // SAFETY: the caller guarantees this is the only thread, and the child
    // below only makes async-signal-safe system calls before `_exit`.
    match unsafe { libc::fork() } {
        -1 => {
            let err = io::Error::last_os_error();
            // SAFETY: closing descriptors this function just created.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(err)
        }
        0 => {
            // SAFETY: only close_range, prctl, read and _exit, all
            // async-signal-safe; the descriptors kept are ours.
            unsafe { child(vm_fd, read_end) }
        }
        _ => {
            // The write end stays open until this process exits: that
            // EOF is the child's signal to let go of the VM.
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(read_end) };
            Ok(())
        }
    }
}

/// # Safety
/// Runs in a freshly forked child of a single-threaded parent.
unsafe fn child(vm_fd: RawFd, read_end: RawFd) -> ! {
    let (low, high) = if vm_fd < read_end {
        (vm_fd, read_end)
    } else {
        (read_end, vm_fd)
    };
    // Everything but the two descriptors we need: no terminal, no disk
    // images (their locks must go with kiln), no event fds.
    for (first, last) in [(0, low - 1), (low + 1, high - 1), (high + 1, u32::MAX as i32)] {
        if first <= last {
            libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32);
        }
    }
    libc::prctl(libc::PR_SET_NAME, c"kiln-teardown".as_ptr());
    let mut byte = 0u8;
    // Blocks until every write end is closed, i.e. kiln has exited.
    while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0
        && *libc::__errno_location() == libc::EINTR
    {}
    libc::_exit(0)
}
