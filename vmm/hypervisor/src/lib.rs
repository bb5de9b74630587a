//! The hypervisor boundary of hk's VMM.
//!
//! Everything hk needs from a hypervisor fits in two traits, so that a second backend
//! (Apple Hypervisor.framework through the `applevisor` crate, on aarch64) can be added
//! without touching a device model or the event loop:
//!
//! - [`Vm`]: map guest memory, create vCPUs, hand out interrupt lines ([`IrqLine`]) and
//!   optionally turn guest MMIO writes into eventfd wake-ups ([`Vm::register_notifier`]).
//! - [`Vcpu`]: run until the guest needs the VMM and say why ([`VcpuExit`]), and give other
//!   threads a way to interrupt that run ([`VcpuKick`]).
//!
//! What is deliberately *not* in the boundary:
//! - Device models. They see guest memory (vm-memory) and an interrupt trigger, never a
//!   hypervisor type; they live in `hk-devices`.
//! - Boot-time register state. It is architecture-specific, so each architecture has its own
//!   extension trait next to the generic ones ([`x86_64::X86Vcpu`] here). It uses KVM's x86
//!   register layout as its vocabulary because the only other planned backend,
//!   Hypervisor.framework, runs on aarch64 and will bring an aarch64 extension trait
//!   (general registers, GIC, PSCI) instead.
//!
//! How an HVF backend maps onto this: `Vm::map_memory` → `hv_vm_map`, `Vm::create_vcpu` →
//! `hv_vcpu_create` (on the thread that will run it), `Vcpu::run` → `hv_vcpu_run` plus
//! decoding of the exception syndrome into [`VcpuExit::MmioRead`]/[`VcpuExit::MmioWrite`],
//! `VcpuKick::kick` → `hv_vcpus_exit`, `Vm::irq_line` → a GIC SPI, and
//! `Vm::register_notifier` → `Ok(false)` (no ioeventfd: the MMIO write traps and the
//! transport signals its own eventfd, which the device thread polls either way).

use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

pub mod kvm;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// An error from the hypervisor, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the hypervisor (/dev/kvm): {0}")]
    Open(#[source] std::io::Error),
    #[error("the hypervisor lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("{op}: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Why [`Vcpu::run`] returned: the guest touched something the VMM emulates, or stopped.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// Port I/O read (x86 only): fill `data`.
    IoIn { port: u16, data: &'a mut [u8] },
    /// Port I/O write (x86 only).
    IoOut { port: u16, data: &'a [u8] },
    /// Read from an address no memory is mapped at: fill `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// Write to an address no memory is mapped at.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// The guest reset the machine (on x86: a triple fault, or a reset request).
    Reset,
    /// The guest powered the machine off.
    Shutdown,
    /// Another thread kicked this vCPU ([`VcpuKick::kick`]); the run loop should check
    /// whether the VM is stopping.
    Interrupted,
    /// Anything else: the VM cannot go on. The text says what happened.
    Fatal(String),
}

/// A vCPU, owned by the thread that runs it.
pub trait Vcpu: Send {
    /// Runs the guest until it needs the VMM.
    fn run(&mut self) -> Result<VcpuExit<'_>>;
    /// A handle other threads use to make a running (or about to run) `run` return
    /// [`VcpuExit::Interrupted`].
    fn kicker(&self) -> Arc<dyn VcpuKick>;
}

/// Interrupts a vCPU's run from another thread.
pub trait VcpuKick: Send + Sync {
    /// Makes the current or the next `Vcpu::run` of that vCPU return
    /// [`VcpuExit::Interrupted`]. Calling it after the vCPU is gone does nothing.
    fn kick(&self);
}

/// An interrupt line a device raises. Edge semantics: each trigger delivers one interrupt.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

/// A virtual machine: memory, vCPUs, interrupts.
pub trait Vm: Send + Sync {
    type Vcpu: Vcpu;

    /// Maps `size` bytes of host memory at `host_addr` into the guest at `guest_addr`.
    ///
    /// # Safety
    /// The host range must stay mapped and valid for as long as the VM exists.
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host_addr: u64,
        size: u64,
    ) -> Result<()>;

    /// Creates vCPU number `index` (its APIC ID / MPIDR affinity is `index`).
    fn create_vcpu(&self, index: u32) -> Result<Self::Vcpu>;

    /// Interrupt line `gsi` of the VM's interrupt controller.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>>;

    /// Asks the hypervisor to signal `fd` on every 32-bit guest write to `addr` instead of
    /// exiting to the vCPU thread. Returns `false` when the backend cannot; the write then
    /// arrives as an ordinary [`VcpuExit::MmioWrite`].
    fn register_notifier(&self, addr: u64, fd: &EventFd) -> Result<bool>;
}
