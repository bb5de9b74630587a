//! Where things sit in the aarch64 guest's physical memory: QEMU virt's addresses, so that the
//! device tree hk writes also describes a QEMU `-M virt,gic-version=3` machine and can be
//! checked against one (runner/tests/arm64_boot.rs).

/// The GICv3 distributor and its size.
pub const GIC_DIST: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// The first GICv3 redistributor; each CPU has two 64 KiB frames (RD and SGI).
pub const GIC_REDIST: u64 = 0x080a_0000;
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// The redistributors' region ends where the UART starts: room for 123 CPUs.
pub const MAX_CPUS: u32 = ((UART - GIC_REDIST) / GIC_REDIST_SIZE) as u32;

/// The PL011 UART and its interrupt (an SPI number).
pub const UART: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
pub const UART_SPI: u32 = 1;

/// hk's control page (docs/guest-abi.md), in a gap of QEMU virt's map.
pub const CONTROL_PAGE: u64 = 0x090c_0000;

/// virtio-mmio windows: QEMU virt's 32 transports of 0x200 bytes each, SPIs 16 to 47.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
pub const VIRTIO_MMIO_COUNT: usize = 32;
pub const VIRTIO_FIRST_SPI: u32 = 16;

/// RAM starts at 1 GiB, as on QEMU virt.
pub const RAM_BASE: u64 = 0x4000_0000;

/// The window and interrupt of virtio device `index`, if there is one for it.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    (index < VIRTIO_MMIO_COUNT).then(|| {
        (
            VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            VIRTIO_FIRST_SPI + index as u32,
        )
    })
}
