//! The container's layer: what a run changed in its root, as an OCI image layer tar
//! (`hk build` turns a RUN step's changes into the image's next layer this way; the
//! protocol's `diff` request, docs/agent-protocol.md).
//!
//! The root is an overlay whose upper directory holds exactly what changed: new and
//! modified files whole, deleted ones as whiteouts (character devices 0:0), directories
//! whose lower contents were replaced as opaque directories (xattr
//! `trusted.overlay.opaque` = `y`). [`write_layer`] walks that directory and translates it
//! to the OCI layer format (image-spec layer.md): whiteouts become empty `.wh.<name>`
//! files, opaque directories get a `.wh..wh..opq` entry before their children, and
//! overlay's own xattrs are left out. Directories overlay copied up only to hold a changed
//! child are written too, with their metadata, as docker writes the parents of what
//! changed.
//!
//! The output is deterministic for a given tree: each directory's entries are written in
//! the byte order of their names, directories before their contents. Memory is bounded by
//! one directory listing per level of the walk and the map of hard-linked inodes.
//!
//! [`export_root`] is the VM's half: it quiesces the container's root and walks the upper
//! directory that [`remember_upper`] kept a descriptor of before the switch into the root
//! (the agent cannot reach it by a path from inside).

use hk_agent_protocol::DiffSummary;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tar::{EntryType, Header};

/// The OCI whiteout prefix: `.wh.<name>` deletes `<name>` of the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque marker: the directory holding it hides what lower layers have in it.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Overlay's own xattrs: never part of the layer. `user.overlay.` is where overlay keeps
/// them when mounted with `userxattr`.
const OVERLAY_XATTRS: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Paths the agent itself created in the root as mount points, relative to the root.
///
/// Why they are left out: `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` and missing
/// mount targets exist in the upper only because the agent needed something to mount
/// over (container.rs `etc_files`, mounts.rs). They are the runtime's, not the step's:
/// written into the layer they would add an empty `/etc/hosts` to an image that had none,
/// or, where the agent replaced the image's `/etc/resolv.conf` symlink with a file to
/// mount over, replace the image's symlink with an empty file. BuildKit removes such
/// stubs after a step for the same reason. A file stub is left out while it is still the
/// empty regular file the agent made (what the step wrote through the mount went to the
/// runtime's file, not here); a directory stub is written only if something the step
/// created in it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stubs {
    pub files: BTreeSet<PathBuf>,
    pub dirs: BTreeSet<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static STUBS: Mutex<Stubs> = Mutex::new(Stubs {
    files: BTreeSet::new(),
    dirs: BTreeSet::new(),
});
static UPPER: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Keeps a descriptor of the root's upper directory for [`export_root`] (called by the
/// container setup before it switches into the root, after which no path leads there).
pub fn remember_upper(dir: &Path) -> Result<(), String> {
    let fd = File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    *lock(&UPPER) = Some(fd.into());
    Ok(())
}

/// Creates the mount point `path` (absolute, under `root`) where it is missing, as a
/// directory or an empty file, and records what it created as [`Stubs`]. The nearest
/// directory that existed keeps its times, so the copy of it overlay makes in the upper
/// carries the image's metadata rather than the moment of the setup.
pub fn create_stub(root: &Path, path: &Path, file: bool) -> io::Result<()> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut existing = rel.parent();
    let mut missing_dirs = Vec::new();
    while let Some(dir) = existing {
        if dir.as_os_str().is_empty() || fs::symlink_metadata(root.join(dir)).is_ok() {
            break;
        }
        missing_dirs.push(dir.to_path_buf());
        existing = dir.parent();
    }
    let kept = existing.unwrap_or(Path::new(""));
    let times = fs::symlink_metadata(root.join(kept)).ok();
    let mut stubs = lock(&STUBS);
    for dir in missing_dirs.iter().rev() {
        fs::create_dir(root.join(dir))?;
        stubs.dirs.insert(dir.clone());
    }
    if file {
        fs::write(root.join(rel), b"")?;
        stubs.files.insert(rel.to_path_buf());
    } else {
        fs::create_dir(root.join(rel))?;
        stubs.dirs.insert(rel.to_path_buf());
    }
    if let Some(meta) = times {
        // The root directory itself is never part of a layer; any other keeps its times.
        if !kept.as_os_str().is_empty() {
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &root.join(kept),
                &nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
                &nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(())
}

/// Records `path` (absolute in the container) as a file stub the agent made by other
/// means (replacing a symlink with a file to mount over).
pub fn record_file_stub(path: &Path) {
    let rel = path.strip_prefix("/").unwrap_or(path);
    lock(&STUBS).files.insert(rel.to_path_buf());
}

/// The VM's diff: checks the container can be exported, quiesces its root, and writes its
/// upper layer to `out`.
///
/// Quiescing: every process must be gone (the server refuses a diff while one of its
/// processes runs; this waits briefly for the rest of the VM's processes, which a main
/// process's end has just killed, and refuses if any stays). Then `sync`, and the root's
/// overlay is remounted read-only, which the kernel refuses while a file on it is open
/// for writing, so from then on nothing can change the upper through the overlay; the
/// walk reads the upper directory itself. The mounts under the root (proc, the /etc
/// files, volumes) stay: none of them is part of the upper directory, so unmounting them
/// would change nothing in the layer. The root stays read-only afterwards; a diff is the
/// last thing a build step's VM does.
pub fn export_root(out: &mut (dyn Write + Send)) -> Result<DiffSummary, String> {
    let upper = lock(&UPPER)
        .as_ref()
        .ok_or("the container has no writable root (set up with an upper disk) to take a diff of")?
        .try_clone()
        .map_err(|e| format!("the upper directory: {e}"))?;
    wait_for_no_processes(Duration::from_secs(2))?;
    nix::unistd::sync();
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| format!("remount the root read-only: {e}"))?;
    let stubs = lock(&STUBS).clone();
    // The walk's own thread gets its own working directory (unshare(CLONE_FS) is per
    // thread), so the upper directory can be its working directory without moving any
    // other thread's.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(|e| format!("unshare: {e}"))?;
            nix::unistd::fchdir(&upper).map_err(|e| format!("the upper directory: {e}"))?;
            write_layer(Path::new("."), &stubs, out).map_err(|e| format!("diff: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the diff walk panicked".into()))
    })
}

/// Waits up to `timeout` until PID 1 (the agent) is the only process left outside the
/// kernel's own threads; names what still runs if that does not happen.
fn wait_for_no_processes(timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = other_processes()?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes still run in the container ({}); a diff needs them ended",
                left.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes other than PID 1, kernel threads and zombies (which hold nothing open), as
/// `pid (comm)`.
fn other_processes() -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == 1 {
            continue;
        }
        // It may have ended since the listing.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold anything, so split after its ')'.
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(')')) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        // kthreadd is 2 with parent 0; kernel threads are its children.
        if ppid == 0 || ppid == 2 || state == "Z" || state == "X" {
            continue;
        }
        found.push(format!("{pid} ({comm})"));
    }
    Ok(found)
}

/// Counts what passes through, for [`DiffSummary::bytes`].
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file's contents, exactly `left` bytes: a file that shrank under the walk is an error
/// rather than an entry whose header and contents disagree.
struct Exact {
    file: File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file shrank while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the overlay upper directory `upper` as an OCI layer tar to `out`, leaving out
/// `stubs`; returns the entries written and the archive's size.
pub fn write_layer<W: Write>(upper: &Path, stubs: &Stubs, out: W) -> io::Result<DiffSummary> {
    let mut walk = Walk {
        upper,
        stubs,
        tar: tar::Builder::new(Counting {
            inner: out,
            bytes: 0,
        }),
        entries: 0,
        links: HashMap::new(),
        pending: Vec::new(),
    };
    walk.dir(Path::new(""))?;
    walk.tar.finish()?;
    let entries = walk.entries;
    let mut counting = walk.tar.into_inner()?;
    counting.flush()?;
    Ok(DiffSummary {
        entries,
        bytes: counting.bytes,
    })
}

struct Walk<'a, W: Write> {
    upper: &'a Path,
    stubs: &'a Stubs,
    tar: tar::Builder<Counting<W>>,
    entries: u64,
    /// Hard-linked inodes seen, (device, inode) -> the name first written for them.
    links: HashMap<(u64, u64), PathBuf>,
    /// Stub directories whose entries wait for a child to be written.
    pending: Vec<(PathBuf, Metadata)>,
}

impl<W: Write> Walk<'_, W> {
    /// Writes the contents of directory `rel` (relative to the upper; "" is its root).
    fn dir(&mut self, rel: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(self.upper.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            self.entry(rel, &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, parent: &Path, name: &OsStr) -> io::Result<()> {
        let rel = parent.join(name);
        let path = self.upper.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", rel.display()));

        if kind.is_char_device() && meta.rdev() == 0 {
            // A whiteout. Overlay makes them hard links of one inode, so this comes
            // before the hard-link check. docker's overlay converter writes them as
            // 0600 files with the whiteout's owner and time.
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let mut header = header_for(&meta, EntryType::Regular);
            header.set_mode(0o600);
            header.set_size(0);
            return self.append(&parent.join(wh), &mut header, &[], io::empty());
        }
        let xattrs = xattrs(&path).map_err(context)?;
        for (key, _) in &xattrs {
            if key.starts_with(b"trusted.overlay.redirect")
                || key.starts_with(b"trusted.overlay.metacopy")
            {
                // The entry's data or contents live elsewhere (redirect_dir, metacopy):
                // a walk of the upper alone would write a wrong layer.
                return Err(context(io::Error::other(format!(
                    "overlay xattr {} (redirect_dir or metacopy) cannot be exported",
                    String::from_utf8_lossy(key)
                ))));
            }
        }
        let pax = pax_xattrs(&xattrs);

        if kind.is_dir() {
            let opaque = xattrs.iter().any(|(k, v)| {
                (k == b"trusted.overlay.opaque" || k == b"user.overlay.opaque") && v == b"y"
            });
            if self.stubs.dirs.contains(&rel) && !opaque && pax.is_empty() {
                self.pending.push((rel.clone(), meta));
                self.dir(&rel).map_err(context)?;
                if self.pending.last().is_some_and(|(p, _)| *p == rel) {
                    self.pending.pop();
                }
                return Ok(());
            }
            let mut header = header_for(&meta, EntryType::Directory);
            self.append(&dir_name(&rel), &mut header, &pax, io::empty())?;
            if opaque {
                let mut marker = header_for(&meta, EntryType::Regular);
                marker.set_mode(meta.mode() & 0o777);
                marker.set_size(0);
                self.append(&rel.join(OPAQUE_MARKER), &mut marker, &[], io::empty())?;
            }
            return self.dir(&rel).map_err(context);
        }

        if kind.is_file() && self.stubs.files.contains(&rel) && meta.len() == 0 {
            return Ok(());
        }
        if meta.nlink() > 1 {
            match self.links.get(&(meta.dev(), meta.ino())) {
                Some(first) => {
                    let first = first.clone();
                    let mut header = header_for(&meta, EntryType::Link);
                    header.set_size(0);
                    self.flush_pending()?;
                    self.tar.append_link(&mut header, &rel, &first)?;
                    self.entries += 1;
                    return Ok(());
                }
                None => {
                    self.links.insert((meta.dev(), meta.ino()), rel.clone());
                }
            }
        }

        if kind.is_file() {
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(context)?;
            let mut header = header_for(&meta, EntryType::Regular);
            header.set_size(meta.len());
            let data = Exact {
                file,
                left: meta.len(),
            };
            self.append(&rel, &mut header, &pax, data).map_err(context)
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(context)?;
            let mut header = header_for(&meta, EntryType::Symlink);
            header.set_size(0);
            self.write_pax(&rel, &pax)?;
            self.tar.append_link(&mut header, &rel, &target)?;
            self.entries += 1;
            Ok(())
        } else if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            let entry_type = if kind.is_fifo() {
                EntryType::Fifo
            } else if kind.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut header = header_for(&meta, entry_type);
            header.set_size(0);
            if !kind.is_fifo() {
                let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
            }
            self.append(&rel, &mut header, &pax, io::empty())
        } else {
            // A socket: no layer format holds one (docker skips them too).
            Ok(())
        }
    }

    /// Writes the stub directories waiting for a child, outermost first.
    fn flush_pending(&mut self) -> io::Result<()> {
        for (rel, meta) in std::mem::take(&mut self.pending) {
            let mut header = header_for(&meta, EntryType::Directory);
            self.tar
                .append_data(&mut header, dir_name(&rel), io::empty())?;
            self.entries += 1;
        }
        Ok(())
    }

    fn append(
        &mut self,
        name: &Path,
        header: &mut Header,
        pax: &[(String, Vec<u8>)],
        data: impl Read,
    ) -> io::Result<()> {
        self.write_pax(name, pax)?;
        self.tar.append_data(header, name, data)?;
        self.entries += 1;
        Ok(())
    }

    /// A PAX extended header carrying `records` for the entry that follows (after any
    /// pending stub directories, which carry none).
    fn write_pax(&mut self, name: &Path, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        self.flush_pending()?;
        if records.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend_from_slice(&pax_record(key, value));
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        // The name of an extended header is informative only; keep it short and valid.
        let base = name
            .file_name()
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
            .unwrap_or_default();
        let base: String = base.chars().filter(|c| *c != '/').take(80).collect();
        header.set_path(format!("PaxHeaders/{base}"))?;
        header.set_cksum();
        self.tar.append(&header, &data[..])
    }
}

/// A directory's name in the layer: relative, with a trailing slash.
fn dir_name(rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_owned();
    name.push("/");
    PathBuf::from(name)
}

/// A GNU header (long names and big sizes or ids fit) with `meta`'s mode, owner and time.
fn header_for(meta: &Metadata, entry_type: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_size(0);
    header
}

/// One PAX record: "<length> <key>=<value>\n", the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The xattrs of a layer entry as PAX records, overlay's own left out. A name that is not
/// UTF-8 cannot be a PAX key and is left out too (no filesystem namespace allows one that
/// a container would use).
fn pax_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    xattrs
        .iter()
        .filter(|(k, _)| !OVERLAY_XATTRS.iter().any(|p| k.starts_with(p.as_bytes())))
        .filter_map(|(k, v)| {
            let k = std::str::from_utf8(k).ok()?;
            Some((format!("SCHILY.xattr.{k}"), v.clone()))
        })
        .collect()
}

/// Every xattr of `path` (not following a symlink), sorted by name.
fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let names = xattr_call(|buf, len| {
        // SAFETY: llistxattr writes at most `len` bytes to `buf`.
        unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        let value = match xattr_call(|buf, len| {
            // SAFETY: lgetxattr writes at most `len` bytes to `buf`.
            unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf.cast(), len) }
        }) {
            Ok(v) => v,
            // Removed since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Calls a list/get xattr function with a buffer of the size it asks for; retries if the
/// value grew in between.
fn xattr_call(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            let e = io::Error::last_os_error();
            // A filesystem without xattrs has none to give.
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tests that build whiteouts (`mknod c 0 0`) and `trusted.*` xattrs need root
    //! (CAP_MKNOD, CAP_SYS_ADMIN); they fail, not skip, without it.
    use super::*;
    use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};

    fn need_root() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root: it makes overlay whiteouts (mknod 0:0) and trusted.* xattrs"
        );
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: NUL-terminated path and name, a value of `value.len()` bytes.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "setxattr {name} on {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }

    fn mkdir(root: &Path, rel: &str, mode: u32) {
        let p = root.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file(root: &Path, rel: &str, contents: &[u8], mode: u32) {
        let p = root.join(rel);
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// One parsed entry, in a form that compares whole.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        name: String,
        kind: char,
        mode: u32,
        owner: (u64, u64),
        /// Link target, device numbers or contents, as fits the kind.
        detail: String,
        xattrs: Vec<(String, Vec<u8>)>,
    }

    fn seen(name: &str, kind: char, mode: u32, owner: (u64, u64), detail: &str) -> Seen {
        Seen {
            name: name.into(),
            kind,
            mode,
            owner,
            detail: detail.into(),
            xattrs: Vec::new(),
        }
    }

    fn parse(tar_bytes: &[u8]) -> Vec<Seen> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let kind = match header.entry_type() {
                EntryType::Regular => 'f',
                EntryType::Directory => 'd',
                EntryType::Symlink => 'l',
                EntryType::Link => 'h',
                EntryType::Fifo => 'p',
                EntryType::Char => 'c',
                EntryType::Block => 'b',
                other => panic!("unexpected entry type {other:?}"),
            };
            let mut xattrs = Vec::new();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    xattrs.push((ext.key().unwrap().to_string(), ext.value_bytes().to_vec()));
                }
            }
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let detail = match kind {
                'l' | 'h' => {
                    String::from_utf8(entry.link_name_bytes().unwrap().into_owned()).unwrap()
                }
                'c' | 'b' => format!(
                    "{}:{}",
                    header.device_major().unwrap().unwrap(),
                    header.device_minor().unwrap().unwrap()
                ),
                _ => {
                    let mut s = String::new();
                    entry.read_to_string(&mut s).unwrap();
                    s
                }
            };
            out.push(Seen {
                name,
                kind,
                mode: header.mode().unwrap(),
                owner: (header.uid().unwrap(), header.gid().unwrap()),
                detail,
                xattrs,
            });
        }
        out
    }

    /// An upper directory as overlay leaves it after a step that changed a bit of
    /// everything, and the stubs the agent made in it.
    fn fake_upper(root: &Path) -> Stubs {
        // A stub directory left empty (a volume was mounted over it), and one the step
        // wrote into before anything covered it.
        mkdir(root, "cache", 0o755);
        file(root, "cache/x", b"kept", 0o644);
        mkdir(root, "data", 0o755);
        // A device node that is not a whiteout.
        mkdir(root, "dev", 0o755);
        mknod(
            &root.join("dev/null2"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        fs::set_permissions(root.join("dev/null2"), fs::Permissions::from_mode(0o666)).unwrap();
        // /etc, copied up for the stubs the agent mounted over: hosts is still the empty
        // stub; resolv.conf was a stub the step then wrote through after unmounting it.
        mkdir(root, "etc", 0o755);
        file(root, "etc/hosts", b"", 0o644);
        file(root, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
        file(root, "etc/resolv.conf", b"nameserver 10.0.2.3\n", 0o644);
        set_mtime(&root.join("etc/passwd"), 1_700_000_000);
        // A file with a user xattr; a directory with overlay's own, which stay out.
        mkdir(root, "home", 0o755);
        file(root, "home/f", b"x", 0o600);
        set_xattr(&root.join("home/f"), "user.comment", b"hello\0bin");
        set_xattr(&root.join("home"), "trusted.overlay.origin", b"\x00\xfb");
        // Opaque under userxattr.
        mkdir(root, "opt/u", 0o750);
        set_xattr(&root.join("opt/u"), "user.overlay.opaque", b"y");
        mkdir(root, "run", 0o755);
        nix::unistd::mkfifo(&root.join("run/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        // A socket, which no layer can hold.
        let _sock = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();
        mkdir(root, "tmp", 0o1777);
        // Hard links, a symlink, a setuid program of another owner.
        mkdir(root, "usr/bin", 0o755);
        file(root, "usr/bin/a", b"same inode", 0o755);
        fs::hard_link(root.join("usr/bin/a"), root.join("usr/bin/b")).unwrap();
        symlink("/usr/bin/vim", root.join("usr/bin/vi")).unwrap();
        lchown(root.join("usr/bin/vi"), Some(7), Some(8)).unwrap();
        mkdir(root, "usr/local/bin", 0o755);
        file(root, "usr/local/bin/tool", b"#!/bin/sh\n", 0o755);
        lchown(root.join("usr/local/bin/tool"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(
            root.join("usr/local/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        // A deleted directory: overlay's whiteout.
        mkdir(root, "usr/share", 0o755);
        mknod(
            &root.join("usr/share/doc"),
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .unwrap();
        // A directory replaced whole: opaque, with new contents.
        mkdir(root, "var/cache/apt", 0o755);
        set_xattr(&root.join("var/cache/apt"), "trusted.overlay.opaque", b"y");
        file(root, "var/cache/apt/pkgcache.bin", b"new", 0o644);
        Stubs {
            files: ["etc/hosts", "etc/resolv.conf"].map(PathBuf::from).into(),
            dirs: ["cache", "data"].map(PathBuf::from).into(),
        }
    }

    #[test]
    fn an_upper_directory_becomes_the_exact_oci_layer() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stubs = fake_upper(root);
        let mut out = Vec::new();
        let summary = write_layer(root, &stubs, &mut out).unwrap();
        let entries = parse(&out);
        let mut want = vec![
            seen("cache/", 'd', 0o755, (0, 0), ""),
            seen("cache/x", 'f', 0o644, (0, 0), "kept"),
            seen("dev/", 'd', 0o755, (0, 0), ""),
            seen("dev/null2", 'c', 0o666, (0, 0), "1:3"),
            seen("etc/", 'd', 0o755, (0, 0), ""),
            seen(
                "etc/passwd",
                'f',
                0o644,
                (0, 0),
                "root:x:0:0::/root:/bin/sh\n",
            ),
            seen(
                "etc/resolv.conf",
                'f',
                0o644,
                (0, 0),
                "nameserver 10.0.2.3\n",
            ),
            seen("home/", 'd', 0o755, (0, 0), ""),
            seen("home/f", 'f', 0o600, (0, 0), "x"),
            seen("opt/", 'd', 0o755, (0, 0), ""),
            seen("opt/u/", 'd', 0o750, (0, 0), ""),
            seen("opt/u/.wh..wh..opq", 'f', 0o750, (0, 0), ""),
            seen("run/", 'd', 0o755, (0, 0), ""),
            seen("run/fifo", 'p', 0o600, (0, 0), ""),
            seen("tmp/", 'd', 0o1777, (0, 0), ""),
            seen("usr/", 'd', 0o755, (0, 0), ""),
            seen("usr/bin/", 'd', 0o755, (0, 0), ""),
            seen("usr/bin/a", 'f', 0o755, (0, 0), "same inode"),
            seen("usr/bin/b", 'h', 0o755, (0, 0), "usr/bin/a"),
            seen("usr/bin/vi", 'l', 0o777, (7, 8), "/usr/bin/vim"),
            seen("usr/local/", 'd', 0o755, (0, 0), ""),
            seen("usr/local/bin/", 'd', 0o755, (0, 0), ""),
            seen(
                "usr/local/bin/tool",
                'f',
                0o4755,
                (1000, 1001),
                "#!/bin/sh\n",
            ),
            seen("usr/share/", 'd', 0o755, (0, 0), ""),
            seen("usr/share/.wh.doc", 'f', 0o600, (0, 0), ""),
            seen("var/", 'd', 0o755, (0, 0), ""),
            seen("var/cache/", 'd', 0o755, (0, 0), ""),
            seen("var/cache/apt/", 'd', 0o755, (0, 0), ""),
            seen("var/cache/apt/.wh..wh..opq", 'f', 0o755, (0, 0), ""),
            seen("var/cache/apt/pkgcache.bin", 'f', 0o644, (0, 0), "new"),
        ];
        want[8].xattrs = vec![("SCHILY.xattr.user.comment".into(), b"hello\0bin".to_vec())];
        assert_eq!(entries, want);
        assert_eq!(summary.entries, want.len() as u64);
        assert_eq!(summary.bytes, out.len() as u64);
        // The archive ends properly: two zero blocks.
        assert!(out.len() % 512 == 0 && out[out.len() - 1024..].iter().all(|b| *b == 0));

        // Times pass through; names are relative with no `.` or `..`.
        let mut archive = tar::Archive::new(&out[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            assert!(!name.starts_with('/') && !name.starts_with("./"), "{name}");
            assert!(!name.split('/').any(|c| c == ".."), "{name}");
            if name == "etc/passwd" {
                assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
            }
        }

        // The same tree gives the same bytes.
        let mut again = Vec::new();
        write_layer(root, &stubs, &mut again).unwrap();
        assert!(again == out, "the layer is not deterministic");
    }

    #[test]
    fn long_names_and_link_targets_survive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let deep = format!("{}/{}", "d".repeat(90), "e".repeat(90));
        mkdir(root, &deep, 0o755);
        let long_file = format!("{deep}/{}", "f".repeat(120));
        file(root, &long_file, b"long", 0o644);
        let target = "t".repeat(150);
        symlink(&target, root.join("link")).unwrap();
        let mut out = Vec::new();
        let summary = write_layer(root, &Stubs::default(), &mut out).unwrap();
        let names: Vec<(String, String)> = parse(&out)
            .into_iter()
            .map(|s| (s.name, s.detail))
            .collect();
        assert_eq!(
            names,
            vec![
                (format!("{}/", "d".repeat(90)), String::new()),
                (format!("{deep}/"), String::new()),
                (long_file, "long".into()),
                ("link".into(), target),
            ]
        );
        assert_eq!(summary.entries, 4);
    }

    #[test]
    fn an_empty_upper_is_an_empty_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let summary = write_layer(dir.path(), &Stubs::default(), &mut out).unwrap();
        assert_eq!(
            summary,
            DiffSummary {
                entries: 0,
                bytes: 1024
            }
        );
        assert!(parse(&out).is_empty());
    }

    #[test]
    fn redirected_or_metacopy_entries_are_refused() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        mkdir(dir.path(), "moved", 0o755);
        set_xattr(
            &dir.path().join("moved"),
            "trusted.overlay.redirect",
            b"/old",
        );
        let err = write_layer(dir.path(), &Stubs::default(), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("redirect_dir or metacopy"),
            "{err}"
        );
    }

    #[test]
    fn stubs_are_created_and_recorded_and_the_parent_keeps_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        mkdir(root, "etc", 0o755);
        set_mtime(&root.join("etc"), 1_600_000_000);
        create_stub(root, Path::new("/etc/hosts"), true).unwrap();
        create_stub(root, Path::new("/mnt/a/b"), false).unwrap();
        assert_eq!(fs::read(root.join("etc/hosts")).unwrap(), b"");
        assert!(root.join("mnt/a/b").is_dir());
        assert_eq!(
            fs::metadata(root.join("etc")).unwrap().mtime(),
            1_600_000_000
        );
        let stubs = lock(&STUBS).clone();
        assert!(stubs.files.contains(Path::new("etc/hosts")));
        for d in ["mnt", "mnt/a", "mnt/a/b"] {
            assert!(stubs.dirs.contains(Path::new(d)), "{d}: {stubs:?}");
        }
        // None of it reaches a layer; the parent that existed does.
        let mut out = Vec::new();
        write_layer(root, &stubs, &mut out).unwrap();
        let names: Vec<String> = parse(&out).into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["etc/"]);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        // " k=" and "\n" are 4 bytes: 4 bytes of value make 9 with the length's digit;
        // 5 would make 10, which has two digits, so the record is 11 long.
        assert_eq!(pax_record("k", b"vvvv"), b"9 k=vvvv\n");
        assert_eq!(pax_record("k", b"vvvvv"), b"11 k=vvvvv\n");
        for n in 0..1100 {
            let r = pax_record("SCHILY.xattr.user.x", &vec![b'v'; n]);
            let (len, _) = r.split_at(r.iter().position(|b| *b == b' ').unwrap());
            assert_eq!(std::str::from_utf8(len).unwrap(), r.len().to_string());
        }
    }
}
