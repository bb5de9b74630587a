//! Reading a stored layer back as the uncompressed tar the ext4 writer consumes, checked
//! against the config's diff_id on the way. The compressed digest was verified at pull time;
//! the diff_id is what names the layer's *content*, so a blob that is well-formed but not
//! what the config promises (or a decompressor that stops early) is caught here.

use crate::digest::Hasher;
use crate::media::{self, Compression};
use crate::store::LayerInfo;
use crate::Digest;
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

/// Most bytes read after the tar's end-of-archive marker.
const MAX_TAIL: u64 = 1 << 20;

struct State {
    decoder: Box<dyn Read>,
    compression: Compression,
    hasher: Option<Hasher>,
    expected: Digest,
    /// The whole stream was read and is not what the config says.
    mismatch: bool,
}

impl State {
    /// At the end of the stream: does what came out hash to the diff_id?
    fn verify(&mut self) -> io::Result<()> {
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let actual = hasher.finish();
        if actual == self.expected {
            Ok(())
        } else {
            self.mismatch = true;
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "uncompressed content is {actual} but the image config says {} \
                     (truncated, corrupt or tampered layer)",
                    self.expected
                ),
            ))
        }
    }
}

/// The uncompressed tar of one layer. Clones share one stream, so the caller can keep a
/// handle and, after the ext4 writer stopped at the tar's end marker, drain what is left
/// (padding) and verify the diff_id over the whole stream.
#[derive(Clone)]
pub(crate) struct LayerReader(Rc<RefCell<State>>);

impl LayerReader {
    pub(crate) fn open(path: &Path, layer: &LayerInfo) -> io::Result<LayerReader> {
        let file = File::open(path)?;
        let compression = media::layer_compression(&layer.media_type).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported layer media type {:?}", layer.media_type),
            )
        })?;
        let decoder: Box<dyn Read> = match compression {
            Compression::None => Box::new(BufReader::with_capacity(1 << 20, file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                BufReader::with_capacity(1 << 20, file),
            )),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        };
        Ok(LayerReader(Rc::new(RefCell::new(State {
            decoder,
            compression,
            hasher: Some(Hasher::default()),
            expected: layer.diff_id.clone(),
            mismatch: false,
        }))))
    }

    /// Whether the stream was read to its end and did not hash to the diff_id.
    pub(crate) fn diff_id_mismatch(&self) -> bool {
        self.0.borrow().mismatch
    }

    /// Reads whatever the consumer left and checks the diff_id. What follows a tar's
    /// end-of-archive marker is padding (tar writes 10 KiB records); more than [`MAX_TAIL`]
    /// is not, and a compressed tail of zeros could keep hk decompressing for hours.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let tail = io::copy(&mut self.by_ref().take(MAX_TAIL + 1), &mut io::sink())?;
        if tail > MAX_TAIL {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_TAIL} bytes of data after the end of the tar archive"),
            ));
        }
        self.0.borrow_mut().verify()
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.hasher.is_none() {
            return Ok(0);
        }
        let n = match s.decoder.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let what = match s.compression {
                    Compression::Gzip => "gzip",
                    Compression::Zstd => "zstd",
                    Compression::None => "layer",
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt {what} stream: {e}"),
                ));
            }
        };
        if n == 0 {
            s.verify()?;
        } else if let Some(h) = s.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer whose tar ends early and then goes on for 64 MiB: the end-of-archive marker
    /// stops the ext4 writer, and what follows must not be read to its end.
    #[test]
    fn finish_refuses_a_long_tail_after_the_tar() {
        let mut stream = vec![0u8; 1024]; // an empty tar: just its end-of-archive marker
        stream.resize(64 << 20, 0);
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, zstd::encode_all(&stream[..], 3).unwrap()).unwrap();
        let info = LayerInfo {
            digest: Digest::of(b"unused here"),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            size: 0,
            diff_id: Digest::of(&stream),
        };
        let mut reader = LayerReader::open(&blob, &info).unwrap();
        let mut tar = [0u8; 1024];
        reader.read_exact(&mut tar).unwrap();
        let err = reader.finish().unwrap_err();
        assert!(
            err.to_string().contains("after the end of the tar"),
            "{err}"
        );

        // Ordinary padding after the marker (tar pads to 10 KiB records) is fine.
        let padded = vec![0u8; 10240];
        std::fs::write(&blob, zstd::encode_all(&padded[..], 3).unwrap()).unwrap();
        let info = LayerInfo {
            diff_id: Digest::of(&padded),
            ..info
        };
        let mut reader = LayerReader::open(&blob, &info).unwrap();
        reader.read_exact(&mut tar).unwrap();
        reader.finish().unwrap();
    }
}
