//! The x86_64 extension of the boundary: the register state a VMM loads before the first
//! run. KVM's register layout is the vocabulary (see the crate docs for why that is enough).

use crate::{Result, Vcpu, Vm};

pub use kvm_bindings::{
    kvm_cpuid_entry2 as CpuidEntry, kvm_fpu as Fpu, kvm_regs as Regs, kvm_segment as Segment,
    kvm_sregs as Sregs,
};

/// A VM on an x86_64 hypervisor.
pub trait X86Vm: Vm {
    /// CPUID leaves the hypervisor can present to a guest; the VMM filters them.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
}

/// A vCPU on an x86_64 hypervisor.
pub trait X86Vcpu: Vcpu {
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()>;
    /// Writes `(index, value)` model-specific registers; all must be accepted.
    fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<()>;
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    fn sregs(&self) -> Result<Sregs>;
    fn set_sregs(&self, sregs: &Sregs) -> Result<()>;
    fn set_fpu(&self, fpu: &Fpu) -> Result<()>;
    /// Wires the local APIC as a PC does (LINT0 = ExtINT from the PIC, LINT1 = NMI), which is
    /// what the MP table tells the guest.
    fn set_lint(&self) -> Result<()>;
}
