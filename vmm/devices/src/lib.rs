//! Device models of hk's VMM.
//!
//! A device here knows guest memory (vm-memory) and an [`Interrupt`] to raise, nothing of the
//! hypervisor or of how the VM was built: the same models serve KVM today and
//! Hypervisor.framework later. Every guest-supplied address and length goes through
//! vm-memory's checked accessors; a malformed request is answered with an error status or
//! dropped, never a panic.

pub mod control;
pub mod event;
pub mod pl011;
pub mod serial;
pub mod virtio;

/// A device on the port-I/O or MMIO bus. `offset` is relative to the device's base.
/// Accesses come from vCPU threads.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A serial port the VMM's console is wired to: the 16550 on x86, the PL011 on aarch64.
pub trait Uart: BusDevice {
    /// Queues console input for the guest and returns how many bytes it took; the rest
    /// waits until the port says it is ready for more (its `ready` event).
    fn receive(&mut self, bytes: &[u8]) -> usize;
    /// Flushes console output (the VMM calls it when the VM stops).
    fn flush(&mut self) -> std::io::Result<()>;
}

/// An interrupt line the device raises (an irqfd on KVM).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

/// An interrupt line that counts its triggers: what the device models' unit tests wire up.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct CountingInterrupt(pub(crate) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The guest memory type every device model works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
