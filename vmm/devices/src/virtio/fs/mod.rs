//! virtio-fs (virtio 1.x §5.11): a host directory shared into the guest, served in-process
//! on the device's own thread. docs/virtio-fs.md has the design and the rules.
//!
//! Choices, and why:
//! - **In-process, not vhost-user**: hk has no daemon to start, place in a sandbox or keep
//!   alive; the share is one more device thread under the VMM's own confinement.
//! - **fuse-backend-rs 0.14** (feature `virtiofs` only, not `fusedev`): its `Server` parses
//!   FUSE requests without trusting the client, its virtio-fs transport reads and writes
//!   descriptor chains through vm-memory's checked slices (the VMM pins vm-memory =0.17.1
//!   and virtio-queue 0.17 so they are the same types), and its `PassthroughFs` serves a
//!   directory through O_PATH file descriptors, one path component at a time, never
//!   following a symlink on the host.
//! - **hk's rules around it** ([`share`]): read-only enforced host side, the guest's owners
//!   and modes kept in an xattr, no set-id bits or device nodes, guest xattrs off. File
//!   handles (`inode_file_handles`, open_by_handle_at) stay off: an fd per inode keeps the
//!   guest inside what it was given, and the process seccomp filter denies the call anyway.
//! - **Checked before the parser sees it** ([`request`]): only the opcodes a Linux guest
//!   uses are passed on (no ioctl, poll, bmap, DAX mappings, notify replies), so guest
//!   values never reach code paths hk does not use; every request that is not a forget
//!   gets a reply, an error when anything was wrong, and a panic in the library answers EIO
//!   rather than stopping the VM.
//! - **One request queue** (`num_request_queues` = 1, what Linux uses) plus the hiprio
//!   queue for FORGET and INTERRUPT; each served a bounded number of requests per pass.
//! - **No DAX window**: data is copied through the queue; the guest never maps host pages.
//! - The device thread leaves the process's shared filesystem state (`unshare(CLONE_FS)`)
//!   before serving: `PassthroughFs` sets the umask to 0 on INIT, which must not change the
//!   mode of files the rest of hk creates.

mod request;
pub mod share;

pub use super::Cache;
use super::VIRTIO_F_VERSION_1;
use super::{read_config_bytes, serve_queue, DeviceWorker, Events, Served, VirtioDevice};
use crate::GuestMemory;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use share::ShareFs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use virtio_queue::Queue;

pub const VIRTIO_ID_FS: u32 = 26;
/// Bytes of the tag in the configuration space.
pub const TAG_LEN: usize = 36;
const QUEUE_SIZE: u16 = 256;
/// hiprio and one request queue.
const QUEUES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// Requests served per queue and pass before the device's other work gets a turn.
const BUDGET: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shared directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotDir(String),
    #[error("share tag {0:?}: must be 1 to {TAG_LEN} bytes, without NUL")]
    Tag(String),
}

/// A shared directory as the transport sees it.
pub struct Fs {
    root: PathBuf,
    read_only: bool,
    cache: Cache,
    config: [u8; TAG_LEN + 4],
    name: String,
}

impl Fs {
    /// Shares `dir` (resolved once, here: the guest gets this directory, whatever its path
    /// names later) under `tag`, the name the guest mounts (`mount -t virtiofs TAG DIR`).
    pub fn new(dir: &Path, tag: &str, read_only: bool, cache: Cache) -> Result<Fs, Error> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(Error::Tag(tag.to_string()));
        }
        let dir_error = |source| Error::Dir {
            path: dir.display().to_string(),
            source,
        };
        let root = dir.canonicalize().map_err(dir_error)?;
        if !root.metadata().map_err(dir_error)?.is_dir() {
            return Err(Error::NotDir(dir.display().to_string()));
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            root,
            read_only,
            cache,
            config,
            name: format!("fs-{tag}"),
        })
    }

    /// The filesystem a fresh activation serves.
    fn filesystem(&self) -> std::io::Result<ShareFs> {
        let (cache_policy, timeout) = self.cache.policy();
        let root_dir = self
            .root
            .to_str()
            .ok_or_else(|| std::io::Error::other("shared directory path is not UTF-8"))?
            .to_string();
        let inner = PassthroughFs::new(Config {
            root_dir,
            cache_policy,
            attr_timeout: timeout,
            entry_timeout: timeout,
            // The override xattr is read and written through the inner filesystem; the
            // guest's own xattr requests never reach it (ShareFs answers ENOSYS).
            xattr: true,
            do_import: true,
            writeback: false,
            inode_file_handles: false,
            no_open: false,
            no_opendir: false,
            killpriv_v2: false,
            dax_file_size: None,
            ..Config::default()
        })?;
        Ok(ShareFs::new(inner, self.read_only, self.cache))
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, _features: u64) -> std::io::Result<Box<dyn DeviceWorker>> {
        Ok(Box::new(FsWorker {
            server: Arc::new(Server::new(self.filesystem()?)),
        }))
    }
}

/// Serves the queues of an active share.
struct FsWorker {
    server: Arc<Server<ShareFs>>,
}

impl DeviceWorker for FsWorker {
    fn init(&mut self, _events: &Events) -> std::io::Result<()> {
        // SAFETY: unshare(2) takes no pointers; CLONE_FS gives this thread its own umask,
        // cwd and root, and needs no privilege.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, _events: &Events) -> Served {
        let mut served = Served::default();
        for queue in queues.iter_mut() {
            served |= serve_queue(queue, mem, BUDGET, |chain| {
                request::handle(&self.server, chain, mem)
            });
        }
        served
    }
}

#[cfg(test)]
mod tests;
