//! A container's mounts as `hk run` is told them: `-v`, `--mount` and `--tmpfs`, read with
//! docker's syntax and checked with docker's rules (absolute targets, no duplicate target,
//! a relative `-v` source taken as a volume name and refused as one), then ordered as
//! docker mounts them: parents before what is nested in them. Kept apart from the CLI so
//! the rules are tested without a VM; what touches the host (creating a missing `-v`
//! directory, a volume) is `prepare`'s.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bind,
    Volume,
    Tmpfs,
    /// A build secret (`hk build`'s RUN --mount=type=secret): `source` is the host file,
    /// read when the VM starts and handed to the agent, never shared; `options` hold its
    /// `mode=`, `uid=` and `gid=` in the guest.
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Volume => "volume",
            Kind::Tmpfs => "tmpfs",
            Kind::Secret => "secret",
        }
    }
}

/// One mount of a container, as kept in its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: Kind,
    /// The host directory (bind, absolute and resolved), the volume's name, or "" (tmpfs).
    pub source: String,
    /// Absolute and clean path in the container.
    pub target: String,
    pub read_only: bool,
    /// A volume is not seeded from the image (`nocopy`, `volume-nocopy`).
    #[serde(default)]
    pub no_copy: bool,
    /// tmpfs: mount(8) options for the agent.
    #[serde(default)]
    pub options: Vec<String>,
    /// `-v` creates a missing host directory; `--mount type=bind` refuses one.
    #[serde(default)]
    pub create_source: bool,
    /// docker's `consistency` of a bind or volume; here it picks the share's cache policy.
    #[serde(default)]
    pub consistency: Consistency,
}

/// Docker Desktop's bind-mount consistency, the knob for a file share into a VM, mapped onto
/// virtio-fs's cache policies (docs/virtio-fs.md): `consistent` caches nothing, so a host
/// change shows at once; `cached` ("the host's view is authoritative, updates may show late")
/// and `delegated` ("the container's view is authoritative") let the guest keep what it read
/// (`always`: fewer round trips; the guest's writes still reach the host when they return);
/// without one, the default, `auto` (close-to-open, attributes for 1 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Default,
    Consistent,
    Cached,
    Delegated,
}

impl Consistency {
    fn parse(word: &str) -> Option<Consistency> {
        Some(match word {
            "default" => Consistency::Default,
            "consistent" => Consistency::Consistent,
            "cached" => Consistency::Cached,
            "delegated" => Consistency::Delegated,
            _ => return None,
        })
    }

    /// The share's cache policy.
    pub fn cache(self) -> hk_vmm::ShareCache {
        match self {
            Consistency::Default => hk_vmm::ShareCache::Auto,
            Consistency::Consistent => hk_vmm::ShareCache::Never,
            Consistency::Cached | Consistency::Delegated => hk_vmm::ShareCache::Always,
        }
    }
}

/// docker's default options for a tmpfs it mounts.
const TMPFS_DEFAULTS: [&str; 3] = ["nosuid", "nodev", "noexec"];

/// `-v SOURCE:TARGET[:OPTIONS]`.
pub fn parse_volume_flag(spec: &str) -> anyhow::Result<Mount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, opts) = match parts[..] {
        [target] => bail!(
            "-v {target}: hk makes no anonymous volumes; name one (-v NAME:{target}) or give \
             a host directory (-v /HOST/DIR:{target})"
        ),
        [source, target] => (source, target, ""),
        [source, target, opts] => (source, target, opts),
        _ => bail!("invalid volume specification: '{spec}'"),
    };
    if source.is_empty() {
        bail!("invalid volume specification: '{spec}'");
    }
    let kind = if source.starts_with('/') {
        Kind::Bind
    } else {
        check_volume_name(source)?;
        Kind::Volume
    };
    let mut m = Mount {
        kind,
        source: source.to_string(),
        target: clean_target(target, kind)?,
        read_only: false,
        no_copy: false,
        options: Vec::new(),
        create_source: kind == Kind::Bind,
        consistency: Consistency::Default,
    };
    let mut mode = None;
    let mut consistency = None;
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" | "rw" if mode.is_some() => bail!("invalid mode: {opts}"),
            "ro" | "rw" => mode = Some(opt == "ro"),
            "nocopy" if kind == Kind::Volume => m.no_copy = true,
            // SELinux relabelling: no host label reaches a microVM, so nothing to do.
            "z" | "Z" => {}
            "consistent" | "cached" | "delegated" if consistency.is_some() => {
                bail!("invalid mode: {opts}")
            }
            "consistent" | "cached" | "delegated" => consistency = Consistency::parse(opt),
            _ => bail!("invalid mode: {opts}"),
        }
    }
    m.read_only = mode.unwrap_or(false);
    m.consistency = consistency.unwrap_or_default();
    Ok(m)
}

/// `--mount type=...,source=...,target=...,...`, with docker's keys.
pub fn parse_mount_flag(spec: &str) -> anyhow::Result<Mount> {
    let mut kind = Kind::Volume;
    let (mut source, mut target) = (None, None);
    let (mut read_only, mut no_copy) = (false, false);
    let (mut size, mut mode) = (None, None);
    let mut consistency = Consistency::Default;
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let flag = || -> anyhow::Result<bool> {
            match value.map(str::to_ascii_lowercase).as_deref() {
                None | Some("1" | "true") => Ok(true),
                Some("0" | "false") => Ok(false),
                Some(v) => bail!("invalid value for {key}: {v}"),
            }
        };
        let value_of = || -> anyhow::Result<&str> {
            value.with_context(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match key.as_str() {
            "type" => {
                kind = match value_of()? {
                    "bind" => Kind::Bind,
                    "volume" => Kind::Volume,
                    "tmpfs" => Kind::Tmpfs,
                    other => bail!("invalid mount type {other:?}: hk knows bind, volume, tmpfs"),
                }
            }
            "source" | "src" => source = Some(value_of()?.to_string()),
            "target" | "dst" | "destination" => target = Some(value_of()?.to_string()),
            "readonly" | "ro" => read_only = flag()?,
            "volume-nocopy" => no_copy = flag()?,
            "tmpfs-size" => size = Some(parse_bytes(value_of()?)?),
            "tmpfs-mode" => {
                let v = value_of()?;
                mode = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .with_context(|| format!("invalid value for tmpfs-mode: {v}"))?,
                );
            }
            "consistency" => {
                let v = value_of()?;
                consistency = Consistency::parse(v).with_context(|| {
                    format!("invalid consistency {v:?}: consistent, cached, delegated or default")
                })?;
            }
            // Propagation tunes the host's mount table, which a microVM's share never joins.
            "bind-propagation" => {}
            _ => bail!("unexpected key '{key}' in '{field}'"),
        }
    }
    let what = |msg: &str| format!("invalid mount config for type \"{}\": {msg}", kind.as_str());
    let Some(target) = target else {
        bail!("{}", what("field Target must not be empty"));
    };
    if kind != Kind::Tmpfs && (size.is_some() || mode.is_some()) {
        bail!("{}", what("tmpfs-size and tmpfs-mode are for type=tmpfs"));
    }
    if kind != Kind::Volume && no_copy {
        bail!("{}", what("volume-nocopy is for type=volume"));
    }
    let source = source.unwrap_or_default();
    match kind {
        Kind::Bind if source.is_empty() => bail!("{}", what("field Source must not be empty")),
        Kind::Bind if !source.starts_with('/') => bail!(
            "{}",
            what(&format!(
                "invalid mount path: '{source}' mount path must be absolute"
            ))
        ),
        Kind::Volume if source.is_empty() => {
            bail!("--mount {spec}: hk makes no anonymous volumes; name one (source=NAME)")
        }
        Kind::Volume => check_volume_name(&source)?,
        Kind::Tmpfs if !source.is_empty() => {
            bail!("{}", what("field Source must not be specified"))
        }
        _ => {}
    }
    let mut options: Vec<String> = Vec::new();
    if kind == Kind::Tmpfs {
        options.extend(TMPFS_DEFAULTS.iter().map(|s| s.to_string()));
        options.extend(size.map(|s| format!("size={s}")));
        options.extend(mode.map(|m| format!("mode={m:o}")));
    }
    Ok(Mount {
        kind,
        source,
        target: clean_target(&target, kind)?,
        read_only,
        no_copy,
        options,
        create_source: false,
        // A tmpfs is the guest's own: nothing to be consistent with.
        consistency: if kind == Kind::Tmpfs {
            Consistency::Default
        } else {
            consistency
        },
    })
}

/// `--tmpfs /path[:options]`: mount(8)'s options, after docker's defaults.
pub fn parse_tmpfs_flag(spec: &str) -> anyhow::Result<Mount> {
    let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let mut options: Vec<String> = TMPFS_DEFAULTS.iter().map(|s| s.to_string()).collect();
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        let key = o.split_once('=').map_or(o, |(k, _)| k);
        match key {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "size" | "mode" | "uid" | "gid" | "nr_inodes" | "nr_blocks" if o.contains('=') => {
                options.push(o.to_string())
            }
            "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "sync" | "async"
            | "atime" | "noatime" => options.push(o.to_string()),
            _ => bail!("--tmpfs {spec}: invalid tmpfs option {o:?}"),
        }
    }
    Ok(Mount {
        kind: Kind::Tmpfs,
        source: String::new(),
        target: clean_target(target, Kind::Tmpfs)?,
        read_only,
        no_copy: false,
        options,
        create_source: false,
        consistency: Consistency::Default,
    })
}

/// docker's rules over all of a container's mounts: one mount per target; then parents
/// before the mounts nested in them (fewer path components first, else as given).
pub fn order(mut mounts: Vec<Mount>) -> anyhow::Result<Vec<Mount>> {
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.target == m.target) {
            bail!("Duplicate mount point: {}", m.target);
        }
    }
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    Ok(mounts)
}

/// docker's rule for local volume names.
pub fn check_volume_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!(
            "create {name}: \"{name}\" includes invalid characters for a local volume name, \
             only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host \
             directory, use absolute path"
        );
    }
    if name.len() < 2 {
        bail!(
            "create {name}: volume name is too short, names should be at least two \
             alphanumeric characters"
        );
    }
    Ok(())
}

/// An absolute target, cleaned as Go's filepath.Clean does; `/` itself is refused.
fn clean_target(target: &str, kind: Kind) -> anyhow::Result<String> {
    if !target.starts_with('/') {
        bail!(
            "invalid mount config for type \"{}\": invalid mount path: '{target}' mount path \
             must be absolute",
            kind.as_str()
        );
    }
    let mut clean = PathBuf::from("/");
    for c in Path::new(target).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    if clean == Path::new("/") {
        bail!("invalid specification: destination can't be '/'");
    }
    Ok(clean.to_string_lossy().into_owned())
}

/// docker's sizes: a number of bytes, or with b, k, m, g (binary units, any case).
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|s| !s.is_empty()).unwrap_or(&t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some((i, 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .with_context(|| format!("invalid size: '{text}'"))
}

/// Makes the mounts' host side ready at `hk run`: a `-v` directory that does not exist is
/// created (by the user running hk, as docker creates it), a `--mount type=bind` source
/// must exist, a bind source is resolved to the directory it names, and a named volume is
/// created on first use.
pub fn prepare(mounts: &mut [Mount]) -> anyhow::Result<()> {
    for m in mounts {
        match m.kind {
            Kind::Bind => {
                let path = Path::new(&m.source);
                if !path.exists() {
                    if !m.create_source {
                        bail!(
                            "invalid mount config for type \"bind\": bind source path does \
                             not exist: {}",
                            m.source
                        );
                    }
                    std::fs::create_dir_all(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                }
                let real = path
                    .canonicalize()
                    .with_context(|| format!("cannot resolve {}", path.display()))?;
                if !real.is_dir() {
                    bail!(
                        "{}: hk shares directories only (virtio-fs); mount the directory \
                         that holds this file",
                        m.source
                    );
                }
                m.source = real.to_string_lossy().into_owned();
            }
            Kind::Volume => {
                crate::volume::ensure(&m.source)?;
            }
            Kind::Tmpfs | Kind::Secret => {}
        }
    }
    Ok(())
}

/// The host directory a bind or volume mount shares, or `None` for a tmpfs or a secret.
pub fn host_dir(m: &Mount) -> Option<PathBuf> {
    match m.kind {
        Kind::Bind => Some(PathBuf::from(&m.source)),
        Kind::Volume => Some(crate::volume::data_dir(&m.source)),
        Kind::Tmpfs | Kind::Secret => None,
    }
}

/// docker's `Mounts` entry of `hk inspect`.
pub fn inspect_json(m: &Mount) -> serde_json::Value {
    let source = host_dir(m).map_or(String::new(), |p| p.to_string_lossy().into_owned());
    let mut v = serde_json::json!({
        "Type": m.kind.as_str(),
        "Source": source,
        "Destination": m.target,
        "Mode": "",
        "RW": !m.read_only,
        "Propagation": if m.kind == Kind::Bind { "rprivate" } else { "" },
    });
    if m.kind == Kind::Volume {
        v["Name"] = m.source.clone().into();
        v["Driver"] = "local".into();
        v["Mode"] = "z".into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_v_binds_volumes_and_modes() {
        let m = parse_volume_flag("/src:/app").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (Kind::Bind, "/src", "/app")
        );
        assert!(!m.read_only && m.create_source);
        let m = parse_volume_flag("/src:/app/:ro").unwrap();
        assert!(m.read_only);
        assert_eq!(m.target, "/app");
        let m = parse_volume_flag("data:/var/lib/x:rw,nocopy").unwrap();
        assert_eq!((m.kind, m.source.as_str()), (Kind::Volume, "data"));
        assert!(!m.read_only && m.no_copy && !m.create_source);
        assert!(parse_volume_flag("/a:/b:z").is_ok());
    }

    #[test]
    fn consistency_picks_the_share_cache_as_docker_desktop_means_it() {
        use hk_vmm::ShareCache;
        let cache = |spec: &str| parse_volume_flag(spec).unwrap().consistency.cache();
        assert_eq!(cache("/a:/b"), ShareCache::Auto);
        assert_eq!(cache("/a:/b:consistent"), ShareCache::Never);
        assert_eq!(cache("/a:/b:ro,cached"), ShareCache::Always);
        assert_eq!(cache("data:/b:delegated"), ShareCache::Always);
        assert!(parse_volume_flag("/a:/b:cached,consistent").is_err());
        let cache = |spec: &str| parse_mount_flag(spec).unwrap().consistency.cache();
        assert_eq!(cache("type=bind,src=/a,dst=/b"), ShareCache::Auto);
        assert_eq!(
            cache("type=bind,src=/a,dst=/b,consistency=consistent"),
            ShareCache::Never
        );
        assert_eq!(
            cache("src=vol,dst=/b,consistency=cached"),
            ShareCache::Always
        );
        assert_eq!(
            cache("src=vol,dst=/b,consistency=default"),
            ShareCache::Auto
        );
        assert!(
            parse_mount_flag("type=bind,src=/a,dst=/b,consistency=eventual")
                .unwrap_err()
                .to_string()
                .contains("invalid consistency")
        );
    }

    #[test]
    fn dash_v_refuses_what_docker_refuses() {
        let err = |s: &str| parse_volume_flag(s).unwrap_err().to_string();
        assert!(
            err("./rel:/x").contains("If you intended to pass a host directory, use absolute path")
        );
        assert!(err("rel/dir:/x").contains("invalid characters for a local volume name"));
        assert!(err("a:/x").contains("too short"));
        assert!(err("/a:rel").contains("must be absolute"));
        assert!(err("/a:/").contains("destination can't be '/'"));
        assert!(err("/a:/b:ro,rw").contains("invalid mode"));
        assert!(err("/a:/b:shared").contains("invalid mode"));
        assert!(
            err("/a:/b:nocopy").contains("invalid mode"),
            "nocopy is for volumes"
        );
        assert!(err("/data").contains("anonymous"));
        assert!(err("/a:/b:ro:x").contains("invalid volume specification"));
        assert!(err(":/b").contains("invalid volume specification"));
    }

    #[test]
    fn dash_dash_mount_keys_as_docker_reads_them() {
        let m = parse_mount_flag("type=bind,source=/h,target=/c,readonly").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (Kind::Bind, "/h", "/c")
        );
        assert!(
            m.read_only && !m.create_source,
            "--mount never creates a bind source"
        );
        let m = parse_mount_flag("type=bind,src=/h,dst=/c,ro=false").unwrap();
        assert!(!m.read_only);
        let m = parse_mount_flag("src=vol,destination=/d,ro=1,volume-nocopy").unwrap();
        assert_eq!(m.kind, Kind::Volume, "volume is the default type");
        assert!(m.read_only && m.no_copy);
        let m = parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        assert_eq!(
            m.options,
            ["nosuid", "nodev", "noexec", "size=67108864", "mode=1770"]
        );
        let err = |s: &str| parse_mount_flag(s).unwrap_err().to_string();
        assert!(err("type=bind,target=/c").contains("field Source must not be empty"));
        assert!(err("type=bind,source=rel,target=/c").contains("must be absolute"));
        assert!(err("type=bind,source=/h").contains("field Target must not be empty"));
        assert!(err("type=tmpfs,source=/h,target=/t").contains("Source must not be specified"));
        assert!(err("type=bind,source=/h,target=/c,tmpfs-size=1m").contains("type=tmpfs"));
        assert!(err("type=nfs,source=/h,target=/c").contains("invalid mount type"));
        assert!(err("type=bind,source=/h,target=/c,color=red").contains("unexpected key 'color'"));
        assert!(err("type=bind,source=/h,target=/c,readonly=maybe").contains("invalid value"));
        assert!(err("type=tmpfs,target=/t,tmpfs-mode=999").contains("tmpfs-mode"));
        assert!(err("type=tmpfs,target=/t,tmpfs-size=lots").contains("invalid size"));
        assert!(err("target=/v").contains("anonymous"));
    }

    #[test]
    fn dash_dash_tmpfs_options() {
        let m = parse_tmpfs_flag("/run").unwrap();
        assert_eq!((m.kind, m.read_only), (Kind::Tmpfs, false));
        assert_eq!(m.options, ["nosuid", "nodev", "noexec"]);
        let m = parse_tmpfs_flag("/cache:rw,exec,size=1g,mode=700,ro").unwrap();
        assert!(m.read_only);
        assert_eq!(
            m.options,
            ["nosuid", "nodev", "noexec", "exec", "size=1g", "mode=700"]
        );
        assert!(parse_tmpfs_flag("/x:bind").is_err());
        assert!(parse_tmpfs_flag("/x:size").is_err());
        assert!(parse_tmpfs_flag("x").is_err());
    }

    #[test]
    fn duplicates_are_refused_and_parents_mount_first() {
        let v = |s: &str| parse_volume_flag(s).unwrap();
        let t = |s: &str| parse_tmpfs_flag(s).unwrap();
        let err = order(vec![v("/a:/data"), t("/data/")])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "Duplicate mount point: /data");
        assert!(order(vec![v("/a:/x/../data"), v("/b://data/.")]).is_err());
        let got = order(vec![
            v("/a:/data/sub/deep"),
            t("/data/sub"),
            v("vol:/other"),
            v("/b:/data"),
        ])
        .unwrap();
        let targets: Vec<&str> = got.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/other", "/data", "/data/sub", "/data/sub/deep"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("2kb").unwrap(), 2048);
        for bad in ["", "m", "0", "-1", "1x", "99999999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prepare_creates_a_dash_v_dir_but_not_a_dash_dash_mount_one() {
        let base = std::env::temp_dir().join(format!("hk-mounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let missing = base.join("made/by/v");
        let mut m = [parse_volume_flag(&format!("{}:/x", missing.display())).unwrap()];
        prepare(&mut m).unwrap();
        assert!(missing.is_dir());
        let gone = base.join("absent");
        let mut m =
            [parse_mount_flag(&format!("type=bind,src={},dst=/x", gone.display())).unwrap()];
        let err = prepare(&mut m).unwrap_err().to_string();
        assert!(err.contains("bind source path does not exist"), "{err}");
        assert!(!gone.exists());
        std::fs::write(base.join("file"), b"").unwrap();
        let mut m = [parse_volume_flag(&format!("{}/file:/x", base.display())).unwrap()];
        assert!(prepare(&mut m)
            .unwrap_err()
            .to_string()
            .contains("directories only"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
