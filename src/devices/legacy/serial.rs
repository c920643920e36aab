//! The COM1 16550 UART: vm-superio's model on the port bus, its interrupt on
//! an irqfd, and host input fed from a file descriptor by the event loop.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::console_output::ConsoleOutput;
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

/// The UART as seen from the port bus.
pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// `irq` is signalled on interrupts; guest output goes to `out`.
    /// Returns the device and the fd that fires when input room frees up.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> io::Result<(Self, EventFd)> {
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let out = ConsoleOutput::new(out)?;
        let uart = Serial::with_events(EventFdTrigger(irq), InputDrained(drained.try_clone()?), out);
        Ok((Self { uart }, drained))
    }

    /// The timer that fires when held-back output should be flushed.
    pub fn output_timer_fd(&self) -> RawFd {
        self.uart.writer().timer_fd()
    }

    /// Writes out any partial line still held back.
    pub fn flush_output(&mut self) {
        self.uart.writer_mut().flush_pending();
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
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, value) {
                log::debug!("serial: guest output failed: {e}");
            }
        }
    }
}

/// Something the guest console can read host input from.
pub trait ConsoleInput: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ConsoleInput for T {}

/// The UART's event-loop side: flushes held-back output when its timer
/// fires, and reads host input (normally stdin) into the UART, holding back
/// what does not fit until the guest drains the FIFO.
pub struct SerialHandler {
    serial: Arc<Mutex<SerialDevice>>,
    output_timer: RawFd,
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
        let output_timer = lock(&serial).output_timer_fd();
        let input_open = input.is_some();
        Self {
            serial,
            output_timer,
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
        if events.fd() == self.output_timer {
            lock(&self.serial).flush_output();
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
        if let Err(e) = ops.add(Events::new_raw(self.output_timer, EventSet::IN)) {
            log::warn!("serial: cannot watch the output timer: {e}");
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

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, EventFd, EventFd, SharedBuf) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let (dev, drained) = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone())).unwrap();
        (dev, irq, drained, out)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut dev, _irq, _d, out) = device();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut dev, _irq, _d, _out) = device();
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
        let (dev, _irq, _drained, _out) = device();
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
}
