//! What a container's VM boots from besides the kernel: an initramfs holding only hk-agent,
//! and the root filesystem as an ext4 image. Both are cached under hk's cache directory,
//! named by what they are made of, so a second run reuses them and VMs share their pages.

use crate::host::cache_dir;
use anyhow::{bail, Context};
use hk_image::Digest;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// hk-agent: `HK_AGENT`, else where a cargo build of this repository puts the static agent
/// (`cargo build --profile agent --target x86_64-unknown-linux-gnu`), else an installed one
/// (`<prefix>/lib/hk/hk-agent` beside `<prefix>/bin/hk`). Not the `hk-agent` cargo builds
/// next to hk for the host: that one is dynamically linked, and the initramfs has no libc.
fn agent_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("HK_AGENT") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().context("locate the hk binary")?;
            let dir = exe.parent().context("hk has no directory")?;
            let candidates = [
                dir.join("../x86_64-unknown-linux-gnu/agent/hk-agent"),
                dir.join("../../x86_64-unknown-linux-gnu/agent/hk-agent"),
                dir.join("../lib/hk/hk-agent"),
            ];
            candidates.into_iter().find(|p| p.is_file()).context(
                "hk-agent is missing: build it static with RUSTFLAGS=\"-C target-feature=+crt-static\" \
                 cargo build --profile agent -p hk-guest-agent --target x86_64-unknown-linux-gnu, \
                 or set HK_AGENT",
            )?
        }
    };
    if needs_interpreter(&path) {
        bail!(
            "{} is dynamically linked, and the VM's initramfs has no libc: build it static with \
             RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile agent \
             -p hk-guest-agent --target x86_64-unknown-linux-gnu",
            path.display()
        );
    }
    Ok(path)
}

/// Whether an ELF executable names a program interpreter (PT_INTERP): a dynamically linked
/// one. Anything unreadable or not ELF64 is left for the kernel to judge.
fn needs_interpreter(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; 64];
    if file.read_exact_at(&mut header, 0).is_err() || &header[..5] != b"\x7fELF\x02" {
        return false;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let phoff = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
    let (phentsize, phnum) = (u16_at(&header, 54), u16_at(&header, 56));
    (0..u64::from(phnum)).any(|i| {
        let mut kind = [0u8; 4];
        file.read_exact_at(&mut kind, phoff + i * u64::from(phentsize))
            .is_ok_and(|()| u32::from_le_bytes(kind) == 3)
    })
}

/// The agent's initramfs (an uncompressed newc cpio: nothing to unpack at boot but a copy),
/// built once per agent binary.
pub fn agent_initramfs() -> anyhow::Result<PathBuf> {
    let agent_path = agent_binary()?;
    let agent = std::fs::read(&agent_path)
        .with_context(|| format!("cannot read {}", agent_path.display()))?;
    let dir = cache_dir().join("initramfs");
    let out = dir.join(format!("agent-{}.cpio", &Digest::of(&agent).hex()[..16]));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".agent-{}.tmp", std::process::id()));
    let result = write_cpio(&tmp, &agent).and_then(|()| {
        std::fs::rename(&tmp, &out).with_context(|| format!("cannot create {}", out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| out)
}

fn write_cpio(path: &Path, agent: &[u8]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut ino = 1;
    let mut entry = |file: &mut std::io::BufWriter<std::fs::File>,
                     name: &str,
                     mode: u32,
                     rdev: (u32, u32),
                     body: &[u8]|
     -> std::io::Result<()> {
        ino += 1;
        let mut w = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(if mode & 0o170000 == 0o040000 { 2 } else { 1 })
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(file, body.len() as u32);
        w.write_all(body)?;
        w.finish()?;
        Ok(())
    };
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        entry(&mut file, dir, 0o040755, (0, 0), &[])?;
    }
    // Without /dev/console in the archive the kernel starts init with no stdio.
    entry(&mut file, "dev/console", 0o020600, (5, 1), &[])?;
    entry(&mut file, "init", 0o100755, (0, 0), agent)?;
    cpio::newc::trailer(&mut file)?;
    file.into_inner()?.sync_all()?;
    Ok(())
}

/// The root filesystem as an ext4 image: an image file as it is; a directory converted by
/// hk's ext4 writer and cached under a fingerprint of its tree (paths, types, sizes, modes,
/// owners, mtimes), so an unchanged directory converts once.
pub fn rootfs_image(path: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--rootfs {}: no such file or directory", path.display()))?;
    if meta.is_file() {
        let mut magic = [0u8; 2];
        let ok = std::fs::File::open(path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0x438))
            .is_ok();
        if !ok || magic != [0x53, 0xef] {
            bail!(
                "--rootfs {}: not an ext4 image (give a directory, or an ext4 file such as \
                 `hk image rootfs` makes)",
                path.display()
            );
        }
        return Ok(std::path::absolute(path)?);
    }
    let fingerprint = fingerprint(path)?;
    let dir = cache_dir().join("rootfs-dir");
    let out = dir.join(format!("{}.ext4", &fingerprint.hex()[..24]));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    convert_dir(path, &out)?;
    Ok(out)
}

fn fingerprint(root: &Path) -> anyhow::Result<Digest> {
    let mut text = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = e.metadata()?;
            writeln!(
                text,
                "{}\0{:o}\0{}\0{}\0{}\0{}.{}",
                e.path().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            )?;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(Digest::of(&text))
}

/// Streams the tree as a tar into the ext4 writer, without a tar file in between.
fn convert_dir(root: &Path, out: &Path) -> anyhow::Result<()> {
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let root_owned = root.to_path_buf();
    let producer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(writer);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        tar.append_dir_all(".", &root_owned)?;
        tar.finish()
    });
    let layer = hk_image::ext4::Layer {
        name: format!("--rootfs {}", root.display()),
        tar: reader,
    };
    let converted = hk_image::ext4::convert([layer], out, &hk_image::ext4::Options::default());
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the tar writer panicked"))?;
    produced.with_context(|| format!("cannot read {}", root.display()))?;
    converted.with_context(|| format!("cannot convert {} to ext4", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::needs_interpreter;
    use std::path::Path;

    #[test]
    fn a_dynamically_linked_program_is_told_from_a_static_one() {
        // This test binary is dynamically linked; Debian's busybox-static (scripts/setup
        // installs it) is not.
        assert!(needs_interpreter(&std::env::current_exe().unwrap()));
        assert!(!needs_interpreter(Path::new("/bin/busybox")));
        assert!(!needs_interpreter(Path::new("/etc/passwd")));
    }
}
