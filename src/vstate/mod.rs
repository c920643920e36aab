//! KVM state: the VM and host capabilities, guest memory, vCPUs.

pub mod kvm;
pub mod memory;
pub mod vcpu;
