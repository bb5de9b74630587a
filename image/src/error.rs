//! One error type for the crate. Every variant that concerns an image names it, and every
//! variant that concerns a layer names the layer too, so that a failed pull of a hostile or
//! broken image reads as one line a person can act on. Underlying errors are part of the
//! message (`cause`, deliberately not `#[source]`): the CLI prints error chains, and a cause
//! both in the text and in the chain would print twice.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference format {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("{image}: {reason}")]
    Image { image: String, reason: String },

    /// A blob of the image: `part` reads `layer abcd12345678 (2/5)` or `config abcd12345678`.
    #[error("{image}: {part}: {reason}")]
    Blob {
        image: String,
        part: String,
        reason: String,
    },

    #[error("{image}: {}", chain(cause))]
    Registry {
        image: String,
        cause: oci_client::errors::OciDistributionError,
    },

    #[error("{image}: {cause}")]
    Convert {
        image: String,
        cause: crate::ext4::Error,
    },

    /// An image tarball (`hk load`): `archive` is its path or `stdin`, `entry` the member
    /// at fault when one is.
    #[error("{archive}: {}{reason}", entry.as_deref().map(|e| format!("{e}: ")).unwrap_or_default())]
    Archive {
        archive: String,
        entry: Option<String>,
        reason: String,
    },

    #[error("{registry}: {reason}")]
    Login { registry: String, reason: String },

    #[error("credentials for {registry}: {reason}")]
    Credentials { registry: String, reason: String },

    #[error("No such image: {0}")]
    NotFound(String),

    #[error("conflict: unable to delete {image} (must be forced) - image is referenced in multiple repositories")]
    Conflict { image: String },

    /// Docker's words, so that scripts and people who know them recognise the case.
    #[error("image with reference {image} was found but does not match the specified platform: wanted {wanted}, actual: {actual}")]
    PlatformMismatch {
        image: String,
        wanted: String,
        actual: String,
    },

    #[error("unsupported platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
    InvalidPlatform(String),

    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("corrupt store file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// An error with its sources, skipping those whose text the outer message already holds:
/// "error sending request" alone does not say that the connection was refused.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let m = cause.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        next = cause.source();
    }
    text
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            path,
            cause: source,
        }
    }
}
