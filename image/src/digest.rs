//! Content digests. Only sha256 is accepted: it is what every registry serves, and refusing
//! the rest keeps one hashing path to trust.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// A validated `sha256:<64 lowercase hex>` digest; safe to use as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("unsupported digest {s:?}: only sha256 is supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("malformed digest {s:?}"));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The 12-hex-digit form docker prints as IMAGE ID.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// The OCI ChainID of a layer stack: it names the filesystem that applying these layers in
/// order produces, so it is the cache key of the converted root filesystem.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(first.clone(), |chain, diff| {
        Digest::of(format!("{chain} {diff}").as_bytes())
    }))
}

/// Running sha256 plus byte count of a stream.
#[derive(Default)]
pub(crate) struct Hasher {
    sha: Sha256,
    pub(crate) len: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.len += data.len() as u64;
    }

    /// Hashes everything `reader` yields, to its end.
    pub(crate) fn read_all(&mut self, mut reader: impl std::io::Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn finish(self) -> Digest {
        Digest(format!("sha256:{}", hex::encode(self.sha.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_digests() {
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(chain_id(std::slice::from_ref(&d)), Some(d.clone()));
        let two = chain_id(&[d.clone(), d.clone()]).unwrap();
        assert_eq!(two, Digest::of(format!("{d} {d}").as_bytes()));
        assert_eq!(chain_id(&[]), None);
    }
}
