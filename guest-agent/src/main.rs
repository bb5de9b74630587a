//! hk-agent, PID 1 of every hk microVM.
//!
//! The kernel starts it from the initramfs. It mounts the basics (proc, sys, dev, devpts,
//! shm, run, cgroup2), then either
//! - serves the host over vsock (docs/agent-protocol.md): it listens on the agent port,
//!   dials the host to say hello, and from then on sets the container up, runs processes
//!   with their stdio, signals and statuses, exports the root's upper layer as a tar
//!   (`diff`, for `hk build`), and ends the VM when told; or
//! - without a vsock device but with a command after `--` on the kernel command line (`hk
//!   vm boot`), runs that command and hands its exit status to the VMM through the control
//!   page named by `hk.ctl=` (docs/guest-abi.md). With `hk.root=LOWER[,UPPER]` (disks by
//!   virtio serial) and `hk.hostname=NAME` it first sets the container's root up as the
//!   protocol's `setup` would, so another VMM (QEMU, in scripts/bench-run) can boot the
//!   same disks into the same root without a vsock device.
//!
//! Either way it reaps every orphan, as PID 1 must. It is built static
//! (`-C target-feature=+crt-static`) because the initramfs holds no libc.

use hk_agent::server::{Agent, Host, Socket};
use hk_agent_protocol::{write_frame, Hello, Lower, Root, Setup, AGENT_PORT, HOST_PORT, VERSION};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

/// Offsets in the VMM's control page (docs/guest-abi.md).
const CTL_BOOT_MARKER: usize = 0x0;
const CTL_EXIT_STATUS: usize = 0x4;
/// Connections the host may have waiting for the agent's accept. An exec opens its control
/// and stream connections at once (protocol 5), so 20 concurrent `hk exec`s bring 60 in a
/// burst; when the queue is full the guest's kernel resets the next one.
const LISTEN_BACKLOG: i32 = 1024;
/// The value Firecracker's boot timer waits for; hk keeps it so the same guest images work.
const BOOT_MARKER: u8 = 123;

fn main() {
    if std::process::id() != 1 {
        eprintln!("hk-agent: must run as PID 1 inside an hk microVM");
        std::process::exit(2);
    }
    let started_ns = boottime_ns();
    mount_basics();
    ensure_stdio();
    let ctl = control_page();
    if let Some(page) = &ctl {
        page.write_u8(CTL_BOOT_MARKER, BOOT_MARKER);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty()
        && std::path::Path::new("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport").exists()
    {
        let err = serve(started_ns, ctl);
        eprintln!("hk-agent: {err}");
        end_vm(None, 1);
    }

    if let Some(setup) = fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| parse_setup(&c))
    {
        if let Err(err) = hk_agent::container::setup(&setup) {
            eprintln!("hk-agent: setup: {err}");
            end_vm(ctl.as_ref(), 125);
        }
    }
    let status = match run(args) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("hk-agent: {err}");
            127
        }
    };
    end_vm(ctl.as_ref(), u32::from(status));
}

/// Kills what runs, syncs, and ends the VM with `status`.
fn end_vm(ctl: Option<&ControlPage>, status: u32) -> ! {
    // Whatever runs dies with the VM; SIGKILL now lets filesystems settle before the sync.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    // The kernel drains console output to the UART asynchronously; the VMM stops the moment
    // the status lands, so wait until the last bytes have left the tty.
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
    let _ = nix::sys::termios::tcdrain(std::io::stderr());
    match ctl {
        Some(page) => page.write_u32(CTL_EXIT_STATUS, status),
        None => eprintln!("hk-agent: exit status {status}"),
    }
    // Without a control page (another VMM), a reboot is the portable way to end the VM.
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

/// The guest's CLOCK_BOOTTIME in ns: time since the kernel started.
fn boottime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// What only the VM can do for the protocol server.
struct Vm {
    ctl: Option<ControlPage>,
}

impl Host for Vm {
    fn setup(&self, setup: &Setup) -> Result<(), String> {
        hk_agent::container::setup(setup)
    }

    fn shutdown(&self, status: u32) {
        end_vm(self.ctl.as_ref(), status)
    }

    fn diff(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<hk_agent_protocol::DiffSummary, String> {
        hk_agent::diff::export_root(out)
    }
}

fn vsock_socket() -> Result<OwnedFd, String> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("vsock socket: {e}"))
}

/// Serves the host over vsock until the VM ends; returns only on a fatal error.
fn serve(started_ns: u64, ctl: Option<ControlPage>) -> String {
    let listener = match vsock_socket() {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    if let Err(e) = bind(
        listener.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_PORT),
    )
    .and_then(|()| {
        listen(
            &listener,
            Backlog::new(LISTEN_BACKLOG).unwrap_or(Backlog::MAXCONN),
        )
    }) {
        return format!("vsock listen on port {AGENT_PORT}: {e}");
    }
    let hello = match vsock_socket().and_then(|fd| {
        connect(
            fd.as_raw_fd(),
            &VsockAddr::new(libc::VMADDR_CID_HOST, HOST_PORT),
        )
        .map_err(|e| format!("connect to the host's vsock port {HOST_PORT}: {e}"))?;
        Ok(fd)
    }) {
        Ok(fd) => Socket::from(fd),
        Err(e) => return e,
    };
    let agent: Arc<Agent<Socket>> = Agent::new(Box::new(Vm { ctl }));
    let mut hello = hello;
    let greeting = Hello {
        version: VERSION,
        agent: format!("hk-agent {}", env!("CARGO_PKG_VERSION")),
        started_ns,
        ready_ns: boottime_ns(),
    };
    if let Err(e) = write_frame(&mut hello, &greeting) {
        return format!("hello: {e}");
    }
    {
        let agent = agent.clone();
        let _ = std::thread::Builder::new()
            .name("agent-hello".into())
            .spawn(move || agent.serve_control(hello));
    }
    loop {
        let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
            Err(e) => return format!("vsock accept: {e}"),
        };
        // SAFETY: accept4 returned a new socket this process owns.
        let conn = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let agent = agent.clone();
        let _ = std::thread::Builder::new()
            .name("agent-conn".into())
            .spawn(move || agent.serve(conn));
    }
}

/// Mount failures are reported, not fatal: a command run from the kernel command line still
/// deserves to run without, say, cgroups.
fn mount_basics() {
    let mut failed = hk_agent::container::mount_specials(std::path::Path::new("/"));
    let _ = fs::create_dir_all("/run");
    if let Err(e) = mount(
        Some("run"),
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    ) {
        failed.push(format!("mount tmpfs on /run: {e}"));
    }
    for e in failed {
        eprintln!("hk-agent: {e}");
    }
}

/// The kernel opens /dev/console for init only if the initramfs holds that node; with
/// devtmpfs mounted it exists now, so give the command a console either way.
fn ensure_stdio() {
    use std::os::fd::AsRawFd;
    if nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the three standard descriptors, which nothing else holds yet.
            unsafe { nix::libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Runs the command and returns its status the way a shell reports it (128 + signal).
fn run(argv: Vec<OsString>) -> std::io::Result<u8> {
    let (program, args) = match argv.split_first() {
        Some((program, args)) => (program.clone(), args.to_vec()),
        None => (OsString::from("/bin/sh"), Vec::new()),
    };
    let mut command = Command::new(&program);
    command.args(&args);
    if std::env::var_os("PATH").is_none() {
        command.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    // The child gets a session of its own so a shell can take the console as its
    // controlling terminal.
    // SAFETY: setsid is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    let child = command.spawn().map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot run {}: {err}", program.to_string_lossy()),
        )
    })?;
    let main = Pid::from_raw(child.id() as i32);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => return Ok(code as u8),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                return Ok(128u8.wrapping_add(signal as u8))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// The VMM's control page, mapped through /dev/mem.
struct ControlPage {
    base: std::ptr::NonNull<u8>,
}

// SAFETY: the page is device memory that is only ever written with single volatile
// stores, each a complete message to the VMM; no thread relies on another's access.
unsafe impl Send for ControlPage {}
// SAFETY: as above.
unsafe impl Sync for ControlPage {}

const PAGE: usize = 4096;

fn control_page() -> Option<ControlPage> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    let addr = parse_ctl(&cmdline)?;
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|err| eprintln!("hk-agent: /dev/mem: {err}"))
        .ok()?;
    let offset = i64::try_from(addr).ok()?;
    // SAFETY: a fresh shared mapping of device memory; nothing else in this process aliases it.
    let base = unsafe {
        nix::sys::mman::mmap(
            None,
            std::num::NonZeroUsize::new(PAGE)?,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            &mem,
            offset,
        )
    }
    .map_err(|err| eprintln!("hk-agent: map control page at {addr:#x}: {err}"))
    .ok()?;
    Some(ControlPage { base: base.cast() })
}

/// `hk.ctl=0xd0000000` → 0xd0000000.
fn parse_ctl(cmdline: &str) -> Option<u64> {
    let value = cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("hk.ctl="))?;
    let hex = value.strip_prefix("0x").unwrap_or(value);
    let addr = u64::from_str_radix(hex, 16).ok()?;
    addr.is_multiple_of(PAGE as u64).then_some(addr)
}

/// `hk.root=LOWER[,UPPER] hk.hostname=NAME` → the container setup the command runs in.
fn parse_setup(cmdline: &str) -> Option<Setup> {
    let param = |key: &str| {
        cmdline
            .split_whitespace()
            .take_while(|w| *w != "--")
            .find_map(|w| w.strip_prefix(key))
    };
    let root = param("hk.root=")?;
    let (lower, upper) = match root.split_once(',') {
        Some((lower, upper)) => (lower, Some(upper.to_string())),
        None => (root, None),
    };
    Some(Setup {
        root: Some(Root {
            lower: Lower::Disk {
                serial: lower.to_string(),
            },
            upper,
        }),
        hostname: param("hk.hostname=").map(str::to_string),
        ..Setup::default()
    })
}

impl ControlPage {
    fn write_u8(&self, offset: usize, value: u8) {
        assert!(offset < PAGE);
        // SAFETY: offset is inside the mapped page; MMIO needs a volatile access.
        unsafe { self.base.as_ptr().add(offset).write_volatile(value) }
    }

    fn write_u32(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= PAGE && offset.is_multiple_of(4));
        // SAFETY: aligned and inside the mapped page; MMIO needs a volatile access.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_ctl, parse_setup};
    use hk_agent_protocol::{Lower, Root, Setup};

    #[test]
    fn a_root_on_the_command_line_is_set_up_before_the_command() {
        let setup = parse_setup("console=ttyS0 hk.root=hk-lower,hk-upper hk.hostname=b -- true");
        assert_eq!(
            setup,
            Some(Setup {
                root: Some(Root {
                    lower: Lower::Disk {
                        serial: "hk-lower".into()
                    },
                    upper: Some("hk-upper".into()),
                }),
                hostname: Some("b".into()),
                ..Setup::default()
            })
        );
        let ro = parse_setup("hk.root=l quiet").unwrap();
        assert_eq!(ro.root.unwrap().upper, None);
        assert_eq!(
            parse_setup("console=ttyS0 -- hk.root=x"),
            None,
            "an argument"
        );
        assert_eq!(parse_setup("console=ttyS0"), None);
    }

    #[test]
    fn control_page_address_comes_from_the_command_line() {
        assert_eq!(
            parse_ctl("console=ttyS0 hk.ctl=0xd0000000 quiet"),
            Some(0xd000_0000)
        );
        assert_eq!(parse_ctl("console=ttyS0 quiet"), None);
        assert_eq!(parse_ctl("hk.ctl=0xd0000010"), None, "not page aligned");
        assert_eq!(parse_ctl("hk.ctl=zz"), None);
    }
}
