//! Raw mode for the host terminal while the guest console is attached.

use std::io::stdin;

use vmm_sys_util::terminal::Terminal;

/// Puts stdin in raw mode when it is a terminal and restores it on drop,
/// so every exit path that unwinds (errors, panics, signals handled by the
/// event loop) gives the user their terminal back.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn new() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let is_tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        let active = is_tty && stdin().lock().set_raw_mode().is_ok();
        Self { active }
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
            let _ = stdin().lock().set_canon_mode();
        }
    }
}
