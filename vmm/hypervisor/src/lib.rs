//! The hypervisor boundary of hk's VMM.
//!
//! Everything hk needs from a hypervisor fits in two traits, so that a second backend
//! (Apple Hypervisor.framework through the `applevisor` crate, on aarch64) can be added
//! without touching a device model or the event loop:
//!
//! - [`Vm`]: map guest memory, create vCPUs, hand out interrupt lines ([`IrqLine`]) and
//!   optionally turn guest MMIO writes into wake-ups of a descriptor
//!   ([`Vm::register_notifier`]; an eventfd on KVM).
//! - [`Vcpu`]: run until the guest needs the VMM and say why ([`VcpuExit`]), and give other
//!   threads a way to interrupt that run ([`VcpuKick`]).
//!
//! What is deliberately *not* in the boundary:
//! - Device models. They see guest memory (vm-memory) and an interrupt trigger, never a
//!   hypervisor type; they live in `hk-devices`.
//! - Boot-time register state. It is architecture-specific, so each architecture has its own
//!   extension trait next to the generic ones: `x86_64::X86Vcpu` (KVM's x86 register layout
//!   as its vocabulary) and [`aarch64::Aarch64Vcpu`] (general registers by their
//!   architectural names, the boot CPU's entry as the arm64 boot protocol wants it).
//!
//! The backends: [`kvm`] on Linux (x86_64), and `hvf`, Apple's Hypervisor.framework on
//! aarch64 macOS, built with the `hvf` feature (which hk-vmm turns on for macOS; on Linux it
//! only type-checks, since the framework exists on macOS alone). How HVF maps onto the
//! traits: `Vm::map_memory` → `hv_vm_map`, `Vm::create_vcpu` → `hv_vcpu_create` (on the
//! thread that will run it), `Vcpu::run` → `hv_vcpu_run` plus decoding of the exception
//! syndrome ([`aarch64::esr`]) into [`VcpuExit::MmioRead`]/[`VcpuExit::MmioWrite`] and of
//! PSCI calls ([`aarch64::psci`]), `VcpuKick::kick` → `hv_vcpus_exit`, `Vm::irq_line` → a
//! GIC SPI of the framework's GICv3, and `Vm::register_notifier` → `Ok(false)` (no
//! ioeventfd: the MMIO write traps and the transport signals its own event, which the device
//! thread waits on either way).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub mod aarch64;
#[cfg(feature = "hvf")]
pub mod hvf;
#[cfg(target_os = "linux")]
pub mod kvm;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod x86_64;

/// An error from the hypervisor, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the hypervisor (/dev/kvm): {0}")]
    Open(#[source] std::io::Error),
    /// A Hypervisor.framework call failed; `status` is its `hv_return_t` by name.
    #[error("{op}: {status}")]
    Framework { op: &'static str, status: String },
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
    /// The guest reset the machine (on x86: a triple fault, or a reset request; on aarch64:
    /// PSCI SYSTEM_RESET).
    Reset,
    /// The guest asked for a warm reset (aarch64: PSCI SYSTEM_RESET2), which is how Linux
    /// resets after a panic when the command line makes panics warm (docs/guest-abi.md).
    WarmReset,
    /// The guest powered the machine off.
    Shutdown,
    /// Another thread kicked this vCPU ([`VcpuKick::kick`]); the run loop should check
    /// whether the VM is stopping.
    Interrupted,
    /// Anything else: the VM cannot go on. The text says what happened.
    Fatal(String),
}

/// A vCPU, owned by the thread that created and runs it: it never moves to another thread
/// (Hypervisor.framework binds a vCPU to its thread), so it need not be `Send`.
pub trait Vcpu {
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

    /// Asks the hypervisor to signal `fd` (an eventfd) on every 32-bit guest write to `addr`
    /// instead of exiting to the vCPU thread. Returns `false` when the backend cannot; the
    /// write then arrives as an ordinary [`VcpuExit::MmioWrite`].
    fn register_notifier(&self, addr: u64, fd: BorrowedFd<'_>) -> Result<bool>;
}
