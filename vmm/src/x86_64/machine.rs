//! The x86_64 machine on KVM: PC memory layout, PVH boot, MP table, 16550 at COM1, virtio-mmio
//! devices named on the command line, and the BIOS reset flag that tells a panic from a
//! reboot.

use super::{cpuid, layout, mptable, msrs, regs};
use crate::machine::{
    check_shape, map_memory, merge_cmdline, Arch, Bus, Common, Irq, Machine, Placed, Shared,
};
use crate::{Error, GuestExit, VmConfig};
use hk_devices::serial::Serial;
use hk_devices::virtio::mmio::MMIO_SIZE;
use hk_devices::Uart;
use hk_hypervisor::kvm::{KvmVcpu, KvmVm};
use hk_hypervisor::x86_64::{CpuidEntry, X86Vcpu, X86Vm};
use hk_hypervisor::Vm as _;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The x86_64 PC on KVM.
pub(crate) struct X86;

/// What every vCPU needs to be set up for the boot.
pub(crate) struct VcpuBoot {
    cpuid: Vec<CpuidEntry>,
    count: u32,
    entry: u64,
}

impl Arch for X86 {
    type Vm = KvmVm;
    type Boot = VcpuBoot;

    fn build(mut config: VmConfig) -> Result<Machine<X86>, Error> {
        let vm = KvmVm::new()?;
        let mem_bytes = check_shape(&config, mptable::MAX_CPUS)?;
        // Anonymous private mappings with MAP_NORESERVE: the host commits a page only when
        // the guest first touches it, so a 1 GiB VM costs what the guest uses.
        let mem = GuestMemoryMmap::from_ranges(&super::ram_ranges(mem_bytes))
            .map_err(|e| Error::Memory(e.to_string()))?;
        map_memory(&vm, &mem)?;

        let (mut loaded, kernel_end) = super::load_kernel(&mem, &config.kernel)?;
        if let Some(initrd) = &config.initrd {
            super::load_initrd(&mem, &mut loaded, kernel_end, initrd)?;
        }

        let mut common = Common::new(&mut config)?;
        let mut pio = Bus::default();
        let mut mmio = Bus::default();
        let serial_irq = Irq::line(vm.irq_line(layout::SERIAL_IRQ)?);
        let ready = common.input_ready()?;
        let console = std::mem::replace(&mut config.console, Box::new(std::io::sink()));
        let serial: Shared<dyn Uart + Send> =
            Arc::new(Mutex::new(Serial::new(serial_irq, console, ready)));
        pio.insert(u64::from(layout::SERIAL_PORT), 8, serial.clone());
        mmio.insert(layout::CONTROL_PAGE, 0x1000, common.control.clone());

        let slot = |i: usize| {
            let irq = layout::VIRTIO_FIRST_IRQ + i as u32;
            if irq >= layout::IOAPIC_PINS {
                return Err(Error::Config("too many devices".into()));
            }
            Ok((
                layout::VIRTIO_MMIO_BASE + i as u64 * MMIO_SIZE,
                MMIO_SIZE,
                irq,
            ))
        };
        let wired = common.wire(&vm, &mem, &mut mmio, &slot)?;
        let mut cmdline = vec![
            // The exit status depends on these (docs/guest-abi.md); they come first so the
            // caller's command line can still override them.
            "reboot=t,c,panic_w".to_string(),
            "panic=-1".to_string(),
        ];
        for (base, irq) in &wired.placed {
            cmdline.push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        }
        cmdline.push(format!("hk.ctl={:#x}", layout::CONTROL_PAGE));
        let cmdline = merge_cmdline(&config.cmdline, &cmdline.join(" "));
        super::write_cmdline(&mem, &cmdline)?;
        super::write_start_info(&mem, &loaded)?;
        mptable::write(&mem, config.cpus).map_err(|e| Error::Memory(e.to_string()))?;
        regs::write_tables(&mem).map_err(|e| Error::Memory(e.to_string()))?;
        // Linux writes 0 (clean) or 0x1234 (panic) here before it resets the CPU; a reset
        // that finds this value instead was no reboot the kernel asked for.
        mem.write_obj(
            layout::RESET_FLAG_UNSET,
            GuestAddress(layout::BIOS_RESET_FLAG),
        )
        .map_err(|e| Error::Memory(e.to_string()))?;

        let boot = VcpuBoot {
            cpuid: vm.supported_cpuid()?,
            count: config.cpus,
            entry: loaded.entry,
        };
        Ok(common.into_machine(Placed {
            vm,
            mem,
            boot,
            cpus: config.cpus,
            pio,
            mmio,
            console: serial,
            wired,
        }))
    }

    fn setup_vcpu(vm: &KvmVm, boot: &VcpuBoot, index: u32) -> Result<KvmVcpu, Error> {
        let vcpu = vm.create_vcpu(index)?;
        vcpu.set_cpuid(&cpuid::for_vcpu(&boot.cpuid, index, boot.count))?;
        vcpu.set_msrs(&msrs::boot_msrs())?;
        vcpu.set_fpu(&regs::fpu())?;
        // Application processors wait for INIT/SIPI from the boot CPU (in-kernel local
        // APIC); only the boot CPU starts at the PVH entry.
        if index == 0 {
            vcpu.set_regs(&regs::regs(boot.entry))?;
            vcpu.set_sregs(&regs::sregs(vcpu.sregs()?))?;
        }
        vcpu.set_lint()?;
        Ok(vcpu)
    }

    fn reset(mem: &GuestMemoryMmap, _warm: bool) -> GuestExit {
        // Linux writes the BIOS reset flag before any reboot; the command line makes panics
        // warm and everything else cold (docs/guest-abi.md). The VMM seeded it with a value
        // Linux never writes, so a reset that finds it is a triple fault.
        let flag: u16 = mem
            .read_obj(GuestAddress(layout::BIOS_RESET_FLAG))
            .unwrap_or(layout::RESET_FLAG_UNSET);
        match flag {
            layout::WARM_REBOOT => GuestExit::Panic,
            layout::RESET_FLAG_UNSET => GuestExit::TripleFault,
            _ => GuestExit::Reboot,
        }
    }
}
