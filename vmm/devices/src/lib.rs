//! Device models of hk's VMM.
//!
//! A device here knows guest memory (vm-memory) and an [`Interrupt`] to raise, nothing of the
//! hypervisor or of how the VM was built: the same models serve KVM today and
//! Hypervisor.framework later. Every guest-supplied address and length goes through
//! vm-memory's checked accessors; a malformed request is answered with an error status or
//! dropped, never a panic.

pub mod control;
pub mod serial;
pub mod virtio;

/// A device on the port-I/O or MMIO bus. `offset` is relative to the device's base.
/// Accesses come from vCPU threads.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An interrupt line the device raises (an irqfd on KVM).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

/// The guest memory type every device model works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
