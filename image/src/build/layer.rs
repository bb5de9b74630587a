//! Layers written into the store: a tar stream in, a gzip blob out, committed under its
//! digest like every other blob (fsynced temp file in `tmp/`, renamed into place, directory
//! fsynced), with the diff_id (sha256 of the uncompressed tar) computed on the way.
//!
//! Deterministic by construction: the gzip header has mtime 0, no file name and a fixed
//! OS byte, and the compression level is fixed, so the same tar bytes always give the same
//! blob digest, and a rebuilt layer is found already in the store.
//!
//! [`LayerWriter`] owns everything it needs (no borrow of the [`Store`]), so the tar can be
//! produced on one thread while another waits for it. It holds the store's shared writer
//! lock until it is finished or dropped, so garbage collection never empties `tmp/` under
//! it. The committed blob is referenced by nothing yet: the caller records an image that
//! uses it while still holding [`Store::writer_lock`]-level protection of its own (a
//! build holds it for its whole run), or a later GC deletes it.

use crate::digest::Hasher;
use crate::store::{rename_durably, LayerInfo, Store, StoreLock};
use crate::{Error, Result};
use flate2::write::GzEncoder;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

/// The media type of every layer hk builds.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Counts and hashes what reaches the file: the compressed blob's digest and size.
struct HashingFile {
    file: BufWriter<File>,
    hasher: Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A layer being written: give it the uncompressed tar (e.g. as a `tar::Builder`'s
/// writer), then [`LayerWriter::finish`]. Dropped unfinished, it deletes its temp file.
pub struct LayerWriter {
    encoder: Option<GzEncoder<HashingFile>>,
    diff: Hasher,
    temp: PathBuf,
    blobs: PathBuf,
    _lock: StoreLock,
}

impl Store {
    /// Starts a layer blob in the store's `tmp/`.
    pub fn layer_writer(&self) -> Result<LayerWriter> {
        let lock = self.writer_lock()?;
        let temp = self.temp_path("layer");
        let file = File::create(&temp).map_err(Error::io(&temp))?;
        let encoder = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(
                HashingFile {
                    file: BufWriter::with_capacity(1 << 20, file),
                    hasher: Hasher::default(),
                },
                flate2::Compression::default(),
            );
        Ok(LayerWriter {
            encoder: Some(encoder),
            diff: Hasher::default(),
            temp,
            blobs: self.root().join("blobs/sha256"),
            _lock: lock,
        })
    }

    /// Compresses the uncompressed tar `tar_stream` (read to its end) into a layer blob.
    pub fn write_layer(&self, mut tar_stream: impl Read) -> Result<LayerInfo> {
        let mut writer = self.layer_writer()?;
        let temp = writer.temp.clone();
        io::copy(&mut tar_stream, &mut writer).map_err(Error::io(&temp))?;
        writer.finish()
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let encoder = self
            .encoder
            .as_mut()
            .ok_or_else(|| io::Error::other("layer already finished"))?;
        let n = encoder.write(buf)?;
        self.diff.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.encoder.as_mut() {
            Some(e) => e.flush(),
            None => Ok(()),
        }
    }
}

impl LayerWriter {
    /// Ends the gzip stream, fsyncs the blob and renames it to its digest.
    pub fn finish(mut self) -> Result<LayerInfo> {
        let encoder = self.encoder.take().expect("finish consumes the writer");
        let temp = self.temp.clone();
        let hashing = encoder.finish().map_err(Error::io(&temp))?;
        let HashingFile { file, hasher } = hashing;
        let file = file.into_inner().map_err(|e| Error::Io {
            path: temp.clone(),
            cause: e.into_error(),
        })?;
        file.sync_all().map_err(Error::io(&temp))?;
        drop(file);
        let size = hasher.len;
        let digest = hasher.finish();
        let diff_id = std::mem::take(&mut self.diff).finish();
        rename_durably(&temp, &self.blobs.join(digest.hex()))?;
        Ok(LayerInfo {
            digest,
            media_type: LAYER_MEDIA_TYPE.to_string(),
            size,
            diff_id,
        })
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        // After a successful finish the temp name is gone (renamed); otherwise this is
        // the half-written blob of an error or a panic.
        let _ = std::fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn write_layer_is_deterministic_and_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = sample_tar();
        let a = store.write_layer(&tar[..]).unwrap();
        let b = store.write_layer(&tar[..]).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, Digest::of(&tar));
        assert_eq!(a.media_type, LAYER_MEDIA_TYPE);
        let blob = std::fs::read(store.blob_path(&a.digest)).unwrap();
        assert_eq!(blob.len() as u64, a.size);
        assert_eq!(Digest::of(&blob), a.digest);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn layer_writer_works_from_another_thread_and_cleans_up_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = store.layer_writer().unwrap();
        let info = std::thread::spawn(move || {
            let mut b = tar::Builder::new(writer);
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(info.diff_id, Digest::of(&sample_tar()));

        let mut abandoned = store.layer_writer().unwrap();
        abandoned.write_all(&[0u8; 4096]).unwrap();
        drop(abandoned);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn a_failing_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.write_layer(Failing).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
