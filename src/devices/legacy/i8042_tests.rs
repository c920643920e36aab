use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

/// Counts the keyboard interrupts raised.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

impl Trigger for Counter {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn device() -> (I8042Device, ExitNotifier, Counter) {
    let exit = ExitNotifier::new().unwrap();
    let irq = Counter::default();
    (I8042Device::new(exit.clone(), Box::new(irq.clone())), exit, irq)
}

fn read(dev: &mut I8042Device, offset: u64) -> u8 {
    let mut b = [0u8];
    dev.read(offset, &mut b);
    b[0]
}

fn output_full(dev: &mut I8042Device) -> bool {
    read(dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0
}

/// Reads port 0x60 for as long as the status says there is data.
fn drain(dev: &mut I8042Device) -> Vec<u8> {
    let mut bytes = Vec::new();
    while output_full(dev) {
        bytes.push(read(dev, DATA_OFFSET));
        assert!(bytes.len() <= OUTPUT_CAPACITY, "the queue never empties");
    }
    bytes
}

fn write_ctr(dev: &mut I8042Device, ctr: u8) {
    dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
    dev.write(DATA_OFFSET, &[ctr]);
}

#[test]
fn reset_pulse_requests_a_reset() {
    let (mut dev, exit, _) = device();
    dev.write(COMMAND_OFFSET, &[0xfe]);
    assert_eq!(exit.reason(), Some(ExitReason::Reset));
}

#[test]
fn answers_the_linux_probe() {
    let (mut dev, exit, irq) = device();
    assert!(!output_full(&mut dev));
    dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
    assert!(output_full(&mut dev));
    assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
    write_ctr(&mut dev, 0x11);
    dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
    assert_eq!(read(&mut dev, DATA_OFFSET), 0x11);
    dev.write(COMMAND_OFFSET, &[CMD_KBD_TEST]);
    assert_eq!(drain(&mut dev), [0]);
    assert_eq!(exit.reason(), None);
    // The guest polls for controller answers: no interrupt.
    assert_eq!(irq.take(), 0);
    dev.write(7, &[]);
    dev.read(9, &mut []);
    // Keylock off, system flag on.
    assert_eq!(
        read(&mut dev, COMMAND_OFFSET),
        STATUS_SYSTEM_FLAG | STATUS_UNLOCKED
    );
}

#[test]
fn ctrl_alt_del_is_set_1_while_the_controller_translates() {
    let (mut dev, exit, irq) = device();
    assert_ne!(DEFAULT_CTR & CTR_TRANSLATE, 0);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(irq.take(), 1);
    assert!(output_full(&mut dev));
    assert_eq!(read(&mut dev, DATA_OFFSET), 0x1d);
    // Each byte left gets its own interrupt, as Linux reads one per IRQ.
    assert_eq!(irq.take(), 1);
    assert_eq!(drain(&mut dev), [0x38, 0xe0, 0x53]);
    assert_eq!(irq.take(), 2);
    assert_eq!(read(&mut dev, DATA_OFFSET), 0, "an empty queue reads 0");
    assert_eq!(exit.reason(), None);
}

#[test]
fn ctrl_alt_del_is_set_2_without_translation() {
    // i8042.direct, or a guest that turned translation off.
    let (mut dev, _, _) = device();
    write_ctr(&mut dev, CTR_KBD_INT | 0x04);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(drain(&mut dev), [0x14, 0x11, 0xe0, 0x71]);
}

#[test]
fn no_interrupt_while_the_command_byte_disables_it() {
    let (mut dev, _, irq) = device();
    write_ctr(&mut dev, DEFAULT_CTR & !CTR_KBD_INT);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(drain(&mut dev), CTRL_ALT_DEL_SET1);
    dev.write(DATA_OFFSET, &[KBD_ENABLE]);
    assert_eq!(drain(&mut dev), [KBD_ACK]);
    assert_eq!(irq.take(), 0);
    // Turned back on, the next press interrupts again.
    write_ctr(&mut dev, DEFAULT_CTR);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(irq.take(), 1);
}

#[test]
fn a_full_buffer_refuses_the_whole_sequence() {
    let (mut dev, _, _) = device();
    for _ in 0..OUTPUT_CAPACITY / CTRL_ALT_DEL_SET1.len() {
        dev.trigger_ctrl_alt_del().unwrap();
    }
    let err = dev.trigger_ctrl_alt_del().unwrap_err();
    assert!(matches!(err, I8042Error::BufferFull));
    let text = err.to_string();
    assert!(!text.contains('\n') && text.contains("full"), "{text}");
    // Three bytes read: still one short of room, and nothing half-queued.
    for _ in 0..3 {
        read(&mut dev, DATA_OFFSET);
    }
    assert!(dev.trigger_ctrl_alt_del().is_err());
    read(&mut dev, DATA_OFFSET);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(drain(&mut dev).len(), OUTPUT_CAPACITY);
}

#[test]
fn a_failing_interrupt_line_is_reported_after_queueing() {
    struct Broken;
    impl Trigger for Broken {
        type E = io::Error;
        fn trigger(&self) -> io::Result<()> {
            Err(io::Error::other("eventfd overflow"))
        }
    }
    let mut dev = I8042Device::new(ExitNotifier::new().unwrap(), Box::new(Broken));
    let err = dev.trigger_ctrl_alt_del().unwrap_err().to_string();
    assert!(
        err.contains("keyboard interrupt") && err.contains("overflow"),
        "{err}"
    );
    // Bus accesses only log it.
    dev.write(DATA_OFFSET, &[KBD_GET_ID]);
    assert_eq!(drain(&mut dev), [KBD_ACK, 0xab, 0x41]);
}

/// What atkbd sends without `i8042.dumbkbd`: each command is ACKed and
/// interrupts, and the answers are what the guest reads next.
#[test]
fn answers_atkbd_commands() {
    let (mut dev, _, irq) = device();
    let mut kbd = |bytes: &[u8]| {
        let mut answers = Vec::new();
        for &b in bytes {
            dev.write(DATA_OFFSET, &[b]);
            answers.extend(drain(&mut dev));
        }
        answers
    };
    assert_eq!(kbd(&[KBD_RESET]), [KBD_ACK, KBD_SELF_TEST_OK]);
    assert_eq!(kbd(&[KBD_RESET_DISABLE]), [KBD_ACK]);
    // Translated, the ID's second byte is 0x41, as on a PC.
    assert_eq!(kbd(&[KBD_GET_ID]), [KBD_ACK, 0xab, 0x41]);
    assert_eq!(kbd(&[KBD_SET_LEDS, 0x07]), [KBD_ACK, KBD_ACK]);
    assert_eq!(kbd(&[KBD_SET_REPEAT, 0x00]), [KBD_ACK, KBD_ACK]);
    assert_eq!(kbd(&[KBD_SCANCODE_SET, 0]), [KBD_ACK, KBD_ACK, 2]);
    assert_eq!(kbd(&[KBD_SCANCODE_SET, 2]), [KBD_ACK, KBD_ACK]);
    assert_eq!(kbd(&[KBD_SCANCODE_SET, 3]), [KBD_ACK, KBD_RESEND]);
    assert_eq!(kbd(&[KBD_ENABLE]), [KBD_ACK]);
    assert_eq!(kbd(&[KBD_RESET_DEFAULT]), [KBD_ACK]);
    assert_eq!(kbd(&[KBD_ECHO]), [KBD_ECHO]);
    // Extra-keys enable (atkbd.extra=1) and set 3 commands are refused,
    // and the parameter that follows is a command of its own.
    assert_eq!(kbd(&[0xea, 0x71]), [KBD_RESEND, KBD_RESEND]);
    assert!(irq.take() > 0);
    write_ctr(&mut dev, CTR_KBD_INT | 0x04);
    dev.write(DATA_OFFSET, &[KBD_GET_ID]);
    assert_eq!(drain(&mut dev), [KBD_ACK, 0xab, 0x83]);
}

#[test]
fn a_command_answer_replaces_unread_keys() {
    let (mut dev, _, _) = device();
    dev.trigger_ctrl_alt_del().unwrap();
    dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
    assert_eq!(drain(&mut dev), [DEFAULT_CTR]);
    dev.trigger_ctrl_alt_del().unwrap();
    dev.write(DATA_OFFSET, &[KBD_SET_LEDS]);
    assert_eq!(drain(&mut dev), [KBD_ACK]);
}

#[test]
fn two_byte_controller_commands_take_their_parameter() {
    let (mut dev, exit, irq) = device();
    // Output port and aux writes: the parameter is not a keyboard command.
    for cmd in [CMD_WRITE_OUTPUT_PORT, CMD_AUX_LOOP, CMD_WRITE_AUX] {
        dev.write(COMMAND_OFFSET, &[cmd]);
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert!(!output_full(&mut dev), "{cmd:#x}");
    }
    dev.write(COMMAND_OFFSET, &[CMD_KBD_LOOP]);
    dev.write(DATA_OFFSET, &[0x5a]);
    assert_eq!(irq.take(), 1);
    assert_eq!(drain(&mut dev), [0x5a]);
    // A command in place of the parameter cancels it.
    dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
    dev.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
    dev.write(DATA_OFFSET, &[KBD_ECHO]);
    assert_eq!(drain(&mut dev), [KBD_ECHO]);
    dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
    assert_eq!(drain(&mut dev), [DEFAULT_CTR | CTR_KBD_DISABLED]);
    dev.write(COMMAND_OFFSET, &[CMD_KBD_ENABLE]);
    dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
    assert_eq!(drain(&mut dev), [DEFAULT_CTR]);
    assert_eq!(exit.reason(), None);
}

/// Any byte to any port in any order, any access size: no panic, and the
/// queue stays bounded.
#[test]
fn guest_garbage_never_panics_or_grows_the_queue() {
    let (mut dev, exit, _) = device();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..200_000 {
        // xorshift: deterministic, covers every byte value.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let value = (x >> 8) as u8;
        let offset = u64::from(x % 6);
        match x % 4 {
            0 => {
                let mut buf = vec![0u8; (x >> 24) as usize % 4];
                dev.read(offset, &mut buf);
            }
            // No reset pulse: the test wants the device to keep going.
            _ if value & 0xf0 == 0xf0 && offset == COMMAND_OFFSET => {}
            1 => {
                let _ = dev.trigger_ctrl_alt_del();
            }
            _ => dev.write(offset, &[value, value]),
        }
        assert!(dev.output.len() <= OUTPUT_CAPACITY);
    }
    assert_eq!(exit.reason(), None);
}
