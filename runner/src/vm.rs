//! `hk vm boot`: boot a kernel on hk's VMM directly, with no image and no agent protocol.
//! For people who embed the VMM or debug a guest, and for the boot benchmark.

use crate::host::{self, Kvm};
use crate::term::RawTerminal;
use anyhow::{bail, Context};
use hk_vmm::console::RotatingLog;
use hk_vmm::{Disk, GuestExit, Net, NetBackend, Share, ShareCache, VmConfig, VsockConfig};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum VmCommand {
    /// Boot a kernel (ELF vmlinux with a PVH note) with an initrd and disks; the console is
    /// the serial port. Exits with the guest's status (docs/guest-abi.md)
    Boot(BootArgs),
}

#[derive(clap::Args)]
pub struct BootArgs {
    /// Guest kernel [default: the kernel `hk info` shows]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (a cpio archive, gzip allowed)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// A raw disk image as virtio-blk, `FILE` or `FILE,ro`; repeat for more disks
    /// (/dev/vda, /dev/vdb, ...)
    #[arg(long = "disk", value_name = "FILE[,ro]")]
    disks: Vec<String>,
    /// A host directory shared over virtio-fs under TAG (`mount -t virtiofs TAG DIR` in the
    /// guest), `:ro` for read-only, enforced on the host, `:cache=` for when the guest sees
    /// a host change (docs/virtio-fs.md; default auto); repeat for more
    #[arg(
        long = "share",
        value_name = "HOSTDIR:TAG[:ro][:cache=auto|always|never]"
    )]
    shares: Vec<String>,
    /// Kernel command line; hk adds its devices, its control page and the reboot settings
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory, in MiB or with a unit (512m, 1g)
    #[arg(long, default_value = "256m")]
    memory: String,
    /// Write the serial console to this file instead of stdout
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Send stdin to the serial console. A terminal is put in raw mode for the VM's life,
    /// so keys such as Ctrl-C go to the guest: end the VM from inside it (reboot -f)
    #[arg(short, long)]
    interactive: bool,
    /// Do not offer a virtio-rng device
    #[arg(long)]
    no_rng: bool,
    /// Offer a virtio-vsock device whose hybrid Unix socket (Firecracker's convention) is
    /// created at PATH: host programs connect to guest ports through it, and a guest
    /// connection to host port P goes to the socket PATH_P
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context ID (with --vsock-uds)
    #[arg(long, value_name = "CID", default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
    /// A network interface (eth0): `passt` starts passt as its backend; `network:NAME`
    /// plugs it into the switch of hk network NAME (docs/networking.md)
    #[arg(long, value_name = "passt|network:NAME", value_parser = parse_net)]
    net: Option<NetKind>,
    /// With --net network:NAME: the name the network's DNS answers with this VM's address
    #[arg(long, value_name = "NAME", default_value = "vm", requires = "net")]
    net_name: String,
    /// With --net network:NAME: another name for this VM on the network; repeat for more
    #[arg(long = "net-alias", value_name = "ALIAS", requires = "net")]
    net_aliases: Vec<String>,
    /// With --net network:NAME: the VM's address [default: the first free one]; the guest
    /// configures it itself (this command has no agent)
    #[arg(long, value_name = "IPV4", requires = "net")]
    ip: Option<std::net::Ipv4Addr>,
    /// Options for passt, one string split at spaces: addresses and port forwards, such as
    /// "-a 10.0.2.15 -n 24 -g 10.0.2.2 -t 8080:80"
    #[arg(
        long,
        value_name = "OPTIONS",
        allow_hyphen_values = true,
        requires = "net"
    )]
    passt_args: Option<String>,
    /// The interface's MTU, which the guest's driver takes from the device
    #[arg(long, default_value_t = hk_vmm::MAX_MTU, requires = "net")]
    mtu: u16,
    /// The interface's MAC address [default: 02:68:6b:00:00:01 with passt; on a network,
    /// 02:68 and the IPv4 address, which the switch requires]
    #[arg(long, value_parser = parse_mac, requires = "net")]
    mac: Option<[u8; 6]>,
    /// Print, on stderr, the time from start until the guest's boot-complete marker
    #[arg(long)]
    boot_timer: bool,
    /// Boot even on kvm-pvm, which runs only PVM-patched guest kernels
    #[arg(long, env = "HK_ALLOW_PVM")]
    allow_pvm: bool,
    #[command(flatten)]
    seccomp: SeccompArg,
}

#[derive(Clone)]
pub enum NetKind {
    Passt,
    /// An hk network, by name.
    Network(String),
}

fn parse_net(text: &str) -> Result<NetKind, String> {
    match text.split_once(':') {
        None if text == "passt" => Ok(NetKind::Passt),
        Some(("network", name)) if !name.is_empty() => Ok(NetKind::Network(name.to_string())),
        _ => Err(format!("{text:?}: expected passt or network:NAME")),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?}: expected a MAC address such as 02:68:6b:00:00:01"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?}: expected six bytes"))
}

// `--seccomp on|off`: the VMM's seccomp filters (docs/security.md). Not a doc comment,
// which clap would make the help text of the commands that take it (main.rs defers each
// command's flags).
#[derive(clap::Args, Clone, Copy)]
pub struct SeccompArg {
    /// Confine the VMM's threads with seccomp filters; `off` only to debug a VMM
    #[arg(long = "seccomp", value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub on: bool,
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{text:?}: expected on or off")),
    }
}

/// The exit status of a VM whose kernel panicked: 128 + SIGABRT, what a shell reports for a
/// process that aborted, so it cannot be mistaken for a status the guest chose (0..=255 via
/// the control page is the guest's own) only by convention; docs/guest-abi.md lists it.
const EXIT_GUEST_PANIC: u8 = 134;

/// Size at which a console log file rotates (one older file is kept).
pub const CONSOLE_LOG_MAX: u64 = 16 << 20;

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Boot(args) => boot(args),
    }
}

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let disks = args
        .disks
        .iter()
        .enumerate()
        .map(|(i, spec)| parse_disk(spec, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shares = args
        .shares
        .iter()
        .map(|spec| parse_share(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !shares.is_empty() {
        crate::host::raise_open_files_limit();
    }
    if !args.allow_pvm {
        let mut writable: Vec<PathBuf> = disks
            .iter()
            .filter(|d| !d.read_only)
            .map(|d| d.path.clone())
            .collect();
        writable.extend(
            shares
                .iter()
                .filter(|s| !s.read_only)
                .map(|s| s.host_dir.clone()),
        );
        writable.extend(args.console.clone());
        writable.extend(args.vsock_uds.clone());
        if let Some(NetKind::Network(_)) = &args.net {
            // Leases and the switch's socket.
            writable.push(hk_image::Store::default_root().join("networks"));
            writable.push(host::runtime_dir());
        }
        if args.interactive && crate::lab::needed() {
            bail!(
                "--interactive cannot reach a VM in the nested lab, which forwards no input; \
                 use a host with hardware KVM, or give the guest its input another way (a disk)"
            );
        }
        if let Some(result) = crate::lab::run_in_lab_if_needed(&writable) {
            return result;
        }
    }
    match Kvm::detect() {
        Kvm::Hardware => {}
        Kvm::Pvm if args.allow_pvm => {}
        kvm => bail!("{}", kvm.explain()),
    }
    let kernel = match args.kernel {
        Some(k) => k,
        None => host::guest_kernel()
            .context("no guest kernel: build one with kernel/build.sh guest, or pass --kernel")?,
    };
    let memory_mib = parse_memory(&args.memory)?;
    let console: Box<dyn Write + Send> = match &args.console {
        // A fresh log per boot, rotated at its cap so a chatty guest cannot fill the disk.
        Some(path) => Box::new(std::io::LineWriter::new(
            std::fs::File::create(path)
                .and_then(|_| RotatingLog::open(path, CONSOLE_LOG_MAX))
                .with_context(|| format!("cannot create console log {}", path.display()))?,
        )),
        // Stdout is line-buffered: one write per console line, not per byte.
        None => Box::new(std::io::stdout()),
    };
    let (console_input, _raw) = if args.interactive {
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot use stdin as the console's input")?;
        let raw = RawTerminal::enter(&stdin)?;
        (Some(std::fs::File::from(stdin)), raw)
    } else {
        (None, None)
    };
    // passt starts before the process filter, which forbids exec; it dies with the VM.
    let mut passt = None;
    let mut net = Vec::new();
    // The lease's holder: this process, so the address is free again once it is gone.
    let holder = format!("vm:{}", std::process::id());
    let mut network = None;
    if let Some(NetKind::Network(name)) = &args.net {
        if args.mac.is_some() {
            bail!("--mac cannot be used with --net network:NAME: the switch gives a NIC the MAC of its address");
        }
        let joined = crate::network::join(
            name,
            &crate::network::Member {
                id: &holder,
                name: &args.net_name,
                aliases: &args.net_aliases,
                ip: args.ip,
            },
        )?;
        eprintln!(
            "hk: network {name}: {} (DNS {})",
            joined.interface.address, joined.dns
        );
        net.push(Net {
            backend: NetBackend::Stream(joined.stream),
            mac: joined.mac,
            mtu: args.mtu.min(joined.mtu),
        });
        network = Some(name.clone());
    }
    if let Some(NetKind::Passt) = args.net {
        let extra: Vec<String> = args
            .passt_args
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut p = crate::passt::Passt::start(&extra)?;
        net.push(Net {
            backend: NetBackend::Stream(p.take_stream().expect("a fresh passt has its socket")),
            mac: args.mac.unwrap_or([0x02, 0x68, 0x6b, 0, 0, 1]),
            mtu: args.mtu,
        });
        passt = Some(p);
    }
    // The address goes back however the VM ends (a lease of a dead `vm:PID` would be
    // reclaimed anyway, but only when someone looks).
    let release = |network: Option<String>| {
        if let Some(name) = network {
            if let Err(e) = crate::network::Network::find(&name).and_then(|n| n.release(&holder)) {
                eprintln!("hk: {e:#}");
            }
        }
    };
    if args.seccomp.on {
        if let Err(e) = hk_vmm::seccomp::confine_process() {
            release(network);
            return Err(e.into());
        }
    }
    let outcome = hk_vmm::run(VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib,
        disks,
        shares,
        rng: !args.no_rng,
        vsock: args.vsock_uds.map(|uds| VsockConfig {
            guest_cid: args.vsock_cid,
            uds: Some(uds),
        }),
        net,
        console,
        console_input,
        start,
        seccomp: args.seccomp.on,
    });
    drop(passt);
    release(network);
    let outcome = outcome?;
    if args.boot_timer {
        match outcome.boot_time {
            Some(t) => eprintln!(
                "hk: boot-timer: guest init signalled after {:.1} ms",
                t.as_secs_f64() * 1000.0
            ),
            None => eprintln!("hk: boot-timer: the guest never wrote the boot marker"),
        }
    }
    Ok(match outcome.exit {
        GuestExit::Status(status) => ExitCode::from((status & 0xff) as u8),
        GuestExit::Reboot | GuestExit::PowerOff | GuestExit::Stopped => ExitCode::SUCCESS,
        GuestExit::Panic => {
            eprintln!("hk: the guest kernel panicked");
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        GuestExit::TripleFault => {
            eprintln!("hk: the guest triple-faulted (a CPU reset its kernel did not ask for)");
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        GuestExit::Crash(why) => bail!("the VM stopped: {why}"),
    })
}

/// `FILE` or `FILE,ro`; the guest sees disk number `index` with the serial `diskN`.
fn parse_disk(spec: &str, index: usize) -> anyhow::Result<Disk> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some((_, opt)) => bail!("--disk {spec}: unknown option `{opt}` (use FILE or FILE,ro)"),
        None => (spec, false),
    };
    Ok(Disk {
        path: PathBuf::from(path),
        read_only,
        serial: format!("disk{index}"),
    })
}

/// `HOSTDIR:TAG[:ro][:cache=auto|always|never]` (a TAG cannot hold `:`; HOSTDIR may).
fn parse_share(spec: &str) -> anyhow::Result<Share> {
    let usage =
        || anyhow::anyhow!("--share {spec}: expected HOSTDIR:TAG[:ro][:cache=auto|always|never]");
    let (spec_rest, cache) = match spec.rsplit_once(":cache=") {
        Some((rest, "auto")) => (rest, ShareCache::Auto),
        Some((rest, "always")) => (rest, ShareCache::Always),
        Some((rest, "never")) => (rest, ShareCache::Never),
        Some(_) => return Err(usage()),
        None => (spec, ShareCache::Auto),
    };
    let (rest, read_only) = match spec_rest.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (spec_rest.strip_suffix(":rw").unwrap_or(spec_rest), false),
    };
    let Some((dir, tag)) = rest.rsplit_once(':') else {
        return Err(usage());
    };
    if dir.is_empty() || tag.is_empty() {
        return Err(usage());
    }
    Ok(Share {
        host_dir: PathBuf::from(dir),
        tag: tag.to_string(),
        read_only,
        cache,
    })
}

/// "256" and "256m" are MiB; "1g" is GiB. Units are binary, as docker's --memory.
pub(crate) fn parse_memory(text: &str) -> anyhow::Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix("ib").unwrap_or(&lower);
    let lower = lower.strip_suffix('b').unwrap_or(lower);
    let (digits, factor) = match lower.as_bytes().last() {
        Some(b'g') => (&lower[..lower.len() - 1], 1024),
        Some(b'm') => (&lower[..lower.len() - 1], 1),
        _ => (lower, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n > 0)
        .with_context(|| format!("--memory {text}: expected a size such as 256m or 1g"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256").unwrap(), 256);
        assert_eq!(parse_memory("256m").unwrap(), 256);
        assert_eq!(parse_memory("512MiB").unwrap(), 512);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("1t").is_err());
    }

    #[test]
    fn disk_specs() {
        let d = parse_disk("/a/b.img,ro", 0).unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/a/b.img"), true));
        let d = parse_disk("x.img", 3).unwrap();
        assert!(!d.read_only);
        assert_eq!(d.serial, "disk3");
        assert!(parse_disk("x.img,rx", 0).is_err());
    }

    #[test]
    fn share_specs() {
        let s = parse_share("/src:code:ro").unwrap();
        assert_eq!(
            (s.host_dir, s.tag.as_str(), s.read_only),
            (PathBuf::from("/src"), "code", true)
        );
        let s = parse_share("/a:b/dir:data").unwrap();
        assert_eq!(
            (s.host_dir, s.read_only),
            (PathBuf::from("/a:b/dir"), false)
        );
        assert!(!parse_share("/x:t:rw").unwrap().read_only);
        assert_eq!(parse_share("/x:t").unwrap().cache, ShareCache::Auto);
        let s = parse_share("/x:t:ro:cache=never").unwrap();
        assert_eq!(
            (s.tag.as_str(), s.read_only, s.cache),
            ("t", true, ShareCache::Never)
        );
        assert_eq!(
            parse_share("/x:t:cache=always").unwrap().cache,
            ShareCache::Always
        );
        for bad in [
            "/src",
            ":tag",
            "/src:",
            "/src::ro",
            "/x:t:cache=sometimes",
            "/x:cache=never",
        ] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }
}
