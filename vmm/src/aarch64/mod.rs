//! The aarch64 machine (Hypervisor.framework on Apple silicon): QEMU virt's memory map
//! ([`layout`]), arm64 `Image` loading ([`image`]), the device tree ([`fdt`]), and the
//! builder that puts a VM together on an aarch64 hypervisor (`machine`).
//!
//! [`lay_out`] is the loader: it places kernel, initrd and device tree in guest memory the
//! way the machine boots them. It is public so that a test on any host can lay a guest out
//! as hk would and boot it elsewhere (runner/tests/arm64_boot.rs boots it on QEMU).

pub mod fdt;
pub mod image;
pub mod layout;
#[cfg(any(target_os = "macos", test))]
pub(crate) mod machine;

use crate::map_reader::{load_initrd, MapReader};
use crate::Error;
pub use hk_hypervisor::aarch64::psci::mpidr as psci_mpidr;
use layout::*;
use std::fs::File;
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// The device tree's place: the top 2 MiB of RAM (the boot protocol's size limit for it).
const FDT_MAX: u64 = 2 << 20;

/// What to lay out.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cpus: u32,
    /// The caller's command line; [`lay_out`] puts hk's own parameters before it.
    pub cmdline: &'a str,
    /// The virtio-mmio windows in device order (base, SPI): [`layout::virtio_slot`]'s.
    pub virtio: &'a [(u64, u32)],
}

/// Where things went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The kernel's first instruction (its load address).
    pub entry: u64,
    /// The initrd's first byte and the byte after its last.
    pub initrd: Option<(u64, u64)>,
    /// The device tree's guest address and size.
    pub fdt: (u64, u64),
    /// The whole command line the kernel gets.
    pub cmdline: String,
}

/// The command-line parameters hk's exit statuses depend on (docs/guest-abi.md): a panic
/// resets warm (PSCI SYSTEM_RESET2), anything else cold (SYSTEM_RESET); and the control
/// page.
fn vmm_cmdline() -> String {
    format!("reboot=c,panic_w panic=-1 hk.ctl={CONTROL_PAGE:#x}")
}

/// Guest RAM of `size` bytes at [`layout::RAM_BASE`].
pub fn ram(size: u64) -> Result<GuestMemoryMmap, Error> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), size as usize)])
        .map_err(|e| Error::Memory(e.to_string()))
}

/// Loads the kernel at the bottom of RAM, the device tree at the top, and the initrd just
/// below the device tree, and writes the device tree describing `mem` and `guest`.
pub fn lay_out(mem: &GuestMemoryMmap, guest: &Guest<'_>) -> Result<Layout, Error> {
    let region = mem
        .find_region(GuestAddress(RAM_BASE))
        .ok_or_else(|| Error::Memory(format!("no RAM at {RAM_BASE:#x}")))?;
    let (ram_start, ram_size) = (region.start_addr().raw_value(), region.len());
    let ram_end = ram_start + ram_size;

    let kerr = |e: String| Error::Kernel(guest.kernel.into(), e);
    let file = File::open(guest.kernel).map_err(|e| kerr(e.to_string()))?;
    // SAFETY: the kernel is read into `mem`, private anonymous guest RAM.
    let mut file = unsafe { MapReader::new(file) }.map_err(|e| kerr(e.to_string()))?;
    let size = file.len();
    let header = image::read_header(&mut file, size).map_err(kerr)?;
    let entry = image::load_address(ram_start, &header);
    let kernel_end = entry + header.image_size;
    let fdt_addr = (ram_end - FDT_MAX) & !(image::ALIGN - 1);
    if kernel_end > fdt_addr {
        return Err(kerr(format!(
            "it needs {} bytes from {entry:#x}; give the VM more memory",
            header.image_size
        )));
    }
    // The header was read to check it; the whole file goes in, header included.
    let file = File::open(guest.kernel).map_err(|e| kerr(e.to_string()))?;
    // SAFETY: as above.
    let mut file = unsafe { MapReader::new(file) }.map_err(|e| kerr(e.to_string()))?;
    mem.read_exact_volatile_from(GuestAddress(entry), &mut file, size as usize)
        .map_err(|e| kerr(e.to_string()))?;

    let initrd = match guest.initrd {
        Some(path) => {
            let (start, size) = load_initrd(mem, path, fdt_addr, kernel_end)?;
            Some((start, start + size))
        }
        None => None,
    };

    if guest.cpus == 0 || guest.cpus > MAX_CPUS {
        return Err(Error::Config(format!(
            "cpus must be 1 to {MAX_CPUS}, not {}",
            guest.cpus
        )));
    }
    let cmdline = crate::machine::merge_cmdline(guest.cmdline, &vmm_cmdline());
    let blob = fdt::create(&fdt::Machine {
        cpus: guest.cpus,
        memory: (ram_start, ram_size),
        cmdline: &cmdline,
        initrd,
        virtio: guest.virtio,
    })
    .map_err(|e| Error::Config(format!("device tree: {e}")))?;
    if blob.len() as u64 > FDT_MAX {
        return Err(Error::Config(format!(
            "the device tree is {} bytes, more than the 2 MiB a kernel takes",
            blob.len()
        )));
    }
    mem.write_slice(&blob, GuestAddress(fdt_addr))
        .map_err(|e| Error::Memory(e.to_string()))?;
    Ok(Layout {
        entry,
        initrd,
        fdt: (fdt_addr, blob.len() as u64),
        cmdline,
    })
}
