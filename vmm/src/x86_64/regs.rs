//! The boot vCPU's state at the PVH entry point (xenbits "PVH boot ABI"): 32-bit protected
//! mode, paging off, flat 4 GiB code and data segments, `%ebx` = start-info address.

use super::layout::{GDT, IDT, PVH_INFO};
use hk_hypervisor::x86_64::{Fpu, Regs, Segment, Sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PE: u64 = 0x1;
const CR0_ET: u64 = 0x10;

/// GDT descriptors: flags (G, D/B, L, AVL, P, DPL, S, type), base, limit.
const GDT_ENTRIES: [(u16, u32, u32); 4] = [
    (0, 0, 0),            // null
    (0xc09b, 0, 0xfffff), // 0x08: code, execute/read, 32-bit, 4 KiB granular
    (0xc093, 0, 0xfffff), // 0x10: data, read/write
    (0x008b, 0, 0x67),    // 0x18: 32-bit busy TSS
];
const CODE: usize = 1;
const DATA: usize = 2;
const TSS: usize = 3;

fn descriptor((flags, base, limit): (u16, u32, u32)) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn segment(index: usize) -> Segment {
    let (flags, base, limit) = GDT_ENTRIES[index];
    let granular = flags & 0x8000 != 0;
    Segment {
        base: u64::from(base),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: (index * 8) as u16,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: u8::from(granular),
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and the (empty) IDT the boot state refers to.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(descriptor(*entry), GuestAddress(GDT + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))
}

pub fn sregs(mut sregs: Sregs) -> Sregs {
    sregs.cs = segment(CODE);
    let data = segment(DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    // Exactly PE (and ET, hard-wired on every CPU since the 486): the reset value also has
    // CD and NW set, i.e. caches off, which nested hypervisors honour at great cost.
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

pub fn regs(entry: u64) -> Regs {
    Regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO,
        ..Default::default()
    }
}

/// x87 control word and MXCSR at their reset values: all exceptions masked.
pub fn fpu() -> Fpu {
    Fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_architecture() {
        // The values every x86 boot loader writes for flat 32-bit code and data.
        assert_eq!(descriptor(GDT_ENTRIES[CODE]), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(GDT_ENTRIES[DATA]), 0x00cf_9300_0000_ffff);
        let cs = segment(CODE);
        assert_eq!(
            (cs.limit, cs.type_, cs.db, cs.g, cs.s),
            (0xffff_ffff, 0xb, 1, 1, 1)
        );
    }
}
