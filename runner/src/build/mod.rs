//! `hk build`: Dockerfile builds where every RUN step runs in a microVM of its own
//! (docs/build.md).
//!
//! The Dockerfile is parsed by `hk_image::dockerfile`; COPY and ADD run on the host
//! (`hk_image::build`), never in a VM, so the build context enters a VM only through a RUN
//! mount; RUN runs in [`step`]. Every step's result is an image in the store, recorded in
//! the build cache under a key chained from its parent's key and the step itself (the
//! instruction with its variables expanded, the build args a RUN sees, the content a COPY
//! reads), so a rebuild with nothing changed makes no VM and writes no layer, and gives the
//! same image ID.

mod config;
mod progress;
mod step;

use crate::container::mounts::{Consistency, Kind, Mount};
use anyhow::{bail, Context};
use hk_image::dockerfile::{self, Command, Instruction, Kind as Instr, Vars};
use hk_image::{Digest, Image, ImageRef, LayerInfo, Store};
use progress::{Progress, Vertex};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

/// Changes whenever what a cache key covers changes, so old records stop matching.
const CACHE_VERSION: &str = "hk-build-cache-1";
/// BuildKit's default shell for shell-form RUN, CMD and ENTRYPOINT.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Build args every build knows without an ARG (docker's predefined proxy args); they reach
/// RUN's environment but, as in docker, not the cache key or the image's history.
const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME[:TAG]) for the image; repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// A build-time variable, KEY=VALUE (or KEY: from the environment); repeatable
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build up to this stage, and only what it needs
    #[arg(long)]
    target: Option<String>,
    /// Run every step again
    #[arg(long)]
    no_cache: bool,
    /// Pull base images even when they are here
    #[arg(long)]
    pull: bool,
    /// Target platform; hk builds for this host's only (linux/amd64)
    #[arg(long)]
    platform: Option<String>,
    /// A label for the image, KEY=VALUE; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Progress output: auto, plain or tty (all print BuildKit's plain format)
    #[arg(long, default_value = "auto")]
    progress: String,
    /// Also write the image out: type=oci,dest=FILE or type=docker,dest=FILE
    #[arg(short = 'o', long = "output", value_name = "type=oci,dest=FILE")]
    output: Option<String>,
    /// A secret for RUN --mount=type=secret: id=ID[,src=FILE] (FILE defaults to ID);
    /// repeatable. Secrets reach only the steps that mount them, never a layer or the cache
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Print only the image ID, on stdout
    #[arg(short, long)]
    quiet: bool,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Guest memory of each RUN step's VM (hk run's default; more for heavy builds)
    #[arg(long, default_value = "512m")]
    memory: String,
    /// vCPUs of each RUN step's VM (hk run's default; more for parallel compiles)
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// The build context: a directory
    context: PathBuf,
}

/// docker build exits 1 when the build fails, whatever the failing step's status.
const EXIT_BUILD_FAILED: u8 = 1;

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory: give the directory with your files \
             (hk build -t NAME .)",
            args.context.display()
        );
    }
    if !matches!(args.progress.as_str(), "auto" | "plain" | "tty") {
        bail!("--progress {}: give auto, plain or tty", args.progress);
    }
    if let Some(p) = &args.platform {
        check_platform(p)?;
    }
    let output = args.output.as_deref().map(parse_output).transpose()?;
    let memory_mib = crate::vm::parse_memory(&args.memory)?;
    let dockerfile_path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile_path).with_context(|| {
        format!(
            "cannot read the Dockerfile {}: give its path with -f",
            dockerfile_path.display()
        )
    })?;
    let df = dockerfile::parse(&text)?;
    let tags = args
        .tags
        .iter()
        .map(|t| ImageRef::parse(t).with_context(|| format!("invalid tag {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    if crate::lab::needed() {
        // Everything the build writes must be writable in the lab; the rest it reads.
        crate::initramfs::agent_initramfs()?;
        let mut writable = vec![Store::default_root()];
        writable.extend(output.as_ref().map(|o| o.dest.clone()));
        writable.extend(args.iidfile.clone());
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return crate::lab::run_in_lab(&writable, &args);
    }

    let store = crate::images::store()?;
    let _guard = store.build_guard()?;
    let progress = Arc::new(Progress::new(args.quiet));
    for w in &df.warnings {
        progress.warn(w);
    }
    let ignore = read_ignore(&args.context, &dockerfile_path)?;
    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => match std::env::var(a) {
                Ok(v) => build_args.insert(a.clone(), v),
                Err(_) => None,
            },
        };
    }
    let mut secrets = BTreeMap::new();
    for s in &args.secrets {
        let (id, src) = parse_secret(s)?;
        secrets.insert(id, src);
    }
    let b = Builder {
        store: &store,
        df: &df,
        progress: progress.clone(),
        context: args.context.clone(),
        ignore,
        build_args,
        used_args: Mutex::new(HashSet::new()),
        secrets,
        no_cache: args.no_cache,
        pull: args.pull,
        memory_mib,
        cpus: args.cpus,
        results: Mutex::new(vec![None; df.stages.len()]),
        labels: args
            .labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    };
    let global = b.global_vars()?;
    let target = match &args.target {
        Some(t) => b
            .stage_index(t)
            .with_context(|| format!("--target {t}: no stage of that name in the Dockerfile"))?,
        None => df.stages.len() - 1,
    };
    let needed = b.needed_stages(target, &global)?;
    if let Err(code) = b.build_stages(&needed, target, &global)? {
        return Ok(ExitCode::from(code));
    }
    let used_args = lock(&b.used_args).clone();
    let unused: Vec<&String> = b
        .build_args
        .keys()
        .filter(|k| !used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        progress.warn(&format!(
            "one or more build args were not consumed: {}",
            unused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let image = lock(&b.results)[target]
        .clone()
        .expect("the target stage was just built");
    let v = progress.vertex("exporting to image");
    store.record_built(&image, &tags)?;
    v.note(&format!("writing image {} done", image.config));
    for t in &tags {
        v.note(&format!("naming to {} done", t.canonical()));
    }
    if let Some(o) = &output {
        hk_image::save_to_file(&store, &[image.config.to_string()], o.format, &o.dest)
            .with_context(|| format!("cannot write {}", o.dest.display()))?;
    }
    v.done();
    if let Some(f) = &args.iidfile {
        std::fs::write(f, image.config.as_str())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    if args.quiet {
        println!("{}", image.config);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// `hk builder step DIR` (hidden): one RUN step's VM, in a process of its own.
pub fn step_child(dir: &Path) -> anyhow::Result<ExitCode> {
    step::child(dir)
}

/// `hk builder prune`: everything, as hk keeps no cache a build still needs.
pub fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    if !crate::lifecycle::confirm_prune(args.force, "all build cache")? {
        return Ok(ExitCode::SUCCESS);
    }
    let store = crate::images::store()?;
    let (records, stats) = store.cache_prune()?;
    let _ = std::fs::remove_dir_all(step::build_root().join("cache-mounts"));
    println!(
        "Deleted build cache objects: {records}\nTotal reclaimed space: {}",
        crate::images::human_size(stats.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn check_platform(p: &str) -> anyhow::Result<()> {
    let parsed: hk_image::Platform = p.parse()?;
    let here: hk_image::Platform = "linux/amd64".parse()?;
    if parsed != here {
        bail!("--platform {p}: hk builds for this host's platform only (linux/amd64), with no emulation");
    }
    Ok(())
}

struct Output {
    format: hk_image::ArchiveFormat,
    dest: PathBuf,
}

fn parse_output(spec: &str) -> anyhow::Result<Output> {
    let mut kind = None;
    let mut dest = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", t)) => kind = Some(t),
            Some(("dest", d)) => dest = Some(PathBuf::from(d)),
            _ => bail!("-o {spec}: give type=oci,dest=FILE or type=docker,dest=FILE"),
        }
    }
    let format = match kind {
        Some("oci") => hk_image::ArchiveFormat::OciArchive,
        Some("docker") => hk_image::ArchiveFormat::DockerArchive,
        _ => bail!("-o {spec}: hk writes type=oci or type=docker archives"),
    };
    let dest = dest.with_context(|| format!("-o {spec}: give dest=FILE"))?;
    Ok(Output { format, dest })
}

/// `--secret id=ID[,src=FILE]` (also `type=file`; `source=`), as docker build takes it.
fn parse_secret(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let mut id = None;
    let mut src = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("type", "file")) => {}
            _ => bail!("--secret {spec}: give id=ID,src=FILE"),
        }
    }
    let id = id.with_context(|| format!("--secret {spec}: give id=ID"))?;
    let src = src.unwrap_or_else(|| PathBuf::from(&id));
    let src = std::path::absolute(&src)
        .with_context(|| format!("--secret {spec}: cannot resolve {}", src.display()))?;
    if !src.is_file() {
        bail!("--secret {spec}: {} is not a file", src.display());
    }
    Ok((id, src))
}

/// `.dockerignore`: `<Dockerfile>.dockerignore` beside the Dockerfile wins over the
/// context's, as BuildKit reads them.
fn read_ignore(context: &Path, dockerfile: &Path) -> anyhow::Result<hk_image::build::Ignore> {
    let own = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    let path = if own.is_file() {
        own
    } else {
        context.join(".dockerignore")
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    hk_image::build::Ignore::parse(&text).with_context(|| format!("in {}", path.display()))
}

struct Builder<'a> {
    store: &'a Store,
    df: &'a dockerfile::Dockerfile,
    progress: Arc<Progress>,
    context: PathBuf,
    ignore: hk_image::build::Ignore,
    build_args: BTreeMap<String, String>,
    used_args: Mutex<HashSet<String>>,
    /// `--secret`s: id to the host file.
    secrets: BTreeMap<String, PathBuf>,
    no_cache: bool,
    pull: bool,
    memory_mib: u64,
    cpus: u32,
    /// Each stage's image once built (stages build on threads of their own).
    results: Mutex<Vec<Option<Image>>>,
    /// `--label`s, added to the target stage's image.
    labels: BTreeMap<String, String>,
}

/// A stage while it builds: its image so far, that image's config, the key its next step
/// chains from, and the ARGs it has declared.
struct State {
    image: Image,
    config: Value,
    key: Digest,
    args: Vec<(String, Option<String>)>,
    label: String,
    step: usize,
    steps: usize,
}

impl State {
    /// What `$VAR` means in this stage now: its ARGs, overridden by its ENV (docker: "ENV
    /// always overrides an ARG of the same name").
    fn vars(&self) -> Vars {
        let mut vars = Vars::default();
        for (k, v) in &self.args {
            if let Some(v) = v {
                vars.set(k, v);
            }
        }
        for e in config::env(&self.config) {
            let (k, v) = e.split_once('=').unwrap_or((&e, ""));
            vars.set(k, v);
        }
        vars
    }

    fn shell(&self) -> Vec<String> {
        shell_of(&self.config)
    }

    fn next_vertex(&mut self, progress: &Arc<Progress>, text: &str) -> Vertex {
        self.step += 1;
        progress.vertex(&format!(
            "[{} {}/{}] {}",
            self.label,
            self.step,
            self.steps,
            one_line(text)
        ))
    }
}

/// An instruction's text on one progress line.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    if text.contains('\n') {
        format!("{first} ...")
    } else {
        first.to_string()
    }
}

/// A lock that a panicked holder did not spoil: the data are plain values.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(parts: &Value) -> Digest {
    Digest::of(&serde_json::to_vec(parts).expect("JSON values serialize"))
}

/// Whether an instruction makes a step of its own in the progress (as BuildKit: those that
/// touch the filesystem).
fn has_vertex(kind: &Instr) -> bool {
    matches!(
        kind,
        Instr::Run(_) | Instr::Copy(_) | Instr::Add(_) | Instr::Workdir(_)
    )
}

impl Builder<'_> {
    fn stage_index(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|&i| i < self.df.stages.len())
            })
    }

    /// The global ARGs (before the first FROM), for FROM lines and for stages that declare
    /// them again without a value.
    fn global_vars(&self) -> anyhow::Result<Vars> {
        let mut vars = Vars::default();
        for a in &self.df.global_args {
            let value = match self.build_args.get(&a.name) {
                Some(v) => {
                    lock(&self.used_args).insert(a.name.clone());
                    Some(v.clone())
                }
                None => a
                    .default
                    .as_deref()
                    .map(|d| dockerfile::expand_word(d, &vars, self.df.directives.escape))
                    .transpose()?,
            };
            if let Some(v) = value {
                vars.set(&a.name, &v);
            }
        }
        Ok(vars)
    }

    /// The stages `target` needs, each with the earlier stages it needs itself: its base
    /// if that is a stage, and the stages its COPY --from and RUN --mount from= name.
    fn needed_stages(
        &self,
        target: usize,
        global: &Vars,
    ) -> anyhow::Result<BTreeMap<usize, BTreeSet<usize>>> {
        let mut needed = BTreeMap::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if needed.contains_key(&i) {
                continue;
            }
            let stage = &self.df.stages[i];
            let from =
                dockerfile::expand_word(&stage.from.image, global, self.df.directives.escape)?;
            let mut refs = vec![from];
            for ins in &stage.instructions {
                match &ins.kind {
                    Instr::Copy(c) | Instr::Add(c) => refs.extend(c.from.clone()),
                    Instr::Run(r) => {
                        for m in &r.mounts {
                            if let Ok(m) = dockerfile::parse_mount(m) {
                                refs.extend(m.from);
                            }
                        }
                    }
                    _ => {}
                }
            }
            let deps: BTreeSet<usize> = refs
                .iter()
                .filter_map(|r| self.stage_index(r).filter(|&j| j < i))
                .collect();
            todo.extend(deps.iter().copied());
            needed.insert(i, deps);
        }
        Ok(needed)
    }

    /// Builds the needed stages, each as soon as the stages it needs are done, independent
    /// ones at the same time (each RUN is a VM of its own anyway). After a failure nothing
    /// new starts; what runs finishes. `Err(code)` inside: a step failed and said so.
    fn build_stages(
        &self,
        needed: &BTreeMap<usize, BTreeSet<usize>>,
        target: usize,
        global: &Vars,
    ) -> anyhow::Result<Result<(), u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let mut done = BTreeSet::new();
            let mut started = BTreeSet::new();
            let mut outcome: anyhow::Result<Result<(), u8>> = Ok(Ok(()));
            loop {
                if matches!(outcome, Ok(Ok(()))) {
                    for (&i, deps) in needed {
                        if !started.contains(&i) && deps.is_subset(&done) {
                            started.insert(i);
                            let tx = tx.clone();
                            scope.spawn(move || {
                                let _ = tx.send((i, self.build_stage(i, global, i == target)));
                            });
                        }
                    }
                }
                if done.len() + started.difference(&done).count() == done.len() {
                    break; // nothing runs
                }
                let Ok((i, result)) = rx.recv() else { break };
                done.insert(i);
                match result {
                    Ok(Ok(())) => {}
                    other => {
                        if matches!(outcome, Ok(Ok(()))) {
                            outcome = other;
                        }
                    }
                }
            }
            outcome
        })
    }

    /// Builds stage `i` into `results[i]`. `Err(code)` inside: a step failed and said so.
    fn build_stage(
        &self,
        i: usize,
        global: &Vars,
        is_target: bool,
    ) -> anyhow::Result<Result<(), u8>> {
        let stage = &self.df.stages[i];
        let escape = self.df.directives.escape;
        let label = stage.name.clone().unwrap_or_else(|| format!("stage-{i}"));
        let steps = 1 + stage
            .instructions
            .iter()
            .filter(|ins| has_vertex(&ins.kind))
            .count();
        let from = dockerfile::expand_word(&stage.from.image, global, escape)?;
        if let Some(p) = &stage.from.platform {
            check_platform(&dockerfile::expand_word(p, global, escape)?)?;
        }
        let mut state = State {
            image: self.scratch_image()?,
            config: config::scratch(),
            key: key_of(&json!([CACHE_VERSION, "scratch"])),
            args: Vec::new(),
            label,
            step: 0,
            steps,
        };
        let v = state.next_vertex(&self.progress, &format!("FROM {from}"));
        if from != "scratch" {
            let base = match self.stage_index(&from).filter(|&j| j < i) {
                Some(j) => lock(&self.results)[j]
                    .clone()
                    .with_context(|| format!("stage {from} was not built"))?,
                None => self.base_image(&from)?,
            };
            state.config = config::inherit(&self.store.config_bytes(&base)?)?;
            state.key = key_of(&json!([CACHE_VERSION, "from", base.config.as_str()]));
            state.image = base;
        }
        v.done();
        // The base's ONBUILD triggers run first, and the new image does not inherit them.
        let triggers = config::get_list(&state.config, "OnBuild");
        let mut instructions: Vec<Instruction> = Vec::new();
        if !triggers.is_empty() {
            let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
            let parsed =
                dockerfile::parse(&text).context("in the base image's ONBUILD triggers")?;
            instructions.extend(parsed.stages.into_iter().flat_map(|s| s.instructions));
            config::set_list(&mut state.config, "OnBuild", None);
            state.steps += instructions
                .iter()
                .filter(|ins| has_vertex(&ins.kind))
                .count();
        }
        instructions.extend(stage.instructions.iter().cloned());
        for ins in &instructions {
            if let Err(code) = self.step(&mut state, ins, global)? {
                return Ok(Err(code));
            }
        }
        if is_target && !self.labels.is_empty() {
            let labels = self.labels.clone();
            let key = key_of(&json!([state.key.as_str(), "labels", labels]));
            if !self.cached(&mut state, &key)? {
                let mut cfg = state.config.clone();
                config::add_to_map(
                    &mut cfg,
                    "Labels",
                    labels.iter().map(|(k, v)| (k.clone(), json!(v))),
                );
                let text = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.finish_commit(&mut state, key, cfg, None, &format!("LABEL {text}"))?;
            }
        }
        lock(&self.results)[i] = Some(state.image);
        Ok(Ok(()))
    }

    fn scratch_image(&self) -> anyhow::Result<Image> {
        let bytes = serde_json::to_vec(&config::scratch())?;
        Ok(self.store.put_image(&bytes, Vec::new())?)
    }

    /// A FROM image: from the store, pulled when missing or with --pull.
    fn base_image(&self, name: &str) -> anyhow::Result<Image> {
        let local = self.store.resolve(name);
        let missing = matches!(local, Err(hk_image::Error::NotFound(_)));
        if !missing && !self.pull {
            return Ok(local?);
        }
        let reference = ImageRef::parse(name)?;
        let opts = hk_image::PullOptions {
            platform: None,
            tls_verify: None,
            convert: false,
        };
        crate::images::pull_with_progress(self.store, &reference, &opts, true, true).with_context(
            || format!("cannot pull the base image {name}: check the name, or hk login"),
        )
    }

    /// One instruction: from the cache, or done and then cached. `Err(code)` inside: the
    /// step failed (its error already printed).
    fn step(
        &self,
        state: &mut State,
        ins: &Instruction,
        global: &Vars,
    ) -> anyhow::Result<Result<(), u8>> {
        let escape = self.df.directives.escape;
        let kind = ins
            .expand(&state.vars(), escape)
            .with_context(|| format!("Dockerfile:{}", ins.line))?;
        match kind {
            Instr::Arg(decls) => {
                // An ARG changes no image, only what later steps see (and so their keys).
                for d in decls {
                    let value = match self.build_args.get(&d.name) {
                        Some(v) => {
                            lock(&self.used_args).insert(d.name.clone());
                            Some(v.clone())
                        }
                        None => d
                            .default
                            .clone()
                            .or_else(|| global.get(&d.name).map(str::to_string)),
                    };
                    state.key = key_of(&json!([state.key.as_str(), "ARG", d.name, value]));
                    state.args.retain(|(k, _)| *k != d.name);
                    state.args.push((d.name, value));
                }
                Ok(Ok(()))
            }
            Instr::Run(run) => self.run(state, ins, run),
            Instr::Copy(c) => self.copy(state, ins, c, false),
            Instr::Add(c) => self.copy(state, ins, c, true),
            Instr::Workdir(dir) => {
                let v = state.next_vertex(&self.progress, &ins.text);
                let path =
                    config::resolve_workdir(&config::get_str(&state.config, "WorkingDir"), &dir);
                let key = key_of(&json!([state.key.as_str(), "WORKDIR", path]));
                let made = (|| {
                    if self.cached(state, &key)? {
                        return Ok(true);
                    }
                    let user = config::get_str(&state.config, "User");
                    let layer = self.workdir_layer(&state.image, &path, &user)?;
                    let mut cfg = state.config.clone();
                    config::set_str(&mut cfg, "WorkingDir", &path);
                    self.finish_commit(state, key, cfg, layer, &ins.text)?;
                    Ok(false)
                })();
                finish(v, made)?;
                Ok(Ok(()))
            }
            other => {
                let key = key_of(&json!([state.key.as_str(), format!("{other:?}")]));
                if !self.cached(state, &key)? {
                    let mut cfg = state.config.clone();
                    apply_metadata(&mut cfg, other)?;
                    self.finish_commit(state, key, cfg, None, &ins.text)?;
                }
                Ok(Ok(()))
            }
        }
    }

    /// Takes the step whose key is `key` from the cache, if it is there (and --no-cache
    /// was not given).
    fn cached(&self, state: &mut State, key: &Digest) -> anyhow::Result<bool> {
        if self.no_cache {
            return Ok(false);
        }
        let Some(image) = self.store.cache_get(key)? else {
            return Ok(false);
        };
        state.config = serde_json::from_slice(&self.store.config_bytes(&image)?)?;
        state.image = image;
        state.key = key.clone();
        Ok(true)
    }

    /// Records a step done: its layer (if it made one) and history entry on the stage's
    /// image, stored and cached under `key`.
    fn finish_commit(
        &self,
        state: &mut State,
        key: Digest,
        mut cfg: Value,
        layer: Option<LayerInfo>,
        created_by: &str,
    ) -> anyhow::Result<()> {
        let mut layers = state.image.layers.clone();
        if let Some(l) = &layer {
            config::push_diff_id(&mut cfg, l.diff_id.as_str());
            layers.push(l.clone());
        }
        config::push_history(
            &mut cfg,
            &crate::container::now(),
            created_by,
            layer.is_none(),
        );
        let bytes = serde_json::to_vec(&cfg)?;
        let image = self.store.put_image(&bytes, layers)?;
        self.store.cache_put(&key, &image)?;
        state.image = image;
        state.config = cfg;
        state.key = key;
        Ok(())
    }

    /// RUN: in a microVM of its own.
    fn run(
        &self,
        state: &mut State,
        ins: &Instruction,
        run: dockerfile::Run,
    ) -> anyhow::Result<Result<(), u8>> {
        if run.shebang_script().is_some() {
            bail!(
                "Dockerfile:{}: a RUN here-document starting with #! is not supported yet: \
                 write the script with COPY and RUN it",
                ins.line
            );
        }
        // The parser leaves a here-document in the command for the shell, or makes it the
        // command when it is all there is.
        let argv = command_argv(run.command.clone(), &state.shell());
        let env = config::env(&state.config);
        let defined: HashSet<String> = env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string())
            .collect();
        // Declared build args reach the command's environment (and so the key); ENV wins.
        let arg_env: Vec<String> = state
            .args
            .iter()
            .filter(|(k, _)| !defined.contains(k))
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let proxies: Vec<String> = PROXY_ARGS
            .iter()
            .filter(|p| !defined.contains(**p) && !state.args.iter().any(|(k, _)| k == *p))
            .filter_map(|p| self.build_args.get(*p).map(|v| format!("{p}={v}")))
            .collect();
        let network = match run.network.as_deref() {
            None | Some("default") | Some("host") => true,
            Some("none") => false,
            Some(other) => bail!(
                "Dockerfile:{}: RUN --network={other}: give default, none or host",
                ins.line
            ),
        };
        let (mounts, mount_keys) = self.run_mounts(&run.mounts, ins.line)?;
        let key = key_of(&json!([
            state.key.as_str(),
            "RUN",
            argv,
            arg_env,
            mount_keys,
            network
        ]));
        let v = state.next_vertex(&self.progress, &ins.text);
        match self.cached(state, &key) {
            Ok(true) => {
                v.cached();
                return Ok(Ok(()));
            }
            Ok(false) => {}
            Err(e) => {
                v.error(&format!("{e:#}"));
                return Err(e);
            }
        }
        if state.image.layers.is_empty() {
            let msg = format!(
                "RUN needs a root filesystem with {} in it, and this stage has no files yet \
                 (FROM scratch): COPY a shell in first, or build FROM an image",
                argv[0]
            );
            v.error(&msg);
            bail!("Dockerfile:{}: {msg}", ins.line);
        }
        let user = config::get_str(&state.config, "User");
        let cwd = config::get_str(&state.config, "WorkingDir");
        let spec = step::RunSpec {
            parent: state.image.clone(),
            argv: argv.clone(),
            env: env.into_iter().chain(arg_env).chain(proxies).collect(),
            cwd: if cwd.is_empty() { "/".into() } else { cwd },
            user: (!user.is_empty()).then_some(user),
            network,
            mounts,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
        };
        let sink = v.sink();
        let outcome = step::run(self.store, spec, Arc::new(sink));
        let layer = match outcome {
            Ok(step::Outcome::Layer(l)) => l,
            Ok(step::Outcome::Failed(code)) => {
                let msg = format!(
                    "process \"{}\" did not complete successfully: exit code: {code}",
                    argv.join(" ")
                );
                v.error(&msg);
                eprintln!("Dockerfile:{}\nERROR: failed to build: {msg}", ins.line);
                return Ok(Err(EXIT_BUILD_FAILED));
            }
            Err(e) => {
                v.error(&format!("{e:#}"));
                return Err(e.context(format!("Dockerfile:{}", ins.line)));
            }
        };
        let created_by = format!("RUN {}", argv.join(" "));
        let cfg = state.config.clone();
        self.finish_commit(state, key, cfg, layer, &created_by)?;
        v.done();
        Ok(Ok(()))
    }
}

/// Ends a vertex as its step went: DONE, CACHED, or the error (returned on).
fn finish(v: Vertex, made: anyhow::Result<bool>) -> anyhow::Result<()> {
    match made {
        Ok(true) => {
            v.cached();
            Ok(())
        }
        Ok(false) => {
            v.done();
            Ok(())
        }
        Err(e) => {
            v.error(&format!("{e:#}"));
            Err(e)
        }
    }
}

/// ENV, LABEL, USER, EXPOSE, VOLUME, ENTRYPOINT, CMD, SHELL, STOPSIGNAL, HEALTHCHECK,
/// ONBUILD, MAINTAINER: the config changes, no layer.
fn apply_metadata(cfg: &mut Value, kind: Instr) -> anyhow::Result<()> {
    match kind {
        Instr::Env(pairs) => {
            for (k, v) in pairs {
                config::set_env(cfg, &k, &v);
            }
        }
        Instr::Label(pairs) => {
            config::add_to_map(cfg, "Labels", pairs.into_iter().map(|(k, v)| (k, json!(v))));
        }
        Instr::User(u) => config::set_str(cfg, "User", &u),
        Instr::Expose(ports) => {
            let mut entries = Vec::new();
            for p in ports {
                let p = if p.contains('/') {
                    p.to_ascii_lowercase()
                } else {
                    format!("{p}/tcp")
                };
                entries.push((p, json!({})));
            }
            config::add_to_map(cfg, "ExposedPorts", entries);
        }
        Instr::Volume(vols) => {
            config::add_to_map(cfg, "Volumes", vols.into_iter().map(|v| (v, json!({}))));
        }
        Instr::Entrypoint(c) => {
            let shell = shell_of(cfg);
            config::set_list(cfg, "Entrypoint", Some(command_argv(c, &shell)));
            // docker: a new ENTRYPOINT drops the CMD the base image set.
            config::set_list(cfg, "Cmd", None);
        }
        Instr::Cmd(c) => {
            let shell = shell_of(cfg);
            config::set_list(cfg, "Cmd", Some(command_argv(c, &shell)));
        }
        Instr::Shell(s) => config::set_list(cfg, "Shell", Some(s)),
        Instr::Stopsignal(s) => config::set_str(cfg, "StopSignal", &s),
        Instr::Healthcheck(h) => {
            config::inner(cfg).insert("Healthcheck".into(), healthcheck_json(&h));
        }
        Instr::Onbuild(t) => {
            let mut list = config::get_list(cfg, "OnBuild");
            list.push(t);
            config::set_list(cfg, "OnBuild", Some(list));
        }
        Instr::Maintainer(m) => {
            cfg["author"] = json!(m);
        }
        Instr::Arg(_) | Instr::Run(_) | Instr::Copy(_) | Instr::Add(_) | Instr::Workdir(_) => {
            unreachable!("handled by the caller")
        }
    }
    Ok(())
}

fn shell_of(cfg: &Value) -> Vec<String> {
    let s = config::get_list(cfg, "Shell");
    if s.is_empty() {
        DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
    } else {
        s
    }
}

/// Exec form as written; shell form run by the stage's shell.
fn command_argv(c: Command, shell: &[String]) -> Vec<String> {
    match c {
        Command::Exec(v) => v,
        Command::Shell(s) => shell.iter().cloned().chain([s]).collect(),
    }
}

/// docker's Healthcheck object: durations in nanoseconds, the test in its exec form.
fn healthcheck_json(h: &dockerfile::Healthcheck) -> Value {
    let mut v = serde_json::Map::new();
    match &h.command {
        None => {
            v.insert("Test".into(), json!(["NONE"]));
        }
        Some(Command::Exec(argv)) => {
            v.insert(
                "Test".into(),
                json!(["CMD"]
                    .into_iter()
                    .map(str::to_string)
                    .chain(argv.iter().cloned())
                    .collect::<Vec<_>>()),
            );
        }
        Some(Command::Shell(s)) => {
            v.insert("Test".into(), json!(["CMD-SHELL", s]));
        }
    }
    for (name, d) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
        ("StartInterval", h.start_interval),
    ] {
        if let Some(d) = d {
            v.insert(name.into(), json!(d.as_nanos() as u64));
        }
    }
    if let Some(r) = h.retries {
        v.insert("Retries".into(), json!(r));
    }
    Value::Object(v)
}

impl Builder<'_> {
    /// RUN --mount: the mounts the step's container gets, and what of them goes into the
    /// step's key (a bind mount's content; a cache mount's content never does, by design).
    fn run_mounts(&self, raw: &[String], line: usize) -> anyhow::Result<(Vec<Mount>, Vec<Value>)> {
        use dockerfile::MountType;
        let mut mounts = Vec::new();
        let mut keys = Vec::new();
        for r in raw {
            let m = dockerfile::parse_mount(r).with_context(|| format!("Dockerfile:{line}"))?;
            let target = m.target.clone().unwrap_or_default();
            let target = config::clean(&target);
            match m.kind {
                MountType::Bind => {
                    if m.from.is_some() {
                        bail!("Dockerfile:{line}: RUN --mount=type=bind,from=... is not supported yet: COPY --from the files in a step before");
                    }
                    if !m.read_only {
                        bail!("Dockerfile:{line}: RUN --mount=type=bind,rw is not supported yet: bind mounts of the context are read-only");
                    }
                    let source = m.source.clone().unwrap_or_else(|| ".".into());
                    let (dir, digest) = self.context_snapshot(&source)?;
                    keys.push(json!(["bind", target, digest.as_str()]));
                    mounts.push(Mount {
                        kind: Kind::Bind,
                        source: dir.to_string_lossy().into_owned(),
                        target,
                        read_only: true,
                        no_copy: true,
                        options: Vec::new(),
                        create_source: false,
                        consistency: Consistency::Default,
                    });
                }
                MountType::Cache => {
                    let id = m.id.clone().unwrap_or_else(|| target.clone());
                    let dir = step::build_root()
                        .join("cache-mounts")
                        .join(Digest::of(id.as_bytes()).hex());
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    keys.push(json!(["cache", target, id]));
                    mounts.push(Mount {
                        kind: Kind::Bind,
                        source: dir.to_string_lossy().into_owned(),
                        target,
                        read_only: m.read_only,
                        no_copy: true,
                        options: Vec::new(),
                        create_source: false,
                        consistency: Consistency::Default,
                    });
                }
                MountType::Tmpfs => {
                    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                    if let Some(size) = m.size {
                        options.push(format!("size={size}"));
                    }
                    keys.push(json!(["tmpfs", target, options]));
                    mounts.push(Mount {
                        kind: Kind::Tmpfs,
                        source: String::new(),
                        target,
                        read_only: false,
                        no_copy: true,
                        options,
                        create_source: false,
                        consistency: Consistency::Default,
                    });
                }
                MountType::Secret => {
                    // BuildKit: the id defaults to the target's file name, the target to
                    // /run/secrets/<id>.
                    let id = m
                        .id
                        .clone()
                        .or_else(|| m.target.as_deref().and_then(|t| t.rsplit('/').next()).map(str::to_string))
                        .with_context(|| format!("Dockerfile:{line}: RUN --mount={r}: give id="))?;
                    let target = match &m.target {
                        Some(t) => config::clean(t),
                        None => format!("/run/secrets/{id}"),
                    };
                    let Some(src) = self.secrets.get(&id) else {
                        if m.required {
                            bail!(
                                "Dockerfile:{line}: secret {id} is required: pass it with \
                                 --secret id={id},src=FILE"
                            );
                        }
                        continue;
                    };
                    if let Some(var) = &m.env {
                        bail!(
                            "Dockerfile:{line}: RUN --mount=type=secret,env={var} is not \
                             supported yet: mount the secret as a file"
                        );
                    }
                    // The secret's content is no part of the key, as in BuildKit.
                    keys.push(json!(["secret", target, id]));
                    let mut options = vec![format!("mode={:o}", m.mode.unwrap_or(0o400))];
                    options.push(format!("uid={}", m.uid.unwrap_or(0)));
                    options.push(format!("gid={}", m.gid.unwrap_or(0)));
                    mounts.push(Mount {
                        kind: Kind::Secret,
                        source: src.to_string_lossy().into_owned(),
                        target,
                        read_only: true,
                        no_copy: true,
                        options,
                        create_source: false,
                        consistency: Consistency::Default,
                    });
                }
                MountType::Ssh => bail!(
                    "Dockerfile:{line}: RUN --mount={r}: ssh mounts are not supported (hk has no ssh agent forwarding)"
                ),
            }
        }
        Ok((mounts, keys))
    }
}

impl Builder<'_> {
    /// A RUN bind mount's view of the context: `source` under the context, without what
    /// .dockerignore excludes (the context reaches a VM only as BuildKit would send it).
    /// Returns the directory to share and the digest of its content for the step's key.
    fn context_snapshot(&self, source: &str) -> anyhow::Result<(PathBuf, Digest)> {
        let rel = config::clean(source);
        let rel = rel.trim_start_matches('/');
        let root = std::fs::canonicalize(&self.context)
            .with_context(|| format!("cannot read the context {}", self.context.display()))?;
        let dir = std::fs::canonicalize(root.join(rel))
            .with_context(|| format!("RUN --mount source {source} is not in the context"))?;
        if !dir.starts_with(&root) || !dir.is_dir() {
            bail!("RUN --mount source {source}: give a directory inside the build context");
        }
        let op = hk_image::build::CopyOp {
            sources: vec![source.to_string()],
            dest: "/".into(),
            workdir: "/".into(),
            chown: None,
            chmod: None,
            add: false,
            link: false,
        };
        let src = hk_image::build::Source::context(&self.context, self.ignore.clone())?;
        let digest = hk_image::build::source_digest(&src, &op)?;
        if self.ignore.is_empty() {
            return Ok((dir, digest));
        }
        // Hard links: no copy of the data, and the share is read-only.
        let snap = step::build_root().join("snapshots").join(digest.hex());
        if !snap.is_dir() {
            let temp = snap.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&temp);
            link_tree(&dir, &temp, rel, &self.ignore)?;
            let _ = std::fs::rename(&temp, &snap);
            let _ = std::fs::remove_dir_all(&temp);
        }
        Ok((snap, digest))
    }
}

/// Mirrors `from` (the context path `rel`) into `to` with hard links, leaving out what
/// `ignore` excludes. Symlinks are made again as symlinks, never followed.
fn link_tree(
    from: &Path,
    to: &Path,
    rel: &str,
    ignore: &hk_image::build::Ignore,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let child_rel = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        let kind = entry.file_type()?;
        let excluded = ignore.matches(&child_rel);
        if kind.is_dir() {
            if excluded && !ignore.may_include_under(&child_rel) {
                continue;
            }
            link_tree(&entry.path(), &to.join(&name), &child_rel, ignore)?;
        } else if excluded {
            continue;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, to.join(&name))?;
        } else if kind.is_file() {
            std::fs::hard_link(entry.path(), to.join(&name)).with_context(|| {
                format!("cannot link {} for a RUN mount", entry.path().display())
            })?;
        }
    }
    Ok(())
}

impl Builder<'_> {
    /// COPY and ADD: on the host, from the context or another stage or image.
    fn copy(
        &self,
        state: &mut State,
        ins: &Instruction,
        c: dockerfile::Copy,
        add: bool,
    ) -> anyhow::Result<Result<(), u8>> {
        let v = state.next_vertex(&self.progress, &ins.text);
        let made = self
            .copy_step(state, ins, c, add)
            .with_context(|| format!("Dockerfile:{}", ins.line));
        finish(v, made)?;
        Ok(Ok(()))
    }

    fn copy_step(
        &self,
        state: &mut State,
        ins: &Instruction,
        c: dockerfile::Copy,
        add: bool,
    ) -> anyhow::Result<bool> {
        let what = if add { "ADD" } else { "COPY" };
        if c.parents {
            bail!("{what} --parents is not supported yet");
        }
        if c.checksum.is_some() {
            bail!("ADD --checksum applies to remote URLs, which hk does not fetch offline");
        }
        if !c.exclude.is_empty() {
            bail!("{what} --exclude is not supported yet");
        }
        // Here-documents become files of a context of their own.
        let heredoc_dir = step::build_root()
            .join("heredocs")
            .join(crate::container::new_id());
        let (context, sources, ignore) = if c.heredocs.is_empty() {
            (self.context.clone(), c.sources.clone(), self.ignore.clone())
        } else {
            std::fs::create_dir_all(&heredoc_dir)
                .with_context(|| format!("cannot create {}", heredoc_dir.display()))?;
            let mut names = Vec::new();
            for h in &c.heredocs {
                std::fs::write(heredoc_dir.join(&h.name), &h.content)?;
                names.push(h.name.clone());
            }
            (
                heredoc_dir.clone(),
                names,
                hk_image::build::Ignore::parse("")?,
            )
        };
        let result = self.copy_from(state, ins, &c, add, &context, sources, ignore);
        let _ = std::fs::remove_dir_all(&heredoc_dir);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_from(
        &self,
        state: &mut State,
        ins: &Instruction,
        c: &dockerfile::Copy,
        add: bool,
        context: &Path,
        sources: Vec<String>,
        ignore: hk_image::build::Ignore,
    ) -> anyhow::Result<bool> {
        use hk_image::build::{copy_to_layer, source_digest, CopyOp, RootView, Source};
        let what = if add { "ADD" } else { "COPY" };
        let from_image = match &c.from {
            Some(f) => Some(match self.stage_index(f) {
                Some(j) => lock(&self.results)[j]
                    .clone()
                    .with_context(|| format!("{what} --from={f}: that stage was not built"))?,
                None => self.base_image(f)?,
            }),
            None => None,
        };
        let from_view = match &from_image {
            Some(img) if img.layers.is_empty() => Some(RootView::empty()),
            Some(img) => Some(RootView::of_image(self.store, img)?),
            None => None,
        };
        let source = match &from_view {
            Some(view) => Source::image(view),
            None => Source::context(context, ignore)?,
        };
        let dest_view = if state.image.layers.is_empty() {
            RootView::empty()
        } else {
            RootView::of_image(self.store, &state.image)?
        };
        let chown = c
            .chown
            .as_deref()
            .map(|s| dest_view.resolve_chown(s))
            .transpose()?;
        let chmod = c
            .chmod
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .with_context(|| format!("{what} --chmod={m}: give an octal mode such as 0755"))
            })
            .transpose()?;
        let op = CopyOp {
            sources,
            dest: c.dest.clone(),
            workdir: config::get_str(&state.config, "WorkingDir"),
            chown,
            chmod,
            add,
            link: c.link,
        };
        let digest = source_digest(&source, &op)?;
        let key = key_of(&json!([
            state.key.as_str(),
            what,
            op.dest,
            op.workdir,
            chown,
            chmod,
            c.link,
            from_image.as_ref().map(|i| i.config.as_str()),
            digest.as_str(),
        ]));
        if self.cached(state, &key)? {
            return Ok(true);
        }
        let mut w = self.store.layer_writer()?;
        {
            let mut tar = tar::Builder::new(&mut w);
            copy_to_layer(&source, &op, &dest_view, &mut tar)?;
            tar.finish()?;
        }
        let layer = w.finish()?;
        let cfg = state.config.clone();
        self.finish_commit(state, key, cfg, Some(layer), &ins.text)?;
        Ok(false)
    }

    /// WORKDIR creates its directory when the image lacks it, as BuildKit does: a layer
    /// with the missing directories (0755, owned by the stage's USER), or none.
    fn workdir_layer(
        &self,
        image: &Image,
        path: &str,
        user: &str,
    ) -> anyhow::Result<Option<LayerInfo>> {
        use hk_image::build::RootView;
        let view = if image.layers.is_empty() {
            RootView::empty()
        } else {
            RootView::of_image(self.store, image)?
        };
        let mut missing = Vec::new();
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix = format!("{prefix}/{part}");
            match view.lookup(&prefix)? {
                Some(e) if e.is_dir => {}
                Some(_) => bail!("WORKDIR {path}: {prefix} is a file in the image"),
                None => missing.push(prefix.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(None);
        }
        let (uid, gid) = if user.is_empty() {
            (0, 0)
        } else {
            view.resolve_chown(user)
                .with_context(|| format!("WORKDIR {path}: the USER {user}"))?
        };
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut w = self.store.layer_writer()?;
        {
            let mut tar = tar::Builder::new(&mut w);
            for dir in &missing {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_uid(u64::from(uid));
                h.set_gid(u64::from(gid));
                h.set_size(0);
                h.set_mtime(mtime);
                tar.append_data(&mut h, format!("{}/", &dir[1..]), std::io::empty())?;
            }
            tar.finish()?;
        }
        Ok(Some(w.finish()?))
    }
}
