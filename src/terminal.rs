//! Raw mode for the host terminal while the guest console is attached.

use std::io::stdin;
use std::sync::{Mutex, Once};

use vmm_sys_util::terminal::Terminal;

/// The terminal settings to put back, while raw mode is on.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode when it is a terminal and restores its original
/// settings on drop, so every exit path that unwinds (errors, signals
/// handled by the event loop) gives the user their terminal back. A panic
/// hook does the same for panics, which with `panic = "abort"` (the
/// release profile) never unwind.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn new() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let is_tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        let active = is_tty && Self::enter_raw_mode();
        Self { active }
    }

    fn enter_raw_mode() -> bool {
        // SAFETY: termios is plain data; tcgetattr fills it in or fails.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `original` is a valid termios to write to.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return false;
        }
        install_panic_hook();
        let mut saved = crate::sync::lock(&SAVED);
        if saved.is_some() {
            // Another RawTerminal is live: it will restore the original.
            return false;
        }
        if stdin().lock().set_raw_mode().is_err() {
            return false;
        }
        *saved = Some(original);
        true
    }
}

impl Default for RawTerminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            if let Some(original) = crate::sync::lock(&SAVED).take() {
                restore(&original);
            }
        }
    }
}

fn restore(original: &libc::termios) {
    // SAFETY: `original` is a termios tcgetattr filled in; tcsetattr only
    // reads it.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
}

/// Chains a hook before the current one (normally the default, which
/// prints the message) that first gives the terminal back, so the message
/// lands on a sane terminal and the shell is usable after an abort.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: never wait in a panic hook; the lock is only held
            // for a moment while raw mode is entered or left.
            if let Ok(saved) = SAVED.try_lock() {
                if let Some(original) = saved.as_ref() {
                    restore(original);
                }
            }
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};

    const CHILD_ENV: &str = "KILN_TEST_PANIC_IN_RAW_MODE";

    /// Opens a pseudo-terminal; returns (master, slave).
    fn open_pty() -> (OwnedFd, OwnedFd) {
        // SAFETY: plain libc calls on descriptors this function owns;
        // ptsname's static buffer is copied before anything else runs here.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(master);
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(
                libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
                0
            );
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(slave >= 0, "open pty slave: {}", std::io::Error::last_os_error());
            (master, OwnedFd::from_raw_fd(slave))
        }
    }

    fn termios_of(fd: &OwnedFd) -> libc::termios {
        // SAFETY: termios is plain data that tcgetattr fills in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
            t
        }
    }

    /// Run in a child process (see below) with a pty as stdin: enter raw
    /// mode, then panic the way the release profile does, with no unwinding
    /// (so `RawTerminal`'s drop never runs).
    #[test]
    fn panic_child_with_raw_terminal() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let terminal = RawTerminal::new();
        assert!(terminal.active, "stdin is not a terminal");
        let hooks = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            hooks(info);
            std::process::abort();
        }));
        panic!("deliberate panic in raw mode");
    }

    /// A panic that aborts gives the terminal back and keeps its message.
    #[test]
    fn aborting_panic_restores_the_terminal() {
        let (_master, slave) = open_pty();
        let before = termios_of(&slave);
        assert_ne!(before.c_lflag & libc::ICANON, 0, "a fresh pty is canonical");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "terminal::tests::panic_child_with_raw_terminal",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the child should have aborted: {stderr}");
        assert!(
            stderr.contains("deliberate panic in raw mode"),
            "default message lost: {stderr}"
        );
        let after = termios_of(&slave);
        assert_eq!(
            (after.c_lflag, after.c_iflag, after.c_oflag),
            (before.c_lflag, before.c_iflag, before.c_oflag),
            "terminal left in raw mode"
        );
    }
}
