//! Guest console output, written in whole lines.
//!
//! vm-superio flushes its writer after every byte, and every flush of a
//! terminal or pipe is a write(2): a verbose kernel boot then costs tens of
//! thousands of system calls. This writer passes complete lines (or 4 KiB)
//! straight through and holds a partial line, such as a shell prompt, for
//! at most [`PARTIAL_LINE_DELAY`], after which the event loop flushes it.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// How long a partial line may wait for the rest of it.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(5);
const WRITE_THROUGH_BYTES: usize = 4096;

pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    pending: Vec<u8>,
    timer: TimerFd,
    timer_armed: bool,
}

impl ConsoleOutput {
    pub fn new(out: Box<dyn Write + Send>) -> io::Result<Self> {
        Ok(Self {
            out,
            pending: Vec::with_capacity(WRITE_THROUGH_BYTES),
            timer: TimerFd::new()?,
            timer_armed: false,
        })
    }

    /// Fires when a partial line has waited long enough.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Writes out whatever is held back; called when the timer fires.
    pub fn flush_pending(&mut self) {
        if self.timer_armed {
            // Expired or not, the timer's job is done once we flush.
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
        if let Err(e) = self.write_through() {
            debug_guest!("console output failed: {e}");
        }
    }

    fn write_through(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Whatever happens, do not hold on to output that cannot be written.
        let result = self.out.write_all(&self.pending).and_then(|_| self.out.flush());
        self.pending.clear();
        result
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        if data.contains(&b'\n') || self.pending.len() >= WRITE_THROUGH_BYTES {
            self.write_through()?;
        } else if !self.timer_armed {
            self.timer.reset(PARTIAL_LINE_DELAY, None)?;
            self.timer_armed = true;
        }
        Ok(data.len())
    }

    /// Deferred: `write` decides when bytes go out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        let _ = self.write_through();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Recorder {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_out_whole_and_partial_lines_wait_for_the_timer() {
        let rec = Recorder::default();
        let mut c = ConsoleOutput::new(Box::new(rec.clone())).unwrap();
        for b in b"hello\n# " {
            c.write_all(&[*b]).unwrap();
            c.flush().unwrap();
        }
        assert_eq!(*rec.0.lock().unwrap(), vec![b"hello\n".to_vec()]);
        assert!(c.timer_armed);
        std::thread::sleep(PARTIAL_LINE_DELAY * 2);
        c.flush_pending();
        assert_eq!(rec.0.lock().unwrap()[1], b"# ".to_vec());
        assert!(!c.timer_armed);
    }

    #[test]
    fn long_output_without_newlines_is_bounded_and_drop_flushes() {
        let rec = Recorder::default();
        let mut c = ConsoleOutput::new(Box::new(rec.clone())).unwrap();
        c.write_all(&vec![b'x'; WRITE_THROUGH_BYTES + 10]).unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 1);
        c.write_all(b"tail").unwrap();
        drop(c);
        assert_eq!(rec.0.lock().unwrap().last().unwrap(), b"tail");
    }
}
