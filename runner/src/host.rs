//! Facts about the host that decide how hk runs a VM: where its files live and what kind of
//! KVM (if any) is here.

use std::path::{Path, PathBuf};

/// What `/dev/kvm` on this host can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kvm {
    /// Hardware-assisted KVM (kvm_intel or kvm_amd): boots hk's stock guest kernel.
    Hardware,
    /// kvm-pvm, a software hypervisor behind the KVM API that boots only PVM-patched guest
    /// kernels; a stock kernel dies early in boot. VMs go through the nested lab instead.
    Pvm,
    /// `/dev/kvm` exists but this user cannot open it.
    NoAccess,
    /// No `/dev/kvm` at all.
    Missing,
}

impl Kvm {
    pub fn detect() -> Kvm {
        let dev = Path::new("/dev/kvm");
        if !dev.exists() {
            return Kvm::Missing;
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .is_err()
        {
            return Kvm::NoAccess;
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return Kvm::Pvm;
        }
        Kvm::Hardware
    }

    /// One line for a person: what this means and what to do about it.
    pub fn explain(self) -> &'static str {
        match self {
            Kvm::Hardware => "hardware KVM: VMs run directly on this host",
            Kvm::Pvm => {
                "kvm-pvm (software KVM that boots only PVM-patched kernels): \
                 run VMs in the nested lab, scripts/lab -- hk ..."
            }
            Kvm::NoAccess => {
                "/dev/kvm is not accessible to this user: add yourself to the group that owns \
                 it (usually `kvm`) and log in again"
            }
            Kvm::Missing => {
                "no /dev/kvm: enable virtualization in the firmware and load kvm_intel or kvm_amd"
            }
        }
    }
}

/// `$XDG_CACHE_HOME/hk` (or `~/.cache/hk`), overridden by `HK_CACHE_DIR`; kernel builds
/// and other rebuildable artifacts live here, keyed by their inputs.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HK_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("hk");
    }
    home().join(".cache").join("hk")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The guest kernel: `HK_KERNEL` when set, else the newest build of `kernel/build.sh guest`.
pub fn guest_kernel() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HK_KERNEL") {
        return Some(PathBuf::from(path));
    }
    let path = cache_dir().join("kernel").join("guest").join("vmlinux");
    path.exists().then_some(path)
}

/// Where running containers keep their state (sockets, writable layers, console logs):
/// `$XDG_RUNTIME_DIR/hk` as podman does, else `/tmp/hk-<uid>` (created private).
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HK_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("hk");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("hk-{uid}"));
    if std::fs::create_dir(&dir).is_ok() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

/// Raises this process's soft limit on open files to its hard limit, as virtiofsd raises
/// its own. A virtio-fs share keeps one descriptor (O_PATH) open for each host file the
/// guest has looked up and not yet forgotten, and a guest keeps what it walked in its
/// cache: a `find` over 10,000 files holds 10,000 descriptors, far past the usual soft
/// limit of 1024. The hard limit (often 524288 under systemd; 4096 by the kernel's
/// default) stays the bound; past it the guest's lookups fail with EMFILE.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
