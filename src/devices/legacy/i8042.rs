//! The i8042 keyboard controller, present so `reboot=k` resets the VM.
//!
//! vm-superio's model only knows the CPU-reset command; this adapter adds
//! the few controller commands Linux's probe issues (self-test, interface
//! test, reading the command byte), so the probe completes at once instead
//! of waiting out its timeouts.

use vm_superio::{I8042Device as ResetOnlyI8042, Trigger};

use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Self-test passed / system flag: what firmware leaves behind.
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const SELF_TEST_OK: u8 = 0x55;
/// Command byte: keyboard interrupt on, system flag, translation.
const DEFAULT_CTR: u8 = 0x45;

/// Signals a guest reset through the VM's exit notifier.
pub struct ResetTrigger(pub ExitNotifier);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.notify(ExitReason::Reset);
        Ok(())
    }
}

pub struct I8042Device {
    reset: ResetOnlyI8042<ResetTrigger>,
    ctr: u8,
    output: Option<u8>,
    expecting_ctr: bool,
}

impl I8042Device {
    /// The window spans ports 0x60..=0x64.
    pub const WINDOW_LEN: u64 = 5;

    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            reset: ResetOnlyI8042::new(ResetTrigger(exit)),
            ctr: DEFAULT_CTR,
            output: None,
            expecting_ctr: false,
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.expecting_ctr = true,
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_KBD_TEST => self.output = Some(0),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE => {}
            // Includes 0xfe, the CPU reset pulse.
            other => {
                let _ = self.reset.write(COMMAND_OFFSET as u8, other);
            }
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => {
                STATUS_SYSTEM_FLAG
                    | if self.output.is_some() {
                        STATUS_OUTPUT_FULL
                    } else {
                        0
                    }
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => self.command(value),
            DATA_OFFSET if self.expecting_ctr => {
                self.ctr = value;
                self.expecting_ctr = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut I8042Device, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_pulse_requests_a_reset() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = I8042Device::new(exit.clone());
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn answers_the_linux_probe() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = I8042Device::new(exit.clone());
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x11]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x11);
        assert_eq!(exit.reason(), None);
        dev.write(7, &[]);
        dev.read(9, &mut []);
    }
}
