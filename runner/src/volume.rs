//! Named volumes: `hk volume create|ls|rm|inspect|prune`, and `-v NAME:/path`, which
//! creates one on first use. Laid out as podman lays them out, one directory per volume:
//! `$HK_DATA_DIR/volumes/<name>/_data` is what a container sees (shared over virtio-fs) and
//! `volume.json` beside it says when it was made and its labels. Creating the directory is
//! what creates the volume (mkdir is atomic, so two creators cannot both win), and a volume
//! is in use while any container's config mounts it, as docker counts it.

use crate::container::mounts::Kind;
use crate::container::Container;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given)
    Create(CreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove one or more volumes
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove every volume no container uses
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Set metadata on the volume (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short, long)]
    quiet: bool,
    /// Output format: `table`, or `json` (one object per line, as docker)
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Do not complain about volumes that do not exist (one in use is still kept)
    #[arg(short, long)]
    force: bool,
    #[arg(required = true, value_name = "VOLUME")]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "VOLUME")]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// What `volume.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Info {
    created: String,
    labels: BTreeMap<String, String>,
}

pub fn root() -> PathBuf {
    hk_image::Store::default_root().join("volumes")
}

/// The directory a volume's containers see.
pub fn data_dir(name: &str) -> PathBuf {
    root().join(name).join("_data")
}

fn exists(name: &str) -> bool {
    data_dir(name).is_dir()
}

/// Creates the volume unless it exists; returns whether it was made now.
pub(crate) fn create_volume(name: &str, labels: BTreeMap<String, String>) -> anyhow::Result<bool> {
    crate::container::mounts::check_volume_name(name)?;
    let root = root();
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let dir = root.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The winner of a race may not have made `_data` yet.
            std::fs::create_dir_all(dir.join("_data"))
                .with_context(|| format!("cannot create {}", dir.display()))?;
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let info = Info {
        created: crate::container::now(),
        labels,
    };
    // `_data` may be there already: a loser of the race above makes it (create_dir_all).
    std::fs::write(dir.join("volume.json"), serde_json::to_vec_pretty(&info)?)
        .and_then(|()| std::fs::create_dir_all(dir.join("_data")))
        .with_context(|| format!("cannot create the volume {name}"))?;
    Ok(true)
}

/// A volume named by `-v NAME:/path` exists afterwards.
pub fn ensure(name: &str) -> anyhow::Result<()> {
    create_volume(name, BTreeMap::new()).map(|_| ())
}

fn info(name: &str) -> Info {
    std::fs::read(root().join(name).join("volume.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default()
}

/// Every volume, by name.
fn all() -> anyhow::Result<Vec<String>> {
    let root = root();
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| exists(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The containers (short IDs) whose config mounts each volume.
fn users() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in Container::all()? {
        for m in &c.config.mounts {
            if m.kind == Kind::Volume {
                users
                    .entry(m.source.clone())
                    .or_default()
                    .push(c.short_id().to_string());
            }
        }
    }
    Ok(users)
}

pub fn run(cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VolumeCommand::Create(a) => create(a),
        VolumeCommand::Ls(a) => ls(a),
        VolumeCommand::Rm(a) => rm(a),
        VolumeCommand::Inspect(a) => inspect(a),
        VolumeCommand::Prune(a) => prune(a),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.unwrap_or_else(crate::container::new_id);
    let labels = args
        .labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    // As docker's local driver: creating one that exists is no error.
    create_volume(&name, labels)?;
    println!("{name}");
    Ok(ExitCode::SUCCESS)
}

fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let names = all()?;
    if args.quiet {
        for n in &names {
            println!("{n}");
        }
    } else if args.format == "json" {
        for n in &names {
            let labels: Vec<String> = info(n)
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let line = serde_json::json!({
                "Driver": "local",
                "Labels": labels.join(","),
                "Links": "N/A",
                "Mountpoint": data_dir(n),
                "Name": n,
                "Scope": "local",
                "Size": "N/A",
            });
            println!("{line}");
        }
    } else {
        println!("{:<10}VOLUME NAME", "DRIVER");
        for n in &names {
            println!("{:<10}{n}", "local");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    let mut failed = false;
    for name in &args.names {
        if !exists(name) {
            eprintln!("hk: no such volume: {name}");
            failed = true;
            continue;
        }
        let info = info(name);
        out.push(serde_json::json!({
            "CreatedAt": info.created,
            "Driver": "local",
            "Labels": info.labels,
            "Mountpoint": data_dir(name),
            "Name": name,
            "Options": {},
            "Scope": "local",
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn remove(name: &str) -> anyhow::Result<()> {
    let dir = root().join(name);
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Removes volume `name` unless a container mounts it; `Ok(false)` when there is none.
pub(crate) fn remove_volume(name: &str) -> anyhow::Result<bool> {
    if !exists(name) {
        return Ok(false);
    }
    if let Some(ids) = users()?.get(name) {
        bail!("remove {name}: volume is in use - [{}]", ids.join(", "));
    }
    remove(name).map(|()| true)
}

fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let users = users()?;
    let mut failed = false;
    for name in &args.names {
        let result = if crate::container::mounts::check_volume_name(name).is_err() || !exists(name)
        {
            if args.force {
                continue;
            }
            Err(anyhow::anyhow!("no such volume: {name}"))
        } else if let Some(ids) = users.get(name) {
            Err(anyhow::anyhow!(
                "remove {name}: volume is in use - [{}]",
                ids.join(", ")
            ))
        } else {
            remove(name)
        };
        match result {
            Ok(()) => println!("{name}"),
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

fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    if !crate::lifecycle::confirm_prune(
        args.force,
        "all volumes not used by at least one container",
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let users = users()?;
    let mut deleted = Vec::new();
    for name in all()? {
        if users.contains_key(&name) {
            continue;
        }
        remove(&name)?;
        deleted.push(name);
    }
    if !deleted.is_empty() {
        println!("Deleted Volumes:");
        for n in &deleted {
            println!("{n}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
