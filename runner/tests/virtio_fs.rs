//! virtio-fs on a real KVM (the host's, or the nested lab's): `hk vm boot --share` with a
//! busybox initramfs whose init mounts a read-write and a read-only share. The guest reads
//! what the test wrote, writes back, sets an owner, and tries to write where it must not;
//! the host then checks what landed. One boot, in one lab session.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const INIT: &str = r#"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ctl_exit() { devmem 0xd0000004 32 "$1"; }
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs data /mnt/rw; echo "mount-rw:$?"
# Mounted writable in the guest on purpose: the host must refuse the writes itself.
mount -t virtiofs keep /mnt/ro; echo "mount-ro:$?"
echo "read:$(cat /mnt/rw/from-host.txt)"
echo "from-the-guest" > /mnt/rw/from-guest.txt; echo "write:$?"
mkdir /mnt/rw/made-dir && echo nested > /mnt/rw/made-dir/nested.txt; echo "mkdir:$?"
echo "root-owner:$(stat -c %u:%g /mnt/rw/from-guest.txt)"
touch /mnt/rw/chowned.txt && chown 1234:5678 /mnt/rw/chowned.txt; echo "chown:$?"
echo "chowned-owner:$(stat -c %u:%g /mnt/rw/chowned.txt)"
touch /mnt/rw/suid.txt && chmod 4755 /mnt/rw/suid.txt; echo "suid-mode:$(stat -c %a /mnt/rw/suid.txt)"
if mknod /mnt/rw/null c 1 3 2>/dev/null; then echo "mknod:made"; else echo "mknod:refused"; fi
echo "ro-read:$(cat /mnt/ro/keep.txt)"
if echo bad > /mnt/ro/new.txt 2>/dev/null; then echo "ro-create:ok"; else echo "ro-create:refused"; fi
if echo bad >> /mnt/ro/keep.txt 2>/dev/null; then echo "ro-append:ok"; else echo "ro-append:refused"; fi
if rm /mnt/ro/keep.txt 2>/dev/null; then echo "ro-rm:ok"; else echo "ro-rm:refused"; fi
if mkdir /mnt/ro/d 2>/dev/null; then echo "ro-mkdir:ok"; else echo "ro-mkdir:refused"; fi
echo "ls-ro:$(ls /mnt/ro | tr '\n' ' ')"
sync
umount /mnt/rw; echo "umount:$?"
umount /mnt/ro
ctl_exit 0
"#;

struct Boot {
    dir: PathBuf,
    status: i32,
    console: String,
    stderr: String,
}

impl std::fmt::Debug for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- console ---\n{}\n--- stderr ---\n{}",
            self.status, self.console, self.stderr
        )
    }
}

fn boot() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let dir = scratch_dir("virtio-fs");
        let initrd = dir.join("initramfs.cpio.gz");
        Initramfs::new()
            .busybox()
            .init_script(INIT)
            .write(&initrd)
            .unwrap();
        let rw = dir.join("rw");
        let ro = dir.join("ro");
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(rw.join("from-host.txt"), "written-by-the-test").unwrap();
        std::fs::write(ro.join("keep.txt"), "read-only-content").unwrap();
        // Pinned to the L1's CPU 1, as vm_boot.rs explains.
        let script = format!(
            "pin=\nif [ \"$(nproc)\" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi\n\
             cd {dir}\n\
             $pin {hk} vm boot --kernel {kernel} --initrd {initrd} \
             --share {rw}:data --share {ro}:keep:ro \
             --console boot.console --cmdline 'console=ttyS0 quiet' 2>boot.stderr </dev/null\n\
             echo $? >boot.status\n",
            dir = dir.display(),
            hk = env!("CARGO_BIN_EXE_hk"),
            kernel = guest_kernel().display(),
            initrd = initrd.display(),
            rw = rw.display(),
            ro = ro.display(),
        );
        let script_path = dir.join("boot.sh");
        std::fs::write(&script_path, script).unwrap();
        let out = run_with_kvm(
            Path::new("/bin/sh"),
            &[script_path.as_os_str()],
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "the boot script failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let status = read("boot.status");
        Boot {
            status: status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("the boot did not run: {status:?}")),
            console: read("boot.console").replace('\r', ""),
            stderr: read("boot.stderr"),
            dir,
        }
    })
}

/// The value after `key:` on a console line.
fn value<'a>(b: &'a Boot, key: &str) -> &'a str {
    let prefix = format!("{key}:");
    b.console
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}: line\n{b:?}"))
        .trim()
}

fn euid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() }
}

#[test]
fn the_guest_reads_the_hosts_file_and_its_writes_reach_the_host_owned_by_the_host_user() {
    let b = boot();
    assert_eq!(b.status, 0, "{b:?}");
    assert_eq!(value(b, "mount-rw"), "0", "{b:?}");
    assert_eq!(value(b, "read"), "written-by-the-test", "{b:?}");
    assert_eq!(value(b, "write"), "0", "{b:?}");
    assert_eq!(value(b, "mkdir"), "0", "{b:?}");
    assert_eq!(value(b, "umount"), "0", "{b:?}");
    let rw = b.dir.join("rw");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest.txt")).unwrap(),
        "from-the-guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("made-dir/nested.txt")).unwrap(),
        "nested\n"
    );
    for f in [
        "from-guest.txt",
        "made-dir",
        "made-dir/nested.txt",
        "chowned.txt",
    ] {
        let meta = std::fs::metadata(rw.join(f)).unwrap();
        assert_eq!(
            meta.uid(),
            euid(),
            "{f} is owned by the host user running hk"
        );
    }
}

#[test]
fn ownership_the_guest_sets_is_shown_back_and_the_host_owner_stays() {
    let b = boot();
    assert_eq!(value(b, "root-owner"), "0:0", "{b:?}");
    assert_eq!(value(b, "chown"), "0", "{b:?}");
    assert_eq!(value(b, "chowned-owner"), "1234:5678", "{b:?}");
    let meta = std::fs::metadata(b.dir.join("rw/chowned.txt")).unwrap();
    assert_eq!(meta.uid(), euid());
}

#[test]
fn setuid_bits_and_device_nodes_do_not_reach_the_host() {
    let b = boot();
    assert_eq!(value(b, "suid-mode"), "755", "{b:?}");
    assert_eq!(value(b, "mknod"), "refused", "{b:?}");
    let rw = b.dir.join("rw");
    assert_eq!(
        std::fs::metadata(rw.join("suid.txt")).unwrap().mode() & 0o7000,
        0
    );
    assert!(!rw.join("null").exists());
}

#[test]
fn a_read_only_share_refuses_writes_even_mounted_writable_in_the_guest() {
    let b = boot();
    assert_eq!(value(b, "mount-ro"), "0", "{b:?}");
    assert_eq!(value(b, "ro-read"), "read-only-content", "{b:?}");
    for key in ["ro-create", "ro-append", "ro-rm", "ro-mkdir"] {
        assert_eq!(value(b, key), "refused", "{key}\n{b:?}");
    }
    assert_eq!(value(b, "ls-ro"), "keep.txt", "{b:?}");
    let ro = b.dir.join("ro");
    assert_eq!(
        std::fs::read_to_string(ro.join("keep.txt")).unwrap(),
        "read-only-content"
    );
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
}
