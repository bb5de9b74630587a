//! The aarch64 machine on an aarch64 hypervisor (Hypervisor.framework on macOS): RAM at
//! 1 GiB, the hypervisor's GICv3 at QEMU virt's addresses, a PL011 console, the control
//! page, virtio-mmio windows described in the device tree, the kernel entered per the arm64
//! boot protocol, and PSCI resets telling a panic (warm) from a reboot (cold).

use super::layout::*;
use super::{lay_out, ram, Guest};
use crate::machine::{check_shape, map_memory, Arch, Bus, Common, Irq, Machine, Placed, Shared};
use crate::{Error, GuestExit, VmConfig};
use hk_devices::pl011::Pl011;
use hk_devices::Uart;
use hk_hypervisor::aarch64::Aarch64Vcpu;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

/// An aarch64 hypervisor hk can build its machine on.
pub(crate) trait Aarch64Hypervisor: hk_hypervisor::Vm + Sized
where
    Self::Vcpu: Aarch64Vcpu,
{
    /// Creates the VM for `cpus` vCPUs with a GICv3 at the machine's addresses; fails if
    /// the hypervisor's GIC does not fit them.
    fn create(cpus: u32) -> Result<Self, Error>;
}

#[cfg(target_os = "macos")]
impl Aarch64Hypervisor for hk_hypervisor::hvf::HvfVm {
    fn create(cpus: u32) -> Result<Self, Error> {
        let (dist, redist) = hk_hypervisor::hvf::gic_sizes()?;
        if dist > GIC_DIST_SIZE || redist != GIC_REDIST_SIZE {
            return Err(Error::Config(format!(
                "Hypervisor.framework's GIC (distributor {dist:#x}, redistributor {redist:#x} \
                 bytes) does not fit QEMU virt's map"
            )));
        }
        Ok(hk_hypervisor::hvf::HvfVm::new(
            cpus,
            hk_hypervisor::hvf::GicLayout {
                distributor: GIC_DIST,
                redistributors: GIC_REDIST,
            },
        )?)
    }
}

/// The aarch64 machine on hypervisor `V`.
pub(crate) struct Aarch64<V>(PhantomData<V>);

/// What the boot CPU needs; the others start off and wait for PSCI CPU_ON.
pub(crate) struct Boot {
    entry: u64,
    fdt: u64,
}

impl<V> Arch for Aarch64<V>
where
    V: Aarch64Hypervisor + 'static,
    V::Vcpu: Aarch64Vcpu,
{
    type Vm = V;
    type Boot = Boot;

    fn build(mut config: VmConfig) -> Result<Machine<Self>, Error> {
        let mem_bytes = check_shape(&config, MAX_CPUS)?;
        let vm = V::create(config.cpus)?;
        let mem = ram(mem_bytes)?;
        map_memory(&vm, &mem)?;

        let mut common = Common::new(&mut config)?;
        let mut mmio = Bus::default();
        let uart_irq = Irq::line(vm.irq_line(UART_SPI)?);
        let ready = common.input_ready()?;
        let console = std::mem::replace(&mut config.console, Box::new(std::io::sink()));
        let uart: Shared<dyn Uart + Send> =
            Arc::new(Mutex::new(Pl011::new(uart_irq, console, ready)));
        mmio.insert(UART, UART_SIZE, uart.clone());
        mmio.insert(CONTROL_PAGE, 0x1000, common.control.clone());
        let slot = |i: usize| {
            virtio_slot(i)
                .map(|(base, spi)| (base, VIRTIO_MMIO_SIZE, spi))
                .ok_or_else(|| Error::Config("too many devices".into()))
        };
        let wired = common.wire(&vm, &mem, &mut mmio, &slot)?;

        let layout = lay_out(
            &mem,
            &Guest {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cpus: config.cpus,
                cmdline: &config.cmdline,
                virtio: &wired.placed,
            },
        )?;
        Ok(common.into_machine(Placed {
            vm,
            mem,
            boot: Boot {
                entry: layout.entry,
                fdt: layout.fdt.0,
            },
            cpus: config.cpus,
            pio: Bus::default(),
            mmio,
            console: uart,
            wired,
        }))
    }

    fn setup_vcpu(vm: &V, boot: &Boot, index: u32) -> Result<V::Vcpu, Error> {
        let vcpu = vm.create_vcpu(index)?;
        if index == 0 {
            vcpu.set_boot_state(boot.entry, boot.fdt)?;
        }
        Ok(vcpu)
    }

    fn reset(_: &GuestMemoryMmap, warm: bool) -> GuestExit {
        if warm {
            GuestExit::Panic
        } else {
            GuestExit::Reboot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, GuestExit, VmConfig};
    use hk_hypervisor::{IrqLine, Vcpu, VcpuExit, VcpuKick};
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::{Bytes, GuestAddress};

    /// A hypervisor that records what the machine asks of it; its vCPUs power off at once.
    struct FakeVm {
        mapped: Mutex<Vec<(u64, u64)>>,
        boot: Arc<Mutex<Vec<(u32, u64, u64)>>>,
        created: AtomicUsize,
    }

    struct FakeVcpu {
        index: u32,
        boot: Arc<Mutex<Vec<(u32, u64, u64)>>>,
    }

    struct NoKick;
    impl VcpuKick for NoKick {
        fn kick(&self) {}
    }

    struct NoLine;
    impl IrqLine for NoLine {
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Vcpu for FakeVcpu {
        fn run(&mut self) -> hk_hypervisor::Result<VcpuExit<'_>> {
            Ok(VcpuExit::Shutdown)
        }
        fn kicker(&self) -> Arc<dyn VcpuKick> {
            Arc::new(NoKick)
        }
    }

    impl Aarch64Vcpu for FakeVcpu {
        fn set_boot_state(&self, entry: u64, fdt: u64) -> hk_hypervisor::Result<()> {
            self.boot.lock().unwrap().push((self.index, entry, fdt));
            Ok(())
        }
    }

    impl hk_hypervisor::Vm for FakeVm {
        type Vcpu = FakeVcpu;
        unsafe fn map_memory(
            &self,
            _: u32,
            guest: u64,
            _: u64,
            size: u64,
        ) -> hk_hypervisor::Result<()> {
            self.mapped.lock().unwrap().push((guest, size));
            Ok(())
        }
        fn create_vcpu(&self, index: u32) -> hk_hypervisor::Result<FakeVcpu> {
            self.created.fetch_add(1, Ordering::SeqCst);
            Ok(FakeVcpu {
                index,
                boot: self.boot.clone(),
            })
        }
        fn irq_line(&self, _: u32) -> hk_hypervisor::Result<Arc<dyn IrqLine>> {
            Ok(Arc::new(NoLine))
        }
        fn register_notifier(&self, _: u64, _: BorrowedFd<'_>) -> hk_hypervisor::Result<bool> {
            Ok(false)
        }
    }

    impl Aarch64Hypervisor for FakeVm {
        fn create(_: u32) -> Result<Self, Error> {
            Ok(FakeVm {
                mapped: Mutex::new(Vec::new()),
                boot: Arc::new(Mutex::new(Vec::new())),
                created: AtomicUsize::new(0),
            })
        }
    }

    /// An arm64 Image header (text_offset 0, 4 MiB image_size) and a page of "code".
    fn fake_image(dir: &std::path::Path) -> std::path::PathBuf {
        let mut image = vec![0u8; 0x2000];
        image[16..24].copy_from_slice(&(4u64 << 20).to_le_bytes());
        image[56..60].copy_from_slice(b"ARM\x64");
        image[0x1000..0x1004].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let path = dir.join("Image");
        std::fs::write(&path, image).unwrap();
        path
    }

    fn read32(bus: &Bus, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        bus.read(addr, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_machine_places_its_devices_and_boots_the_first_cpu_at_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"070701 not really a cpio").unwrap();
        let config = VmConfig {
            kernel: fake_image(dir.path()),
            initrd: Some(initrd),
            cmdline: "quiet".into(),
            cpus: 2,
            memory_mib: 128,
            disks: vec![Disk {
                path: disk,
                read_only: true,
                serial: "d0".into(),
            }],
            shares: vec![],
            rng: true,
            vsock: None,
            net: vec![],
            console: Box::new(std::io::sink()),
            console_input: None,
            start: std::time::Instant::now(),
            seccomp: false,
        };
        let machine = Aarch64::<FakeVm>::build(config).unwrap();

        assert_eq!(*machine.vm.mapped.lock().unwrap(), [(RAM_BASE, 128 << 20)]);
        // The PL011 answers with its PrimeCell ID at QEMU virt's address.
        assert_eq!(read32(&machine.mmio, UART + 0xfe0), 0x11);
        assert_eq!(read32(&machine.mmio, UART + 0xff0), 0x0d);
        // Two virtio-mmio windows ("virt" magic, version 2), disk then rng, then nothing.
        for (addr, id) in [(VIRTIO_MMIO_BASE, 2), (VIRTIO_MMIO_BASE + 0x200, 4)] {
            assert_eq!(read32(&machine.mmio, addr), 0x7472_6976);
            assert_eq!(read32(&machine.mmio, addr + 4), 2);
            assert_eq!(read32(&machine.mmio, addr + 8), id);
        }
        assert_eq!(read32(&machine.mmio, VIRTIO_MMIO_BASE + 0x400), u32::MAX);
        // The kernel at the bottom of RAM, the device tree (magic d00dfeed) at the top.
        assert_eq!(machine.boot.entry, RAM_BASE);
        let code: u32 = machine
            .mem
            .read_obj(GuestAddress(RAM_BASE + 0x1000))
            .unwrap();
        assert_eq!(code, 0xefbe_adde);
        assert_eq!(machine.boot.fdt, RAM_BASE + (128 << 20) - (2 << 20));
        let magic: u32 = machine
            .mem
            .read_obj(GuestAddress(machine.boot.fdt))
            .unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);

        // Both vCPUs are created; only the boot CPU gets the entry state. The fake vCPUs
        // power off, which ends the VM as a power-off.
        let boot = machine.vm.boot.clone();
        let outcome = machine.run().unwrap();
        assert_eq!(outcome.exit, GuestExit::PowerOff);
        assert_eq!(
            *boot.lock().unwrap(),
            [(0, RAM_BASE, RAM_BASE + (126 << 20))]
        );
    }

    #[test]
    fn resets_tell_a_panic_from_a_reboot() {
        let mem = ram(64 << 20).unwrap();
        assert_eq!(Aarch64::<FakeVm>::reset(&mem, true), GuestExit::Panic);
        assert_eq!(Aarch64::<FakeVm>::reset(&mem, false), GuestExit::Reboot);
    }
}
