//! Running a VM until the guest ends, whatever its architecture: the devices every machine
//! has, the vCPU threads and their exits, the VMM's own loop. Where things sit in guest
//! memory, how the kernel is loaded and how each vCPU starts is the architecture's
//! ([`Arch`]): `crate::x86_64::machine` and `crate::aarch64::machine` build a [`Machine`].

use crate::{Error, GuestExit, Outcome, VmConfig};
use hk_devices::control::{ControlEvent, ControlPage};
use hk_devices::event::{Event, Interest, Poller};
use hk_devices::virtio::block::Block;
#[cfg(target_os = "linux")]
use hk_devices::virtio::fs::{Fs, VIRTIO_ID_FS};
use hk_devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use hk_devices::virtio::net::{ErrorSink, Net, NetBackend, StreamBackend};
use hk_devices::virtio::rng::Rng;
use hk_devices::virtio::vsock::{Vsock, VsockHost};
use hk_devices::virtio::worker::{panic_text, Confine, Fatal};
use hk_devices::virtio::{VirtioDevice, VirtioInterrupt};
use hk_devices::{BusDevice, Interrupt, Uart};
use hk_hypervisor::{IrqLine, Vcpu, VcpuExit, VcpuKick};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

/// The public VM, on the machine this host has: x86_64 on KVM (Linux), aarch64 on
/// Hypervisor.framework (macOS). Other hosts build the library without it.
#[cfg(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
))]
mod host {
    use super::{Arch, Machine, Stop};
    use crate::{Error, GuestExit, Outcome, VmConfig};
    use hk_devices::virtio::vsock::VsockHost;
    use std::sync::Arc;

    /// The machine hk builds on this host: x86_64 on KVM (Linux), aarch64 on
    /// Hypervisor.framework (macOS).
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    type Host = crate::x86_64::machine::X86;
    #[cfg(all(target_os = "macos", target_arch = "aarch64"))]
    type Host = crate::aarch64::machine::Aarch64<hk_hypervisor::hvf::HvfVm>;

    /// Boots `config` on this host's hypervisor and runs it until the guest ends.
    pub fn run(config: VmConfig) -> Result<Outcome, Error> {
        Vm::new(config)?.run()
    }

    /// A VM built and ready to boot.
    pub struct Vm {
        machine: Machine<Host>,
    }

    impl Vm {
        /// Creates the VM on this host's hypervisor (KVM, or Hypervisor.framework): memory,
        /// kernel, devices. Nothing runs until [`Vm::run`].
        pub fn new(config: VmConfig) -> Result<Vm, Error> {
            Ok(Vm {
                machine: Host::build(config)?,
            })
        }

        /// The host end of the guest's vsock, when the VM has one.
        pub fn vsock(&self) -> Option<VsockHost> {
            self.machine.vsock.clone()
        }

        /// A handle that stops the VM from any thread.
        pub fn stop_handle(&self) -> StopHandle {
            StopHandle(self.machine.stop.clone())
        }

        /// Boots the guest and runs it until it ends or is stopped.
        pub fn run(self) -> Result<Outcome, Error> {
            self.machine.run()
        }
    }

    /// Stops a VM: its [`Vm::run`] returns with [`GuestExit::Stopped`] (unless the guest ended
    /// first). Stopping a VM that has ended does nothing.
    #[derive(Clone)]
    pub struct StopHandle(Arc<Stop>);

    impl StopHandle {
        pub fn stop(&self) {
            self.0.request(GuestExit::Stopped);
        }
    }
}
#[cfg(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
))]
pub use host::{run, StopHandle, Vm};

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A device whose lock was poisoned by a panicking vCPU is still the best state there is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An [`IrqLine`] of the hypervisor, seen by a device as its [`Interrupt`].
pub(crate) struct Irq(pub(crate) Arc<dyn IrqLine>);

impl Irq {
    pub(crate) fn line(line: Arc<dyn IrqLine>) -> Arc<dyn Interrupt> {
        Arc::new(Irq(line))
    }
}

impl Interrupt for Irq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

pub(crate) type Shared<T> = Arc<Mutex<T>>;

/// Devices at guest addresses (MMIO) or ports (PIO), looked up on each exit.
#[derive(Default, Clone)]
pub(crate) struct Bus {
    ranges: Vec<(u64, u64, Shared<dyn BusDevice>)>,
}

impl Bus {
    pub(crate) fn insert(&mut self, base: u64, len: u64, device: Shared<dyn BusDevice>) {
        self.ranges.push((base, len, device));
    }

    fn find(&self, addr: u64) -> Option<(&Shared<dyn BusDevice>, u64)> {
        self.ranges
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - base < *len)
            .map(|(base, _, dev)| (dev, addr - base))
    }

    pub(crate) fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((dev, offset)) => lock(dev).read(offset, data),
            // Nothing there: an open bus reads all ones.
            None => data.fill(0xff),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        if let Some((dev, offset)) = self.find(addr) {
            lock(dev).write(offset, data)
        }
    }
}

/// State the vCPU threads, the device threads and the control page share.
pub(crate) struct Stop {
    exit: Mutex<Option<GuestExit>>,
    boot_time: Mutex<Option<Duration>>,
    requested: AtomicBool,
    event: Event,
}

impl Stop {
    /// The first reason to stop wins; later ones (other vCPUs resetting too) are noise.
    fn request(&self, exit: GuestExit) {
        let mut slot = lock(&self.exit);
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.event.signal();
    }
}

/// What differs between architectures once the machine is built: how each vCPU is set up
/// for the boot, and what a reset the guest asked for means.
pub(crate) trait Arch: Sized + 'static {
    type Vm: hk_hypervisor::Vm + 'static;
    /// What every vCPU thread needs to set its vCPU up.
    type Boot: Send + Sync + 'static;

    /// Creates the VM on the hypervisor and builds the machine for `config`.
    fn build(config: VmConfig) -> Result<Machine<Self>, Error>;

    /// Creates vCPU `index` on the calling thread, ready for the boot.
    fn setup_vcpu(
        vm: &Self::Vm,
        boot: &Self::Boot,
        index: u32,
    ) -> Result<<Self::Vm as hk_hypervisor::Vm>::Vcpu, Error>;

    /// How the VM ends when the guest resets it (`warm`: it asked for a warm reset).
    fn reset(mem: &GuestMemoryMmap, warm: bool) -> GuestExit;
}

/// A built VM: everything [`Machine::run`] needs.
pub(crate) struct Machine<A: Arch> {
    pub(crate) vm: Arc<A::Vm>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) boot: A::Boot,
    pub(crate) cpus: u32,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) console: Shared<dyn Uart + Send>,
    pub(crate) input: Option<ConsoleInput>,
    pub(crate) transports: Vec<Shared<MmioTransport>>,
    /// Signalled by a transport whose driver set DRIVER_OK: the device is started on the
    /// VMM's thread, never on a (confined) vCPU thread.
    pub(crate) activation: Event,
    pub(crate) vsock: Option<VsockHost>,
    pub(crate) stop: Arc<Stop>,
    /// Confines each vCPU thread once its vCPU is set up (a seccomp filter), if asked to.
    pub(crate) vcpu_confine: Option<Confine>,
}

/// The console's input, and the serial port's event saying the guest can take more.
pub(crate) struct ConsoleInput {
    file: File,
    ready: Event,
}

/// The part of a machine every architecture has, made from the configuration before the
/// architecture places it: the stop state, the control page, the virtio devices, the console
/// input and the thread confinement.
pub(crate) struct Common {
    pub(crate) stop: Arc<Stop>,
    pub(crate) control: Shared<ControlPage>,
    pub(crate) devices: Vec<Box<dyn VirtioDevice>>,
    pub(crate) vsock: Option<VsockHost>,
    pub(crate) input: Option<ConsoleInput>,
    fatal: Fatal,
    confinement: Confinement,
}

/// How each kind of thread is confined, if at all.
struct Confinement {
    vcpu: Option<Confine>,
    device: Option<Confine>,
    share: Option<Confine>,
}

/// The virtio devices on the bus.
pub(crate) struct Wired {
    transports: Vec<Shared<MmioTransport>>,
    /// Asks the VMM's thread to activate the transports whose driver is ready.
    activation: Event,
    /// Where each device went: its window's base and its interrupt line, in device order.
    pub(crate) placed: Vec<(u64, u32)>,
}

/// Checks the CPU count and memory size every machine needs; the memory size in bytes.
pub(crate) fn check_shape(config: &VmConfig, max_cpus: u32) -> Result<u64, Error> {
    if config.cpus == 0 || config.cpus > max_cpus {
        return Err(Error::Config(format!(
            "cpus must be 1 to {max_cpus}, not {}",
            config.cpus
        )));
    }
    config
        .memory_mib
        .checked_mul(1 << 20)
        .filter(|&b| b >= 64 << 20)
        .ok_or_else(|| Error::Config("memory must be at least 64 MiB".into()))
}

/// Maps every region of `mem` into the VM, slot by slot.
pub(crate) fn map_memory<V: hk_hypervisor::Vm>(vm: &V, mem: &GuestMemoryMmap) -> Result<(), Error> {
    use vm_memory::{Address, GuestMemory, GuestMemoryRegion};
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(e.to_string()))?;
        // SAFETY: `mem` is kept in the Machine and outlives the VM (the VM is dropped with
        // it, after every vCPU thread has been joined).
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().raw_value(),
                host as u64,
                region.len(),
            )?;
        }
    }
    Ok(())
}

impl Common {
    /// Opens the configured devices (disks, shares, rng, vsock, NICs) in the order the
    /// guest will see them, and makes the control page and the confinement.
    pub(crate) fn new(config: &mut VmConfig) -> Result<Common, Error> {
        let stop = Arc::new(Stop {
            exit: Mutex::new(None),
            boot_time: Mutex::new(None),
            requested: AtomicBool::new(false),
            event: Event::new().map_err(|e| Error::Io("event", e))?,
        });
        let input = match config.console_input.take() {
            Some(file) => Some(ConsoleInput {
                file,
                ready: Event::new().map_err(|e| Error::Io("event", e))?,
            }),
            None => None,
        };
        let control = {
            let stop = stop.clone();
            let start = config.start;
            ControlPage::new(move |event| match event {
                ControlEvent::BootComplete => {
                    let mut t = lock(&stop.boot_time);
                    if t.is_none() {
                        *t = Some(start.elapsed());
                    }
                }
                ControlEvent::Exit(status) => stop.request(GuestExit::Status(status)),
                ControlEvent::PowerOff => stop.request(GuestExit::PowerOff),
            })
        };

        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for disk in &config.disks {
            devices.push(Box::new(Block::open(
                &disk.path,
                disk.read_only,
                &disk.serial,
            )?));
        }
        shares(config, &mut devices)?;
        if config.rng {
            devices.push(Box::new(Rng::new()));
        }
        let mut vsock = None;
        if let Some(cfg) = &config.vsock {
            let device = Vsock::new(cfg)?;
            vsock = Some(device.host());
            devices.push(Box::new(device));
        }
        for (i, nic) in std::mem::take(&mut config.net).into_iter().enumerate() {
            let backend: Box<dyn NetBackend> = match nic.backend {
                crate::NetBackend::Stream(stream) => {
                    Box::new(StreamBackend::new(stream).map_err(Error::Net)?)
                }
                crate::NetBackend::Custom(backend) => backend,
            };
            // A backend that fails leaves the VM running without its link: say so once.
            let on_error: ErrorSink = Arc::new(|why| eprintln!("hk: {why}"));
            devices.push(Box::new(
                Net::new(
                    &format!("net{i}"),
                    backend,
                    nic.mac,
                    nic.mtu,
                    Some(on_error),
                )
                .map_err(Error::Net)?,
            ));
        }
        // A device thread that fails or panics stops the VM instead of leaving it waiting.
        let fatal: Fatal = {
            let stop = stop.clone();
            Arc::new(move |why| stop.request(GuestExit::Crash(why)))
        };
        Ok(Common {
            stop,
            control: Arc::new(Mutex::new(control)),
            devices,
            vsock,
            input,
            fatal,
            confinement: confinement(config.seccomp)?,
        })
    }

    /// The console input's readiness event, for the UART to signal, if there is input.
    pub(crate) fn input_ready(&self) -> Result<Option<Event>, Error> {
        match &self.input {
            Some(i) => Ok(Some(
                i.ready.try_clone().map_err(|e| Error::Io("event", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Puts device `i` on the MMIO bus at `slot(i)` = (base, size, interrupt line), with a
    /// queue notifier where the hypervisor has them.
    pub(crate) fn wire<V: hk_hypervisor::Vm>(
        &mut self,
        vm: &V,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        slot: &dyn Fn(usize) -> Result<(u64, u64, u32), Error>,
    ) -> Result<Wired, Error> {
        let activation = Event::new().map_err(|e| Error::Io("event", e))?;
        let mut transports = Vec::new();
        let mut placed = Vec::new();
        for (i, device) in std::mem::take(&mut self.devices).into_iter().enumerate() {
            let (base, size, irq) = slot(i)?;
            let line = Irq::line(vm.irq_line(irq)?);
            let notify = Event::new().map_err(|e| Error::Io("event", e))?;
            vm.register_notifier(base + REG_QUEUE_NOTIFY, notify.as_fd())?;
            let confine = if is_share(&*device) {
                self.confinement.share.clone()
            } else {
                self.confinement.device.clone()
            };
            let transport = transport(
                device,
                mem.clone(),
                VirtioInterrupt::new(line),
                notify,
                (self.fatal.clone(), confine),
                &activation,
            )?;
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(base, size, transport.clone());
            transports.push(transport);
            placed.push((base, irq));
        }
        Ok(Wired {
            transports,
            activation,
            placed,
        })
    }

    /// The machine, once the architecture placed everything.
    pub(crate) fn into_machine<A: Arch>(self, placed: Placed<A>) -> Machine<A> {
        Machine {
            vm: Arc::new(placed.vm),
            mem: placed.mem,
            boot: placed.boot,
            cpus: placed.cpus,
            pio: placed.pio,
            mmio: placed.mmio,
            console: placed.console,
            input: self.input,
            transports: placed.wired.transports,
            activation: placed.wired.activation,
            vsock: self.vsock,
            stop: self.stop,
            vcpu_confine: self.confinement.vcpu,
        }
    }
}

/// What an architecture's builder made and placed.
pub(crate) struct Placed<A: Arch> {
    pub(crate) vm: A::Vm,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) boot: A::Boot,
    pub(crate) cpus: u32,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) console: Shared<dyn Uart + Send>,
    pub(crate) wired: Wired,
}

/// virtio-fs shares, one device each (Linux: the passthrough file system is Linux's).
#[cfg(target_os = "linux")]
fn shares(config: &VmConfig, devices: &mut Vec<Box<dyn VirtioDevice>>) -> Result<(), Error> {
    for (i, share) in config.shares.iter().enumerate() {
        if config.shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(Error::Config(format!(
                "share tag {:?} used twice",
                share.tag
            )));
        }
        devices.push(Box::new(Fs::new(
            &share.host_dir,
            &share.tag,
            share.read_only,
            share.cache,
        )?));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn shares(config: &VmConfig, _: &mut Vec<Box<dyn VirtioDevice>>) -> Result<(), Error> {
    if config.shares.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(
            "shared directories (virtio-fs) are not available on this host yet".into(),
        ))
    }
}

#[cfg(target_os = "linux")]
fn is_share(device: &dyn VirtioDevice) -> bool {
    device.device_type() == VIRTIO_ID_FS
}

#[cfg(not(target_os = "linux"))]
fn is_share(_: &dyn VirtioDevice) -> bool {
    false
}

/// The vCPU, device and share threads' confinement: seccomp filters on Linux, each thread
/// under its kind's (a share's thread works on files, the others only on descriptors they
/// were given).
#[cfg(target_os = "linux")]
fn confinement(enabled: bool) -> Result<Confinement, Error> {
    if !enabled {
        return Ok(Confinement {
            vcpu: None,
            device: None,
            share: None,
        });
    }
    let confine_with = |filters: crate::seccomp::DeviceFilters| -> Confine {
        let filters = Arc::new(filters);
        Arc::new(move || crate::seccomp::confine_device_thread(&filters).map_err(|e| e.to_string()))
    };
    let vcpu = Arc::new(crate::seccomp::vcpu_filter()?);
    let vcpu: Confine =
        Arc::new(move || crate::seccomp::confine_thread(&vcpu).map_err(|e| e.to_string()));
    Ok(Confinement {
        vcpu: Some(vcpu),
        device: Some(confine_with(crate::seccomp::device_filters()?)),
        share: Some(confine_with(crate::seccomp::fs_filters()?)),
    })
}

/// seccomp is Linux's; elsewhere asking for confinement is an error rather than a VM that
/// silently runs unconfined.
#[cfg(not(target_os = "linux"))]
fn confinement(enabled: bool) -> Result<Confinement, Error> {
    if enabled {
        return Err(Error::Config(
            "thread confinement (seccomp) is Linux's; run with seccomp off on this host".into(),
        ));
    }
    Ok(Confinement {
        vcpu: None,
        device: None,
        share: None,
    })
}

impl<A: Arch> Machine<A> {
    pub(crate) fn run(self) -> Result<Outcome, Error> {
        let Machine {
            vm,
            mem,
            boot,
            cpus,
            pio,
            mmio,
            console: serial,
            input,
            transports,
            activation,
            vsock,
            stop,
            vcpu_confine,
        } = self;
        let poller = Poller::new().map_err(|e| Error::Io("poller", e))?;
        poller
            .add(stop.event.as_raw_fd(), STOP_TOKEN, Interest::Read)
            .map_err(|e| Error::Io("poller", e))?;
        poller
            .add(activation.as_raw_fd(), ACTIVATE_TOKEN, Interest::Read)
            .map_err(|e| Error::Io("poller", e))?;

        // Each vCPU is created and set up on the thread that runs it, as QEMU does: a vCPU
        // never changes threads, which Hypervisor.framework requires and which spares
        // nested hypervisors a migration before the first instruction. None runs before all
        // exist: the boot CPU would otherwise start application processors KVM does not
        // know yet, and they would never come up.
        let boot = Arc::new(boot);
        let start = Arc::new(StartGate::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for index in 0..cpus {
            let (vm, boot, ready, start) =
                (vm.clone(), boot.clone(), ready_tx.clone(), start.clone());
            let (pio, mmio, stop, mem) = (pio.clone(), mmio.clone(), stop.clone(), mem.clone());
            let confine = vcpu_confine.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                // vCPU threads only decode exits: a small stack keeps the VMM small.
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut vcpu = match A::setup_vcpu(&vm, &boot, index) {
                        Ok(vcpu) => vcpu,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(vcpu.kicker()));
                    drop(ready);
                    if !start.wait() {
                        return;
                    }
                    // Set up, the vCPU only runs and decodes exits from here on.
                    if let Some(confine) = confine {
                        if let Err(e) = confine() {
                            stop.request(GuestExit::Crash(format!("vCPU {index}: {e}")));
                            return;
                        }
                    }
                    // A bug in exit handling must stop the VM, not leave the VMM waiting
                    // for a vCPU that is gone.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_vcpu::<A>(&mut vcpu, &pio, &mmio, &stop, &mem)
                    }));
                    if let Err(panic) = ran {
                        stop.request(GuestExit::Crash(format!(
                            "vCPU {index} panicked: {}",
                            panic_text(&*panic)
                        )));
                    }
                })
                .map_err(|e| Error::Io("spawning a vCPU thread", e))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut kickers: Vec<Arc<dyn VcpuKick>> = Vec::new();
        let mut setup_error = None;
        for _ in 0..cpus {
            // A thread that died without a word (it panicked) counts as a failed setup.
            let result = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(Error::Config("a vCPU thread died during setup".into())));
            match result {
                Ok(kicker) => kickers.push(kicker),
                Err(e) => {
                    stop.request(GuestExit::Crash(e.to_string()));
                    setup_error = Some(e);
                }
            }
        }
        start.open(setup_error.is_none());

        let mut console = match input {
            Some(input) => Some(ConsoleFeed::start(&poller, input, &serial)?),
            None => None,
        };

        let mut events = Vec::with_capacity(4);
        'run: loop {
            if let Err(e) = poller.wait(None, &mut events) {
                stop.request(GuestExit::Crash(format!("waiting for events: {e}")));
                break;
            }
            for &token in &events {
                if token == STOP_TOKEN {
                    break 'run;
                }
                if token == ACTIVATE_TOKEN {
                    activation.consume();
                    for transport in &transports {
                        lock(transport).activate_pending();
                    }
                    continue;
                }
                if let Some(feed) = console.as_mut() {
                    feed.on_event(&poller, token, &serial);
                }
            }
        }

        // Kick until every vCPU thread is out: a kick can land before a vCPU's first run,
        // and an application processor never started by the guest sits in KVM_RUN (or, on
        // aarch64, waits for a PSCI CPU_ON).
        while threads.iter().any(|t| !t.is_finished()) {
            for k in &kickers {
                k.kick();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for t in threads {
            let _ = t.join();
        }
        let _ = lock(&serial).flush();
        // Stops and joins the device threads; host ends of vsock connections close.
        drop(transports);
        drop(vsock);
        drop(vm);
        let exit = lock(&stop.exit)
            .take()
            .unwrap_or_else(|| GuestExit::Crash("stopped without a reason".into()));
        if let Some(e) = setup_error {
            return Err(e);
        }
        let boot_time = *lock(&stop.boot_time);
        Ok(Outcome { exit, boot_time })
    }
}

/// The transport of one device as the VMM wires it. Its activation (files opened, the
/// device's thread started) waits for the VMM's thread, which `activation` wakes: a vCPU
/// thread under its seccomp filter can do neither, and a thread it started would inherit
/// the vCPU filter instead of the device filter.
pub(crate) fn transport(
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    notify: Event,
    (fatal, confine): (Fatal, Option<Confine>),
    activation: &Event,
) -> Result<MmioTransport, Error> {
    let mut transport = MmioTransport::new(device, mem, interrupt, notify, fatal, confine);
    transport.defer_activation(activation.try_clone().map_err(|e| Error::Io("event", e))?);
    Ok(transport)
}

/// Lets the vCPU threads run once all of them are set up, or tells them to give up.
#[derive(Default)]
struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, go: bool) {
        *lock(&self.state) = Some(go);
        self.opened.notify_all();
    }

    /// Waits for [`StartGate::open`]; whether to run.
    fn wait(&self) -> bool {
        let mut state = lock(&self.state);
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = self.opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

const STOP_TOKEN: u64 = u64::MAX;
const ACTIVATE_TOKEN: u64 = u64::MAX - 3;
const INPUT_TOKEN: u64 = u64::MAX - 2;
const READY_TOKEN: u64 = u64::MAX - 1;

/// Moves console input into the serial port as fast as the guest reads it. Input is read
/// only while nothing read earlier still waits for FIFO space, so a slow guest holds the
/// writer back instead of losing bytes.
struct ConsoleFeed {
    input: ConsoleInput,
    /// False for a regular file, which epoll refuses and which is always readable.
    pollable: bool,
    /// Whether the input is in the poller.
    listening: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    ended: bool,
}

impl ConsoleFeed {
    fn start(
        poller: &Poller,
        input: ConsoleInput,
        serial: &Mutex<dyn Uart + Send>,
    ) -> Result<Self, Error> {
        let add = |fd, token| poller.add(fd, token, Interest::Read);
        add(input.ready.as_raw_fd(), READY_TOKEN)
            .map_err(|e| Error::Io("poller (console input)", e))?;
        let pollable = match add(input.file.as_raw_fd(), INPUT_TOKEN) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
            Err(e) => return Err(Error::Io("poller (console input)", e)),
        };
        let mut feed = ConsoleFeed {
            input,
            pollable,
            listening: pollable,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            ended: false,
        };
        if !pollable {
            feed.pump(poller, serial, false);
        }
        Ok(feed)
    }

    fn on_event(&mut self, poller: &Poller, token: u64, serial: &Mutex<dyn Uart + Send>) {
        if token == READY_TOKEN {
            self.input.ready.consume();
        }
        self.pump(poller, serial, token == INPUT_TOKEN);
    }

    fn pump(&mut self, poller: &Poller, serial: &Mutex<dyn Uart + Send>, readable: bool) {
        let mut readable = readable || !self.pollable;
        loop {
            if self.start == self.end && !self.ended && readable {
                match self.input.file.read(&mut self.buf) {
                    Ok(0) => self.ended = true,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e)
                        if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
                    // Input that cannot be read ends the input, not the VM.
                    Err(_) => self.ended = true,
                }
                readable = !self.pollable;
            }
            let sent = lock(serial).receive(&self.buf[self.start..self.end]);
            self.start += sent;
            // A regular file is read on while the FIFO takes everything.
            if self.pollable || self.ended || self.start < self.end || sent == 0 {
                break;
            }
        }
        // Hang-ups are reported even for an fd that asks for no events, so an input that
        // must not be read leaves the poller instead of only going quiet.
        let listen = self.pollable && !self.ended && self.start == self.end;
        if listen != self.listening {
            let fd = self.input.file.as_raw_fd();
            let done = if listen {
                poller.add(fd, INPUT_TOKEN, Interest::Read)
            } else {
                poller.remove(fd)
            };
            if done.is_ok() {
                self.listening = listen;
            }
        }
    }
}

fn run_vcpu<A: Arch>(
    vcpu: &mut <A::Vm as hk_hypervisor::Vm>::Vcpu,
    pio: &Bus,
    mmio: &Bus,
    stop: &Stop,
    mem: &GuestMemoryMmap,
) {
    while !stop.requested.load(Ordering::SeqCst) {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                stop.request(GuestExit::Crash(e.to_string()));
                return;
            }
        };
        match exit {
            VcpuExit::IoIn { port, data } => pio.read(u64::from(port), data),
            VcpuExit::IoOut { port, data } => pio.write(u64::from(port), data),
            VcpuExit::MmioRead { addr, data } => mmio.read(addr, data),
            VcpuExit::MmioWrite { addr, data } => mmio.write(addr, data),
            VcpuExit::Interrupted => {}
            VcpuExit::Reset => {
                stop.request(A::reset(mem, false));
                return;
            }
            VcpuExit::WarmReset => {
                stop.request(A::reset(mem, true));
                return;
            }
            VcpuExit::Shutdown => {
                stop.request(GuestExit::PowerOff);
                return;
            }
            VcpuExit::Fatal(why) => {
                stop.request(GuestExit::Crash(why));
                return;
            }
        }
    }
}

/// Puts the VMM's parameters before the caller's (so the caller can override them) and
/// keeps everything after a `--` (init's arguments) last.
pub(crate) fn merge_cmdline(user: &str, vmm: &str) -> String {
    let padded = format!(" {} ", user.trim());
    let (kernel, init) = match padded.find(" -- ") {
        Some(i) => (&padded[..i], Some(&padded[i + 4..])),
        None => (&padded[..], None),
    };
    let mut out = vmm.to_string();
    if !kernel.trim().is_empty() {
        out.push(' ');
        out.push_str(kernel.trim());
    }
    if let Some(init) = init {
        out.push_str(" --");
        if !init.trim().is_empty() {
            out.push(' ');
            out.push_str(init.trim());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge_cmdline;

    #[test]
    fn vmm_parameters_come_before_the_callers_and_before_init_arguments() {
        assert_eq!(merge_cmdline("console=ttyS0", "a=1"), "a=1 console=ttyS0");
        assert_eq!(merge_cmdline("", "a=1"), "a=1");
        assert_eq!(
            merge_cmdline("console=ttyS0 -- sh -c 'x -- y'", "a=1"),
            "a=1 console=ttyS0 -- sh -c 'x -- y'"
        );
        assert_eq!(merge_cmdline("-- init", "a=1"), "a=1 -- init");
    }
}
