//! Guest console output: buffered in whole lines and written to the host
//! by the event loop, never blocking, so that nothing the host peer does
//! can stall a vCPU or the event loop.
//!
//! The UART hands each guest byte to [`ConsoleOutput`], which only appends
//! it to a bounded [`OutputBuffer`] and, when whole lines (or the start of
//! a partial line) arrive while the writer is idle, signals an eventfd.
//! [`ConsoleWriter`], an event-loop subscriber, writes whole lines (a
//! partial line such as a shell prompt after [`PARTIAL_LINE_DELAY`], by a
//! timerfd) through a [`ConsoleSink`] that never blocks (see
//! `host_output`). When the peer takes no more, the writer watches the
//! sink's descriptor for EPOLLOUT until it does, and only then.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::output_buffer::OutputBuffer;
use crate::sync::lock;

/// How long a partial line may wait for the rest of it.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(5);
/// Most guest output held for the peer; past it new bytes are dropped.
pub const CAPACITY: usize = 1 << 20;
/// Above this much held output the UART reports its transmitter busy.
pub const HIGH_WATER: usize = 64 << 10;
/// A peer that takes nothing for this long (strictly: refuses output and
/// takes none of it since) no longer holds the guest back.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often, at most, the event loop looks at (and reports) drops.
pub const DROP_REPORT_INTERVAL: Duration = crate::guest_log::INTERVAL;
/// At exit, how long to wait for a peer that takes nothing at all ...
const EXIT_IDLE_LIMIT: Duration = Duration::from_millis(500);
/// ... and for one that keeps taking output, in all.
const EXIT_LIMIT: Duration = Duration::from_secs(5);
/// Largest single write: a page, which a pipe with a free slot takes
/// whole, ending at a line boundary where one falls inside.
const WRITE_CHUNK: usize = 4096;
/// Most bytes one event-loop pass writes before letting other events in
/// (a fast sink must not let a chatty guest hog the event loop).
const PASS_BUDGET: usize = 64 << 10;
/// How soon to retry a sink that refused output but has no descriptor
/// to watch.
const UNWATCHED_RETRY: Duration = Duration::from_millis(10);

/// Where guest console output goes: written without ever blocking.
pub trait ConsoleSink: Send {
    /// Writes some of `data` now; `WouldBlock` when the peer takes
    /// nothing now. Must not block.
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize>;
    /// A descriptor that reports EPOLLOUT once `try_write` may progress;
    /// None: the writer retries on a timer.
    fn writable_fd(&self) -> Option<RawFd>;
    /// Waits at most `timeout` for the peer to take output (exit flush).
    fn wait_writable(&mut self, timeout: Duration) -> io::Result<()>;
}

struct State {
    buffer: OutputBuffer,
    /// The writer has nothing ready to write and waits for news.
    writer_waiting: bool,
    /// The peer refused output for good (closed pipe): discard.
    failed: bool,
    /// When the peer began refusing output it has not taken since.
    blocked_since: Option<Instant>,
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
    /// Tells the serial handler there is room again for a guest told busy,
    /// or that output began to be dropped.
    event: EventFd,
    /// Tells the writer there is output ready, or a partial line to time.
    wake: EventFd,
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

/// The event-loop subscriber that writes guest output to the sink, and
/// the final flush at exit.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    sink: Box<dyn ConsoleSink>,
    /// Fires when a partial line is due, or to retry an unwatched sink.
    timer: TimerFd,
    chunk: Vec<u8>,
    /// The sink's descriptor while it is watched for EPOLLOUT.
    watching: Option<RawFd>,
    /// epoll refused the sink's descriptor: retry on the timer instead.
    unwatchable: bool,
    /// The VM is done: partial lines go out at once.
    closing: bool,
}

/// How a writing pass ended.
#[derive(Debug, PartialEq, Eq)]
enum PassEnd {
    /// Nothing ready; a partial line waits until then, if any.
    Idle(Option<Instant>),
    /// The peer takes nothing now.
    Blocked,
    /// The pass wrote its budget; more is ready.
    Budget,
    /// The peer is gone for good.
    Failed,
}

/// The UART's side and the event loop's side of the console output.
pub fn console_output(sink: Box<dyn ConsoleSink>) -> io::Result<(ConsoleOutput, ConsoleWriter)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buffer: OutputBuffer::new(CAPACITY),
            writer_waiting: true,
            failed: false,
            blocked_since: None,
            written: 0,
            stalled: false,
            guest_told_busy: false,
            room_signalled: false,
            drop_report_armed: false,
            dropped_reported: 0,
        }),
        event: EventFd::new(EFD_NONBLOCK)?,
        wake: EventFd::new(EFD_NONBLOCK)?,
    });
    let writer = ConsoleWriter {
        shared: shared.clone(),
        sink,
        timer: TimerFd::new()?,
        chunk: Vec::with_capacity(WRITE_CHUNK),
        watching: None,
        unwatchable: false,
        closing: false,
    };
    Ok((ConsoleOutput { shared }, writer))
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
        let Some(since) = st.blocked_since else {
            // The peer is taking output.
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
            // Reported once by the writer when the peer went away.
            return Ok(data.len());
        }
        let (ready, len, dropped) = (st.buffer.ready(), st.buffer.len(), st.buffer.dropped());
        let had_partial = len > ready;
        st.buffer.push(data);
        // Wake the writer for new whole lines, or to start the clock of a
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
        // Either write only fails if the counter would overflow: it is
        // non-zero then, and the event loop woken anyway.
        if wake {
            let _ = self.shared.wake.write(1);
        }
        if report {
            let _ = self.shared.event.write(1);
        }
        Ok(data.len())
    }

    /// Deferred: the writer decides when bytes go out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleWriter {
    /// Writes out what the guest left, waiting while the peer keeps
    /// taking it, but not on a peer that does not read: this returns
    /// [`EXIT_IDLE_LIMIT`] after the peer last took anything (at once if
    /// it has been refusing output that long already), within
    /// [`EXIT_LIMIT`] in all.
    pub fn finish(&mut self) {
        self.close_and_wait(EXIT_IDLE_LIMIT, EXIT_LIMIT);
    }

    /// Returns how many bytes were left unwritten.
    fn close_and_wait(&mut self, idle_limit: Duration, limit: Duration) -> usize {
        let start = Instant::now();
        self.closing = true;
        let (mut written, mut last_progress) = {
            let st = self.shared.state();
            (st.written, st.blocked_since.unwrap_or(start))
        };
        loop {
            let end = self.pass(usize::MAX);
            let now = Instant::now();
            let now_written = self.shared.state().written;
            if now_written != written {
                (written, last_progress) = (now_written, now);
            }
            if end != PassEnd::Blocked {
                break;
            }
            let deadline = (last_progress + idle_limit).min(start + limit);
            if now >= deadline {
                break;
            }
            if let Err(e) = self.sink.wait_writable(deadline - now) {
                log::debug!("console output: cannot wait for the peer: {e}");
                break;
            }
        }
        let st = self.shared.state();
        let (unwritten, dropped) = (st.buffer.len(), st.buffer.dropped());
        drop(st);
        if dropped > 0 {
            log::warn!(
                "{dropped} bytes of guest console output were dropped: kiln's output was not read fast enough"
            );
        }
        if unwritten > 0 {
            log::warn!(
                "{unwritten} bytes of guest console output were not written: nothing read kiln's output for {:?}",
                idle_limit
            );
        }
        unwritten
    }

    /// Writes ready output until there is none, the peer takes no more,
    /// or `budget` bytes went out.
    fn pass(&mut self, budget: usize) -> PassEnd {
        let mut done = 0usize;
        loop {
            let now = Instant::now();
            let mut st = self.shared.state();
            if st.failed {
                return PassEnd::Failed;
            }
            if self.closing {
                st.buffer.release_all();
            }
            let due = st.buffer.release_partial(now, PARTIAL_LINE_DELAY);
            if st.buffer.ready() == 0 {
                st.writer_waiting = true;
                return PassEnd::Idle(due);
            }
            if done >= budget {
                return PassEnd::Budget;
            }
            st.buffer.copy_ready(&mut self.chunk, WRITE_CHUNK);
            drop(st);
            let result = self.write_chunk();
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shared.state().blocked_since.get_or_insert(now);
                    return PassEnd::Blocked;
                }
                Ok(n) => {
                    self.record_written(n);
                    done += n;
                }
                Err(e) => {
                    self.record_failure(e);
                    return PassEnd::Failed;
                }
            }
        }
    }

    /// Writes `chunk`, or failing that its first line: a nearly full
    /// pipe refuses a page but still merges a short write into its last
    /// page, so it fills to within a line, as it would with blocking
    /// writes of each line.
    fn write_chunk(&mut self) -> io::Result<usize> {
        let first_line = self.chunk.iter().position(|&b| b == b'\n').map(|i| i + 1);
        match write_retrying(&mut *self.sink, &self.chunk) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match first_line {
                Some(n) if n < self.chunk.len() => write_retrying(&mut *self.sink, &self.chunk[..n]),
                _ => Err(e),
            },
            other => other,
        }
    }

    fn record_written(&self, n: usize) {
        let mut st = self.shared.state();
        st.buffer.consume(n);
        st.written += n as u64;
        st.blocked_since = None;
        st.stalled = false;
        let room = st.guest_told_busy && !st.room_signalled && st.buffer.len() < HIGH_WATER;
        st.room_signalled |= room;
        drop(st);
        if room {
            // Only fails if the counter would overflow: it is non-zero then.
            let _ = self.shared.event.write(1);
        }
    }

    fn record_failure(&self, e: io::Error) {
        let mut st = self.shared.state();
        st.failed = true;
        st.blocked_since = None;
        st.buffer.clear();
        let room = st.guest_told_busy && !st.room_signalled;
        st.room_signalled |= room;
        drop(st);
        if room {
            let _ = self.shared.event.write(1);
        }
        log::warn!("guest console output stopped ({e}); later output is discarded");
    }

    /// One pass from the event loop, then what to wait for: EPOLLOUT on
    /// the sink only while it refuses output, the timer for a partial
    /// line or an unwatched sink, the wake event for a budget spent.
    fn run_pass(&mut self, ops: &mut EventOps) {
        let end = self.pass(PASS_BUDGET);
        let now = Instant::now();
        let mut watch = false;
        let mut timer = None;
        match end {
            PassEnd::Idle(due) => timer = due.map(|d| d.saturating_duration_since(now)),
            PassEnd::Blocked => watch = true,
            PassEnd::Budget => {
                // Level-triggered: the loop serves other events first.
                let _ = self.shared.wake.write(1);
            }
            PassEnd::Failed => {}
        }
        if watch && !self.watch(ops) {
            timer = Some(UNWATCHED_RETRY);
        }
        if !watch {
            self.unwatch(ops);
        }
        // Re-arming or disarming also clears the expiry count epoll sees.
        let armed = match timer {
            // A zero duration would disarm the timer.
            Some(after) => self.timer.reset(after.max(Duration::from_micros(50)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = armed {
            log::warn!("console output: cannot set the timer: {e}");
        }
    }

    /// Watches the sink for EPOLLOUT; false if it cannot be watched.
    fn watch(&mut self, ops: &mut EventOps) -> bool {
        if self.watching.is_some() {
            return true;
        }
        let Some(fd) = self.sink.writable_fd().filter(|_| !self.unwatchable) else {
            return false;
        };
        match ops.add(Events::new_raw(fd, EventSet::OUT)) {
            Ok(()) => {
                self.watching = Some(fd);
                true
            }
            Err(e) => {
                log::debug!("console output: cannot watch fd {fd}, retrying on a timer: {e}");
                self.unwatchable = true;
                false
            }
        }
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.watching.take() {
            if let Err(e) = ops.remove(Events::new_raw(fd, EventSet::OUT)) {
                log::debug!("console output: cannot stop watching fd {fd}: {e}");
            }
        }
    }
}

/// One `try_write`, retried when interrupted; Ok(n) has n > 0.
fn write_retrying(sink: &mut dyn ConsoleSink, data: &[u8]) -> io::Result<usize> {
    loop {
        match sink.try_write(data) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            other => return other,
        }
    }
}

impl MutEventSubscriber for ConsoleWriter {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.shared.wake.as_raw_fd() {
            // Already zero is fine: EAGAIN on a non-blocking eventfd.
            let _ = self.shared.wake.read();
        }
        // The timer and the sink's EPOLLOUT (or ERR/HUP, which the write
        // reports) need nothing but a pass; the pass resets the timer.
        self.run_pass(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.shared.wake, EventSet::IN)) {
            log::error!("console output: cannot watch the wake event: {e}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("console output: cannot watch the timer: {e}");
        }
    }
}

#[cfg(test)]
#[path = "console_output_tests.rs"]
pub(crate) mod tests;
