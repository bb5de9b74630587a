//! hk's ext4 writer on hostile tar streams: one to three layers (cut from the input at the
//! lengths its first bytes give) converted into an image, as a pull or a load converts a
//! registry's layers.
//!
//! Input: `[0]` layer count (1 + v % 3), `[1..5]` and `[5..9]` lengths of the first and
//! second layer (little-endian, clamped), then the layers' bytes.
#![no_main]

use hk_image::ext4::{convert, Inodes, Layer, Options, Size};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn out() -> &'static PathBuf {
    static OUT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &OUT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rootfs.ext4");
        (dir, path)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let count = 1 + usize::from(data[0] % 3);
    let len = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let mut rest = &data[9..];
    let mut layers = Vec::new();
    for i in 0..count {
        let n = if i + 1 == count {
            rest.len()
        } else {
            len(1 + 4 * i).min(rest.len())
        };
        let (tar, tail) = rest.split_at(n);
        rest = tail;
        layers.push(Layer {
            name: format!("layer {}", i + 1),
            tar,
        });
    }
    let opts = Options {
        size: Size::Auto {
            headroom_percent: 5,
        },
        inodes: Inodes::Auto {
            headroom_percent: 5,
        },
        label: "fuzz".into(),
        max_file_size: 16 << 20,
        max_total_size: 64 << 20,
        max_entries: 100_000,
        sync: false,
    };
    let _ = convert(layers, out(), &opts);
});
