//! Tests of the console output and its writer, host peers to test it
//! with, and an event loop to run the writer in (shared with the UART's
//! tests).

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar};
use std::thread::JoinHandle;

use event_manager::{EventManager, SubscriberOps};

/// A peer that records what it takes and can be held shut, like a pipe
/// nobody reads: `try_write` refuses output while the gate is closed.
#[derive(Clone, Default)]
pub struct GatedPeer {
    inner: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    taken: Vec<u8>,
    writes: Vec<usize>,
}

impl GatedPeer {
    pub fn closed() -> Self {
        let peer = Self::default();
        peer.set_closed(true);
        peer
    }

    pub fn set_closed(&self, closed: bool) {
        lock(&self.inner.0).closed = closed;
        self.inner.1.notify_all();
    }

    pub fn taken(&self) -> Vec<u8> {
        lock(&self.inner.0).taken.clone()
    }

    /// The size of each write, in order.
    pub fn writes(&self) -> Vec<usize> {
        lock(&self.inner.0).writes.clone()
    }

    /// Waits until the peer holds `n` bytes; panics after 10 s.
    pub fn wait_for(&self, n: usize) {
        let start = Instant::now();
        while self.taken().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "peer has {} of {n} bytes",
                self.taken().len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl ConsoleSink for GatedPeer {
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut st = lock(&self.inner.0);
        if st.closed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        st.taken.extend_from_slice(data);
        st.writes.push(data.len());
        Ok(data.len())
    }

    fn writable_fd(&self) -> Option<RawFd> {
        None
    }

    fn wait_writable(&mut self, timeout: Duration) -> io::Result<()> {
        let (state, opened) = &*self.inner;
        let st = lock(state);
        if st.closed {
            let _ = opened.wait_timeout(st, timeout);
        }
        Ok(())
    }
}

/// The writer run by an event loop of its own, as the VMM thread runs it.
pub struct Pump {
    writer: Arc<Mutex<ConsoleWriter>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    pub fn start(writer: ConsoleWriter) -> Self {
        let writer = Arc::new(Mutex::new(writer));
        let stop = Arc::new(AtomicBool::new(false));
        let (sub, flag) = (writer.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
            em.add_subscriber(sub);
            while !flag.load(Ordering::Relaxed) {
                em.run_with_timeout(5).unwrap();
            }
        });
        Self {
            writer,
            stop,
            thread: Some(thread),
        }
    }

    /// The exit flush; the event loop keeps running after it.
    pub fn close_and_wait(&self, idle_limit: Duration, limit: Duration) -> usize {
        lock(&self.writer).close_and_wait(idle_limit, limit)
    }

    /// Stops the event loop, then the exit flush, as `run_vm` does.
    pub fn finish(mut self) {
        self.stop_loop();
        lock(&self.writer).finish();
    }

    fn stop_loop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop_loop();
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than
/// `limit`: a call that blocks on the peer fails instead of hanging.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("blocked on the peer")
}

/// Numbered lines of `len` bytes (newline included), `count` of them.
pub fn numbered_lines(count: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * len);
    for n in 0..count {
        let mut line = format!("{n:08}").into_bytes();
        line.resize(len - 1, b'a' + (n % 26) as u8);
        line.push(b'\n');
        out.extend_from_slice(&line);
    }
    out
}

fn output(peer: impl ConsoleSink + 'static) -> (ConsoleOutput, Pump) {
    let (out, writer) = console_output(Box::new(peer)).unwrap();
    (out, Pump::start(writer))
}

#[test]
fn lines_go_out_whole_and_a_prompt_after_the_partial_line_delay() {
    let peer = GatedPeer::default();
    let (mut out, writer) = output(peer.clone());
    // In two steps, so a slow scheduler cannot merge the line and the
    // prompt into one write after the delay.
    out.write_all(b"hello\n").unwrap();
    peer.wait_for(6);
    let start = Instant::now();
    out.write_all(b"# ").unwrap();
    peer.wait_for(8);
    assert!(start.elapsed() >= PARTIAL_LINE_DELAY);
    assert_eq!(peer.writes(), vec![6, 2], "the line, then the prompt");
    assert_eq!(peer.taken(), b"hello\n# ");
    writer.finish();
}

/// A peer that takes at most 5 bytes a write and now and then refuses
/// with EINTR or EAGAIN (a description someone made non-blocking).
struct Reluctant {
    calls: usize,
    taken: Arc<Mutex<Vec<u8>>>,
}

impl ConsoleSink for Reluctant {
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        match self.calls % 4 {
            1 => Err(io::ErrorKind::WouldBlock.into()),
            2 => Err(io::ErrorKind::Interrupted.into()),
            _ => {
                let n = data.len().min(5);
                lock(&self.taken).extend_from_slice(&data[..n]);
                Ok(n)
            }
        }
    }

    fn writable_fd(&self) -> Option<RawFd> {
        None
    }

    fn wait_writable(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn partial_writes_eintr_and_eagain_lose_nothing() {
    let taken = Arc::new(Mutex::new(Vec::new()));
    let (mut out, writer) = output(Reluctant {
        calls: 0,
        taken: taken.clone(),
    });
    let text = numbered_lines(40, 30);
    out.write_all(&text).unwrap();
    out.write_all(b"no newline").unwrap();
    assert_eq!(
        writer.close_and_wait(Duration::from_secs(5), Duration::from_secs(30)),
        0
    );
    let mut want = text;
    want.extend_from_slice(b"no newline");
    assert_eq!(*lock(&taken), want);
}

#[test]
fn a_peer_that_never_reads_blocks_nothing_and_excess_is_dropped_and_counted() {
    let peer = GatedPeer::closed();
    let (mut out, writer) = output(peer.clone());
    let text = numbered_lines(CAPACITY / 64 + 100, 64);
    let out = within(Duration::from_secs(30), move || {
        for line in text.chunks(64) {
            out.write_all(line).unwrap();
        }
        out
    });
    assert_eq!(out.dropped(), 100 * 64);
    assert_eq!(out.transmitter(), Transmitter::Busy { first: true });
    // Exit does not wait for a peer that takes nothing.
    let start = Instant::now();
    let unwritten = writer.close_and_wait(Duration::from_millis(50), Duration::from_secs(5));
    assert_eq!(unwritten, CAPACITY);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    // What was kept arrives once the peer reads, and in order.
    peer.set_closed(false);
    peer.wait_for(CAPACITY);
    assert_eq!(peer.taken(), numbered_lines(CAPACITY / 64, 64));
}

/// A reader that takes 4 KiB every 10 ms, and refuses output between.
struct Slow {
    taken: Arc<Mutex<Vec<u8>>>,
    next: Instant,
}

const SLOW_PERIOD: Duration = Duration::from_millis(10);

impl ConsoleSink for Slow {
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        if now < self.next {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.next = now + SLOW_PERIOD;
        let n = data.len().min(4096);
        lock(&self.taken).extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn writable_fd(&self) -> Option<RawFd> {
        None
    }

    fn wait_writable(&mut self, timeout: Duration) -> io::Result<()> {
        std::thread::sleep(self.next.saturating_duration_since(Instant::now()).min(timeout));
        Ok(())
    }
}

#[test]
fn exit_waits_for_a_slow_but_steady_reader() {
    let taken = Arc::new(Mutex::new(Vec::new()));
    let (mut out, writer) = output(Slow {
        taken: taken.clone(),
        next: Instant::now(),
    });
    let text = numbered_lines(1024, 64);
    out.write_all(&text).unwrap();
    // 64 KiB at 4 KiB per 10 ms: longer than the idle limit, never idle.
    assert_eq!(
        writer.close_and_wait(Duration::from_millis(100), Duration::from_secs(30)),
        0
    );
    assert_eq!(*lock(&taken), text);
}

struct Closed;

impl ConsoleSink for Closed {
    fn try_write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn writable_fd(&self) -> Option<RawFd> {
        None
    }

    fn wait_writable(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_closed_peer_makes_output_vanish_without_holding_the_guest() {
    let (mut out, writer) = output(Closed);
    out.write_all(b"first line\n").unwrap();
    wait_until(|| out.shared.state().failed);
    out.write_all(&vec![b'x'; 2 * CAPACITY]).unwrap();
    assert_eq!(out.transmitter(), Transmitter::Ready);
    assert_eq!(out.dropped(), 0, "discarded, not dropped for lack of room");
    assert_eq!(
        writer.close_and_wait(Duration::from_secs(5), Duration::from_secs(5)),
        0
    );
}

#[test]
fn back_pressure_holds_while_the_peer_reads_and_ends_when_it_stalls() {
    let peer = GatedPeer::closed();
    let (mut out, writer) = output(peer.clone());
    out.write_all(&numbered_lines(HIGH_WATER / 64 - 1, 64)).unwrap();
    assert_eq!(out.transmitter(), Transmitter::Ready);
    assert_eq!(out.check_transmitter(Instant::now()), TransmitCheck::Idle);
    out.write_all(&numbered_lines(1, 64)).unwrap();
    assert_eq!(out.transmitter(), Transmitter::Busy { first: true });
    assert_eq!(out.transmitter(), Transmitter::Busy { first: false });
    // The writer met a peer that refuses output.
    wait_until(|| out.shared.state().blocked_since.is_some());
    let now = Instant::now();
    assert!(matches!(out.check_transmitter(now), TransmitCheck::Wait(d) if d <= STALL_TIMEOUT));
    assert_eq!(
        out.check_transmitter(now + STALL_TIMEOUT),
        TransmitCheck::ResumeStalled { unread: HIGH_WATER }
    );
    assert_eq!(
        out.transmitter(),
        Transmitter::Ready,
        "a stalled peer holds nothing back"
    );
    // The peer reads again: once it has emptied the buffer it is no
    // longer stalled, and the next burst meets back-pressure again.
    peer.set_closed(false);
    wait_until(|| out.shared.state().buffer.is_empty());
    peer.set_closed(true);
    out.write_all(&numbered_lines(HIGH_WATER / 64, 64)).unwrap();
    assert_eq!(out.transmitter(), Transmitter::Busy { first: true });
    peer.set_closed(false);
    writer.finish();
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn drops_fire_the_event_once_and_are_reported_until_they_stop() {
    let peer = GatedPeer::closed();
    let (mut out, writer) = output(peer.clone());
    out.write_all(&numbered_lines(CAPACITY / 64, 64)).unwrap();
    assert_eq!(out.take_drop_report(), (None, false));
    assert!(out.shared.event.read().is_err(), "nothing dropped yet");
    out.write_all(b"dropped\n").unwrap();
    out.write_all(b"dropped too\n").unwrap();
    assert_eq!(
        out.shared.event.read().unwrap(),
        1,
        "one event for a run of drops"
    );
    assert_eq!(out.take_drop_report(), (Some(20), true));
    out.write_all(b"more\n").unwrap();
    assert!(
        out.shared.event.read().is_err(),
        "the event loop looks again anyway"
    );
    assert_eq!(out.take_drop_report(), (Some(25), true));
    assert_eq!(
        out.take_drop_report(),
        (None, false),
        "no new drops: stop looking"
    );
    out.write_all(b"x").unwrap();
    assert!(out.shared.event.read().is_ok(), "the next drop fires again");
    peer.set_closed(false);
    writer.finish();
}

#[test]
fn the_room_event_fires_when_a_guest_told_busy_has_room() {
    let peer = GatedPeer::closed();
    let (mut out, writer) = output(peer.clone());
    out.write_all(&numbered_lines(HIGH_WATER / 64, 64)).unwrap();
    assert_eq!(out.transmitter(), Transmitter::Busy { first: true });
    assert!(out.shared.event.read().is_err(), "no room yet");
    peer.set_closed(false);
    peer.wait_for(HIGH_WATER);
    wait_until(|| out.shared.event.read().is_ok());
    assert_eq!(out.check_transmitter(Instant::now()), TransmitCheck::Resume);
    assert_eq!(out.check_transmitter(Instant::now()), TransmitCheck::Idle);
    writer.finish();
}

/// Bytes waiting in the pipe `fd`.
fn queued(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n as usize
}

/// A one-page pipe nobody reads, holding a short line, refuses the next
/// page-sized chunk; the writer still fills it to within a line, as
/// blocking line-by-line writes would.
#[test]
fn a_pipe_nobody_reads_fills_to_within_a_line() {
    let (reader, pipe) = std::io::pipe().unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    assert_eq!(
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) },
        4096
    );
    let sink = super::super::host_output::HostOutput::new(std::os::fd::OwnedFd::from(pipe)).unwrap();
    let (mut out, writer) = output(sink);
    let line = numbered_lines(1, 42);
    out.write_all(&line).unwrap();
    wait_until(|| queued(reader.as_raw_fd()) == 42);
    out.write_all(&numbered_lines(200, 42)).unwrap();
    wait_until(|| queued(reader.as_raw_fd()) > 4096 - 42);
    drop(writer);
}
