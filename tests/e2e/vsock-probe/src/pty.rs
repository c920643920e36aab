//! `pty-run ROWS COLS -- CMD [ARGS...]`: runs CMD on a fresh pseudo-terminal
//! of that size (its controlling terminal, as a terminal emulator would),
//! copies everything it writes there to stdout, and exits with its status.
//! The e2e suite has no terminal of its own; this gives `kiln exec -t` one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn check(r: libc::c_int, what: &str) -> Result<libc::c_int, String> {
    if r < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

pub fn pty_run(rows: u16, cols: u16, argv: &[String]) -> Result<i32, String> {
    let (program, args) = argv.split_first().ok_or("pty-run needs a command after --")?;
    // SAFETY: posix_openpt takes flags only; the fd it returns is owned below.
    let master_fd = check(
        unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) },
        "posix_openpt",
    )?;
    // SAFETY: master_fd is a fresh, open descriptor nothing else owns.
    let mut master = unsafe { File::from_raw_fd(master_fd) };
    // SAFETY: grantpt/unlockpt take the master fd only.
    check(unsafe { libc::grantpt(master_fd) }, "grantpt")?;
    check(unsafe { libc::unlockpt(master_fd) }, "unlockpt")?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::ptsname_r(master_fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err("ptsname_r failed".into());
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into the buffer.
    let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that outlives the call.
    check(
        unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ, &size) },
        "TIOCSWINSZ",
    )?;
    let slave = File::options()
        .read(true)
        .write(true)
        .open(&slave_path)
        .map_err(|e| format!("{slave_path}: {e}"))?;
    let slave_fd = slave.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // ioctl and dup2 on descriptors the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            for target in 0..3 {
                if libc::dup2(slave_fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    drop(slave);
    let mut out = io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n]).map_err(|e| format!("stdout: {e}"))?;
                out.flush().map_err(|e| format!("stdout: {e}"))?;
            }
            // EIO: every slave end is closed, the command is gone.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the pty: {e}")),
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for {program}: {e}"))?;
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
