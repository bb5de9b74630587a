//! Building the VM from a [`VmConfig`] and running it until the guest ends.

use crate::x86_64::{self, cpuid, layout, mptable, msrs, regs};
use crate::{Error, GuestExit, Outcome, VmConfig};
use hk_devices::control::{ControlEvent, ControlPage};
use hk_devices::serial::Serial;
use hk_devices::virtio::block::Block;
use hk_devices::virtio::fs::{Cache, Fs, VIRTIO_ID_FS};
use hk_devices::virtio::mmio::{MmioTransport, MMIO_SIZE, REG_QUEUE_NOTIFY};
use hk_devices::virtio::net::{ErrorSink, Net, NetBackend, StreamBackend};
use hk_devices::virtio::rng::Rng;
use hk_devices::virtio::vsock::{Vsock, VsockHost};
use hk_devices::virtio::worker::{panic_text, Confine, Fatal};
use hk_devices::virtio::{VirtioDevice, VirtioInterrupt};
use hk_devices::{BusDevice, Interrupt};
use hk_hypervisor::kvm::KvmVm;
use hk_hypervisor::x86_64::{CpuidEntry, X86Vcpu, X86Vm};
use hk_hypervisor::{IrqLine, Vcpu, VcpuExit, VcpuKick};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Boots `config` on KVM and runs it until the guest ends.
pub fn run(config: VmConfig) -> Result<Outcome, Error> {
    Vm::new(config)?.run()
}

/// A VM built and ready to boot.
pub struct Vm {
    machine: Machine<KvmVm>,
}

impl Vm {
    /// Creates the VM on KVM: memory, kernel, devices. Nothing runs until [`Vm::run`].
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        Ok(Vm {
            machine: Machine::build(KvmVm::new()?, config)?,
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

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A device whose lock was poisoned by a panicking vCPU is still the best state there is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An [`IrqLine`] of the hypervisor, seen by a device as its [`Interrupt`].
struct Irq(Arc<dyn IrqLine>);

impl Interrupt for Irq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// Devices at guest addresses (MMIO) or ports (PIO), looked up on each exit.
#[derive(Default, Clone)]
struct Bus {
    ranges: Vec<(u64, u64, Shared<dyn BusDevice>)>,
}

impl Bus {
    fn insert(&mut self, base: u64, len: u64, device: Shared<dyn BusDevice>) {
        self.ranges.push((base, len, device));
    }

    fn find(&self, addr: u64) -> Option<(&Shared<dyn BusDevice>, u64)> {
        self.ranges
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - base < *len)
            .map(|(base, _, dev)| (dev, addr - base))
    }

    fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((dev, offset)) => lock(dev).read(offset, data),
            // Nothing there: an open bus reads all ones, as on a PC.
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
    event: EventFd,
}

impl Stop {
    /// The first reason to stop wins; later ones (other vCPUs resetting too) are noise.
    fn request(&self, exit: GuestExit) {
        let mut slot = lock(&self.exit);
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.event.write(1);
    }
}

struct Machine<V: X86Vm> {
    vm: Arc<V>,
    mem: GuestMemoryMmap,
    boot: VcpuBoot,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<Serial<Box<dyn Write + Send>>>>,
    input: Option<ConsoleInput>,
    transports: Vec<Shared<MmioTransport>>,
    /// Signalled by a transport whose driver set DRIVER_OK: the device is started on the
    /// VMM's thread, never on a (confined) vCPU thread.
    activation: EventFd,
    vsock: Option<VsockHost>,
    stop: Arc<Stop>,
    /// The vCPU threads' seccomp filter, when confined.
    vcpu_filter: Option<Arc<seccompiler::BpfProgram>>,
}

/// The console's input, and the serial port's event saying the guest can take more.
struct ConsoleInput {
    file: File,
    ready: EventFd,
}

impl<V> Machine<V>
where
    V: X86Vm + 'static,
    V::Vcpu: X86Vcpu + 'static,
{
    fn build(vm: V, config: VmConfig) -> Result<Self, Error> {
        if config.cpus == 0 || config.cpus > mptable::MAX_CPUS {
            return Err(Error::Config(format!(
                "cpus must be 1 to {}, not {}",
                mptable::MAX_CPUS,
                config.cpus
            )));
        }
        let mem_bytes = config
            .memory_mib
            .checked_mul(1 << 20)
            .filter(|&b| b >= 64 << 20)
            .ok_or_else(|| Error::Config("memory must be at least 64 MiB".into()))?;

        // Anonymous private mappings with MAP_NORESERVE: the host commits a page only when
        // the guest first touches it, so a 1 GiB VM costs what the guest uses.
        let mem = GuestMemoryMmap::from_ranges(&x86_64::ram_ranges(mem_bytes))
            .map_err(|e| Error::Memory(e.to_string()))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Memory(e.to_string()))?;
            // SAFETY: `mem` is kept in the Machine and outlives the VM (the VM is dropped
            // with it, after every vCPU thread has been joined).
            unsafe {
                vm.map_memory(
                    slot as u32,
                    region.start_addr().raw_value(),
                    host as u64,
                    region.len(),
                )?;
            }
        }

        let (mut loaded, kernel_end) = x86_64::load_kernel(&mem, &config.kernel)?;
        if let Some(initrd) = &config.initrd {
            x86_64::load_initrd(&mem, &mut loaded, kernel_end, initrd)?;
        }

        let stop = Arc::new(Stop {
            exit: Mutex::new(None),
            boot_time: Mutex::new(None),
            requested: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?,
        });

        let mut pio = Bus::default();
        let mut mmio = Bus::default();
        let serial_irq: Arc<dyn Interrupt> = Arc::new(Irq(vm.irq_line(layout::SERIAL_IRQ)?));
        let input = match config.console_input {
            Some(file) => Some(ConsoleInput {
                file,
                ready: EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?,
            }),
            None => None,
        };
        let ready = match &input {
            Some(i) => Some(i.ready.try_clone().map_err(|e| Error::Io("eventfd", e))?),
            None => None,
        };
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, config.console, ready)));
        pio.insert(u64::from(layout::SERIAL_PORT), 8, serial.clone());

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
        mmio.insert(layout::CONTROL_PAGE, 0x1000, Arc::new(Mutex::new(control)));

        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for disk in &config.disks {
            devices.push(Box::new(Block::open(
                &disk.path,
                disk.read_only,
                &disk.serial,
            )?));
        }
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
                Cache::Auto,
            )?));
        }
        if config.rng {
            devices.push(Box::new(Rng::new()));
        }
        let mut vsock = None;
        if let Some(cfg) = &config.vsock {
            let device = Vsock::new(cfg)?;
            vsock = Some(device.host());
            devices.push(Box::new(device));
        }
        for (i, nic) in config.net.into_iter().enumerate() {
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
        // Each device thread runs under its kind's filters: a share's thread works on files,
        // the others only on descriptors they were given.
        let confine_with = |filters: crate::seccomp::DeviceFilters| -> Confine {
            let filters = Arc::new(filters);
            Arc::new(move || {
                crate::seccomp::confine_device_thread(&filters).map_err(|e| e.to_string())
            })
        };
        let (vcpu_filter, confine, fs_confine) = if config.seccomp {
            (
                Some(Arc::new(crate::seccomp::vcpu_filter()?)),
                Some(confine_with(crate::seccomp::device_filters()?)),
                Some(confine_with(crate::seccomp::fs_filters()?)),
            )
        } else {
            (None, None, None)
        };
        let mut cmdline = vec![
            // The exit status depends on these (docs/guest-abi.md); they come first so the
            // caller's command line can still override them.
            "reboot=t,c,panic_w".to_string(),
            "panic=-1".to_string(),
        ];
        let mut transports = Vec::new();
        let activation = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        for (i, device) in devices.into_iter().enumerate() {
            let base = layout::VIRTIO_MMIO_BASE + i as u64 * MMIO_SIZE;
            let irq = layout::VIRTIO_FIRST_IRQ + i as u32;
            if irq >= layout::IOAPIC_PINS {
                return Err(Error::Config("too many devices".into()));
            }
            let line: Arc<dyn Interrupt> = Arc::new(Irq(vm.irq_line(irq)?));
            let notify = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
            vm.register_notifier(base + REG_QUEUE_NOTIFY, &notify)?;
            let confine = if device.device_type() == VIRTIO_ID_FS {
                fs_confine.clone()
            } else {
                confine.clone()
            };
            let transport = transport(
                device,
                mem.clone(),
                VirtioInterrupt::new(line),
                notify,
                (fatal.clone(), confine),
                &activation,
            )?;
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(base, MMIO_SIZE, transport.clone());
            transports.push(transport);
            cmdline.push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        }
        cmdline.push(format!("hk.ctl={:#x}", layout::CONTROL_PAGE));
        let cmdline = merge_cmdline(&config.cmdline, &cmdline.join(" "));
        x86_64::write_cmdline(&mem, &cmdline)?;
        x86_64::write_start_info(&mem, &loaded)?;
        mptable::write(&mem, config.cpus).map_err(|e| Error::Memory(e.to_string()))?;
        regs::write_tables(&mem).map_err(|e| Error::Memory(e.to_string()))?;
        // Linux writes 0 (clean) or 0x1234 (panic) here before it resets the CPU; a reset
        // that finds this value instead was no reboot the kernel asked for.
        mem.write_obj(
            layout::RESET_FLAG_UNSET,
            GuestAddress(layout::BIOS_RESET_FLAG),
        )
        .map_err(|e| Error::Memory(e.to_string()))?;

        let supported = vm.supported_cpuid()?;
        let boot = VcpuBoot {
            cpuid: supported,
            count: config.cpus,
            entry: loaded.entry,
        };

        Ok(Machine {
            vm: Arc::new(vm),
            mem,
            boot,
            pio,
            mmio,
            serial,
            input,
            transports,
            activation,
            vsock,
            stop,
            vcpu_filter,
        })
    }

    fn run(self) -> Result<Outcome, Error> {
        let Machine {
            vm,
            mem,
            boot,
            pio,
            mmio,
            serial,
            input,
            transports,
            activation,
            vsock,
            stop,
            vcpu_filter,
        } = self;
        let epoll = Epoll::new().map_err(|e| Error::Io("epoll", e))?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(|e| Error::Io("epoll_ctl", e))?;
        epoll
            .ctl(
                ControlOperation::Add,
                activation.as_raw_fd(),
                EpollEvent::new(EventSet::IN, ACTIVATE_TOKEN),
            )
            .map_err(|e| Error::Io("epoll_ctl", e))?;

        // Each vCPU is created and set up on the thread that runs it, as QEMU does: a vCPU
        // never changes threads, which Hypervisor.framework requires and which spares
        // nested hypervisors a migration before the first instruction. None runs before all
        // exist: the boot CPU would otherwise start application processors KVM does not
        // know yet, and they would never come up.
        let boot = Arc::new(boot);
        let start = Arc::new(StartGate::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for index in 0..boot.count {
            let (vm, boot, ready, start) =
                (vm.clone(), boot.clone(), ready_tx.clone(), start.clone());
            let (pio, mmio, stop, mem) = (pio.clone(), mmio.clone(), stop.clone(), mem.clone());
            let filter = vcpu_filter.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                // vCPU threads only decode exits: a small stack keeps the VMM small.
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut vcpu = match setup_vcpu(&*vm, &boot, index) {
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
                    if let Some(filter) = filter {
                        if let Err(e) = crate::seccomp::confine_thread(&filter) {
                            stop.request(GuestExit::Crash(format!("vCPU {index}: {e}")));
                            return;
                        }
                    }
                    // A bug in exit handling must stop the VM, not leave the VMM waiting
                    // for a vCPU that is gone.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_vcpu(&mut vcpu, &pio, &mmio, &stop, &mem)
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
        for _ in 0..boot.count {
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
            Some(input) => Some(ConsoleFeed::start(&epoll, input, &serial)?),
            None => None,
        };

        let mut events = vec![EpollEvent::default(); 4];
        'run: loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    stop.request(GuestExit::Crash(format!("epoll_wait: {e}")));
                    break;
                }
            };
            for event in &events[..n] {
                let token = event.data();
                if token == STOP_TOKEN {
                    break 'run;
                }
                if token == ACTIVATE_TOKEN {
                    let _ = activation.read();
                    for transport in &transports {
                        lock(transport).activate_pending();
                    }
                    continue;
                }
                if let Some(feed) = console.as_mut() {
                    feed.on_event(&epoll, token, &serial);
                }
            }
        }

        // Kick until every vCPU thread is out: a kick can land before a vCPU's first run,
        // and an application processor never started by the guest sits in KVM_RUN.
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
    notify: EventFd,
    (fatal, confine): (Fatal, Option<Confine>),
    activation: &EventFd,
) -> Result<MmioTransport, Error> {
    let mut transport = MmioTransport::new(device, mem, interrupt, notify, fatal, confine);
    transport.defer_activation(
        activation
            .try_clone()
            .map_err(|e| Error::Io("eventfd", e))?,
    );
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
    /// Whether the input is in the epoll set.
    listening: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    ended: bool,
}

impl ConsoleFeed {
    fn start(
        epoll: &Epoll,
        input: ConsoleInput,
        serial: &Mutex<Serial<impl Write + Send>>,
    ) -> Result<Self, Error> {
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(input.ready.as_raw_fd(), READY_TOKEN)
            .map_err(|e| Error::Io("epoll_ctl (console input)", e))?;
        let pollable = match add(input.file.as_raw_fd(), INPUT_TOKEN) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
            Err(e) => return Err(Error::Io("epoll_ctl (console input)", e)),
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
            feed.pump(epoll, serial, false);
        }
        Ok(feed)
    }

    fn on_event(&mut self, epoll: &Epoll, token: u64, serial: &Mutex<Serial<impl Write + Send>>) {
        if token == READY_TOKEN {
            let _ = self.input.ready.read();
        }
        self.pump(epoll, serial, token == INPUT_TOKEN);
    }

    fn pump(&mut self, epoll: &Epoll, serial: &Mutex<Serial<impl Write + Send>>, readable: bool) {
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
        // must not be read leaves the epoll set instead of only going quiet.
        let listen = self.pollable && !self.ended && self.start == self.end;
        if listen != self.listening {
            let op = if listen {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            };
            let fd = self.input.file.as_raw_fd();
            if epoll
                .ctl(op, fd, EpollEvent::new(EventSet::IN, INPUT_TOKEN))
                .is_ok()
            {
                self.listening = listen;
            }
        }
    }
}

/// What every vCPU needs to be set up for the boot.
struct VcpuBoot {
    cpuid: Vec<CpuidEntry>,
    count: u32,
    entry: u64,
}

fn setup_vcpu<V>(vm: &V, boot: &VcpuBoot, index: u32) -> Result<V::Vcpu, Error>
where
    V: X86Vm,
    V::Vcpu: X86Vcpu,
{
    let vcpu = vm.create_vcpu(index)?;
    vcpu.set_cpuid(&cpuid::for_vcpu(&boot.cpuid, index, boot.count))?;
    vcpu.set_msrs(&msrs::boot_msrs())?;
    vcpu.set_fpu(&regs::fpu())?;
    // Application processors wait for INIT/SIPI from the boot CPU (in-kernel local APIC);
    // only the boot CPU starts at the PVH entry.
    if index == 0 {
        vcpu.set_regs(&regs::regs(boot.entry))?;
        vcpu.set_sregs(&regs::sregs(vcpu.sregs()?))?;
    }
    vcpu.set_lint()?;
    Ok(vcpu)
}

fn run_vcpu<C: Vcpu>(vcpu: &mut C, pio: &Bus, mmio: &Bus, stop: &Stop, mem: &GuestMemoryMmap) {
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
                // Linux writes the BIOS reset flag before any reboot; the command line
                // makes panics warm and everything else cold (docs/guest-abi.md). The VMM
                // seeded it with a value Linux never writes.
                let flag: u16 = mem
                    .read_obj(GuestAddress(layout::BIOS_RESET_FLAG))
                    .unwrap_or(layout::RESET_FLAG_UNSET);
                let exit = match flag {
                    layout::WARM_REBOOT => GuestExit::Panic,
                    layout::RESET_FLAG_UNSET => GuestExit::TripleFault,
                    _ => GuestExit::Reboot,
                };
                stop.request(exit);
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
fn merge_cmdline(user: &str, vmm: &str) -> String {
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
