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
    build_kernel(&["guest"])
}

/// The arm64 guest kernel (an `Image`), built by `kernel/build.sh guest --arch arm64`.
pub fn arm64_guest_kernel() -> PathBuf {
    build_kernel(&["guest", "--arch", "arm64"])
}

fn build_kernel(args: &[&str]) -> PathBuf {
    let script = repo_root().join("kernel/build.sh");
    let out = Command::new(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "kernel/build.sh {} failed ({}); see its output above",
        args.join(" "),
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

/// Debian's busybox-static for arm64, which scripts/setup unpacks beside the host's (the
/// two packages cannot both be installed).
pub fn arm64_busybox() -> PathBuf {
    let path = PathBuf::from("/usr/local/lib/hk/arm64/bin/busybox");
    assert!(
        path.exists(),
        "{} is missing: scripts/setup unpacks Debian's busybox-static:arm64 there",
        path.display()
    );
    path
}

/// Writes hk's offline demo image (`scripts/demo-image`: Debian's busybox-static, a
/// docker-archive tarball) to `out`.
pub fn demo_image(out: &Path) {
    let script = repo_root().join("scripts/demo-image");
    let res = Command::new(&script)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        res.status.success(),
        "scripts/demo-image: {}",
        String::from_utf8_lossy(&res.stderr)
    );
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

    /// Adds a busybox built for another architecture at /bin/busybox, without applet links
    /// (the host cannot run it to list them): scripts call `/bin/busybox APPLET`.
    pub fn foreign_busybox(self, path: &Path) -> Self {
        let body = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        self.file("bin/busybox", body, 0o755)
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

/// How long one case of an [`UnprivilegedSession`] may run: far past the slowest case
/// (a multi-stage build, about two minutes in a loaded lab), so only a hang reaches it.
/// `HK_TEST_CASE_TIMEOUT` (seconds) overrides it, to see a hang's dump sooner.
fn case_timeout() -> u64 {
    std::env::var("HK_TEST_CASE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

/// Shell for the cases' script: `hk_case_wait PID NAME SECS` waits for a case's job; past
/// SECS it appends to the case's stderr the user's processes, gdb's backtraces of every
/// thread of each hk process (the session's hk keeps its symbols), each container's last
/// console lines and its guest's processes, and the host kernel's last messages; then it
/// kills the job's process group and returns 124.
const CASE_WATCHDOG: &str = r#"hk_case_dump() {
  echo "hk-tests: the case timed out; the user's processes:"
  ps -u "$(id -u)" -o pid,ppid,pgid,stat,etime,args
  for p in $(pgrep -u "$(id -u)" -x hk); do
    echo "--- hk $p: $(tr '\0' ' ' </proc/$p/cmdline)"
    command -v gdb >/dev/null && timeout 60 gdb -p "$p" -batch -ex 'thread apply all bt 30' 2>&1 \
      | grep '^Thread \|^#'
  done
  for c in "$HK_DATA_DIR"/containers/*/; do
    [ -f "$c/console.log" ] && { echo "--- $c console.log"; tail -n 30 "$c/console.log"; }
    # The guest's side, if its agent still answers.
    id=$(basename "$c")
    [ -S "$HK_RUNTIME_DIR/run/${id%"${id#????????????}"}/vsock.sock" ] || continue
    echo "--- $id: ps in the guest"
    timeout 30 $hk exec "$id" ps -o pid,stat,args 2>&1
  done
  # The L1's kernel (in the lab): KVM's complaints about a nested guest land here.
  echo "--- the host kernel's last messages"
  dmesg 2>&1 | tail -n 30
}
hk_case_wait() {
  ( sleep "$3"; kill -0 "$1" 2>/dev/null || exit; hk_case_dump >>"$2.err" 2>&1
    : >"$2.timedout"; kill -9 -- -"$1" ) &
  local dog=$!
  wait "$1"; local status=$?
  kill -- -"$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  if [ -e "$2.timedout" ]; then return 124; fi
  return "$status"
}"#;

/// What one shell case of [`UnprivilegedSession`] did.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub status: i32,
    pub out: String,
    pub err: String,
}

/// Shell cases run with a KVM (the host's or the lab's, in one session) by an unprivileged
/// user with access to /dev/kvm and nothing more, as a person runs hk. hk (without debug
/// info: the lab reads it over 9p), its static agent and every input are copied into the lab's
/// memory first, because that user may not traverse the checkout's directories (a private
/// clone); each case's stdout, stderr and status are copied back.
///
/// In the cases: `$T` is the private directory (mode 0755, the user's), `$hk` runs hk,
/// inputs are in the working directory `$T/work` (what cases leave in `$T/work/keep/` comes
/// back to `dir/keep/`), hk's state lives in `$T/data` (a copy of
/// `dir/data` when the test made one), `$T/run`, `$T/cache` and `$T/home`.
pub struct UnprivilegedSession {
    /// The test's scratch dir: inputs (`*.sh`, `*.tar`, `data/`) and, afterwards, results.
    pub dir: PathBuf,
    /// The unprivileged uid (and gid) when the test runs as root, as it does in the lab.
    pub uid: u32,
    /// Lines run as root in the lab after `$T` is ready and before the cases.
    pub root_setup: String,
    /// Lines at the top of the cases' script, after hk's environment (exports for cases).
    pub prelude: String,
}

impl UnprivilegedSession {
    pub fn new(dir: PathBuf, uid: u32) -> UnprivilegedSession {
        UnprivilegedSession {
            dir,
            uid,
            root_setup: String::new(),
            prelude: String::new(),
        }
    }

    /// Runs `cases` (name, shell lines) in order, then `last` (a case that checks what is
    /// left); returns each by name. Panics when the session itself fails.
    pub fn run(
        &self,
        hk: &Path,
        cases: &[(&str, &str)],
        last: (&str, &str),
        timeout: Duration,
    ) -> std::collections::HashMap<String, Case> {
        let dir = &self.dir;
        fs::copy(guest_kernel(), dir.join("vmlinux")).expect("copy the guest kernel");
        let status = Command::new("strip")
            .args(["--strip-debug", "-o"])
            .arg(dir.join("hk"))
            .arg(hk)
            .status()
            .expect("run strip");
        assert!(status.success(), "strip hk");
        let agent = hk
            .parent()
            .expect("hk is in a target directory")
            .join("../x86_64-unknown-linux-gnu/agent/hk-agent");
        fs::copy(&agent, dir.join("hk-agent"))
            .unwrap_or_else(|e| panic!("{}: {e} (build the static agent first)", agent.display()));
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("create data");
        let uid = self.uid;
        let wrapper = format!(
            "set -e\nT=$(mktemp -d /tmp/hk-session.XXXXXX)\nchmod 755 $T\ncp -a {data} $T/data\n\
             mkdir -p $T/home $T/cache $T/bin $T/work\ncp {dir}/hk {dir}/hk-agent $T/bin/\n\
             cp {dir}/*.sh {dir}/vmlinux $T/work/\ncp {dir}/*.tar $T/work/ 2>/dev/null || true\n\
             set +e\n\
             if [ \"$(id -u)\" = 0 ]; then\n\
               g=$(stat -c %g /dev/kvm)\n\
               if [ \"$g\" = 0 ]; then g={gid}; chgrp $g /dev/kvm; chmod g+rw /dev/kvm; fi\n\
               chown -R {uid}:{uid} $T\n\
               {root_setup}\n\
               setpriv --reuid={uid} --regid={uid} --groups=$g --inh-caps=-all \
                 --bounding-set=-all env T=$T bash $T/work/cases.sh\n\
             else\n  {root_setup}\n  env T=$T bash $T/work/cases.sh\nfi\nstatus=$?\n\
             cp $T/work/*.out $T/work/*.err $T/work/*.status {dir}/\ncp -r $T/work/keep {dir}/ 2>/dev/null || true\nexit $status\n",
            data = data.display(),
            dir = dir.display(),
            gid = uid + 1,
            root_setup = self.root_setup,
        );
        // Each case runs as a job of its own (its own process group) under a watchdog: a
        // case that hangs is killed with what it was waiting on appended to its stderr,
        // fails alone with status 124, and the cases after it still run.
        let mut script = format!(
            "set -m\n{CASE_WATCHDOG}\npin=\nif [ \"$(nproc)\" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi\n\
             export HK_KERNEL=$T/work/vmlinux HK_AGENT=$T/bin/hk-agent HK_CACHE_DIR=$T/cache \
             HK_RUNTIME_DIR=$T/run HK_DATA_DIR=$T/data HOME=$T/home\n\
             hk=\"$pin $T/bin/hk\"\nexport hk\ncd $T/work\n{}\n",
            self.prelude
        );
        let secs = case_timeout();
        for (name, lines) in cases.iter().chain([&last]) {
            fs::write(dir.join(format!("{name}.sh")), format!("{lines}\n")).expect("write case");
            script.push_str(&format!(
                "echo '[case {name}]' >&2\n( set +m; . ./{name}.sh ) >{name}.out 2>{name}.err </dev/null &\n\
                 hk_case_wait $! {name} {secs}\necho $? >{name}.status\n",
            ));
        }
        script.push_str("echo done\n");
        fs::write(dir.join("cases.sh"), script).expect("write cases.sh");
        let wrapper_path = dir.join("wrapper.sh");
        fs::write(&wrapper_path, wrapper).expect("write wrapper.sh");
        let out = run_with_kvm(Path::new("/bin/bash"), &[wrapper_path.as_os_str()], timeout);
        assert!(
            out.status.success(),
            "the case script failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |file: String| fs::read_to_string(dir.join(&file)).unwrap_or_default();
        cases
            .iter()
            .chain([&last])
            .map(|(name, _)| {
                let case = Case {
                    status: read(format!("{name}.status")).trim().parse().unwrap_or(-1),
                    out: read(format!("{name}.out")),
                    err: read(format!("{name}.err")),
                };
                (name.to_string(), case)
            })
            .collect()
    }
}
