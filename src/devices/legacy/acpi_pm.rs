//! ACPI hardware-reduced power management: one I/O port that is at once
//! the sleep control register, the sleep status register and the reset
//! register (the FADT points all three at `layout::ACPI_SLEEP_PORT`).
//!
//! The values here are the contract with the firmware tables in
//! `arch::x86_64::acpi`: the DSDT's `\_S5_` package carries
//! [`SLP_TYP_S5`], and the FADT's `RESET_VALUE` is [`RESET_VALUE`]. Linux
//! powers off by writing `(SLP_TYPa << 2) & 0x1c | SLP_EN` to the control
//! register (`acpi_hw_extended_sleep`, after clearing WAK_STS by writing
//! 0x80 to the status register), and reboots with `reboot=acpi` by writing
//! `RESET_VALUE` to the reset register. The three kinds of write cannot be
//! confused: a reset value of 1 sets neither SLP_EN nor WAK_STS, and bit 0
//! is reserved in the sleep control register.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Sleep control register: sleep enable.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register: sleep type field, bits 2-4.
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// The sleep type value the DSDT's `\_S5_` object hands the guest.
pub const SLP_TYP_S5: u8 = 5;
/// Sleep status register: wake status, write 1 to clear.
pub const WAK_STS: u8 = 1 << 7;
/// The value the FADT tells the guest to write to the reset register
/// (same value as Cloud Hypervisor at the same port).
pub const RESET_VALUE: u8 = 1;

pub struct AcpiPmDevice {
    exit: ExitNotifier,
    /// Set when the guest asked for a sleep state kiln does not implement,
    /// so OSPM's wait-for-wake loop ends at once instead of spinning.
    wake_status: bool,
}

impl AcpiPmDevice {
    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            exit,
            wake_status: false,
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && self.wake_status {
            if let Some(first) = data.first_mut() {
                *first = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // All three registers are 8 bits wide; wider writes from an odd
        // guest are judged by their low byte.
        let Some(&value) = data.first() else { return };
        if offset != 0 {
            return;
        }
        if value == RESET_VALUE {
            info_guest!("guest requested a reset through the ACPI reset register");
            self.exit.notify(ExitReason::Reset);
            return;
        }
        if value & WAK_STS != 0 {
            self.wake_status = false;
        }
        if value & SLP_EN != 0 {
            let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
            if sleep_type == SLP_TYP_S5 {
                info_guest!("guest requested ACPI S5 (power off)");
                self.exit.notify(ExitReason::PowerOff);
            } else {
                // Only \_S5_ is declared, so a well-behaved guest never
                // gets here; pretend to wake up immediately.
                info_guest!("ignoring request for unsupported ACPI sleep type {sleep_type}");
                self.wake_status = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPmDevice, ExitNotifier) {
        let exit = ExitNotifier::new().unwrap();
        (AcpiPmDevice::new(exit.clone()), exit)
    }

    fn status(dev: &mut AcpiPmDevice) -> u8 {
        let mut b = [0xffu8];
        dev.read(0, &mut b);
        b[0]
    }

    #[test]
    fn linux_s5_sequence_powers_off() {
        let (mut dev, exit) = device();
        // acpi_hw_extended_sleep: clear WAK_STS, then write SLP_TYP | SLP_EN.
        dev.write(0, &[WAK_STS]);
        assert_eq!(exit.reason(), None);
        let value = ((SLP_TYP_S5 << 2) & 0x1c) | 0x20;
        assert_eq!(value, 0x34);
        dev.write(0, &[value]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
        assert_eq!(status(&mut dev), 0);
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, exit) = device();
        dev.write(0, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn s5_type_without_slp_en_does_nothing() {
        let (mut dev, exit) = device();
        dev.write(0, &[SLP_TYP_S5 << SLP_TYP_SHIFT]);
        dev.write(0, &[0]);
        dev.write(1, &[RESET_VALUE]);
        dev.write(0, &[]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn other_sleep_types_wake_at_once() {
        let (mut dev, exit) = device();
        assert_eq!(status(&mut dev), 0);
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(exit.reason(), None);
        assert_eq!(status(&mut dev), WAK_STS);
        let mut wide = [0xffu8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [WAK_STS, 0]);
        dev.write(0, &[WAK_STS]);
        assert_eq!(status(&mut dev), 0);
    }
}
