//! Where things sit in guest physical memory. Low addresses follow the PC conventions the
//! kernel's early code checks (MP table in the last KiB below 640 KiB, BIOS warm-reboot
//! flag at 0x472); devices live in a hole below 4 GiB so 32-bit-addressable RAM stays
//! contiguous.

/// GDT the boot vCPU starts with (code, data, TSS), and an empty IDT after it.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// PVH `hvm_start_info`, its module list (the initrd) and the memory map.
pub const PVH_INFO: u64 = 0x6000;
pub const PVH_MODLIST: u64 = 0x6040;
pub const PVH_MEMMAP: u64 = 0x7000;
/// Kernel command line; x86 Linux reads at most 2048 bytes of it (COMMAND_LINE_SIZE).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// Start of the "EBDA": RAM below it, the MP table in it.
pub const EBDA: u64 = 0x9fc00;
/// The BIOS reset-mode word: 0x1234 asks for a warm reboot.
pub const BIOS_RESET_FLAG: u64 = 0x472;
pub const WARM_REBOOT: u16 = 0x1234;
/// What the VMM puts in the reset flag before boot ("HK"): Linux writes only 0 or 0x1234.
pub const RESET_FLAG_UNSET: u16 = 0x4b48;
/// First byte above the legacy hole; the kernel loads here or higher.
pub const HIMEM: u64 = 0x10_0000;

/// The MMIO hole: [3 GiB, 4 GiB). RAM beyond 3 GiB continues at 4 GiB.
pub const MMIO_HOLE: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// hk's control page (docs/guest-abi.md), then one 4 KiB window per virtio-mmio device.
pub const CONTROL_PAGE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
pub const IOAPIC: u32 = 0xfec0_0000;
pub const LAPIC: u32 = 0xfee0_0000;

/// COM1 and its ISA interrupt; virtio devices take the IRQs after it.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// IOAPIC pins KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u32 = 24;
