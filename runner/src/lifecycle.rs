//! docker's container lifecycle commands: `ps`, `stop`, `restart`, `kill`, `rm`, `logs`,
//! `inspect`, `wait`, `container prune`. They read the containers' directories and reach
//! running ones through their VM's vsock socket; none needs the supervisor's cooperation
//! beyond holding its lock, so they work the same after a supervisor died.

use crate::container::logs::{self, ReadOptions};
use crate::container::{Container, Status};
use crate::supervisor::{self, MAIN};
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    all: bool,
    /// Only display container IDs
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
pub struct StopArgs {
    /// Seconds to wait for the stop signal to end the container before killing it
    /// (default: its --stop-timeout, else 10)
    #[arg(short = 't', long = "time")]
    pub time: Option<u64>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Force the removal of a running container (kills it)
    #[arg(short, long)]
    force: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of the logs ("all" for all)
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    container: String,
}

#[derive(clap::Args)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
}

#[derive(clap::Subcommand)]
pub enum ContainerCommand {
    /// List containers
    #[command(alias = "list", alias = "ls")]
    Ps(PsArgs),
    /// Remove all stopped containers
    Prune(PruneArgs),
    /// The process that keeps a container's VM (started by hk run -d and hk start)
    #[command(hide = true)]
    Supervise(crate::run::SuperviseArgs),
}

pub fn container(cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ContainerCommand::Ps(a) => ps(a),
        ContainerCommand::Prune(a) => prune(a),
        ContainerCommand::Supervise(a) => crate::run::supervise_command(a),
    }
}

/// Runs `f` on each named container, docker's way: print what it returns on success, the
/// error on failure, and exit 1 if any failed.
fn each_reporting<T: std::fmt::Display>(
    names: &[String],
    mut f: impl FnMut(&str, &Container) -> anyhow::Result<T>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match Container::find(name).and_then(|c| f(name, &c)) {
            Ok(shown) => println!("{shown}"),
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

/// [`each_reporting`] for commands that print the name they were given.
fn each(
    names: &[String],
    mut f: impl FnMut(&Container) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    each_reporting(names, |name, c| f(c).map(|()| name.to_string()))
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    each(&args.containers, |c| {
        stop_one(c, stop_timeout(c, args.time))
    })
}

/// `-t` when given, else the container's `--stop-timeout`, else docker's 10 s.
pub fn stop_timeout(c: &Container, given: Option<u64>) -> Duration {
    Duration::from_secs(given.or(c.config.stop_timeout).unwrap_or(10))
}

pub fn restart(args: StopArgs) -> anyhow::Result<ExitCode> {
    each(&args.containers, |c| {
        stop_one(c, stop_timeout(c, args.time))?;
        match crate::run::start_detached(c)? {
            crate::run::Started::Ok => Ok(()),
            crate::run::Started::Failed(code) => bail!("the container exited with {code}"),
        }
    })
}

/// docker stop: the image's StopSignal (SIGTERM by default), then SIGKILL after the
/// timeout; if even that does not end it, the supervisor and its VM are killed. The
/// container's restart policy does not bring it back.
pub(crate) fn stop_one(c: &Container, timeout: Duration) -> anyhow::Result<()> {
    if !c.is_running() {
        return Ok(());
    }
    mark_stopped(c);
    let signal = if c.config.stop_signal.is_empty() {
        Signal::SIGTERM
    } else {
        parse_signal(&c.config.stop_signal)?
    };
    if let Ok(client) = supervisor::connect(c) {
        let main = client.process(MAIN);
        if main.signal(signal as i32).is_ok() && wait_stopped(c, timeout) {
            return Ok(());
        }
        if main.signal(Signal::SIGKILL as i32).is_ok() && wait_stopped(c, Duration::from_secs(10)) {
            return Ok(());
        }
    }
    kill_supervisor(c)
}

/// Tells the supervisor that a person stopped the container: no restart.
fn mark_stopped(c: &Container) {
    let _ = std::fs::write(c.stop_mark(), b"");
}

/// The VM lives in its supervisor, so killing that ends the VM at once (and passt, whose
/// socket closes with it). The last resort of stop and `rm -f`; the whole of
/// [`remove_killed`].
fn kill_supervisor(c: &Container) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = c.state();
        if state.status == Status::Running && state.pid > 1 && c.is_running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(state.pid as i32),
                Signal::SIGKILL,
            );
        }
        // A supervisor that has just taken the lock has not written its PID yet: look again.
        if wait_stopped(c, Duration::from_millis(100)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("container {} does not stop", c.config.name);
        }
    }
}

/// Whether the container stopped within `timeout`. A thread waits on the supervisor's lock,
/// so the answer comes the moment the supervisor lets go of it, not at the next tick of a
/// polling loop; past the timeout that thread is left waiting, and ends with hk.
fn wait_stopped(c: &Container, timeout: Duration) -> bool {
    if !c.is_running() {
        return true;
    }
    let (stopped, wait) = std::sync::mpsc::channel();
    let c = c.clone();
    std::thread::spawn(move || {
        // An error (the container's directory gone) means no supervisor holds the lock.
        let _ = c.wait_stopped();
        let _ = stopped.send(());
    });
    wait.recv_timeout(timeout).is_ok()
}

/// A signal by name (`TERM`, `SIGTERM`, `sigterm`) or number, as docker's flags take it.
fn parse_signal(text: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("invalid signal: {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("invalid signal: {text}"))
}

pub fn kill(args: KillArgs) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    each(&args.containers, |c| {
        if !c.is_running() {
            bail!("cannot kill container {}: it is not running", c.config.name);
        }
        mark_stopped(c);
        let sent = supervisor::connect(c)?.process(MAIN).signal(signal as i32);
        // A fatal signal can end the VM before the agent's answer leaves it: the connection
        // then closes unanswered, and the container stopping is the answer.
        if sent.is_err() && wait_stopped(c, Duration::from_secs(2)) {
            return Ok(());
        }
        sent.with_context(|| format!("cannot signal container {}", c.config.name))
    })
}

pub fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    each(&args.containers, |c| {
        if c.is_running() && !args.force {
            bail!(
                "cannot remove container {}: it is running: stop it first (hk stop {}) \
                 or force the removal (hk rm -f {})",
                c.config.name,
                c.config.name,
                c.config.name
            );
        }
        remove_forced(c)
    })
}

/// `rm -f`: kills a running container's main process (which ends its VM), its supervisor
/// too if that does not, then deletes what the container owns.
fn remove_forced(c: &Container) -> anyhow::Result<()> {
    if c.is_running() {
        // Not brought back by its restart policy while it is being removed.
        mark_stopped(c);
        if let Ok(client) = supervisor::connect(c) {
            let _ = client.process(MAIN).signal(Signal::SIGKILL as i32);
        }
        if !wait_stopped(c, Duration::from_secs(10)) {
            kill_supervisor(c)?;
        }
    }
    c.remove()
}

/// Removes a running container without ending it cleanly: its supervisor, which holds the
/// VM, is killed, where `rm -f` has the agent kill the main process, sync the guest's disks
/// and power the VM off, and the supervisor record how it ended. For a container whose
/// every file is deleted next, that clean end keeps nothing: its writable layer and logs go
/// with it, and what the guest wrote to volumes and host directories is on the host
/// already (virtio-fs has no writeback cache: each write reaches the host as it is made;
/// only pages dirtied through a shared mapping and never synced wait in the guest).
/// `hk gitlab cleanup` removes a finished job's VM this way.
pub(crate) fn remove_killed(c: &Container) -> anyhow::Result<()> {
    if c.is_running() {
        mark_stopped(c);
        kill_supervisor(c)?;
    }
    c.remove()
}

pub fn wait(args: NamesArgs) -> anyhow::Result<ExitCode> {
    each_reporting(&args.containers, |_, c| {
        c.wait_stopped()?;
        Ok(c.state().exit_code)
    })
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let c = Container::find(&args.container)?;
    let tail = match args.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse::<usize>()
                .with_context(|| format!("--tail {n}: give a number of lines or \"all\""))?,
        ),
    };
    let opts = ReadOptions {
        tail,
        timestamps: args.timestamps,
    };
    let path = c.log_path();
    let end = logs::print(&path, &opts)?;
    if args.follow {
        logs::follow(&path, end, args.timestamps, || c.is_running())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// docker's STATUS column: "Up 5 minutes", "Exited (0) 2 seconds ago", "Created".
/// `docker ps`'s PORTS: the published ports of a running container, then exposed ports
/// that are not published.
pub(crate) fn ports_text(c: &Container) -> String {
    let s = c.state();
    let published: &[crate::container::ports::Port] = if s.status == Status::Running {
        &s.ports
    } else {
        &[]
    };
    let mut out: Vec<String> = published.iter().map(|p| p.display()).collect();
    for e in &c.config.exposed_ports {
        let key = if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        };
        if !published.iter().any(|p| p.key() == key) {
            out.push(key);
        }
    }
    out.join(", ")
}

#[derive(clap::Args)]
pub struct PortArgs {
    container: String,
    /// A container port (80, 80/tcp, 53/udp): print only its host addresses
    #[arg(value_name = "PRIVATE_PORT[/PROTO]")]
    port: Option<String>,
}

/// `hk port`: a running container's published ports, as `docker port` prints them.
pub fn port(args: PortArgs) -> anyhow::Result<ExitCode> {
    let c = Container::find(&args.container)?;
    let s = c.state();
    let published = if c.is_running() { s.ports } else { Vec::new() };
    match &args.port {
        None => {
            for p in &published {
                println!("{} -> {}:{}", p.key(), p.host_ip_text(), p.host_port);
            }
        }
        Some(want) => {
            let key = if want.contains('/') {
                want.clone()
            } else {
                format!("{want}/tcp")
            };
            let found: Vec<_> = published.iter().filter(|p| p.key() == key).collect();
            if found.is_empty() {
                bail!("no public port '{key}' published for {}", args.container);
            }
            for p in found {
                println!("{}:{}", p.host_ip_text(), p.host_port);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status_text(c: &Container) -> String {
    let s = c.state();
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let health = match s.health.as_ref().map(|h| h.status.as_str()) {
                Some(crate::container::health::STARTING) => " (health: starting)".to_string(),
                Some(status) => format!(" ({status})"),
                None => String::new(),
            };
            format!("Up {}{health}", since(s.started_at.as_deref(), false))
        }
        Status::Exited => format!(
            "Exited ({}) {}",
            s.exit_code,
            since(s.finished_at.as_deref(), true)
        ),
    }
}

pub(crate) fn since(t: Option<&str>, ago: bool) -> String {
    let Some(t) = t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return String::new();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    let text = match secs {
        s if s < 1 => "Less than a second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    };
    if ago {
        format!("{text} ago")
    } else {
        text
    }
}

pub(crate) fn command_text(c: &Container, no_trunc: bool) -> String {
    let text = c.config.process.argv.join(" ");
    if no_trunc || text.chars().count() <= 20 {
        format!("\"{text}\"")
    } else {
        format!("\"{}…\"", text.chars().take(19).collect::<String>())
    }
}

pub fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let mut all = Container::all()?;
    all.reverse(); // newest first, as docker
    let shown: Vec<&Container> = all.iter().filter(|c| args.all || c.is_running()).collect();
    if args.quiet {
        for c in shown {
            println!(
                "{}",
                if args.no_trunc {
                    &c.config.id
                } else {
                    c.short_id()
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == "json" {
        for c in shown {
            let s = c.state();
            println!(
                "{}",
                json!({
                    "Command": command_text(c, true),
                    "CreatedAt": c.config.created,
                    "ID": if args.no_trunc { c.config.id.as_str() } else { c.short_id() },
                    "Image": c.config.image,
                    "Labels": c.config.labels.iter().map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>().join(","),
                    "Names": c.config.name,
                    "Ports": ports_text(c),
                    "RunningFor": since(Some(&c.config.created), true),
                    "State": c.state().status.as_str(),
                    "Status": status_text(c),
                    "ExitCode": s.exit_code,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec![
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    for c in shown {
        rows.push(vec![
            if args.no_trunc {
                c.config.id.clone()
            } else {
                c.short_id().to_string()
            },
            c.config.image.clone(),
            command_text(c, args.no_trunc),
            since(Some(&c.config.created), true),
            status_text(c),
            ports_text(c),
            c.config.name.clone(),
        ]);
    }
    crate::images::print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: NamesArgs) -> anyhow::Result<ExitCode> {
    print_inspect(&args.containers, Container::find, inspect_json)
}

/// docker's inspect document, with its field names where hk has the thing.
fn inspect_json(c: &Container) -> serde_json::Value {
    let cfg = &c.config;
    let s = c.state();
    let zero = "0001-01-01T00:00:00Z";
    let (path, args) = cfg
        .process
        .argv
        .split_first()
        .map_or((String::new(), Vec::new()), |(p, a)| {
            (p.clone(), a.to_vec())
        });
    let mut ports: serde_json::Map<String, serde_json::Value> = cfg
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    // docker's shapes: bindings as asked (HostConfig) and as made (NetworkSettings).
    let bindings = |list: &[crate::container::ports::Port]| {
        let mut map = serde_json::Map::new();
        for p in list {
            let entry = map.entry(p.key()).or_insert_with(|| json!([]));
            if let Some(v) = entry.as_array_mut() {
                v.push(json!({
                    "HostIp": p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
                }));
            }
        }
        serde_json::Value::Object(map)
    };
    for p in &cfg.ports {
        ports.entry(p.key()).or_insert_with(|| json!({}));
    }
    let user = cfg.network == crate::container::NETWORK_USER;
    let running = s.status == Status::Running;
    json!({
        "Id": cfg.id,
        "Created": cfg.created,
        "Path": path,
        "Args": args,
        "State": {
            "Status": s.status.as_str(),
            "Running": s.status == Status::Running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": if s.status == Status::Running { s.pid } else { 0 },
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": s.started_at.as_deref().unwrap_or(zero),
            "FinishedAt": s.finished_at.as_deref().unwrap_or(zero),
            "Health": s.health.as_ref().map(|h| json!({
                "Status": h.status,
                "FailingStreak": h.failing_streak,
                "Log": h.log.iter().map(|p| json!({
                    "Start": p.start, "End": p.end, "ExitCode": p.exit_code, "Output": p.output,
                })).collect::<Vec<_>>(),
            })),
        },
        "RestartCount": s.restart_count,
        "Image": cfg.image_id,
        "LogPath": c.log_path(),
        "Name": format!("/{}", cfg.name),
        "Driver": "hk-microvm",
        "Mounts": cfg.mounts.iter().map(crate::container::mounts::inspect_json).collect::<Vec<_>>(),
        "HostConfig": {
            "AutoRemove": cfg.auto_remove,
            "RestartPolicy": restart_policy_json(cfg.restart.as_deref()),
            "ReadonlyRootfs": cfg.read_only,
            "Memory": cfg.memory_mib << 20,
            "NanoCpus": u64::from(cfg.cpus) * 1_000_000_000,
            "NetworkMode": cfg.network,
            "PortBindings": bindings(&cfg.ports),
            "ExtraHosts": cfg.add_hosts.iter().map(|(n, ip)| format!("{n}:{ip}")).collect::<Vec<_>>(),
            "Dns": cfg.dns,
        },
        "NetworkSettings": {
            "Ports": if running { bindings(&s.ports) } else { json!({}) },
            "IPAddress": if user && running { crate::passt::GUEST_IP } else { "" },
            "IPPrefixLen": if user && running { crate::passt::PREFIX_LEN } else { 0 },
            "Gateway": if user && running { crate::passt::GATEWAY } else { "" },
            "Networks": cfg.networks.iter().map(|a| {
                let ip = crate::network::Network::load(&a.name)
                    .ok()
                    .and_then(|n| n.leases().get(&cfg.id).map(|ip| (n, *ip)));
                (a.name.clone(), json!({
                    "Aliases": a.aliases,
                    "NetworkID": ip.as_ref().map(|(n, _)| n.id.clone()).unwrap_or_default(),
                    "IPAddress": ip.as_ref().map(|(_, ip)| ip.to_string()).unwrap_or_default(),
                    "IPPrefixLen": ip.as_ref().map_or(0, |(n, _)| n.prefix()),
                    "MacAddress": ip.as_ref().map(|(_, ip)| crate::network::format_mac(crate::network::mac_for(*ip))).unwrap_or_default(),
                }))
            }).collect::<serde_json::Map<_, _>>(),
        },
        "Config": {
            "Hostname": cfg.hostname,
            "User": cfg.process.user.clone().unwrap_or_default(),
            "Tty": cfg.process.tty,
            "OpenStdin": cfg.process.open_stdin,
            "Env": cfg.process.env,
            "Cmd": cfg.cmd,
            "Entrypoint": if cfg.entrypoint.is_empty() { json!(null) } else { json!(cfg.entrypoint) },
            "Image": cfg.image,
            "WorkingDir": cfg.process.cwd,
            "Labels": cfg.labels,
            "StopSignal": if cfg.stop_signal.is_empty() { "SIGTERM" } else { cfg.stop_signal.as_str() },
            "StopTimeout": cfg.stop_timeout,
            "Healthcheck": cfg.healthcheck.as_ref().map(|h| json!({
                "Test": h.test,
                "Interval": h.interval_ms * 1_000_000,
                "Timeout": h.timeout_ms * 1_000_000,
                "StartPeriod": h.start_period_ms * 1_000_000,
                "StartInterval": h.start_interval_ms * 1_000_000,
                "Retries": h.retries,
            })),
            "ExposedPorts": ports,
        },
    })
}

/// docker's `HostConfig.RestartPolicy`: `{"Name": "on-failure", "MaximumRetryCount": 3}`.
fn restart_policy_json(policy: Option<&str>) -> serde_json::Value {
    let text = policy.unwrap_or("no");
    let (name, max) = text.split_once(':').unwrap_or((text, "0"));
    json!({ "Name": name, "MaximumRetryCount": max.parse::<u32>().unwrap_or(0) })
}

/// docker's prune question, asked only at a terminal and unless `-f`: whether to go on.
pub fn confirm_prune(force: bool, what: &str) -> std::io::Result<bool> {
    if force || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Ok(true);
    }
    eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("y"))
}

/// Prints docker's inspect array of what `find` finds by each name, with one line for each
/// name it cannot; fails when any was not found.
pub fn print_inspect<T>(
    names: &[String],
    find: impl Fn(&str) -> anyhow::Result<T>,
    json: impl Fn(&T) -> serde_json::Value,
) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    let mut failed = false;
    for name in names {
        match find(name) {
            Ok(x) => out.push(json(&x)),
            Err(e) => {
                eprintln!("hk: {e:#}");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    if !confirm_prune(args.force, "all stopped containers")? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut deleted = Vec::new();
    let mut bytes = 0u64;
    for c in Container::all()? {
        if c.is_running() {
            continue;
        }
        bytes += du(&c.dir);
        c.remove()?;
        deleted.push(c.config.id.clone());
    }
    if !deleted.is_empty() {
        println!("Deleted Containers:");
        for id in &deleted {
            println!("{id}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        crate::images::human_size(bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// Bytes a directory's files occupy on disk (sparse layers count what they hold).
fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::parse_signal;
    use nix::sys::signal::Signal;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigusr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
