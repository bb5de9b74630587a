//! hk-vmm: hk's virtual machine monitor, a library. Its API is "a VM with these devices":
//! give [`run`] a [`VmConfig`] (kernel, initrd, command line, CPUs, memory, disks, shared
//! directories, vsock, network interfaces) and it boots the guest and returns how the guest
//! ended ([`Outcome`]). A program that
//! talks to its guest while it runs builds a [`Vm`] first: [`Vm::vsock`] is the host end of
//! the guest's sockets and [`Vm::stop_handle`] stops it from another thread.
//!
//! Layering (each a crate, dependencies pointing one way):
//! - `hk-hypervisor`: the hypervisor boundary (traits `Vm`, `Vcpu`, `IrqLine`) and its
//!   backends: KVM (Linux) and Hypervisor.framework (macOS, the `hvf` feature).
//! - `hk-devices`: device models; they see guest memory and an interrupt trigger only.
//! - this crate: the machines (x86_64: memory layout, PVH boot, MP table, CPUID, MSRs,
//!   registers; aarch64: QEMU virt's memory map, arm64 Image boot, device tree), wiring
//!   devices to the hypervisor, and the run loop every machine shares.
//!
//! Threads: one per vCPU (port and MMIO exits: serial, control page, virtio registers), one
//! per active virtio device (its queues and I/O, so a slow disk never stalls a vCPU or
//! another device), and the caller's thread, which waits for the VM to end and feeds
//! console input.

pub mod aarch64;
pub mod console;
mod machine;
mod map_reader;
#[cfg(target_os = "linux")]
pub mod seccomp;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod x86_64;

pub use hk_devices::virtio::net::{StreamBackend, MAX_MTU};
pub use hk_devices::virtio::vsock::{Listener, VsockConfig, VsockHost, HOST_CID};
pub use hk_devices::virtio::Cache as ShareCache;
#[cfg(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
))]
pub use machine::{run, StopHandle, Vm};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to boot.
pub struct VmConfig {
    /// x86_64: an ELF vmlinux with a PVH entry note; aarch64: an arm64 `Image`.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The caller's kernel command line. The VMM adds its own devices, its control page
    /// and the reboot settings its exit status relies on (docs/guest-abi.md), before any
    /// `--` so init arguments stay last.
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    /// Host directories shared over virtio-fs (docs/virtio-fs.md), one device each.
    pub shares: Vec<Share>,
    /// Offer a virtio-rng device.
    pub rng: bool,
    /// Offer a virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Network interfaces (virtio-net), eth0 first.
    pub net: Vec<Net>,
    /// Where the serial console goes.
    pub console: Box<dyn Write + Send>,
    /// Where the serial console's input comes from, if anywhere: any file descriptor epoll
    /// can wait on (a terminal, a pipe, a socket). Read until it ends.
    pub console_input: Option<std::fs::File>,
    /// The instant boot time is measured from (the boot-timer marker); normally the start
    /// of the process.
    pub start: Instant,
    /// Confine vCPU and device threads with seccomp filters ([`seccomp`]); off only for
    /// debugging. The process-wide filter is the embedder's to install
    /// ([`seccomp::confine_process`]), since it binds the embedder's own threads too.
    pub seccomp: bool,
}

/// A virtio-blk disk backed by a raw image file.
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (`/sys/block/vdX/serial`), at most 20
    /// bytes: how a guest finds its disks by name rather than by probe order.
    pub serial: String,
}

/// A host directory shared into the guest over virtio-fs; the guest mounts it with
/// `mount -t virtiofs TAG DIR`. The directory is the guest's whole view: `..`, symlinks,
/// links and renames stay inside it, and `read_only` is enforced on the host side.
pub struct Share {
    pub host_dir: PathBuf,
    /// At most 36 bytes, unique per VM.
    pub tag: String,
    pub read_only: bool,
    /// When the guest sees a change the host made.
    pub cache: ShareCache,
}

/// A virtio-net interface and what its frames go to.
pub struct Net {
    pub backend: NetBackend,
    pub mac: [u8; 6],
    /// The MTU the guest's driver takes from the device (68 to [`MAX_MTU`]).
    pub mtu: u16,
}

/// The other end of a NIC.
pub enum NetBackend {
    /// A connected Unix stream socket speaking the qemu stream protocol (each frame after
    /// its 4-byte big-endian length), as passt does (`passt --fd`).
    Stream(std::os::unix::net::UnixStream),
    /// Any other frame source and sink.
    Custom(Box<dyn hk_devices::virtio::net::NetBackend>),
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest wrote an exit status to the control page.
    Status(u32),
    /// A clean reboot (reboot(2), `reboot -f`): the VM stopped as asked.
    Reboot,
    /// The kernel panicked (it rebooted with the warm-reboot flag set).
    Panic,
    /// The CPU reset without the kernel asking for it: a triple fault (before the kernel
    /// could handle exceptions, or with its handlers broken).
    TripleFault,
    /// The guest powered off.
    PowerOff,
    /// The program running the VM stopped it ([`StopHandle::stop`]).
    Stopped,
    /// The VM could not go on (an unexpected exit, a hypervisor error).
    Crash(String),
}

/// What [`run`] returns.
#[derive(Debug)]
pub struct Outcome {
    pub exit: GuestExit,
    /// Time from [`VmConfig::start`] to the guest's boot-complete marker, if it wrote one.
    pub boot_time: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Hypervisor(#[from] hk_hypervisor::Error),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("kernel {0}: {1}")]
    Kernel(PathBuf, String),
    #[error("initrd {0}: {1}")]
    Initrd(PathBuf, String),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error(transparent)]
    Disk(#[from] hk_devices::virtio::block::Error),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Share(#[from] hk_devices::virtio::fs::Error),
    #[error(transparent)]
    Vsock(#[from] hk_devices::virtio::vsock::Error),
    #[error("network interface: {0}")]
    Net(#[source] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}
