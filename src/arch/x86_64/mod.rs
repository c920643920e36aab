//! x86_64 boot: address layout, boot structures, registers, CPUID, firmware tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
