//! Support code shared by hk's VM tests: where a VM can run, the guest kernel, initramfs
//! images, and scratch space that both the host and the nested lab can write.
//!
//! A VM test never skips. If it cannot find a KVM that boots hk's stock guest kernel (the
//! host's, or the nested lab's on a kvm-pvm host), it fails and says why: a green run must
//! mean the VMs really ran.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The root of the hk repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the repository")
        .to_path_buf()
}

/// The guest kernel, built (or found in the cache) by `kernel/build.sh guest`.
pub fn guest_kernel() -> PathBuf {
    build_kernel("guest")
}

fn build_kernel(flavor: &str) -> PathBuf {
    let script = repo_root().join("kernel/build.sh");
    let out = Command::new(&script)
        .arg(flavor)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "kernel/build.sh {flavor} failed ({}); see its output above",
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Debian's busybox-static, the userland of every test initramfs.
pub fn busybox() -> PathBuf {
    let path = PathBuf::from("/bin/busybox");
    assert!(
        path.exists(),
        "{} is missing: apt-get install busybox-static",
        path.display()
    );
    path
}

/// Where a test's VMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kvm {
    /// This host's /dev/kvm boots stock kernels.
    Host,
    /// This host has no such KVM (kvm-pvm, or none): VMs run inside `scripts/lab`.
    Lab,
}

/// Host KVM when it can boot a stock kernel, the lab otherwise. `HK_TEST_KVM=host|lab`
/// overrides the choice.
pub fn kvm() -> Kvm {
    match std::env::var("HK_TEST_KVM").as_deref() {
        Ok("host") => return Kvm::Host,
        Ok("lab") => return Kvm::Lab,
        Ok(other) => panic!("HK_TEST_KVM={other}: expected host or lab"),
        Err(_) => {}
    }
    let hardware = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    // kvm-pvm runs only PVM-patched guests, so it never counts as a host KVM here.
    if usable && hardware && !Path::new("/sys/module/kvm_pvm").exists() {
        Kvm::Host
    } else {
        Kvm::Lab
    }
}

/// The directory under which every scratch dir lives; the lab mounts it read-write.
pub fn scratch_root() -> PathBuf {
    let root = repo_root().join("target/hk-scratch");
    fs::create_dir_all(&root).expect("create target/hk-scratch");
    root
}

/// A fresh, empty directory for one test, readable and writable both on the host and
/// inside the lab (at the same path). It stays after the test for post-mortems; the next
/// run of the same test replaces it.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch_root().join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Runs `program` where a KVM that boots stock kernels is: directly on the host, or inside
/// the lab. The status is the program's own. Panics, saying why, when the VM environment
/// itself fails (lab broken, timeout), so that a test never passes without having run.
pub fn run_with_kvm(program: &Path, args: &[&OsStr], timeout: Duration) -> Output {
    match kvm() {
        Kvm::Host => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            run_with_timeout(cmd, timeout)
        }
        Kvm::Lab => {
            let mut cmd = Command::new(repo_root().join("scripts/lab"));
            cmd.arg("--timeout")
                .arg(timeout.as_secs().max(1).to_string())
                .arg("--share")
                .arg(scratch_root())
                .arg("--")
                .arg(program)
                .args(args);
            // The lab emulates every instruction on 2 cores; two at once only slow each
            // other down, so lab runs from all test processes take turns.
            let _turn = lab_lock();
            let out = run_with_timeout(cmd, timeout + Duration::from_secs(120));
            match out.status.code() {
                Some(124) => panic!(
                    "{} timed out in the lab after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    program.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Some(125) => panic!(
                    "the lab could not run {}:\n{}",
                    program.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => out,
            }
        }
    }
}

/// An exclusive lock held while a lab runs. It is one per user and machine, not per checkout:
/// two labs on one machine slow each other past the lab's own timeouts, whichever worktree
/// they run from. `HK_LAB_LOCK` names another file (scripts/bench-run takes the same one).
pub fn lab_lock() -> fs::File {
    let path = std::env::var_os("HK_LAB_LOCK").map_or_else(
        || std::env::temp_dir().join(format!("hk-lab-{}.lock", nix::unistd::getuid())),
        PathBuf::from,
    );
    let file = fs::File::create(&path)
        .unwrap_or_else(|e| panic!("cannot create the lab lock {}: {e}", path.display()));
    file.lock().expect("take lab lock");
    file
}

/// Runs `cmd` with its output captured; panics when it outlives `timeout` (it is killed).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader").expect("read stdout"),
        stderr: err_t.join().expect("stderr reader").expect("read stderr"),
    }
}

/// A gzip-compressed newc cpio archive for the kernel to unpack as its initial root.
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

enum Entry {
    Dir(String),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    CharDev(String, u32, u32),
}

impl Initramfs {
    pub fn new() -> Self {
        let mut image = Initramfs::default();
        for dir in ["dev", "proc", "sys", "tmp", "run", "mnt", "root", "etc"] {
            image.entries.push(Entry::Dir(dir.to_string()));
        }
        // Without /dev/console in the archive, the kernel starts init with no stdio.
        image
            .entries
            .push(Entry::CharDev("dev/console".to_string(), 5, 1));
        image
    }

    /// Adds busybox at /bin/busybox with a link for each of its applets.
    pub fn busybox(mut self) -> Self {
        let bb = busybox();
        let list = Command::new(&bb)
            .arg("--list-full")
            .output()
            .expect("run busybox --list-full");
        let body = fs::read(&bb).expect("read busybox");
        self = self.file("bin/busybox", body, 0o755);
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "bin/busybox" && !applet.is_empty() {
                self.entries.push(Entry::Symlink(
                    applet.to_string(),
                    "/bin/busybox".to_string(),
                ));
            }
        }
        self
    }

    /// Adds a regular file; missing parent directories are created.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        let path = path.trim_start_matches('/').to_string();
        self.entries.push(Entry::File(path, contents.into(), mode));
        self
    }

    /// Makes `script` the init (PID 1): a shell script run by busybox.
    pub fn init_script(self, script: &str) -> Self {
        let body = format!("#!/bin/busybox sh\n{script}");
        self.file("init", body, 0o755)
    }

    /// Writes the archive to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let file = fs::File::create(path)?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut dirs = std::collections::BTreeSet::new();
        let mut ino = 1u32;
        for entry in &self.entries {
            let path = match entry {
                Entry::Dir(p)
                | Entry::File(p, ..)
                | Entry::Symlink(p, _)
                | Entry::CharDev(p, ..) => p,
            };
            // Parents first: the kernel's unpacker does not create them.
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if dirs.insert(p.to_string_lossy().into_owned()) {
                    missing.push(p.to_string_lossy().into_owned());
                }
                parent = p.parent();
            }
            for dir in missing.into_iter().rev() {
                ino += 1;
                write_entry(&mut gz, &dir, 0o040755, ino, &[], (0, 0))?;
            }
            ino += 1;
            match entry {
                Entry::Dir(p) => {
                    if dirs.insert(p.clone()) {
                        write_entry(&mut gz, p, 0o040755, ino, &[], (0, 0))?;
                    }
                }
                Entry::File(p, body, mode) => {
                    write_entry(&mut gz, p, 0o100000 | mode, ino, body, (0, 0))?
                }
                Entry::Symlink(p, target) => {
                    write_entry(&mut gz, p, 0o120777, ino, target.as_bytes(), (0, 0))?
                }
                Entry::CharDev(p, major, minor) => {
                    write_entry(&mut gz, p, 0o020600, ino, &[], (*major, *minor))?
                }
            }
        }
        cpio::newc::trailer(&mut gz)?;
        gz.finish()?.sync_all()
    }
}

fn write_entry<W: Write>(
    w: &mut W,
    name: &str,
    mode: u32,
    ino: u32,
    body: &[u8],
    rdev: (u32, u32),
) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("file too large for cpio"))?;
    let mut writer = cpio::newc::Builder::new(name)
        .ino(ino)
        .mode(mode)
        .nlink(if mode & 0o170000 == 0o040000 { 2 } else { 1 })
        .rdev_major(rdev.0)
        .rdev_minor(rdev.1)
        .write(w, len);
    writer.write_all(body)?;
    writer.finish()?;
    Ok(())
}
