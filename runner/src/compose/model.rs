//! The Compose model: what `hk compose` reads from `compose.yaml` and prints with `config`.
//!
//! Written here with serde rather than taken from the `docker-compose-types` crate: that
//! crate deserialises one file into types that keep every short and long syntax as it was
//! written, and has neither interpolation nor the specification's multi-file merge, which
//! are most of what makes a Compose loader faithful. So hk loads as compose-go does:
//!
//! 1. each file is read as a YAML tree (anchors and `<<` merge keys applied);
//! 2. every string value is interpolated (`interpolate`), from the environment and `.env`;
//! 3. each service is normalised: short syntaxes become long ones (ports, volumes,
//!    depends_on, build), list forms become maps (environment, labels, networks, build
//!    args), command strings are split as a shell would, relative paths are resolved
//!    against the project directory;
//! 4. the files are merged by the specification's rules (`merge`);
//! 5. the result is read into the typed model below, `env_file`s are folded into
//!    `environment`, profiles and defaults (the `default` network) applied, and checked.
//!
//! Attributes hk does not implement are reported once on stderr and ignored; `x-`
//! extensions are ignored silently, as the specification says.

use super::interpolate::{interpolate, parse_dotenv};
use super::merge::merge_files;
use crate::container::health::{format_duration, parse_duration};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A loaded project, normalised; `config` prints it as YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub services: BTreeMap<String, Service>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkDef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeDef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// After `env_file`s and values taken from the environment (`- KEY`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, Option<String>>,
    /// Folded into `environment` while loading; never printed.
    #[serde(skip_serializing)]
    pub env_file: Vec<EnvFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<ServiceNetwork>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Attributes of the specification hk does not implement (reported, then ignored).
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvFile {
    pub path: String,
    #[serde(default = "yes")]
    pub required: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Build {
    pub context: String,
    pub dockerfile: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub condition: String,
    #[serde(default)]
    pub restart: bool,
    #[serde(default = "yes")]
    pub required: bool,
}

pub const SERVICE_STARTED: &str = "service_started";
pub const SERVICE_HEALTHY: &str = "service_healthy";
pub const SERVICE_COMPLETED: &str = "service_completed_successfully";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deploy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// A number of CPUs; hk gives a VM whole vCPUs, rounding up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", argv...]` or `["CMD-SHELL", line]`, or `["NONE"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    #[serde(default = "ingress")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub target: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceVolume {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// consistent, cached or delegated: the share's cache policy (docs/virtio-fs.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindOptions {
    pub create_host_path: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeOptions {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TmpfsOptions {
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkDef {
    /// The hk network's name: `<project>_<key>` unless given or external.
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeDef {
    /// The hk volume's name: `<project>_<key>` unless given or external.
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}
fn ingress() -> String {
    "ingress".into()
}
fn tcp() -> String {
    "tcp".into()
}

/// Where the files are and what shapes the load: `hk compose`'s global flags.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files in order; empty: `compose.yaml` and friends in the working directory.
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    /// `--env-file`; default `.env` in the project directory.
    pub env_file: Option<PathBuf>,
    pub profiles: Vec<String>,
    /// Services named on the command line: enabled whatever their profiles.
    pub services: Vec<String>,
}

/// The files compose looks for when no `-f` is given, in its order of preference.
const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// What the loader read: the variables interpolation saw and the warnings it made.
pub struct Loaded {
    pub project: Project,
    pub dir: PathBuf,
    pub warnings: Vec<String>,
}

/// Loads the project as `hk compose` sees it, from the files and the environment.
pub fn load(opts: &LoadOptions) -> anyhow::Result<Loaded> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let files = if opts.files.is_empty() {
        let main = DEFAULT_FILES
            .iter()
            .map(|f| cwd.join(f))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no compose.yaml (or docker-compose.yml) in {}: give one with -f",
                    cwd.display()
                )
            })?;
        // compose also reads the override file next to the main one.
        let stem = if main
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("docker-"))
        {
            "docker-compose.override"
        } else {
            "compose.override"
        };
        let mut files = vec![main];
        for ext in ["yaml", "yml"] {
            let o = cwd.join(format!("{stem}.{ext}"));
            if o.is_file() {
                files.push(o);
                break;
            }
        }
        files
    } else {
        opts.files.iter().map(|f| cwd.join(f)).collect()
    };
    let dir = files[0]
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.clone());
    let env_path = opts.env_file.clone().unwrap_or_else(|| dir.join(".env"));
    let dotenv = match std::fs::read_to_string(&env_path) {
        Ok(text) => parse_dotenv(&text, &|n| std::env::var(n).ok())
            .with_context(|| format!("{}", env_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.env_file.is_none() => {
            BTreeMap::new()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", env_path.display())),
    };
    let lookup = move |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).cloned())
    };
    let mut texts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the compose file {}", f.display()))?;
        texts.push((f.display().to_string(), text));
    }
    let mut profiles = opts.profiles.clone();
    if let Some(p) = lookup("COMPOSE_PROFILES") {
        profiles.extend(p.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = opts
        .project_name
        .clone()
        .or_else(|| lookup("COMPOSE_PROJECT_NAME"));
    let mut loaded = load_texts(
        &texts,
        &dir,
        &lookup,
        name.as_deref(),
        &dir_name,
        &profiles,
        &opts.services,
    )?;
    loaded.dir = dir;
    Ok(loaded)
}

/// [`load`] on texts already read: everything but the file system and the environment
/// (env_files are still read, relative to `dir`). `name` is `-p` or COMPOSE_PROJECT_NAME;
/// `dir_name` the fallback.
pub fn load_texts(
    texts: &[(String, String)],
    dir: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    name: Option<&str>,
    dir_name: &str,
    profiles: &[String],
    wanted: &[String],
) -> anyhow::Result<Loaded> {
    let mut warnings = Vec::new();
    let mut trees = Vec::new();
    for (file, text) in texts {
        let mut tree: Value =
            serde_norway::from_str(text).with_context(|| format!("{file} is not valid YAML"))?;
        tree.apply_merge()
            .with_context(|| format!("{file}: a << merge key is malformed"))?;
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        if !tree.is_mapping() {
            bail!("{file}: the top level must be a mapping (services:, networks:, volumes:)");
        }
        let mut warn = |w: &str| warnings.push(w.to_string());
        interpolate_tree(&mut tree, lookup, &mut warn).with_context(|| file.clone())?;
        normalise_file(&mut tree, dir).with_context(|| file.clone())?;
        trees.push(tree);
    }
    let merged = merge_files(trees);
    let mut top = match merged {
        Value::Mapping(m) => m,
        _ => Mapping::new(),
    };
    if top.remove("version").is_some() {
        warnings.push("the attribute `version` is obsolete and ignored".into());
    }
    let file_name = top
        .remove("name")
        .and_then(|v| v.as_str().map(str::to_string));
    let project_name = normalise_project_name(name.or(file_name.as_deref()).unwrap_or(dir_name))?;
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    if let Some(s) = top.remove("services") {
        let Value::Mapping(s) = s else {
            bail!("services: must be a mapping of service names");
        };
        for (k, v) in s {
            let name = key_string(&k)?;
            let v = if v.is_null() {
                Value::Mapping(Mapping::new())
            } else {
                v
            };
            let svc: Service = serde_norway::from_value(v)
                .with_context(|| format!("service {name:?} is not valid"))?;
            services.insert(name, svc);
        }
    }
    let mut networks: BTreeMap<String, NetworkDef> = match top.remove("networks") {
        Some(v) if !v.is_null() => serde_norway::from_value(v).context("networks: is not valid")?,
        _ => BTreeMap::new(),
    };
    let mut volumes: BTreeMap<String, VolumeDef> = match top.remove("volumes") {
        Some(v) if !v.is_null() => serde_norway::from_value(v).context("volumes: is not valid")?,
        _ => BTreeMap::new(),
    };
    for (k, _) in top {
        let k = key_string(&k)?;
        if !k.starts_with("x-") {
            warnings.push(format!(
                "the top-level attribute `{k}` is not supported: ignored"
            ));
        }
    }
    // Profiles: a service with none always runs; others when a profile is on or it is named.
    services.retain(|name, s| {
        s.profiles.is_empty()
            || s.profiles.iter().any(|p| profiles.contains(p) || p == "*")
            || wanted.contains(name)
    });
    for w in wanted {
        if !services.contains_key(w) {
            bail!("no such service: {w}");
        }
    }
    let known: BTreeSet<String> = services.keys().cloned().collect();
    for (name, s) in &mut services {
        finish_service(name, s, lookup, &mut warnings)?;
        s.depends_on
            .retain(|dep, d| known.contains(dep) || d.required);
        for dep in s.depends_on.keys() {
            if !known.contains(dep) {
                bail!("service {name} depends on {dep}, which is not defined or not enabled by a profile");
            }
        }
        if s.networks.is_empty() {
            s.networks.insert("default".into(), None);
        }
        for n in s.networks.keys() {
            if n != "default" && !networks.contains_key(n) {
                bail!("service {name} uses network {n}, which is not defined under networks:");
            }
        }
        for v in &s.volumes {
            if v.kind == "volume" {
                if let Some(src) = &v.source {
                    if !volumes.contains_key(src) {
                        bail!(
                            "service {name} uses volume {src}, which is not defined under \
                             volumes: (declare it there, or give a path for a bind mount)"
                        );
                    }
                }
            }
        }
    }
    if services
        .values()
        .any(|s| s.networks.contains_key("default"))
    {
        networks.entry("default".into()).or_default();
    }
    for (key, n) in &mut networks {
        for k in n
            .unsupported
            .keys()
            .filter(|k| !k.starts_with("x-") && *k != "driver")
        {
            warnings.push(format!("network {key}: `{k}` is not supported: ignored"));
        }
        if n.name.is_empty() {
            n.name = if n.external {
                key.clone()
            } else {
                format!("{project_name}_{key}")
            };
        }
    }
    for (key, v) in &mut volumes {
        for k in v
            .unsupported
            .keys()
            .filter(|k| !k.starts_with("x-") && *k != "driver")
        {
            warnings.push(format!("volume {key}: `{k}` is not supported: ignored"));
        }
        if v.name.is_empty() {
            v.name = if v.external {
                key.clone()
            } else {
                format!("{project_name}_{key}")
            };
        }
    }
    Ok(Loaded {
        project: Project {
            name: project_name,
            services,
            networks,
            volumes,
        },
        dir: dir.to_path_buf(),
        warnings,
    })
}

/// docker compose's project names: lower case letters, digits, `-` and `_`, starting with a
/// letter or digit; a directory name is made to fit, a given name must.
fn normalise_project_name(name: &str) -> anyhow::Result<String> {
    let n: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let n = n.trim_start_matches(['-', '_']).to_string();
    if n.is_empty() {
        bail!("project name {name:?} has no letter or digit: give one with -p NAME");
    }
    Ok(n)
}

fn key_string(k: &Value) -> anyhow::Result<String> {
    match k {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => bail!("a mapping key must be a string, not {k:?}"),
    }
}

fn interpolate_tree(
    v: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    match v {
        Value::String(s) => *s = interpolate(s, lookup, warn)?,
        Value::Sequence(seq) => {
            for x in seq {
                interpolate_tree(x, lookup, warn)?;
            }
        }
        Value::Mapping(m) => {
            for (_, x) in m.iter_mut() {
                interpolate_tree(x, lookup, warn)?;
            }
        }
        Value::Tagged(t) => interpolate_tree(&mut t.value, lookup, warn)?,
        _ => {}
    }
    Ok(())
}

/// A scalar as compose reads it into a string field (`PORT: 80` is "80").
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Applies `f` to the value under a tag (`!reset`, `!override`), keeping the tag for merge.
fn untagged(v: &mut Value) -> &mut Value {
    match v {
        Value::Tagged(t) => &mut t.value,
        other => other,
    }
}

/// Step 3 of the module doc, on one file.
fn normalise_file(tree: &mut Value, dir: &Path) -> anyhow::Result<()> {
    let Some(services) = tree.get_mut("services") else {
        return Ok(());
    };
    let Value::Mapping(services) = untagged(services) else {
        bail!("services: must be a mapping of service names");
    };
    for (name, svc) in services.iter_mut() {
        let name = key_string(name)?;
        let Value::Mapping(svc) = untagged(svc) else {
            if svc.is_null() {
                continue;
            }
            bail!("service {name:?} must be a mapping");
        };
        normalise_service(svc, dir).with_context(|| format!("service {name:?}"))?;
    }
    Ok(())
}

fn normalise_service(svc: &mut Mapping, dir: &Path) -> anyhow::Result<()> {
    // Extensions first, so that no later step reads them.
    svc.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    for (key, v) in svc.iter_mut() {
        let key = key_string(key)?;
        let v = untagged(v);
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "environment" | "labels" => *v = Value::Mapping(list_or_map(v, &key)?),
            "command" | "entrypoint" => {
                if let Value::String(s) = v {
                    *v = Value::Sequence(split_shell(s)?.into_iter().map(Value::String).collect());
                }
            }
            "env_file" => {
                let items = match &*v {
                    Value::Sequence(s) => s.clone(),
                    other => vec![other.clone()],
                };
                let mut out = Vec::new();
                for item in items {
                    let mut m = match item {
                        Value::String(p) => {
                            let mut m = Mapping::new();
                            m.insert("path".into(), Value::String(p));
                            m
                        }
                        Value::Mapping(m) => m,
                        other => bail!("env_file: {other:?} is not a path"),
                    };
                    if let Some(Value::String(p)) = m.get("path") {
                        let abs = resolve_path(dir, p);
                        m.insert("path".into(), Value::String(abs));
                    }
                    out.push(Value::Mapping(m));
                }
                *v = Value::Sequence(out);
            }
            "build" => {
                let mut m = match v {
                    Value::String(s) => {
                        let mut m = Mapping::new();
                        m.insert("context".into(), Value::String(s.clone()));
                        m
                    }
                    Value::Mapping(m) => m.clone(),
                    _ => bail!("build: give a context directory or a mapping"),
                };
                let ctx = m
                    .get("context")
                    .and_then(Value::as_str)
                    .unwrap_or(".")
                    .to_string();
                m.insert("context".into(), Value::String(resolve_path(dir, &ctx)));
                if let Some(args) = m.get_mut("args") {
                    *args = Value::Mapping(list_or_map(args, "build.args")?);
                }
                *v = Value::Mapping(m);
            }
            "depends_on" => {
                let mut out = Mapping::new();
                match v {
                    Value::Sequence(s) => {
                        for d in s.iter() {
                            let d = scalar(d).context("depends_on: list service names")?;
                            out.insert(Value::String(d), dependency(None));
                        }
                    }
                    Value::Mapping(m) => {
                        for (k, d) in m.iter() {
                            out.insert(k.clone(), dependency(Some(d)));
                        }
                    }
                    _ => bail!("depends_on: give a list or a mapping of services"),
                }
                *v = Value::Mapping(out);
            }
            "networks" => {
                if let Value::Sequence(s) = v {
                    let mut out = Mapping::new();
                    for n in s.iter() {
                        out.insert(
                            Value::String(scalar(n).context("networks: list network names")?),
                            Value::Null,
                        );
                    }
                    *v = Value::Mapping(out);
                }
            }
            "ports" => {
                let Value::Sequence(s) = v else {
                    bail!("ports: must be a list");
                };
                let mut out = Vec::new();
                for p in s.iter() {
                    match p {
                        Value::Mapping(m) => {
                            let mut m = m.clone();
                            if let Some(p) = m.get("published").and_then(scalar) {
                                m.insert("published".into(), Value::String(p));
                            }
                            out.push(Value::Mapping(m));
                        }
                        other => {
                            let text = scalar(other).context("ports: a port is a string")?;
                            for port in parse_port(&text)? {
                                out.push(serde_norway::to_value(port)?);
                            }
                        }
                    }
                }
                *v = Value::Sequence(out);
            }
            "expose" | "profiles" => {
                if let Value::Sequence(s) = v {
                    for x in s.iter_mut() {
                        *x = Value::String(scalar(x).with_context(|| format!("{key}: a string"))?);
                    }
                }
            }
            "volumes" => {
                let Value::Sequence(s) = v else {
                    bail!("volumes: must be a list");
                };
                let mut out = Vec::new();
                for item in s.iter() {
                    let mut vol = match item {
                        Value::String(text) => parse_volume(text)?,
                        Value::Mapping(_) => {
                            serde_norway::from_value::<ServiceVolume>(item.clone())
                                .context("volumes: a long-syntax volume")?
                        }
                        _ => bail!("volumes: {item:?} is not a volume"),
                    };
                    if vol.kind == "bind" {
                        if let Some(src) = &vol.source {
                            vol.source = Some(resolve_path(dir, src));
                        }
                    }
                    if !vol.target.starts_with('/') {
                        bail!(
                            "volumes: the target {:?} is not an absolute path",
                            vol.target
                        );
                    }
                    out.push(serde_norway::to_value(vol)?);
                }
                *v = Value::Sequence(out);
            }
            "healthcheck" => {
                if let Some(test) = v.get_mut("test") {
                    if let Value::String(s) = test {
                        *test = Value::Sequence(vec!["CMD-SHELL".into(), Value::String(s.clone())]);
                    }
                }
                if let Value::Mapping(m) = v {
                    for d in ["interval", "timeout", "start_period", "start_interval"] {
                        if let Some(x) = m.get_mut(d) {
                            let text = scalar(x).unwrap_or_default();
                            *x = Value::String(normalise_duration(&text)?);
                        }
                    }
                }
            }
            "stop_grace_period" => {
                let text = scalar(v).unwrap_or_default();
                *v = Value::String(normalise_duration(&text)?);
            }
            "restart" => {
                let text = scalar(v).unwrap_or_default();
                check_restart(&text)?;
                *v = Value::String(text);
            }
            "deploy" => {
                if let Some(limits) = v
                    .get_mut("resources")
                    .and_then(|r| r.get_mut("limits"))
                    .and_then(Value::as_mapping_mut)
                {
                    if let Some(c) = limits.get_mut("cpus") {
                        let text = scalar(c).unwrap_or_default();
                        let n: f64 = text
                            .parse()
                            .ok()
                            .filter(|n: &f64| *n > 0.0)
                            .with_context(|| format!("deploy.resources.limits.cpus: {text:?} is not a number of CPUs"))?;
                        *c = n.into();
                    }
                    if let Some(m) = limits.get_mut("memory") {
                        *m = crate::container::mounts::parse_bytes(&scalar(m).unwrap_or_default())?
                            .into();
                    }
                }
            }
            "user" | "hostname" | "working_dir" | "stop_signal" | "image" => {
                *v = Value::String(scalar(v).with_context(|| format!("{key}: a string"))?);
            }
            _ => {}
        }
    }
    Ok(())
}

fn dependency(given: Option<&Value>) -> Value {
    let mut m = given
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    if !m.contains_key("condition") {
        m.insert("condition".into(), SERVICE_STARTED.into());
    }
    if !m.contains_key("required") {
        m.insert("required".into(), true.into());
    }
    if !m.contains_key("restart") {
        m.insert("restart".into(), false.into());
    }
    Value::Mapping(m)
}

/// `KEY=VALUE` lists and mappings alike as a mapping; `KEY` alone (or `KEY:` with no value)
/// is null: taken from the environment later.
fn list_or_map(v: &Value, what: &str) -> anyhow::Result<Mapping> {
    let mut out = Mapping::new();
    match v {
        Value::Sequence(s) => {
            for item in s {
                let text =
                    scalar(item).with_context(|| format!("{what}: entries are KEY=VALUE"))?;
                match text.split_once('=') {
                    Some((k, val)) => out.insert(k.into(), Value::String(val.into())),
                    None => out.insert(Value::String(text), Value::Null),
                };
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                let val = match val {
                    Value::Null => Value::Null,
                    other => Value::String(
                        scalar(other).with_context(|| format!("{what}: values are strings"))?,
                    ),
                };
                out.insert(Value::String(key_string(k)?), val);
            }
        }
        _ => bail!("{what}: give a mapping or a list of KEY=VALUE"),
    }
    Ok(out)
}

fn resolve_path(dir: &Path, p: &str) -> String {
    let expanded = match p.strip_prefix("~/") {
        Some(rest) => std::env::var("HOME").map_or(p.to_string(), |h| format!("{h}/{rest}")),
        None => p.to_string(),
    };
    let path = Path::new(&expanded);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    clean(&abs)
}

/// `a/./b/../c` as `a/c`, lexically, as Go's filepath.Clean (compose prints clean paths).
fn clean(p: &Path) -> String {
    use std::path::Component;
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    format!("/{}", out.join("/"))
}

/// Splits a command string as a POSIX shell splits words (quotes and backslashes), which is
/// what compose does with `command: a "b c"`; no expansion happens.
pub fn split_shell(s: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unterminated ' in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("unterminated \" in {s:?}"),
                        },
                        Some(c) => word.push(c),
                        None => bail!("unterminated \" in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The short port syntax: `[[HOST_IP:]PUBLISHED:]TARGET[/PROTO]`, ranges expanded.
fn parse_port(text: &str) -> anyhow::Result<Vec<Port>> {
    let bad = || format!("ports: {text:?} is not [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]");
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((r, p)) if ["tcp", "udp"].contains(&p) => (r, p.to_string()),
        Some(_) => bail!("{}", bad()),
        None => (text, "tcp".to_string()),
    };
    // An IPv6 host address is bracketed; split from the right otherwise.
    let parts: Vec<&str> = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r.split_once(']').with_context(bad)?;
        let after = after.strip_prefix(':').with_context(bad)?;
        let mut p = vec![ip];
        p.extend(after.split(':'));
        p
    } else {
        rest.split(':').collect()
    };
    let (host_ip, published, target) = match parts[..] {
        [t] => (None, None, t),
        [p, t] => (None, Some(p), t),
        [ip, p, t] => (Some(ip), (!p.is_empty()).then_some(p), t),
        _ => bail!("{}", bad()),
    };
    let range = |r: &str| -> anyhow::Result<(u16, u16)> {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let a: u16 = a.parse().ok().filter(|a| *a > 0).with_context(bad)?;
        let b: u16 = b.parse().ok().filter(|b| *b >= a).with_context(bad)?;
        Ok((a, b))
    };
    let (t0, t1) = range(target)?;
    let published = published.map(range).transpose()?;
    if let Some((p0, p1)) = published {
        if p1 - p0 != t1 - t0 && p0 != p1 {
            bail!("ports: {text:?}: the host and container ranges differ in length");
        }
    }
    Ok((t0..=t1)
        .enumerate()
        .map(|(i, t)| Port {
            mode: ingress(),
            host_ip: host_ip.filter(|s| !s.is_empty()).map(str::to_string),
            target: t,
            published: published.map(|(p0, p1)| {
                if p0 == p1 {
                    p0.to_string()
                } else {
                    (p0 + i as u16).to_string()
                }
            }),
            protocol: protocol.clone(),
        })
        .collect())
}

/// The short volume syntax: `SOURCE:TARGET[:MODE]` or `TARGET` (an anonymous volume). A
/// source that is a path (`.`, `/`, `~`) is a bind mount, anything else a named volume.
fn parse_volume(text: &str) -> anyhow::Result<ServiceVolume> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [t] => (None, t, None),
        [s, t] => (Some(s), t, None),
        [s, t, m] => (Some(s), t, Some(m)),
        _ => bail!("volumes: {text:?} is not [SOURCE:]TARGET[:MODE]"),
    };
    let mut read_only = false;
    let mut nocopy = false;
    let mut consistency = None;
    for m in mode.unwrap_or("").split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" => read_only = true,
            "rw" | "z" | "Z" => {}
            "nocopy" => nocopy = true,
            "consistent" | "cached" | "delegated" => consistency = Some(m.to_string()),
            other => bail!(
                "volumes: {text:?}: unknown mode {other:?} (ro, rw, nocopy, consistent, cached, \
                 delegated)"
            ),
        }
    }
    let is_path = |s: &str| s.starts_with('.') || s.starts_with('/') || s.starts_with('~');
    Ok(match source {
        Some(s) if is_path(s) => ServiceVolume {
            kind: "bind".into(),
            source: Some(s.into()),
            target: target.into(),
            read_only,
            consistency: consistency.clone(),
            bind: Some(BindOptions {
                create_host_path: true,
            }),
            ..ServiceVolume::default()
        },
        source => ServiceVolume {
            kind: "volume".into(),
            source: source.map(str::to_string),
            target: target.into(),
            read_only,
            consistency,
            volume: Some(VolumeOptions { nocopy }),
            ..ServiceVolume::default()
        },
    })
}

fn check_restart(text: &str) -> anyhow::Result<()> {
    let ok = match text.split_once(':') {
        Some(("on-failure", n)) => n.parse::<u32>().is_ok(),
        None => ["no", "always", "on-failure", "unless-stopped"].contains(&text),
        _ => false,
    };
    if !ok {
        bail!("restart: {text:?} is not no, always, on-failure[:N] or unless-stopped");
    }
    Ok(())
}

fn normalise_duration(text: &str) -> anyhow::Result<String> {
    Ok(format_duration(parse_duration(text)?))
}

/// Step 5 for one service: env_files, environment from the process, defaults, checks.
fn finish_service(
    name: &str,
    s: &mut Service,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    if s.image.is_none() && s.build.is_none() {
        bail!("service {name} has neither an image nor a build context");
    }
    let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
    for f in std::mem::take(&mut s.env_file) {
        let text = match std::fs::read_to_string(&f.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !f.required => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("service {name}: cannot read the env_file {}", f.path)
                })
            }
        };
        let vars = parse_dotenv(&text, &|_| None)
            .with_context(|| format!("service {name}: env_file {}", f.path))?;
        env.extend(vars.into_iter().map(|(k, v)| (k, Some(v))));
    }
    env.append(&mut s.environment);
    // `- KEY` takes KEY from the environment compose runs in; unset, it is left out.
    s.environment = env
        .into_iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some((k, Some(v))),
            None => lookup(&k).map(|v| (k, Some(v))),
        })
        .collect();
    if let Some(b) = &mut s.build {
        if b.dockerfile.is_empty() {
            b.dockerfile = "Dockerfile".into();
        }
        for (k, v) in std::mem::take(&mut b.args) {
            match v {
                Some(v) => {
                    b.args.insert(k, Some(v));
                }
                None => {
                    if let Some(v) = lookup(&k) {
                        b.args.insert(k, Some(v));
                    }
                }
            }
        }
        for k in b.unsupported.keys().filter(|k| !k.starts_with("x-")) {
            warnings.push(format!(
                "service {name}: build.{k} is not supported: ignored"
            ));
        }
    }
    for (dep, d) in &s.depends_on {
        if ![SERVICE_STARTED, SERVICE_HEALTHY, SERVICE_COMPLETED].contains(&d.condition.as_str()) {
            bail!(
                "service {name}: depends_on {dep}: condition {:?} is not service_started, \
                 service_healthy or service_completed_successfully",
                d.condition
            );
        }
        if dep == name {
            bail!("service {name} depends on itself");
        }
    }
    if let Some(h) = &s.healthcheck {
        if !h.disable {
            match h.test.first().map(String::as_str) {
                Some("CMD" | "CMD-SHELL" | "NONE") | None => {}
                Some(other) => bail!(
                    "service {name}: healthcheck.test must start with CMD, CMD-SHELL or NONE, \
                     not {other:?}"
                ),
            }
        }
    }
    if let (Some(scale), Some(replicas)) = (s.scale, s.deploy.as_ref().and_then(|d| d.replicas)) {
        if scale != replicas {
            bail!("service {name}: scale ({scale}) and deploy.replicas ({replicas}) disagree");
        }
    }
    for k in s.unsupported.keys().filter(|k| !k.starts_with("x-")) {
        warnings.push(format!(
            "service {name}: `{k}` is not supported by hk: ignored"
        ));
    }
    Ok(())
}

impl Service {
    /// How many containers the service runs.
    pub fn replicas(&self) -> u32 {
        self.scale
            .or_else(|| self.deploy.as_ref().and_then(|d| d.replicas))
            .unwrap_or(1)
    }

    pub fn limits(&self) -> Option<&Limits> {
        self.deploy.as_ref()?.resources.as_ref()?.limits.as_ref()
    }
}

impl Project {
    /// The image a service runs: its `image`, or for a build without one
    /// `<project>-<service>` (docker compose's name).
    pub fn image_of(&self, service: &str) -> String {
        let s = &self.services[service];
        s.image
            .clone()
            .unwrap_or_else(|| format!("{}-{service}", self.name))
    }

    /// The YAML `config` prints.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_norway::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.25".into()),
            "PORT" => Some("8080".into()),
            "FROM_ENV" => Some("env-value".into()),
            _ => None,
        }
    }

    fn load_with(files: &[&str], profiles: &[&str], wanted: &[&str]) -> anyhow::Result<Loaded> {
        let texts: Vec<(String, String)> = files
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("f{i}.yaml"), t.to_string()))
            .collect();
        let p: Vec<String> = profiles.iter().map(|s| s.to_string()).collect();
        let w: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        load_texts(
            &texts,
            Path::new("/src/app"),
            &vars,
            None,
            "My App!",
            &p,
            &w,
        )
    }

    fn load1(text: &str) -> Project {
        load_with(&[text], &[], &[]).unwrap().project
    }

    #[test]
    fn short_syntaxes_become_long_ones() {
        let p = load1(
            r#"
services:
  web:
    image: "nginx:${TAG}"
    command: sh -c 'echo "hi there"; sleep 1'
    entrypoint: ["/bin/tini", "--"]
    environment: [A=1, "B=two=2", FROM_ENV, UNSET_ONE]
    labels: {tier: front, n: 3}
    ports: ["${PORT}:80", "127.0.0.1:9000-9001:90-91/udp", 443]
    volumes: ["./site:/usr/share/html:ro", "data:/data", "/abs/../x:/x"]
    depends_on: [db]
    healthcheck: {test: curl -f localhost, interval: 90s, retries: 2}
    restart: on-failure:3
    stop_grace_period: 1m30s
    deploy: {replicas: 2, resources: {limits: {cpus: "0.5", memory: 256M}}}
  db:
    build: ./db
volumes:
  data:
"#,
        );
        assert_eq!(p.name, "myapp");
        let web = &p.services["web"];
        assert_eq!(web.image.as_deref(), Some("nginx:1.25"));
        assert_eq!(
            web.command.as_deref().unwrap(),
            ["sh", "-c", r#"echo "hi there"; sleep 1"#]
        );
        assert_eq!(web.entrypoint.as_deref().unwrap(), ["/bin/tini", "--"]);
        let env: Vec<(&str, &str)> = web
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "two=2"), ("FROM_ENV", "env-value")]);
        assert_eq!(web.labels["n"], "3");
        let ports: Vec<(Option<&str>, Option<&str>, u16, &str)> = web
            .ports
            .iter()
            .map(|p| {
                (
                    p.host_ip.as_deref(),
                    p.published.as_deref(),
                    p.target,
                    p.protocol.as_str(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (None, Some("8080"), 80, "tcp"),
                (Some("127.0.0.1"), Some("9000"), 90, "udp"),
                (Some("127.0.0.1"), Some("9001"), 91, "udp"),
                (None, None, 443, "tcp"),
            ]
        );
        let vols: Vec<(&str, Option<&str>, &str, bool)> = web
            .volumes
            .iter()
            .map(|v| {
                (
                    v.kind.as_str(),
                    v.source.as_deref(),
                    v.target.as_str(),
                    v.read_only,
                )
            })
            .collect();
        assert_eq!(
            vols,
            [
                ("bind", Some("/src/app/site"), "/usr/share/html", true),
                ("volume", Some("data"), "/data", false),
                ("bind", Some("/x"), "/x", false),
            ]
        );
        assert_eq!(web.depends_on["db"].condition, SERVICE_STARTED);
        assert!(web.depends_on["db"].required);
        let h = web.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(h.interval.as_deref(), Some("1m30s"));
        assert_eq!(web.stop_grace_period.as_deref(), Some("1m30s"));
        assert_eq!(web.replicas(), 2);
        let l = web.limits().unwrap();
        assert_eq!((l.cpus, l.memory), (Some(0.5), Some(256 << 20)));
        let db = &p.services["db"];
        let b = db.build.as_ref().unwrap();
        assert_eq!(
            (b.context.as_str(), b.dockerfile.as_str()),
            ("/src/app/db", "Dockerfile")
        );
        assert_eq!(p.image_of("db"), "myapp-db");
        // The default network, named after the project.
        assert!(web.networks.contains_key("default"));
        assert_eq!(p.networks["default"].name, "myapp_default");
        assert_eq!(p.volumes["data"].name, "myapp_data");
    }

    #[test]
    fn interpolation_errors_name_the_variable_and_the_file() {
        let e = load_with(
            &["services:\n  a:\n    image: ${DB_PASSWORD:?set it in .env}\n"],
            &[],
            &[],
        )
        .err()
        .unwrap();
        let text = format!("{e:#}");
        assert!(text.contains("f0.yaml"), "{text}");
        assert!(
            text.contains("required variable DB_PASSWORD is missing a value: set it in .env"),
            "{text}"
        );
        let l = load_with(&["services:\n  a:\n    image: x${NOPE}\n"], &[], &[]).unwrap();
        assert_eq!(l.project.services["a"].image.as_deref(), Some("x"));
        assert!(
            l.warnings.iter().any(|w| w.contains("NOPE")),
            "{:?}",
            l.warnings
        );
        // $$ survives as a literal $ (for the container's shell).
        let l = load_with(
            &["services:\n  a:\n    image: x\n    command: echo $$HOME\n"],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            l.project.services["a"].command.as_deref().unwrap(),
            ["echo", "$HOME"]
        );
    }

    #[test]
    fn files_merge_by_the_specifications_rules() {
        let base = r#"
services:
  web:
    image: web:1
    command: ["serve", "--old"]
    environment: {A: "1", B: "2"}
    labels: [x=1]
    ports: ["8080:80", "9090:90"]
    volumes: ["./a:/data", "logs:/logs"]
    expose: ["1000"]
    healthcheck: {test: ["CMD", "old"], interval: 10s}
    depends_on: [db]
  db:
    image: db:1
    environment: [KEEP=yes]
volumes:
  logs:
"#;
        let over = r#"
services:
  web:
    image: web:2
    command: serve --new
    environment: [B=3, C=4]
    labels: {y: "2"}
    ports: ["8080:80/tcp", "7070:70"]
    volumes: ["./b:/data"]
    expose: ["1000", "2000"]
    healthcheck: {test: ["CMD", "new"]}
    depends_on:
      cache: {condition: service_healthy}
  db:
    environment: !reset {}
  cache:
    image: cache:1
    healthcheck: {test: [CMD, "true"]}
"#;
        let p = load_with(&[base, over], &[], &[]).unwrap().project;
        let web = &p.services["web"];
        assert_eq!(web.image.as_deref(), Some("web:2"));
        assert_eq!(web.command.as_deref().unwrap(), ["serve", "--new"]);
        let env: Vec<String> = web
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap()))
            .collect();
        assert_eq!(env, ["A=1", "B=3", "C=4"]);
        assert_eq!(web.labels.len(), 2);
        let ports: Vec<String> = web
            .ports
            .iter()
            .map(|p| format!("{}:{}", p.published.as_deref().unwrap(), p.target))
            .collect();
        assert_eq!(ports, ["8080:80", "9090:90", "7070:70"]);
        let vols: Vec<String> = web
            .volumes
            .iter()
            .map(|v| format!("{}:{}", v.source.as_deref().unwrap(), v.target))
            .collect();
        assert_eq!(vols, ["/src/app/b:/data", "logs:/logs"]);
        assert_eq!(web.expose, ["1000", "2000"]);
        let h = web.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD", "new"]);
        assert_eq!(h.interval.as_deref(), Some("10s"));
        assert_eq!(web.depends_on.len(), 2);
        assert_eq!(web.depends_on["cache"].condition, SERVICE_HEALTHY);
        assert!(p.services["db"].environment.is_empty());
    }

    #[test]
    fn override_tag_replaces_whole() {
        let base = "services:\n  a:\n    image: x\n    ports: ['1:1', '2:2']\n";
        let over = "services:\n  a:\n    ports: !override ['3:3']\n";
        let p = load_with(&[base, over], &[], &[]).unwrap().project;
        assert_eq!(p.services["a"].ports.len(), 1);
        assert_eq!(p.services["a"].ports[0].target, 3);
    }

    #[test]
    fn profiles_enable_services() {
        let f = r#"
services:
  app: {image: app}
  debug: {image: dbg, profiles: [debug]}
  tools: {image: tools, profiles: [ops, debug]}
"#;
        let names = |l: Loaded| l.project.services.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(load_with(&[f], &[], &[]).unwrap()), ["app"]);
        assert_eq!(
            names(load_with(&[f], &["debug"], &[]).unwrap()),
            ["app", "debug", "tools"]
        );
        assert_eq!(
            names(load_with(&[f], &["ops"], &[]).unwrap()),
            ["app", "tools"]
        );
        // A service named on the command line runs whatever its profiles.
        assert_eq!(
            names(load_with(&[f], &[], &["tools"]).unwrap()),
            ["app", "tools"]
        );
        let dep =
            "services:\n  app: {image: a, depends_on: [dbg]}\n  dbg: {image: d, profiles: [x]}\n";
        let e = load_with(&[dep], &[], &[]).err().unwrap();
        assert!(
            format!("{e:#}").contains("not enabled by a profile"),
            "{e:#}"
        );
    }

    #[test]
    fn extensions_anchors_and_unsupported_attributes() {
        let f = r#"
x-common: &common
  restart: always
  environment: {SHARED: "1"}
services:
  a:
    <<: *common
    image: a
    x-note: ignored
    cap_add: [NET_ADMIN]
"#;
        let l = load_with(&[f], &[], &[]).unwrap();
        let a = &l.project.services["a"];
        assert_eq!(a.restart.as_deref(), Some("always"));
        assert_eq!(a.environment["SHARED"].as_deref(), Some("1"));
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("cap_add"));
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let bad = [
            ("services:\n  a: {image: x, restart: sometimes}\n", "restart"),
            ("services:\n  a: {image: x, ports: ['80:80:80:80']}\n", "ports"),
            ("services:\n  a: {image: x, depends_on: [nope]}\n", "nope"),
            ("services:\n  a: {image: x, networks: [back]}\n", "back"),
            ("services:\n  a: {image: x, volumes: ['data:/d']}\n", "data"),
            ("services:\n  a: {command: x}\n", "neither an image nor a build"),
            ("services:\n  a: {image: x, healthcheck: {interval: soon}}\n", "soon"),
            (
                "services:\n  a: {image: x, depends_on: {b: {condition: service_ready}}}\n  b: {image: y}\n",
                "service_ready",
            ),
        ];
        for (text, want) in bad {
            let e = load_with(&[text], &[], &[])
                .err()
                .unwrap_or_else(|| panic!("{text}"));
            assert!(format!("{e:#}").contains(want), "{text}: {e:#}");
        }
    }

    #[test]
    fn durations_as_go_prints_them() {
        let d = |s: &str| format_duration(parse_duration(s).unwrap());
        assert_eq!(d("90s"), "1m30s");
        assert_eq!(d("1h"), "1h0m0s");
        assert_eq!(d("500ms"), "500ms");
        assert_eq!(d("1.5s"), "1.5s");
        assert_eq!(d("2m"), "2m0s");
        assert_eq!(d("0"), "0s");
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1x").is_err());
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            split_shell(r#"a 'b c' "d \"e\"" f\ g"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g"]
        );
        assert_eq!(split_shell("  ").unwrap(), Vec::<String>::new());
        assert!(split_shell("'open").is_err());
    }

    /// `config` for a file that uses most of what is tricky: interpolation with defaults
    /// and `$$`, anchors and merge keys, an extension, list and map forms, short and long
    /// syntaxes, a profile that is off, and an override file.
    #[test]
    fn config_output_is_the_normalised_model() {
        let main = r#"
name: Shop-${TAG}
x-env: &env
  LOG: ${LOG_LEVEL:-info}
services:
  web:
    image: "registry.local/web:${TAG}"
    environment:
      <<: *env
      PRICE: "$$5"
    ports: ["${PORT}:80"]
    depends_on:
      db: {condition: service_healthy}
    command: ["httpd", "-f"]
  db:
    image: db
    volumes: [dbdata:/var/lib/db]
    healthcheck:
      test: nc -z localhost 6379
      interval: 2s
      retries: 30
  debug:
    image: busybox
    profiles: [debug]
volumes:
  dbdata: {}
"#;
        let over = r#"
services:
  web:
    deploy: {replicas: 3}
    restart: unless-stopped
"#;
        let p = load_with(&[main, over], &[], &[]).unwrap().project;
        let want = r#"name: shop-125
services:
  db:
    healthcheck:
      test:
      - CMD-SHELL
      - nc -z localhost 6379
      interval: 2s
      retries: 30
    image: db
    networks:
      default: null
    volumes:
    - type: volume
      source: dbdata
      target: /var/lib/db
      volume: {}
  web:
    command:
    - httpd
    - -f
    depends_on:
      db:
        condition: service_healthy
        restart: false
        required: true
    deploy:
      replicas: 3
    environment:
      LOG: info
      PRICE: $5
    image: registry.local/web:1.25
    networks:
      default: null
    ports:
    - mode: ingress
      target: 80
      published: '8080'
      protocol: tcp
    restart: unless-stopped
networks:
  default:
    name: shop-125_default
volumes:
  dbdata:
    name: shop-125_dbdata
"#;
        assert_eq!(p.to_yaml().unwrap(), want);
    }
}
