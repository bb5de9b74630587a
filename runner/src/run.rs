//! `hk run`, `hk start`, `hk exec`: containers as microVMs, with docker's flags. `run`
//! creates a container from an image (or from `--rootfs DIR|FILE.ext4`), then supervises
//! it in the foreground or starts a detached supervisor (`-d`); see `supervisor` for what
//! runs the VM and `container` for what is kept on disk.

use crate::container::health::{self, HealthConfig};
use crate::container::mounts;
use crate::container::ports;
use crate::container::spec::{self, ImageDefaults, Overrides};
use crate::container::{self, Config, Container};
use crate::supervisor::{self, ProcessIo, Stdio, Timings, MIN_MEMORY_MIB};
use crate::vm::parse_memory;
use anyhow::{bail, Context};
use hk_agent_protocol::ProcessSpec;
use hk_image::{ImageRef, Platform, PullOptions};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

// `-h` is docker's `--hostname`, so help is `--help` only (clap would give it `-h` too,
// which its debug builds refuse as a clash). Not a doc comment: clap would make it the
// command's help text in place of `hk run`'s own (main.rs defers each command's flags).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help
    #[arg(id = "help", long = "help", action = clap::ArgAction::Help)]
    _help: Option<bool>,
    /// Boot this root filesystem instead of an image's: a directory or an ext4 image file;
    /// then every argument is the command
    #[arg(long, value_name = "DIR|FILE.ext4")]
    rootfs: Option<PathBuf>,
    /// How a --rootfs directory reaches the VM: converted to an ext4 disk (cached while the
    /// directory is unchanged) or shared read-only over virtio-fs as it is
    #[arg(
        long,
        value_name = "ext4|virtiofs",
        default_value = "ext4",
        requires = "rootfs"
    )]
    rootfs_mode: RootfsMode,
    /// Assign a name to the container
    #[arg(long)]
    name: Option<String>,
    /// Run the container in the background and print its ID
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Overwrite the image's ENTRYPOINT ("" clears it)
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    entrypoint: Option<String>,
    /// Read environment variables from a file (KEY=VALUE lines)
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Container host name (default: the first 12 characters of its ID)
    #[arg(long, short = 'h')]
    hostname: Option<String>,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory (512m, 1g)
    #[arg(short, long, default_value = "512m")]
    memory: String,
    /// Mount the container's root filesystem read-only (no writable layer)
    #[arg(long)]
    read_only: bool,
    /// Set metadata on the container (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Pull the image before running: missing, always or never
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pull: String,
    /// Use the image for this platform (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Write the container ID to this file
    #[arg(long, value_name = "FILE")]
    cidfile: Option<PathBuf>,
    /// Publish a container's port to the host: [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]
    /// (no HOSTPORT: any free one, see hk port); every host address unless IP is given
    #[arg(short, long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// Publish every port the image exposes, each on any free host port
    #[arg(short = 'P', long)]
    publish_all: bool,
    /// Connect the container to a network: passt (user-mode networking through the host's
    /// sockets, the default), none (loopback only), or a network made with hk network
    /// create (repeat for several; egress stays with passt)
    #[arg(long, visible_alias = "net", value_name = "NETWORK")]
    network: Vec<String>,
    /// More names the container has on its user-defined networks' DNS
    #[arg(
        long = "network-alias",
        visible_alias = "net-alias",
        value_name = "ALIAS"
    )]
    network_aliases: Vec<String>,
    /// Add a line to /etc/hosts (NAME:IP; host-gateway is the host)
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Use this DNS server instead of the host's resolvers
    #[arg(long, value_name = "IP")]
    dns: Vec<std::net::IpAddr>,
    /// Bind a host directory or mount a named volume (HOSTDIR|VOLUME:PATH[:ro|rw])
    #[arg(short, long = "volume", value_name = "SOURCE:PATH[:OPTS]")]
    volume: Vec<String>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=...,target=...,readonly)
    #[arg(long = "mount", value_name = "type=TYPE,...")]
    mount: Vec<String>,
    /// Mount a tmpfs directory (PATH[:OPTIONS])
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]")]
    tmpfs: Vec<String>,
    /// Print where the time went (image lookup, VM setup, boot, process, shutdown)
    #[arg(long)]
    timings: bool,
    /// Restart policy of a detached container: no, always, unless-stopped or
    /// on-failure[:MAX-RETRIES]
    #[arg(long, default_value = "no")]
    pub(crate) restart: String,
    /// Command to run to check health (through /bin/sh -c)
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    health_cmd: Option<String>,
    /// Time between running the check (default 30s)
    #[arg(long = "health-interval", value_name = "DURATION")]
    pub(crate) health_interval: Option<String>,
    /// Maximum time to allow one check to run (default 30s)
    #[arg(long = "health-timeout", value_name = "DURATION")]
    pub(crate) health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy (default 3)
    #[arg(long = "health-retries", value_name = "N")]
    pub(crate) health_retries: Option<u32>,
    /// Start period during which failures do not count (default 0s)
    #[arg(long = "health-start-period", value_name = "DURATION")]
    pub(crate) health_start_period: Option<String>,
    /// Time between checks during the start period (default 5s)
    #[arg(long = "health-start-interval", value_name = "DURATION")]
    pub(crate) health_start_interval: Option<String>,
    /// Disable any healthcheck
    #[arg(long)]
    no_healthcheck: bool,
    /// Signal to stop the container (default: the image's, else SIGTERM)
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub(crate) stop_signal: Option<String>,
    /// Seconds to wait for the stop signal before killing the container (default 10)
    #[arg(long = "stop-timeout", value_name = "SECONDS")]
    pub(crate) stop_timeout: Option<u64>,
    /// A whole ENTRYPOINT (compose's `entrypoint:` list); not a flag
    #[arg(skip)]
    pub(crate) entrypoint_argv: Option<Vec<String>>,
    /// A healthcheck test in docker's list form (`CMD ...`, `CMD-SHELL ...`); not a flag
    #[arg(skip)]
    pub(crate) health_test: Option<Vec<String>>,
    #[command(flatten)]
    seccomp: crate::vm::SeccompArg,
    #[command(flatten)]
    process: ProcessFlags,
    /// The image, then the command and its arguments (with --rootfs: only the command)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    args: Vec<String>,
}

impl RunArgs {
    pub(crate) fn set_name(&mut self, name: String) {
        self.name = Some(name);
    }

    /// `hk compose run`: a one-off container of a service, which never restarts; the
    /// command (when given) replaces the service's, `env` adds to its environment.
    pub(crate) fn set_oneoff(
        &mut self,
        name: String,
        rm: bool,
        detach: bool,
        entrypoint: Option<Vec<String>>,
        env: Vec<String>,
        command: Vec<String>,
    ) {
        self.name = Some(name);
        self.rm = rm;
        self.detach = detach;
        self.restart = "no".into();
        if entrypoint.is_some() {
            self.entrypoint_argv = entrypoint;
        }
        self.process.env.extend(env);
        if !command.is_empty() {
            self.args.truncate(1);
            self.args.extend(command);
        }
    }
}

#[derive(clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    process: ProcessFlags,
    /// Detached mode: run the command in the background
    #[arg(short, long)]
    detach: bool,
    /// The container (name or ID), then the command and its arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        num_args = 2..,
        value_name = "CONTAINER COMMAND [ARG...]"
    )]
    args: Vec<String>,
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// Attach the container's output (and with -i its input) and wait for it
    #[arg(short, long)]
    attach: bool,
    /// Attach the container's stdin
    #[arg(short, long)]
    interactive: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

// What `run` and `exec` say about the process, as docker's flags. Not a doc comment, which
// clap would make `hk exec`'s help text (main.rs defers each command's flags).
#[derive(clap::Args)]
pub struct ProcessFlags {
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
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (c, mut timings) = create(&args)?;
    let id = c.config.id.clone();
    if let Some(f) = &args.cidfile {
        std::fs::write(f, &id).with_context(|| format!("cannot write {}", f.display()))?;
    }
    if args.detach {
        return match start_detached(&c)? {
            Started::Ok => {
                println!("{id}");
                Ok(ExitCode::SUCCESS)
            }
            Started::Failed(code) => Ok(ExitCode::from(code)),
        };
    }
    if crate::lab::needed() {
        return start_in_lab(&c, args.timings);
    }
    let code = supervisor::supervise(
        &c,
        Stdio::Attached {
            interactive: args.process.interactive,
        },
        args.timings.then_some(&mut timings),
    )?;
    if args.timings {
        timings.print();
    }
    Ok(ExitCode::from(code))
}

/// The healthcheck the container gets: the image's HEALTHCHECK (docker's config field,
/// which `hk build` writes), each part of it overridden by its flag (`--health-cmd` or
/// compose's test list, `--health-interval`...), docker's defaults for what neither gives;
/// `None` with `--no-healthcheck`, a `NONE` test, or no test at all.
fn healthcheck(
    args: &RunArgs,
    image: Option<&serde_json::Value>,
) -> anyhow::Result<Option<HealthConfig>> {
    let from_image = |key: &str| image.and_then(|h| h.get(key));
    // Image durations are nanoseconds; 0 means "the default".
    let image_ms = |key: &str| {
        from_image(key)
            .and_then(serde_json::Value::as_u64)
            .filter(|ns| *ns > 0)
            .map(|ns| ns / 1_000_000)
    };
    let image_test = from_image("Test").and_then(|t| {
        t.as_array()?
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
    });
    let test = match (&args.health_test, &args.health_cmd) {
        _ if args.no_healthcheck => return Ok(None),
        (Some(t), _) => t.clone(),
        (None, Some(cmd)) => vec!["CMD-SHELL".into(), cmd.clone()],
        (None, None) => match image_test {
            Some(t) if !t.is_empty() => t,
            _ => return Ok(None),
        },
    };
    if test.first().is_some_and(|t| t == "NONE") {
        return Ok(None);
    }
    let ms = |flag: &str, v: &Option<String>, key: &str, default: u64| -> anyhow::Result<u64> {
        match v {
            Some(t) => Ok(health::parse_duration(t)
                .with_context(|| format!("--{flag}"))?
                .as_millis() as u64),
            None => Ok(image_ms(key).unwrap_or(default)),
        }
    };
    let image_retries = from_image("Retries")
        .and_then(serde_json::Value::as_u64)
        .filter(|r| *r > 0)
        .map(|r| r.min(u64::from(u32::MAX)) as u32);
    Ok(Some(HealthConfig {
        test,
        interval_ms: ms(
            "health-interval",
            &args.health_interval,
            "Interval",
            HealthConfig::DEFAULT_INTERVAL_MS,
        )?,
        timeout_ms: ms(
            "health-timeout",
            &args.health_timeout,
            "Timeout",
            HealthConfig::DEFAULT_TIMEOUT_MS,
        )?,
        start_period_ms: ms(
            "health-start-period",
            &args.health_start_period,
            "StartPeriod",
            0,
        )?,
        start_interval_ms: ms(
            "health-start-interval",
            &args.health_start_interval,
            "StartInterval",
            HealthConfig::DEFAULT_START_INTERVAL_MS,
        )?,
        retries: args
            .health_retries
            .or(image_retries)
            .unwrap_or(HealthConfig::DEFAULT_RETRIES),
    }))
}

/// Makes the container `hk run` describes (pulling its image as `--pull` says), without
/// starting it; `hk compose` makes its containers here too.
pub(crate) fn create(args: &RunArgs) -> anyhow::Result<(Container, Timings)> {
    let start = Instant::now();
    let mut timings = Timings::new(start);
    let memory_mib = parse_memory(&args.memory)?;
    if memory_mib < MIN_MEMORY_MIB {
        bail!(
            "--memory {} is too small for the guest kernel: give at least {MIN_MEMORY_MIB}m",
            args.memory
        );
    }
    if args.cpus == 0 || args.cpus > 255 {
        bail!("--cpus {}: give a number of vCPUs from 1 to 255", args.cpus);
    }
    if let Some(name) = &args.name {
        container::check_name(name)?;
    }
    let in_lab = crate::lab::needed();
    if in_lab && args.detach {
        bail!(
            "-d needs a host with hardware KVM: in the nested lab a VM ends with the hk \
             command that started it; run in the foreground"
        );
    }
    if in_lab && args.process.interactive {
        bail!(
            "-i cannot reach a container in the nested lab, which forwards no input; \
             use a host with hardware KVM"
        );
    }
    if let Some(f) = &args.cidfile {
        if f.exists() {
            bail!(
                "container ID file {} already exists: remove it first",
                f.display()
            );
        }
    }
    if args.rm && args.restart != "no" {
        bail!(
            "--restart {} and --rm conflict: a removed container cannot restart",
            args.restart
        );
    }
    health::Restart::parse(&args.restart)?;
    // Checked now, for the flags' mistakes; taken again with the image's part below.
    healthcheck(args, None)?;
    let (network, networks) = networks(&args.network, &args.network_aliases)?;
    let mut published = Vec::new();
    for p in &args.publish {
        published.extend(ports::parse_publish(p)?);
    }
    if network == container::NETWORK_NONE && (!published.is_empty() || args.publish_all) {
        bail!("--network none has no interface to publish ports on: drop -p/-P or the option");
    }
    let mut add_hosts = Vec::new();
    for h in &args.add_hosts {
        let (name, ip) = h
            .split_once(':')
            .filter(|(n, ip)| {
                !n.is_empty() && (*ip == "host-gateway" || ip.parse::<std::net::IpAddr>().is_ok())
            })
            .with_context(|| {
                format!("invalid --add-host {h:?}: give NAME:IP (or NAME:host-gateway)")
            })?;
        let ip = if ip == "host-gateway" {
            crate::passt::GATEWAY
        } else {
            ip
        };
        add_hosts.push((name.to_string(), ip.to_string()));
    }
    let mut mounts = mounts::order(
        args.volume
            .iter()
            .map(|v| mounts::parse_volume_flag(v))
            .chain(args.mount.iter().map(|m| mounts::parse_mount_flag(m)))
            .chain(args.tmpfs.iter().map(|t| mounts::parse_tmpfs_flag(t)))
            .collect::<anyhow::Result<Vec<_>>>()?,
    )?;
    mounts::prepare(&mut mounts)?;
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }

    // The image and what it says, or the --rootfs and nothing.
    let mut image_health = None;
    let (image_name, image_id, rootfs, defaults, cmd) = match &args.rootfs {
        Some(path) => {
            let lower = match args.rootfs_mode {
                RootfsMode::Ext4 => crate::initramfs::rootfs_image(path)?,
                RootfsMode::Virtiofs => rootfs_dir(path)?,
            };
            let name = path.display().to_string();
            (
                name,
                String::new(),
                Some(lower),
                ImageDefaults::default(),
                &args.args[..],
            )
        }
        None => {
            let (image, rest) = args.args.split_first().expect("clap requires one");
            let store = crate::images::store()?;
            let found = find_image(&store, image, args)?;
            // One read of the config blob: OCI's type for the usual fields, the JSON for
            // docker's Healthcheck, which OCI's type drops.
            let bytes = store.config_bytes(&found)?;
            let config = oci_spec::image::ImageConfiguration::from_reader(&bytes[..])
                .with_context(|| format!("the config of image {image} is damaged"))?;
            image_health = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("config")?.get("Healthcheck").cloned());
            // Converted now, on this host: the nested lab sees the store read-only.
            store.rootfs(&found)?;
            let defaults = ImageDefaults::from_oci(&config);
            (
                image.clone(),
                found.config.to_string(),
                None,
                defaults,
                rest,
            )
        }
    };
    timings.mark("image lookup");
    let healthcheck = healthcheck(args, image_health.as_ref())?;
    let id = container::new_id();
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    let mut env = Vec::new();
    for f in &args.env_file {
        env.extend(spec::env_file(f)?);
    }
    env.extend(args.process.env.iter().filter_map(|e| spec::env_flag(e)));
    let flag_entrypoint = args.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    let overrides = Overrides {
        entrypoint: args
            .entrypoint_argv
            .as_deref()
            .or(flag_entrypoint.as_deref()),
        cmd,
        env,
        workdir: args.process.workdir.as_deref(),
        user: args.process.user.as_deref(),
        hostname: &hostname,
        tty: args.process.tty,
        open_stdin: args.process.interactive,
    };
    let process = spec::process(&defaults, &overrides)?;
    let (entrypoint, cmd) = spec::command(&defaults, &overrides);
    if args.publish_all {
        // docker: an explicit -p for the same container port wins over -P.
        for p in ports::publish_all(&defaults.exposed_ports) {
            if !published
                .iter()
                .any(|q| q.container_port == p.container_port && q.proto == p.proto)
            {
                published.push(p);
            }
        }
    }
    ports::check_unique(&published)?;
    if in_lab && !published.is_empty() {
        bail!(
            "-p/-P need a host with hardware KVM: in the nested lab the port would open \
             inside the lab's VM, not on this host"
        );
    }
    if in_lab && !networks.is_empty() {
        bail!(
            "--network NAME needs a host with hardware KVM: in the nested lab each hk \
             command runs in a VM of its own, so containers could not meet on a network"
        );
    }
    let mut all_labels = defaults.labels.clone();
    all_labels.extend(labels);
    let c = Container::create(Config {
        id: id.clone(),
        name: args.name.clone().unwrap_or_default(),
        created: container::now(),
        image: image_name,
        image_id,
        rootfs,
        process,
        entrypoint,
        cmd,
        hostname,
        labels: all_labels,
        stop_signal: args
            .stop_signal
            .clone()
            .unwrap_or_else(|| defaults.stop_signal.clone()),
        exposed_ports: defaults.exposed_ports.clone(),
        cpus: args.cpus,
        memory_mib,
        read_only: args.read_only,
        auto_remove: args.rm,
        seccomp: args.seccomp.on,
        network: network.to_string(),
        ports: published,
        add_hosts,
        dns: args.dns.iter().map(|ip| ip.to_string()).collect(),
        networks,
        mounts,
        restart: (args.restart != "no").then(|| args.restart.clone()),
        healthcheck,
        stop_timeout: args.stop_timeout,
    })?;
    timings.mark("create");
    Ok((c, timings))
}

/// `--network` values: the mode of the container's own interface (passt or none) and the
/// user-defined networks it joins, which must exist.
/// `--rootfs-mode`: how a `--rootfs` directory becomes the container's lower layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsMode {
    Ext4,
    Virtiofs,
}

/// A `--rootfs` directory shared as it is. Absolute, since the supervisor that boots the
/// VM need not share this process's working directory.
fn rootfs_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_dir() {
        bail!(
            "--rootfs-mode virtiofs shares a directory, and {} is none: give a directory, \
             or drop --rootfs-mode to boot an ext4 file",
            path.display()
        );
    }
    Ok(std::path::absolute(path)?)
}

fn networks(
    given: &[String],
    aliases: &[String],
) -> anyhow::Result<(&'static str, Vec<container::NetworkAttachment>)> {
    let mut mode = container::NETWORK_USER;
    let mut joined = Vec::new();
    for name in given {
        match name.as_str() {
            // Compose files and scripts say "bridge" (docker's default) or "default".
            "bridge" | "default" | container::NETWORK_USER => {}
            container::NETWORK_NONE => mode = container::NETWORK_NONE,
            other => {
                let net = crate::network::Network::find(other)?;
                joined.push(container::NetworkAttachment {
                    name: net.name,
                    aliases: aliases.to_vec(),
                });
            }
        }
    }
    if mode == container::NETWORK_NONE && given.len() > 1 {
        bail!("--network none cannot be combined with other networks");
    }
    if !aliases.is_empty() && joined.is_empty() {
        bail!("--network-alias works only on networks made with hk network create");
    }
    Ok((mode, joined))
}

/// The image, pulled as `--pull` says.
fn find_image(
    store: &hk_image::Store,
    name: &str,
    args: &RunArgs,
) -> anyhow::Result<hk_image::Image> {
    let local = store.resolve(name);
    let missing = matches!(local, Err(hk_image::Error::NotFound(_)));
    let pull = match args.pull.as_str() {
        "always" => true,
        "never" => false,
        _ => missing,
    };
    if !pull {
        return match local {
            Err(hk_image::Error::NotFound(_)) => bail!(
                "image {name} is not here: pull it (hk pull {name}) or check the name \
                 (hk images)"
            ),
            other => Ok(other?),
        };
    }
    let reference = ImageRef::parse(name)?;
    if missing {
        eprintln!("Unable to find image '{reference}' locally");
    }
    let opts = PullOptions {
        platform: args
            .platform
            .as_deref()
            .map(str::parse::<Platform>)
            .transpose()?,
        tls_verify: None,
        convert: true,
    };
    crate::images::pull_with_progress(store, &reference, &opts, false, true)
        .with_context(|| format!("cannot pull {name}: check the name, or hk login"))
}

/// `hk start`: detached supervisors, or one attached.
pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.attach || args.interactive {
        let [one] = &args.containers[..] else {
            bail!("you cannot start and attach multiple containers at once");
        };
        let c = Container::find(one)?;
        if c.is_running() {
            bail!("container {one} is already running");
        }
        if crate::lab::needed() {
            if args.interactive {
                bail!("-i cannot reach a container in the nested lab, which forwards no input");
            }
            return start_in_lab(&c, false);
        }
        let code = supervisor::supervise(
            &c,
            Stdio::Attached {
                interactive: args.interactive,
            },
            None,
        )?;
        return Ok(ExitCode::from(code));
    }
    if crate::lab::needed() {
        bail!(
            "a detached container needs a host with hardware KVM: in the nested lab a VM ends \
             with the hk command that started it; use hk start -a"
        );
    }
    let mut failed = false;
    for name in &args.containers {
        let result = Container::find(name).and_then(|c| {
            if c.is_running() {
                return Ok(Started::Ok);
            }
            start_detached(&c)
        });
        match result {
            Ok(Started::Ok) => println!("{name}"),
            Ok(Started::Failed(_)) => failed = true,
            Err(e) => {
                eprintln!("hk: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(crate::EXIT_RUNNER_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

pub enum Started {
    Ok,
    /// The process could not start; its error was printed; hk exits with this code.
    Failed(u8),
}

/// Starts `hk container supervise ID` in a session of its own and waits until it says the
/// main process runs (or why not).
pub fn start_detached(c: &Container) -> anyhow::Result<Started> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locate the hk binary")?;
    let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
    let log_path = c.dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["container", "supervise", &c.config.id])
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the supervisor leaves hk's session and
    // terminal, so closing the terminal does not end the container.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start the container's supervisor")?;
    drop(cmd);
    let mut lines = std::io::BufReader::new(reader).lines();
    let mut error = None;
    while let Some(Ok(line)) = lines.next() {
        if line == "ok" {
            // The supervisor lives on, on its own; reaped by init when it ends.
            std::thread::spawn(move || child.wait());
            return Ok(Started::Ok);
        }
        if let Some(msg) = line.strip_prefix("error ") {
            error = Some(msg.to_string());
        }
        if let Some(code) = line.strip_prefix("exit ") {
            let _ = child.wait();
            eprintln!("hk: {}", error.unwrap_or_default());
            return Ok(Started::Failed(
                code.parse().unwrap_or(crate::EXIT_RUNNER_ERROR),
            ));
        }
    }
    let _ = child.wait();
    let state = c.state();
    if !state.error.is_empty() {
        bail!("{}", state.error);
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    bail!(
        "the container's supervisor ended before the container started: {}",
        log.trim()
    )
}

#[derive(clap::Args)]
pub struct SuperviseArgs {
    /// Stay attached to this terminal (the nested lab's side of a foreground run)
    #[arg(long)]
    attach: bool,
    /// Print where the time went
    #[arg(long)]
    timings: bool,
    id: String,
}

/// `hk container supervise ID`: a container's supervisor; detached unless `--attach`.
pub fn supervise_command(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let c = Container::find(&args.id)?;
    if args.attach {
        let mut timings = Timings::new(Instant::now());
        let code = supervisor::supervise(
            &c,
            Stdio::Attached { interactive: false },
            args.timings.then_some(&mut timings),
        )?;
        if args.timings {
            timings.print();
        }
        return Ok(ExitCode::from(code));
    }
    let ready = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot keep the supervisor's pipe")?;
    // From here on stdout is nothing: the pipe closes as soon as `ready` is done with it.
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto fd 1; both descriptors are valid.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::dup2(null.as_raw_fd(), 1);
    }
    let code = supervisor::supervise(
        &c,
        Stdio::Detached {
            ready: std::fs::File::from(ready),
        },
        None,
    )?;
    Ok(ExitCode::from(code))
}

/// A foreground container on a kvm-pvm host: the VM runs in the nested lab, on the
/// container made here; the lab writes its state and layer back through a share.
fn start_in_lab(c: &Container, timings: bool) -> anyhow::Result<ExitCode> {
    // What can be prepared on the host is, before the hop: the lab sees the host's files
    // read-only, and emulation makes everything there slow.
    crate::initramfs::agent_initramfs()?;
    let mut args: Vec<OsString> = vec!["container".into(), "supervise".into(), "--attach".into()];
    if timings {
        args.push("--timings".into());
    }
    args.push(c.config.id.clone().into());
    // The lab sees the host read-only; the container's shares must be writable there.
    let mut shared = vec![c.dir.clone()];
    shared.extend(c.config.mounts.iter().filter_map(mounts::host_dir));
    let result = crate::lab::run_in_lab(&shared, &args);
    if c.config.auto_remove {
        let _ = c.remove();
    }
    result
}

/// `hk exec`: another process in a running container, through its VM's vsock socket.
pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let (name, command) = args.args.split_first().expect("clap requires two");
    let c = Container::find(name)?;
    if !c.is_running() {
        bail!("container {name} is not running: start it first (hk start {name})");
    }
    let forwarded = supervisor::forwarded_signals();
    forwarded
        .thread_block()
        .context("cannot block signals to forward them")?;
    let client = supervisor::connect(&c)?;
    let p = &c.config.process;
    // docker exec: the container's env and user, then the flags.
    let mut env = p.env.clone();
    for e in args.process.env.iter().filter_map(|e| spec::env_flag(e)) {
        spec::set_env(&mut env, &e);
    }
    if args.process.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let id = format!("exec-{}", &container::new_id()[..12]);
    let spec = ProcessSpec {
        id,
        argv: command.to_vec(),
        env,
        cwd: args
            .process
            .workdir
            .clone()
            .unwrap_or_else(|| p.cwd.clone()),
        create_cwd: false,
        user: args.process.user.clone().or_else(|| p.user.clone()),
        stdin: args.process.interactive,
        ..ProcessSpec::default()
    };
    let io = ProcessIo {
        interactive: args.process.interactive,
        tty: args.process.tty,
        log: None,
        to_terminal: !args.detach,
        sink: None,
        started: Default::default(),
    };
    if args.detach {
        client.run(spec)?;
        return Ok(ExitCode::SUCCESS);
    }
    let code = supervisor::run_process(&client, spec, &io, forwarded, None)?;
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(code))
}

/// Parses docker-style argv (`argv[0]` the command's name) into one of hk's own commands'
/// flags: drivers (`hk compose`, `hk gitlab`) start containers, execs and builds exactly as a
/// person would type them, with the same checks and messages, not a second copy of them.
pub(crate) fn parse_args<T: clap::Args>(argv: &[String]) -> anyhow::Result<T> {
    #[derive(clap::Parser)]
    #[command(no_binary_name = false)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    use clap::Parser;
    Wrap::<T>::try_parse_from(argv)
        .map(|w| w.inner)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> RunArgs {
        let argv: Vec<String> = ["run"]
            .iter()
            .chain(flags)
            .chain(&["img"])
            .map(|s| s.to_string())
            .collect();
        parse_args(&argv).unwrap()
    }

    fn image() -> serde_json::Value {
        serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000u64, "Retries": 2})
    }

    #[test]
    fn the_images_healthcheck_applies_with_docker_defaults_for_what_it_leaves_out() {
        let h = healthcheck(&args(&[]), Some(&image())).unwrap().unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(h.interval_ms, 5000);
        assert_eq!(h.retries, 2);
        assert_eq!(h.timeout_ms, HealthConfig::DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn flags_override_the_images_healthcheck_part_by_part() {
        let a = args(&["--health-interval", "1s", "--health-cmd", "exit 0"]);
        let h = healthcheck(&a, Some(&image())).unwrap().unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "exit 0"]);
        assert_eq!(h.interval_ms, 1000);
        assert_eq!(h.retries, 2);
    }

    #[test]
    fn no_healthcheck_and_none_switch_it_off() {
        assert!(healthcheck(&args(&["--no-healthcheck"]), Some(&image()))
            .unwrap()
            .is_none());
        let none = serde_json::json!({"Test": ["NONE"]});
        assert!(healthcheck(&args(&[]), Some(&none)).unwrap().is_none());
        assert!(healthcheck(&args(&[]), None).unwrap().is_none());
    }
}
