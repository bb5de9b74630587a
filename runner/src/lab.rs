//! Running a VM command inside the nested KVM lab when this host's KVM cannot boot hk's
//! stock guest kernel (kvm-pvm). The lab (`scripts/lab` in the hk repository) is a QEMU-
//! emulated machine with a real KVM; hk re-runs the same command line inside it, so a
//! person on such a host types the same `hk` command as everyone else.

use crate::host::Kvm;
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Set inside the lab run so that hk never tries to nest a second lab.
const IN_LAB_ENV: &str = "HK_IN_LAB";

/// Returns `None` when the command should run right here, or the exit code of the same
/// command run inside the lab. `writable` are paths the command writes (disk images, the
/// data directory); the lab shares them read-write, everything else is read-only there.
pub fn run_in_lab_if_needed(writable: &[PathBuf]) -> Option<anyhow::Result<ExitCode>> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    needed().then(|| run_in_lab(writable, &args))
}

/// Whether a VM started here would run in the lab.
pub fn needed() -> bool {
    std::env::var_os(IN_LAB_ENV).is_none() && Kvm::detect() == Kvm::Pvm
}

/// Runs `hk ARGS` in the lab.
pub fn run_in_lab(writable: &[PathBuf], args: &[OsString]) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locate the hk binary")?;
    let lab = find_lab(&exe)?;
    eprintln!(
        "hk: this host's /dev/kvm is kvm-pvm, which cannot boot a stock kernel; \
         running in the nested KVM lab (emulated, slow)"
    );
    let mut cmd = Command::new(&lab);
    for dir in share_dirs(writable) {
        cmd.arg("--share").arg(dir);
    }
    cmd.arg("--").arg(&exe).args(args).env(IN_LAB_ENV, "1");
    let status = cmd
        .status()
        .with_context(|| format!("run {}", lab.display()))?;
    // 125 is both the lab's own failure (it says so on stderr) and hk's (docker's runner
    // error); either way the message is above and the status passes through.
    match status.code() {
        Some(code) => Ok(ExitCode::from(code as u8)),
        None => bail!("the nested lab was killed: {status}"),
    }
}

/// `HK_LAB`, or `scripts/lab` in the repository this hk binary was built in
/// (`<repo>/target/<profile>/hk`).
fn find_lab(exe: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HK_LAB") {
        return Ok(PathBuf::from(path));
    }
    exe.ancestors()
        .map(|dir| dir.join("scripts/lab"))
        .find(|p| p.is_file())
        .context(
            "this host's /dev/kvm is kvm-pvm and hk cannot find its nested lab: \
             set HK_LAB to the scripts/lab of an hk checkout",
        )
}

/// The directories to share read-write: each writable path's directory (a file cannot be
/// a 9p share), never `/` (sharing it would hide the read-only host view), and each only
/// once, outermost first so that nested shares do not hide one another.
fn share_dirs(writable: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = writable
        .iter()
        .filter_map(|p| {
            let p = std::path::absolute(p).ok()?;
            if p.is_dir() {
                Some(p)
            } else {
                p.parent().map(Path::to_path_buf)
            }
        })
        .filter(|d| d.parent().is_some())
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut outer: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !outer.iter().any(|o| dir.starts_with(o)) {
            outer.push(dir);
        }
    }
    outer
}

#[cfg(test)]
mod tests {
    use super::share_dirs;
    use std::path::PathBuf;

    #[test]
    fn shares_are_outermost_directories_never_root() {
        let tmp = std::env::temp_dir().join(format!("hk-share-test-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("a/b")).unwrap();
        std::fs::write(tmp.join("a/b/disk.img"), b"").unwrap();
        let got = share_dirs(&[
            tmp.join("a/b/disk.img"),
            tmp.join("a"),
            PathBuf::from("/"),
            tmp.join("a/b"),
        ]);
        assert_eq!(got, vec![tmp.join("a")]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
