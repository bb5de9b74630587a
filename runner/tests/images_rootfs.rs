//! Pulled images as ext4 root filesystems: busybox-static, a debootstrapped Debian, a
//! multi-layer image with whiteouts and opaque directories, both platforms of an index.
//! Every image is checked with `e2fsck -fn` and, entry by entry, against its tar headers.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn rootfs(hk: &Hk, image: &str) -> PathBuf {
    PathBuf::from(hk.ok(&["image", "rootfs", image]).trim())
}

fn debugfs_cat(image: &std::path::Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat \"{path}\"")])
        .arg(image)
        .output()
        .expect("debugfs");
    out.stdout
}

#[test]
fn busybox_static_image() {
    let reg = Registry::start();
    let tar = busybox_tar();
    reg.push_image(
        "busybox",
        "latest",
        &TestImage::new(vec![TestLayer {
            tar: tar.clone(),
            compression: Compression::Gzip,
        }]),
    );
    let hk = Hk::new();
    let name = reg.image_ref("busybox", "latest");
    hk.ok(&["pull", &name]);
    let ext4 = rootfs(&hk, &name);
    assert!(
        ext4.starts_with(hk.data.path().join("rootfs")),
        "{}",
        ext4.display()
    );
    assert_e2fsck_clean(&ext4);
    let expected = expected_tree(&[&tar]);
    let n = assert_tree_matches(&ext4, &expected);
    assert!(n >= 8, "{n}");
    // The comparison is not vacuous: one wrong bit in the expectation is noticed.
    let mut wrong = expected.clone();
    wrong.get_mut("bin/busybox").unwrap().mode |= 0o4000;
    assert!(std::panic::catch_unwind(|| assert_tree_matches(&ext4, &wrong)).is_err());
    assert_eq!(
        debugfs_cat(&ext4, "/bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );
}

#[test]
fn debootstrapped_debian_image() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-test-rootfs");
    let out = Command::new(script)
        .arg("debian")
        .output()
        .expect("run make-test-rootfs");
    assert!(
        out.status.success(),
        "scripts/make-test-rootfs debian failed (it needs root and a Debian mirror once):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar_path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let tar = std::fs::read(&tar_path).unwrap();
    let reg = Registry::start();
    reg.push_image(
        "debian",
        "bookworm",
        &TestImage::new(vec![TestLayer {
            tar: tar.clone(),
            compression: Compression::Zstd,
        }]),
    );
    let hk = Hk::new();
    let name = reg.image_ref("debian", "bookworm");
    hk.ok(&["pull", "-q", &name]);
    let ext4 = rootfs(&hk, &name);
    assert_e2fsck_clean(&ext4);
    let expected = expected_tree(&[&tar]);
    // The point of this image: it has what small test images lack.
    assert!(expected.len() > 3000, "{} entries", expected.len());
    assert!(
        expected.values().any(|e| e.mode & 0o4000 != 0),
        "a setuid binary"
    );
    assert!(
        expected.values().any(|e| e.link_group.is_some()),
        "hardlinks"
    );
    assert_tree_matches(&ext4, &expected);
    let os_release = debugfs_cat(&ext4, "/usr/lib/os-release");
    assert!(String::from_utf8_lossy(&os_release).contains("bookworm"));
}

#[test]
fn whiteouts_and_opaque_directories_across_layers() {
    let base = TarBuilder::new()
        .dir("a", 0o755)
        .file("a/keep", 0o644, b"keep\n")
        .file("a/gone", 0o644, b"old\n")
        .dir("a/sub", 0o700)
        .file("a/sub/x", 0o600, b"x\n")
        .dir("opq", 0o755)
        .file("opq/old1", 0o644, b"1\n")
        .dir("opq/olddir", 0o755)
        .file("opq/olddir/deep", 0o644, b"deep\n")
        .file("replaced", 0o644, b"a file that becomes a directory\n")
        .finish();
    let middle = TarBuilder::new()
        .file("a/.wh.gone", 0o644, b"")
        .file("a/.wh.sub", 0o644, b"")
        .file("opq/.wh..wh..opq", 0o644, b"")
        .file("opq/new", 0o644, b"new\n")
        .file(".wh.replaced", 0o644, b"")
        .dir("replaced", 0o750)
        .file("replaced/inside", 0o644, b"in\n")
        .finish();
    let top = TarBuilder::new()
        .file("a/gone", 0o640, b"back again\n")
        .hardlink("a/gone-link", "a/gone")
        .symlink("a/to-keep", "keep")
        .finish();
    let reg = Registry::start();
    let image = TestImage::new(vec![
        TestLayer {
            tar: base.clone(),
            compression: Compression::Gzip,
        },
        TestLayer {
            tar: middle.clone(),
            compression: Compression::Zstd,
        },
        TestLayer {
            tar: top.clone(),
            compression: Compression::None,
        },
    ]);
    reg.push_image("layers", "v1", &image);
    let hk = Hk::new();
    let name = reg.image_ref("layers", "v1");
    hk.ok(&["pull", "-q", &name]);
    let ext4 = rootfs(&hk, &name);
    assert_e2fsck_clean(&ext4);
    let expected = expected_tree(&[&base, &middle, &top]);
    // The model itself, spelled out: what a reader of this test should expect to find.
    let names: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "a",
            "a/gone",
            "a/gone-link",
            "a/keep",
            "a/to-keep",
            "opq",
            "opq/new",
            "replaced",
            "replaced/inside"
        ]
    );
    assert_tree_matches(&ext4, &expected);
    assert_eq!(debugfs_cat(&ext4, "/a/gone"), b"back again\n");
    assert_eq!(debugfs_cat(&ext4, "/a/gone-link"), b"back again\n");
}

#[test]
fn both_platforms_of_an_index_convert() {
    let reg = Registry::start();
    let mut tars = Vec::new();
    let mut entries = Vec::new();
    for (arch, c) in [("amd64", Compression::Gzip), ("arm64", Compression::Zstd)] {
        let tar = TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/arch", 0o644, format!("{arch}\n").as_bytes())
            .finish();
        let mut img = TestImage::new(vec![TestLayer {
            tar: tar.clone(),
            compression: c,
        }]);
        img.architecture = arch.into();
        let (m, t) = img.manifest(&reg, "multi");
        let d = reg.push_manifest("multi", arch, &m, t);
        entries.push((d, m.len(), arch));
        tars.push((arch, tar));
    }
    reg.push_index("multi", "latest", &entries);
    let name = reg.image_ref("multi", "latest");
    let hk = Hk::new();
    let mut paths = Vec::new();
    for (arch, tar) in &tars {
        hk.ok(&["pull", "-q", "--platform", &format!("linux/{arch}"), &name]);
        let ext4 = rootfs(&hk, &name);
        assert_e2fsck_clean(&ext4);
        assert_tree_matches(&ext4, &expected_tree(&[tar]));
        assert_eq!(
            debugfs_cat(&ext4, "/etc/arch"),
            format!("{arch}\n").as_bytes()
        );
        paths.push(ext4);
    }
    assert_ne!(paths[0], paths[1]);
}

#[test]
fn images_with_the_same_layers_share_one_root_filesystem() {
    let reg = Registry::start();
    let tar = TarBuilder::new().file("hello", 0o644, b"hi\n").finish();
    let a = TestImage::new(vec![TestLayer {
        tar: tar.clone(),
        compression: Compression::Gzip,
    }]);
    // Same layer content, other compression: another manifest and blob, same ChainID.
    let b = TestImage::new(vec![TestLayer {
        tar: tar.clone(),
        compression: Compression::Zstd,
    }]);
    reg.push_image("a", "1", &a);
    reg.push_image("b", "1", &b);
    let hk = Hk::new();
    hk.ok(&["pull", "-q", &reg.image_ref("a", "1")]);
    let first = rootfs(&hk, &reg.image_ref("a", "1"));
    let made = std::fs::metadata(&first).unwrap().modified().unwrap();
    hk.ok(&["pull", "-q", &reg.image_ref("b", "1")]);
    let second = rootfs(&hk, &reg.image_ref("b", "1"));
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second).unwrap().modified().unwrap(),
        made,
        "not rebuilt"
    );

    hk.ok(&["rmi", &reg.image_ref("a", "1")]);
    assert!(first.exists(), "still used by b");
    hk.ok(&["rmi", &reg.image_ref("b", "1")]);
    assert!(!first.exists(), "collected with the last image using it");
}

#[test]
fn a_root_filesystem_in_use_survives_garbage_collection() {
    let reg = Registry::start();
    reg.push_image(
        "busy",
        "1",
        &TestImage::new(vec![TestLayer {
            tar: TarBuilder::new().file("f", 0o644, b"f\n").finish(),
            compression: Compression::Gzip,
        }]),
    );
    let hk = Hk::new();
    let name = reg.image_ref("busy", "1");
    hk.ok(&["pull", "-q", &name]);
    let ext4 = rootfs(&hk, &name);
    // What a running VM does with hk_image::Rootfs: hold a shared flock on the image.
    let mut vm = Command::new("flock")
        .args(["-s", "-o"]) // -o: the lock stays with flock, so killing it releases the lock
        .arg(&ext4)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::File::open(&ext4).unwrap().try_lock().is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let out = hk.ok(&["image", "prune", "-a", "-f"]);
    assert!(
        !out.contains("deleted:"),
        "prune -a keeps an image in use: {out}"
    );
    hk.ok(&["rmi", &name]);
    assert!(
        ext4.exists(),
        "the running VM's root filesystem was deleted"
    );

    vm.kill().unwrap();
    vm.wait().unwrap();
    hk.ok(&["image", "prune", "-f"]);
    assert!(!ext4.exists(), "collected once no VM uses it");
}
