//! The KVM backend: in-kernel irqchip (PIC + IOAPIC + local APICs) and PIT, irqfd for
//! interrupt lines, ioeventfd for queue notifications.

use crate::{Error, IrqLine, Result, Vcpu, VcpuExit, VcpuKick, Vm};
use kvm_bindings::{kvm_pit_config, kvm_run, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use std::cell::Cell;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
use std::sync::{Arc, Mutex, Once};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Ioctl {
        op,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// A VM on Linux KVM.
pub struct KvmVm {
    kvm: Kvm,
    vm: VmFd,
}

/// Where KVM puts the TSS it needs for real-mode emulation on Intel: three pages just
/// below the 4 GiB boundary, inside the MMIO hole, where no RAM or device sits.
const TSS_ADDRESS: usize = 0xfffb_d000;

impl KvmVm {
    /// Creates a VM with the in-kernel interrupt controllers and timer a PC guest expects.
    pub fn new() -> Result<KvmVm> {
        let kvm = Kvm::new().map_err(|e| Error::Open(e.errno_into()))?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        #[cfg(target_arch = "x86_64")]
        {
            vm.set_tss_address(TSS_ADDRESS)
                .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
            vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            // The dummy speaker port keeps the guest's PC-speaker probing off the exit path.
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }
        Ok(KvmVm { kvm, vm })
    }
}

trait ErrnoInto {
    fn errno_into(self) -> std::io::Error;
}

impl ErrnoInto for kvm_ioctls::Error {
    fn errno_into(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno())
    }
}

struct IrqFd(EventFd);

impl IrqLine for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;

    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host_addr: u64,
        size: u64,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    fn create_vcpu(&self, index: u32) -> Result<KvmVcpu> {
        install_kick_handler();
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        Ok(KvmVcpu {
            fd,
            kick: Arc::new(KvmKick(Mutex::new(None))),
        })
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Ioctl {
            op: "eventfd",
            source,
        })?;
        self.vm
            .register_irqfd(&fd, gsi)
            .map_err(ioctl("KVM_IRQFD"))?;
        Ok(Arc::new(IrqFd(fd)))
    }

    fn register_notifier(&self, addr: u64, fd: BorrowedFd<'_>) -> Result<bool> {
        let own = fd.try_clone_to_owned().map_err(|source| Error::Ioctl {
            op: "dup (ioeventfd)",
            source,
        })?;
        // SAFETY: a fresh duplicate of the caller's eventfd, owned by this wrapper alone.
        // KVM takes its own reference to the eventfd, so closing the duplicate afterwards
        // leaves the notifier in place.
        let event = unsafe { EventFd::from_raw_fd(own.into_raw_fd()) };
        self.vm
            .register_ioevent(&event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(ioctl("KVM_IOEVENTFD"))?;
        Ok(true)
    }
}

#[cfg(target_arch = "x86_64")]
impl crate::x86_64::X86Vm for KvmVm {
    fn supported_cpuid(&self) -> Result<Vec<crate::x86_64::CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut entries = cpuid.as_slice().to_vec();
        // KVM emulates the TSC-deadline timer in its local APIC but reports it through a
        // capability, not in the CPUID it returns. Without the bit the guest calibrates the
        // APIC timer against the PIT at boot, which costs time (and under nested
        // virtualization fails, leaving a slower clock-event device).
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            for e in entries.iter_mut().filter(|e| e.function == 1) {
                e.ecx |= 1 << 24;
            }
        }
        Ok(entries)
    }
}

/// A vCPU on KVM.
pub struct KvmVcpu {
    fd: VcpuFd,
    kick: Arc<KvmKick>,
}

/// Who to kick: the thread running the vCPU. Set on its first run, cleared when the vCPU is
/// dropped, so a late kick never signals a thread that moved on.
struct KvmKick(Mutex<Option<libc::pthread_t>>);

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick signal's handler: the
    /// handler sets `immediate_exit` from the vCPU's own thread (as Firecracker and Cloud
    /// Hypervisor do), so no other thread ever writes into a `kvm_run` that `KVM_RUN`
    /// holds. Const-initialised, so reading it in a signal handler allocates nothing.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

impl VcpuKick for KvmKick {
    fn kick(&self) {
        let target = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = *target {
            // SAFETY: the thread is alive while the entry is set (cleared under this lock
            // before the vCPU, which its thread owns, is dropped).
            unsafe {
                libc::pthread_kill(thread, SIGRTMIN());
            }
        }
    }
}

/// The kick: on the vCPU's thread, make the current or next `KVM_RUN` return at once. A
/// kick that lands between the run loop's check and `KVM_RUN` is caught by
/// `immediate_exit`; one inside `KVM_RUN` interrupts it (EINTR) by being a signal.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: set by this thread to its vCPU's kvm_run mapping, which stays mapped
        // until the vCPU is dropped on this thread, after which the pointer is cleared.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    // If it cannot be installed, kicks are lost; the VMM's stop loop keeps kicking and a
    // vCPU still leaves KVM_RUN at its next exit.
    ONCE.call_once(|| {
        let _ = register_signal_handler(SIGRTMIN(), on_kick);
    });
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        *self.kick.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Only the thread that ran the vCPU has the pointer; it is dropped there.
        KVM_RUN.with(|r| {
            if std::ptr::eq(r.get(), self.fd.get_kvm_run()) {
                r.set(std::ptr::null_mut());
            }
        });
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        {
            let mut target = self.kick.0.lock().unwrap_or_else(|e| e.into_inner());
            if target.is_none() {
                KVM_RUN.with(|r| r.set(self.fd.get_kvm_run() as *mut kvm_run));
                // SAFETY: pthread_self has no preconditions.
                *target = Some(unsafe { libc::pthread_self() });
            }
        }
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Re-arm: the kick has been seen. This thread is the only writer of its
                // kvm_run outside KVM_RUN (its signal handler runs on it too); the pointer
                // is the thread's own because `self.fd` is still borrowed by the match.
                let run = KVM_RUN.with(Cell::get);
                if !run.is_null() {
                    // SAFETY: this thread's vCPU's kvm_run mapping, alive with `self`.
                    unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
                }
                return Ok(VcpuExit::Interrupted);
            }
            Err(e) => return Err(ioctl("KVM_RUN")(e)),
        };
        use kvm_ioctls::VcpuExit as K;
        Ok(match exit {
            K::IoIn(port, data) => VcpuExit::IoIn { port, data },
            K::IoOut(port, data) => VcpuExit::IoOut { port, data },
            K::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            K::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            K::Shutdown => VcpuExit::Reset,
            K::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::Shutdown,
                other => VcpuExit::Fatal(format!("system event {other}")),
            },
            K::Intr => VcpuExit::Interrupted,
            K::FailEntry(reason, cpu) => VcpuExit::Fatal(format!(
                "KVM entry failed: hardware reason {reason:#x} on CPU {cpu}"
            )),
            K::InternalError => VcpuExit::Fatal("KVM internal error".into()),
            other => VcpuExit::Fatal(format!("unexpected exit {other:?}")),
        })
    }

    fn kicker(&self) -> Arc<dyn VcpuKick> {
        self.kick.clone()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ioctl, KvmVcpu};
    use crate::x86_64::{CpuidEntry, Fpu, Regs, Sregs, X86Vcpu};
    use crate::{Error, Result};
    use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};

    /// Local APIC register offsets and the delivery modes of its LVT entries.
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;

    impl X86Vcpu for KvmVcpu {
        fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
            let cpuid = CpuId::from_entries(entries)
                .map_err(|_| Error::MissingCapability("CPUID table too large"))?;
            self.fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))
        }

        fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<()> {
            let entries: Vec<kvm_msr_entry> = msrs
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries)
                .map_err(|_| Error::MissingCapability("MSR list too large"))?;
            let written = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
            if written != entries.len() {
                let index = entries[written].index;
                return Err(Error::Ioctl {
                    op: "KVM_SET_MSRS",
                    source: std::io::Error::other(format!("MSR {index:#x} was refused")),
                });
            }
            Ok(())
        }

        fn set_regs(&self, regs: &Regs) -> Result<()> {
            self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
        }

        fn sregs(&self) -> Result<Sregs> {
            self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
        }

        fn set_sregs(&self, sregs: &Sregs) -> Result<()> {
            self.fd.set_sregs(sregs).map_err(ioctl("KVM_SET_SREGS"))
        }

        fn set_fpu(&self, fpu: &Fpu) -> Result<()> {
            self.fd.set_fpu(fpu).map_err(ioctl("KVM_SET_FPU"))
        }

        fn set_lint(&self) -> Result<()> {
            let mut lapic = self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
            for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
                let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
                let value = u32::from_le_bytes(bytes);
                // Delivery mode lives in bits 8..11.
                let value = (value & !0x700) | (mode << 8);
                for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                    lapic.regs[offset + i] = b as _;
                }
            }
            self.fd.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
        }
    }
}
