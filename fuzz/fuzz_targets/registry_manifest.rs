//! What a pull does with a registry's answers, short of the network: the top-level manifest
//! or index (platform selection included), an image manifest and its config.
//!
//! Input: `[0..2]` and `[2..4]` lengths of the top-level answer and of the manifest
//! (little-endian, clamped), then those, then the config.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let top_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let manifest_len = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let rest = &data[4..];
    let (top, rest) = rest.split_at(top_len.min(rest.len()));
    let (manifest, config) = rest.split_at(manifest_len.min(rest.len()));
    let _ = hk_image::fuzz_manifests(top, manifest, config);
});
