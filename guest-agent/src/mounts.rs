//! The container's own mounts (`-v`, `--mount`, `--tmpfs` on the host): shares by their
//! virtio-fs tag and tmpfs, mounted after the switch into the container's root and before
//! any process runs.
//!
//! They are mounted from inside the root (after the chroot) so that a symlink on a target's
//! path resolves within the container, as runc's securejoin makes it, never into the
//! agent's initramfs; `..` cannot leave a chroot either.

use hk_agent_protocol::{Mount, MountSource};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Mounts each of `mounts` in order; the first failure stops the container.
pub fn mount_all(mounts: &[Mount]) -> Result<(), String> {
    for m in mounts {
        mount_one(m).map_err(|e| format!("mount on {}: {e}", m.target))?;
    }
    Ok(())
}

fn mount_one(m: &Mount) -> Result<(), String> {
    if !m.target.starts_with('/') || Path::new(&m.target).parent().is_none() {
        return Err("the target must be an absolute path other than /".into());
    }
    let target = Path::new(&m.target);
    if let MountSource::Secret {
        data,
        mode,
        uid,
        gid,
    } = &m.source
    {
        return mount_secret(target, data, *mode, (*uid, *gid));
    }
    match fs::metadata(target) {
        Ok(meta) if !meta.is_dir() => return Err("not a directory in the container".into()),
        Ok(_) => {}
        // docker creates missing mount points (owned by root, 0755); a diff of the
        // container's layer leaves them out (diff.rs, `Stubs`).
        Err(_) => crate::diff::create_stub(Path::new("/"), target, false)
            .map_err(|e| format!("mkdir: {e}"))?,
    }
    // What the root has at the target, kept open: once mounted over, it is reachable only
    // through this descriptor, which is where a new volume is seeded from.
    let below = fs::File::open(target).map_err(|e| format!("open: {e}"))?;
    let mut flags = MsFlags::empty();
    if m.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match &m.source {
        MountSource::Virtiofs { tag } => {
            mount(
                Some(tag.as_str()),
                target,
                Some("virtiofs"),
                flags,
                None::<&str>,
            )
            .map_err(|e| format!("virtiofs {tag}: {e}"))?;
        }
        MountSource::Secret { .. } => unreachable!("mounted above"),
        MountSource::Tmpfs { options } => {
            let (more, data) = tmpfs_options(options)?;
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                flags | more,
                Some(data.as_str()),
            )
            .map_err(|e| format!("tmpfs: {e}"))?;
        }
    }
    if m.seed && !m.read_only && is_empty(target)? {
        let source = format!("/proc/self/fd/{}", below.as_raw_fd());
        copy_tree(Path::new(&source), target).map_err(|e| format!("seeding: {e}"))?;
        copy_attrs(&below.metadata().map_err(|e| e.to_string())?, target)
            .map_err(|e| format!("seeding: {e}"))?;
    }
    Ok(())
}

/// A build secret: written to a tmpfs of its own, staged under /dev (a devtmpfs, outside
/// the container's layer), bound read-only onto `target`, after which the staging mount
/// is detached and its directory removed, so the file is reachable only at `target`. A
/// missing target is made as a stub (left out of a diff).
fn mount_secret(target: &Path, data: &str, mode: u32, owner: (u32, u32)) -> Result<(), String> {
    use base64::Engine;
    use nix::mount::{umount2, MntFlags};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => return Err("a directory in the container".into()),
        Ok(_) => {}
        Err(_) => crate::diff::create_stub(Path::new("/"), target, true)
            .map_err(|e| format!("mount point: {e}"))?,
    }
    let stage = Path::new("/dev").join(format!(
        ".hk-secret-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let staged = (|| {
        mount(
            Some("tmpfs"),
            &stage,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|e| format!("tmpfs: {e}"))?;
        let file = stage.join("secret");
        fs::write(&file, &bytes).map_err(|e| format!("write: {e}"))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| format!("chmod: {e}"))?;
        std::os::unix::fs::chown(&file, Some(owner.0), Some(owner.1))
            .map_err(|e| format!("chown: {e}"))?;
        mount(
            Some(&file),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind: {e}"))?;
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("read-only: {e}"))
    })();
    let _ = umount2(&stage, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&stage);
    staged
}

fn is_empty(dir: &Path) -> Result<bool, String> {
    let mut entries = fs::read_dir(dir).map_err(|e| format!("read: {e}"))?;
    Ok(entries.next().is_none())
}

/// mount(8)'s options for a tmpfs: the flags, and the data tmpfs itself reads. Anything
/// else is refused rather than passed on.
pub fn tmpfs_options(options: &[String]) -> Result<(MsFlags, String), String> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            _ => {
                let key = o.split_once('=').map(|(k, _)| k);
                if !matches!(
                    key,
                    Some("size" | "mode" | "uid" | "gid" | "nr_inodes" | "nr_blocks")
                ) {
                    return Err(format!("tmpfs option {o:?} is not supported"));
                }
                data.push(o.as_str());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    Ok((flags, data.join(",")))
}

/// Copies the tree under `from` into `to`, keeping owners, modes and times: regular files,
/// directories, symlinks and FIFOs (device nodes and sockets are not data, and a share
/// refuses device nodes anyway). Hard links become separate copies.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
            nix::unistd::mkfifo(&dst, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        } else {
            continue;
        }
        copy_attrs(&meta, &dst)?;
    }
    Ok(())
}

/// Gives `path` the owner, mode and times of `meta` (a symlink: its owner and times, where
/// the filesystem keeps them).
fn copy_attrs(meta: &fs::Metadata, path: &Path) -> std::io::Result<()> {
    let symlink = meta.file_type().is_symlink();
    match std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())) {
        // virtio-fs keeps a guest owner in an xattr, which a symlink cannot carry.
        Err(_) if symlink => {}
        other => other?,
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    match utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    ) {
        Err(_) if symlink => Ok(()),
        other => other.map_err(std::io::Error::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tmpfs_options_split_into_flags_and_data() {
        let (flags, data) = tmpfs_options(&v(&[
            "rw",
            "nosuid",
            "nodev",
            "noexec",
            "size=64m",
            "mode=1770",
        ]))
        .unwrap();
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
        );
        assert_eq!(data, "size=64m,mode=1770");
        // Later options win, as mount(8) reads them.
        let (flags, _) = tmpfs_options(&v(&["noexec", "exec", "ro"])).unwrap();
        assert_eq!(flags, MsFlags::MS_RDONLY);
        for bad in ["bind", "lowerdir=/x", "size", "context=x"] {
            assert!(tmpfs_options(&v(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn copy_tree_keeps_files_links_modes_and_times() {
        let base = std::env::temp_dir().join(format!("hk-seed-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(from.join("sub/deeper")).unwrap();
        fs::create_dir_all(&to).unwrap();
        fs::write(from.join("sub/deeper/f"), b"data").unwrap();
        fs::set_permissions(from.join("sub/deeper/f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(from.join("sub"), fs::Permissions::from_mode(0o711)).unwrap();
        symlink("sub/deeper/f", from.join("link")).unwrap();
        nix::unistd::mkfifo(
            &from.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("sub/deeper/f")).unwrap(), b"data");
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("sub/deeper/f")
        );
        let mode = |p: &str| fs::symlink_metadata(to.join(p)).unwrap().mode() & 0o7777;
        assert_eq!((mode("sub"), mode("sub/deeper/f")), (0o711, 0o640));
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &fs::symlink_metadata(to.join("fifo")).unwrap().file_type()
        ));
        let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
        assert_eq!(mtime(&to.join("sub")), mtime(&from.join("sub")));
        fs::remove_dir_all(&base).unwrap();
    }
}
