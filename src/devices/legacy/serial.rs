//! The COM1 16550 UART: vm-superio's model on the port bus, its interrupt on
//! an irqfd, and host input fed from a file descriptor by the event loop.
//! Output goes to a [`ConsoleOutput`]; while that holds more than the peer
//! has read, the line status reports the transmitter busy, and the guest
//! gets a transmitter-empty interrupt once there is room again.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::console_output::{
    ConsoleOutput, TransmitCheck, Transmitter, CAPACITY, DROP_REPORT_INTERVAL, STALL_TIMEOUT,
};
use crate::devices::bus::BusDevice;
use crate::sync::lock;

/// An interrupt line backed by an event fd (a KVM irqfd).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the input side when the guest has drained the receive FIFO, so
/// host input waiting for room can be delivered.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed write means the counter is already non-zero: still woken.
        let _ = self.0.write(1);
    }
}

type Uart = Serial<EventFdTrigger, InputDrained, ConsoleOutput>;

const IER_OFFSET: u8 = 1;
const LCR_OFFSET: u8 = 3;
const LSR_OFFSET: u8 = 5;
const LCR_DLAB: u8 = 0x80;
/// Transmitter holding register empty, and transmitter idle.
const LSR_THRE_TEMT: u8 = 0x60;
/// How soon to retry an interrupt owed while the guest had the divisor
/// latch open (which hides IER).
const DLAB_RETRY: Duration = Duration::from_millis(1);

/// What a look at the transmitter found, for the event loop to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TransmitReport {
    /// The peer was just found stalled with this many bytes unread.
    pub stalled_with: Option<usize>,
    /// Output dropped so far, when it grew since the last report.
    pub dropped: Option<u64>,
}

/// The UART as seen from the port bus.
pub struct SerialDevice {
    uart: Uart,
    /// Fires when the transmitter needs another look: a peer that may
    /// have stalled, an interrupt still owed, the next drop report.
    transmit_timer: TimerFd,
    /// A transmitter-empty interrupt is owed but could not be raised yet.
    thre_owed: bool,
}

impl SerialDevice {
    /// `irq` is signalled on interrupts; guest output goes to `out`.
    /// Returns the device and the fd that fires when input room frees up.
    pub fn new(irq: EventFd, out: ConsoleOutput) -> io::Result<(Self, EventFd)> {
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let uart = Serial::with_events(EventFdTrigger(irq), InputDrained(drained.try_clone()?), out);
        let dev = Self {
            uart,
            transmit_timer: TimerFd::new()?,
            thre_owed: false,
        };
        Ok((dev, drained))
    }

    /// The descriptors that fire when the transmitter needs a look: the
    /// console output's event (room for a guest told busy, output being
    /// dropped) and the timer (a stall, the next drop report).
    pub fn transmit_fds(&self) -> [RawFd; 2] {
        [self.uart.writer().event_fd(), self.transmit_timer.as_raw_fd()]
    }

    /// Answers a transmit event: raises the transmitter-empty interrupt a
    /// guest told busy is owed once there is room, or the peer stalled.
    /// Returns what the event loop should report.
    pub fn poll_transmitter(&mut self) -> TransmitReport {
        self.poll_transmitter_at(Instant::now())
    }

    fn poll_transmitter_at(&mut self, now: Instant) -> TransmitReport {
        let out = self.uart.writer();
        out.clear_event();
        let mut report = TransmitReport::default();
        let mut look_again = None;
        match out.check_transmitter(now) {
            TransmitCheck::Idle => {}
            TransmitCheck::Wait(after) => look_again = Some(after),
            TransmitCheck::Resume => self.thre_owed = true,
            TransmitCheck::ResumeStalled { unread } => {
                self.thre_owed = true;
                report.stalled_with = Some(unread);
            }
        }
        let (dropped, again) = out.take_drop_report();
        report.dropped = dropped;
        if again {
            look_again = Some(look_again.map_or(DROP_REPORT_INTERVAL, |t| t.min(DROP_REPORT_INTERVAL)));
        }
        if self.thre_owed {
            if self.raise_thr_empty() {
                self.thre_owed = false;
            } else {
                look_again = Some(DLAB_RETRY);
            }
        }
        // Disarming also clears the expiry count epoll reports.
        match look_again {
            Some(after) => self.arm_transmit_timer(after),
            None => {
                let _ = self.transmit_timer.clear();
            }
        }
        report
    }

    fn arm_transmit_timer(&mut self, after: Duration) {
        if let Err(e) = self.transmit_timer.reset(after, None) {
            warn_guest!("serial: cannot arm the transmit timer: {e}");
        }
    }

    /// Raises a transmitter-empty interrupt if the guest enabled it: like
    /// a 16550, vm-superio asserts an enabled, pending THRE interrupt when
    /// IER is written, so IER is written back unchanged. False while the
    /// divisor latch is open, when offset 1 is not IER.
    fn raise_thr_empty(&mut self) -> bool {
        if self.uart.read(LCR_OFFSET) & LCR_DLAB != 0 {
            return false;
        }
        let ier = self.uart.read(IER_OFFSET);
        if let Err(e) = self.uart.write(IER_OFFSET, ier) {
            warn_guest!("serial: cannot raise the transmit interrupt: {e}");
        }
        true
    }

    /// The line status, with the transmitter busy while the console output
    /// holds more than the peer has read.
    fn line_status(&mut self) -> u8 {
        let lsr = self.uart.read(LSR_OFFSET);
        match self.uart.writer().transmitter() {
            Transmitter::Ready => lsr,
            Transmitter::Busy { first } => {
                // Owed an interrupt from now on; the console output's event
                // or this timer (for a peer that stalls) pays it. A retry
                // already due sooner looks at the stall too.
                if first && !self.thre_owed {
                    self.arm_transmit_timer(STALL_TIMEOUT);
                }
                lsr & !LSR_THRE_TEMT
            }
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: could not deliver input to the guest: {e}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = if off == LSR_OFFSET {
                self.line_status()
            } else {
                self.uart.read(off)
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, value) {
                warn_guest!("serial: guest output failed: {e}");
            }
        }
    }
}

/// Something the guest console can read host input from.
pub trait ConsoleInput: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ConsoleInput for T {}

/// The UART's event-loop side: pays the transmit interrupts a guest told
/// busy is owed, and reads host input (normally stdin) into the UART,
/// holding back what does not fit until the guest drains the FIFO.
pub struct SerialHandler {
    serial: Arc<Mutex<SerialDevice>>,
    transmit_fds: [RawFd; 2],
    input: Option<Box<dyn ConsoleInput>>,
    drained: EventFd,
    pending: VecDeque<u8>,
    input_open: bool,
    watching_input: bool,
}

impl SerialHandler {
    /// `input` of None means the guest gets no host input.
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        input: Option<Box<dyn ConsoleInput>>,
        drained: EventFd,
    ) -> Self {
        let transmit_fds = lock(&serial).transmit_fds();
        let input_open = input.is_some();
        Self {
            serial,
            transmit_fds,
            input,
            drained,
            pending: VecDeque::new(),
            input_open,
            watching_input: false,
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut dev = lock(&self.serial);
        let (front, _) = self.pending.as_slices();
        let sent = dev.enqueue_input(front);
        drop(dev);
        self.pending.drain(..sent);
    }

    fn read_input(&mut self) {
        let mut buf = [0u8; 64];
        let Some(input) = self.input.as_mut() else { return };
        match input.read(&mut buf) {
            // End of input: stop watching, or epoll would report it forever.
            Ok(0) => self.input_open = false,
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("serial: stopped reading host input: {e}");
                self.input_open = false;
            }
        }
    }

    /// Watch the input only while there is room for it: holding back is
    /// how a slow guest applies back-pressure without losing bytes.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.input_open && self.pending.is_empty();
        if want == self.watching_input {
            return;
        }
        let Some(fd) = self.input_fd() else { return };
        let result = if want {
            ops.add(Events::new_raw(fd, EventSet::IN))
        } else {
            ops.remove(Events::new_raw(fd, EventSet::IN))
        };
        match result {
            Ok(()) => self.watching_input = want,
            Err(e) => {
                log::debug!("serial: input fd {fd} not watchable: {e}");
                self.input_open = false;
            }
        }
    }

    fn input_fd(&self) -> Option<RawFd> {
        self.input.as_ref().map(|i| i.as_raw_fd())
    }
}

impl MutEventSubscriber for SerialHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.transmit_fds.contains(&events.fd()) {
            // Logged outside the lock: stderr may be slow too.
            let report = lock(&self.serial).poll_transmitter();
            if let Some(unread) = report.stalled_with {
                warn_guest!(
                    "guest console: kiln's output has not been read for {STALL_TIMEOUT:?} ({unread} bytes \
                     waiting); the guest writes on, and output past {} KiB is dropped until it is read",
                    CAPACITY >> 10
                );
            }
            if let Some(dropped) = report.dropped {
                warn_guest!(
                    "guest console: {dropped} bytes of output dropped so far: kiln's output is not read fast enough"
                );
            }
            return;
        }
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
        } else if Some(events.fd()) == self.input_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.read_input();
            } else {
                // HUP or ERR without data: the input is gone.
                self.input_open = false;
            }
        }
        self.flush_pending();
        self.update_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in self.transmit_fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("serial: cannot watch transmit event {fd}: {e}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial: cannot watch the input-drained event: {e}");
        }
        self.update_interest(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::devices::legacy::console_output::tests::{numbered_lines, within, GatedPeer, Pump};
    use crate::devices::legacy::console_output::{
        console_output, ConsoleSink, CAPACITY, HIGH_WATER, STALL_TIMEOUT,
    };
    use crate::devices::legacy::host_output::HostOutput;

    const IIR_OFFSET: u64 = 2;
    const IER_THRE: u8 = 0x02;
    const IIR_THRE: u8 = 0x02;

    fn device_with(peer: impl ConsoleSink + 'static) -> (SerialDevice, EventFd, EventFd, Pump) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let (out, writer) = console_output(Box::new(peer)).unwrap();
        let (dev, drained) = SerialDevice::new(irq.try_clone().unwrap(), out).unwrap();
        (dev, irq, drained, Pump::start(writer))
    }

    fn device() -> (SerialDevice, EventFd, EventFd, GatedPeer, Pump) {
        let peer = GatedPeer::default();
        let (dev, irq, drained, writer) = device_with(peer.clone());
        (dev, irq, drained, peer, writer)
    }

    fn reg(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    fn thr_empty(dev: &mut SerialDevice) -> bool {
        reg(dev, u64::from(LSR_OFFSET)) & LSR_THRE_TEMT == LSR_THRE_TEMT
    }

    /// Interrupts signalled since the last call.
    fn interrupts(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut dev, _irq, _d, out, _w) = device();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        out.wait_for(3);
        assert_eq!(out.taken(), b"hi\n");
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut dev, _irq, _d, _out, _w) = device();
        let mut empty: [u8; 0] = [];
        dev.read(0, &mut empty);
        dev.write(0, &[]);
        let mut four = [0xffu8; 4];
        dev.read(1000, &mut four);
        dev.write(1000, &[1, 2, 3, 4]);
        assert_eq!(&four[1..], &[0, 0, 0]);
    }

    #[test]
    fn input_is_held_back_when_the_fifo_is_full() {
        let (dev, _irq, _drained, _out, _w) = device();
        let dev = Arc::new(Mutex::new(dev));
        let (reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut input = SerialHandler::new(dev.clone(), Some(Box::new(reader)), drained);
        let big = vec![b'x'; 200];
        writer.write_all(&big).unwrap();
        for _ in 0..4 {
            input.read_input();
            input.flush_pending();
        }
        let capacity = 64; // vm-superio's FIFO size
        assert_eq!(input.pending.len(), 200 - capacity);
        // The guest reads every byte: the FIFO empties and the rest flows.
        let mut d = dev.lock().unwrap();
        let mut b = [0u8];
        for _ in 0..capacity {
            d.read(0, &mut b);
            assert_eq!(b[0], b'x');
        }
        drop(d);
        input.flush_pending();
        assert_eq!(input.pending.len(), 200 - 2 * capacity);
    }

    /// Writes `bytes` to THR as `rep outsb` would, failing if that blocks.
    fn send(dev: SerialDevice, bytes: Vec<u8>) -> SerialDevice {
        within(Duration::from_secs(60), move || {
            let mut dev = dev;
            for b in bytes {
                dev.write(0, &[b]);
            }
            dev
        })
    }

    #[test]
    fn the_transmitter_is_busy_above_high_water_and_room_raises_thre() {
        let peer = GatedPeer::closed();
        let (mut dev, irq, _d, writer) = device_with(peer.clone());
        dev.write(u64::from(IER_OFFSET), &[IER_THRE]);
        let _ = reg(&mut dev, IIR_OFFSET);
        interrupts(&irq);
        let mut dev = send(dev, numbered_lines(HIGH_WATER / 64, 64));
        let _ = reg(&mut dev, IIR_OFFSET);
        interrupts(&irq);
        assert!(!thr_empty(&mut dev), "busy with the peer not reading");
        assert!(!thr_empty(&mut dev));
        assert!(dev.transmit_timer.is_armed().unwrap(), "stall timer armed");
        // Nothing to pay yet.
        assert_eq!(dev.poll_transmitter(), TransmitReport::default());
        assert_eq!(interrupts(&irq), 0);
        peer.set_closed(false);
        peer.wait_for(HIGH_WATER);
        // The room event tells the event loop, which raises THRE.
        let [event, _timer] = dev.transmit_fds();
        let mut pfd = libc::pollfd {
            fd: event,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1, "no room event");
        assert_eq!(dev.poll_transmitter(), TransmitReport::default());
        assert_eq!(interrupts(&irq), 1);
        assert_ne!(reg(&mut dev, IIR_OFFSET) & IIR_THRE, 0);
        assert!(thr_empty(&mut dev));
        drop(dev);
        writer.finish();
        assert_eq!(peer.taken(), numbered_lines(HIGH_WATER / 64, 64));
    }

    #[test]
    fn a_stalled_peer_frees_the_guest_and_output_past_capacity_drops() {
        let peer = GatedPeer::closed();
        let (mut dev, irq, _d, writer) = device_with(peer.clone());
        dev.write(u64::from(IER_OFFSET), &[IER_THRE]);
        let kept = numbered_lines(CAPACITY / 64, 64);
        let mut dev = send(dev, kept[..HIGH_WATER].to_vec());
        assert!(!thr_empty(&mut dev));
        let _ = reg(&mut dev, IIR_OFFSET);
        interrupts(&irq);
        let report = dev.poll_transmitter_at(Instant::now() + STALL_TIMEOUT);
        assert_eq!(report.stalled_with, Some(HIGH_WATER));
        assert_eq!(interrupts(&irq), 1, "THRE raised for the guest to go on");
        assert!(thr_empty(&mut dev));
        // The guest writes on: the rest of the buffer fills, then drops.
        let mut rest = kept[HIGH_WATER..].to_vec();
        rest.extend_from_slice(b"dropped\n");
        let mut dev = send(dev, rest);
        assert!(thr_empty(&mut dev));
        // The drops are reported, and looked at again a second later.
        assert_eq!(dev.poll_transmitter().dropped, Some(8));
        assert!(dev.transmit_timer.is_armed().unwrap());
        assert_eq!(dev.poll_transmitter(), TransmitReport::default());
        assert!(!dev.transmit_timer.is_armed().unwrap(), "nothing left to look at");
        peer.set_closed(false);
        drop(dev);
        writer.finish();
        assert_eq!(peer.taken(), kept, "all that fitted, nothing after");
    }

    #[test]
    fn an_interrupt_owed_while_the_divisor_latch_is_open_is_raised_later() {
        let peer = GatedPeer::closed();
        let (mut dev, irq, _d, writer) = device_with(peer.clone());
        dev.write(u64::from(IER_OFFSET), &[IER_THRE]);
        let mut dev = send(dev, numbered_lines(HIGH_WATER / 64, 64));
        assert!(!thr_empty(&mut dev));
        let _ = reg(&mut dev, IIR_OFFSET);
        interrupts(&irq);
        dev.write(u64::from(LCR_OFFSET), &[LCR_DLAB | 0x03]);
        let later = Instant::now() + STALL_TIMEOUT;
        assert!(dev.poll_transmitter_at(later).stalled_with.is_some());
        assert_eq!(interrupts(&irq), 0, "IER is hidden behind the latch");
        assert!(dev.thre_owed && dev.transmit_timer.is_armed().unwrap());
        dev.write(u64::from(LCR_OFFSET), &[0x03]);
        assert_eq!(dev.poll_transmitter_at(later), TransmitReport::default());
        assert_eq!(interrupts(&irq), 1);
        assert_eq!(reg(&mut dev, u64::from(IER_OFFSET)), IER_THRE, "IER unchanged");
        peer.set_closed(false);
        writer.finish();
    }

    /// 4 MiB through the UART to a pipe read 16 KiB every 5 ms, by a driver
    /// that waits while the transmitter is busy: every byte arrives. The
    /// reader starts only once the driver was held back (or after 10 s), so
    /// the hold-back does not depend on which side a loaded host runs
    /// faster.
    #[test]
    fn a_driver_that_honours_busy_loses_nothing_to_a_slow_reader() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (mut reader, pipe) = std::io::pipe().unwrap();
        let pipe = HostOutput::new(std::os::fd::OwnedFd::from(pipe)).unwrap();
        let (dev, _irq, _d, writer) = device_with(pipe);
        let want = numbered_lines(1024, 4096);
        let held = Arc::new(AtomicBool::new(false));
        let held_seen = held.clone();
        let read = std::thread::spawn(move || {
            let start = Instant::now();
            while !held_seen.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let lines = want.clone();
        let busy = within(Duration::from_secs(120), move || {
            let mut dev = dev;
            let mut busy = 0u32;
            for line in lines.chunks(4096) {
                while !thr_empty(&mut dev) {
                    busy += 1;
                    held.store(true, Ordering::Release);
                    std::thread::sleep(Duration::from_micros(200));
                }
                for &b in line {
                    dev.write(0, &[b]);
                }
            }
            busy
        });
        writer.finish();
        let got = read.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "output corrupted");
        assert!(busy > 0, "the reader never held the driver back");
    }
}
