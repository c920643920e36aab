//! The i8042 keyboard controller: `reboot=k` resets the VM through it, and
//! the host can press Ctrl+Alt+Del on its keyboard (Firecracker's
//! `SendCtrlAltDel`).
//!
//! vm-superio's model only knows the CPU-reset command; this adapter adds
//! the controller commands Linux's probe issues (self-test, interface test,
//! the command byte), so the probe completes at once instead of waiting out
//! its timeouts, and a keyboard behind it: an output queue the guest reads
//! at port 0x60, IRQ 1 when keyboard data is queued, and the answers
//! Linux's atkbd expects to its commands (with `i8042.dumbkbd` it sends
//! none). The keyboard has no keys of its own: only the host's
//! [`I8042Device::trigger_ctrl_alt_del`] types on it.

#[cfg(test)]
#[path = "i8042_tests.rs"]
mod tests;

use std::collections::VecDeque;
use std::io;

use vm_superio::{I8042Device as ResetOnlyI8042, Trigger};

use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Self-test passed / system flag: what firmware leaves behind.
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Keyboard not inhibited by the keylock (Linux warns when it is clear).
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_KBD_DISABLED: u8 = 0x10;
/// The controller translates the keyboard's set 2 codes to set 1; Linux
/// keeps whatever it finds (and so expects set 1 codes when it is on).
const CTR_TRANSLATE: u8 = 0x40;
/// Keyboard interrupt on, system flag, translation: what a PC BIOS leaves.
const DEFAULT_CTR: u8 = CTR_KBD_INT | 0x04 | CTR_TRANSLATE;

/// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// Puts the next data byte in the output queue as if the keyboard sent it.
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const SELF_TEST_OK: u8 = 0x55;

/// Keyboard commands (port 0x60), as atkbd sends them.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_REPEAT: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_RESET_DISABLE: u8 = 0xf5;
const KBD_RESET_DEFAULT: u8 = 0xf6;
const KBD_RESET: u8 = 0xff;
/// Keyboard answers.
const KBD_ACK: u8 = 0xfa;
/// "Say again": how a keyboard refuses a command it does not know.
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// An MF2 keyboard's ID; the controller translates its second byte.
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_ID_TRANSLATED: [u8; 2] = [0xab, 0x41];
/// The only scan code set this keyboard produces.
const KBD_SET: u8 = 2;

/// Ctrl, Alt, Delete pressed (no releases: the guest reboots), as the
/// keyboard sends them (set 2) and as a translating controller passes them
/// on (set 1).
const CTRL_ALT_DEL_SET2: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const CTRL_ALT_DEL_SET1: [u8; 4] = [0x1d, 0x38, 0xe0, 0x53];

/// Bytes the guest has not read yet. A real controller holds one; the
/// keyboard behind it a few more. Key presses beyond this are refused.
pub const OUTPUT_CAPACITY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    #[error("the i8042 keyboard buffer is full (the guest is not reading its keyboard); try again later")]
    BufferFull,
    #[error("cannot raise the i8042 keyboard interrupt: {0}")]
    Interrupt(io::Error),
}

/// The keyboard's interrupt line (IRQ 1), an irqfd in a running VM.
pub type KeyboardInterrupt = Box<dyn Trigger<E = io::Error> + Send>;

/// Signals a guest reset through the VM's exit notifier.
pub struct ResetTrigger(pub ExitNotifier);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.notify(ExitReason::Reset);
        Ok(())
    }
}

/// What the next byte written to port 0x60 is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    /// A keyboard command.
    Keyboard,
    /// The parameter of this controller command.
    Controller(u8),
    /// The parameter of this keyboard command.
    KeyboardParam(u8),
}

pub struct I8042Device {
    reset: ResetOnlyI8042<ResetTrigger>,
    kbd_interrupt: KeyboardInterrupt,
    ctr: u8,
    /// Bytes for port 0x60, oldest first; never more than OUTPUT_CAPACITY.
    output: VecDeque<u8>,
    next_data: DataTarget,
}

impl I8042Device {
    /// The window spans ports 0x60..=0x64.
    pub const WINDOW_LEN: u64 = 5;

    pub fn new(exit: ExitNotifier, kbd_interrupt: KeyboardInterrupt) -> Self {
        Self {
            reset: ResetOnlyI8042::new(ResetTrigger(exit)),
            kbd_interrupt,
            ctr: DEFAULT_CTR,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            next_data: DataTarget::Keyboard,
        }
    }

    /// Presses Ctrl+Alt+Del: queues the three key presses in the scan code
    /// set the guest reads (set 1 while the controller translates) and
    /// raises the keyboard interrupt if the guest enabled it. Refused,
    /// with nothing queued, when the whole sequence does not fit.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        let keys = if self.ctr & CTR_TRANSLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        if OUTPUT_CAPACITY - self.output.len() < keys.len() {
            return Err(I8042Error::BufferFull);
        }
        self.output.extend(keys);
        self.raise_keyboard_interrupt()
    }

    /// Pulses IRQ 1 if the command byte lets the keyboard interrupt. One
    /// pulse per byte: Linux reads one byte per interrupt.
    fn raise_keyboard_interrupt(&self) -> Result<(), I8042Error> {
        if self.ctr & CTR_KBD_INT == 0 {
            return Ok(());
        }
        self.kbd_interrupt.trigger().map_err(I8042Error::Interrupt)
    }

    /// Interrupt failures seen on a vCPU's exit have nobody to return to.
    fn raise_or_log(&self) {
        if let Err(e) = self.raise_keyboard_interrupt() {
            log::warn!("{e}");
        }
    }

    /// A controller answer: the guest polls for it and expects it next, so
    /// it replaces anything still queued (as Firecracker's model does).
    fn controller_answer(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back(byte);
    }

    /// A keyboard answer. A keyboard drops its unsent bytes when it gets a
    /// command, so the answer is what the guest reads next; it interrupts.
    fn keyboard_answer(&mut self, bytes: &[u8]) {
        self.output.clear();
        self.output.extend(bytes.iter().take(OUTPUT_CAPACITY));
        self.raise_or_log();
    }

    fn command(&mut self, cmd: u8) {
        // A command cancels a parameter the guest never sent.
        self.next_data = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR => self.controller_answer(self.ctr),
            CMD_SELF_TEST => self.controller_answer(SELF_TEST_OK),
            CMD_KBD_TEST => self.controller_answer(0),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            // Their parameters are swallowed: no aux device, and the
            // output port's lines (A20, reset) are not modelled.
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_KBD_LOOP | CMD_AUX_LOOP | CMD_WRITE_AUX => {
                self.next_data = DataTarget::Controller(cmd)
            }
            // Includes 0xfe, the CPU reset pulse.
            other => {
                let _ = self.reset.write(COMMAND_OFFSET as u8, other);
            }
        }
    }

    fn data(&mut self, value: u8) {
        match std::mem::replace(&mut self.next_data, DataTarget::Keyboard) {
            DataTarget::Controller(CMD_WRITE_CTR) => self.ctr = value,
            DataTarget::Controller(CMD_KBD_LOOP) => {
                if self.output.len() < OUTPUT_CAPACITY {
                    self.output.push_back(value);
                    self.raise_or_log();
                }
            }
            DataTarget::Controller(_) => {}
            DataTarget::Keyboard => self.keyboard_command(value),
            DataTarget::KeyboardParam(cmd) => self.keyboard_param(cmd, value),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_SET_LEDS | KBD_SET_REPEAT | KBD_SCANCODE_SET => {
                self.next_data = DataTarget::KeyboardParam(cmd);
                self.keyboard_answer(&[KBD_ACK]);
            }
            KBD_ECHO => self.keyboard_answer(&[KBD_ECHO]),
            KBD_GET_ID => {
                let [a, b] = if self.ctr & CTR_TRANSLATE != 0 {
                    KBD_ID_TRANSLATED
                } else {
                    KBD_ID
                };
                self.keyboard_answer(&[KBD_ACK, a, b]);
            }
            // Scanning on/off and defaults change nothing here: this
            // keyboard only sends what the host types, and always in set 2.
            KBD_ENABLE | KBD_RESET_DISABLE | KBD_RESET_DEFAULT => self.keyboard_answer(&[KBD_ACK]),
            KBD_RESET => self.keyboard_answer(&[KBD_ACK, KBD_SELF_TEST_OK]),
            // Set 3 commands, extended LEDs, anything else.
            _ => self.keyboard_answer(&[KBD_RESEND]),
        }
    }

    fn keyboard_param(&mut self, cmd: u8, value: u8) {
        match (cmd, value) {
            (KBD_SCANCODE_SET, 0) => self.keyboard_answer(&[KBD_ACK, KBD_SET]),
            (KBD_SCANCODE_SET, KBD_SET) => self.keyboard_answer(&[KBD_ACK]),
            // Sets 1 and 3 are refused, so the guest keeps reading set 2.
            (KBD_SCANCODE_SET, _) => self.keyboard_answer(&[KBD_RESEND]),
            _ => self.keyboard_answer(&[KBD_ACK]),
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        STATUS_SYSTEM_FLAG | STATUS_UNLOCKED | full
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => {
                let byte = self.output.pop_front().unwrap_or(0);
                // One interrupt per byte: the rest needs another.
                if !self.output.is_empty() {
                    self.raise_or_log();
                }
                byte
            }
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => self.command(value),
            DATA_OFFSET => self.data(value),
            _ => {}
        }
    }
}
