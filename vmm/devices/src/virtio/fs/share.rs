//! The filesystem one share serves: fuse-backend-rs's `PassthroughFs` rooted at the share's
//! directory, behind the rules hk adds on the host side (docs/virtio-fs.md):
//!
//! - **Read-only** shares answer every operation that would change the host's tree with
//!   EROFS here, whatever the guest mounted with.
//! - **Ownership**: every host operation runs as the host user running hk (the inner
//!   filesystem is always called with uid 0 / gid 0, which makes `PassthroughFs` skip its
//!   per-thread setresuid dance, impossible without privileges anyway). The owner and mode
//!   the guest asks for (at creation, chown, chmod) are kept in the `user.hk.override_stat`
//!   xattr (`UID:GID:0MODE`, as podman's `user.containers.override_stat`) and shown back to
//!   the guest in every attribute reply. Files without it show the host's owner and mode, as
//!   docker's bind mounts do.
//! - **No privileged files**: S_ISUID and S_ISGID are stripped on creation and chmod (on the
//!   host and in what the guest sees); character and block devices are refused (EPERM);
//!   RENAME_WHITEOUT (which makes a 0:0 character device) is refused.
//! - The host copy always keeps its owner's read and write bits (and search, for
//!   directories), so the host user can read, clean and back up what the guest wrote, and a
//!   guest root writing a file it made 0444 still works; the guest sees its own mode.
//! - **Extended attributes are off for the guest** (ENOSYS, which a Linux guest remembers):
//!   the override cannot be forged or seen, and writes skip the `security.capability` round
//!   trip FUSE makes per write when xattrs are on.
//! - Guest-controlled sizes that `PassthroughFs` allocates from are capped (readdir).

use super::Cache;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, PassthroughFs};
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

/// Where the guest's view of owner and mode is kept on the host.
pub const OVERRIDE_XATTR: &CStr = c"user.hk.override_stat";
/// Bytes of a readdir reply the host builds at once, whatever the guest asks for.
pub const MAX_READDIR: u32 = 1 << 20;

const SUGID: u32 = libc::S_ISUID | libc::S_ISGID;
const PERMS: u32 = 0o7777;
/// The open(2) flag bits that make a file rather than open one.
const NOT_OPEN: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | (libc::O_TMPFILE & !libc::O_DIRECTORY);
const RENAME_WHITEOUT: u32 = 1 << 2;

type Inode = u64;
type Handle = u64;

/// The owner and mode the guest set, as stored in [`OVERRIDE_XATTR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (07777).
    pub mode: u32,
}

impl Owner {
    pub fn parse(bytes: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.trim_end_matches('\0').split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let mode = u32::from_str_radix(parts.next()?, 8).ok()? & PERMS;
        parts.next().is_none().then_some(Owner { uid, gid, mode })
    }

    pub fn encode(&self) -> String {
        format!("{}:{}:0{:o}", self.uid, self.gid, self.mode)
    }

    fn of(st: &stat64) -> Owner {
        Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & PERMS,
        }
    }

    fn apply(&self, st: &mut stat64) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = (st.st_mode & libc::S_IFMT) | self.mode;
    }
}

impl Cache {
    /// The passthrough file system's policy, and its entry and attribute timeout.
    pub(super) fn policy(self) -> (CachePolicy, Duration) {
        match self {
            Cache::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
            Cache::Always => (CachePolicy::Always, Duration::from_secs(86400)),
            Cache::Never => (CachePolicy::Never, Duration::ZERO),
        }
    }
}

pub(super) struct ShareFs {
    inner: PassthroughFs,
    read_only: bool,
    cache: Cache,
    /// Host filesystems (by `st_dev`) that answered EOPNOTSUPP for the override xattr: they
    /// can hold no override, so their attribute replies skip the `getxattr`, a path lookup
    /// through /proc/self/fd that would fail the same way on every reply of a walk.
    no_xattrs: Mutex<Vec<u64>>,
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// The context the inner filesystem runs every operation with: the host user itself.
fn host(ctx: &Context) -> Context {
    let mut host = Context::new();
    host.pid = ctx.pid;
    host
}

fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_symlink(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFLNK
}

/// The mode a guest-requested `mode` gets on the host: no set-id bits, and the host user
/// keeps read and write (and search on directories).
fn host_mode(mode: u32, dir: bool) -> u32 {
    (mode & 0o1777) | if dir { 0o700 } else { 0o600 }
}

impl ShareFs {
    pub(super) fn new(inner: PassthroughFs, read_only: bool, cache: Cache) -> ShareFs {
        ShareFs {
            inner,
            read_only,
            cache,
            no_xattrs: Mutex::new(Vec::new()),
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }

    fn root(&self) -> Context {
        Context::new()
    }

    /// The override stored on `inode`, if any.
    fn stored(&self, inode: Inode) -> Option<Owner> {
        match self.inner.getxattr(&self.root(), inode, OVERRIDE_XATTR, 64) {
            Ok(GetxattrReply::Value(v)) => Owner::parse(&v),
            _ => None,
        }
    }

    fn store(&self, inode: Inode, owner: Owner) -> io::Result<()> {
        self.inner.setxattr(
            &self.root(),
            inode,
            OVERRIDE_XATTR,
            owner.encode().as_bytes(),
            0,
        )
    }

    /// Rewrites `st` as the guest should see it.
    fn show(&self, inode: Inode, st: &mut stat64) {
        if is_symlink(st.st_mode) {
            return;
        }
        let no_xattrs = || self.no_xattrs.lock().unwrap_or_else(|e| e.into_inner());
        if no_xattrs().contains(&st.st_dev) {
            return;
        }
        match self.inner.getxattr(&self.root(), inode, OVERRIDE_XATTR, 64) {
            Ok(GetxattrReply::Value(v)) => {
                if let Some(owner) = Owner::parse(&v) {
                    owner.apply(st);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => no_xattrs().push(st.st_dev),
            _ => {}
        }
    }

    /// A node the guest just made: records the owner and mode it asked for when they differ
    /// from the host's (best effort: a host filesystem without user xattrs shows the host's).
    fn made(&self, ctx: &Context, entry: &mut Entry, guest_mode: u32) {
        let want = Owner {
            uid: ctx.uid,
            gid: ctx.gid,
            mode: guest_mode & PERMS & !SUGID,
        };
        if is_symlink(entry.attr.st_mode) || want == Owner::of(&entry.attr) {
            return;
        }
        if self.store(entry.inode, want).is_ok() {
            want.apply(&mut entry.attr);
        }
    }

    fn show_entry(&self, mut entry: Entry) -> Entry {
        if entry.inode != 0 {
            self.show(entry.inode, &mut entry.attr);
        }
        entry
    }
}

impl FileSystem for ShareFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = self.inner.init(capable)?
            | FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS;
        if self.cache == Cache::Auto {
            want |= FsOptions::AUTO_INVAL_DATA;
        }
        if !self.read_only {
            want |= FsOptions::ATOMIC_O_TRUNC;
        }
        Ok(want)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(&host(ctx), parent, name)?;
        Ok(self.show_entry(entry))
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(&host(ctx), inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(&host(ctx), requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let (mut st, timeout) = self.inner.getattr(&host(ctx), inode, handle)?;
        self.show(inode, &mut st);
        Ok((st, timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let ids = SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE;
        if !valid.intersects(ids) {
            let (mut st, timeout) = self.inner.setattr(&host(ctx), inode, attr, handle, valid)?;
            self.show(inode, &mut st);
            return Ok((st, timeout));
        }
        let (current, _) = self.inner.getattr(&host(ctx), inode, handle)?;
        let symlink = is_symlink(current.st_mode);
        let stored = if symlink { None } else { self.stored(inode) };
        let mut want = stored.unwrap_or_else(|| Owner::of(&current));
        if valid.contains(SetattrValid::UID) {
            want.uid = attr.st_uid;
        }
        if valid.contains(SetattrValid::GID) {
            want.gid = attr.st_gid;
        }
        let mut pass = valid - (SetattrValid::UID | SetattrValid::GID);
        let mut host_attr = attr;
        if valid.contains(SetattrValid::MODE) {
            want.mode = attr.st_mode & PERMS & !SUGID;
            if symlink {
                pass.remove(SetattrValid::MODE);
            } else {
                host_attr.st_mode = host_mode(attr.st_mode, is_dir(current.st_mode));
            }
        }
        let (mut st, timeout) = self
            .inner
            .setattr(&host(ctx), inode, host_attr, handle, pass)?;
        if symlink {
            return Ok((st, timeout));
        }
        if stored.is_some() || want != Owner::of(&st) {
            if let Err(e) = self.store(inode, want) {
                // Without user xattrs a chown the host cannot do fails as it would for an
                // unprivileged user; a chmod already reached the host.
                if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
                    return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        errno(libc::EPERM)
                    } else {
                        e
                    });
                }
                return Ok((st, timeout));
            }
        }
        want.apply(&mut st);
        Ok((st, timeout))
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(&host(ctx), inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        // The target is data: the host never follows it (lookups open with O_NOFOLLOW and
        // opens refuse anything but files and directories); the guest resolves it in its
        // own namespace. User xattrs cannot be set on symlinks, so the host owner shows.
        self.inner.symlink(&host(ctx), linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        _rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let kind = mode & libc::S_IFMT;
        match kind {
            libc::S_IFCHR | libc::S_IFBLK => return Err(errno(libc::EPERM)),
            0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return Err(errno(libc::EINVAL)),
        }
        let guest_mode = mode & !umask;
        let on_host = kind | host_mode(guest_mode, false);
        let mut entry = self.inner.mknod(&host(ctx), parent, name, on_host, 0, 0)?;
        self.made(ctx, &mut entry, guest_mode);
        Ok(entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let guest_mode = mode & !umask;
        let mut entry =
            self.inner
                .mkdir(&host(ctx), parent, name, host_mode(guest_mode, true), 0)?;
        self.made(ctx, &mut entry, guest_mode);
        Ok(entry)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(&host(ctx), parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(&host(ctx), parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        if flags & RENAME_WHITEOUT != 0 {
            return Err(errno(libc::EINVAL));
        }
        self.inner
            .rename(&host(ctx), olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let entry = self.inner.link(&host(ctx), inode, newparent, newname)?;
        Ok(self.show_entry(entry))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let flags = (flags as i32) & !NOT_OPEN;
        if self.read_only
            && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0)
        {
            return Err(erofs());
        }
        self.inner.open(&host(ctx), inode, flags as u32, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        let guest_mode = args.mode & !args.umask;
        let flags =
            (args.flags as i32) & !(libc::O_NOCTTY | (libc::O_TMPFILE & !libc::O_DIRECTORY));
        let host_args = |flags: i32| CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | host_mode(guest_mode, false),
            umask: 0,
            fuse_flags: args.fuse_flags,
        };
        // Made here, or opened because it was there already: only a new file gets the
        // owner and mode the guest asked for.
        match self
            .inner
            .create(&host(ctx), parent, name, host_args(flags | libc::O_EXCL))
        {
            Ok((mut entry, handle, opts, passthrough)) => {
                self.made(ctx, &mut entry, guest_mode);
                Ok((entry, handle, opts, passthrough))
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                let (entry, handle, opts, passthrough) =
                    self.inner
                        .create(&host(ctx), parent, name, host_args(flags))?;
                Ok((self.show_entry(entry), handle, opts, passthrough))
            }
            Err(e) => Err(e),
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        // Data goes straight from the file into the guest's buffers; the writer refuses
        // more than the guest gave room for.
        self.inner.read(
            &host(ctx),
            inode,
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.inner.write(
            &host(ctx),
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(&host(ctx), inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(&host(ctx), inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(&host(ctx), inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(
            &host(ctx),
            inode,
            flags,
            handle,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(&host(ctx), inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        Err(errno(libc::ENOSYS))
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _name: &CStr,
        _size: u32,
    ) -> io::Result<GetxattrReply> {
        Err(errno(libc::ENOSYS))
    }

    fn listxattr(&self, _ctx: &Context, _inode: Inode, _size: u32) -> io::Result<ListxattrReply> {
        Err(errno(libc::ENOSYS))
    }

    fn removexattr(&self, _ctx: &Context, _inode: Inode, _name: &CStr) -> io::Result<()> {
        Err(errno(libc::ENOSYS))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let flags = (flags as i32) & !NOT_OPEN & !libc::O_ACCMODE & !libc::O_TRUNC;
        self.inner.opendir(&host(ctx), inode, flags as u32)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(
            &host(ctx),
            inode,
            handle,
            size.min(MAX_READDIR),
            offset,
            add_entry,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdirplus(
            &host(ctx),
            inode,
            handle,
            size.min(MAX_READDIR),
            offset,
            &mut |dirent, entry| add_entry(dirent, self.show_entry(entry)),
        )
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(&host(ctx), inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(&host(ctx), inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        // A Linux guest checks permissions itself (virtio-fs mounts with default_permissions)
        // against the attributes shown; this answers access(2) for other drivers.
        if self.read_only && mask as i32 & libc::W_OK != 0 {
            return Err(erofs());
        }
        self.inner.access(&host(ctx), inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(&host(ctx), inode, handle, offset, whence)
    }
}
