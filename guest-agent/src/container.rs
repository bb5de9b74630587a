//! The container's world inside the VM: its root filesystem (the image's ext4, or a host
//! directory shared over virtio-fs, read-only, under an overlay whose upper layer is a
//! writable ext4 disk), the usual virtual
//! filesystems in it, docker's /etc/hostname, /etc/hosts and /etc/resolv.conf, and then the
//! switch into it.
//!
//! The agent runs from the initramfs, which `pivot_root` cannot leave (the kernel refuses
//! to pivot away from rootfs), so the switch is switch_root's: move the new root over `/`
//! and chroot into it. The agent keeps running from memory; its open sockets stay.

use hk_agent_protocol::{Lower, Mount, Root, Setup};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const STAGE: &str = "/run/hk";

fn mnt(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    if fs::symlink_metadata(target).is_err() {
        fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    }
    mount(Some(source), target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {source} on {} ({}): {e}",
            target.display(),
            fstype.unwrap_or("bind")
        )
    })
}

/// The virtual filesystems a Linux userland expects under `root`: (source, path, type,
/// flags, options).
const SPECIALS: [(&str, &str, &str, MsFlags, Option<&str>); 7] = {
    let nodev = MsFlags::MS_NOSUID
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOEXEC);
    [
        ("proc", "proc", "proc", nodev, None),
        ("sysfs", "sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "dev/pts",
            "devpts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("ptmxmode=0666,mode=0620,gid=5"),
        ),
        ("shm", "dev/shm", "tmpfs", nodev, Some("mode=1777")),
        ("mqueue", "dev/mqueue", "mqueue", nodev, None),
        ("cgroup2", "sys/fs/cgroup", "cgroup2", nodev, None),
    ]
};

/// Mounts [`SPECIALS`] under `root`; returns what failed (one already there is no failure).
pub fn mount_specials(root: &Path) -> Vec<String> {
    SPECIALS
        .iter()
        .filter_map(|&(source, target, fstype, flags, data)| {
            match mnt(source, &root.join(target), Some(fstype), flags, data) {
                Ok(()) => None,
                Err(e) if e.ends_with(&Errno::EBUSY.to_string()) => None,
                Err(e) => Some(e),
            }
        })
        .collect()
}

/// The block device whose virtio serial is `serial`.
fn disk(serial: &str) -> Result<PathBuf, String> {
    let entries = fs::read_dir("/sys/block").map_err(|e| format!("/sys/block: {e}"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let found = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim_end_matches('\0').trim() == serial {
            return Ok(Path::new("/dev").join(name));
        }
    }
    Err(format!("no disk with serial {serial:?}"))
}

/// Sets the container up as `setup` says, and switches into its root.
pub fn setup(setup: &Setup) -> Result<(), String> {
    if let Some(name) = &setup.hostname {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
    }
    crate::network::configure(&setup.interfaces)?;
    let Some(root) = &setup.root else {
        return crate::mounts::mount_all(&setup.mounts);
    };
    let stage = Path::new(STAGE);
    let merged = mount_root(root, stage, &setup.mounts)?;
    if let Some(e) = mount_specials(&merged).into_iter().next() {
        return Err(e);
    }
    etc_files(setup, stage, &merged, root.upper.is_some())?;
    switch_root(&merged)?;
    crate::mounts::mount_all(&setup.mounts)
}

/// Mounts lower, upper and the overlay; returns where the merged root is. A read-only root
/// gets the mount points of `mounts` that the image lacks, as docker creates them.
fn mount_root(root: &Root, stage: &Path, mounts: &[Mount]) -> Result<PathBuf, String> {
    let lower = stage.join("lower");
    match &root.lower {
        Lower::Disk { serial } => mnt(
            &disk(serial)?.to_string_lossy(),
            &lower,
            Some("ext4"),
            MsFlags::MS_RDONLY,
            None,
        )?,
        Lower::Virtiofs { tag } => mnt(tag, &lower, Some("virtiofs"), MsFlags::MS_RDONLY, None)?,
    }
    let merged = stage.join("root");
    match &root.upper {
        Some(upper) => {
            let upperfs = stage.join("upperfs");
            mnt(
                &disk(upper)?.to_string_lossy(),
                &upperfs,
                Some("ext4"),
                MsFlags::empty(),
                None,
            )?;
            for dir in ["upper", "work"] {
                fs::create_dir_all(upperfs.join(dir)).map_err(|e| format!("upper layer: {e}"))?;
            }
            crate::diff::remember_upper(&upperfs.join("upper"))?;
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upperfs.join("upper").display(),
                upperfs.join("work").display()
            );
            mnt(
                "overlay",
                &merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(&options),
            )?;
        }
        None => {
            // A read-only root still needs its mount points (/proc, /dev, the /etc files),
            // which the image may lack: a small scaffold of them lies over the image as a
            // second lower layer of an overlay that has no upper, which makes it read-only.
            let scaffold = stage.join("scaffold");
            mnt(
                "hk-scaffold",
                &scaffold,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755,size=1m"),
            )?;
            let targets = mounts.iter().map(|m| m.target.trim_start_matches('/'));
            for dir in ["proc", "sys", "dev", "etc"].into_iter().chain(targets) {
                if !lower.join(dir).is_dir() {
                    fs::create_dir_all(scaffold.join(dir)).map_err(|e| format!("scaffold: {e}"))?;
                }
            }
            for file in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
                if !lower.join(file).is_file() {
                    fs::create_dir_all(scaffold.join("etc"))
                        .and_then(|()| fs::write(scaffold.join(file), b""))
                        .map_err(|e| format!("scaffold: {e}"))?;
                }
            }
            let options = format!("lowerdir={}:{}", scaffold.display(), lower.display());
            mnt(
                "overlay",
                &merged,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(&options),
            )?;
        }
    }
    Ok(merged)
}

/// docker's /etc/hostname, /etc/hosts and /etc/resolv.conf: files of the runtime mounted
/// over the image's, so they never become part of the container's own layer.
fn etc_files(setup: &Setup, stage: &Path, merged: &Path, writable: bool) -> Result<(), String> {
    let files = [
        (
            "hostname",
            setup.hostname.as_ref().map(|h| format!("{h}\n")),
        ),
        ("hosts", setup.hosts.clone()),
        ("resolv.conf", setup.resolv_conf.clone()),
    ];
    if files.iter().all(|(_, c)| c.is_none()) {
        return Ok(());
    }
    let dir = stage.join("etc");
    mnt(
        "hk-etc",
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )?;
    // What the agent creates here to mount over is recorded as a stub, which a diff of
    // the container's layer leaves out (diff.rs, `Stubs`), and /etc keeps its times, so a
    // step that does not touch /etc leaves it as the image had it.
    let etc_times = fs::symlink_metadata(merged.join("etc")).ok();
    for (name, contents) in files {
        let Some(contents) = contents else { continue };
        let source = dir.join(name);
        fs::write(&source, contents).map_err(|e| format!("{}: {e}", source.display()))?;
        let in_root = Path::new("/etc").join(name);
        let target = merged.join("etc").join(name);
        // docker creates missing mount points; a read-only root without them goes without.
        if fs::symlink_metadata(&target).is_err() {
            if !writable {
                continue;
            }
            crate::diff::create_stub(merged, &in_root, true)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        } else if fs::metadata(&target).map(|m| !m.is_file()).unwrap_or(true) {
            // A symlink (resolv.conf often is one) or a directory: replace it where the
            // root is writable, as docker's bind mount over the path's target would not.
            if !writable {
                continue;
            }
            let _ = fs::remove_file(&target);
            fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
            crate::diff::record_file_stub(&in_root);
        }
        mnt(
            &source.to_string_lossy(),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    if let (Some(meta), true) = (etc_times, writable) {
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &merged.join("etc"),
            &nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
            &nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

fn switch_root(merged: &Path) -> Result<(), String> {
    nix::unistd::chdir(merged).map_err(|e| format!("chdir {}: {e}", merged.display()))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move the root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}
