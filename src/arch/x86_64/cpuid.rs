//! Per-vCPU CPUID: KVM's supported set, normalised so each vCPU sees its
//! own APIC ID, a consistent topology (one socket, `cpus` cores, no SMT),
//! the hypervisor bit and, where KVM emulates it, the TSC-deadline timer.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM emulates the LAPIC's TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER)
/// but leaves the bit out of KVM_GET_SUPPORTED_CPUID for the VMM to set.
/// Without it Linux calibrates the LAPIC timer against another clock
/// instead, a busy wait of about 100 ms of the default guest's boot.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to number `cpus` cores (the APIC ID shift of the core level).
fn core_id_bits(cpus: u8) -> u32 {
    u32::from(cpus).next_power_of_two().trailing_zeros()
}

/// What the vCPUs' CPUID says beyond KVM's supported set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidOptions {
    pub cpus: u8,
    /// KVM has KVM_CAP_TSC_DEADLINE_TIMER.
    pub tsc_deadline: bool,
}

/// Rewrites `entries` (KVM_GET_SUPPORTED_CPUID output) for vCPU `index`.
pub fn normalize_entries(entries: &mut [kvm_cpuid_entry2], index: u8, options: CpuidOptions) {
    let cpus = options.cpus;
    let apic_id = u32::from(index);
    let cpus32 = u32::from(cpus);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC ID, [23:16] logical CPUs per package,
                // [15:8] CLFLUSH line size in 8-byte units.
                e.ebx = (apic_id << 24) | (cpus32 << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if options.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing
                // this cache - 1. A cache shared by all cores only if it is L3.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((cpus32 - 1) << 26) | (sharing << 14);
            }
            // No virtual PMU: say so rather than leak the host's counters.
            LEAF_PERFMON => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                let sub = e.index;
                e.edx = apic_id;
                match sub {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = sub | (TOPOLOGY_LEVEL_SMT << 8);
                    }
                    1 => {
                        e.eax = core_id_bits(cpus);
                        e.ebx = cpus32;
                        e.ecx = sub | (TOPOLOGY_LEVEL_CORE << 8);
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = sub;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0] NC: cores - 1; [15:12] APIC ID size.
                e.ecx = (e.ecx & !0xf0ff) | (core_id_bits(cpus) << 12) | (cpus32 - 1);
            }
            LEAF_AMD_TOPOLOGY => {
                // Extended APIC ID, one thread per core, one node.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// Makes sure leaf 0xb has the subleaves Linux walks, even when the host's
/// KVM did not list them.
fn ensure_topology_leaf(cpuid: &mut CpuId) {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    if max_basic < LEAF_TOPOLOGY {
        return;
    }
    for sub in 0..2 {
        let present = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_TOPOLOGY && e.index == sub);
        if !present {
            // Ignoring failure is safe: the FAM has room unless KVM filled
            // every slot, and then the kernel falls back to leaf 0x1.
            let _ = cpuid.push(kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index: sub,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            });
        }
    }
}

/// Returns the CPUID table for vCPU `index`.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, options: CpuidOptions) -> CpuId {
    let mut cpuid = supported.clone();
    ensure_topology_leaf(&mut cpuid);
    normalize_entries(cpuid.as_mut_slice(), index, options);
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            entry(LEAF_FEATURES, 0),
            entry(LEAF_PERFMON, 0),
            entry(LEAF_AMD_SIZES, 0),
            entry(LEAF_AMD_TOPOLOGY, 0),
        ])
        .unwrap()
    }

    fn opts(cpus: u8) -> CpuidOptions {
        CpuidOptions {
            cpus,
            tsc_deadline: true,
        }
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_id_and_count_per_vcpu() {
        let s = sample();
        for idx in 0..4u8 {
            let c = vcpu_cpuid(&s, idx, opts(4));
            let l1 = find(&c, LEAF_FEATURES, 0);
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            assert_eq!(find(&c, LEAF_TOPOLOGY, 0).edx, u32::from(idx));
            assert_eq!(find(&c, LEAF_AMD_TOPOLOGY, 0).eax, u32::from(idx));
        }
    }

    #[test]
    fn topology_leaf_added_and_consistent() {
        let c = vcpu_cpuid(&sample(), 1, opts(3));
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8), (0, 1, TOPOLOGY_LEVEL_SMT));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (2, 3, TOPOLOGY_LEVEL_CORE));
        assert_eq!(find(&c, LEAF_AMD_SIZES, 0).ecx & 0xff, 2);
    }

    #[test]
    fn single_cpu_has_no_htt_and_no_pmu() {
        let c = vcpu_cpuid(&sample(), 0, opts(1));
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        let pmu = find(&c, LEAF_PERFMON, 0);
        assert_eq!((pmu.eax, pmu.ebx), (0, 0));
        assert_eq!(find(&c, LEAF_TOPOLOGY, 1).eax, 0);
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_only_where_kvm_has_it() {
        let with = vcpu_cpuid(&sample(), 0, opts(1));
        assert_ne!(find(&with, LEAF_FEATURES, 0).ecx & ECX_TSC_DEADLINE, 0);
        let without = CpuidOptions {
            cpus: 1,
            tsc_deadline: false,
        };
        let c = vcpu_cpuid(&sample(), 0, without);
        assert_eq!(find(&c, LEAF_FEATURES, 0).ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(254), 8);
    }

    #[test]
    fn cache_leaf_sharing() {
        let mut e = [kvm_cpuid_entry2 {
            function: LEAF_CACHE_PARAMS,
            eax: (3 << 5) | 0x3,
            ..Default::default()
        }];
        normalize_entries(&mut e, 0, opts(4));
        assert_eq!(e[0].eax >> 26, 3);
        assert_eq!((e[0].eax >> 14) & 0xfff, 3);
    }
}
