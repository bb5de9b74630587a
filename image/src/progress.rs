//! Pull and push progress as events, so the library never prints: the CLI renders them as
//! bars on a terminal and as plain lines otherwise. A push reports with the same events,
//! the bytes moving the other way: `Exists` is a blob the registry has (or mounted),
//! `Waiting` one to check, `Downloading` bytes sent, `Complete` one sent.

use crate::Digest;

#[derive(Debug)]
pub enum Event<'a> {
    /// The reference resolved to this digest on the registry.
    Resolved { digest: &'a Digest },
    /// The layer is already in the store.
    Exists { layer: &'a Digest },
    /// The layer will be downloaded.
    Waiting { layer: &'a Digest, size: u64 },
    /// `done` of the layer's bytes are on disk.
    Downloading { layer: &'a Digest, done: u64 },
    /// The layer is on disk and verified.
    Complete { layer: &'a Digest },
    /// Layers are being turned into the root filesystem.
    Converting,
}

pub trait Progress: Sync {
    fn event(&self, event: Event<'_>);
}

/// For callers that want no output.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event<'_>) {}
}
