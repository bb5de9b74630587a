//! The supervisor: the process that runs one container's VM, as podman's conmon keeps one
//! container. It holds the container's lock for its whole life (see `container`), boots
//! the VM on hk's VMM in its own address space, has the agent set the root up and start
//! the main process, keeps the process's output in the container's log (and on the
//! terminal when attached), records how it ended, and ends the VM.
//!
//! `hk run` and `hk start -a` supervise in the foreground; `hk run -d` and `hk start`
//! start `hk container supervise ID` detached (its own session, no terminal), which tells
//! its parent on a pipe when the main process has started, or why it could not.

use crate::container::logs::{Log, StreamLog};
use crate::container::{Container, State, Status, NETWORK_USER};
use crate::host::{self, Kvm};
use crate::term::{self, RawTerminal};
use anyhow::{bail, Context};
use hk_agent_protocol::{
    Client, Connector, ErrorKind, ExitStatus, Interface, Lower, MountSource, ProcessSpec, Root,
    Setup, WindowSize, HOST_PORT,
};
use hk_vmm::console::{tail, RotatingLog};
use hk_vmm::{
    Disk, GuestExit, Net, NetBackend, Outcome, Share, ShareCache, Vm, VmConfig, VsockConfig,
    VsockHost,
};
use nix::sys::signal::{SigSet, Signal};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit statuses of docker run when the command cannot be run.
pub const EXIT_NOT_FOUND: u8 = 127;
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// How long the guest may take to boot and say hello; the nested lab is slow.
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's vsock context ID; each VM has its own vsock device, so all may use 3.
const GUEST_CID: u64 = 3;
/// The agent's name for the container's main process.
pub const MAIN: &str = "main";
/// Below this the guest kernel cannot unpack its initramfs and start the agent.
pub const MIN_MEMORY_MIB: u64 = 64;

/// Where the main process's stdio goes.
pub enum Stdio {
    /// hk's own stdio (`hk run`, `hk start -a`): output on the terminal and in the log,
    /// stdin passed when `interactive`, signals to hk forwarded.
    Attached { interactive: bool },
    /// Output only to the log; `ready` hears "ok" once the process runs, or the error.
    Detached { ready: std::fs::File },
    /// A build step's: output to `sink` (true for stderr), no input, no log.
    Build { sink: OutputSink },
}

/// Where a build step's output goes, a chunk at a time.
pub type OutputSink = Arc<dyn Fn(bool, &[u8]) + Send + Sync>;

/// What a build does in the VM once the step's process has ended with this code, before
/// the VM is shut down (turning the writable layer into an image layer).
pub type AfterProcess<'a> = &'a mut dyn FnMut(&Client, u8) -> anyhow::Result<()>;

/// Runs a build step's container (`hk build`'s RUN): its main process, then `after`, then
/// the VM ends. Returns the process's exit code. The container records no state: it is the
/// build's, and the build removes it.
pub fn run_build_step(
    container: &Container,
    sink: OutputSink,
    after: AfterProcess,
) -> anyhow::Result<u8> {
    let _lock = container.take()?;
    let result = boot_and_run(container, &[], Stdio::Build { sink }, None, Some(after));
    let _ = std::fs::remove_dir_all(container.runtime_dir());
    result
}

/// Where the time of a run went, for `hk run --timings`.
pub struct Timings {
    pub start: Instant,
    marks: Vec<(&'static str, Instant)>,
    guest: Option<(u64, u64)>,
}

impl Timings {
    pub fn new(start: Instant) -> Timings {
        Timings {
            start,
            marks: Vec::new(),
            guest: None,
        }
    }

    pub fn mark(&mut self, what: &'static str) {
        self.mark_at(what, Instant::now());
    }

    fn mark_at(&mut self, what: &'static str, at: Instant) {
        self.marks.push((what, at));
    }

    pub fn print(&self) {
        let mut last = self.start;
        eprintln!("hk: timings (ms since start, and the step's own time):");
        for (what, at) in &self.marks {
            eprintln!(
                "  {what:<16} {:>9.1} {:>9.1}",
                ms(*at - self.start),
                ms(*at - last)
            );
            last = *at;
        }
        if let Some((started, ready)) = self.guest {
            eprintln!(
                "  (guest clock: agent started {:.1} ms after the kernel, ready {:.1} ms after)",
                started as f64 / 1e6,
                ready as f64 / 1e6
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The signals hk forwards to the main process (docker's --sig-proxy), blocked in every
/// thread so that one thread takes them with sigwait.
pub fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// Runs the container until its main process ends; returns hk's exit code (the process's
/// status, or 125/126/127 as docker). Records the outcome in the container's state either
/// way, and removes the container afterwards when it was made with `--rm`.
pub fn supervise(
    container: &Container,
    stdio: Stdio,
    timings: Option<&mut Timings>,
) -> anyhow::Result<u8> {
    use crate::container::health::Restart;
    let _lock = container.take()?;
    // A start by hand: what an earlier `hk stop` said is done with.
    let _ = std::fs::remove_file(container.stop_mark());
    let policy = match (&stdio, &container.config.restart) {
        (Stdio::Detached { .. }, Some(r)) => Restart::parse(r)?,
        _ => Restart::No,
    };
    let mut stdio = Some(stdio);
    let mut timings = timings;
    let mut restarts = 0;
    loop {
        let mut state = State {
            status: Status::Running,
            pid: std::process::id(),
            started_at: Some(crate::container::now()),
            restart_count: restarts,
            ..State::default()
        };
        // Host ports are chosen (and checked free) at each start, as docker does; `hk port`
        // reads them from the state.
        let ports = crate::container::ports::allocate(&container.config.ports);
        if let Ok(p) = &ports {
            state.ports = p.clone();
        }
        container.set_state(&state)?;
        // After the first start, nobody waits on the ready pipe: restarts report to nothing.
        let io = match stdio.take() {
            Some(s) => s,
            None => Stdio::Detached {
                ready: std::fs::File::options().write(true).open("/dev/null")?,
            },
        };
        let result = ports.and_then(|ports| {
            if policy == Restart::No {
                boot_and_run(container, &ports, io, timings.take(), None)
            } else {
                boot_in_child(container, &ports, io)
            }
        });
        // The health thread's last word is kept, as docker keeps it in inspect.
        state.health = container.state().health;
        state.status = Status::Exited;
        state.finished_at = Some(crate::container::now());
        match &result {
            Ok(code) => state.exit_code = i32::from(*code),
            Err(e) => {
                state.exit_code = i32::from(crate::EXIT_RUNNER_ERROR);
                state.error = format!("{e:#}");
            }
        }
        let _ = container.set_state(&state);
        let _ = std::fs::remove_dir_all(container.runtime_dir());
        let again = match &result {
            Ok(code) => policy.restarts(*code, restarts),
            Err(_) => policy.restarts(crate::EXIT_RUNNER_ERROR, restarts),
        };
        if again && !container.stop_mark().exists() {
            std::thread::sleep(Restart::delay(restarts));
            if !container.stop_mark().exists() {
                restarts += 1;
                continue;
            }
        }
        if container.config.auto_remove {
            drop(_lock);
            let _ = container.remove();
        }
        return result;
    }
}

/// [`boot_and_run`] in a child process, for a container that may restart: a VM confines
/// its whole process with seccomp (no exec, so no passt for a second boot), so each boot
/// gets a process of its own while this one, unconfined, keeps the lock and the policy.
fn boot_in_child(
    container: &Container,
    ports: &[crate::container::ports::Port],
    io: Stdio,
) -> anyhow::Result<u8> {
    let (mut errors, mut writer) = std::io::pipe().context("cannot make a pipe")?;
    // SAFETY: the supervisor of a detached container has no other thread here (the VM's,
    // the health monitor's and the pumps all live in the child), so the child may run
    // ordinary Rust code; it leaves with _exit, running nothing of the parent's.
    match unsafe { nix::unistd::fork() }.context("cannot fork the supervisor")? {
        nix::unistd::ForkResult::Child => {
            // The VM dies with its supervisor, as it does when it lives in it: `hk stop`'s
            // last resort kills the supervisor's PID.
            // SAFETY: prctl with an integer argument.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            drop(errors);
            let code = match boot_and_run(container, ports, io, None, None) {
                Ok(code) => i32::from(code),
                Err(e) => {
                    let _ = write!(writer, "{e:#}");
                    1
                }
            };
            drop(writer);
            // SAFETY: ends the child without unwinding into the parent's frames.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(writer);
            drop(io);
            let mut error = String::new();
            let _ = errors.read_to_string(&mut error);
            let status = nix::sys::wait::waitpid(child, None).context("cannot wait for the VM")?;
            if !error.is_empty() {
                bail!("{error}");
            }
            match status {
                nix::sys::wait::WaitStatus::Exited(_, code) => Ok((code & 0xff) as u8),
                other => bail!("the VM's process ended with {other:?}"),
            }
        }
    }
}

fn boot_and_run(
    container: &Container,
    ports: &[crate::container::ports::Port],
    stdio: Stdio,
    mut timings: Option<&mut Timings>,
    after: Option<AfterProcess>,
) -> anyhow::Result<u8> {
    let config = &container.config;
    let start = timings.as_ref().map_or_else(Instant::now, |t| t.start);
    let mark = |t: &mut Option<&mut Timings>, what| {
        if let Some(t) = t.as_deref_mut() {
            t.mark(what);
        }
    };
    match Kvm::detect() {
        Kvm::Hardware => {}
        kvm => bail!("{}", kvm.explain()),
    }
    let kernel = host::guest_kernel()
        .context("no guest kernel: build one with kernel/build.sh guest (or set HK_KERNEL)")?;
    let initrd = crate::initramfs::agent_initramfs()?;
    // An image's root is looked up at each start and held (share-locked) while the VM
    // runs, so `hk image prune` cannot delete it under the VM.
    let (lower, _held) = match &config.rootfs {
        Some(path) => (path.clone(), None),
        None => {
            let store = crate::images::store()?;
            let image = store.resolve(&config.image_id).with_context(|| {
                format!(
                    "the image of container {} ({}) is no longer in the store: \
                     pull it again (hk pull {})",
                    config.name, config.image, config.image
                )
            })?;
            let rootfs = store.rootfs(&image)?;
            (rootfs.path.clone(), Some(rootfs))
        }
    };
    mark(&mut timings, "root lookup");

    let run_dir = container.runtime_dir();
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let console_log = container.console_path();
    let console = std::fs::File::create(&console_log)
        .and_then(|_| RotatingLog::open(&console_log, crate::vm::CONSOLE_LOG_MAX))
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    // A --rootfs directory (`--rootfs-mode virtiofs`) is shared read-only as it is; an
    // image's root or a --rootfs ext4 is a read-only disk.
    let (root_lower, mut disks, mut shares) = if lower.is_dir() {
        let tag = "hk-root".to_string();
        let share = Share {
            host_dir: lower,
            tag: tag.clone(),
            read_only: true,
            cache: ShareCache::Auto,
        };
        (Lower::Virtiofs { tag }, Vec::new(), vec![share])
    } else {
        let disk = Disk {
            path: lower,
            read_only: true,
            serial: "hk-lower".into(),
        };
        let serial = disk.serial.clone();
        (Lower::Disk { serial }, vec![disk], Vec::new())
    };
    if let Some(upper) = container.upper() {
        disks.push(Disk {
            path: upper,
            read_only: false,
            serial: "hk-upper".into(),
        });
    }
    // docker: a container only on internal networks reaches nothing outside.
    let egress = config.network == NETWORK_USER
        && (config.networks.is_empty()
            || !config
                .networks
                .iter()
                .all(|a| crate::network::Network::load(&a.name).is_ok_and(|n| n.internal)));
    if !egress && !ports.is_empty() {
        bail!("the container is only on internal networks, which publish no ports: drop -p/-P");
    }
    // passt starts before the process filter, which forbids exec; it dies with the VM.
    let mut passt = None;
    let mut net = Vec::new();
    let mut interfaces = Vec::new();
    if egress {
        let mut p = crate::passt::Passt::start(&crate::passt::user_mode_args(ports))?;
        let mac = mac_address(&config.id);
        net.push(Net {
            backend: NetBackend::Stream(p.take_stream().expect("a fresh passt has its socket")),
            mac,
            mtu: hk_vmm::MAX_MTU,
        });
        interfaces.push(Interface {
            mac: crate::network::format_mac(mac),
            address: format!("{}/{}", crate::passt::GUEST_IP, crate::passt::PREFIX_LEN),
            gateway: Some(crate::passt::GATEWAY.into()),
            mtu: Some(u32::from(hk_vmm::MAX_MTU)),
        });
        passt = Some(p);
    }
    // An interface per user-defined network, each registered with its network's switch;
    // their DNS servers answer for the networks' containers and relay the rest.
    let mut network_dns = Vec::new();
    let mut own_ip = None;
    for (i, attachment) in config.networks.iter().enumerate() {
        let joined = crate::network::join(
            &attachment.name,
            &crate::network::Member {
                id: &config.id,
                name: &config.name,
                aliases: &attachment.aliases,
                ip: None,
            },
        )
        .with_context(|| format!("cannot join network {}", attachment.name))?;
        if i == 0 {
            own_ip = joined
                .interface
                .address
                .split('/')
                .next()
                .map(str::to_string);
        }
        net.push(Net {
            backend: NetBackend::Stream(joined.stream),
            mac: joined.mac,
            mtu: joined.mtu,
        });
        interfaces.push(joined.interface);
        network_dns.push(joined.dns.to_string());
    }
    let (mount_shares, mounts) = mounts(container)?;
    shares.extend(mount_shares);
    if !shares.is_empty() {
        host::raise_open_files_limit();
    }
    let vm = Vm::new(VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 quiet".into(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        disks,
        shares,
        rng: true,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds: Some(container.vsock_socket()),
        }),
        net,
        console: Box::new(std::io::LineWriter::new(console)),
        console_input: None,
        start,
        seccomp: config.seccomp,
    })?;
    let vsock = vm.vsock().expect("the VM has a vsock device");
    let stopper = vm.stop_handle();
    let hello = vsock.listen(HOST_PORT)?;
    // Signals for the container are taken by a thread of hk's (sigwait), so they must be
    // blocked before any thread starts: threads inherit the mask.
    let forwarded = forwarded_signals();
    forwarded
        .thread_block()
        .context("cannot block signals to forward them")?;
    // Every thread of this process from here on runs under the VMM's process filter
    // (vCPU and device threads add their own): the VM is a guest's attack surface.
    if config.seccomp {
        hk_vmm::seccomp::confine_process()?;
    }
    let running = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || vm.run())?;
    mark(&mut timings, "VM setup");

    let stream = loop {
        if running.is_finished() {
            let outcome = running
                .join()
                .map_err(|_| anyhow::anyhow!("the VM thread panicked"))?;
            return Err(boot_failure(outcome, &console_log));
        }
        match hello.accept(Duration::from_millis(20)) {
            Ok(stream) => break stream,
            Err(_) if start.elapsed() < HELLO_TIMEOUT => {}
            Err(_) => {
                stopper.stop();
                let _ = running.join();
                bail!(
                    "the guest agent did not start within {HELLO_TIMEOUT:?}; kernel log:\n{}",
                    tail(&console_log, 20).join("\n")
                );
            }
        }
    };
    let connector: Arc<dyn Connector> = Arc::new(VsockConnector(vsock));
    let (client, hello) = Client::from_hello(stream, connector)?;
    if let Some(t) = timings.as_deref_mut() {
        t.guest = Some((hello.started_ns, hello.ready_ns));
    }
    mark(&mut timings, "agent ready");
    if let Some(p) = &mut passt {
        if let Err(e) = p.check() {
            stopper.stop();
            let _ = running.join();
            return Err(e.context("the container's network did not start"));
        }
    }
    let ended = (|| -> anyhow::Result<u8> {
        client.setup(Setup {
            root: Some(Root {
                lower: root_lower,
                upper: container.upper().map(|_| "hk-upper".into()),
            }),
            hostname: Some(config.hostname.clone()),
            hosts: Some(etc_hosts(config, own_ip.as_deref(), egress)),
            resolv_conf: Some(resolv_conf(config, &network_dns, egress)),
            interfaces,
            mounts,
        })?;
        let p = &config.process;
        let spec = ProcessSpec {
            id: MAIN.into(),
            argv: p.argv.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            create_cwd: true,
            user: p.user.clone(),
            tty: p.tty.then_some(WindowSize { rows: 24, cols: 80 }),
            stdin: matches!(stdio, Stdio::Attached { interactive: true }),
            main: true,
            ..ProcessSpec::default()
        };
        // Probes run while the main process does; dropping the monitor ends them.
        let _health = match stdio {
            Stdio::Build { .. } => None,
            _ => crate::container::health::Monitor::start(container, &client),
        };
        let (code, ready) = match stdio {
            Stdio::Build { sink } => {
                let io = ProcessIo {
                    interactive: false,
                    tty: false,
                    log: None,
                    to_terminal: false,
                    sink: Some(sink),
                    started: Default::default(),
                };
                (run_process(&client, spec, &io, forwarded, None)?, None)
            }
            Stdio::Attached { interactive } => {
                let io = ProcessIo {
                    interactive,
                    tty: p.tty,
                    log: Some(Log::open(&container.log_path())?),
                    to_terminal: true,
                    sink: None,
                    started: Default::default(),
                };
                let code = run_process(&client, spec, &io, forwarded, None)?;
                if let (Some(t), Some(at)) = (timings.as_deref_mut(), io.started.get()) {
                    t.mark_at("process start", at);
                }
                (code, None)
            }
            Stdio::Detached { ready } => {
                let io = ProcessIo {
                    interactive: false,
                    tty: p.tty,
                    log: Some(Log::open(&container.log_path())?),
                    to_terminal: false,
                    sink: None,
                    started: Default::default(),
                };
                let mut ready = Some(ready);
                let code = run_process(&client, spec, &io, forwarded, Some(&mut ready))?;
                (code, Some(ready))
            }
        };
        // A process that could not start: its error goes to whoever waits for it.
        if let Some(mut ready) = ready.flatten() {
            let _ = writeln!(ready, "exit {code}");
        }
        if let Some(after) = after {
            after(&client, code)?;
        }
        Ok(code)
    })();
    mark(&mut timings, "process end");
    // The container is done either way: end the VM, then clean up.
    let status = ended.as_ref().map_or(1, |c| u32::from(*c));
    let _ = client.shutdown(status);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    stopper.stop();
    let _ = running.join();
    mark(&mut timings, "shutdown");
    ended
}

/// The container's mounts as the VM gets them: each bind or volume a virtio-fs share
/// (`hk-m0`, `hk-m1`... in mount order), and what the agent is to mount where. A volume
/// removed behind hk's back (not through `hk volume rm`, which refuses) is made again, empty.
fn mounts(container: &Container) -> anyhow::Result<(Vec<Share>, Vec<hk_agent_protocol::Mount>)> {
    use crate::container::mounts::{host_dir, Kind};
    let mut shares = Vec::new();
    let mut mounts = Vec::new();
    for m in &container.config.mounts {
        let source = match host_dir(m) {
            Some(host_dir) => {
                if m.kind == Kind::Volume {
                    crate::volume::ensure(&m.source)?;
                } else if !host_dir.is_dir() {
                    bail!(
                        "the host directory {} of the mount on {} is gone: create it again",
                        host_dir.display(),
                        m.target
                    );
                }
                let tag = format!("hk-m{}", shares.len());
                shares.push(Share {
                    host_dir,
                    tag: tag.clone(),
                    read_only: m.read_only,
                    cache: m.consistency.cache(),
                });
                MountSource::Virtiofs { tag }
            }
            None if m.kind == Kind::Secret => secret(m)?,
            None => MountSource::Tmpfs {
                options: m.options.clone(),
            },
        };
        mounts.push(hk_agent_protocol::Mount {
            target: m.target.clone(),
            source,
            read_only: m.read_only,
            seed: m.kind == Kind::Volume && !m.no_copy,
        });
    }
    Ok((shares, mounts))
}

/// Largest build secret handed to the agent (BuildKit's limit is 500 KiB): it crosses in
/// one control frame.
const MAX_SECRET: u64 = 500 << 10;

/// A secret mount's content, read from its host file now, and how the guest sees it.
fn secret(m: &crate::container::mounts::Mount) -> anyhow::Result<MountSource> {
    use base64::Engine;
    let path = Path::new(&m.source);
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET + 1).read_to_end(&mut data))
        .with_context(|| format!("cannot read the secret {}", path.display()))?;
    if data.len() as u64 > MAX_SECRET {
        bail!(
            "the secret {} is larger than {} KiB: pass a smaller file",
            path.display(),
            MAX_SECRET >> 10
        );
    }
    let option = |key: &str, default: u32| -> anyhow::Result<u32> {
        match m
            .options
            .iter()
            .find_map(|o| o.strip_prefix(&format!("{key}=")))
        {
            Some(v) if key == "mode" => u32::from_str_radix(v, 8).context("secret mode"),
            Some(v) => v.parse().context("secret owner"),
            None => Ok(default),
        }
    };
    Ok(MountSource::Secret {
        data: base64::engine::general_purpose::STANDARD.encode(&data),
        mode: option("mode", 0o400)?,
        uid: option("uid", 0)?,
        gid: option("gid", 0)?,
    })
}

/// How a process's stdio is wired on the host.
pub struct ProcessIo {
    pub interactive: bool,
    pub tty: bool,
    /// The container's log, for the main process.
    pub log: Option<Log>,
    /// Whether output goes to hk's stdout and stderr.
    pub to_terminal: bool,
    /// Where output goes besides (a build step's progress).
    pub sink: Option<OutputSink>,
    /// Set when the process has started.
    pub started: std::cell::Cell<Option<Instant>>,
}

/// Runs a process in the container to its end; returns hk's exit code. `ready`, when
/// given, hears "ok" once the process has started; it is taken then, so a `Some` left
/// behind means the process never started.
pub fn run_process(
    client: &Client,
    mut spec: ProcessSpec,
    io: &ProcessIo,
    forwarded: SigSet,
    ready: Option<&mut Option<std::fs::File>>,
) -> anyhow::Result<u8> {
    let raw = if io.tty && io.to_terminal && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter_stdin()?)
    } else {
        None
    };
    if io.tty && io.to_terminal {
        spec.tty = Some(term::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 }));
    }
    let id = spec.id.clone();
    let mut process = match client.run(spec) {
        Ok(process) => process,
        Err(e) => {
            drop(raw);
            return match e {
                hk_agent_protocol::Error::Agent(reply) => {
                    let code = match reply.kind {
                        ErrorKind::NotFound => EXIT_NOT_FOUND,
                        ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                        _ => crate::EXIT_RUNNER_ERROR,
                    };
                    match ready {
                        Some(Some(r)) => {
                            let _ = writeln!(r, "error {}", reply.message);
                        }
                        _ => eprintln!("hk: {}", reply.message),
                    }
                    if let Some(log) = &io.log {
                        log.stream("stderr")
                            .write(format!("{}\n", reply.message).as_bytes());
                    }
                    Ok(code)
                }
                other => Err(other.into()),
            };
        }
    };
    io.started.set(Some(Instant::now()));
    if let Some(r) = ready.and_then(Option::take) {
        let mut r = r;
        let _ = writeln!(r, "ok");
    }

    let mut outputs = Vec::new();
    let streams = std::mem::take(&mut process.streams);
    let out = |name: &'static str| Output {
        log: io.log.as_ref().map(|l| l.stream(name)),
        terminal: io.to_terminal.then_some(name == "stderr"),
        sink: io.sink.clone(),
        stderr: name == "stderr",
    };
    if let Some(pty) = streams.pty {
        if io.interactive {
            pump_stdin(pty.try_clone()?);
        }
        outputs.push(pump(pty, out("stdout"), client.process(&id)));
    } else {
        if let Some(stdin) = streams.stdin {
            pump_stdin(stdin);
        }
        if let Some(s) = streams.stdout {
            outputs.push(pump(s, out("stdout"), client.process(&id)));
        }
        if let Some(s) = streams.stderr {
            outputs.push(pump(s, out("stderr"), client.process(&id)));
        }
    }
    forward_signals(forwarded, client.process(&id), io.tty && io.to_terminal);
    let status = process.wait();
    for o in outputs {
        let _ = o.join();
    }
    drop(raw);
    let status = status?;
    Ok(match status {
        ExitStatus::Code(c) => (c & 0xff) as u8,
        ExitStatus::Signal(_) => (status.shell_code() & 0xff) as u8,
    })
}

/// Where one output stream of a process goes: the container's log and/or hk's own
/// stdout (`Some(false)`) or stderr (`Some(true)`).
struct Output {
    log: Option<StreamLog>,
    terminal: Option<bool>,
    sink: Option<OutputSink>,
    stderr: bool,
}

/// Copies a guest stream to its outputs until the guest closes it. When hk's output breaks
/// (a reader that went away), the process gets SIGPIPE, as it would writing to that pipe
/// itself.
fn pump(
    mut from: UnixStream,
    mut to: Output,
    process: hk_agent_protocol::Process,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut broken = false;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(log) = &mut to.log {
                        log.write(&buf[..n]);
                    }
                    if let Some(sink) = &to.sink {
                        sink(to.stderr, &buf[..n]);
                    }
                    let written = match to.terminal {
                        _ if broken => Ok(()),
                        Some(false) => {
                            let mut o = std::io::stdout().lock();
                            o.write_all(&buf[..n]).and_then(|()| o.flush())
                        }
                        Some(true) => std::io::stderr().write_all(&buf[..n]),
                        None => Ok(()),
                    };
                    if written.is_err() {
                        broken = true;
                        let _ = process.signal(Signal::SIGPIPE as i32);
                        if to.log.is_none() {
                            break;
                        }
                    }
                }
            }
        }
    })
}

/// Copies hk's stdin into the guest; at its end, the guest's stdin ends too.
fn pump_stdin(mut to: UnixStream) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// docker run's --sig-proxy: signals to hk go to the container's process; a terminal's
/// size changes follow.
fn forward_signals(set: SigSet, process: hk_agent_protocol::Process, tty: bool) {
    std::thread::spawn(move || loop {
        let Ok(signal) = set.wait() else { return };
        if signal == Signal::SIGWINCH {
            if tty {
                if let Some(size) = term::window_size() {
                    let _ = process.resize(size.rows, size.cols);
                }
            }
            continue;
        }
        if process.signal(signal as i32).is_err() {
            return;
        }
    });
}

/// Opens connections to the agent through the VM's vsock.
struct VsockConnector(VsockHost);

impl Connector for VsockConnector {
    fn connect(&self) -> std::io::Result<UnixStream> {
        self.0
            .connect(hk_agent_protocol::AGENT_PORT, Duration::from_secs(10))
    }
}

/// Opens connections to the agent from another process, through the VM's hybrid vsock
/// socket (`CONNECT <port>` / `OK <port>`).
pub struct HybridConnector(pub PathBuf);

impl Connector for HybridConnector {
    fn connect(&self) -> std::io::Result<UnixStream> {
        let mut stream = UnixStream::connect(&self.0)?;
        writeln!(stream, "CONNECT {}", hk_agent_protocol::AGENT_PORT)?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            if stream.read(&mut byte)? == 0 || line.len() > 32 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "the VM refused the connection",
                ));
            }
            line.push(byte[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(std::io::Error::other(
                "unexpected answer from the VM's vsock socket",
            ));
        }
        Ok(stream)
    }
}

/// A control connection to a running container's agent, from any hk process.
pub fn connect(container: &Container) -> anyhow::Result<Client> {
    Client::open(Arc::new(HybridConnector(container.vsock_socket())))
        .with_context(|| format!("container {} is not running", container.config.name))
}

/// The VM ended before its agent said hello: say how, with the kernel's last words.
fn boot_failure(outcome: Result<Outcome, hk_vmm::Error>, log: &Path) -> anyhow::Error {
    let why = match outcome {
        Ok(Outcome {
            exit: GuestExit::Panic,
            ..
        }) => "the guest kernel panicked".to_string(),
        Ok(o) => format!("the VM ended before its agent started ({:?})", o.exit),
        Err(e) => format!("the VM failed: {e}"),
    };
    let lines = tail(log, 20);
    if lines.is_empty() {
        anyhow::anyhow!("{why}")
    } else {
        anyhow::anyhow!("{why}; the kernel's last lines:\n{}", lines.join("\n"))
    }
}

/// docker's /etc/hosts for a container without a network.
/// docker's /etc/hosts: loopback names, the container's own address under its host name,
/// `--add-host` lines, and on the user-mode network the names of the host.
fn etc_hosts(config: &crate::container::Config, own_ip: Option<&str>, egress: bool) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for (name, ip) in &config.add_hosts {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    if egress {
        out.push_str(&format!(
            "{}\t{}\n",
            crate::passt::GATEWAY,
            crate::passt::HOST_NAMES
        ));
    }
    // The container's own name on its first network, as docker writes it, else on passt's.
    let own = own_ip.unwrap_or(if egress {
        crate::passt::GUEST_IP
    } else {
        "127.0.1.1"
    });
    out.push_str(&format!("{own}\t{}\n", config.hostname));
    out
}

/// A locally administered MAC from the container's ID, stable across restarts.
fn mac_address(id: &str) -> [u8; 6] {
    let byte =
        |i: usize| u8::from_str_radix(id.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    [0x02, 0x68, 0x6b, byte(0), byte(1), byte(2)]
}

/// The container's resolv.conf: the host's search and options lines, and as name server
/// `--dns`, or on the user-mode network passt's forwarder (which asks the host's first
/// resolver, loopback ones included, as podman's pasta does), or else the host's non-loopback
/// servers (a loopback one would point into the container) and Google's if none is left,
/// as docker does.
fn resolv_conf(config: &crate::container::Config, network_dns: &[String], egress: bool) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    let mut servers: Vec<String> = config.dns.clone();
    if servers.is_empty() {
        if let Some(first) = network_dns.first() {
            servers.push(first.clone());
        } else if egress {
            servers.push(crate::passt::DNS.into());
        }
    }
    let keep_host_servers = servers.is_empty();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            match words.next() {
                Some(ip) if keep_host_servers && !(ip.starts_with("127.") || ip == "::1") => {
                    servers.push(ip.to_string())
                }
                _ => {}
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers.is_empty() {
        servers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}
