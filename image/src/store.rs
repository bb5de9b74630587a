//! The local content store.
//!
//! Layout under the data directory:
//! - `blobs/sha256/<hex>`: manifests, configs and layers, each verified before it got here;
//! - `images/<manifest hex>.json`: one record per pulled image manifest;
//! - `refs/<escaped name>`: a name (`docker.io/library/alpine:latest` or `name@digest`) and
//!   the image it points to;
//! - `rootfs/<chain id hex>.ext4`: converted root filesystems, shared read-only by VMs;
//! - `tmp/`: everything in the making;
//! - `quarantine/`: records that could not be read, set aside (with a warning) for a person
//!   to look at.
//!
//! Every file appears by rename of a finished, fsynced temp file, and the directory is
//! fsynced after, so a reader sees all of it or none, a writer killed with SIGKILL leaves
//! only junk in `tmp/`, and a crash cannot leave a name whose file comes back empty.
//! Concurrency is one flock on `lock`: writers (pulls, conversions) hold it shared, garbage
//! collection exclusive, so GC never deletes a blob a running pull has fetched but not yet
//! recorded, and may empty `tmp/` because no writer is alive. Two pulls of the same image
//! write identical content under identical names; whichever rename lands last wins, and both
//! are right.

use crate::digest::{chain_id, Digest, Hasher};
use crate::reference::familiar;
use crate::{Error, ImageRef, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Store {
    root: PathBuf,
    warn: Box<dyn Fn(&str) + Send + Sync>,
}

/// A layer as the store knows it: the blob and what decompressing it must produce.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub diff_id: Digest,
}

/// A pulled image: one platform's manifest, with the names that point at it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    /// The platform manifest: the image's identity in the store.
    pub manifest: Digest,
    /// The config blob's digest, which docker shows as IMAGE ID.
    pub config: Digest,
    pub layers: Vec<LayerInfo>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// When the image was built (the config's `created`), as the config spells it.
    pub created: Option<String>,
    /// Seconds since the epoch when this image was last pulled.
    pub pulled: u64,
    /// Names pointing here, fully qualified (`docker.io/library/alpine:latest`).
    #[serde(skip)]
    pub names: Vec<String>,
    /// `name@digest` for each repository, the digest being what the name resolved to on the
    /// registry (the index digest for multi-platform images), as docker's RepoDigests.
    #[serde(skip)]
    pub repo_digests: Vec<String>,
}

impl Image {
    /// An image about to be recorded: its manifest, config blob and layers, the platform and
    /// creation time from the config, pulled (or loaded) now, with no names yet.
    pub(crate) fn new(
        manifest: Digest,
        config_digest: Digest,
        layers: Vec<LayerInfo>,
        config: &oci_spec::image::ImageConfiguration,
    ) -> Image {
        Image {
            manifest,
            config: config_digest,
            layers,
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            variant: config.variant().clone(),
            created: config.created().clone(),
            pulled: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            names: Vec::new(),
            repo_digests: Vec::new(),
        }
    }

    /// Download size: compressed layers plus config, the bytes the store holds for it.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    pub fn chain_id(&self) -> Option<Digest> {
        chain_id(&self.diff_ids())
    }

    /// The name to show a person: the first tag, in docker's short spelling, else the ID.
    pub fn display_name(&self) -> String {
        self.names
            .first()
            .map(|n| familiar(n))
            .unwrap_or_else(|| self.config.short().to_string())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    pub name: String,
    pub image: Digest,
    /// What the name resolved to on the registry (index or manifest digest).
    pub digest: Digest,
}

/// What `rmi` and `prune` did, in the words docker prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Untagged(String),
    Deleted(Digest),
}

#[derive(Debug, Default)]
pub struct GcStats {
    pub blobs: usize,
    pub rootfs: usize,
    pub bytes: u64,
}

/// A held flock on the store; dropping it releases the lock.
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs/sha256", "images", "refs", "rootfs", "tmp"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(Error::io(&d))?;
        }
        Ok(Store {
            root,
            warn: Box::new(|_| {}),
        })
    }

    /// Where warnings go: records set aside as unreadable, attributes a root filesystem
    /// could not hold. The library never prints; without this they are dropped.
    pub fn on_warning(mut self, warn: impl Fn(&str) + Send + Sync + 'static) -> Store {
        self.warn = Box::new(warn);
        self
    }

    pub(crate) fn warn(&self, message: &str) {
        (self.warn)(message)
    }

    /// `$HK_DATA_DIR`, else `$XDG_DATA_HOME/hk`, else `~/.local/share/hk`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("HK_DATA_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("hk");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/hk")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(Error::io(&path))?;
        Ok(StoreLock { _file: f })
    }

    pub(crate) fn writer_lock(&self) -> Result<StoreLock> {
        self.lock(false)
    }

    /// A fresh path in `tmp/`, unique across processes and threads.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{nanos}.{n}", std::process::id()))
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Whether the blob is here with its full size. Blobs are fsynced before they land, so
    /// a short one is damage (a failing disk, a person); fetching it again is cheaper than
    /// failing on it later.
    pub(crate) fn has_blob_sized(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Moves a verified temp file, already fsynced, to its content address.
    pub(crate) fn commit_blob(&self, temp: &Path, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        rename_durably(temp, &dest)
    }

    /// Stores small content (manifests) that is already in memory and already verified.
    pub(crate) fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        if !self.has_blob(&digest) {
            let temp = self.temp_path("blob");
            write_synced(&temp, data)?;
            self.commit_blob(&temp, &digest)?;
        }
        Ok(digest)
    }

    /// Reads a small blob back, checking it still has the content its name promises. One
    /// that does not is deleted: it has the right size, so without that every pull would
    /// trust it and fail on it again.
    pub(crate) fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let mut file = File::open(&path).map_err(Error::io(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(Error::io(&path))?;
        let actual = Digest::of(&data);
        if actual != *digest {
            let reason = delete_corrupt(&file, &path, &actual);
            return Err(Error::Corrupt { path, reason });
        }
        Ok(data)
    }

    /// Checks a stored blob against its digest and deletes it when it no longer matches
    /// (damaged in place), so that the next pull fetches it again. Returns what is wrong
    /// with it, if anything.
    pub(crate) fn drop_if_corrupt(&self, digest: &Digest) -> Result<Option<String>> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path, cause: e }),
        };
        let mut hasher = Hasher::default();
        if let Err(e) = hasher.read_all(&mut file) {
            return Err(Error::Io { path, cause: e });
        }
        let actual = hasher.finish();
        Ok((actual != *digest).then(|| delete_corrupt(&file, &path, &actual)))
    }

    /// Deletes a blob whose content is not what the image config says: fetching it again
    /// is the only way to a different outcome.
    pub(crate) fn remove_blob(&self, digest: &Digest) {
        let _ = fs::remove_file(self.blob_path(digest));
    }

    pub(crate) fn write_json(&self, dest: &Path, value: &impl Serialize) -> Result<()> {
        let temp = self.temp_path("record");
        let json = serde_json::to_vec_pretty(value).expect("store records serialize");
        write_synced(&temp, &json)?;
        rename_durably(&temp, dest)
    }

    /// Reads a record. One that cannot be read or parsed, or that does not belong under its
    /// file name, is moved to `quarantine/` with a warning and reads as absent: one bad file
    /// must not take every listing, removal and collection down with it.
    fn read_record<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
        belongs: impl Fn(&T) -> bool,
    ) -> Result<Option<T>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return self.quarantine(path, None, &e.to_string()),
        };
        let mut data = Vec::new();
        let problem = match file.read_to_end(&mut data) {
            Err(e) => e.to_string(),
            Ok(_) => match serde_json::from_slice::<T>(&data) {
                Ok(record) if belongs(&record) => return Ok(Some(record)),
                Ok(_) => "its content belongs under another name".into(),
                Err(e) => e.to_string(),
            },
        };
        self.quarantine(path, Some(&file), &problem)
    }

    /// Moves a bad record out of the way, unless a writer has just replaced it: then it is
    /// left alone and only this reading misses it (a listing; removal and collection hold the
    /// store's exclusive lock, so no writer runs beside them).
    fn quarantine<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
        read: Option<&File>,
        problem: &str,
    ) -> Result<Option<T>> {
        let dir = self.root.join("quarantine");
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let kind = path
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Unique like a temp file, so records quarantined twice never overwrite each other.
        let unique = self.temp_path(&format!("{kind}-{name}"));
        let dest = dir.join(unique.file_name().unwrap_or_default());
        if let Some(file) = read {
            if !same_file(file, path)? {
                return Ok(None);
            }
        }
        match fs::rename(path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("{problem}; cannot move it to quarantine: {e}"),
                })
            }
        }
        self.warn(&format!(
            "store record {kind}/{name} is unreadable ({problem}); moved to {}",
            dest.strip_prefix(&self.root).unwrap_or(&dest).display()
        ));
        Ok(None)
    }

    fn image_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", manifest.hex()))
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(escape(name))
    }

    pub(crate) fn rootfs_path(&self, chain: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.ext4", chain.hex()))
    }

    /// Records a pulled image, then points `name` at it: in this order, so that a name never
    /// points at a record that is not there.
    pub(crate) fn record(&self, image: &Image, name: &ImageRef, resolved: &Digest) -> Result<()> {
        self.record_image(image)?;
        self.record_name(image, name, resolved)
    }

    /// Records an image without pointing a name at it (an untagged `hk load`).
    pub(crate) fn record_image(&self, image: &Image) -> Result<()> {
        self.write_json(&self.image_path(&image.manifest), image)
    }

    /// Points `name` at a recorded image; `resolved` is what the name resolved to where the
    /// image came from (the registry's index or manifest digest).
    pub(crate) fn record_name(
        &self,
        image: &Image,
        name: &ImageRef,
        resolved: &Digest,
    ) -> Result<()> {
        let r = RefRecord {
            name: name.canonical(),
            image: image.manifest.clone(),
            digest: resolved.clone(),
        };
        self.write_json(&self.ref_path(&r.name), &r)
    }

    /// `docker tag`: points `target` (`:latest` when it has no tag) at the image `source`
    /// names (a name, an ID or an ID prefix). Returns the image.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image> {
        let target_ref = ImageRef::parse(target)?;
        if target_ref.digest().is_some() {
            return Err(Error::InvalidReference {
                reference: target.to_string(),
                reason: "refusing to create a tag with a digest reference".into(),
            });
        }
        let _lock = self.writer_lock()?;
        let image = self.resolve(source)?;
        // The digest the name stands for: the registry's, when the image already came
        // from this repository under another tag, else the manifest's own.
        let resolved = self
            .refs()?
            .into_iter()
            .find(|r| {
                r.image == image.manifest
                    && ImageRef::parse(&r.name).is_ok_and(|n| n.name() == target_ref.name())
            })
            .map(|r| r.digest)
            .unwrap_or_else(|| image.manifest.clone());
        self.record_name(&image, &target_ref, &resolved)?;
        Ok(image)
    }

    fn refs(&self) -> Result<Vec<RefRecord>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let file_name = entry.file_name();
            let belongs = |r: &RefRecord| *escape(&r.name) == *file_name;
            if let Some(r) = self.read_record(&entry.path(), belongs)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn image_record(&self, manifest: &Digest) -> Result<Option<Image>> {
        self.read_image_record(&self.image_path(manifest))
    }

    fn read_image_record(&self, path: &Path) -> Result<Option<Image>> {
        self.read_record(path, |i: &Image| self.image_path(&i.manifest) == path)
    }

    /// Every image in the store with its names, newest pull first.
    pub fn images(&self) -> Result<Vec<Image>> {
        let dir = self.root.join("images");
        let refs = self.refs()?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            if let Some(mut image) = self.read_image_record(&entry.path())? {
                attach_names(&mut image, &refs);
                out.push(image);
            }
        }
        out.sort_by(|a, b| b.pulled.cmp(&a.pulled).then(a.manifest.cmp(&b.manifest)));
        Ok(out)
    }

    /// Finds an image by name (`alpine`, `alpine:3`, `name@digest`) or by ID prefix (of its
    /// config digest, as docker's IMAGE ID, or of its manifest digest).
    pub fn resolve(&self, spec: &str) -> Result<Image> {
        if let Ok(r) = ImageRef::parse(spec) {
            let refs = self.refs()?;
            let found = refs.iter().find(|x| x.name == r.canonical()).or_else(|| {
                // `name@digest` also finds a tagged image pulled through that digest.
                let d = r.digest()?;
                refs.iter().find(|x| {
                    x.name.starts_with(&format!("{}:", r.name())) && (x.digest == d || x.image == d)
                })
            });
            if let Some(found) = found {
                if let Some(mut image) = self.image_record(&found.image)? {
                    attach_names(&mut image, &refs);
                    return Ok(image);
                }
            }
        }
        let prefix = spec.strip_prefix("sha256:").unwrap_or(spec);
        if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches: Vec<Image> = self
                .images()?
                .into_iter()
                .filter(|i| {
                    i.config.hex().starts_with(prefix) || i.manifest.hex().starts_with(prefix)
                })
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches.remove(0)),
                _ if matches.iter().all(|m| m.config == matches[0].config) => {
                    return Ok(matches.remove(0))
                }
                _ => {
                    return Err(Error::Image {
                        image: spec.to_string(),
                        reason: "ambiguous image ID prefix: give more digits".into(),
                    })
                }
            }
        }
        Err(Error::NotFound(spec.to_string()))
    }

    /// The image's OCI config, as the registry served it.
    pub fn config(&self, image: &Image) -> Result<oci_spec::image::ImageConfiguration> {
        let data = self.read_blob(&image.config)?;
        oci_spec::image::ImageConfiguration::from_reader(&data[..]).map_err(|e| Error::Corrupt {
            path: self.blob_path(&image.config),
            reason: e.to_string(),
        })
    }

    /// `docker rmi`: a name is untagged, and the image deleted once no name is left; an ID
    /// deletes the image, which needs `force` when several repositories name it.
    pub fn remove(&self, spec: &str, force: bool) -> Result<Vec<Removed>> {
        let _lock = self.lock(true)?;
        let image = self.resolve(spec)?;
        let by_name = ImageRef::parse(spec)
            .ok()
            .map(|r| r.canonical())
            .filter(|n| image.names.contains(n));
        let mut removed = Vec::new();
        let untag: Vec<String> = match by_name {
            Some(name) => vec![name],
            None => {
                let repos: HashSet<String> = image
                    .names
                    .iter()
                    .filter_map(|n| ImageRef::parse(n).ok().map(|r| r.name()))
                    .collect();
                if repos.len() > 1 && !force {
                    return Err(Error::Conflict {
                        image: spec.to_string(),
                    });
                }
                image.names.clone()
            }
        };
        for name in &untag {
            let path = self.ref_path(name);
            fs::remove_file(&path).map_err(Error::io(&path))?;
            removed.push(Removed::Untagged(familiar_ref(name)));
        }
        if image.names.iter().all(|n| untag.contains(n)) {
            for d in &image.repo_digests {
                removed.push(Removed::Untagged(familiar_ref(d)));
            }
            let path = self.image_path(&image.manifest);
            fs::remove_file(&path).map_err(Error::io(&path))?;
            removed.push(Removed::Deleted(image.config.clone()));
        }
        self.gc_locked()?;
        Ok(removed)
    }

    /// `docker image prune`: deletes images no name points to; with `all`, every image whose
    /// root filesystem no running VM holds.
    pub fn prune(&self, all: bool) -> Result<(Vec<Removed>, GcStats)> {
        let _lock = self.lock(true)?;
        let mut removed = Vec::new();
        for image in self.images()? {
            if !image.names.is_empty() {
                if !all || self.rootfs_in_use(&image)? {
                    continue;
                }
                for name in &image.names {
                    let path = self.ref_path(name);
                    fs::remove_file(&path).map_err(Error::io(&path))?;
                    removed.push(Removed::Untagged(familiar_ref(name)));
                }
            }
            let path = self.image_path(&image.manifest);
            fs::remove_file(&path).map_err(Error::io(&path))?;
            removed.push(Removed::Deleted(image.config.clone()));
        }
        let stats = self.gc_locked()?;
        Ok((removed, stats))
    }

    fn rootfs_in_use(&self, image: &Image) -> Result<bool> {
        let Some(chain) = image.chain_id() else {
            return Ok(false);
        };
        let path = self.rootfs_path(&chain);
        match File::open(&path) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Ok(false),
                Err(std::fs::TryLockError::WouldBlock) => Ok(true),
                Err(std::fs::TryLockError::Error(e)) => Err(Error::Io { path, cause: e }),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io { path, cause: e }),
        }
    }

    /// Deletes every blob and root filesystem no image record references, and all of `tmp/`.
    pub fn gc(&self) -> Result<GcStats> {
        let _lock = self.lock(true)?;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcStats> {
        let mut live_blobs = HashSet::new();
        let mut live_rootfs = HashSet::new();
        for r in self.refs()? {
            live_blobs.insert(r.digest.hex().to_string());
        }
        for image in self.images()?.into_iter().chain(self.cached_images()?) {
            live_blobs.insert(image.manifest.hex().to_string());
            live_blobs.insert(image.config.hex().to_string());
            for l in &image.layers {
                live_blobs.insert(l.digest.hex().to_string());
            }
            if let Some(chain) = image.chain_id() {
                live_rootfs.insert(format!("{}.ext4", chain.hex()));
            }
        }
        let mut stats = GcStats::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(Error::io(&blobs))? {
            let entry = entry.map_err(Error::io(&blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live_blobs.contains(&name) {
                stats.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                remove_path(&entry.path())?;
                stats.blobs += 1;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).map_err(Error::io(&rootfs))? {
            let entry = entry.map_err(Error::io(&rootfs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".ext4") {
                // Per-chain conversion locks: only their writers care, and none is alive.
                remove_path(&entry.path())?;
                continue;
            }
            if live_rootfs.contains(&name) {
                continue;
            }
            let f = File::open(entry.path()).map_err(Error::io(entry.path()))?;
            if f.try_lock().is_err() {
                continue; // a VM still runs on it; a later GC collects it
            }
            stats.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            remove_path(&entry.path())?;
            stats.rootfs += 1;
        }
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(Error::io(&tmp))? {
            let entry = entry.map_err(Error::io(&tmp))?;
            stats.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            remove_path(&entry.path())?;
        }
        Ok(stats)
    }
}

/// Writes a new file and fsyncs it: renamed into place afterwards, it can never come back
/// empty or short after a crash while its name survives.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(Error::io(path))?;
    f.write_all(data).map_err(Error::io(path))?;
    f.sync_all().map_err(Error::io(path))
}

/// Renames a finished, fsynced file into place and fsyncs the directory, so the new name
/// itself survives a crash.
pub(crate) fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(Error::io(to))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Deletes a blob `file` read as `actual`, not what its name says, unless a pull has just
/// put a good copy in its place; returns what to tell a person.
fn delete_corrupt(file: &File, path: &Path, actual: &Digest) -> String {
    let deleted = same_file(file, path).is_ok_and(|same| same) && fs::remove_file(path).is_ok();
    format!(
        "content is {actual}, not what its name says{}",
        if deleted {
            "; deleted it, pull again to fetch it"
        } else {
            ""
        }
    )
}

/// Whether `path` still names the file `file` has open: a name can be renamed over or
/// unlinked between opening and acting on it.
pub(crate) fn same_file(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata().map_err(Error::io(path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            cause: e,
        }),
    }
}

fn remove_path(path: &Path) -> Result<()> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::Io {
            path: path.to_path_buf(),
            cause: e,
        }),
        _ => Ok(()),
    }
}

fn attach_names(image: &mut Image, refs: &[RefRecord]) {
    let mut names = Vec::new();
    let mut digests = Vec::new();
    for r in refs.iter().filter(|r| r.image == image.manifest) {
        names.push(r.name.clone());
        if let Ok(parsed) = ImageRef::parse(&r.name) {
            let d = format!("{}@{}", parsed.name(), r.digest);
            if !digests.contains(&d) {
                digests.push(d);
            }
        }
    }
    image.names = names;
    image.repo_digests = digests;
}

/// `docker.io/library/alpine:latest` → `alpine:latest`.
pub(crate) fn familiar_ref(name: &str) -> String {
    match ImageRef::parse(name) {
        Ok(r) => r.to_string(),
        Err(_) => name.to_string(),
    }
}

/// A name as a single file name: reference characters are `[a-z0-9._-/:@]` plus tag case,
/// so escaping `/`, `:`, `@` and `%` is enough and keeps names readable in the directory.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '/' => out.push_str("%2F"),
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_names_are_single_path_components() {
        let e = escape("127.0.0.1:5000/a/b:t");
        assert!(!e.contains('/') && e != "." && e != "..");
        assert_ne!(escape("a/b:c"), escape("a/b@c"));
    }
}
