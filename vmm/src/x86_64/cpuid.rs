//! The CPUID a vCPU sees: what KVM supports, with the topology and hypervisor bits a
//! guest needs to count its CPUs and know it is virtual.

use hk_hypervisor::x86_64::CpuidEntry;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Filters KVM's supported CPUID for vCPU `index` of `count`: every vCPU is one core of
/// one socket, one thread per core.
pub fn for_vcpu(supported: &[CpuidEntry], index: u32, count: u32) -> Vec<CpuidEntry> {
    let apic_id = index;
    let mut entries = supported.to_vec();
    for e in &mut entries {
        match e.function {
            LEAF_FEATURES => {
                // EBX: initial APIC ID (31..24), logical processors per package (23..16),
                // CLFLUSH line size in 8-byte units (15..8).
                e.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_TOPOLOGY => {
                // EAX 31..26: cores per package - 1; 25..14: threads sharing this cache - 1.
                let cores = count.saturating_sub(1) & 0x3f;
                e.eax = (e.eax & 0x3fff) | (cores << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                // Level 0 = SMT (1 thread), level 1 = core (count cores); EDX = x2APIC ID.
                let shift = u32::BITS - count.saturating_sub(1).leading_zeros();
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = 1 | (2 << 8);
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
                e.edx = apic_id;
            }
            LEAF_AMD_SIZES => {
                // ECX 7..0: number of cores - 1 (NC).
                e.ecx = (e.ecx & !0xff) | (count.saturating_sub(1) & 0xff);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = apic_id;
                e.ebx = 0;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts() {
        let supported = [leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0x8000_0008, 0)];
        let e = for_vcpu(&supported, 2, 4);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 2);
        assert_eq!(e[2].ebx, 4);
        assert_eq!(e[2].eax, 2);
        assert_eq!(e[3].ecx & 0xff, 3);
    }
}
