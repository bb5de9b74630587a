//! The Hypervisor.framework backend: Apple silicon, macOS 15 or later (for the framework's
//! GICv3). Built with the `hvf` feature; on Linux that only type-checks, since `applevisor`
//! links the framework on macOS alone. Not run on Apple hardware by hk's own tests
//! (docs/hvf.md says what was verified and how).
//!
//! - Memory: the VMM's own mappings, mapped into the guest with `hv_vm_map`.
//! - Interrupts: the framework's in-kernel GICv3; a device's line is an SPI, pulsed.
//! - vCPUs: created on the thread that runs them (the framework binds a vCPU to its thread).
//!   The boot CPU starts at the kernel; the others start off and wait for the guest's PSCI
//!   CPU_ON ([`psci::Cpus`]).
//! - Exits: data aborts with a valid syndrome become MMIO ([`esr`]); HVC and SMC are PSCI;
//!   WFI/WFE park the thread briefly; the virtual timer's exit masks the timer until the guest
//!   has dealt with it; trapped system registers read as zero.

use crate::aarch64::esr::{self, Access, Trap};
use crate::aarch64::psci::{self, Action, Cpus};
use crate::aarch64::Aarch64Vcpu;
use crate::{Error, IrqLine, Result, Vcpu, VcpuExit, VcpuKick, Vm};
use applevisor::prelude::{
    ExitReason, GicConfig, GicEnabled, HypervisorError, Reg, SysReg, VcpuHandle, VirtualMachine,
    VirtualMachineConfig, VirtualMachineInstance,
};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

fn framework(op: &'static str) -> impl FnOnce(HypervisorError) -> Error {
    move |e| Error::Framework {
        op,
        status: e.to_string(),
    }
}

/// EL1h (SP_EL1) with debug, SError, IRQ and FIQ masked: the arm64 boot protocol's entry
/// state, also a CPU_ON'd CPU's.
const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// CNTV_CTL_EL0's bits.
const TIMER_ENABLE: u64 = 1;
const TIMER_IMASK: u64 = 1 << 1;
const TIMER_ISTATUS: u64 = 1 << 2;

/// The longest a vCPU parks on WFI/WFE: interrupts between vCPUs (SGIs) reach the
/// framework's GIC without passing the VMM, so a parked vCPU looks again this often.
const MAX_PARK: Duration = Duration::from_millis(1);

/// The general registers by number, as a data abort's SRT and a system register trap's Rt
/// name them.
const X: [Reg; 31] = [
    Reg::X0,
    Reg::X1,
    Reg::X2,
    Reg::X3,
    Reg::X4,
    Reg::X5,
    Reg::X6,
    Reg::X7,
    Reg::X8,
    Reg::X9,
    Reg::X10,
    Reg::X11,
    Reg::X12,
    Reg::X13,
    Reg::X14,
    Reg::X15,
    Reg::X16,
    Reg::X17,
    Reg::X18,
    Reg::X19,
    Reg::X20,
    Reg::X21,
    Reg::X22,
    Reg::X23,
    Reg::X24,
    Reg::X25,
    Reg::X26,
    Reg::X27,
    Reg::X28,
    Reg::X29,
    Reg::X30,
];

/// Where the VMM puts the GIC (QEMU virt's addresses, in hk's aarch64 machine).
#[derive(Debug, Clone, Copy)]
pub struct GicLayout {
    pub distributor: u64,
    /// The first redistributor; one per vCPU follows at [`gic_sizes`]'s stride.
    pub redistributors: u64,
}

/// The framework's GIC sizes: the distributor's, and one redistributor's. The machine's
/// memory map must leave room for them.
pub fn gic_sizes() -> Result<(u64, u64)> {
    let dist =
        GicConfig::get_distributor_size().map_err(framework("hv_gic_get_distributor_size"))?;
    let redist =
        GicConfig::get_redistributor_size().map_err(framework("hv_gic_get_redistributor_size"))?;
    Ok((dist as u64, redist as u64))
}

/// Wakes parked vCPUs when a device raises an interrupt or the VMM kicks.
#[derive(Default)]
struct Parking {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Parking {
    fn wake_all(&self) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    fn park(&self, timeout: Duration) {
        let guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let seen = *guard;
        let _ = self
            .changed
            .wait_timeout_while(guard, timeout, |g| *g == seen);
    }
}

/// The process's VM on Hypervisor.framework (the framework allows one per process).
pub struct HvfVm {
    vm: VirtualMachineInstance<GicEnabled>,
    cpus: Arc<Cpus>,
    parking: Arc<Parking>,
    spis: (u32, u32),
}

impl HvfVm {
    /// Creates the VM for `cpus` vCPUs with the framework's GICv3 at `gic`.
    pub fn new(cpus: u32, gic: GicLayout) -> Result<HvfVm> {
        let mut config = GicConfig::new();
        config
            .set_distributor_base(gic.distributor)
            .map_err(framework("hv_gic_config_set_distributor_base"))?;
        config
            .set_redistributor_base(gic.redistributors)
            .map_err(framework("hv_gic_config_set_redistributor_base"))?;
        let vm = VirtualMachine::with_gic(VirtualMachineConfig::new(), config)
            .map_err(framework("hv_vm_create with a GIC"))?;
        let spis = GicConfig::get_spi_interrupt_range()
            .map_err(framework("hv_gic_get_spi_interrupt_range"))?;
        Ok(HvfVm {
            vm,
            cpus: Arc::new(Cpus::new(cpus)),
            parking: Arc::new(Parking::default()),
            spis,
        })
    }
}

/// A device's interrupt line: an SPI of the framework's GIC, raised and lowered at once
/// (the device tree describes these lines as edge-triggered).
struct Spi {
    vm: VirtualMachineInstance<GicEnabled>,
    intid: u32,
    parking: Arc<Parking>,
}

impl IrqLine for Spi {
    fn trigger(&self) -> std::io::Result<()> {
        let to_io = |e: HypervisorError| std::io::Error::other(e.to_string());
        self.vm.gic_set_spi(self.intid, true).map_err(to_io)?;
        self.vm.gic_set_spi(self.intid, false).map_err(to_io)?;
        // A vCPU parked on WFI takes it now rather than at its next look.
        self.parking.wake_all();
        Ok(())
    }
}

impl Vm for HvfVm {
    type Vcpu = HvfVcpu;

    unsafe fn map_memory(
        &self,
        _slot: u32,
        guest_addr: u64,
        host_addr: u64,
        size: u64,
    ) -> Result<()> {
        let flags = applevisor_sys::HV_MEMORY_READ
            | applevisor_sys::HV_MEMORY_WRITE
            | applevisor_sys::HV_MEMORY_EXEC;
        // SAFETY: the caller guarantees the host range stays mapped while the VM exists.
        let rc = unsafe {
            applevisor_sys::hv_vm_map(host_addr as *const _, guest_addr, size as usize, flags)
        };
        if rc != 0 {
            return Err(framework("hv_vm_map")(HypervisorError::from(rc)));
        }
        Ok(())
    }

    fn create_vcpu(&self, index: u32) -> Result<HvfVcpu> {
        let vcpu = self.vm.vcpu_create().map_err(framework("hv_vcpu_create"))?;
        vcpu.set_sys_reg(SysReg::MPIDR_EL1, psci::mpidr(index))
            .map_err(framework("hv_vcpu_set_sys_reg(MPIDR_EL1)"))?;
        let kick = Arc::new(HvfKick {
            vm: self.vm.clone(),
            handle: vcpu.get_handle(),
            cpus: self.cpus.clone(),
            parking: self.parking.clone(),
            index,
            kicked: AtomicBool::new(false),
        });
        Ok(HvfVcpu {
            vcpu,
            index,
            on: index == 0,
            cpus: self.cpus.clone(),
            parking: self.parking.clone(),
            kick,
            pending_load: None,
            buf: [0; 8],
            vtimer_masked: false,
        })
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>> {
        let (first, count) = self.spis;
        let intid = first
            .checked_add(gsi)
            .filter(|_| gsi < count)
            .ok_or(Error::MissingCapability("an SPI for every device"))?;
        Ok(Arc::new(Spi {
            vm: self.vm.clone(),
            intid,
            parking: self.parking.clone(),
        }))
    }

    fn register_notifier(&self, _addr: u64, _fd: BorrowedFd<'_>) -> Result<bool> {
        // No ioeventfd: the write traps, and the transport signals its own event.
        Ok(false)
    }
}

struct HvfKick {
    vm: VirtualMachineInstance<GicEnabled>,
    handle: VcpuHandle,
    cpus: Arc<Cpus>,
    parking: Arc<Parking>,
    index: u32,
    kicked: AtomicBool,
}

impl VcpuKick for HvfKick {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        // Wherever the vCPU is: off waiting for CPU_ON, parked on WFI, or in hv_vcpu_run.
        self.cpus.wake(self.index);
        self.parking.wake_all();
        if self.handle.is_valid() {
            let _ = self.vm.vcpus_exit(std::slice::from_ref(&self.handle));
        }
    }
}

/// A vCPU on Hypervisor.framework; it lives and dies on the thread that created it.
pub struct HvfVcpu {
    vcpu: applevisor::prelude::Vcpu,
    index: u32,
    /// Whether the vCPU runs guest code (not off by PSCI).
    on: bool,
    cpus: Arc<Cpus>,
    parking: Arc<Parking>,
    kick: Arc<HvfKick>,
    /// An MMIO load handed to the VMM, finished (register written, PC stepped) on the next
    /// run.
    pending_load: Option<Access>,
    buf: [u8; 8],
    vtimer_masked: bool,
}

/// What one trip into the guest produced, before it is lent out as a [`VcpuExit`].
enum Step {
    Again,
    Read { addr: u64, size: usize },
    Write { addr: u64, size: usize },
    Interrupted,
    Reset,
    WarmReset,
    Shutdown,
    Fatal(String),
}

impl HvfVcpu {
    fn reg(&self, reg: Reg) -> Result<u64> {
        self.vcpu.get_reg(reg).map_err(framework("hv_vcpu_get_reg"))
    }

    fn set_reg(&self, reg: Reg, value: u64) -> Result<()> {
        self.vcpu
            .set_reg(reg, value)
            .map_err(framework("hv_vcpu_set_reg"))
    }

    /// Steps over the trapping instruction (every A64 instruction is 4 bytes).
    fn skip(&self) -> Result<()> {
        self.set_reg(Reg::PC, self.reg(Reg::PC)?.wrapping_add(4))
    }

    fn start_at(&self, entry: u64, x0: u64) -> Result<()> {
        self.set_reg(Reg::PC, entry)?;
        self.set_reg(Reg::X0, x0)?;
        for r in [Reg::X1, Reg::X2, Reg::X3] {
            self.set_reg(r, 0)?;
        }
        self.set_reg(Reg::CPSR, PSTATE_EL1H_MASKED)
    }

    /// Unmasks the virtual timer once the guest no longer has it asserting (it acknowledged
    /// the interrupt, masked or reprogrammed the timer); the framework masked it when it
    /// reported the timer's exit.
    fn sync_vtimer(&mut self) -> Result<()> {
        if !self.vtimer_masked {
            return Ok(());
        }
        let ctl = self
            .vcpu
            .get_sys_reg(SysReg::CNTV_CTL_EL0)
            .map_err(framework("hv_vcpu_get_sys_reg(CNTV_CTL_EL0)"))?;
        let asserting =
            ctl & TIMER_ENABLE != 0 && ctl & TIMER_IMASK == 0 && ctl & TIMER_ISTATUS != 0;
        if !asserting {
            self.vcpu
                .set_vtimer_mask(false)
                .map_err(framework("hv_vcpu_set_vtimer_mask"))?;
            self.vtimer_masked = false;
        }
        Ok(())
    }

    /// Answers a PSCI call: x0 gets the result, or the call powers this CPU off or ends the
    /// VM.
    fn psci(&mut self) -> Result<Step> {
        let x = [
            self.reg(Reg::X0)?,
            self.reg(Reg::X1)?,
            self.reg(Reg::X2)?,
            self.reg(Reg::X3)?,
        ];
        Ok(match self.cpus.handle(self.index, psci::decode(x)) {
            Action::Return(value) => {
                self.set_reg(Reg::X0, value as u64)?;
                Step::Again
            }
            Action::PowerOff => {
                self.on = false;
                Step::Again
            }
            Action::SystemOff => Step::Shutdown,
            Action::SystemReset { warm: false } => Step::Reset,
            Action::SystemReset { warm: true } => Step::WarmReset,
        })
    }

    fn step(&mut self) -> Result<Step> {
        if let Some(load) = self.pending_load.take() {
            if let Some(value) = load.load_value(&self.buf[..load.size]) {
                self.set_reg(X[usize::from(load.reg)], value)?;
            }
            self.skip()?;
        }
        if self.kick.kicked.swap(false, Ordering::SeqCst) {
            return Ok(Step::Interrupted);
        }
        if !self.on {
            let kicked = || self.kick.kicked.load(Ordering::SeqCst);
            return match self.cpus.wait_until_on(self.index, &kicked) {
                Some((entry, context)) => {
                    self.start_at(entry, context)?;
                    self.on = true;
                    Ok(Step::Again)
                }
                // Kicked while off: the VMM decides whether the VM goes on.
                None => Ok(Step::Again),
            };
        }
        self.sync_vtimer()?;
        self.vcpu.run().map_err(framework("hv_vcpu_run"))?;
        let exit = self.vcpu.get_exit_info();
        match exit.reason {
            ExitReason::CANCELED => Ok(Step::Interrupted),
            ExitReason::VTIMER_ACTIVATED => {
                self.vtimer_masked = true;
                Ok(Step::Again)
            }
            ExitReason::EXCEPTION => {
                let syndrome = exit.exception.syndrome;
                match esr::decode(syndrome) {
                    Trap::DataAbort(access) => {
                        let addr = exit.exception.physical_address;
                        if access.write {
                            let value = match access.reg {
                                esr::ZERO_REGISTER => 0,
                                r => self.reg(X[usize::from(r)])?,
                            };
                            self.buf = access.store_bytes(value);
                            self.skip()?;
                            Ok(Step::Write {
                                addr,
                                size: access.size,
                            })
                        } else {
                            self.pending_load = Some(access);
                            self.buf = [0; 8];
                            Ok(Step::Read {
                                addr,
                                size: access.size,
                            })
                        }
                    }
                    Trap::Hvc(_) => self.psci(),
                    Trap::Smc(_) => {
                        self.skip()?;
                        self.psci()
                    }
                    Trap::Wait { .. } => {
                        self.skip()?;
                        self.parking.park(MAX_PARK);
                        Ok(Step::Again)
                    }
                    Trap::SysReg { read, reg } => {
                        if read && reg != esr::ZERO_REGISTER {
                            self.set_reg(X[usize::from(reg)], 0)?;
                        }
                        self.skip()?;
                        Ok(Step::Again)
                    }
                    Trap::Unsupported(class) => Ok(Step::Fatal(format!(
                        "vCPU {}: exception class {class:#x} (ESR {syndrome:#x}) at PC {:#x}, \
                         address {:#x}",
                        self.index,
                        self.reg(Reg::PC).unwrap_or(0),
                        exit.exception.physical_address
                    ))),
                }
            }
            other => Ok(Step::Fatal(format!(
                "vCPU {}: unexpected exit {other:?}",
                self.index
            ))),
        }
    }
}

impl Vcpu for HvfVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        let step = loop {
            match self.step()? {
                Step::Again => continue,
                step => break step,
            }
        };
        Ok(match step {
            Step::Read { addr, size } => VcpuExit::MmioRead {
                addr,
                data: &mut self.buf[..size],
            },
            Step::Write { addr, size } => VcpuExit::MmioWrite {
                addr,
                data: &self.buf[..size],
            },
            Step::Interrupted | Step::Again => VcpuExit::Interrupted,
            Step::Reset => VcpuExit::Reset,
            Step::WarmReset => VcpuExit::WarmReset,
            Step::Shutdown => VcpuExit::Shutdown,
            Step::Fatal(why) => VcpuExit::Fatal(why),
        })
    }

    fn kicker(&self) -> Arc<dyn VcpuKick> {
        self.kick.clone()
    }
}

impl Aarch64Vcpu for HvfVcpu {
    fn set_boot_state(&self, entry: u64, fdt: u64) -> Result<()> {
        self.start_at(entry, fdt)
    }
}
