//! `hk load`: images from a tarball into the store, without a registry.
//!
//! Two layouts are read, plain or gzip/zstd-compressed: docker-archive (`manifest.json`
//! listing Config, RepoTags and Layers, as `docker save` and skopeo write it) and OCI
//! layout (`oci-layout`, `index.json`, `blobs/sha256/…`, as `skopeo copy oci-archive:` and
//! `podman save --format oci-archive` write it). Both put the file that says what the
//! archive holds wherever they like, often last, and the input may be a pipe: so every
//! member is first streamed into a private staging directory under the store's `tmp/`,
//! hashed on the way (memory stays bounded by one copy buffer), and only then is the
//! archive read as an image. Everything is verified (digests, sizes, media types, diff_ids
//! of docker-archive layers, JSON size caps, paths that stay inside the archive) before a
//! single blob moves into the store; blobs then land by rename like a pull's, the root
//! filesystem is built, and only after that are names recorded. A failure at any point
//! leaves no name and no image; the staging directory goes with it.
//!
//! A docker-archive carries no manifest, only config and layer tars, so hk writes one: an
//! OCI manifest over the layers as they are in the archive (plain tar layers keep their
//! digest, which is their diff_id), so that `hk push` and `hk save` have one to use.

use crate::digest::Hasher;
use crate::media::{self, Compression};
use crate::registry::{MAX_CONFIG, MAX_MANIFEST};
use crate::store::{Image, LayerInfo, Store};
use crate::{platform, Digest, Error, ImageRef, Platform, Result};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::json;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// More members than any real image archive has (docker's old layout has three per layer).
const MAX_ENTRIES: usize = 100_000;
/// How many indexes deep an OCI layout may nest before it is refused.
const MAX_DEPTH: usize = 4;
/// How many symlinks a member name may go through.
const MAX_HOPS: usize = 16;

pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image the archive held, as recorded in the store.
#[derive(Debug)]
pub struct Loaded {
    pub image: Image,
    /// The names it was loaded under; none for an untagged image (docker's
    /// `Loaded image ID:`).
    pub names: Vec<ImageRef>,
}

/// Loads every image of the tarball `input` (named `archive` in errors: a path, or
/// `stdin`) into `store`.
pub fn load(store: &Store, input: impl Read, archive: &str) -> Result<Vec<Loaded>> {
    let _lock = store.writer_lock()?;
    let staging = Staging::extract(store, input, archive)?;
    let mut plans = if staging.exists("oci-layout") && staging.exists("index.json") {
        staging.plan_oci()?
    } else if staging.exists("manifest.json") {
        staging.plan_docker()?
    } else {
        return Err(staging.err(
            None,
            "neither manifest.json (docker-archive) nor oci-layout and index.json (OCI layout) \
             is in the archive: not an image tarball",
        ));
    };
    if plans.is_empty() {
        return Err(staging.err(None, "the archive holds no image"));
    }
    // Everything is verified: the blobs may land.
    for plan in &plans {
        for blob in &plan.blobs {
            staging.commit(blob)?;
        }
        store.put_blob(&plan.manifest_bytes)?;
    }
    // As a pull: the root filesystem is built before any name points at the image, so a
    // layer that cannot be converted fails the load, not a later run.
    for plan in &mut plans {
        plan.image.names = plan.names.iter().map(ImageRef::canonical).collect();
        store.rootfs(&plan.image)?;
    }
    let mut out = Vec::new();
    for plan in plans {
        store.record_image(&plan.image)?;
        for name in &plan.names {
            store.record_name(&plan.image, name, &plan.resolved)?;
        }
        out.push(Loaded {
            image: plan.image,
            names: plan.names,
        });
    }
    Ok(out)
}

/// One image of the archive, verified and ready to record.
struct Plan {
    image: Image,
    names: Vec<ImageRef>,
    manifest_bytes: Vec<u8>,
    /// The digest the names resolve to: the image's manifest, or the index it came from.
    resolved: Digest,
    /// Staged members to move into the blob store (config, layers, indexes).
    blobs: Vec<Staged>,
}

#[derive(Clone, Debug)]
struct Staged {
    /// The member's (normalized) name in the archive.
    name: String,
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// The archive's members, on disk in a private directory of `tmp/` that goes away on drop.
struct Staging<'a> {
    store: &'a Store,
    archive: String,
    dir: PathBuf,
    files: HashMap<String, Staged>,
    /// Symlinks and hardlinks between members: name → target name.
    links: HashMap<String, String>,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A member name as a clean relative path: `./a//b` → `a/b`. Absolute names and `..` are
/// refused: an image archive has no business outside itself.
fn clean_name(raw: &str) -> std::result::Result<String, String> {
    if raw.starts_with('/') {
        return Err("absolute path in the archive".into());
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("path climbs out of the archive with '..'".into()),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A link target relative to the member `name`, resolved to a member name; `None` when it
/// points outside the archive.
fn resolve_link(name: &str, target: &str, hard: bool) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    // Hardlink targets are archive names; symlink targets are relative to the link's dir.
    let mut parts: Vec<&str> = if hard {
        Vec::new()
    } else {
        let mut p: Vec<&str> = name.split('/').collect();
        p.pop();
        p
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The input, decompressed when it starts with a gzip or zstd header.
fn decompressed<'r>(input: impl Read + 'r) -> std::io::Result<Box<dyn Read + 'r>> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let head = input.fill_buf()?;
    Ok(match sniff(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Compression::None => Box::new(input),
    })
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

impl<'a> Staging<'a> {
    fn err(&self, entry: Option<&str>, reason: impl Into<String>) -> Error {
        Error::Archive {
            archive: self.archive.clone(),
            entry: entry.map(Into::into),
            reason: reason.into(),
        }
    }

    fn extract(store: &'a Store, input: impl Read, archive: &str) -> Result<Staging<'a>> {
        let dir = store.temp_path("load");
        fs::create_dir(&dir).map_err(Error::io(&dir))?;
        let mut s = Staging {
            store,
            archive: archive.to_string(),
            dir,
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let read_err = |s: &Staging, e: std::io::Error| s.err(None, format!("cannot read: {e}"));
        let input = decompressed(input).map_err(|e| read_err(&s, e))?;
        let mut tar = tar::Archive::new(input);
        let entries = tar.entries().map_err(|e| read_err(&s, e))?;
        let mut count = 0;
        let mut buf = vec![0u8; 1 << 20];
        for entry in entries {
            let mut entry = entry.map_err(|e| read_err(&s, e))?;
            count += 1;
            if count > MAX_ENTRIES {
                return Err(s.err(None, format!("more than {MAX_ENTRIES} members")));
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = clean_name(&raw).map_err(|r| s.err(Some(&raw), r))?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let resolved =
                    resolve_link(&name, &target, kind.is_hard_link()).ok_or_else(|| {
                        s.err(Some(&raw), format!("link to {target:?} leaves the archive"))
                    })?;
                s.files.remove(&name);
                s.links.insert(name, resolved);
                continue;
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue; // directories, pax headers and the like say nothing about images
            }
            let declared = entry.size();
            let cap = match name.as_str() {
                "manifest.json" | "index.json" | "oci-layout" | "repositories" => {
                    Some(MAX_MANIFEST as u64)
                }
                _ => None,
            };
            if let Some(cap) = cap.filter(|&c| declared > c) {
                return Err(s.err(
                    Some(&name),
                    format!("{declared} bytes is more than the {cap} this file may have"),
                ));
            }
            let path = s.dir.join(count.to_string());
            let mut out =
                BufWriter::with_capacity(1 << 20, File::create(&path).map_err(Error::io(&path))?);
            let mut hasher = Hasher::default();
            loop {
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(s.err(Some(&name), format!("cannot read: {e}"))),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(Error::io(&path))?;
            }
            out.flush().map_err(Error::io(&path))?;
            let size = hasher.len;
            s.links.remove(&name);
            if let Some(old) = s.files.insert(
                name.clone(),
                Staged {
                    name,
                    path,
                    digest: hasher.finish(),
                    size,
                },
            ) {
                let _ = fs::remove_file(old.path);
            }
        }
        Ok(s)
    }

    fn exists(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    /// The member called `name` (a reference from a manifest), following links.
    fn get(&self, name: &str) -> Result<&Staged> {
        let mut current = clean_name(name).map_err(|r| self.err(Some(name), r))?;
        for _ in 0..MAX_HOPS {
            if let Some(s) = self.files.get(&current) {
                return Ok(s);
            }
            match self.links.get(&current) {
                Some(next) => current = next.clone(),
                None => return Err(self.err(Some(name), "missing from the archive")),
            }
        }
        Err(self.err(Some(name), "too many levels of links"))
    }

    /// A small member (JSON) read whole, refused beyond `cap` bytes.
    fn read_small(&self, name: &str, cap: u64) -> Result<(Vec<u8>, &Staged)> {
        let s = self.get(name)?;
        if s.size > cap {
            return Err(self.err(
                Some(name),
                format!("{} bytes is more than the {cap} this file may have", s.size),
            ));
        }
        let data = fs::read(&s.path).map_err(Error::io(&s.path))?;
        Ok((data, s))
    }

    /// The blob an OCI descriptor names, checked against its digest and size.
    fn blob(&self, digest: &str, size: u64) -> Result<(Digest, &Staged)> {
        let d = Digest::parse(digest).map_err(|r| self.err(None, r))?;
        let name = format!("blobs/sha256/{}", d.hex());
        let s = self.get(&name)?;
        if s.digest != d {
            return Err(self.err(
                Some(&name),
                format!("digest mismatch: content is {}", s.digest),
            ));
        }
        if s.size != size {
            return Err(self.err(
                Some(&name),
                format!(
                    "size mismatch: {} bytes, the descriptor says {size}",
                    s.size
                ),
            ));
        }
        Ok((d, s))
    }

    /// Moves a verified member into the blob store under its digest.
    fn commit(&self, s: &Staged) -> Result<()> {
        if self.store.has_blob_sized(&s.digest, s.size) {
            return Ok(());
        }
        File::open(&s.path)
            .and_then(|f| f.sync_all())
            .map_err(Error::io(&s.path))?;
        // A member two images share moves once; the second finds it in the store above.
        self.store.commit_blob(&s.path, &s.digest)
    }

    fn names(&self, entry: &str, tags: &[String]) -> Result<Vec<ImageRef>> {
        let mut out: Vec<ImageRef> = Vec::new();
        for t in tags {
            let r = ImageRef::parse(t).map_err(|e| self.err(Some(entry), e.to_string()))?;
            if r.digest().is_some() {
                return Err(self.err(Some(entry), format!("{t:?} is not a tag")));
            }
            if !out.contains(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The image config: parsed, its diff_ids checked for count.
    fn config(&self, name: &str, layers: usize) -> Result<(ImageConfiguration, Vec<Digest>)> {
        let (bytes, _) = self.read_small(name, MAX_CONFIG)?;
        let config = ImageConfiguration::from_reader(&bytes[..])
            .map_err(|e| self.err(Some(name), format!("malformed image config: {e}")))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d).map_err(|r| self.err(Some(name), r)))
            .collect::<Result<Vec<_>>>()?;
        if diff_ids.len() != layers {
            return Err(self.err(
                Some(name),
                format!(
                    "config lists {} diff_ids for {layers} layers",
                    diff_ids.len()
                ),
            ));
        }
        if layers == 0 {
            return Err(self.err(Some(name), "the image has no layers"));
        }
        Ok((config, diff_ids))
    }

    /// docker-archive: `manifest.json` is a list of {Config, RepoTags, Layers}.
    fn plan_docker(&self) -> Result<Vec<Plan>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let (bytes, _) = self.read_small("manifest.json", MAX_MANIFEST as u64)?;
        let entries: Vec<Entry> = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(Some("manifest.json"), format!("malformed: {e}")))?;
        let mut plans = Vec::new();
        for e in entries {
            let (config, diff_ids) = self.config(&e.config, e.layers.len())?;
            let config_blob = self.get(&e.config)?.clone();
            let total = e.layers.len();
            let mut layers = Vec::new();
            let mut blobs = vec![config_blob.clone()];
            for (i, (name, want)) in e.layers.iter().zip(&diff_ids).enumerate() {
                let s = self.get(name)?.clone();
                let (compression, diff_id) = self.diff_id(&s)?;
                if diff_id != *want {
                    return Err(self.err(
                        Some(name),
                        format!(
                            "layer {}/{total}: content is {diff_id} but the image config says {want}",
                            i + 1
                        ),
                    ));
                }
                let media_type = match compression {
                    Compression::None => "application/vnd.oci.image.layer.v1.tar",
                    Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                };
                layers.push(LayerInfo {
                    digest: s.digest.clone(),
                    media_type: media_type.into(),
                    size: s.size,
                    diff_id,
                });
                blobs.push(s);
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": config_blob.digest,
                    "size": config_blob.size,
                },
                "layers": layers.iter().map(|l| json!({
                    "mediaType": l.media_type,
                    "digest": l.digest,
                    "size": l.size,
                })).collect::<Vec<_>>(),
            });
            let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
            let digest = Digest::of(&manifest_bytes);
            let names = self.names("manifest.json", e.repo_tags.as_deref().unwrap_or(&[]))?;
            plans.push(Plan {
                image: Image::new(digest.clone(), config_blob.digest, layers, &config),
                names,
                manifest_bytes,
                resolved: digest,
                blobs,
            });
        }
        Ok(plans)
    }

    /// What a docker-archive layer decompresses to: (how it is compressed, its diff_id).
    fn diff_id(&self, s: &Staged) -> Result<(Compression, Digest)> {
        let mut file = BufReader::new(File::open(&s.path).map_err(Error::io(&s.path))?);
        let head = file.fill_buf().map_err(Error::io(&s.path))?;
        let compression = sniff(head);
        let mut decoder: Box<dyn Read> = match compression {
            Compression::None => return Ok((compression, s.digest.clone())),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(file).map_err(Error::io(&s.path))?,
            ),
        };
        let mut hasher = Hasher::default();
        hasher
            .read_all(&mut decoder)
            .map_err(|e| self.err(Some(&s.name), format!("corrupt layer: {e}")))?;
        Ok((compression, hasher.finish()))
    }

    /// OCI layout: `index.json` lists manifests (or indexes) by digest under `blobs/`.
    fn plan_oci(&self) -> Result<Vec<Plan>> {
        let (layout, _) = self.read_small("oci-layout", MAX_MANIFEST as u64)?;
        let layout: serde_json::Value = serde_json::from_slice(&layout)
            .map_err(|e| self.err(Some("oci-layout"), format!("malformed: {e}")))?;
        if layout["imageLayoutVersion"].as_str().is_none() {
            return Err(self.err(Some("oci-layout"), "no imageLayoutVersion"));
        }
        let (bytes, _) = self.read_small("index.json", MAX_MANIFEST as u64)?;
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| self.err(Some("index.json"), format!("malformed image index: {e}")))?;
        let named = |d: &oci_spec::image::Descriptor| {
            let a = d.annotations().as_ref()?;
            a.get(ANNOTATION_CONTAINERD_NAME)
                .or_else(|| {
                    a.get(ANNOTATION_REF_NAME)
                        .filter(|n| n.contains([':', '/']))
                })
                .cloned()
        };
        // An index.json of several platforms and no names is itself a multi-platform image.
        if index.manifests().len() > 1
            && index.manifests().iter().all(|d| named(d).is_none())
            && index.manifests().iter().any(|d| d.platform().is_some())
        {
            let digest = platform::select(&index, &Platform::host())
                .map_err(|r| self.err(Some("index.json"), r))?;
            let d = index
                .manifests()
                .iter()
                .find(|d| d.digest().as_ref() == digest.as_str())
                .expect("select picks an entry");
            let mut blobs = Vec::new();
            let (image, bytes, manifest) = self.oci_entry(d, 0, &mut blobs)?;
            return Ok(vec![Plan {
                image,
                names: Vec::new(),
                manifest_bytes: bytes,
                resolved: manifest,
                blobs,
            }]);
        }
        let mut plans: Vec<Plan> = Vec::new();
        for d in index.manifests() {
            let names = self.names("index.json", named(d).as_slice())?;
            let mut blobs = Vec::new();
            let (image, manifest_bytes, _) = self.oci_entry(d, 0, &mut blobs)?;
            let resolved = Digest::parse(d.digest().as_ref()).map_err(|r| self.err(None, r))?;
            // Several names of one image: one plan with all of them.
            if let Some(p) = plans
                .iter_mut()
                .find(|p| p.image.manifest == image.manifest && p.resolved == resolved)
            {
                for n in names {
                    if !p.names.contains(&n) {
                        p.names.push(n);
                    }
                }
                continue;
            }
            plans.push(Plan {
                image,
                names,
                manifest_bytes,
                resolved,
                blobs,
            });
        }
        Ok(plans)
    }

    /// The image behind one descriptor of an OCI layout, choosing the host's platform
    /// from an index. Returns the image, its manifest bytes and digest.
    fn oci_entry(
        &self,
        d: &oci_spec::image::Descriptor,
        depth: usize,
        blobs: &mut Vec<Staged>,
    ) -> Result<(Image, Vec<u8>, Digest)> {
        if depth > MAX_DEPTH {
            return Err(self.err(None, format!("indexes nest more than {MAX_DEPTH} deep")));
        }
        let (digest, s) = self.blob(d.digest().as_ref(), d.size())?;
        let (bytes, _) = self.read_small(&s.name, MAX_MANIFEST as u64)?;
        let head: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(Some(&s.name), format!("manifest is not JSON: {e}")))?;
        let is_index = head.get("manifests").is_some()
            || matches!(
                head["mediaType"].as_str(),
                Some(media::OCI_INDEX | media::DOCKER_LIST)
            );
        if is_index {
            let index = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| self.err(Some(&s.name), format!("malformed image index: {e}")))?;
            let want = platform::select(&index, &Platform::host())
                .map_err(|r| self.err(Some(&s.name), r))?;
            let inner = index
                .manifests()
                .iter()
                .find(|m| m.digest().as_ref() == want.as_str())
                .expect("select picks an entry");
            blobs.push(s.clone());
            return self.oci_entry(inner, depth + 1, blobs);
        }
        let manifest = ImageManifest::from_reader(&bytes[..])
            .map_err(|e| self.err(Some(&s.name), format!("malformed image manifest: {e}")))?;
        let c = manifest.config();
        if !media::is_config(c.media_type().as_ref()) {
            return Err(self.err(
                Some(&s.name),
                format!(
                    "not a container image: config media type {:?}",
                    c.media_type().to_string()
                ),
            ));
        }
        if c.size() > MAX_CONFIG {
            return Err(self.err(
                Some(&s.name),
                format!("config of {} bytes is too large", c.size()),
            ));
        }
        let (config_digest, config_blob) = self.blob(c.digest().as_ref(), c.size())?;
        let (config, diff_ids) = self.config(&config_blob.name, manifest.layers().len())?;
        blobs.push(config_blob.clone());
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let media_type = l.media_type().to_string();
            if media::layer_compression(&media_type).is_none() {
                return Err(self.err(
                    Some(&s.name),
                    format!("unsupported layer media type {media_type:?}"),
                ));
            }
            let (digest, staged) = self.blob(l.digest().as_ref(), l.size())?;
            blobs.push(staged.clone());
            layers.push(LayerInfo {
                digest,
                media_type,
                size: l.size(),
                diff_id,
            });
        }
        Ok((
            Image::new(digest.clone(), config_digest, layers, &config),
            bytes,
            digest,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_stay_inside_the_archive() {
        assert_eq!(clean_name("./a//b/").unwrap(), "a/b");
        assert!(clean_name("/etc/passwd").is_err());
        assert!(clean_name("a/../../b").is_err());
        assert_eq!(
            resolve_link("x/layer.tar", "../y/layer.tar", false).unwrap(),
            "y/layer.tar"
        );
        assert_eq!(resolve_link("x/a", "y/b", true).unwrap(), "y/b");
        assert!(resolve_link("x/a", "../../etc", false).is_none());
        assert!(resolve_link("x/a", "/etc/passwd", false).is_none());
    }
}
