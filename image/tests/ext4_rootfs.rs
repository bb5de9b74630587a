//! Real root filesystems (scripts/make-test-rootfs): Debian's busybox-static in a small tree,
//! and a debootstrapped Debian bookworm. Every entry of the tar is checked in the image.

mod ext4_util;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ext4_util::*;
use hk_image::ext4::{convert, Layer, Options};
use tar::EntryType;

fn convert_file(tar: &Path, dir: &Path) -> std::path::PathBuf {
    let out = dir.join("rootfs.ext4");
    let layer = Layer {
        name: format!("{} (layer 1/1)", tar.display()),
        tar: BufReader::new(File::open(tar).unwrap()),
    };
    convert([layer], &out, &Options::default()).unwrap();
    fsck(&out);
    out
}

/// "./usr/bin/" → "/usr/bin"
fn image_path(tar_path: &[u8]) -> Vec<u8> {
    let p = tar_path.strip_prefix(b".").unwrap_or(tar_path);
    let p = p.strip_suffix(b"/").unwrap_or(p);
    if p.is_empty() {
        b"/".to_vec()
    } else if p.starts_with(b"/") {
        p.to_vec()
    } else {
        [b"/".as_slice(), p].concat()
    }
}

#[test]
fn busybox_static_tree() {
    let tar = test_rootfs("busybox");
    let dir = scratch();
    let img = convert_file(&tar, dir.path());
    let mut archive = tar::Archive::new(File::open(&tar).unwrap());
    let mut busybox = None;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == b"./bin/busybox" {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            busybox = Some(data);
        }
    }
    let busybox = busybox.expect("the tarball holds ./bin/busybox");
    assert!(busybox.len() > 1 << 20);
    assert_eq!(cat(&img, b"/bin/busybox"), busybox);
    let bb = stat(&img, b"/bin/busybox").unwrap();
    assert_eq!((bb.mode, bb.size), (0o755, busybox.len() as u64));
    assert_eq!(
        stat(&img, b"/bin/sh").unwrap().fast_link.as_deref(),
        Some("busybox")
    );
    assert_eq!(stat(&img, b"/tmp").unwrap().mode, 0o1777);
}

struct Expect {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Vec<u8>,
    device: Option<(u32, u32)>,
    xattrs: Vec<String>,
}

#[test]
fn debootstrapped_debian_matches_its_tarball() {
    let tar = test_rootfs("debian");
    let dir = scratch();
    let img = convert_file(&tar, dir.path());

    // What the tarball says, entry by entry; hardlinks grouped by target.
    let mut expected: Vec<(Vec<u8>, Expect)> = Vec::new();
    let mut hardlinks: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(BufReader::new(File::open(&tar).unwrap()));
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = image_path(&e.path_bytes());
        let h = e.header().clone();
        let kind = match h.entry_type() {
            EntryType::Directory => "directory",
            EntryType::Regular => "regular",
            EntryType::Symlink => "symlink",
            EntryType::Char => "character special",
            EntryType::Block => "block special",
            EntryType::Fifo => "FIFO",
            EntryType::Link => {
                let target = image_path(&e.link_name_bytes().unwrap());
                hardlinks.push((path, target));
                continue;
            }
            other => panic!("unexpected {other:?} in the Debian tarball"),
        };
        let mut xattrs: Vec<String> = e
            .pax_extensions()
            .unwrap()
            .map(|p| {
                p.filter_map(|x| {
                    let x = x.unwrap();
                    x.key()
                        .unwrap()
                        .strip_prefix("SCHILY.xattr.")
                        .map(str::to_string)
                })
                .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        expected.push((
            path,
            Expect {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                size: if kind == "regular" { e.size() } else { 0 },
                link: e
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
                device: match kind {
                    "character special" | "block special" => Some((
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap(),
                    )),
                    _ => None,
                },
                xattrs,
            },
        ));
    }
    assert!(
        expected.len() > 5000,
        "a real rootfs: {} entries",
        expected.len()
    );
    assert!(
        expected.iter().any(|(_, e)| e.mode & 0o4000 != 0),
        "setuid files"
    );
    assert!(!hardlinks.is_empty());

    let paths: Vec<&[u8]> = expected
        .iter()
        .map(|(p, _)| p.as_slice())
        .chain(hardlinks.iter().map(|(p, _)| p.as_slice()))
        .collect();
    let stats = stat_all(&img, &paths);
    let mut by_path: HashMap<&[u8], Stat> = HashMap::new();
    for (p, s) in paths.iter().zip(stats) {
        let s = s.unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(p)));
        by_path.insert(p, s);
    }
    for (path, want) in &expected {
        let got = &by_path[path.as_slice()];
        let name = String::from_utf8_lossy(path);
        assert_eq!(got.kind, want.kind, "{name}");
        assert_eq!(got.mode, want.mode, "{name}");
        assert_eq!((got.uid, got.gid), (want.uid, want.gid), "{name}");
        assert_eq!(got.mtime, want.mtime, "{name}");
        assert_eq!(got.device, want.device, "{name}");
        let mut xattrs: Vec<String> = got
            .xattrs
            .iter()
            .map(|x| x.split(" (").next().unwrap().to_string())
            .collect();
        xattrs.sort();
        assert_eq!(xattrs, want.xattrs, "{name}");
        match want.kind {
            "regular" => assert_eq!(got.size, want.size, "{name}"),
            "symlink" if want.link.len() < 60 => {
                assert_eq!(
                    got.fast_link.as_deref().map(str::as_bytes),
                    Some(want.link.as_slice()),
                    "{name}"
                )
            }
            "symlink" => assert_eq!(got.size, want.link.len() as u64, "{name}"),
            _ => {}
        }
    }
    for (path, target) in &hardlinks {
        let (a, b) = (&by_path[path.as_slice()], &by_path[target.as_slice()]);
        assert_eq!(
            a.ino,
            b.ino,
            "{} is a hardlink",
            String::from_utf8_lossy(path)
        );
        assert!(a.links >= 2);
    }

    // Contents: dump the whole tree and compare every regular file with the tarball.
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    let mut cmd = b"rdump / ".to_vec();
    cmd.extend_from_slice(dump.as_os_str().as_encoded_bytes());
    debugfs(&img, &[cmd]);
    let mut archive = tar::Archive::new(BufReader::new(File::open(&tar).unwrap()));
    let mut compared = 0;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != EntryType::Regular {
            continue;
        }
        let rel = image_path(&e.path_bytes());
        let on_disk = dump.join(Path::new(std::str::from_utf8(&rel[1..]).unwrap()));
        let mut want = Vec::new();
        e.read_to_end(&mut want).unwrap();
        let got = std::fs::read(&on_disk).unwrap();
        assert!(got == want, "{} differs", on_disk.display());
        compared += 1;
    }
    assert!(compared > 3000, "{compared} files compared");
}

/// Unmounts on drop, so a failing assertion does not leave the loop mount behind.
struct Mount(std::path::PathBuf);

impl Mount {
    /// Mounts `img` read-only through a loop device at `mnt` (created here), until drop.
    fn loop_ro(img: &std::path::Path, mnt: &std::path::Path) -> Mount {
        std::fs::create_dir(mnt).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(img)
            .arg(mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting the image needs root and loop devices: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(mnt.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The Linux kernel itself (not only e2fsprogs) reads the image: mounted read-only through
/// a loop device, every entry of the tarball is there with its metadata and contents.
/// Needs root and loop devices, like the CI has; elsewhere it fails and says so.
#[test]
fn the_kernel_mounts_the_debian_image() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let tar = test_rootfs("debian");
    let dir = scratch();
    let img = convert_file(&tar, dir.path());
    let mnt = dir.path().join("mnt");
    let _mount = Mount::loop_ro(&img, &mnt);

    let mut inodes: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut archive = tar::Archive::new(BufReader::new(File::open(&tar).unwrap()));
    let mut checked = 0;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let rel = image_path(&e.path_bytes());
        let path =
            mnt.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&rel[1..]));
        let m = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let h = e.header().clone();
        let name = path.display().to_string();
        if h.entry_type() == EntryType::Link {
            let target = image_path(&e.link_name_bytes().unwrap());
            assert_eq!(Some(&m.ino()), inodes.get(&target), "{name} is a hardlink");
            continue;
        }
        inodes.insert(rel.clone(), m.ino());
        assert_eq!(m.mode() & 0o7777, h.mode().unwrap() & 0o7777, "{name}");
        assert_eq!(
            (u64::from(m.uid()), u64::from(m.gid())),
            (h.uid().unwrap(), h.gid().unwrap()),
            "{name}"
        );
        assert_eq!(m.mtime() as u64, h.mtime().unwrap(), "{name}");
        let ft = m.file_type();
        match h.entry_type() {
            EntryType::Directory => assert!(ft.is_dir(), "{name}"),
            EntryType::Regular => {
                assert!(ft.is_file(), "{name}");
                let mut want = Vec::new();
                e.read_to_end(&mut want).unwrap();
                assert!(std::fs::read(&path).unwrap() == want, "{name} contents");
            }
            EntryType::Symlink => {
                assert!(ft.is_symlink(), "{name}");
                let target = std::fs::read_link(&path).unwrap();
                assert_eq!(
                    target.as_os_str().as_encoded_bytes(),
                    &*e.link_name_bytes().unwrap(),
                    "{name}"
                );
            }
            EntryType::Char | EntryType::Block => {
                assert!(ft.is_char_device() || ft.is_block_device(), "{name}");
                let rdev = m.rdev();
                let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
                let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
                assert_eq!(
                    (major as u32, minor as u32),
                    (
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap()
                    ),
                    "{name}"
                );
            }
            EntryType::Fifo => assert!(ft.is_fifo(), "{name}"),
            other => panic!("{name}: unexpected {other:?}"),
        }
        checked += 1;
    }
    assert!(checked > 5000, "{checked} entries checked");
}

/// A directory too big for one index block gets a two-level htree; e2fsck checks its
/// structure and hashes, and the kernel must find every name through it (a lookup reads
/// the root, one index node and one leaf). Needs root and loop devices, like the test above.
#[test]
fn the_kernel_finds_every_name_in_a_two_level_htree() {
    use std::os::unix::fs::MetadataExt;
    let names: Vec<String> = (0..25_000)
        .map(|i| format!("{i:06}-{}", "n".repeat(88)))
        .collect();
    let mut t = Tar::new();
    t.dir("big", &ROOT);
    for (i, n) in names.iter().enumerate() {
        t.file(
            format!("big/{n}"),
            &ROOT,
            if i % 1000 == 0 { b"x" } else { b"" },
        );
    }
    let dir = scratch();
    let (img, _) = convert_checked(&[t.finish()], dir.path());
    let htree = debugfs(&img, &[b"htree /big".to_vec()]).pop().unwrap();
    let htree = String::from_utf8_lossy(&htree);
    assert!(
        htree.contains("Indirect levels: 1"),
        "{}",
        &htree[..htree.len().min(2000)]
    );

    let mnt = dir.path().join("mnt");
    let _mount = Mount::loop_ro(&img, &mnt);
    for (i, n) in names.iter().enumerate() {
        let m = std::fs::symlink_metadata(mnt.join("big").join(n))
            .unwrap_or_else(|e| panic!("the kernel cannot find {n}: {e}"));
        assert_eq!(m.size(), u64::from(i % 1000 == 0), "{n}");
    }
    assert!(std::fs::symlink_metadata(mnt.join("big/not-there")).is_err());
    assert_eq!(
        std::fs::read_dir(mnt.join("big")).unwrap().count(),
        names.len()
    );
}
