//! (stub)
use crate::devices::bus::BusDevice;
use crate::exit::ExitNotifier;
pub struct AcpiPmDevice {
    _exit: ExitNotifier,
}
impl AcpiPmDevice {
    pub fn new(exit: ExitNotifier) -> Self {
        Self { _exit: exit }
    }
}
impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _o: u64, _d: &mut [u8]) {}
    fn write(&mut self, _o: u64, _d: &[u8]) {}
}
