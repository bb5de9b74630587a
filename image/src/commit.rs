//! Images made on this host (`hk build`) and the build cache that remembers them.
//!
//! A build step's result is an image like any other (a config blob, an OCI manifest, its
//! layers), but it is not recorded under `images/`, where `hk images` and name lookups
//! would see every intermediate step. It is recorded under `build-cache/<key>`, the key
//! being the step's cache key (its parent, its instruction, the content it reads). Garbage
//! collection keeps everything a cache record references, exactly as it keeps what an image
//! record references; `hk builder prune` drops the records and collects.

use crate::digest::Digest;
use crate::store::{Image, LayerInfo, Store, StoreLock};
use crate::{Error, Result};
use oci_spec::image::ImageConfiguration;
use std::fs;
use std::path::PathBuf;

/// OCI media types of what a build writes.
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Held by a build from start to end: collection waits until it is dropped, so a layer
/// written but not yet referenced by any record is never collected under the build.
pub struct BuildGuard {
    _lock: StoreLock,
}

impl Store {
    pub fn build_guard(&self) -> Result<BuildGuard> {
        Ok(BuildGuard {
            _lock: self.writer_lock()?,
        })
    }

    /// Stores a config (docker's JSON, kept byte for byte: it carries fields OCI's types
    /// lack, such as Healthcheck and OnBuild) and a manifest naming it and `layers`, and
    /// returns the image. Nothing is recorded: see [`Store::record_built`] and
    /// [`Store::cache_put`].
    pub fn put_image(&self, config: &[u8], layers: Vec<LayerInfo>) -> Result<Image> {
        let parsed = ImageConfiguration::from_reader(config).map_err(|e| Error::Image {
            image: "(being built)".into(),
            reason: format!("the config is not a valid image config: {e}"),
        })?;
        let diff_ids: Vec<&Digest> = layers.iter().map(|l| &l.diff_id).collect();
        let in_config: Vec<&str> = parsed
            .rootfs()
            .diff_ids()
            .iter()
            .map(String::as_str)
            .collect();
        if diff_ids
            .iter()
            .map(|d| d.as_str())
            .ne(in_config.iter().copied())
        {
            return Err(Error::Image {
                image: "(being built)".into(),
                reason: "the config's diff_ids do not match the layers".into(),
            });
        }
        let config_digest = self.put_blob(config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest.as_str(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest.as_str(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Image {
            image: "(being built)".into(),
            reason: e.to_string(),
        })?;
        let manifest_digest = self.put_blob(&bytes)?;
        Ok(Image::new(manifest_digest, config_digest, layers, &parsed))
    }

    /// The image's config exactly as stored (docker's fields included, which
    /// [`Store::config`] drops).
    pub fn config_bytes(&self, image: &Image) -> Result<Vec<u8>> {
        self.read_blob(&image.config)
    }

    /// Records a built image, and points each of `names` at it (`docker build -t`).
    pub fn record_built(&self, image: &Image, names: &[crate::ImageRef]) -> Result<()> {
        self.record_image(image)?;
        for name in names {
            self.record_name(image, name, &image.manifest)?;
        }
        Ok(())
    }

    fn cache_path(&self, key: &Digest) -> PathBuf {
        self.root().join("build-cache").join(key.hex())
    }

    /// The image a build step with this key made before, if its record and every blob it
    /// needs are still here.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<Image>> {
        let path = self.cache_path(key);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path, cause: e }),
        };
        let Ok(image) = serde_json::from_slice::<Image>(&data) else {
            // A damaged record is a miss; the step runs again and rewrites it.
            let _ = fs::remove_file(&path);
            return Ok(None);
        };
        let complete = self.has_blob(&image.manifest)
            && self.has_blob(&image.config)
            && image
                .layers
                .iter()
                .all(|l| self.has_blob_sized(&l.digest, l.size));
        Ok(complete.then_some(image))
    }

    pub fn cache_put(&self, key: &Digest, image: &Image) -> Result<()> {
        let dir = self.root().join("build-cache");
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        self.write_json(&self.cache_path(key), image)
    }

    /// Every image the build cache references (for collection).
    pub(crate) fn cached_images(&self) -> Result<Vec<Image>> {
        let dir = self.root().join("build-cache");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Io {
                    path: dir,
                    cause: e,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(&dir))?;
            if let Ok(data) = fs::read(entry.path()) {
                if let Ok(image) = serde_json::from_slice::<Image>(&data) {
                    out.push(image);
                }
            }
        }
        Ok(out)
    }

    /// `hk builder prune`: forgets every cached step, then collects what only they held.
    /// Returns how many records were dropped and what collection freed.
    pub fn cache_prune(&self) -> Result<(usize, crate::GcStats)> {
        let dir = self.root().join("build-cache");
        let mut dropped = 0;
        {
            let _lock = self.lock(true)?;
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if fs::remove_file(entry.path()).is_ok() {
                        dropped += 1;
                    }
                }
            }
        }
        Ok((dropped, self.gc()?))
    }
}
