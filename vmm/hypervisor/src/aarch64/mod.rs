//! The aarch64 extension of the boundary, and what every aarch64 backend shares: decoding
//! the guest's traps ([`esr`]) and answering its firmware calls ([`psci`]). Both are pure
//! logic, tested on any host; the Hypervisor.framework backend drives them.

pub mod esr;
pub mod psci;

use crate::{Result, Vcpu};

/// The virtual timer's interrupt, PPI 11 (INTID 27), as the device tree's timer node names
/// it: the one a guest under a hypervisor uses.
pub const VTIMER_PPI: u32 = 11;

/// A vCPU on an aarch64 hypervisor.
pub trait Aarch64Vcpu: Vcpu {
    /// Puts the boot CPU where the arm64 boot protocol (Documentation/arm64/booting.rst)
    /// wants it: at `entry`, x0 holding the device tree's guest address, x1-x3 zero, EL1h
    /// with D, A, I and F masked, MMU and caches off. The other vCPUs start off and are
    /// started by the guest through PSCI CPU_ON.
    fn set_boot_state(&self, entry: u64, fdt: u64) -> Result<()>;
}
