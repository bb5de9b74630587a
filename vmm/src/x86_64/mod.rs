//! x86_64 machine setup: guest memory layout, kernel/initrd/command-line loading and the
//! PVH boot protocol.

pub mod cpuid;
pub mod layout;
pub(crate) mod machine;
pub mod mptable;
pub mod msrs;
pub mod regs;

use crate::map_reader::MapReader;
use crate::Error;
use layout::*;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use std::fs::File;
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

const E820_RAM: u32 = 1;
const PVH_MAGIC: u32 = 0x336e_c578;

/// RAM ranges for `size` bytes of guest memory: below the MMIO hole, and the rest above
/// 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE as usize),
            (GuestAddress(FOUR_GIB), (size - MMIO_HOLE) as usize),
        ]
    }
}

/// Where the loaded pieces ended up.
pub struct Loaded {
    pub entry: u64,
    initrd: Option<(u64, u64)>,
}

/// Maps an ELF vmlinux into guest memory (copy-on-write, see `map_reader`) and finds its PVH entry point (the XEN_ELFNOTE_PHYS32_ENTRY note
/// a kernel built with CONFIG_PVH carries).
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &Path) -> Result<(Loaded, u64), Error> {
    let file = File::open(kernel).map_err(|e| Error::Kernel(kernel.into(), e.to_string()))?;
    // SAFETY: linux-loader reads the segments into `mem`, private anonymous guest RAM.
    let mut file =
        unsafe { MapReader::new(file) }.map_err(|e| Error::Kernel(kernel.into(), e.to_string()))?;
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM)))
        .map_err(|e| Error::Kernel(kernel.into(), e.to_string()))?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.raw_value(),
        _ => {
            return Err(Error::Kernel(
                kernel.into(),
                "no PVH entry note: build it with CONFIG_PVH=y (an ELF vmlinux, not a bzImage)"
                    .into(),
            ))
        }
    };
    Ok((
        Loaded {
            entry,
            initrd: None,
        },
        result.kernel_end,
    ))
}

/// Maps the initrd at the top of RAM below the MMIO hole, page-aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    loaded: &mut Loaded,
    kernel_end: u64,
    initrd: &Path,
) -> Result<(), Error> {
    let low_end = mem
        .find_region(GuestAddress(0))
        .map(|r| r.len())
        .unwrap_or(0);
    loaded.initrd = Some(crate::map_reader::load_initrd(
        mem, initrd, low_end, kernel_end,
    )?);
    Ok(())
}

/// Writes the NUL-terminated command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), Error> {
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains('\0') {
        return Err(Error::Cmdline(format!(
            "the kernel command line must be under {CMDLINE_MAX} bytes without NUL; it is {} bytes",
            cmdline.len()
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|e| Error::Cmdline(e.to_string()))
}

/// Writes the PVH start info: command line, initrd module, and the memory map (the e820
/// of a PVH boot): RAM below the EBDA, RAM from 1 MiB to the hole, RAM above 4 GiB.
pub fn write_start_info(mem: &GuestMemoryMmap, loaded: &Loaded) -> Result<(), Error> {
    let mut memmap = vec![ram(0, EBDA)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM);
        let end = region.start_addr().raw_value() + region.len();
        memmap.push(ram(start, end - start));
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let w = |e: vm_memory::GuestMemoryError| Error::Memory(e.to_string());
    if let Some((paddr, size)) = loaded.initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
        mem.write_obj(
            hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            },
            GuestAddress(PVH_MODLIST),
        )
        .map_err(w)?;
    }
    for (i, entry) in memmap.iter().enumerate() {
        let addr = PVH_MEMMAP + (i * size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(*entry, GuestAddress(addr)).map_err(w)?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO)).map_err(w)
}

fn ram(addr: u64, size: u64) -> hvm_memmap_table_entry {
    hvm_memmap_table_entry {
        addr,
        size,
        type_: E820_RAM,
        reserved: 0,
    }
}
