//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its
//! CPUs, its IOAPIC and how ISA interrupts are wired. Written by hand because no rust-vmm
//! crate provides it; the format is small and fixed (Linux: arch/x86/kernel/mpparse.c).

use super::layout::{EBDA, IOAPIC, IOAPIC_PINS, LAPIC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most CPUs the table describes: the IOAPIC takes the APIC ID after the last CPU, and the
/// guest kernel is built with NR_CPUS=64.
pub const MAX_CPUS: u32 = 64;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// CPUID family 6 signature and the FPU/APIC feature flags, as firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// Builds the configuration table (header and entries) that would sit at `table_addr`.
fn config_table(cpus: u32) -> Vec<u8> {
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_CPU, id as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC.to_le_bytes());
    count += 2;
    // ISA IRQ n arrives on IOAPIC pin n; flags 0 = the bus's default polarity and trigger.
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every local APIC takes the PIC (ExtINT), LINT1 takes NMI.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum (filled below)
    table.extend_from_slice(b"HK      ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the floating pointer at the start of the EBDA and the configuration table after
/// it, where Linux's `smp_scan_config` finds them.
pub fn write(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), vm_memory::GuestMemoryError> {
    let table_addr = EBDA as u32 + 16;
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, spec 1.4, checksum, features
    fp[10] = checksum(&fp);
    mem.write_slice(&fp, GuestAddress(EBDA))?;
    mem.write_slice(&config_table(cpus), GuestAddress(u64::from(table_addr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn tables_checksum_and_count_cpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write(&mem, 3).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(EBDA)).unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0);
        let addr = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));
        let len: u16 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut table = vec![0u8; usize::from(len)];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(sum(&table), 0);
        // CPU entries are 20 bytes, all others 8.
        let mut off = 44;
        let mut seen = 0;
        while off < table.len() {
            let step = if table[off] == ENTRY_CPU { 20 } else { 8 };
            seen += usize::from(table[off] == ENTRY_CPU);
            off += step;
        }
        assert_eq!(off, table.len());
        assert_eq!(seen, 3);
        assert!(mem.address_in_range(GuestAddress(addr + u64::from(len) - 1)));
    }
}
