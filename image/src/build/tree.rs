//! What a copy reads from, behind one small interface: the build context on the host, or an
//! image's root filesystem ([`super::RootView`]). Paths are component lists relative to the
//! tree's root that [`resolve`] has made free of symlinks, so every lookup after it is a
//! plain `lstat` of a known place: a symlink is only ever followed by [`resolve`], which
//! keeps `..` and absolute targets inside the root (as BuildKit's `fs.RootPath` does).

use super::{Error, Result};
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// What a copy needs of an inode.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub kind: Kind,
    /// Permission bits with set-id and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
    /// Device number for character and block devices.
    pub rdev: u64,
    /// `(device, inode)` when the tree can tell and the file has more than one link:
    /// hardlinks within one copy stay hardlinks.
    pub link_id: Option<(u64, u64)>,
}

/// A directory tree read by path.
pub(crate) trait Tree {
    /// The metadata at `path` without following a final symlink; `None` if nothing is
    /// there (or a parent is not a directory).
    fn lstat(&self, path: &[String]) -> Result<Option<Meta>>;
    /// Entry names of a directory, sorted (the order of the tar and of digests).
    fn read_dir(&self, path: &[String]) -> Result<Vec<String>>;
    fn read_link(&self, path: &[String]) -> Result<String>;
    /// The content of a regular file whose metadata is `meta`.
    fn open(&self, path: &[String], meta: &Meta) -> Result<Box<dyn Read + '_>>;
    /// How to name `path` in an error.
    fn describe(&self, path: &[String]) -> String;
}

/// Most symlinks one resolution follows, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// A path resolved inside a tree.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub path: Vec<String>,
    /// `None` when nothing exists there.
    pub meta: Option<Meta>,
}

/// Resolves `components` inside `tree`, following symlinks in every component but the last
/// (and the last too with `follow_last`), never above the root. Components after the first
/// missing one are kept as written (`..` still removes one), so a destination that does not
/// exist yet still resolves to where it will be created. A component that exists and is
/// not a directory, with more to come, is an error.
pub(crate) fn resolve(
    tree: &dyn Tree,
    components: &[String],
    follow_last: bool,
) -> Result<Resolved> {
    let mut todo: std::collections::VecDeque<String> = components.iter().cloned().collect();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    let mut missing = false;
    let mut last_meta = None;
    while let Some(c) = todo.pop_front() {
        if c == "." || c.is_empty() {
            continue;
        }
        if c == ".." {
            cur.pop();
            continue;
        }
        cur.push(c);
        if missing {
            continue;
        }
        let meta = tree.lstat(&cur)?;
        match meta {
            None => {
                missing = true;
                last_meta = None;
            }
            Some(m) if m.kind == Kind::Symlink && (follow_last || !todo.is_empty()) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::Path {
                        path: tree.describe(&cur),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                let target = tree.read_link(&cur)?;
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_string());
                }
            }
            Some(m) if m.kind != Kind::Dir && !todo.is_empty() => {
                return Err(Error::Path {
                    path: tree.describe(&cur),
                    reason: "not a directory".into(),
                });
            }
            Some(m) => last_meta = Some(m),
        }
    }
    if cur.is_empty() {
        last_meta = tree.lstat(&cur)?;
    }
    Ok(Resolved {
        path: cur,
        meta: if missing { None } else { last_meta },
    })
}

/// The build context: a host directory. Lookups are `lstat`s below the root of paths that
/// [`resolve`] made symlink-free; file contents are opened with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)` against the root's descriptor, so even a context rewritten while
/// the build reads it (a directory swapped for a symlink to `/`) cannot make hk read a
/// file outside it.
pub(crate) struct HostTree {
    root: std::path::PathBuf,
    root_fd: std::fs::File,
}

impl HostTree {
    pub(crate) fn open(root: &std::path::Path) -> Result<HostTree> {
        let root_fd = std::fs::File::open(root).map_err(|e| Error::Context {
            path: root.display().to_string(),
            reason: e.to_string(),
        })?;
        if !root_fd.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::Context {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        Ok(HostTree {
            root: root.to_path_buf(),
            root_fd,
        })
    }

    fn host_path(&self, path: &[String]) -> std::path::PathBuf {
        let mut p = self.root.clone();
        p.extend(path);
        p
    }

    fn io_error(&self, path: &[String], e: std::io::Error) -> Error {
        Error::Path {
            path: self.describe(path),
            reason: e.to_string(),
        }
    }

    /// Opens a file below the root without following any symlink on the way.
    fn open_beneath(&self, path: &[String]) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let rel = std::ffi::CString::new(path.join("/"))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: openat2 reads `how` (sized as passed) and the NUL-terminated path, both
        // alive for the call; a non-negative result is a new descriptor we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root_fd.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(e);
            }
            // Linux before 5.6: the path is symlink-free as resolved; O_NOFOLLOW still
            // refuses a final symlink swapped in since.
            use std::os::unix::fs::OpenOptionsExt;
            return std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.host_path(path));
        }
        // SAFETY: fd is a fresh descriptor returned by the kernel above.
        Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
    }
}

fn host_meta(m: &std::fs::Metadata) -> Meta {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let t = m.file_type();
    let kind = if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_char_device() {
        Kind::Char
    } else if t.is_block_device() {
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
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: if kind == Kind::File { m.size() } else { 0 },
        mtime: m.mtime().max(0) as u64,
        rdev: m.rdev(),
        link_id: (kind == Kind::File && m.nlink() > 1).then(|| (m.dev(), m.ino())),
    }
}

impl Tree for HostTree {
    fn lstat(&self, path: &[String]) -> Result<Option<Meta>> {
        match std::fs::symlink_metadata(self.host_path(path)) {
            Ok(m) => Ok(Some(host_meta(&m))),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.io_error(path, e)),
        }
    }

    fn read_dir(&self, path: &[String]) -> Result<Vec<String>> {
        let dir = self.host_path(path);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| self.io_error(path, e))? {
            let entry = entry.map_err(|e| self.io_error(path, e))?;
            let name = entry.file_name().into_string().map_err(|raw| Error::Path {
                path: format!("{}/{}", self.describe(path), raw.to_string_lossy()),
                reason: "file name is not UTF-8 (not supported by hk build)".into(),
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    fn read_link(&self, path: &[String]) -> Result<String> {
        let target =
            std::fs::read_link(self.host_path(path)).map_err(|e| self.io_error(path, e))?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| Error::Path {
                path: self.describe(path),
                reason: "symlink target is not UTF-8 (not supported by hk build)".into(),
            })
    }

    fn open(&self, path: &[String], meta: &Meta) -> Result<Box<dyn Read + '_>> {
        use std::os::unix::fs::MetadataExt;
        let file = self
            .open_beneath(path)
            .map_err(|e| self.io_error(path, e))?;
        let now = file.metadata().map_err(|e| self.io_error(path, e))?;
        if !now.is_file() || meta.link_id.is_some_and(|(_, ino)| ino != now.ino()) {
            return Err(Error::Path {
                path: self.describe(path),
                reason: "changed while the build was reading it".into(),
            });
        }
        Ok(Box::new(file))
    }

    fn describe(&self, path: &[String]) -> String {
        format!("/{}", path.join("/"))
    }
}
