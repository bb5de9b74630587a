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

struct State {
    decoder: Box<dyn Read>,
    compression: Compression,
    hasher: Option<Hasher>,
    expected: Digest,
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
        }))))
    }

    /// Reads whatever the consumer left and checks the diff_id.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
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
