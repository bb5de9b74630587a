//! hk-image: OCI images as ext4 root filesystems.
//!
//! The crate knows nothing of VMs: given a reference it pulls the image into a local content
//! store and yields an ext4 root filesystem plus the image's OCI config. Layering, top down:
//! `registry` (network) writes verified blobs into `store` (disk, locking, garbage
//! collection); `rootfs` reads them back through `layer` (decompression, diff_id checks) into
//! the ext4 writer. `auth` and `platform` are leaves used by `registry`.

pub mod auth;
pub mod build;
mod commit;
mod digest;
pub mod dockerfile;
mod error;
pub mod ext4;
mod layer;
mod load;
mod media;
pub mod platform;
pub mod progress;
mod push;
mod reference;
mod registry;
mod rootfs;
mod save;
mod store;

pub use commit::BuildGuard;
pub use digest::Digest;
pub use error::Error;
pub use load::{load, Loaded};
pub use platform::Platform;
pub use push::{push, PushOptions, Pushed};
pub use reference::ImageRef;
#[cfg(feature = "fuzzing")]
pub use registry::fuzz_manifests;
pub use registry::{login, pull, PullOptions};
pub use rootfs::Rootfs;
pub use save::{save, save_to_file, ArchiveFormat};
pub use store::{GcStats, Image, LayerInfo, Removed, Store};

pub type Result<T, E = Error> = std::result::Result<T, E>;
