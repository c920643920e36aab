//! Legacy platform devices: UART, i8042, pvpanic, ACPI power register,
//! boot timer.

pub mod acpi_pm;
pub mod boot_timer;
pub mod console_output;
pub mod host_output;
pub mod i8042;
pub mod output_buffer;
pub mod pvpanic;
pub mod serial;
