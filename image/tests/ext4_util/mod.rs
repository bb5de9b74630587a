//! Shared by the ext4 tests: building tar layers, converting them, and reading the result back
//! with e2fsprogs (`e2fsck -fn` must find nothing; `debugfs` reports what the image holds).
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hk_image::ext4::{convert, Error, Layer, Options, Stats};

/// A layer tar built in memory, entry by entry, with full control over headers.
pub struct Tar(tar::Builder<Vec<u8>>);

pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

pub const ROOT: Meta = Meta {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 1_700_000_000,
};

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, m: &Meta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        h
    }

    /// PAX records (`SCHILY.xattr.*`, `mtime`, `path`...) for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "LEN key=value\n", where LEN counts itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.0.append(&h, data.as_slice()).unwrap();
        self
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>, m: &Meta) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, m, 0);
        self.0
            .append_data(&mut h, os(path.as_ref()), std::io::empty())
            .unwrap();
        self
    }

    pub fn file(&mut self, path: impl AsRef<[u8]>, m: &Meta, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, m, data.len() as u64);
        self.0.append_data(&mut h, os(path.as_ref()), data).unwrap();
        self
    }

    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, &ROOT, 0);
        self.0
            .append_link(&mut h, os(path.as_ref()), os(target.as_ref()))
            .unwrap();
        self
    }

    pub fn hardlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, &ROOT, 0);
        self.0
            .append_link(&mut h, os(path.as_ref()), os(target.as_ref()))
            .unwrap();
        self
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        m: &Meta,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(kind, m, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// An entry whose name bytes go into the header unchecked (the tar crate's builder
    /// refuses absolute and `..` paths, as a hostile producer would not).
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        name: &[u8],
        link: &[u8],
        size: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(kind, &ROOT, size);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.get_mut().extend_from_slice(h.as_bytes());
        self.0.get_mut().extend_from_slice(data);
        let pad = data.len().next_multiple_of(512) - data.len();
        self.0.get_mut().extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn os(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// A scratch directory removed at the end of the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hk-ext4-")
        .tempdir()
        .unwrap()
}

pub fn layers(tars: &[Vec<u8>]) -> Vec<Layer<&[u8]>> {
    tars.iter()
        .enumerate()
        .map(|(i, t)| Layer {
            name: format!("test (layer {}/{})", i + 1, tars.len()),
            tar: t.as_slice(),
        })
        .collect()
}

pub fn try_convert(tars: &[Vec<u8>], out: &Path, opts: &Options) -> Result<Stats, Error> {
    convert(layers(tars), out, opts)
}

/// Converts and checks the image with `e2fsck -fn`, which must report nothing.
pub fn convert_checked(tars: &[Vec<u8>], dir: &Path) -> (PathBuf, Stats) {
    let out = dir.join("rootfs.ext4");
    let stats = try_convert(tars, &out, &Options::default()).unwrap();
    fsck(&out);
    (out, stats)
}

pub fn fsck(image: &Path) {
    let o = Command::new("/usr/sbin/e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    assert!(
        o.status.success(),
        "e2fsck -fn {} failed ({}):\n{}{}",
        image.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs debugfs commands (one process) and returns stdout per command.
pub fn debugfs(image: &Path, cmds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let dir = scratch();
    let script = dir.path().join("cmds");
    let mut text = Vec::new();
    for c in cmds {
        text.extend_from_slice(c);
        text.push(b'\n');
    }
    std::fs::write(&script, &text).unwrap();
    let o = Command::new("/usr/sbin/debugfs")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    assert!(o.status.success(), "debugfs failed: {o:?}");
    // debugfs echoes each command as "debugfs: CMD" before its output.
    let mut outs: Vec<Vec<u8>> = Vec::new();
    for line in o.stdout.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"debugfs: ") {
            outs.push(Vec::new());
        } else if let Some(cur) = outs.last_mut() {
            cur.extend_from_slice(line);
        }
    }
    assert_eq!(outs.len(), cmds.len(), "debugfs output: {o:?}");
    outs
}

pub fn quoted(path: &[u8]) -> Vec<u8> {
    let mut q = b"\"".to_vec();
    q.extend_from_slice(path);
    q.push(b'"');
    q
}

/// What `debugfs stat` says about one inode.
#[derive(Debug, Default, Clone)]
pub struct Stat {
    pub ino: u64,
    pub kind: String,
    pub mode: u32,
    pub flags: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub links: u64,
    pub blockcount: u64,
    pub mtime: u64,
    pub mtime_extra: u32,
    pub device: Option<(u32, u32)>,
    pub fast_link: Option<String>,
    pub xattrs: Vec<String>,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()
}

pub fn parse_stat(out: &[u8]) -> Option<Stat> {
    let text = String::from_utf8_lossy(out);
    let num = |key: &str| field(&text, key).and_then(|v| v.parse::<u64>().ok());
    let ino = num("Inode: ")?;
    let kind_at = text.find("Type: ")? + 6;
    let kind = text[kind_at..].split("  ").next()?.trim().to_string();
    let mode = u32::from_str_radix(field(&text, "Mode: ")?, 8).ok()?;
    let flags = u32::from_str_radix(field(&text, "Flags: ")?.trim_start_matches("0x"), 16).ok()?;
    let (mtime, mtime_extra) = {
        let v = field(&text, " mtime: ")?.trim_start_matches("0x");
        let (s, e) = v.split_once(':')?;
        (
            u64::from_str_radix(s, 16).ok()?,
            u32::from_str_radix(e, 16).ok()?,
        )
    };
    let device = field(&text, "Device major/minor number: ").map(|v| {
        let (a, b) = v.split_once(':').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    });
    let fast_link = text.find("Fast link dest: \"").map(|at| {
        let rest = &text[at + 17..];
        rest[..rest.rfind('"').unwrap()].to_string()
    });
    let xattrs = match text.find("Extended attributes:\n") {
        Some(at) => text[at + 21..]
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim().to_string())
            .collect(),
        None => Vec::new(),
    };
    Some(Stat {
        ino,
        kind,
        mode,
        flags,
        uid: num("User: ")?,
        gid: num("Group: ")?,
        size: num("Size: ")?,
        links: num("Links: ")?,
        blockcount: num("Blockcount: ")?,
        mtime,
        mtime_extra,
        device,
        fast_link,
        xattrs,
    })
}

/// `stat` of many paths in one debugfs run; `None` where the path does not exist.
pub fn stat_all(image: &Path, paths: &[&[u8]]) -> Vec<Option<Stat>> {
    let cmds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| [b"stat ".as_slice(), &quoted(p)].concat())
        .collect();
    debugfs(image, &cmds)
        .iter()
        .map(|o| parse_stat(o))
        .collect()
}

pub fn stat(image: &Path, path: &[u8]) -> Option<Stat> {
    stat_all(image, &[path]).pop().unwrap()
}

/// A file's contents, read back through debugfs.
pub fn cat(image: &Path, path: &[u8]) -> Vec<u8> {
    let dir = scratch();
    let dest = dir.path().join("out");
    let mut cmd = b"dump ".to_vec();
    cmd.extend_from_slice(&quoted(path));
    cmd.push(b' ');
    cmd.extend_from_slice(dest.as_os_str().as_bytes());
    debugfs(image, &[cmd]);
    std::fs::read(&dest).unwrap_or_else(|e| panic!("dump {}: {e}", String::from_utf8_lossy(path)))
}

/// Names in a directory (without `.` and `..`), raw bytes.
pub fn ls(image: &Path, dir: &[u8]) -> Vec<Vec<u8>> {
    let mut cmd = b"ls -p ".to_vec();
    cmd.extend_from_slice(&quoted(dir));
    let out = debugfs(image, &[cmd]).pop().unwrap();
    // "ls -p" lines: /ino/mode/uid/gid/name/size/
    let mut names: Vec<Vec<u8>> = out
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"/"))
        .map(|l| {
            let fields: Vec<&[u8]> = l.splitn(6, |&b| b == b'/').collect();
            let rest = fields[5];
            // name/size/ : the name may itself hold no '/', so cut the last two fields.
            let end = rest.len() - 1;
            let slash = rest[..end].iter().rposition(|&b| b == b'/').unwrap();
            rest[..slash].to_vec()
        })
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    names
}

/// The tarballs scripts/make-test-rootfs caches (built on first use; needs root and apt).
pub fn test_rootfs(which: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-test-rootfs");
    let o = Command::new(&script)
        .arg(which)
        .output()
        .expect("run scripts/make-test-rootfs");
    assert!(
        o.status.success(),
        "scripts/make-test-rootfs {which} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

/// Files left in a directory (to prove nothing half-written remains).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
