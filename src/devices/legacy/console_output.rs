//! Guest console output: buffered in whole lines, written by a thread of
//! its own, so that nothing the host peer does can stall a vCPU or the
//! event loop.
//!
//! The UART hands each guest byte to [`ConsoleOutput`], which only appends
//! it to a bounded [`OutputBuffer`]. The `kiln-console` thread writes whole
//! lines (a partial line such as a shell prompt after
//! [`PARTIAL_LINE_DELAY`]) to the host: stdout, a pipe, a terminal, a
//! socket, a file. Only that thread ever blocks on the peer, and it holds no
//! lock while it does. The alternatives all fall short somewhere: setting
//! O_NONBLOCK on stdout (as Firecracker does) changes a file description
//! the parent shell and the programs it runs next share; reopening
//! /proc/self/fd/1 gives a description of our own for pipes and terminals
//! but fails for sockets, can fail for a terminal owned by someone else,
//! and would give a regular file a new offset; poll-then-write races with
//! anyone else writing to the same pipe or terminal, and a terminal blocks
//! a write larger than its free room even after POLLOUT.
//!
//! A reader slower than the guest holds the guest back the way a UART
//! does: above [`HIGH_WATER`] buffered bytes the UART reports its
//! transmitter busy, and drivers that honour that (Linux does) wait, so
//! nothing is lost. The back-pressure is bounded: a peer that takes nothing
//! for [`STALL_TIMEOUT`] is declared stalled and the guest may write on.
//! What arrives past [`CAPACITY`] (a stalled peer, or a guest ignoring the
//! busy bit) is dropped and counted: host memory stays bounded. The event
//! loop reports the count at most once a [`DROP_REPORT_INTERVAL`], woken
//! by the same event that tells it about room for the guest.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::output_buffer::OutputBuffer;
use crate::sync::lock;

/// How long a partial line may wait for the rest of it.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(5);
/// Most guest output held for the peer; past it new bytes are dropped.
pub const CAPACITY: usize = 1 << 20;
/// Above this much held output the UART reports its transmitter busy.
pub const HIGH_WATER: usize = 64 << 10;
/// A peer that takes nothing for this long (strictly: does not complete
/// one write of up to a page) no longer holds the guest back.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often, at most, the event loop looks at (and reports) drops.
pub const DROP_REPORT_INTERVAL: Duration = crate::guest_log::INTERVAL;
/// At exit, how long to wait for a peer that takes nothing at all ...
const EXIT_IDLE_LIMIT: Duration = Duration::from_millis(500);
/// ... and for one that keeps taking output, in all.
const EXIT_LIMIT: Duration = Duration::from_secs(5);
/// Largest single write: a pipe takes a write of at most a page whole as
/// soon as it has a free page, so a slow reader still shows progress at
/// every write, and stalls are measured per write.
const WRITE_CHUNK: usize = 4096;

struct State {
    buffer: OutputBuffer,
    /// The console thread sleeps waiting for ready output.
    writer_waiting: bool,
    /// The VM is done: write out everything, then stop.
    closing: bool,
    /// The console thread has finished.
    writer_gone: bool,
    /// The peer refused output for good (closed pipe): discard.
    failed: bool,
    /// When the write under way began.
    writing_since: Option<Instant>,
    /// Bytes the peer has taken.
    written: u64,
    /// The peer took nothing for STALL_TIMEOUT and has not since.
    stalled: bool,
    /// The UART reported its transmitter busy; the guest is owed a
    /// transmitter-empty interrupt once there is room again.
    guest_told_busy: bool,
    /// `event` was signalled for room since the event loop looked.
    room_signalled: bool,
    /// Drops are being reported: the event loop looks again every
    /// DROP_REPORT_INTERVAL until a look finds no new ones.
    drop_report_armed: bool,
    dropped_reported: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Ready output for the console thread, or closing.
    work: Condvar,
    /// The console thread wrote something, or finished.
    progress: Condvar,
    /// Tells the event loop there is room again for a guest told busy, or
    /// that output began to be dropped.
    event: EventFd,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// What the UART's line status should say about the transmitter.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmitter {
    Ready,
    /// `first`: the guest had not been told since there was last room.
    Busy {
        first: bool,
    },
}

/// What the event loop should do for a guest that was told busy.
#[derive(Debug, PartialEq, Eq)]
pub enum TransmitCheck {
    /// Nothing owed.
    Idle,
    /// Look again after this long.
    Wait(Duration),
    /// There is room: raise the transmitter-empty interrupt.
    Resume,
    /// The peer stalled with this many bytes unread: raise the interrupt
    /// and let the guest write on (past the capacity, bytes drop).
    ResumeStalled { unread: usize },
}

/// The UART's writer: appends guest output, never blocks on the peer.
pub struct ConsoleOutput {
    shared: Arc<Shared>,
}

/// The console thread, for the final flush at exit.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the console thread writing to `out`.
pub fn console_output(out: Box<dyn Write + Send>) -> io::Result<(ConsoleOutput, ConsoleWriter)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buffer: OutputBuffer::new(CAPACITY),
            writer_waiting: false,
            closing: false,
            writer_gone: false,
            failed: false,
            writing_since: None,
            written: 0,
            stalled: false,
            guest_told_busy: false,
            room_signalled: false,
            drop_report_armed: false,
            dropped_reported: 0,
        }),
        work: Condvar::new(),
        progress: Condvar::new(),
        event: EventFd::new(EFD_NONBLOCK)?,
    });
    let for_thread = shared.clone();
    // The thread inherits the caller's signal mask: the stop signals stay
    // with the event loop's signalfd.
    let thread = std::thread::Builder::new()
        .name("kiln-console".into())
        .stack_size(256 << 10)
        .spawn(move || run_writer(&for_thread, out))?;
    Ok((
        ConsoleOutput {
            shared: shared.clone(),
        },
        ConsoleWriter {
            shared,
            thread: Some(thread),
        },
    ))
}

impl ConsoleOutput {
    /// Fires when a guest told busy may have room again, or when output
    /// began to be dropped.
    pub fn event_fd(&self) -> RawFd {
        self.shared.event.as_raw_fd()
    }

    /// Empties the event (after it fired).
    pub fn clear_event(&self) {
        // Already zero is fine: EAGAIN on a non-blocking eventfd.
        let _ = self.shared.event.read();
    }

    /// For the event loop: the total dropped so far if it grew since the
    /// last call, and whether to call again after DROP_REPORT_INTERVAL
    /// (until a call finds nothing new, after which the next drop fires
    /// the event again).
    pub fn take_drop_report(&self) -> (Option<u64>, bool) {
        let mut st = self.shared.state();
        if !st.drop_report_armed {
            return (None, false);
        }
        let dropped = st.buffer.dropped();
        if dropped == st.dropped_reported {
            st.drop_report_armed = false;
            return (None, false);
        }
        st.dropped_reported = dropped;
        (Some(dropped), true)
    }

    /// Bytes dropped for lack of room so far.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.shared.state().buffer.dropped()
    }

    /// Whether the guest may send more now. Busy above the high-water mark
    /// while the peer is making progress; the caller owes the guest an
    /// interrupt from then on (see [`Self::check_transmitter`]).
    pub fn transmitter(&self) -> Transmitter {
        let mut st = self.shared.state();
        if st.buffer.len() < HIGH_WATER || st.stalled || st.failed {
            return Transmitter::Ready;
        }
        let first = !st.guest_told_busy;
        st.guest_told_busy = true;
        Transmitter::Busy { first }
    }

    /// For a guest told busy: is there room now, has the peer stalled, or
    /// how long until it would count as stalled.
    pub fn check_transmitter(&self, now: Instant) -> TransmitCheck {
        let mut st = self.shared.state();
        st.room_signalled = false;
        if !st.guest_told_busy {
            return TransmitCheck::Idle;
        }
        if st.buffer.len() < HIGH_WATER || st.failed {
            st.guest_told_busy = false;
            return TransmitCheck::Resume;
        }
        let Some(since) = st.writing_since else {
            // Between two writes: the peer is taking output.
            return TransmitCheck::Wait(STALL_TIMEOUT);
        };
        let waited = now.saturating_duration_since(since);
        if waited < STALL_TIMEOUT {
            return TransmitCheck::Wait(STALL_TIMEOUT - waited);
        }
        st.stalled = true;
        st.guest_told_busy = false;
        TransmitCheck::ResumeStalled {
            unread: st.buffer.len(),
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.state();
        if st.failed {
            // Reported once by the console thread when the peer went away.
            return Ok(data.len());
        }
        let (ready, len, dropped) = (st.buffer.ready(), st.buffer.len(), st.buffer.dropped());
        let had_partial = len > ready;
        st.buffer.push(data);
        // Wake the thread for new whole lines, or to start the clock of a
        // new partial line; not for every byte.
        let news = st.buffer.ready() > ready || (!had_partial && st.buffer.len() > st.buffer.ready());
        let wake = news && st.writer_waiting;
        if wake {
            st.writer_waiting = false;
        }
        // The first drop wakes the event loop; later ones wait its look.
        let report = st.buffer.dropped() > dropped && !st.drop_report_armed;
        if report {
            st.drop_report_armed = true;
        }
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
        if report {
            // Only fails if the counter would overflow: it is non-zero then.
            let _ = self.shared.event.write(1);
        }
        Ok(data.len())
    }

    /// Deferred: the console thread decides when bytes go out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleWriter {
    /// Writes out what the guest left, waiting while the peer keeps
    /// taking it, but not on a peer that does not read: this returns
    /// [`EXIT_IDLE_LIMIT`] after the peer last took anything (at once if
    /// it has been stuck that long already), within [`EXIT_LIMIT`] in all.
    pub fn finish(mut self) {
        self.close_and_wait(EXIT_IDLE_LIMIT, EXIT_LIMIT);
    }

    /// Returns how many bytes were left unwritten.
    fn close_and_wait(&mut self, idle_limit: Duration, limit: Duration) -> usize {
        let start = Instant::now();
        let mut st = self.shared.state();
        st.closing = true;
        if st.writer_waiting {
            st.writer_waiting = false;
            self.shared.work.notify_one();
        }
        // A write under way since long ago: the peer took nothing since.
        let (mut written, mut last_progress) = (st.written, st.writing_since.unwrap_or(start));
        while !st.writer_gone {
            let now = Instant::now();
            if st.written != written {
                (written, last_progress) = (st.written, now);
            }
            let deadline = (last_progress + idle_limit).min(start + limit);
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .progress
                .wait_timeout(st, deadline - now)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
        let unwritten = st.buffer.len();
        let (gone, dropped) = (st.writer_gone, st.buffer.dropped());
        drop(st);
        if dropped > 0 {
            log::warn!(
                "{dropped} bytes of guest console output were dropped: kiln's output was not read fast enough"
            );
        }
        if gone {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        } else if unwritten > 0 {
            // The thread stays blocked on the peer; the process exits anyway.
            log::warn!(
                "{unwritten} bytes of guest console output were not written: nothing read kiln's output for {:?}",
                idle_limit
            );
        }
        unwritten
    }
}

impl Drop for ConsoleWriter {
    /// Without `finish` (setup failed): let the thread write out and end.
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.closing = true;
        if st.writer_waiting {
            st.writer_waiting = false;
            self.shared.work.notify_one();
        }
    }
}

/// The console thread: writes ready output until closing and empty, or
/// until the peer fails for good.
fn run_writer(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    while next_chunk(shared, &mut chunk) {
        let result = write_some(&mut *out, &chunk);
        if !record_write(shared, result) {
            break;
        }
    }
    shared.state().writer_gone = true;
    shared.progress.notify_all();
}

/// Waits for ready output and copies it into `chunk`; false when closing
/// with nothing left.
fn next_chunk(shared: &Shared, chunk: &mut Vec<u8>) -> bool {
    let mut st = shared.state();
    loop {
        let now = Instant::now();
        if st.closing {
            st.buffer.release_all();
        }
        let due = st.buffer.release_partial(now, PARTIAL_LINE_DELAY);
        if st.buffer.ready() > 0 {
            st.buffer.copy_ready(chunk, WRITE_CHUNK);
            st.writing_since = Some(now);
            return true;
        }
        if st.closing {
            return false;
        }
        st.writer_waiting = true;
        st = match due {
            Some(due) => shared
                .work
                .wait_timeout(st, due.saturating_duration_since(now))
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard),
            None => shared
                .work
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
        st.writer_waiting = false;
    }
}

/// One write of `chunk` (or the part the peer takes), then a flush.
/// Interrupted writes are retried; a description someone else made
/// non-blocking is waited on with a growing sleep. Ok(n) has n > 0.
fn write_some(out: &mut dyn Write, chunk: &[u8]) -> io::Result<usize> {
    let n = retry(|| out.write(chunk))?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    retry(|| out.flush())?;
    Ok(n)
}

fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut pause = Duration::from_millis(1);
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Books a write's outcome; false when the peer is gone for good.
fn record_write(shared: &Shared, result: io::Result<usize>) -> bool {
    let mut st = shared.state();
    st.writing_since = None;
    let ok = match &result {
        Ok(n) => {
            st.buffer.consume(*n);
            st.written += *n as u64;
            st.stalled = false;
            true
        }
        Err(_) => {
            st.failed = true;
            st.buffer.clear();
            false
        }
    };
    let room = st.guest_told_busy && !st.room_signalled && (st.buffer.len() < HIGH_WATER || st.failed);
    if room {
        st.room_signalled = true;
    }
    let closing = st.closing;
    drop(st);
    if room {
        // Only fails if the counter would overflow: it is non-zero then.
        let _ = shared.event.write(1);
    }
    if closing {
        shared.progress.notify_all();
    }
    if let Err(e) = result {
        log::warn!("guest console output stopped ({e}); later output is discarded");
    }
    ok
}

#[cfg(test)]
#[path = "console_output_tests.rs"]
pub(crate) mod tests;
