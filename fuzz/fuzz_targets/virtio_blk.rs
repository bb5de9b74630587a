//! virtio-blk's request path: chains of any layout in fuzzer-filled guest memory against a
//! 64 KiB disk image, read-write or read-only (control flag 0).
#![no_main]

use hk_devices::virtio::block::Block;
use hk_devices::virtio::VirtioDevice;
use hk_fuzz::{run_device, Input};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DISK
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0x5a; 64 << 10]).expect("disk image");
            (dir, path)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mut block = Block::open(disk(), input.flag(0, 0), "fuzz").expect("disk");
    let features = block.features();
    run_device(&mut block, features, &input, input.rounds(), &mut |_| {});
});
