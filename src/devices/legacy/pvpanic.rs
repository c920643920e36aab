//! pvpanic: a one-byte I/O port the guest kernel writes when it panics.
//!
//! This is QEMU's ISA pvpanic interface. The DSDT declares it as `QEMU0001`
//! with an I/O resource at `layout::PVPANIC_PORT`; Linux's `pvpanic-mmio`
//! driver binds to that ACPI id and accepts an I/O resource as well as MMIO.
//! On probe the driver reads the port to learn which events the host
//! handles, and later writes only the events that were advertised.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel (kdump) and will boot into it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// Events kiln handles; Linux masks its writes with what it reads here.
pub const PVPANIC_CAPABILITIES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

pub struct PvPanicDevice {
    exit: ExitNotifier,
}

impl PvPanicDevice {
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanicDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = PVPANIC_CAPABILITIES;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only the low byte of the register means anything; wider writes
        // from an odd guest are judged by that byte alone.
        let Some(&value) = data.first() else { return };
        if offset != 0 {
            return;
        }
        if value & PVPANIC_PANICKED != 0 {
            warn_guest!("guest kernel panicked (pvpanic event {value:#x}); stopping the VM");
            self.exit.notify(ExitReason::GuestPanic);
        }
        if value & PVPANIC_CRASH_LOADED != 0 {
            // The guest keeps running into its crash kernel: nothing to stop.
            warn_guest!("guest kernel crashed and is booting its crash kernel (pvpanic)");
        }
        let unknown = value & !PVPANIC_CAPABILITIES;
        if unknown != 0 {
            debug_guest!("ignoring unadvertised pvpanic event bits {unknown:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanicDevice, ExitNotifier) {
        let exit = ExitNotifier::new().unwrap();
        (PvPanicDevice::new(exit.clone()), exit)
    }

    #[test]
    fn read_returns_capabilities() {
        let (mut dev, _) = device();
        let mut b = [0xffu8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        let mut w = [0xffu8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [3, 0]);
        dev.read(1, &mut b);
        assert_eq!(b, [0]);
        dev.read(0, &mut []);
    }

    #[test]
    fn panic_bit_stops_the_vm() {
        let (mut dev, exit) = device();
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn crash_loaded_and_junk_do_not_stop_the_vm() {
        let (mut dev, exit) = device();
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[0xfc]);
        dev.write(0, &[0]);
        dev.write(0, &[]);
        dev.write(3, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn panic_with_other_bits_still_stops_the_vm() {
        let (mut dev, exit) = device();
        dev.write(0, &[0xff, 0xff]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }
}
