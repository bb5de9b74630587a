//! `hk load` on hostile tarballs: docker-archive and OCI-layout archives (plain, gzip or
//! zstd), their manifest.json, index.json and nested indexes, configs and layers, loaded
//! into a fresh store (root filesystem conversion included).
#![no_main]

use hk_image::{load, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let _ = load(&store, data, "fuzz.tar");
});
