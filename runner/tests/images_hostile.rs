//! A hostile or broken registry: wrong digests and sizes, absurd sizes, unknown media types,
//! corrupt and truncated gzip/zstd, a config that lies about diff_ids, and a layer that climbs
//! out of the root. Each pull must fail with one error naming the image and the layer, and
//! leave the store with no name, no image, no root filesystem and no temp file.

mod common;

use common::*;
use hk_image::Digest;

/// Pulls `name` expecting failure; checks the error mentions each of `needles` and that the
/// store holds nothing of the failed pull but verified blobs.
fn pull_fails(hk: &Hk, name: &str, needles: &[&str]) -> String {
    pull_fails_with(hk, &[], name, needles)
}

/// [`pull_fails`] with more `hk pull` options.
fn pull_fails_with(hk: &Hk, options: &[&str], name: &str, needles: &[&str]) -> String {
    let args: Vec<&str> = ["pull"]
        .iter()
        .chain(options)
        .chain([&name])
        .copied()
        .collect();
    let err = hk.fails(&args, 125);
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}:\n{err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one clear line:\n{err}");
    assert!(
        hk.store_files("refs").is_empty(),
        "a failed pull recorded a name"
    );
    assert!(
        hk.store_files("images").is_empty(),
        "a failed pull recorded an image"
    );
    let rootfs: Vec<String> = hk
        .store_files("rootfs")
        .into_iter()
        .filter(|f| f.ends_with(".ext4"))
        .collect();
    assert!(
        rootfs.is_empty(),
        "a failed pull left a root filesystem: {rootfs:?}"
    );
    assert!(
        hk.store_files("tmp").is_empty(),
        "a failed pull left temp files: {:?}",
        hk.store_files("tmp")
    );
    hk.assert_store_consistent();
    err
}

fn one_layer(tar: Vec<u8>, c: Compression) -> TestImage {
    TestImage::new(vec![TestLayer {
        tar,
        compression: c,
    }])
}

fn small_tar(seed: u64) -> Vec<u8> {
    TarBuilder::new()
        .dir("data", 0o755)
        .file("data/blob", 0o644, &noise(256 << 10, seed))
        .finish()
}

/// Pushes `image` with its layer blob replaced by `blob` in the manifest (digest and size
/// of the replacement), keeping the config's diff_ids: a registry that serves a layer whose
/// compressed form checks out but whose content does not.
fn push_with_blob(reg: &Registry, repo: &str, image: &TestImage, blob: &[u8], media_type: &str) {
    let config = image.config();
    let config_d = reg.push_blob(repo, &config);
    let d = reg.push_blob(repo, blob);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": d.to_string(), "size": blob.len()}],
    });
    reg.push_manifest(repo, "bad", manifest.to_string().as_bytes(), OCI_MANIFEST);
}

#[test]
fn tampered_blob_digest_mismatch() {
    let reg = Registry::start();
    let image = one_layer(small_tar(1), Compression::Gzip);
    reg.push_image("tampered", "v1", &image);
    let blob = compress(&image.layers[0].tar, Compression::Gzip);
    let d = Digest::of(&blob);
    let mut evil = blob.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0xff;
    std::fs::write(reg.blob_data(&d), &evil).unwrap();
    let hk = Hk::new();
    pull_fails(
        &hk,
        &reg.image_ref("tampered", "v1"),
        &[
            "tampered:v1",
            &format!("layer {} (1/1)", d.short()),
            "digest",
        ],
    );
    assert!(!hk
        .store_files("blobs/sha256")
        .contains(&d.hex().to_string()));
}

#[test]
fn registry_sends_fewer_or_more_bytes_than_declared() {
    let reg = Registry::start();
    let image = one_layer(small_tar(2), Compression::Gzip);
    reg.push_image("short", "v1", &image);
    let blob = compress(&image.layers[0].tar, Compression::Gzip);
    let d = Digest::of(&blob);
    std::fs::write(reg.blob_data(&d), &blob[..blob.len() - 100]).unwrap();
    let hk = Hk::new();
    pull_fails(
        &hk,
        &reg.image_ref("short", "v1"),
        &["short:v1", d.short(), "size mismatch"],
    );

    let mut longer = blob.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    std::fs::write(reg.blob_data(&d), &longer).unwrap();
    pull_fails(
        &hk,
        &reg.image_ref("short", "v1"),
        &["short:v1", d.short(), "size mismatch"],
    );
}

#[test]
fn manifest_lies_about_size_or_claims_an_absurd_one() {
    let reg = Registry::start();
    let image = one_layer(small_tar(3), Compression::Gzip);
    let blob = compress(&image.layers[0].tar, Compression::Gzip);
    let config = image.config();
    let config_d = reg.push_blob("lies", &config);
    let d = reg.push_blob("lies", &blob);
    for (tag, size) in [("bigger", blob.len() as u64 + 1), ("absurd", 1u64 << 50)] {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_d.to_string(), "size": config.len()},
            "layers": [{"mediaType": TAR_GZIP, "digest": d.to_string(), "size": size}],
        });
        reg.push_manifest("lies", tag, manifest.to_string().as_bytes(), OCI_MANIFEST);
    }
    let hk = Hk::new();
    pull_fails(
        &hk,
        &reg.image_ref("lies", "bigger"),
        &["lies:bigger", d.short(), "size mismatch"],
    );
    pull_fails(
        &hk,
        &reg.image_ref("lies", "absurd"),
        &["lies:absurd", d.short(), "absurd"],
    );
    // The absurd layer is refused before anything is downloaded.
    assert!(hk.store_files("blobs/sha256").iter().all(|b| b != d.hex()));
}

#[test]
fn unknown_layer_media_type_is_refused_before_download() {
    let reg = Registry::start();
    let image = one_layer(small_tar(4), Compression::Gzip);
    let blob = compress(&image.layers[0].tar, Compression::Gzip);
    push_with_blob(
        &reg,
        "odd",
        &image,
        &blob,
        "application/vnd.example.layer.v1.tar+lz4",
    );
    let hk = Hk::new();
    pull_fails(
        &hk,
        &reg.image_ref("odd", "bad"),
        &[
            "odd:bad",
            Digest::of(&blob).short(),
            "unsupported layer media type",
            "lz4",
        ],
    );
    assert!(
        hk.store_files("blobs/sha256").is_empty(),
        "nothing was downloaded"
    );

    // An artifact whose config is not an image config (a Helm chart, say).
    let config = br#"{"name":"chart"}"#;
    let config_d = reg.push_blob("chart", config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": [],
    });
    reg.push_manifest("chart", "1", manifest.to_string().as_bytes(), OCI_MANIFEST);
    pull_fails(
        &hk,
        &reg.image_ref("chart", "1"),
        &["chart:1", "not a container image"],
    );
}

#[test]
fn corrupt_and_truncated_compressed_layers() {
    let reg = Registry::start();
    let hk = Hk::new();
    let tar = small_tar(5);
    let image = one_layer(tar.clone(), Compression::Gzip);

    let gz = compress(&tar, Compression::Gzip);
    let mut corrupt = gz.clone();
    for b in &mut corrupt[gz.len() / 3..gz.len() / 3 + 64] {
        *b = 0x55;
    }
    push_with_blob(&reg, "gz-corrupt", &image, &corrupt, TAR_GZIP);
    pull_fails(
        &hk,
        &reg.image_ref("gz-corrupt", "bad"),
        &["gz-corrupt:bad", Digest::of(&corrupt).short(), "(1/1)"],
    );

    let truncated = &gz[..gz.len() / 2];
    push_with_blob(&reg, "gz-short", &image, truncated, TAR_GZIP);
    pull_fails(
        &hk,
        &reg.image_ref("gz-short", "bad"),
        &["gz-short:bad", Digest::of(truncated).short()],
    );

    let zst = compress(&tar, Compression::Zstd);
    let truncated = &zst[..zst.len() / 2];
    push_with_blob(&reg, "zst-short", &image, truncated, TAR_ZSTD);
    pull_fails(
        &hk,
        &reg.image_ref("zst-short", "bad"),
        &["zst-short:bad", Digest::of(truncated).short()],
    );

    let mut corrupt = zst.clone();
    for b in &mut corrupt[zst.len() / 3..zst.len() / 3 + 64] {
        *b = 0xaa;
    }
    push_with_blob(&reg, "zst-corrupt", &image, &corrupt, TAR_ZSTD);
    pull_fails(
        &hk,
        &reg.image_ref("zst-corrupt", "bad"),
        &["zst-corrupt:bad", Digest::of(&corrupt).short()],
    );

    // Plain tar announced as gzip.
    push_with_blob(&reg, "not-gzip", &image, &tar, TAR_GZIP);
    pull_fails(
        &hk,
        &reg.image_ref("not-gzip", "bad"),
        &["not-gzip:bad", Digest::of(&tar).short(), "gzip"],
    );
}

#[test]
fn config_diff_id_that_does_not_match_the_layer() {
    let reg = Registry::start();
    let hk = Hk::new();
    let claimed = one_layer(small_tar(6), Compression::Gzip);
    let served = compress(&small_tar(7), Compression::Gzip);
    push_with_blob(&reg, "liar", &claimed, &served, TAR_GZIP);
    pull_fails(
        &hk,
        &reg.image_ref("liar", "bad"),
        &["liar:bad", Digest::of(&served).short(), "image config says"],
    );
}

#[test]
fn layer_escaping_the_root_fails_the_whole_pull() {
    let reg = Registry::start();
    let hk = Hk::new();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    // tar::Builder refuses `..`, so write the name into the header by hand.
    h.as_old_mut().name[..13].copy_from_slice(b"../etc/passwd");
    h.set_cksum();
    tar.append(&h, &b"evil"[..]).unwrap();
    let evil = tar.into_inner().unwrap();
    let good = TestLayer {
        tar: small_tar(8),
        compression: Compression::Gzip,
    };
    let image = TestImage::new(vec![
        good,
        TestLayer {
            tar: evil.clone(),
            compression: Compression::Zstd,
        },
    ]);
    reg.push_image("escape", "v1", &image);
    let d = Digest::of(&compress(&evil, Compression::Zstd));
    pull_fails(
        &hk,
        &reg.image_ref("escape", "v1"),
        &[
            "escape:v1",
            &format!("{} (2/2)", d.short()),
            "../etc/passwd",
        ],
    );
}

/// A single-platform image (no index) whose config says another platform than `--platform`
/// asks for is refused with Docker's words, before a layer is fetched; without
/// `--platform` it is pulled, as Docker pulls it.
#[test]
fn single_manifest_for_another_platform_than_asked() {
    let reg = Registry::start();
    let image = one_layer(small_tar(9), Compression::Gzip);
    reg.push_image("amd", "v1", &image);
    let name = reg.image_ref("amd", "v1");
    let hk = Hk::new();
    pull_fails_with(
        &hk,
        &["--platform", "linux/arm64"],
        &name,
        &[&format!(
            "image with reference {name} was found but does not match the specified \
             platform: wanted linux/arm64, actual: linux/amd64"
        )],
    );
    let layer = Digest::of(&compress(&image.layers[0].tar, Compression::Gzip));
    assert!(
        !hk.store_files("blobs/sha256")
            .contains(&layer.hex().to_string()),
        "no layer is fetched for the wrong platform"
    );
    hk.ok(&["pull", "-q", "--platform", "linux/amd64", &name]);

    let mut arm = one_layer(small_tar(10), Compression::Gzip);
    arm.architecture = "arm64".into();
    reg.push_image("arm", "v1", &arm);
    let arm_name = reg.image_ref("arm", "v1");
    let hk = Hk::new();
    hk.ok(&["pull", "-q", "--no-convert", &arm_name]);
    hk.ok(&["pull", "-q", "--platform", "linux/arm64/v8", &arm_name]);
}

/// A registry that answers `/v2/` as an open one and every manifest request with `head`,
/// then `body` (raw bytes, chunked or not as `head` says), then holds the connection
/// for 20 s without ending the reply: a client that reads a manifest whole before checking
/// its size waits, and grows.
fn stalling_registry(head: &'static str, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if req.starts_with(b"GET /v2/ ") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    return;
                }
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
                std::thread::sleep(std::time::Duration::from_secs(20));
            });
        }
    });
    addr
}

/// Manifests are a few KiB; the 4 MiB cap must hold before a byte of the body is buffered
/// (an announced size) or as it streams in (no size announced), not after the whole body.
#[test]
fn oversized_manifests_fail_before_being_read_whole() {
    let hk = Hk::new();
    let announced = stalling_registry(
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
         Content-Length: 5368709120\r\n\r\n",
        Vec::new(),
    );
    let mut chunked = Vec::new();
    for _ in 0..65 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    let streamed = stalling_registry(
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        chunked,
    );
    for (addr, needle) in [
        (announced, "manifest of 5368709120 bytes is too large"),
        (streamed, "manifest is larger than 4194304 bytes"),
    ] {
        let name = format!("{addr}/big:v1");
        let start = std::time::Instant::now();
        pull_fails(&hk, &name, &["big:v1", needle]);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the pull waited for the rest of the manifest: {:?}",
            start.elapsed()
        );
    }
}

/// A stored blob damaged in place (right size, wrong bytes) fails the pull that trips on it,
/// and is deleted so that the next pull fetches it again instead of failing the same way.
#[test]
fn a_corrupt_stored_blob_is_fetched_again() {
    let reg = Registry::start();
    let image = one_layer(small_tar(11), Compression::Gzip);
    reg.push_image("rot", "v1", &image);
    let name = reg.image_ref("rot", "v1");
    let layer = Digest::of(&compress(&image.layers[0].tar, Compression::Gzip));
    let config = Digest::of(&image.config());
    let hk = Hk::new();
    hk.ok(&["pull", "-q", "--no-convert", &name]);
    let flip = |digest: &Digest| {
        let path = hk.data.path().join("blobs/sha256").join(digest.hex());
        let mut data = std::fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(&path, data).unwrap();
    };

    flip(&layer);
    let err = hk.fails(&["pull", &name], 125);
    assert!(err.contains(layer.short()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = hk.ok(&["pull", &name]);
    assert!(
        out.contains(&format!("{}: Pull complete", layer.short())),
        "{out}"
    );
    hk.assert_store_consistent();

    flip(&config);
    let err = hk.fails(&["pull", &name], 125);
    assert!(
        err.contains(&format!("rot:v1: config {}", config.short())),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    hk.ok(&["pull", &name]);
    hk.assert_store_consistent();
    assert!(!hk.ok(&["image", "rootfs", &name]).trim().is_empty());
}
