//! `hk compose`: Compose-file fleets of microVMs. The file is read by `model` (with
//! `interpolate` and `merge`), `plan` decides names, order and what changed, and the
//! commands here make it so with what hk already has: each container is an `hk run -d`
//! container (`run::create`, a detached supervisor), on a project network (`hk network`,
//! whose switch answers DNS for container names and for service names as aliases), with
//! named volumes (`hk volume`) and images from `hk build` or `hk pull`. A project's
//! containers carry docker compose's labels, which is how `ps`, `down` and a second `up`
//! find them: there is no other record.

mod interpolate;
mod merge;
mod model;
mod plan;

use crate::container::health::{HEALTHY, UNHEALTHY};
use crate::container::{Container, Status};
use anyhow::{bail, Context};
use model::{LoadOptions, Project};
use plan::{LABEL_HASH, LABEL_NUMBER, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// Compose file(s), merged in order (default: compose.yaml, docker-compose.yml, and
    /// its override file)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Project name (default: the file's name:, else the project directory's name)
    #[arg(short = 'p', long = "project-name", value_name = "NAME", global = true)]
    project_name: Option<String>,
    /// Variables for interpolation (default: .env in the project directory)
    #[arg(long = "env-file", value_name = "FILE", global = true)]
    env_file: Option<PathBuf>,
    /// Enable services of this profile (repeatable; also COMPOSE_PROFILES)
    #[arg(long = "profile", value_name = "PROFILE", global = true)]
    profiles: Vec<String>,
    #[command(subcommand)]
    command: ComposeCommand,
}

#[derive(clap::Subcommand)]
enum ComposeCommand {
    /// Create and start the services' containers
    Up {
        /// Detached mode: start the containers and return
        #[arg(short, long)]
        detach: bool,
        /// Build images before starting containers
        #[arg(long)]
        build: bool,
        /// Wait for the services to be running and healthy (implies -d)
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits at most
        #[arg(long = "wait-timeout", default_value_t = 600)]
        wait_timeout: u64,
        /// Remove containers of services no longer in the file
        #[arg(long)]
        remove_orphans: bool,
        /// Produce monochrome output
        #[arg(long)]
        no_color: bool,
        services: Vec<String>,
    },
    /// Stop and remove the containers and networks (and with -v the named volumes)
    Down {
        /// Remove the named volumes declared in the file
        #[arg(short, long)]
        volumes: bool,
        /// Remove containers of services no longer in the file
        #[arg(long)]
        remove_orphans: bool,
        /// Seconds to wait for each container to stop before killing it
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u64>,
    },
    /// List the project's containers
    Ps {
        /// Show stopped containers too
        #[arg(short, long)]
        all: bool,
        /// Only display container IDs
        #[arg(short, long)]
        quiet: bool,
        /// Display services
        #[arg(long)]
        services: bool,
        #[arg(value_name = "SERVICE")]
        names: Vec<String>,
    },
    /// Show the containers' output, interleaved with a prefix per container
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Produce monochrome output
        #[arg(long)]
        no_color: bool,
        /// Show timestamps
        #[arg(short, long)]
        timestamps: bool,
        services: Vec<String>,
    },
    /// Run a command in a running service container
    Exec {
        /// Run the command in the background
        #[arg(short, long)]
        detach: bool,
        /// Do not allocate a terminal
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        /// Set environment variables
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory
        #[arg(short, long)]
        workdir: Option<String>,
        /// User
        #[arg(short, long)]
        user: Option<String>,
        /// Which container of the service (1-based)
        #[arg(long, default_value_t = 1)]
        index: u32,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Run a one-off command in a new container of a service
    Run {
        /// Remove the container when it exits
        #[arg(long)]
        rm: bool,
        /// Run in the background and print the container ID
        #[arg(short, long)]
        detach: bool,
        /// Override the image's entrypoint
        #[arg(long)]
        entrypoint: Option<String>,
        /// Set environment variables
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Assign a name to the container
        #[arg(long)]
        name: Option<String>,
        /// Do not start the service's dependencies
        #[arg(long)]
        no_deps: bool,
        /// Publish the service's ports
        #[arg(long)]
        service_ports: bool,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Build the services' images
    Build { services: Vec<String> },
    /// Pull the services' images
    Pull { services: Vec<String> },
    /// Stop the services' containers
    Stop {
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u64>,
        services: Vec<String>,
    },
    /// Start the services' existing containers
    Start { services: Vec<String> },
    /// Restart the services' containers
    Restart {
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u64>,
        services: Vec<String>,
    },
    /// Print the normalised, merged, interpolated model
    Config {
        /// Only validate; print nothing
        #[arg(short, long)]
        quiet: bool,
        /// Print the service names, one a line
        #[arg(long)]
        services: bool,
    },
}

pub fn run(args: ComposeArgs) -> anyhow::Result<ExitCode> {
    let named: Vec<String> = match &args.command {
        ComposeCommand::Up { services, .. }
        | ComposeCommand::Build { services }
        | ComposeCommand::Pull { services }
        | ComposeCommand::Stop { services, .. }
        | ComposeCommand::Start { services }
        | ComposeCommand::Restart { services, .. }
        | ComposeCommand::Logs { services, .. } => services.clone(),
        ComposeCommand::Ps { names, .. } => names.clone(),
        ComposeCommand::Exec { service, .. } | ComposeCommand::Run { service, .. } => {
            vec![service.clone()]
        }
        _ => Vec::new(),
    };
    let loaded = model::load(&LoadOptions {
        files: args.files.clone(),
        project_name: args.project_name.clone(),
        env_file: args.env_file.clone(),
        profiles: args.profiles.clone(),
        services: named,
    })?;
    for w in &loaded.warnings {
        eprintln!("WARNING: {w}");
    }
    let fleet = Fleet {
        project: loaded.project,
        dir: loaded.dir,
    };
    match args.command {
        ComposeCommand::Config { quiet, services } => {
            if services {
                for s in fleet.project.services.keys() {
                    println!("{s}");
                }
            } else if !quiet {
                print!("{}", fleet.project.to_yaml()?);
            }
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Up {
            detach,
            build,
            wait,
            wait_timeout,
            remove_orphans,
            no_color,
            services,
        } => fleet.up(&UpOptions {
            detach: detach || wait,
            build,
            wait: wait.then(|| Duration::from_secs(wait_timeout)),
            remove_orphans,
            color: !no_color && std::io::stdout().is_terminal(),
            services,
        }),
        ComposeCommand::Down {
            volumes,
            remove_orphans,
            timeout,
        } => fleet.down(volumes, remove_orphans, timeout),
        ComposeCommand::Ps {
            all,
            quiet,
            services,
            names,
        } => fleet.ps(all, quiet, services, &names),
        ComposeCommand::Logs {
            follow,
            no_color,
            timestamps,
            services,
        } => {
            let color = !no_color && std::io::stdout().is_terminal();
            let cs = fleet.containers(&services, false)?;
            logs(&cs, follow, color, timestamps);
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Exec {
            detach,
            no_tty,
            env,
            workdir,
            user,
            index,
            service,
            command,
        } => {
            let name = plan::container_name(&fleet.project.name, &service, index);
            let c = Container::find(&name).with_context(|| {
                format!("service {service} has no container {index}: start it (hk compose up -d)")
            })?;
            let mut argv: Vec<String> = vec!["exec".into()];
            let terminal = std::io::stdin().is_terminal();
            if terminal && !detach {
                argv.push("-i".into());
                if !no_tty {
                    argv.push("-t".into());
                }
            }
            if detach {
                argv.push("-d".into());
            }
            for e in env {
                argv.extend(["-e".into(), e]);
            }
            if let Some(w) = workdir {
                argv.extend(["-w".into(), w]);
            }
            if let Some(u) = user {
                argv.extend(["-u".into(), u]);
            }
            argv.push(c.config.id.clone());
            argv.extend(command);
            crate::run::exec(crate::run::parse_args(&argv)?)
        }
        ComposeCommand::Run {
            rm,
            detach,
            entrypoint,
            env,
            name,
            no_deps,
            service_ports,
            service,
            command,
        } => fleet.run_oneoff(OneOff {
            rm,
            detach,
            entrypoint,
            env,
            name,
            no_deps,
            service_ports,
            service,
            command,
        }),
        ComposeCommand::Build { services } => {
            let selected = plan::select(&fleet.project, &services)?;
            for s in &selected {
                if fleet.project.services[s].build.is_some() {
                    fleet.build(s)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Pull { services } => {
            let selected = plan::select(&fleet.project, &services)?;
            for s in &selected {
                let svc = &fleet.project.services[s];
                if let (Some(_), None) = (&svc.image, &svc.build) {
                    fleet.pull(s)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Stop { timeout, services } => {
            fleet.stop(&fleet.containers(&services, false)?, timeout);
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Start { services } => {
            let cs = fleet.containers(&services, false)?;
            if cs.is_empty() {
                bail!("no containers to start: create them first (hk compose up)");
            }
            fleet.start_in_order(&cs)?;
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Restart { timeout, services } => {
            let cs = fleet.containers(&services, false)?;
            fleet.stop(&cs, timeout);
            fleet.start_in_order(&cs)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct UpOptions {
    detach: bool,
    build: bool,
    wait: Option<Duration>,
    remove_orphans: bool,
    color: bool,
    services: Vec<String>,
}

struct OneOff {
    rm: bool,
    detach: bool,
    entrypoint: Option<String>,
    env: Vec<String>,
    name: Option<String>,
    no_deps: bool,
    service_ports: bool,
    service: String,
    command: Vec<String>,
}

struct Fleet {
    project: Project,
    dir: PathBuf,
}

/// How a service's start went, for the services that wait on it.
#[derive(Clone, PartialEq)]
enum Progress {
    Started,
    Failed(String),
}

impl Fleet {
    fn label<'a>(c: &'a Container, key: &str) -> &'a str {
        c.config.labels.get(key).map_or("", String::as_str)
    }

    /// The project's containers (one-offs only when asked), of the named services or all,
    /// ordered by service and number.
    fn containers(&self, services: &[String], oneoff: bool) -> anyhow::Result<Vec<Container>> {
        let mut cs: Vec<Container> = Container::all()?
            .into_iter()
            .filter(|c| Self::label(c, LABEL_PROJECT) == self.project.name)
            .filter(|c| oneoff || Self::label(c, LABEL_ONEOFF) != "True")
            .filter(|c| {
                services.is_empty() || services.iter().any(|s| s == Self::label(c, LABEL_SERVICE))
            })
            .collect();
        cs.sort_by_key(|c| {
            (
                Self::label(c, LABEL_SERVICE).to_string(),
                Self::label(c, LABEL_NUMBER).parse::<u32>().unwrap_or(0),
            )
        });
        Ok(cs)
    }

    fn network_labels(&self, key: &str, label: &str) -> Vec<String> {
        vec![
            format!("{LABEL_PROJECT}={}", self.project.name),
            format!("{label}={key}"),
        ]
    }

    /// The networks and volumes the services use, made unless they exist.
    fn ensure_resources(&self, services: &BTreeSet<String>) -> anyhow::Result<()> {
        let mut nets = BTreeSet::new();
        let mut vols = BTreeSet::new();
        for s in services {
            let svc = &self.project.services[s];
            nets.extend(svc.networks.keys().cloned());
            for v in &svc.volumes {
                if let (Some(src), "volume") = (&v.source, v.kind.as_str()) {
                    vols.insert(src.clone());
                }
            }
        }
        for key in nets {
            let def = &self.project.networks[&key];
            if crate::network::Network::load(&def.name).is_ok() {
                continue;
            }
            if def.external {
                bail!(
                    "network {} is declared as external, but could not be found: create it \
                     (hk network create {})",
                    def.name,
                    def.name
                );
            }
            let mut argv = vec!["network".to_string(), def.name.clone()];
            for l in self.network_labels(&key, plan::LABEL_NETWORK) {
                argv.extend(["--label".into(), l]);
            }
            if def.internal {
                argv.push("--internal".into());
            }
            crate::network::create_network(crate::run::parse_args(&argv)?)
                .with_context(|| format!("cannot create network {}", def.name))?;
            eprintln!(" Network {}  Created", def.name);
        }
        for key in vols {
            let def = &self.project.volumes[&key];
            if def.external {
                if !crate::volume::data_dir(&def.name).is_dir() {
                    bail!(
                        "volume {} is declared as external, but could not be found: create it \
                         (hk volume create {})",
                        def.name,
                        def.name
                    );
                }
                continue;
            }
            let mut labels = def.labels.clone();
            labels.insert(LABEL_PROJECT.into(), self.project.name.clone());
            labels.insert(plan::LABEL_VOLUME.into(), key.clone());
            if crate::volume::create_volume(&def.name, labels)? {
                eprintln!(" Volume {}  Created", def.name);
            }
        }
        Ok(())
    }

    /// `hk build` for a service: its image under the service's image name.
    fn build(&self, service: &str) -> anyhow::Result<()> {
        let b = self.project.services[service]
            .build
            .as_ref()
            .context("the service has no build section")?;
        let mut argv = vec![
            "build".to_string(),
            "-t".into(),
            self.project.image_of(service),
            "-f".into(),
            PathBuf::from(&b.context)
                .join(&b.dockerfile)
                .display()
                .to_string(),
        ];
        for (k, v) in &b.args {
            argv.extend([
                "--build-arg".into(),
                format!("{k}={}", v.clone().unwrap_or_default()),
            ]);
        }
        if let Some(t) = &b.target {
            argv.extend(["--target".into(), t.clone()]);
        }
        argv.push(b.context.clone());
        eprintln!(" Building {service}");
        let code = crate::build::build(crate::run::parse_args(&argv)?)?;
        if code != ExitCode::SUCCESS {
            bail!("service {service}: the build failed");
        }
        Ok(())
    }

    /// `hk pull` of a service's image.
    fn pull(&self, service: &str) -> anyhow::Result<()> {
        let name = self.project.image_of(service);
        let store = crate::images::store()?;
        let reference = hk_image::ImageRef::parse(&name)?;
        eprintln!(" Service {service}  Pulling {name}");
        let opts = hk_image::PullOptions {
            platform: None,
            tls_verify: None,
            convert: true,
        };
        crate::images::pull_with_progress(&store, &reference, &opts, false, true)
            .with_context(|| format!("service {service}: cannot pull {name}"))?;
        Ok(())
    }

    /// The image ID a service's containers would run, building or pulling it first when
    /// it is not here (or with `--build`).
    fn image(&self, service: &str, build: bool) -> anyhow::Result<String> {
        let svc = &self.project.services[service];
        let name = self.project.image_of(service);
        let store = crate::images::store()?;
        let local = store.resolve(&name);
        if svc.build.is_some() && (build || local.is_err()) {
            self.build(service)?;
        } else if local.is_err() {
            self.pull(service)?;
        }
        let image = store
            .resolve(&name)
            .with_context(|| format!("service {service}: image {name} is not here"))?;
        // Converted here, once, not by each replica at once.
        store.rootfs(&image)?;
        Ok(image.config.to_string())
    }

    /// The `hk run` flags for container `n` of a service (without the name).
    fn run_args(
        &self,
        service: &str,
        labels: &BTreeMap<String, String>,
        publish: bool,
    ) -> anyhow::Result<crate::run::RunArgs> {
        let svc = &self.project.services[service];
        let mut a: Vec<String> = vec!["run".into(), "--pull".into(), "never".into()];
        let mut flag = |f: &str, v: String| {
            a.push(f.to_string());
            a.push(v);
        };
        for (k, v) in labels {
            flag("--label", format!("{k}={v}"));
        }
        for key in svc.networks.keys() {
            flag("--network", self.project.networks[key].name.clone());
        }
        for (k, v) in &svc.environment {
            flag("-e", format!("{k}={}", v.clone().unwrap_or_default()));
        }
        if publish {
            for p in &svc.ports {
                let host = match (&p.host_ip, &p.published) {
                    (Some(ip), Some(pb)) => format!("{ip}:{pb}:"),
                    (Some(ip), None) => format!("{ip}::"),
                    (None, Some(pb)) => format!("{pb}:"),
                    (None, None) => String::new(),
                };
                flag("-p", format!("{host}{}/{}", p.target, p.protocol));
            }
        }
        for v in &svc.volumes {
            let mut m = format!("type={},target={}", v.kind, v.target);
            match v.kind.as_str() {
                "bind" => {
                    let src = v.source.clone().unwrap_or_default();
                    if v.bind.as_ref().is_none_or(|b| b.create_host_path) {
                        std::fs::create_dir_all(&src).with_context(|| {
                            format!("cannot create {src} for service {service}")
                        })?;
                    }
                    m.push_str(&format!(",source={src}"));
                }
                "volume" => {
                    let Some(src) = &v.source else {
                        bail!(
                            "service {service}: the anonymous volume on {} is not supported: \
                             name it (VOLUME:{}) and declare it under volumes:",
                            v.target,
                            v.target
                        );
                    };
                    m.push_str(&format!(",source={}", self.project.volumes[src].name));
                    if v.volume.as_ref().is_some_and(|o| o.nocopy) {
                        m.push_str(",volume-nocopy");
                    }
                }
                "tmpfs" => {
                    if let Some(t) = &v.tmpfs {
                        if let Some(size) = t.size {
                            m.push_str(&format!(",tmpfs-size={size}"));
                        }
                        if let Some(mode) = t.mode {
                            m.push_str(&format!(",tmpfs-mode={mode:o}"));
                        }
                    }
                }
                other => bail!("service {service}: volume type {other:?} is not supported"),
            }
            if v.read_only {
                m.push_str(",readonly");
            }
            if let Some(c) = &v.consistency {
                m.push_str(&format!(",consistency={c}"));
            }
            flag("--mount", m);
        }
        if let Some(r) = &svc.restart {
            flag("--restart", r.clone());
        }
        if let Some(h) = &svc.hostname {
            flag("--hostname", h.clone());
        }
        if let Some(w) = &svc.working_dir {
            flag("-w", w.clone());
        }
        if let Some(u) = &svc.user {
            flag("-u", u.clone());
        }
        if let Some(s) = &svc.stop_signal {
            flag("--stop-signal", s.clone());
        }
        if let Some(g) = &svc.stop_grace_period {
            let secs = crate::container::health::parse_duration(g)?
                .as_secs_f64()
                .ceil();
            flag("--stop-timeout", format!("{secs}"));
        }
        if let Some(l) = svc.limits() {
            if let Some(c) = l.cpus {
                flag("--cpus", format!("{}", c.ceil().max(1.0)));
            }
            if let Some(m) = l.memory {
                flag("--memory", format!("{}m", (m >> 20).max(1)));
            }
        }
        if let Some(h) = &svc.healthcheck {
            for (f, v) in [
                ("--health-interval", &h.interval),
                ("--health-timeout", &h.timeout),
                ("--health-start-period", &h.start_period),
                ("--health-start-interval", &h.start_interval),
            ] {
                if let Some(v) = v {
                    flag(f, v.clone());
                }
            }
            if let Some(r) = h.retries {
                flag("--health-retries", r.to_string());
            }
        }
        a.push(self.project.image_of(service));
        if let Some(cmd) = &svc.command {
            a.extend(cmd.iter().cloned());
        }
        let mut args: crate::run::RunArgs =
            crate::run::parse_args(&a).with_context(|| format!("service {service}"))?;
        args.entrypoint_argv = svc.entrypoint.clone();
        args.health_test = svc.healthcheck.as_ref().map(|h| {
            if h.disable {
                vec!["NONE".to_string()]
            } else {
                h.test.clone()
            }
        });
        Ok(args)
    }

    /// Makes container `n` of a service, named and labelled, with its per-network aliases.
    fn create(&self, service: &str, n: u32, hash: &str) -> anyhow::Result<Container> {
        let name = plan::container_name(&self.project.name, service, n);
        let labels = plan::labels(
            &self.project,
            &self.dir.display().to_string(),
            service,
            n,
            hash,
            false,
        );
        let mut args = self.run_args(service, &labels, true)?;
        args.set_name(name);
        let (mut c, _) = crate::run::create(&args)?;
        self.set_aliases(&mut c, service)?;
        Ok(c)
    }

    /// Compose's aliases are per network, `hk run`'s for all: set them on each attachment,
    /// the service's name first (DNS by service name).
    fn set_aliases(&self, c: &mut Container, service: &str) -> anyhow::Result<()> {
        let svc = &self.project.services[service];
        for a in &mut c.config.networks {
            let key = svc
                .networks
                .keys()
                .find(|k| self.project.networks[*k].name == a.name);
            let mut aliases = vec![service.to_string()];
            if let Some(Some(n)) = key.and_then(|k| svc.networks.get(k)) {
                aliases.extend(n.aliases.iter().cloned());
            }
            a.aliases = aliases;
        }
        c.save_config()
    }

    fn up(&self, opts: &UpOptions) -> anyhow::Result<ExitCode> {
        if !opts.detach {
            catch_ctrl_c()?;
        }
        let selected = plan::select(&self.project, &opts.services)?;
        let levels = plan::levels(&self.project, &selected)?;
        if crate::lab::needed() {
            bail!(
                "hk compose up needs a host with hardware KVM: in the nested lab each VM ends \
                 with the hk command that started it"
            );
        }
        self.ensure_resources(&selected)?;
        let mut hashes = BTreeMap::new();
        for level in &levels {
            for s in level {
                let image = self.image(s, opts.build)?;
                hashes.insert(
                    s.clone(),
                    plan::config_hash(&self.project.services[s], &image),
                );
            }
        }
        let existing = self.containers(&[], false)?;
        if opts.remove_orphans {
            let orphans: Vec<Container> = existing
                .iter()
                .filter(|c| {
                    !self
                        .project
                        .services
                        .contains_key(Self::label(c, LABEL_SERVICE))
                })
                .cloned()
                .collect();
            self.remove(&orphans, None);
        } else {
            for c in &existing {
                if !self
                    .project
                    .services
                    .contains_key(Self::label(c, LABEL_SERVICE))
                {
                    eprintln!(
                        "WARNING: found orphan container {} of service {}: remove it with \
                         hk compose up --remove-orphans",
                        c.config.name,
                        Self::label(c, LABEL_SERVICE)
                    );
                }
            }
        }
        // Each service in a thread of its own, waiting for what it depends on: independent
        // services start together.
        let progress: Mutex<BTreeMap<String, Progress>> = Mutex::new(BTreeMap::new());
        let changed = Condvar::new();
        let started: Mutex<Vec<Container>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for s in &selected {
                let (progress, changed, started, hashes, existing) =
                    (&progress, &changed, &started, &hashes, &existing);
                scope.spawn(move || {
                    let result = self
                        .wait_dependencies(s, progress, changed)
                        .and_then(|()| self.converge(s, &hashes[s], existing));
                    let p = match result {
                        Ok(cs) => {
                            started.lock().unwrap_or_else(|e| e.into_inner()).extend(cs);
                            Progress::Started
                        }
                        Err(e) => {
                            eprintln!("hk: service {s}: {e:#}");
                            Progress::Failed(format!("{e:#}"))
                        }
                    };
                    progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(s.clone(), p);
                    changed.notify_all();
                });
            }
        });
        let progress = progress.into_inner().unwrap_or_else(|e| e.into_inner());
        let failed: Vec<&String> = progress
            .iter()
            .filter(|(_, p)| matches!(p, Progress::Failed(_)))
            .map(|(s, _)| s)
            .collect();
        if !failed.is_empty() {
            bail!(
                "services that did not start: {}",
                failed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(timeout) = opts.wait {
            let cs = self.containers(&opts.services, false)?;
            let deadline = Instant::now() + timeout;
            for c in &cs {
                let svc = Self::label(c, LABEL_SERVICE).to_string();
                let healthy = self.project.services[&svc].healthcheck.is_some();
                wait_ready(c, healthy, deadline)
                    .with_context(|| format!("container {}", c.config.name))?;
                eprintln!(
                    " Container {}  {}",
                    c.config.name,
                    if healthy { "Healthy" } else { "Running" }
                );
            }
        }
        if opts.detach {
            return Ok(ExitCode::SUCCESS);
        }
        self.attach(opts.color)
    }

    /// Blocks until the service's dependencies are as its `depends_on` asks.
    fn wait_dependencies(
        &self,
        service: &str,
        progress: &Mutex<BTreeMap<String, Progress>>,
        changed: &Condvar,
    ) -> anyhow::Result<()> {
        let deps = &self.project.services[service].depends_on;
        let mut guard = progress.lock().unwrap_or_else(|e| e.into_inner());
        for dep in deps.keys() {
            loop {
                match guard.get(dep) {
                    Some(Progress::Started) => break,
                    Some(Progress::Failed(_)) => bail!("its dependency {dep} did not start"),
                    None if !self.project.services.contains_key(dep) => break,
                    None => {
                        guard = changed.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
        drop(guard);
        for (dep, d) in deps {
            let cs = self.containers(std::slice::from_ref(dep), false)?;
            for c in &cs {
                match d.condition.as_str() {
                    model::SERVICE_HEALTHY => {
                        wait_ready(c, true, Instant::now() + Duration::from_secs(3600))
                            .with_context(|| format!("dependency {dep} is not healthy"))?;
                        eprintln!(" Container {}  Healthy", c.config.name);
                    }
                    model::SERVICE_COMPLETED => {
                        c.wait_stopped()?;
                        let code = c.state().exit_code;
                        if code != 0 {
                            bail!("dependency {} exited with {code}", c.config.name);
                        }
                        eprintln!(" Container {}  Exited", c.config.name);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Makes the service's containers what the file says: unchanged ones are kept (and
    /// started), changed ones recreated, missing ones created, surplus ones removed; all
    /// replicas start together. Returns the running containers.
    fn converge(
        &self,
        service: &str,
        hash: &str,
        existing: &[Container],
    ) -> anyhow::Result<Vec<Container>> {
        let replicas = self.project.services[service].replicas();
        let mine: Vec<&Container> = existing
            .iter()
            .filter(|c| Self::label(c, LABEL_SERVICE) == service)
            .collect();
        let surplus: Vec<Container> = mine
            .iter()
            .filter(|c| {
                Self::label(c, LABEL_NUMBER)
                    .parse::<u32>()
                    .is_ok_and(|n| n > replicas)
            })
            .map(|c| (*c).clone())
            .collect();
        self.remove(&surplus, None);
        let results: Vec<anyhow::Result<Container>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..=replicas)
                .map(|n| {
                    let old = mine
                        .iter()
                        .find(|c| Self::label(c, LABEL_NUMBER) == n.to_string())
                        .map(|c| (*c).clone());
                    scope.spawn(move || self.converge_one(service, n, hash, old))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn converge_one(
        &self,
        service: &str,
        n: u32,
        hash: &str,
        old: Option<Container>,
    ) -> anyhow::Result<Container> {
        let c = match old {
            Some(c) if Self::label(&c, LABEL_HASH) == hash => {
                if c.is_running() {
                    eprintln!(" Container {}  Running", c.config.name);
                    return Ok(c);
                }
                c
            }
            Some(c) => {
                eprintln!(" Container {}  Recreate", c.config.name);
                self.remove(std::slice::from_ref(&c), None);
                let c = self.create(service, n, hash)?;
                eprintln!(" Container {}  Recreated", c.config.name);
                c
            }
            None => {
                let c = self.create(service, n, hash)?;
                eprintln!(" Container {}  Created", c.config.name);
                c
            }
        };
        start(&c)?;
        eprintln!(" Container {}  Started", c.config.name);
        Ok(c)
    }

    /// Stops containers, dependents before their dependencies, each level in parallel.
    fn stop(&self, cs: &[Container], timeout: Option<u64>) {
        let all: BTreeSet<String> = self.project.services.keys().cloned().collect();
        let levels = plan::levels(&self.project, &all).unwrap_or_default();
        let mut by_level: Vec<Vec<&Container>> = levels
            .iter()
            .map(|l| {
                cs.iter()
                    .filter(|c| l.iter().any(|s| s == Self::label(c, LABEL_SERVICE)))
                    .collect()
            })
            .collect();
        // Containers of services no longer in the file: first.
        by_level.push(
            cs.iter()
                .filter(|c| !all.contains(Self::label(c, LABEL_SERVICE)))
                .collect(),
        );
        for level in by_level.iter().rev() {
            std::thread::scope(|scope| {
                for c in level {
                    scope.spawn(move || {
                        if !c.is_running() {
                            return;
                        }
                        eprintln!(" Container {}  Stopping", c.config.name);
                        match crate::lifecycle::stop_one(
                            c,
                            crate::lifecycle::stop_timeout(c, timeout),
                        ) {
                            Ok(()) => eprintln!(" Container {}  Stopped", c.config.name),
                            Err(e) => eprintln!("hk: {e:#}"),
                        }
                    });
                }
            });
        }
    }

    /// Stops and removes containers.
    fn remove(&self, cs: &[Container], timeout: Option<u64>) {
        self.stop(cs, timeout);
        for c in cs {
            match c.remove() {
                Ok(()) => eprintln!(" Container {}  Removed", c.config.name),
                Err(e) => eprintln!("hk: {e:#}"),
            }
        }
    }

    /// Starts existing containers, dependencies first.
    fn start_in_order(&self, cs: &[Container]) -> anyhow::Result<()> {
        let all: BTreeSet<String> = self.project.services.keys().cloned().collect();
        for level in plan::levels(&self.project, &all)? {
            let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
                let hs: Vec<_> = cs
                    .iter()
                    .filter(|c| level.iter().any(|s| s == Self::label(c, LABEL_SERVICE)))
                    .filter(|c| !c.is_running())
                    .map(|c| {
                        scope.spawn(move || {
                            start(c)?;
                            eprintln!(" Container {}  Started", c.config.name);
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
                    })
                    .collect()
            });
            results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        }
        Ok(())
    }

    fn down(
        &self,
        volumes: bool,
        remove_orphans: bool,
        timeout: Option<u64>,
    ) -> anyhow::Result<ExitCode> {
        let cs: Vec<Container> = self
            .containers(&[], true)?
            .into_iter()
            .filter(|c| {
                remove_orphans
                    || self
                        .project
                        .services
                        .contains_key(Self::label(c, LABEL_SERVICE))
            })
            .collect();
        self.remove(&cs, timeout);
        let mut failed = false;
        for def in self.project.networks.values().filter(|n| !n.external) {
            match crate::network::remove_network(&def.name) {
                Ok(true) => eprintln!(" Network {}  Removed", def.name),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("hk: network {}: {e:#}", def.name);
                    failed = true;
                }
            }
        }
        if volumes {
            for def in self.project.volumes.values().filter(|v| !v.external) {
                match crate::volume::remove_volume(&def.name) {
                    Ok(true) => eprintln!(" Volume {}  Removed", def.name),
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("hk: {e:#}");
                        failed = true;
                    }
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }

    fn ps(
        &self,
        all: bool,
        quiet: bool,
        services: bool,
        names: &[String],
    ) -> anyhow::Result<ExitCode> {
        let cs: Vec<Container> = self
            .containers(names, false)?
            .into_iter()
            .filter(|c| all || c.is_running())
            .collect();
        if services {
            let set: BTreeSet<&str> = cs.iter().map(|c| Self::label(c, LABEL_SERVICE)).collect();
            for s in set {
                println!("{s}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if quiet {
            for c in &cs {
                println!("{}", c.config.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![[
            "NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS",
        ]
        .map(String::from)
        .to_vec()];
        for c in &cs {
            rows.push(vec![
                c.config.name.clone(),
                c.config.image.clone(),
                crate::lifecycle::command_text(c, false),
                Self::label(c, LABEL_SERVICE).to_string(),
                crate::lifecycle::since(Some(&c.config.created), true),
                crate::lifecycle::status_text(c),
                crate::lifecycle::ports_text(c),
            ]);
        }
        crate::images::print_table(&rows);
        Ok(ExitCode::SUCCESS)
    }

    /// A foreground `up`: the containers' output, interleaved, until all have stopped or
    /// Ctrl-C (SIGINT or SIGTERM) stops the fleet.
    fn attach(&self, color: bool) -> anyhow::Result<ExitCode> {
        let signals = crate::supervisor::forwarded_signals();
        let cs = self.containers(&[], false)?;
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let stopping = stopping.clone();
            let cs = cs.clone();
            let project = self.project.clone();
            let dir = self.dir.clone();
            std::thread::spawn(move || loop {
                let Ok(sig) = signals.wait() else { return };
                if sig == nix::sys::signal::Signal::SIGWINCH {
                    continue;
                }
                if stopping.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    // A second Ctrl-C: kill rather than wait.
                    for c in &cs {
                        let _ = crate::lifecycle::stop_one(c, Duration::ZERO);
                    }
                    continue;
                }
                eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
                Fleet {
                    project: project.clone(),
                    dir: dir.clone(),
                }
                .stop(&cs, None);
            });
        }
        logs(&cs, true, color, false);
        eprintln!(
            "{}",
            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                "Fleet stopped"
            } else {
                "All containers exited"
            }
        );
        Ok(ExitCode::SUCCESS)
    }

    fn run_oneoff(&self, o: OneOff) -> anyhow::Result<ExitCode> {
        if !o.no_deps {
            let deps: Vec<String> = self.project.services[&o.service]
                .depends_on
                .keys()
                .cloned()
                .collect();
            if !deps.is_empty() {
                self.up(&UpOptions {
                    detach: true,
                    build: false,
                    wait: None,
                    remove_orphans: false,
                    color: false,
                    services: deps,
                })?;
            }
        }
        let image = self.image(&o.service, false)?;
        self.ensure_resources(&BTreeSet::from([o.service.clone()]))?;
        let hash = plan::config_hash(&self.project.services[&o.service], &image);
        let labels = plan::labels(
            &self.project,
            &self.dir.display().to_string(),
            &o.service,
            1,
            &hash,
            true,
        );
        let mut args = self.run_args(&o.service, &labels, o.service_ports)?;
        let name = o.name.unwrap_or_else(|| {
            format!(
                "{}-{}-run-{}",
                self.project.name,
                o.service,
                &crate::container::new_id()[..12]
            )
        });
        let entrypoint = o
            .entrypoint
            .as_deref()
            .map(model::split_shell)
            .transpose()?;
        args.set_oneoff(name, o.rm, o.detach, entrypoint, o.env, o.command);
        crate::run::run(args)
    }
}

/// Blocks SIGINT and SIGTERM in this thread, before any other starts (threads inherit the
/// mask: one that did not block them would die of them), so that `attach` takes them with
/// sigwait. A shell starts background jobs with SIGINT ignored, and an ignored signal is
/// never pending: the default disposition comes back first.
fn catch_ctrl_c() -> anyhow::Result<()> {
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: SIG_DFL installs no handler; the signal is blocked right after.
        unsafe {
            let _ = nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    crate::supervisor::forwarded_signals()
        .thread_block()
        .context("cannot block signals to catch Ctrl-C")
}

/// Starts a container's detached supervisor; its failure is an error here.
fn start(c: &Container) -> anyhow::Result<()> {
    match crate::run::start_detached(c)? {
        crate::run::Started::Ok => Ok(()),
        crate::run::Started::Failed(code) => {
            bail!(
                "container {} could not start its process (exit {code})",
                c.config.name
            )
        }
    }
}

/// Waits until a container runs (and with `healthy` reports healthy); fails when it exits
/// or turns unhealthy first.
fn wait_ready(c: &Container, healthy: bool, deadline: Instant) -> anyhow::Result<()> {
    if healthy && c.config.healthcheck.is_none() {
        bail!("it has no healthcheck, so it can never be healthy");
    }
    loop {
        let s = c.state();
        if s.status == Status::Exited {
            bail!("it exited with {}", s.exit_code);
        }
        let health = s.health.as_ref().map(|h| h.status.as_str());
        if s.status == Status::Running && (!healthy || health == Some(HEALTHY)) {
            return Ok(());
        }
        if health == Some(UNHEALTHY) {
            bail!("it is unhealthy");
        }

        if Instant::now() > deadline {
            bail!("timed out waiting for it");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// docker compose's prefix colours, in its order.
const COLORS: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// The containers' logs, each line prefixed with `NAME  | `. Without `follow`, merged by
/// time; with it, live, until every container has stopped.
fn logs(cs: &[Container], follow: bool, color: bool, timestamps: bool) {
    let width = cs.iter().map(|c| c.config.name.len()).max().unwrap_or(0);
    let prefix = |i: usize, c: &Container| {
        let p = format!("{:<width$} | ", c.config.name);
        if color {
            format!("\x1b[{}m{p}\x1b[0m", COLORS[i % COLORS.len()])
        } else {
            p
        }
    };
    let line = |prefix: &str, r: &crate::container::logs::Record| {
        let mut out = std::io::stdout().lock();
        let ts = if timestamps {
            format!("{} ", r.time)
        } else {
            String::new()
        };
        let text = r.log.strip_suffix('\n').unwrap_or(&r.log);
        let _ = writeln!(out, "{prefix}{ts}{text}");
        let _ = out.flush();
    };
    if !follow {
        let mut all: Vec<(String, String, crate::container::logs::Record)> = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            let (records, _) = crate::container::logs::read(&c.log_path(), None);
            all.extend(
                records
                    .into_iter()
                    .map(|r| (r.time.clone(), prefix(i, c), r)),
            );
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, p, r) in &all {
            line(p, r);
        }
        return;
    }
    std::thread::scope(|scope| {
        for (i, c) in cs.iter().enumerate() {
            let p = prefix(i, c);
            let line = &line;
            scope.spawn(move || {
                let _ = crate::container::logs::follow_with(
                    &c.log_path(),
                    0,
                    || c.is_running(),
                    &mut |r| line(&p, r),
                );
            });
        }
    });
}
