//! An image's filesystem read on the host, for COPY's destination checks, `--chown` names
//! and `COPY --from`.
//!
//! # Why the ext4 root and not the layer tars
//! The store already turns every layer stack into one ext4 file ([`Store::rootfs`]), and a
//! build needs that file anyway for the next RUN step. Reading it with `ext4-view` (a
//! read-only, `forbid(unsafe_code)` ext4 reader, no_std-capable and fuzzed upstream) gives
//! random access with whiteouts, opaque directories, replaced files and hardlinks already
//! applied by the code that makes the VM's root, so COPY sees exactly what RUN sees. The
//! alternative, scanning every layer tar in order into an index, would re-decompress the
//! whole image for each COPY, and reading a file's content would mean decompressing its
//! layer again up to it; the index would also be a second implementation of whiteout
//! semantics to keep in step with the ext4 writer. Memory stays bounded: `ext4-view` reads
//! blocks on demand through a small cache and streams file contents.
//!
//! Limits of `ext4-view` 1.0, and what follows: it exposes no inode numbers, so files
//! hardlinked in the image are copied by `COPY --from` as separate files; it reads no
//! extended attributes, so `security.capability` and the like are not carried over by
//! `COPY --from` (BuildKit copies them).
//!
//! # `--chown` (BuildKit's `readUser`, checked against its source)
//! `USER[:GROUP]`, each a number or a name. A numeric user with no group gives that number
//! as the group too (`--chown=1000` is 1000:1000); a named user with no group gets its
//! primary group from `/etc/passwd`; a named group comes from `/etc/group`. BuildKit maps a
//! name it cannot find to 0, silently; hk refuses it instead (as the classic builder did),
//! since root-owned files where the author asked for a user are a quiet security mistake.

use super::tree::{resolve, Kind, Meta, Tree};
use super::{Error, Result};
use crate::{Rootfs, Store};
use std::io::Read;

/// Largest `/etc/passwd` or `/etc/group` read into memory.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// An image's root filesystem, read-only. Not `Send`: use it on the thread that opened it.
pub struct RootView {
    fs: Option<ext4_view::Ext4>,
    /// Keeps the shared lock that stops garbage collection from deleting the file.
    _rootfs: Option<Rootfs>,
}

/// What [`RootView::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path with every symlink resolved inside the image, absolute.
    pub path: String,
    pub is_dir: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl RootView {
    /// The empty filesystem of `FROM scratch` (or a stage with no layers yet).
    pub fn empty() -> RootView {
        RootView {
            fs: None,
            _rootfs: None,
        }
    }

    /// The filesystem of a root built by the store; the view holds it (and its lock).
    pub fn open(rootfs: Rootfs) -> Result<RootView> {
        let file = rootfs.file().try_clone().map_err(|e| Error::Image {
            reason: format!("{}: {e}", rootfs.path.display()),
        })?;
        let fs = ext4_view::Ext4::load(Box::new(file)).map_err(|e| Error::Image {
            reason: format!("{}: {e}", rootfs.path.display()),
        })?;
        Ok(RootView {
            fs: Some(fs),
            _rootfs: Some(rootfs),
        })
    }

    /// An ext4 file not held by the store (tests build their own).
    #[cfg(test)]
    pub(crate) fn from_file(file: std::fs::File) -> Result<RootView> {
        let fs = ext4_view::Ext4::load(Box::new(file)).map_err(|e| Error::Image {
            reason: e.to_string(),
        })?;
        Ok(RootView {
            fs: Some(fs),
            _rootfs: None,
        })
    }

    /// The filesystem of a stored image (building its root first if needed).
    pub fn of_image(store: &Store, image: &crate::Image) -> Result<RootView> {
        if image.layers.is_empty() {
            return Ok(RootView::empty());
        }
        let rootfs = store.rootfs(image).map_err(|e| Error::Image {
            reason: e.to_string(),
        })?;
        RootView::open(rootfs)
    }

    /// What is at `path` (absolute, or relative to `/`), following symlinks inside the
    /// image; `None` if nothing is.
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        let components = super::path::components_in_root(path);
        let r = match resolve(self, &components, true) {
            Ok(r) => r,
            Err(Error::Path { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(r.meta.map(|m| Entry {
            path: format!("/{}", r.path.join("/")),
            is_dir: m.kind == Kind::Dir,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        }))
    }

    /// `--chown` resolved against this image's `/etc/passwd` and `/etc/group`.
    pub fn resolve_chown(&self, spec: &str) -> Result<(u32, u32)> {
        let bad = |reason: String| Error::Chown {
            spec: spec.to_string(),
            reason,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(bad("expected USER[:GROUP]".into()));
        }
        let (uid, mut gid) = match user.parse::<u32>() {
            Ok(n) => (n, n),
            Err(_) => {
                let passwd = self.account_file("/etc/passwd")?;
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 4 && f[0] == user)
                    .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .ok_or_else(|| bad(format!("no user {user:?} in the image's /etc/passwd")))?
            }
        };
        if let Some(group) = group {
            gid = match group.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let groups = self.account_file("/etc/group")?;
                    groups
                        .lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() >= 3 && f[0] == group)
                        .and_then(|f| f[2].parse().ok())
                        .ok_or_else(|| {
                            bad(format!("no group {group:?} in the image's /etc/group"))
                        })?
                }
            };
        }
        Ok((uid, gid))
    }

    /// A small text file of the image, or empty if it has none.
    fn account_file(&self, path: &str) -> Result<String> {
        let components = super::path::components_in_root(path);
        let r = match resolve(self, &components, true) {
            Ok(r) => r,
            Err(Error::Path { .. }) => return Ok(String::new()),
            Err(e) => return Err(e),
        };
        let Some(meta) = r.meta.filter(|m| m.kind == Kind::File) else {
            return Ok(String::new());
        };
        if meta.size > MAX_ACCOUNT_FILE {
            return Err(Error::Path {
                path: path.into(),
                reason: format!("larger than {MAX_ACCOUNT_FILE} bytes"),
            });
        }
        let mut text = String::new();
        self.open(&r.path, &meta)?
            .read_to_string(&mut text)
            .map_err(|e| Error::Path {
                path: path.into(),
                reason: e.to_string(),
            })?;
        Ok(text)
    }

    fn ext4_path(path: &[String]) -> String {
        format!("/{}", path.join("/"))
    }

    fn ext4_error(&self, path: &[String], e: ext4_view::Ext4Error) -> Error {
        Error::Path {
            path: format!("image:{}", Self::ext4_path(path)),
            reason: e.to_string(),
        }
    }
}

fn ext4_meta(m: &ext4_view::Metadata) -> Meta {
    let t = m.file_type();
    let kind = if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_char_dev() {
        Kind::Char
    } else if t.is_block_dev() {
        Kind::Block
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    };
    Meta {
        kind,
        mode: u32::from(m.mode()),
        uid: m.uid(),
        gid: m.gid(),
        size: if kind == Kind::File { m.len() } else { 0 },
        mtime: m.modified().seconds().max(0) as u64,
        rdev: 0,
        link_id: None,
    }
}

impl Tree for RootView {
    fn lstat(&self, path: &[String]) -> Result<Option<Meta>> {
        let Some(fs) = &self.fs else {
            return Ok(path.is_empty().then_some(Meta {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                rdev: 0,
                link_id: None,
            }));
        };
        match fs.symlink_metadata(Self::ext4_path(path).as_str()) {
            Ok(m) => Ok(Some(ext4_meta(&m))),
            Err(ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory) => Ok(None),
            Err(e) => Err(self.ext4_error(path, e)),
        }
    }

    fn read_dir(&self, path: &[String]) -> Result<Vec<String>> {
        let Some(fs) = &self.fs else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let dir = Self::ext4_path(path);
        for entry in fs
            .read_dir(dir.as_str())
            .map_err(|e| self.ext4_error(path, e))?
        {
            let entry = entry.map_err(|e| self.ext4_error(path, e))?;
            let name = entry.file_name();
            let name = name.as_str().map_err(|_| Error::Path {
                path: format!("image:{dir}/{}", name.display()),
                reason: "file name is not UTF-8 (not supported by hk build)".into(),
            })?;
            if name != "." && name != ".." {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_link(&self, path: &[String]) -> Result<String> {
        let fs = self.fs.as_ref().expect("an empty root has no symlinks");
        let target = fs
            .read_link(Self::ext4_path(path).as_str())
            .map_err(|e| self.ext4_error(path, e))?;
        target
            .to_str()
            .map(str::to_string)
            .map_err(|_| Error::Path {
                path: format!("image:{}", Self::ext4_path(path)),
                reason: "symlink target is not UTF-8 (not supported by hk build)".into(),
            })
    }

    fn open(&self, path: &[String], _meta: &Meta) -> Result<Box<dyn Read + '_>> {
        let fs = self.fs.as_ref().expect("an empty root has no files");
        let file = fs
            .open(Self::ext4_path(path).as_str())
            .map_err(|e| self.ext4_error(path, e))?;
        Ok(Box::new(file))
    }

    fn describe(&self, path: &[String]) -> String {
        format!("image:{}", Self::ext4_path(path))
    }
}
