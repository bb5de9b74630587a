//! virtio-fs's request path: FUSE requests in fuzzer-filled hiprio and request queues,
//! served by hk's share (its rules around fuse-backend-rs's passthrough) over a small
//! directory, read-write or read-only (control flag 0), with each cache mode (flags 1, 2).
//!
//! A read-write share lets the guest write and fallocate as much as the filesystem holds,
//! which is the point of a share, not a bug; so the directory is on a 16 MiB tmpfs mounted
//! in a mount namespace of the fuzzing thread's own (root or a user namespace needed).
//! Where that cannot be had, every share is read-only.
#![no_main]

use hk_devices::virtio::fs::{Cache, Fs};
use hk_devices::virtio::VirtioDevice;
use hk_fuzz::{run_device, Input};
use libfuzzer_sys::fuzz_target;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory shares are made in, and whether it is a bounded tmpfs.
fn root() -> &'static (PathBuf, bool) {
    static ROOT: OnceLock<(PathBuf, bool)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join("hk-fuzz-fs");
        std::fs::create_dir_all(&dir).expect("fuzz directory");
        let bounded = mount_tmpfs(&dir);
        if !bounded {
            eprintln!("virtio_fs: no tmpfs of its own (needs root); fuzzing read-only shares");
        }
        (dir, bounded)
    })
}

fn mount_tmpfs(dir: &std::path::Path) -> bool {
    let c = |s: &str| CString::new(s).expect("no NUL");
    let target = c(dir.to_str().expect("UTF-8 temp dir"));
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                c("size=16m,nr_inodes=4096").as_ptr().cast(),
            ) == 0
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let (root, bounded) = root();
    let share = root.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(share.join("d")).expect("share");
    std::fs::write(share.join("a"), b"hello, fuzzer\n").expect("file");
    std::fs::write(share.join("d/b"), vec![7u8; 5000]).expect("file");
    let _ = std::os::unix::fs::symlink("a", share.join("l"));
    let read_only = input.flag(0, 0) || !bounded;
    let cache = match (input.flag(0, 1), input.flag(0, 2)) {
        (false, false) => Cache::Auto,
        (true, false) => Cache::Always,
        _ => Cache::Never,
    };
    let mut fs = Fs::new(&share, "fuzz", read_only, cache).expect("share");
    let features = fs.features();
    run_device(&mut fs, features, &input, input.rounds(), &mut |_| {});
});
