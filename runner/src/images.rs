//! Image commands, after docker's: `hk pull`, `hk push`, `hk images`, `hk rmi`, `hk tag`,
//! `hk load`, `hk save`, `hk image ...`, `hk login`, `hk logout`. Output formats follow docker's so that scripts written for it
//! keep working; the work itself is hk_image's.

use anyhow::{bail, Context};
use hk_image::auth::{self, Credentials};
use hk_image::progress::{Event, Progress};
use hk_image::{
    ArchiveFormat, Digest, Image, ImageRef, Platform, PullOptions, PushOptions, Removed, Store,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image to pull, e.g. alpine, alpine:3.20, registry:5000/app@sha256:...
    image: String,
    /// Pull for this platform (os/arch[/variant]) instead of the host's
    #[arg(long)]
    platform: Option<String>,
    /// Require HTTPS (default: true, except for localhost and HK_INSECURE_REGISTRIES)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    /// Only download and verify; build the root filesystem at first use instead
    #[arg(long)]
    no_convert: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// Image to push, by name: it goes to that name's registry and repository
    image: String,
    /// Require HTTPS (default: true, except for localhost and HK_INSECURE_REGISTRIES)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct TagArgs {
    /// The image, by name, ID or ID prefix
    source: String,
    /// The new name; `:latest` when it has no tag
    target: String,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Read from this tar archive (plain, gzip or zstd) instead of stdin
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Images to save, by name or ID
    #[arg(required = true)]
    images: Vec<String>,
    /// Write to this file instead of stdout
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Archive layout: `docker-archive` (as docker save) or `oci-archive` (as podman)
    #[arg(long, default_value = "docker-archive", value_parser = ["docker-archive", "oci-archive"])]
    format: String,
}

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag, if given), e.g. alpine or alpine:3.20
    repository: Option<String>,
    /// Show only image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Output format: `table`, or `json` (one object per line, as docker)
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Images to remove, by name or ID
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove the image even when several repositories name it
    #[arg(short, long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Remove all images no running VM uses, not just dangling ones
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Registry host[:port]; Docker Hub if omitted
    server: Option<String>,
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin: this one shows in `ps`)
    #[arg(short, long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    password_stdin: bool,
    /// Require HTTPS (default: true, except for localhost and HK_INSECURE_REGISTRIES)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// Registry host[:port]; Docker Hub if omitted
    server: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry
    Pull(PullArgs),
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove one or more images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Print the path of the image's ext4 root filesystem, building it on first use
    Rootfs(RootfsArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(TagArgs),
    /// Load images from a tar archive or stdin
    Load(LoadArgs),
    /// Save images to a tar archive (streamed to stdout by default)
    Save(SaveArgs),
}

#[derive(clap::Args)]
pub struct RootfsArgs {
    image: String,
}

pub fn image(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Pull(a) => pull(a),
        ImageCommand::Ls(a) => images(a),
        ImageCommand::Rm(a) => rmi(a),
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Prune(a) => prune(a),
        ImageCommand::Rootfs(a) => rootfs(a),
        ImageCommand::Push(a) => push(a),
        ImageCommand::Tag(a) => tag(a),
        ImageCommand::Load(a) => load(a),
        ImageCommand::Save(a) => save(a),
    }
}

pub(crate) fn store() -> anyhow::Result<Store> {
    let root = Store::default_root();
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the image store {}", root.display()))?;
    Ok(store.on_warning(|w| eprintln!("WARNING: {w}")))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = ImageRef::parse(&args.image)?;
    let platform = args
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let opts = PullOptions {
        platform,
        tls_verify: args.tls_verify,
        convert: !args.no_convert,
    };
    let store = store()?;
    pull_with_progress(&store, &reference, &opts, args.quiet, false)?;
    println!("{}", reference.canonical());
    Ok(ExitCode::SUCCESS)
}

/// Pulls with docker's progress output: on stdout for `hk pull`, on stderr for `hk run`,
/// whose stdout is the container's.
pub(crate) fn pull_with_progress(
    store: &Store,
    reference: &ImageRef,
    opts: &PullOptions,
    quiet: bool,
    to_stderr: bool,
) -> anyhow::Result<Image> {
    let before = store
        .resolve(&reference.canonical())
        .ok()
        .map(|i| i.manifest);
    let renderer = Renderer::new(quiet, &PULL_WORDS, to_stderr);
    let tag = match reference.digest() {
        Some(d) => d.to_string(),
        None => reference.tag().unwrap_or("latest").to_string(),
    };
    renderer.say(&format!(
        "{tag}: Pulling from {}",
        reference.familiar_name()
    ));
    let image = runtime()?.block_on(hk_image::pull(store, reference, opts, &renderer));
    renderer.finish();
    let image = image?;
    if let Some(d) = image.repo_digests.first().and_then(|d| d.split_once('@')) {
        renderer.say(&format!("Digest: {}", d.1));
    }
    if before.as_ref() == Some(&image.manifest) {
        renderer.say(&format!("Status: Image is up to date for {reference}"));
    } else {
        renderer.say(&format!("Status: Downloaded newer image for {reference}"));
    }
    Ok(image)
}

/// What docker says about a layer: when it is there already, waiting, moving, done.
struct Words {
    exists: &'static str,
    waiting: &'static str,
    moving: &'static str,
    complete: &'static str,
}

const PULL_WORDS: Words = Words {
    exists: "Already exists",
    waiting: "Pulling fs layer",
    moving: "Downloading",
    complete: "Pull complete",
};

const PUSH_WORDS: Words = Words {
    exists: "Layer already exists",
    waiting: "Preparing",
    moving: "Pushing",
    complete: "Pushed",
};

/// Pull and push progress: a bar per layer on a terminal, docker's plain status lines
/// otherwise.
struct Renderer {
    quiet: bool,
    to_stderr: bool,
    words: &'static Words,
    bars: Option<MultiProgress>,
    layers: Mutex<HashMap<Digest, (ProgressBar, u64)>>,
}

impl Renderer {
    fn new(quiet: bool, words: &'static Words, to_stderr: bool) -> Renderer {
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bars = (!quiet && terminal).then(MultiProgress::new);
        Renderer {
            quiet,
            to_stderr,
            words,
            bars,
            layers: Mutex::new(HashMap::new()),
        }
    }

    /// A line of progress, unless quiet.
    fn say(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(m) => {
                let _ = m.println(line);
            }
            None if self.to_stderr => eprintln!("{line}"),
            None => println!("{line}"),
        }
    }

    fn line(&self, layer: &Digest, status: &str) {
        if self.bars.is_none() {
            self.say(&format!("{}: {status}", layer.short()));
        }
    }

    fn finish(&self) {
        for (bar, _) in self.layers.lock().expect("progress lock").values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

impl Progress for Renderer {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Resolved { .. } => {}
            Event::Converting => self.say("Building root filesystem"),
            Event::Exists { layer } => {
                if let Some(m) = &self.bars {
                    let bar = m.add(ProgressBar::new(0));
                    bar.set_style(ProgressStyle::with_template("{prefix}: {msg}").expect("style"));
                    bar.set_prefix(layer.short().to_string());
                    bar.finish_with_message(self.words.exists);
                }
                self.line(layer, self.words.exists);
            }
            Event::Waiting { layer, size } => {
                if let Some(m) = &self.bars {
                    let bar = m.add(ProgressBar::new(size));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix}: {msg:<16} [{bar:30}] {bytes}/{total_bytes}",
                        )
                        .expect("style")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(layer.short().to_string());
                    bar.set_message(self.words.moving);
                    self.layers
                        .lock()
                        .expect("progress lock")
                        .insert(layer.clone(), (bar, size));
                }
                self.line(layer, self.words.waiting);
            }
            Event::Downloading { layer, done } => {
                if let Some((bar, _)) = self.layers.lock().expect("progress lock").get(layer) {
                    bar.set_position(done);
                }
            }
            Event::Complete { layer } => {
                if let Some((bar, size)) = self.layers.lock().expect("progress lock").get(layer) {
                    bar.set_position(*size);
                    bar.finish_with_message(self.words.complete);
                }
                self.line(layer, self.words.complete);
            }
        }
    }
}

/// docker's byte sizes: decimal units, three significant digits.
pub(crate) fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s}{}", units[u])
}

/// docker's "2 weeks ago".
fn human_since(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "N/A".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    let (n, unit) = match secs {
        s if s < 1 => return "Less than a second ago".into(),
        s if s < 60 => (s, "second"),
        s if s < 60 * 60 => (s / 60, "minute"),
        s if s < 48 * 3600 => (s / 3600, "hour"),
        s if s < 14 * 86400 => (s / 86400, "day"),
        s if s < 60 * 86400 => (s / (7 * 86400), "week"),
        s if s < 2 * 365 * 86400 => (s / (30 * 86400), "month"),
        s => (s / (365 * 86400), "year"),
    };
    match (n, unit) {
        (1, "minute") => "About a minute ago".into(),
        (1, "hour") => "About an hour ago".into(),
        (1, u) => format!("1 {u} ago"),
        (n, u) => format!("{n} {u}s ago"),
    }
}

/// One row of `hk images`: an image under one of its names.
struct Row<'a> {
    image: &'a Image,
    repository: String,
    tag: String,
    digest: String,
}

fn rows(images: &[Image]) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for image in images {
        let digest_of = |repo: &str| {
            image
                .repo_digests
                .iter()
                .find_map(|d| d.split_once('@').filter(|(r, _)| *r == repo).map(|x| x.1))
                .unwrap_or("<none>")
                .to_string()
        };
        let mut tagged = false;
        for name in &image.names {
            let Ok(r) = ImageRef::parse(name) else {
                continue;
            };
            // A name pulled by digest shows as a <none> tag next to its tagged twin.
            if r.digest().is_some()
                && image
                    .names
                    .iter()
                    .any(|n| n.starts_with(&format!("{}:", r.name())))
            {
                continue;
            }
            tagged = true;
            out.push(Row {
                image,
                repository: r.familiar_name(),
                tag: if r.digest().is_some() {
                    "<none>".into()
                } else {
                    r.tag().unwrap_or("latest").to_string()
                },
                digest: digest_of(&r.name()),
            });
        }
        if !tagged {
            out.push(Row {
                image,
                repository: "<none>".into(),
                tag: "<none>".into(),
                digest: "<none>".into(),
            });
        }
    }
    out
}

pub fn images(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = store()?;
    let images = store.images()?;
    let mut rows = rows(&images);
    if let Some(filter) = &args.repository {
        // docker matches the repository exactly and the tag only when one is given.
        let (repo, tag) = match filter.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((r, t)) => (r, Some(t)),
            None => (filter.as_str(), None),
        };
        let repo = ImageRef::parse(repo)
            .map(|r| r.familiar_name())
            .unwrap_or_else(|_| repo.to_string());
        rows.retain(|r| r.repository == repo && tag.is_none_or(|t| r.tag == t));
    }
    let id = |i: &Image| {
        if args.no_trunc {
            i.config.to_string()
        } else {
            i.config.short().to_string()
        }
    };
    if args.quiet {
        let mut seen = Vec::new();
        for r in &rows {
            let id = id(r.image);
            if !seen.contains(&id) {
                println!("{id}");
                seen.push(id);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == "json" {
        for r in &rows {
            let created_at = r
                .image
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|t| {
                    t.with_timezone(&chrono::Utc)
                        .format("%Y-%m-%d %H:%M:%S +0000 UTC")
                        .to_string()
                })
                .unwrap_or_else(|| "N/A".into());
            let obj = json!({
                "Containers": "N/A",
                "CreatedAt": created_at,
                "CreatedSince": human_since(r.image.created.as_deref()),
                "Digest": r.digest,
                "ID": id(r.image),
                "Repository": r.repository,
                "SharedSize": "N/A",
                "Size": human_size(r.image.size()),
                "Tag": r.tag,
                "UniqueSize": "N/A",
                "VirtualSize": human_size(r.image.size()),
            });
            println!("{obj}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table: Vec<Vec<String>> = vec![if args.digests {
        ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
            .map(String::from)
            .to_vec()
    } else {
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
            .map(String::from)
            .to_vec()
    }];
    for r in &rows {
        let mut row = vec![r.repository.clone(), r.tag.clone()];
        if args.digests {
            row.push(r.digest.clone());
        }
        row.extend([
            id(r.image),
            human_since(r.image.created.as_deref()),
            human_size(r.image.size()),
        ]);
        table.push(row);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn print_removed(removed: &[Removed]) {
    for r in removed {
        match r {
            Removed::Untagged(n) => println!("Untagged: {n}"),
            Removed::Deleted(d) => println!("Deleted: {d}"),
        }
    }
}

pub fn rmi(args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = store()?;
    let mut failed = false;
    for spec in &args.images {
        match store.remove(spec, args.force) {
            Ok(removed) => print_removed(&removed),
            Err(e) => {
                eprintln!("Error: {e}");
                failed = true;
            }
        }
    }
    // docker rmi exits 1 when any image could not be removed, after trying all of them.
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = store()?;
    let mut out = Vec::new();
    let mut failed = false;
    for spec in &args.images {
        let image = match store.resolve(spec) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("Error: {e}");
                failed = true;
                continue;
            }
        };
        let config = store.config(&image)?;
        let repo_tags: Vec<String> = image
            .names
            .iter()
            .filter_map(|n| ImageRef::parse(n).ok())
            .filter(|r| r.digest().is_none())
            .map(|r| r.to_string())
            .collect();
        let repo_digests: Vec<String> = image
            .repo_digests
            .iter()
            .filter_map(|d| ImageRef::parse(d).ok())
            .map(|r| r.to_string())
            .collect();
        out.push(json!({
            "Id": image.config,
            "RepoTags": repo_tags,
            "RepoDigests": repo_digests,
            "Created": image.created,
            "Author": config.author(),
            "Config": config.config(),
            "Architecture": image.architecture,
            "Variant": image.variant,
            "Os": image.os,
            "Size": image.size(),
            "RootFS": {
                "Type": "layers",
                "Layers": image.diff_ids(),
            },
            "Manifest": image.manifest,
            "Layers": image.layers.iter().map(|l| json!({
                "Digest": l.digest,
                "MediaType": l.media_type,
                "Size": l.size,
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    if !args.force {
        let what = if args.all {
            "all images without at least one container associated to them"
        } else {
            "all dangling images"
        };
        print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let store = store()?;
    let (removed, stats) = store.prune(args.all)?;
    if !removed.is_empty() {
        println!("Deleted Images:");
        for r in &removed {
            match r {
                Removed::Untagged(n) => println!("untagged: {n}"),
                Removed::Deleted(d) => println!("deleted: {d}"),
            }
        }
        println!();
    }
    println!("Total reclaimed space: {}", human_size(stats.bytes));
    Ok(ExitCode::SUCCESS)
}

pub fn rootfs(args: RootfsArgs) -> anyhow::Result<ExitCode> {
    let store = store()?;
    let image = store.resolve(&args.image)?;
    let rootfs = store.rootfs(&image)?;
    println!("{}", rootfs.path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = ImageRef::parse(&args.image)?;
    let store = store()?;
    let renderer = Renderer::new(args.quiet, &PUSH_WORDS, false);
    if !args.quiet {
        println!(
            "The push refers to repository [{}]",
            reference.familiar_name()
        );
    }
    let opts = PushOptions {
        tls_verify: args.tls_verify,
    };
    let pushed = runtime()?.block_on(hk_image::push(&store, &reference, &opts, &renderer));
    renderer.finish();
    let pushed = pushed?;
    if args.quiet {
        println!("{reference}");
    } else {
        println!(
            "{}: digest: {} size: {}",
            reference.tag().unwrap_or("latest"),
            pushed.digest,
            pushed.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tag(args: TagArgs) -> anyhow::Result<ExitCode> {
    store()?.tag(&args.source, &args.target)?;
    Ok(ExitCode::SUCCESS)
}

pub fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = store()?;
    let loaded = match &args.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            hk_image::load(&store, file, &path.display().to_string())?
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            hk_image::load(&store, stdin.lock(), "stdin")?
        }
    };
    // docker prints these even with -q: they are the result, not progress.
    for l in &loaded {
        if l.names.is_empty() {
            println!("Loaded image ID: {}", l.image.config);
        }
        for name in &l.names {
            println!("Loaded image: {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let format = match args.format.as_str() {
        "oci-archive" => ArchiveFormat::OciArchive,
        _ => ArchiveFormat::DockerArchive,
    };
    let store = store()?;
    match &args.output {
        Some(path) => hk_image::save_to_file(&store, &args.images, format, path)?,
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            let out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            hk_image::save(&store, &args.images, format, out, "stdout".as_ref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.unwrap_or_else(|| "docker.io".into());
    let username = match args.username {
        Some(u) => u,
        None => bail!("username required: pass -u USER (hk does not prompt)"),
    };
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut p = String::new();
            std::io::stdin().lock().read_line(&mut p)?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("password required: pass --password-stdin (hk does not prompt)"),
    };
    if password.is_empty() {
        bail!("password is empty");
    }
    let creds = Credentials { username, password };
    runtime()?.block_on(hk_image::login(&server, &creds, args.tls_verify))?;
    auth::save(&server, &creds)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.unwrap_or_else(|| "docker.io".into());
    if auth::erase(&server)? {
        println!(
            "Removing login credentials for {}",
            auth::server_key(&server)
        );
    } else {
        println!("Not logged in to {}", auth::server_key(&server));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(7_800_000), "7.8MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(1_500), "1.5kB");
    }
}
