//! Legacy platform devices: UART, i8042, pvpanic, ACPI power register.

pub mod acpi_pm;
pub mod console_output;
pub mod host_output;
pub mod i8042;
pub mod output_buffer;
pub mod pvpanic;
pub mod serial;
