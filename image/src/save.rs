//! `hk save`: images from the store into a tarball that `docker load`, `podman load`,
//! skopeo and `hk load` read.
//!
//! Two layouts, as `hk load` reads them. docker-archive (docker's default) holds the config
//! and each layer as a plain tar under `blobs/sha256/<hex>`, with `manifest.json` and
//! `repositories` naming them: a layer stored compressed is decompressed on the way, through
//! the same diff_id check a conversion makes, into a temp file first, since a tar header
//! needs the size before the data. oci-archive (podman's `--format oci-archive`) holds the
//! stored manifest, config and layers byte for byte, so the image keeps its manifest digest,
//! with one `index.json` entry per name, annotated with the full name as both podman
//! (`org.opencontainers.image.ref.name`) and containerd (`io.containerd.image.name`) do.
//! The store's writer lock is held throughout, so garbage collection cannot delete a blob
//! being read. Members are written in a fixed order with fixed metadata (mtime 0, root), so
//! the same images give the same bytes.

use crate::layer::LayerReader;
use crate::load::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use crate::media::{self, Compression};
use crate::store::{rename_durably, Image, Store};
use crate::{Digest, Error, ImageRef, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `manifest.json` + `repositories` + config + plain tar layers, as `docker save`.
    DockerArchive,
    /// An OCI image layout, as `podman save --format oci-archive`.
    OciArchive,
}

/// The images `specs` name (names, IDs or ID prefixes) with the names they were given by.
fn select(store: &Store, specs: &[String]) -> Result<Vec<(Image, Vec<ImageRef>)>> {
    let mut out: Vec<(Image, Vec<ImageRef>)> = Vec::new();
    for spec in specs {
        let image = store.resolve(spec)?;
        // By name, the archive carries that name; by ID, none (as docker).
        let name = ImageRef::parse(spec)
            .ok()
            .filter(|r| r.digest().is_none() && image.names.contains(&r.canonical()));
        match out.iter_mut().find(|(i, _)| i.manifest == image.manifest) {
            Some((_, names)) => names.extend(name.filter(|n| !names.contains(n))),
            None => out.push((image, name.into_iter().collect())),
        }
    }
    Ok(out)
}

/// Writes the images `specs` name to `out` as one archive; `label` names `out` in errors
/// (`stdout`, a path).
pub fn save(
    store: &Store,
    specs: &[String],
    format: ArchiveFormat,
    out: impl Write,
    label: &Path,
) -> Result<()> {
    let _lock = store.writer_lock()?;
    let images = select(store, specs)?;
    let mut w = Writer {
        store,
        tar: tar::Builder::new(out),
        written: HashSet::new(),
        label: label.to_path_buf(),
    };
    match format {
        ArchiveFormat::DockerArchive => w.docker(&images)?,
        ArchiveFormat::OciArchive => w.oci(&images)?,
    }
    let label = w.label.clone();
    w.tar
        .into_inner()
        .and_then(|mut o| o.flush())
        .map_err(Error::io(label))
}

/// [`save`] into the file `path`, which appears whole (temp file, fsync, rename) or not at
/// all.
pub fn save_to_file(
    store: &Store,
    specs: &[String],
    format: ArchiveFormat,
    path: &Path,
) -> Result<()> {
    // `out.tar` is `./out.tar`: the directory is fsynced after the rename.
    let path = &match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new(".").join(path),
        _ => path.to_path_buf(),
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    // Beside the destination, so that the rename stays on one filesystem.
    let temp = TempFile(dir.join(format!(".{file_name}.hk-save.{}", std::process::id())));
    let mut file = File::create(&temp.0).map_err(Error::io(path))?;
    save(
        store,
        specs,
        format,
        io::BufWriter::with_capacity(1 << 20, &mut file),
        path,
    )?;
    file.sync_all().map_err(Error::io(path))?;
    rename_durably(&temp.0, path)
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

struct Writer<'a, W: Write> {
    store: &'a Store,
    tar: tar::Builder<W>,
    /// Members already written: images share layers.
    written: HashSet<String>,
    label: PathBuf,
}

impl<W: Write> Writer<'_, W> {
    fn append(&mut self, name: &str, size: u64, data: impl Read) -> Result<()> {
        if !self.written.insert(name.to_string()) {
            return Ok(());
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        self.tar
            .append_data(&mut h, name, data)
            .map_err(Error::io(&self.label))
    }

    fn append_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.append(name, data.len() as u64, data)
    }

    /// A stored blob as `blobs/sha256/<hex>`, byte for byte.
    fn append_blob(&mut self, digest: &Digest, size: u64) -> Result<()> {
        let name = format!("blobs/sha256/{}", digest.hex());
        if self.written.contains(&name) {
            return Ok(());
        }
        let path = self.store.blob_path(digest);
        let file = File::open(&path).map_err(Error::io(&path))?;
        let actual = file.metadata().map_err(Error::io(&path))?.len();
        if actual != size {
            return Err(Error::Corrupt {
                path,
                reason: format!("{actual} bytes, the image says {size}"),
            });
        }
        self.append(&name, size, file)
    }

    fn docker(&mut self, images: &[(Image, Vec<ImageRef>)]) -> Result<()> {
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (image, names) in images {
            let config = self.store.read_blob(&image.config)?;
            self.append_bytes(&format!("blobs/sha256/{}", image.config.hex()), &config)?;
            let mut layers = Vec::new();
            for l in &image.layers {
                let name = format!("blobs/sha256/{}", l.diff_id.hex());
                layers.push(name.clone());
                if self.written.contains(&name) {
                    continue;
                }
                match media::layer_compression(&l.media_type) {
                    Some(Compression::None) if l.digest == l.diff_id => {
                        self.append_blob(&l.digest, l.size)?;
                    }
                    _ => {
                        // A tar header needs the size first: decompress into a temp file,
                        // checking the diff_id on the way.
                        let temp = TempFile(self.store.temp_path("save-layer"));
                        let mut file = File::options()
                            .create_new(true)
                            .read(true)
                            .write(true)
                            .open(&temp.0)
                            .map_err(Error::io(&temp.0))?;
                        let blob = self.store.blob_path(&l.digest);
                        let layer_err = |e: io::Error| Error::Blob {
                            image: image.display_name(),
                            part: format!("layer {}", l.digest.short()),
                            reason: e.to_string(),
                        };
                        let mut reader = LayerReader::open(&blob, l).map_err(layer_err)?;
                        let size = io::copy(&mut reader, &mut file).map_err(layer_err)?;
                        file.rewind().map_err(Error::io(&temp.0))?;
                        self.append(&name, size, file)?;
                    }
                }
            }
            let tags: Vec<String> = names.iter().map(ToString::to_string).collect();
            for n in names {
                repositories.entry(n.familiar_name()).or_default().insert(
                    n.tag().unwrap_or("latest").to_string(),
                    image
                        .layers
                        .last()
                        .map(|l| l.diff_id.hex().to_string())
                        .unwrap_or_default(),
                );
            }
            manifest.push(json!({
                "Config": format!("blobs/sha256/{}", image.config.hex()),
                "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { json!(tags) },
                "Layers": layers,
            }));
        }
        self.append_bytes(
            "manifest.json",
            &serde_json::to_vec(&manifest).expect("json"),
        )?;
        self.append_bytes(
            "repositories",
            &serde_json::to_vec(&repositories).expect("json"),
        )
    }

    fn oci(&mut self, images: &[(Image, Vec<ImageRef>)]) -> Result<()> {
        self.append_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut entries = Vec::new();
        for (image, names) in images {
            let manifest = self.store.read_blob(&image.manifest)?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
                .ok()
                .and_then(|m| m["mediaType"].as_str().map(String::from))
                .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
            self.append_bytes(&format!("blobs/sha256/{}", image.manifest.hex()), &manifest)?;
            let config = self.store.read_blob(&image.config)?;
            self.append_bytes(&format!("blobs/sha256/{}", image.config.hex()), &config)?;
            for l in &image.layers {
                self.append_blob(&l.digest, l.size)?;
            }
            let descriptor = json!({
                "mediaType": media_type,
                "digest": image.manifest,
                "size": manifest.len(),
            });
            if names.is_empty() {
                entries.push(descriptor.clone());
            }
            for n in names {
                let mut d = descriptor.clone();
                d["annotations"] = json!({
                    ANNOTATION_CONTAINERD_NAME: n.canonical(),
                    ANNOTATION_REF_NAME: n.canonical(),
                });
                entries.push(d);
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": entries,
        });
        self.append_bytes("index.json", &serde_json::to_vec(&index).expect("json"))
    }
}
