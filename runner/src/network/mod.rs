//! User-defined networks (`hk network ...`, docs/networking.md): VMs on one network share
//! an Ethernet segment that hk switches in user space, and find each other by name through
//! a DNS server hk runs for that network. No root, no bridge, no TAP.
//!
//! - **Store**: `$HK_DATA_DIR/networks/<name>.json` ([`Network`]), written once at
//!   create. Subnets are podman's: the first free `10.89.N.0/24`, or `--subnet`; subnets
//!   of two networks never overlap, so a MAC derived from an address is unique on the host.
//! - **IPAM**: `$HK_DATA_DIR/networks/<name>.leases.json`, holder -> address, rewritten
//!   atomically under an flock on `<name>.lock` (a separate file: the rename that makes the
//!   rewrite atomic would swap the inode a lock on the leases file itself sits on). A
//!   container keeps its address across restarts and gives it back at `hk rm`. A holder
//!   that is gone (a removed container, a dead `hk vm boot`) frees its address for reuse.
//! - **Switch**: one process per network, `hk network serve NAME` (hidden), listening on
//!   `<runtime dir>/networks/<id12>/switch.sock` ([`switch`]). The first VM to join starts
//!   it, detached (its own session); an flock on `switch.lock` beside the socket keeps it
//!   to one; it exits [`IDLE_EXIT`] after its last port leaves. Separate networks are
//!   separate processes with nothing between them: no routing, so isolation needs no
//!   filter rules.
//! - **Gateway and DNS**: the switch itself answers for the subnet's `.1` ([`gateway`]).
//!   It routes nothing: a NIC on a network gets no default route (egress is the default
//!   passt NIC's job), only its subnet and the DNS server at `.1`.
//!
//! The API for `hk run --network NAME`: [`join`] returns the connected socket (hand it to
//! the VMM as `NetBackend::Stream`), the [`Interface`] for the agent's `Setup` and the DNS
//! server's address for the container's resolv.conf; [`release_everywhere`] at `hk rm`.

pub mod gateway;
pub mod switch;

use crate::container::{self, Container};
use crate::host;
use anyhow::{bail, Context};
use hk_agent_protocol::Interface;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
pub use switch::format_mac;
use switch::{read_control, write_control, Registration, Reply};

/// The driver name `inspect` and `ls` show.
pub const DRIVER: &str = "hk-switch";

/// The MTU of a NIC on a network: passt's, so VM-to-VM traffic moves in 64 KiB frames
/// (the device has no segmentation offloads; docs/networking.md).
pub const MTU: u16 = 65520;

/// How long a switch with no ports waits for one before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// A network as `hk network create` made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// `10.89.0.0/24`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: String,
    /// No relaying of DNS to the host: only names on the network resolve.
    #[serde(default)]
    pub internal: bool,
}

impl Network {
    /// The subnet's address and prefix length (validated at create).
    pub fn cidr(&self) -> (Ipv4Addr, u8) {
        parse_cidr(&self.subnet).expect("a stored network has a valid subnet")
    }

    pub fn prefix(&self) -> u8 {
        self.cidr().1
    }

    fn segment(&self) -> switch::Segment {
        let (subnet, prefix) = self.cidr();
        switch::Segment {
            subnet,
            prefix,
            gateway: self.gateway,
        }
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Where the switch's socket and locks are.
    pub fn runtime_dir(&self) -> PathBuf {
        host::runtime_dir().join("networks").join(self.short_id())
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join("switch.sock")
    }

    pub fn load(name: &str) -> anyhow::Result<Network> {
        let path = store_dir().join(format!("{name}.json"));
        if container::check_name(name).is_err() || !path.exists() {
            bail!("network {name} not found (hk network ls lists them)");
        }
        let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("{} is damaged", path.display()))
    }

    /// By name, full ID or unique ID prefix, as docker finds networks.
    pub fn find(spec: &str) -> anyhow::Result<Network> {
        if let Ok(n) = Network::load(spec) {
            return Ok(n);
        }
        let mut found: Vec<Network> = Network::all()?
            .into_iter()
            .filter(|n| !spec.is_empty() && n.id.starts_with(spec))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => bail!("network {spec} not found (hk network ls lists them)"),
            _ => bail!("multiple networks match ID prefix {spec}: give more digits"),
        }
    }

    /// Every network, by name.
    pub fn all() -> anyhow::Result<Vec<Network>> {
        let dir = store_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut all = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if name.ends_with(".leases") {
                continue;
            }
            match Network::load(name) {
                Ok(n) => all.push(n),
                Err(e) => eprintln!("WARNING: skipping network {name}: {e:#}"),
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn lease_path(&self) -> PathBuf {
        store_dir().join(format!("{}.leases.json", self.name))
    }

    fn lease_lock(&self) -> anyhow::Result<File> {
        lock_file(&store_dir().join(format!("{}.lock", self.name)))
    }

    fn read_leases(&self) -> BTreeMap<String, Ipv4Addr> {
        fs::read(self.lease_path())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }

    /// The live leases: holders that are gone are left out.
    pub fn leases(&self) -> BTreeMap<String, Ipv4Addr> {
        let mut leases = self.read_leases();
        leases.retain(|holder, _| holder_alive(holder));
        leases
    }

    /// The address `holder` has on this network: the one it had, `wanted`, or the first
    /// free one. Held until [`Network::release`].
    pub fn lease(&self, holder: &str, wanted: Option<Ipv4Addr>) -> anyhow::Result<Ipv4Addr> {
        let _lock = self.lease_lock()?;
        let mut leases = self.leases();
        let ip = allocate(self.segment(), &leases, holder, wanted)
            .map_err(|e| anyhow::anyhow!("network {}: {e}", self.name))?;
        leases.insert(holder.to_string(), ip);
        write_json(&self.lease_path(), &leases)?;
        Ok(ip)
    }

    pub fn release(&self, holder: &str) -> anyhow::Result<()> {
        let _lock = self.lease_lock()?;
        let mut leases = self.read_leases();
        if leases.remove(holder).is_some() {
            write_json(&self.lease_path(), &leases)?;
        }
        Ok(())
    }

    /// The containers that name this network in their config, and the live holders of
    /// addresses on it: what `rm` refuses to pull the network from under.
    fn users(&self) -> anyhow::Result<Vec<String>> {
        let mut users: Vec<String> = Container::all()?
            .into_iter()
            .filter(|c| c.config.networks.iter().any(|a| a.name == self.name))
            .map(|c| c.config.name)
            .collect();
        for holder in self.leases().into_keys() {
            let name = match Container::find(&holder) {
                Ok(c) => c.config.name,
                Err(_) => holder,
            };
            if !users.contains(&name) {
                users.push(name);
            }
        }
        Ok(users)
    }
}

/// A holder of an address: a container's ID while the container exists, or `vm:PID` for
/// an `hk vm boot` while that process lives.
fn holder_alive(holder: &str) -> bool {
    if let Some(pid) = holder.strip_prefix("vm:") {
        // SAFETY: signal 0 only checks that the process exists.
        return pid
            .parse::<i32>()
            .is_ok_and(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0);
    }
    container::root().join(holder).join("config.json").exists()
}

/// IPAM: the address for `holder`, given the others' leases.
fn allocate(
    seg: switch::Segment,
    leases: &BTreeMap<String, Ipv4Addr>,
    holder: &str,
    wanted: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, String> {
    let mask = mask(seg.prefix);
    let net = u32::from(seg.subnet) & mask;
    let broadcast = net | !mask;
    let taken = |ip: Ipv4Addr| {
        leases
            .iter()
            .any(|(h, &other)| h.as_str() != holder && other == ip)
    };
    let usable = |ip: Ipv4Addr| {
        let n = u32::from(ip);
        n & mask == net && n != net && n != broadcast && ip != seg.gateway
    };
    if let Some(ip) = wanted {
        if !usable(ip) {
            return Err(format!(
                "{ip} is not a host address of {}/{} other than the gateway",
                seg.subnet, seg.prefix
            ));
        }
        if taken(ip) {
            return Err(format!("{ip} is already in use"));
        }
        return Ok(ip);
    }
    if let Some(&ip) = leases.get(holder) {
        if usable(ip) {
            return Ok(ip);
        }
    }
    (net + 1..broadcast)
        .map(Ipv4Addr::from)
        .find(|&ip| usable(ip) && !taken(ip))
        .ok_or_else(|| format!("no free address left in {}/{}", seg.subnet, seg.prefix))
}

/// The netmask of a prefix length.
pub fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// `10.89.0.0/24` (host bits must be zero, as docker requires).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32 && u32::from(ip) & !mask(prefix) == 0).then_some((ip, prefix))
}

fn overlaps((a, pa): (Ipv4Addr, u8), (b, pb): (Ipv4Addr, u8)) -> bool {
    let m = mask(pa.min(pb));
    u32::from(a) & m == u32::from(b) & m
}

/// The MAC of a NIC with address `ip`: `02:68` and the address. Subnets never overlap, so
/// it is unique among all of hk's network NICs; passt's NIC (02:68:6b:...) is a different
/// range unless a network's subnet is 107.0.0.0/8's.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x68, o[0], o[1], o[2], o[3]]
}

fn store_dir() -> PathBuf {
    hk_image::Store::default_root().join("networks")
}

fn lock_file(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(f)
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// What a VM joining a network is known as there.
pub struct Member<'a> {
    /// The lease holder: the container's ID (or `vm:PID` for `hk vm boot`).
    pub id: &'a str,
    pub name: &'a str,
    pub aliases: &'a [String],
    /// docker's `--ip`; otherwise the container's earlier address or the first free one.
    pub ip: Option<Ipv4Addr>,
}

/// A VM's place on a network, ready to boot with.
pub struct Joined {
    /// Registered with the switch: from now on it carries the NIC's Ethernet frames.
    pub stream: UnixStream,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// For the agent's `Setup.interfaces`: address and MTU, no default route.
    pub interface: Interface,
    /// The network's DNS server, for the container's resolv.conf.
    pub dns: Ipv4Addr,
}

/// Puts a VM on network `name`: leases its address, starts the network's switch if none
/// runs, and registers the NIC with it.
pub fn join(name: &str, member: &Member) -> anyhow::Result<Joined> {
    let net = Network::find(name)?;
    let ip = net.lease(member.id, member.ip)?;
    let mac = mac_for(ip);
    let reg = Registration {
        id: member.id.to_string(),
        name: member.name.to_string(),
        aliases: member.aliases.to_vec(),
        mac: format_mac(mac),
        ipv4: ip,
    };
    let stream = connect(&net, &reg)?;
    Ok(Joined {
        stream,
        mac,
        mtu: MTU,
        interface: Interface {
            mac: format_mac(mac),
            address: format!("{ip}/{}", net.prefix()),
            gateway: None,
            mtu: Some(u32::from(MTU)),
        },
        dns: net.gateway,
    })
}

/// Gives back the addresses a removed container held, on every network.
pub fn release_everywhere(holder: &str) -> anyhow::Result<()> {
    for net in Network::all()? {
        net.release(holder)?;
    }
    Ok(())
}

/// Connects to the network's switch (starting it if needed) and registers.
fn connect(net: &Network, reg: &Registration) -> anyhow::Result<UnixStream> {
    let sock = net.socket();
    // A switch that was about to exit idle may close a connection it had not yet
    // accepted: then start another and try again.
    for _ in 0..3 {
        let mut stream = match UnixStream::connect(&sock) {
            Ok(s) => s,
            Err(_) => {
                spawn_switch(net)?;
                wait_for_switch(&sock)?
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        if write_control(&mut stream, reg).is_err() {
            continue;
        }
        match read_control::<Reply>(&mut stream) {
            Ok(r) if r.ok => {
                stream.set_read_timeout(None)?;
                return Ok(stream);
            }
            Ok(r) => bail!(
                "network {}: the switch refused the interface: {}",
                net.name,
                r.error.unwrap_or_default()
            ),
            Err(_) => continue,
        }
    }
    bail!(
        "network {}: cannot reach its switch at {} (its log: {})",
        net.name,
        sock.display(),
        net.runtime_dir().join("switch.log").display()
    )
}

fn wait_for_switch(sock: &Path) -> anyhow::Result<UnixStream> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= until => {
                return Err(e).with_context(|| {
                    format!("the network's switch did not start ({})", sock.display())
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Starts `hk network serve NAME` detached: in its own session, reparented to init (a
/// double fork, so no zombie waits on the long-lived caller), its stderr to `switch.log`.
fn spawn_switch(net: &Network) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let dir = net.runtime_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = File::create(dir.join("switch.log"))
        .with_context(|| format!("cannot create {}", dir.join("switch.log").display()))?;
    let exe = std::env::current_exe().context("locate the hk binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["network", "serve", &net.name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: fork, setsid and _exit are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                libc::setsid();
                Ok(())
            }
            _ => libc::_exit(0),
        });
    }
    let mut child = cmd.spawn().context("cannot start the network's switch")?;
    let _ = child.wait();
    Ok(())
}

/// `hk network serve NAME`: runs the network's switch until it has been idle a while.
fn serve(name: &str) -> anyhow::Result<ExitCode> {
    let net = Network::load(name)?;
    let dir = net.runtime_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock_path = dir.join("switch.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // A switch that is exiting holds the lock a moment longer; one that runs holds it
    // for good, and then this one is not needed.
    let until = Instant::now() + Duration::from_secs(2);
    while lock.try_lock().is_err() {
        if Instant::now() >= until {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = net.socket();
    let _ = fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    let upstreams = if net.internal {
        Vec::new()
    } else {
        gateway::parse_resolv_conf(&fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    };
    eprintln!(
        "hk-switch: network {} ({}), gateway and DNS {}, upstream resolvers {upstreams:?}",
        net.name, net.subnet, net.gateway
    );
    let gw = gateway::Gateway::new(net.gateway, net.internal, &upstreams);
    let mut sw = switch::Switch::new(net.segment(), gw, Some(listener));
    loop {
        sw.poll_once(Duration::from_millis(500));
        if sw.idle_for(Instant::now()).is_some_and(|d| d >= IDLE_EXIT) {
            break;
        }
    }
    // Unlinked while the lock is held, so it never removes a successor's socket.
    let _ = fs::remove_file(&sock);
    eprintln!("hk-switch: idle, exiting; {:?}", sw.stats);
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

// ---- the command line ----

#[derive(clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove all networks no container uses
    Prune(crate::lifecycle::PruneArgs),
    /// Connect a container to a network (it takes effect at the container's next start)
    Connect(ConnectArgs),
    /// Disconnect a container from a network
    Disconnect(DisconnectArgs),
    /// The switch of a network (started on demand by the first VM that joins)
    #[command(hide = true)]
    Serve { name: String },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Subnet in CIDR format, such as 10.90.0.0/24 [default: the first free 10.89.N.0/24]
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway (and DNS server) address [default: the subnet's first address]
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// Set metadata on the network
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Names on the network resolve; no DNS is relayed to the host's resolvers
    #[arg(long)]
    internal: bool,
    /// Network driver (only hk-switch; "bridge" is accepted as docker's default)
    #[arg(short, long, default_value = DRIVER)]
    driver: String,
    name: String,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Output format: `table`, or `json` (one object per line, as docker)
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Do not error if a network does not exist
    #[arg(short, long)]
    force: bool,
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// Add a network-scoped alias for the container
    #[arg(long = "alias")]
    aliases: Vec<String>,
    network: String,
    container: String,
}

#[derive(clap::Args)]
pub struct DisconnectArgs {
    /// Accepted for docker's sake; a stopped container needs no force
    #[arg(short, long)]
    force: bool,
    network: String,
    container: String,
}

pub fn run(cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NetworkCommand::Create(a) => create(a),
        NetworkCommand::Ls(a) => ls(a),
        NetworkCommand::Rm(a) => rm(a),
        NetworkCommand::Inspect(a) => inspect(a),
        NetworkCommand::Prune(a) => prune(a),
        NetworkCommand::Connect(a) => connect_cmd(a),
        NetworkCommand::Disconnect(a) => disconnect_cmd(a),
        NetworkCommand::Serve { name } => serve(&name),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let net = create_network(args)?;
    println!("{}", net.id);
    Ok(ExitCode::SUCCESS)
}

/// `hk network create`, for `hk compose` too (which makes its networks with labels).
pub(crate) fn create_network(args: CreateArgs) -> anyhow::Result<Network> {
    let name = args.name;
    if container::check_name(&name).is_err() {
        bail!("invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    if !matches!(args.driver.as_str(), DRIVER | "bridge") {
        bail!(
            "network driver {:?} is not supported: hk has one, {DRIVER}",
            args.driver
        );
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let _lock = lock_file(&store_dir().join("lock"))?;
    let path = store_dir().join(format!("{name}.json"));
    if path.exists() {
        bail!("network with name {name} already exists");
    }
    let existing = Network::all()?;
    let cidr = match &args.subnet {
        Some(s) => {
            let cidr = parse_cidr(s).with_context(|| {
                format!("invalid subnet {s}: expected an IPv4 network such as 10.90.0.0/24")
            })?;
            if cidr.1 > 30 {
                bail!(
                    "subnet {s} is too small: it needs room for a gateway and a VM (/30 at most)"
                );
            }
            if let Some(other) = existing.iter().find(|n| overlaps(n.cidr(), cidr)) {
                bail!(
                    "subnet {s} overlaps with network {} ({})",
                    other.name,
                    other.subnet
                );
            }
            cidr
        }
        None => (0..=255u8)
            .map(|n| (Ipv4Addr::new(10, 89, n, 0), 24))
            .find(|&c| !existing.iter().any(|n| overlaps(n.cidr(), c)))
            .context("no free 10.89.N.0/24 subnet left: pass --subnet")?,
    };
    let gateway = match args.gateway {
        Some(gw) => {
            let m = mask(cidr.1);
            let n = u32::from(gw);
            if n & m != u32::from(cidr.0) || n == u32::from(cidr.0) || n == u32::from(cidr.0) | !m {
                bail!(
                    "gateway {gw} is not a host address of {}/{}",
                    cidr.0,
                    cidr.1
                );
            }
            gw
        }
        None => Ipv4Addr::from(u32::from(cidr.0) + 1),
    };
    let net = Network {
        name: name.clone(),
        id: container::new_id(),
        driver: DRIVER.into(),
        subnet: format!("{}/{}", cidr.0, cidr.1),
        gateway,
        labels,
        created: container::now(),
        internal: args.internal,
    };
    write_json(&path, &net)?;
    Ok(net)
}

/// Removes network `name` unless a container uses it; `Ok(false)` when there is none.
pub(crate) fn remove_network(name: &str) -> anyhow::Result<bool> {
    let _lock = lock_file(&store_dir().join("lock"))?;
    match Network::load(name) {
        Ok(net) => remove(&net).map(|()| true),
        Err(_) => Ok(false),
    }
}

fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let nets = Network::all()?;
    let id = |n: &Network| {
        if args.no_trunc {
            n.id.clone()
        } else {
            n.short_id().to_string()
        }
    };
    if args.quiet {
        for n in &nets {
            println!("{}", id(n));
        }
    } else if args.format == "json" {
        for n in &nets {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{}",
                serde_json::json!({
                    "CreatedAt": n.created,
                    "Driver": n.driver,
                    "ID": id(n),
                    "IPv6": "false",
                    "Internal": n.internal.to_string(),
                    "Labels": labels.join(","),
                    "Name": n.name,
                    "Scope": "local",
                })
            );
        }
    } else {
        let width = if args.no_trunc { 64 } else { 12 };
        println!(
            "{:<width$}   {:<20} {:<10} SCOPE",
            "NETWORK ID", "NAME", "DRIVER"
        );
        for n in &nets {
            println!("{:<width$}   {:<20} {:<10} local", id(n), n.name, n.driver);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for spec in &args.networks {
        let result = (|| -> anyhow::Result<bool> {
            let _lock = lock_file(&store_dir().join("lock"))?;
            let net = match Network::find(spec) {
                Ok(n) => n,
                Err(_) if args.force => return Ok(false),
                Err(e) => return Err(e),
            };
            remove(&net)?;
            Ok(true)
        })();
        match result {
            Ok(true) => println!("{spec}"),
            Ok(false) => {}
            Err(e) => {
                eprintln!("hk: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes a network no one uses (the caller holds the store's lock).
fn remove(net: &Network) -> anyhow::Result<()> {
    let users = net.users()?;
    if !users.is_empty() {
        bail!(
            "network {} is in use by {}: remove them or hk network disconnect them first",
            net.name,
            users.join(", ")
        );
    }
    let dir = store_dir();
    for file in [
        format!("{}.json", net.name),
        format!("{}.leases.json", net.name),
        format!("{}.lock", net.name),
    ] {
        match fs::remove_file(dir.join(&file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {file}")),
        }
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    crate::lifecycle::print_inspect(&args.networks, Network::find, inspect_json)
}

/// docker's `network inspect` object. Containers: the running ones with an address here.
fn inspect_json(n: &Network) -> serde_json::Value {
    let mut containers = serde_json::Map::new();
    for (holder, ip) in n.leases() {
        let Ok(c) = Container::find(&holder) else {
            continue;
        };
        if c.config.id != holder || !c.is_running() {
            continue;
        }
        containers.insert(
            holder,
            serde_json::json!({
                "Name": c.config.name,
                "EndpointID": "",
                "MacAddress": format_mac(mac_for(ip)),
                "IPv4Address": format!("{ip}/{}", n.prefix()),
                "IPv6Address": "",
            }),
        );
    }
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{"Subnet": n.subnet, "Gateway": n.gateway.to_string()}],
        },
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": {},
        "Labels": n.labels,
    })
}

fn prune(args: crate::lifecycle::PruneArgs) -> anyhow::Result<ExitCode> {
    if !crate::lifecycle::confirm_prune(
        args.force,
        "all custom networks not used by at least one container",
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = lock_file(&store_dir().join("lock"))?;
    let mut deleted = Vec::new();
    for n in Network::all()? {
        if n.users()?.is_empty() {
            remove(&n)?;
            deleted.push(n.name);
        }
    }
    if !deleted.is_empty() {
        println!("Deleted Networks:");
        for name in deleted {
            println!("{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// hk cannot add or remove a NIC of a running VM (no hot-plug), so both commands change
/// only a container that is not running; the change applies at its next start.
fn not_running(c: &Container, what: &str) -> anyhow::Result<()> {
    if c.is_running() {
        bail!(
            "container {} is running and hk cannot {what} a running VM's network interface: \
             stop it, run this again, and start it (the change takes effect at its next start)",
            c.config.name
        );
    }
    Ok(())
}

fn connect_cmd(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let net = Network::find(&args.network)?;
    let mut c = Container::find(&args.container)?;
    not_running(&c, "add")?;
    if c.config.networks.iter().any(|a| a.name == net.name) {
        bail!(
            "container {} is already connected to network {}",
            c.config.name,
            net.name
        );
    }
    for a in &args.aliases {
        if container::check_name(a).is_err() {
            bail!("invalid alias {a:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
        }
    }
    c.config.networks.push(container::NetworkAttachment {
        name: net.name.clone(),
        aliases: args.aliases,
    });
    c.save_config()?;
    Ok(ExitCode::SUCCESS)
}

fn disconnect_cmd(args: DisconnectArgs) -> anyhow::Result<ExitCode> {
    let _ = args.force;
    let net = Network::find(&args.network)?;
    let mut c = Container::find(&args.container)?;
    not_running(&c, "remove")?;
    let before = c.config.networks.len();
    c.config.networks.retain(|a| a.name != net.name);
    if c.config.networks.len() == before {
        bail!(
            "container {} is not connected to network {}",
            c.config.name,
            net.name
        );
    }
    c.save_config()?;
    net.release(&c.config.id)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> switch::Segment {
        let (subnet, prefix) = parse_cidr(s).unwrap();
        switch::Segment {
            subnet,
            prefix,
            gateway: Ipv4Addr::from(u32::from(subnet) + 1),
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.89.3.0/24"),
            Some((Ipv4Addr::new(10, 89, 3, 0), 24))
        );
        assert_eq!(parse_cidr("10.89.3.1/24"), None, "host bits set");
        assert_eq!(parse_cidr("10.89.3.0/33"), None);
        assert_eq!(parse_cidr("10.89.3.0"), None);
        assert_eq!(parse_cidr("x/8"), None);
        assert!(overlaps(
            parse_cidr("10.89.0.0/16").unwrap(),
            parse_cidr("10.89.7.0/24").unwrap()
        ));
        assert!(!overlaps(
            parse_cidr("10.89.0.0/24").unwrap(),
            parse_cidr("10.89.1.0/24").unwrap()
        ));
        assert_eq!(mask(0), 0);
        assert_eq!(mask(32), u32::MAX);
    }

    #[test]
    fn ipam_hands_out_free_host_addresses() {
        let s = seg("10.89.0.0/29"); // .1 gateway, .2-.6 hosts, .7 broadcast
        let mut leases = BTreeMap::new();
        let mut got = Vec::new();
        for i in 0..5 {
            let h = format!("c{i}");
            let ip = allocate(s, &leases, &h, None).unwrap();
            leases.insert(h, ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert!(allocate(s, &leases, "c9", None)
            .unwrap_err()
            .contains("no free address"));
        // A holder keeps its address; a freed one is reused.
        assert_eq!(allocate(s, &leases, "c3", None).unwrap().octets()[3], 5);
        leases.remove("c1");
        assert_eq!(allocate(s, &leases, "c9", None).unwrap().octets()[3], 3);
        // An address asked for: free, taken, or not a host of the subnet.
        leases.remove("c2");
        assert_eq!(
            allocate(s, &leases, "c9", Some(Ipv4Addr::new(10, 89, 0, 4))).unwrap(),
            Ipv4Addr::new(10, 89, 0, 4)
        );
        assert!(allocate(s, &leases, "c9", Some(Ipv4Addr::new(10, 89, 0, 6))).is_err());
        for bad in [
            [10, 89, 0, 1],
            [10, 89, 0, 0],
            [10, 89, 0, 7],
            [10, 89, 1, 2],
        ] {
            assert!(
                allocate(s, &leases, "c9", Some(bad.into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(
            format_mac(mac_for(Ipv4Addr::new(10, 89, 0, 2))),
            "02:68:0a:59:00:02"
        );
    }
}
