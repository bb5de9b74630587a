//! `hk run --rootfs DIR|FILE.ext4 -- CMD...`: one container in one microVM, in the
//! foreground. The root filesystem is an ext4 image attached read-only (a directory is
//! converted first, with hk's own ext4 writer), under an overlay whose upper layer is a
//! fresh, sparse, writable ext4 disk; hk-agent, PID 1 in the guest, runs the command and
//! hk passes its stdio, signals, terminal and exit status through.

use crate::host::{self, Kvm};
use crate::term::{self, RawTerminal};
use crate::vm::{parse_memory, CONSOLE_LOG_MAX};
use anyhow::{bail, Context};
use hk_agent_protocol::{
    Client, Connector, ErrorKind, ExitStatus, ProcessSpec, Root, Setup, WindowSize, DEFAULT_PATH,
    HOST_PORT,
};
use hk_vmm::console::{tail, RotatingLog};
use hk_vmm::{Disk, GuestExit, Outcome, Vm, VmConfig, VsockConfig, VsockHost};
use nix::sys::signal::{SigSet, Signal};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The container's root filesystem: a directory (converted to ext4 by hk) or an ext4
    /// image file
    #[arg(long, value_name = "DIR|FILE.ext4")]
    rootfs: PathBuf,
    /// Name the container (for `hk exec`); default: the first 12 characters of its ID
    #[arg(long)]
    name: Option<String>,
    /// Container host name (default: the first 12 characters of its ID)
    #[arg(long)]
    hostname: Option<String>,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory (512m, 1g)
    #[arg(long, default_value = "512m")]
    memory: String,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The container, by name or ID
    container: String,
    #[command(flatten)]
    process: ProcessArgs,
}

/// What `run` and `exec` say about the process, as docker's flags.
#[derive(clap::Args)]
pub struct ProcessArgs {
    /// Keep stdin open and pass it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from hk's environment)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container (created if missing)
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or UID) and optionally group, as in the container's /etc/passwd
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The command and its arguments (after `--` when an argument could be taken for an
    /// option of hk's)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

/// Exit statuses of docker run when the command cannot be run.
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_NOT_EXECUTABLE: u8 = 126;
/// How long the guest may take to boot and say hello; the nested lab is slow.
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's vsock context ID; each VM has its own vsock device, so all may use 3.
const GUEST_CID: u64 = 3;
/// Size of the container's writable layer: a sparse file, so it costs what is written.
const UPPER_BYTES: u64 = 16 << 30;
const UPPER_INODES: u32 = 1 << 20;

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let memory_mib = parse_memory(&args.memory)?;
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    // What can be prepared on the host is, before a hop into the nested lab: the lab sees
    // the host's files read-only, and emulation makes everything there slow.
    let initrd = crate::initramfs::agent_initramfs()?;
    let lower = crate::initramfs::rootfs_image(&args.rootfs)?;
    if crate::lab::needed() {
        if args.process.interactive {
            bail!(
                "-i cannot reach a container in the nested lab, which forwards no input; \
                 use a host with hardware KVM"
            );
        }
        if let Some(result) = crate::lab::run_in_lab_if_needed(&[]) {
            return result;
        }
    }
    match Kvm::detect() {
        Kvm::Hardware => {}
        kvm => bail!("{}", kvm.explain()),
    }
    let kernel = host::guest_kernel()
        .context("no guest kernel: build one with kernel/build.sh guest (or set HK_KERNEL)")?;

    let id = container_id();
    let state = StateDir::create(args.name.as_deref().unwrap_or(&id[..12]))?;
    let upper = state.path.join("upper.ext4");
    empty_ext4(&upper)?;
    let console_log = state.path.join("console.log");
    let console = RotatingLog::open(&console_log, CONSOLE_LOG_MAX)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let vm = Vm::new(VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 quiet".into(),
        cpus: args.cpus,
        memory_mib,
        disks: vec![
            Disk {
                path: lower,
                read_only: true,
                serial: "hk-lower".into(),
            },
            Disk {
                path: upper,
                read_only: false,
                serial: "hk-upper".into(),
            },
        ],
        rng: true,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds: Some(state.path.join("vsock.sock")),
        }),
        console: Box::new(std::io::LineWriter::new(console)),
        console_input: None,
        start,
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
    let running = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || vm.run())?;

    let stream = loop {
        if running.is_finished() {
            let outcome = running
                .join()
                .map_err(|_| anyhow::anyhow!("the VM thread panicked"))?;
            return Err(boot_failure(outcome, &console_log));
        }
        match hello.accept(Duration::from_millis(50)) {
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
    let (client, _hello) = hk_agent_protocol::Client::from_hello(stream, connector)?;
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    client.setup(Setup {
        root: Some(Root {
            lower: "hk-lower".into(),
            upper: Some("hk-upper".into()),
        }),
        hostname: Some(hostname.clone()),
        hosts: Some(etc_hosts()),
        resolv_conf: Some(resolv_conf()),
    })?;

    let code = run_process(&client, &args.process, "main", Some(&hostname), forwarded);
    // The container is done either way: end the VM, then clean up.
    let status = match &code {
        Ok(code) => u32::from(*code),
        Err(_) => 1,
    };
    let _ = client.shutdown(status);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stopper.stop();
    let _ = running.join();
    drop(state);
    code.map(ExitCode::from)
}

/// `hk exec`: another process in a running container, through its VM's vsock socket.
pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.container)?;
    let socket = host::runtime_dir()
        .join("run")
        .join(&args.container)
        .join("vsock.sock");
    if !socket.exists() {
        bail!(
            "no such container: {} (hk exec takes the name given to hk run --name)",
            args.container
        );
    }
    let forwarded = forwarded_signals();
    forwarded
        .thread_block()
        .context("cannot block signals to forward them")?;
    let client = Client::open(Arc::new(HybridConnector(socket)))
        .with_context(|| format!("container {} is not running", args.container))?;
    let id = format!("exec-{}", &container_id()[..12]);
    run_process(&client, &args.process, &id, None, forwarded).map(ExitCode::from)
}

/// Container names as docker allows them; they name a directory, so nothing else.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128;
    if !ok {
        bail!("invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    Ok(())
}

/// Runs a process in the container to its end; returns hk's exit code. `main`: the
/// container's main process, with its host name.
fn run_process(
    client: &Client,
    args: &ProcessArgs,
    id: &str,
    hostname: Option<&str>,
    forwarded: SigSet,
) -> anyhow::Result<u8> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    if let Some(hostname) = hostname {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if args.tty {
        env.push("TERM=xterm".into());
    }
    for e in &args.env {
        let pair = match e.split_once('=') {
            Some(_) => e.clone(),
            // docker: `-e KEY` takes KEY from the caller's environment, if set.
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = pair.split('=').next().unwrap_or_default().to_string();
        env.retain(|old| old.split('=').next() != Some(key.as_str()));
        env.push(pair);
    }
    let raw = if args.tty && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter_stdin()?)
    } else {
        None
    };
    let size = term::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 });
    let mut process = client.create(ProcessSpec {
        id: id.into(),
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone().unwrap_or_else(|| "/".into()),
        create_cwd: true,
        user: args.user.clone(),
        tty: args.tty.then_some(size),
        stdin: args.interactive,
        main: hostname.is_some(),
        ..ProcessSpec::default()
    })?;
    if let Err(e) = process.start() {
        drop(raw);
        return match e {
            hk_agent_protocol::Error::Agent(reply) => {
                eprintln!("hk: {}", reply.message);
                Ok(match reply.kind {
                    ErrorKind::NotFound => EXIT_NOT_FOUND,
                    ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                    _ => crate::EXIT_RUNNER_ERROR,
                })
            }
            other => Err(other.into()),
        };
    }

    let mut outputs = Vec::new();
    let streams = std::mem::take(&mut process.streams);
    if let Some(pty) = streams.pty {
        if args.interactive {
            pump_stdin(pty.try_clone()?);
        }
        outputs.push(pump(pty, std::io::stdout(), client.process(id)));
    } else {
        if let Some(stdin) = streams.stdin {
            pump_stdin(stdin);
        }
        if let Some(out) = streams.stdout {
            outputs.push(pump(out, std::io::stdout(), client.process(id)));
        }
        if let Some(err) = streams.stderr {
            outputs.push(pump(err, std::io::stderr(), client.process(id)));
        }
    }
    forward_signals(forwarded, client.process(id), args.tty);
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

/// Copies a guest stream to one of hk's outputs until the guest closes it. When the output
/// breaks (a reader that went away), the process gets SIGPIPE, as it would writing to that
/// pipe itself.
fn pump(
    mut from: UnixStream,
    mut to: impl Write + Send + 'static,
    process: hk_agent_protocol::Process,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                        let _ = process.signal(Signal::SIGPIPE as i32);
                        break;
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

fn forwarded_signals() -> SigSet {
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
struct HybridConnector(PathBuf);

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

/// A random 64-hex-digit ID, as docker's container IDs.
fn container_id() -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Without entropy, time and pid still make a unique name on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// docker's /etc/hosts for a container without a network.
fn etc_hosts() -> String {
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
     fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
     ff02::2\tip6-allrouters\n"
        .to_string()
}

/// The host's resolv.conf as docker passes it on: without loopback name servers (they
/// would point into the container), and Google's if none is left.
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            match words.next() {
                Some(ip) if ip.starts_with("127.") || ip == "::1" => continue,
                Some(_) => servers += 1,
                None => continue,
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// An empty ext4 filesystem for the container's writable layer, sparse.
fn empty_ext4(path: &Path) -> anyhow::Result<()> {
    use hk_image::ext4::{convert, Inodes, Layer, Options, Size};
    let opts = Options {
        size: Size::Fixed { bytes: UPPER_BYTES },
        inodes: Inodes::Fixed {
            count: UPPER_INODES,
        },
        label: "hk-upper".into(),
        sync: false,
        ..Options::default()
    };
    convert(std::iter::empty::<Layer<std::io::Empty>>(), path, &opts)
        .with_context(|| format!("cannot create the writable layer {}", path.display()))?;
    Ok(())
}

/// The container's runtime state: its writable layer, console log and vsock socket.
/// Removed when the container ends.
struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory of container `name`; refused while a live container has it.
    fn create(name: &str) -> anyhow::Result<StateDir> {
        let parent = host::runtime_dir().join("run");
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let path = parent.join(name);
        if std::fs::create_dir(&path).is_err() {
            // Left behind by a container that is gone (its hk was killed), or in use.
            if UnixStream::connect(path.join("vsock.sock")).is_ok() {
                bail!(
                    "the container name {name:?} is already in use by a running container;                      choose another --name"
                );
            }
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(StateDir { path })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
