//! Root filesystems: the layer stack of an image converted once into ext4 and cached under
//! its ChainID, so every image sharing those layers shares the file.

use crate::ext4;
use crate::layer::LayerReader;
use crate::store::{rename_durably, same_file, Image, Store};
use crate::{Error, Result};
use std::fs::{self, File};
use std::path::PathBuf;

/// A converted root filesystem, held open with a shared flock for as long as this value
/// lives: garbage collection never deletes an image a VM is running on. While it lives,
/// `path` names the locked file.
pub struct Rootfs {
    pub path: PathBuf,
    file: File,
}

impl Rootfs {
    /// The locked file itself, read-only: give a VM this descriptor (or
    /// `/proc/self/fd/N`) rather than opening the path again.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Store {
    /// The image's root filesystem, converting it first if this layer stack never was.
    /// Concurrent callers for the same stack wait for one conversion rather than racing.
    pub fn rootfs(&self, image: &Image) -> Result<Rootfs> {
        let name = image.display_name();
        let chain = image.chain_id().ok_or_else(|| Error::Image {
            image: name.clone(),
            reason: "the image has no layers".into(),
        })?;
        let path = self.rootfs_path(&chain);
        if let Some(r) = open_shared(&path)? {
            return Ok(r);
        }
        let _writer = self.writer_lock()?;
        let lock_path = path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(Error::io(&lock_path))?;
        lock.lock().map_err(Error::io(&lock_path))?;
        if let Some(r) = open_shared(&path)? {
            return Ok(r);
        }
        let temp = self.temp_path("rootfs");
        let result = self.convert(image, &name, &temp);
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        rename_durably(&temp, &path)?;
        open_shared(&path)?.ok_or_else(|| Error::Io {
            path,
            cause: std::io::ErrorKind::NotFound.into(),
        })
    }

    fn convert(&self, image: &Image, name: &str, out: &std::path::Path) -> Result<ext4::Stats> {
        let total = image.layers.len();
        let mut readers = Vec::with_capacity(total);
        let mut layers = Vec::with_capacity(total);
        for (i, l) in image.layers.iter().enumerate() {
            let label = format!("{} ({}/{total})", l.digest.short(), i + 1);
            let blob = self.blob_path(&l.digest);
            let reader = LayerReader::open(&blob, l).map_err(|e| Error::Blob {
                image: name.to_string(),
                part: format!("layer {label}"),
                reason: format!("cannot read {}: {e}", blob.display()),
            })?;
            readers.push((label.clone(), reader.clone()));
            layers.push(ext4::Layer {
                name: label,
                tar: reader,
            });
        }
        let converted = ext4::convert(layers, out, &ext4::Options::default())
            .map_err(|source| Error::Convert {
                image: name.to_string(),
                cause: source,
            })
            .and_then(|stats| {
                for (label, reader) in &mut readers {
                    reader.finish().map_err(|e| Error::Blob {
                        image: name.to_string(),
                        part: format!("layer {label}"),
                        reason: e.to_string(),
                    })?;
                }
                Ok(stats)
            });
        match converted {
            Ok(stats) => {
                for warning in &stats.warnings {
                    self.warn(&format!("{name}: {warning}"));
                }
                Ok(stats)
            }
            Err(e) => Err(self
                .blame_stored_layers(image, name, &readers)?
                .unwrap_or(e)),
        }
    }

    /// After a failed conversion: a layer blob damaged in place (right size, wrong bytes)
    /// fails every conversion the same way, and one whose content is not what the config
    /// says cannot succeed either. Both are deleted so that the next pull fetches them
    /// again; a damaged one becomes the error, being the cause.
    fn blame_stored_layers(
        &self,
        image: &Image,
        name: &str,
        readers: &[(String, LayerReader)],
    ) -> Result<Option<Error>> {
        for (l, (label, reader)) in image.layers.iter().zip(readers) {
            if let Some(reason) = self.drop_if_corrupt(&l.digest)? {
                return Ok(Some(Error::Blob {
                    image: name.to_string(),
                    part: format!("layer {label}"),
                    reason: format!("stored blob {reason}"),
                }));
            }
            if reader.diff_id_mismatch() {
                self.remove_blob(&l.digest);
            }
        }
        Ok(None)
    }
}

/// Opens and share-locks the root filesystem at `path`. Garbage collection unlinks a file
/// while holding its exclusive lock, so one opened just before may be locked only once it
/// is gone: then the path names nothing (or a newer build), and this reads as absent.
fn open_shared(path: &std::path::Path) -> Result<Option<Rootfs>> {
    match File::open(path) {
        Ok(f) => {
            f.lock_shared().map_err(Error::io(path))?;
            if !same_file(&f, path)? {
                return Ok(None);
            }
            Ok(Some(Rootfs {
                path: path.to_path_buf(),
                file: f,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            cause: e,
        }),
    }
}
