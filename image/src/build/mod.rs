//! The host side of `hk build`'s COPY and ADD: no VM is involved.
//!
//! - [`Ignore`]: `.dockerignore`, with moby/patternmatcher's semantics.
//! - [`RootView`]: an image's filesystem read on the host (destination checks, `--chown`
//!   names, `COPY --from`).
//! - [`copy_to_layer`]: one COPY or ADD as the entries of a layer tar, with Docker's
//!   (BuildKit's) rules; [`source_digest`]: what it reads, as a cache key.
//! - [`LayerWriter`] and [`crate::Store::write_layer`]: that tar as a gzip layer in the
//!   store, with its digest and diff_id.

mod copy;
mod glob;
mod ignore;
mod layer;
mod path;
mod tree;
mod view;

pub use copy::{copy_to_layer, source_digest, CopyOp, CopyStats, Source};
pub use ignore::{Ignore, IgnoreError};
pub use layer::{LayerWriter, LAYER_MEDIA_TYPE};
pub use view::{Entry, RootView};

/// Why a COPY or ADD failed. Each message names the path involved, as it appears in the
/// context (`/src/x`) or in an image (`image:/etc/passwd`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Docker's words for a COPY whose sources are all globs matching nothing.
    #[error("COPY failed: no source files were specified")]
    NoSourceFiles,

    /// BuildKit's wording for a source that is not there (or is `.dockerignore`d).
    #[error("{0:?}: not found")]
    NotFound(String),

    #[error("{url}: {reason}")]
    Url { url: String, reason: &'static str },

    #[error("{path}: {reason}")]
    Path { path: String, reason: String },

    #[error("build context {path}: {reason}")]
    Context { path: String, reason: String },

    #[error("image filesystem: {reason}")]
    Image { reason: String },

    #[error("--chown={spec}: {reason}")]
    Chown { spec: String, reason: String },

    #[error("{0}")]
    Op(String),

    /// Writing the layer tar failed (the store's disk, a closed pipe).
    #[error("writing the layer: {0}")]
    Write(std::io::Error),

    #[error(transparent)]
    Ignore(#[from] IgnoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
