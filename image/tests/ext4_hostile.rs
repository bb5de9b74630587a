//! Malicious and broken layer tars: each gives its own error naming the layer and the entry,
//! and leaves nothing in the output directory.

mod ext4_util;

use std::path::Path;

use ext4_util::*;
use hk_image::ext4::{EntryError, Error, Inodes, Options, Size};
use tar::EntryType;

/// Converts into an empty directory, expects failure, and checks nothing was left behind.
fn fails(tars: &[Vec<u8>], opts: &Options) -> Error {
    let dir = scratch();
    let out = dir.path().join("rootfs.ext4");
    let err = try_convert(tars, &out, opts).expect_err("conversion must fail");
    assert!(
        dir_entries(dir.path()).is_empty(),
        "left behind: {:?}",
        dir_entries(dir.path())
    );
    // The message names the layer.
    assert!(err.to_string().contains("(layer "), "{err}");
    err
}

/// The entry error, after checking which layer and path it names.
fn entry_err(err: Error, want_layer: &str, want_path: &str) -> EntryError {
    match err {
        Error::Entry { layer, path, kind } => {
            assert_eq!(layer, want_layer);
            assert_eq!(path, want_path);
            kind
        }
        other => panic!("expected an entry error, got {other:?}"),
    }
}

fn one(t: &mut Tar) -> Vec<Vec<u8>> {
    vec![std::mem::take(t).finish()]
}

const L1: &str = "test (layer 1/1)";

#[test]
fn dotdot_escapes_are_refused() {
    for path in ["../escape", "a/../../escape"] {
        let err = fails(
            &one(Tar::new().raw(EntryType::Regular, path.as_bytes(), b"", 1, b"x")),
            &Options::default(),
        );
        let kind = entry_err(err, L1, path);
        assert!(matches!(kind, EntryError::DotDotEscape), "{path}: {kind:?}");
    }
}

#[test]
fn hardlinks_outside_the_root_are_refused() {
    for target in ["../etc/shadow", "/a/../../etc/shadow"] {
        let err = fails(
            &one(Tar::new().raw(EntryType::Link, b"l", target.as_bytes(), 0, b"")),
            &Options::default(),
        );
        match entry_err(err, L1, "l") {
            EntryError::HardlinkOutside(t) => assert_eq!(t, target),
            other => panic!("{target}: {other:?}"),
        }
    }
}

#[test]
fn hardlinks_to_missing_files_or_directories_are_refused() {
    let err = fails(
        &one(Tar::new().hardlink("l", "nothing")),
        &Options::default(),
    );
    assert!(matches!(entry_err(err, L1, "l"), EntryError::HardlinkMissing(t) if t == "nothing"));
    let err = fails(
        &one(Tar::new().dir("d", &ROOT).hardlink("l", "d")),
        &Options::default(),
    );
    assert!(matches!(entry_err(err, L1, "l"), EntryError::HardlinkToDir(t) if t == "d"));
}

#[test]
fn entries_below_a_symlink_are_refused() {
    // Across layers: the symlink comes from a lower layer.
    let mut lower = Tar::new();
    lower.symlink("evil", "/etc");
    let mut upper = Tar::new();
    upper.file("evil/passwd", &ROOT, b"root::0:0::/:/bin/sh\n");
    let err = fails(&[lower.finish(), upper.finish()], &Options::default());
    let kind = entry_err(err, "test (layer 2/2)", "evil/passwd");
    assert!(
        matches!(kind, EntryError::ThroughSymlink(ref p) if p == "evil"),
        "{kind:?}"
    );

    // Within one layer, and for a hardlink target reached through a symlink.
    let err = fails(
        &one(Tar::new().symlink("lnk", "/").file("lnk/x", &ROOT, b"x")),
        &Options::default(),
    );
    assert!(matches!(
        entry_err(err, L1, "lnk/x"),
        EntryError::ThroughSymlink(_)
    ));
    let err = fails(
        &one(Tar::new()
            .dir("d", &ROOT)
            .file("d/f", &ROOT, b"f")
            .symlink("s", "d")
            .hardlink("h", "s/f")),
        &Options::default(),
    );
    assert!(matches!(
        entry_err(err, L1, "h"),
        EntryError::ThroughSymlink(_)
    ));
}

fn file_tar(size: usize) -> Vec<u8> {
    let mut t = Tar::new();
    t.file("f", &ROOT, &vec![7u8; size]).file("g", &ROOT, b"g");
    t.finish()
}

#[test]
fn a_stream_cut_inside_file_data_is_truncated() {
    let tar = file_tar(10_000);
    let err = fails(&[tar[..512 + 5000].to_vec()], &Options::default());
    let kind = entry_err(err, L1, "f");
    assert!(
        matches!(
            kind,
            EntryError::Truncated {
                got: 5000,
                size: 10_000
            }
        ),
        "{kind:?}"
    );
}

#[test]
fn a_stream_cut_inside_a_header_is_corrupt() {
    let tar = file_tar(1000);
    let err = fails(&[tar[..512 + 1024 + 100].to_vec()], &Options::default());
    assert!(
        matches!(err, Error::Tar { ref layer, .. } if layer == L1),
        "{err:?}"
    );
}

#[test]
fn a_stream_cut_between_entries_lacks_its_end_marker() {
    let tar = file_tar(1000);
    let err = fails(&[tar[..512 + 1024].to_vec()], &Options::default());
    assert!(
        matches!(err, Error::MissingEnd { ref layer } if layer == L1),
        "{err:?}"
    );
}

#[test]
fn corrupt_headers_and_non_tar_data_are_refused() {
    let mut tar = file_tar(10);
    tar[0] ^= 0x20; // the name changes; the checksum no longer matches
    let err = fails(&[tar], &Options::default());
    assert!(matches!(err, Error::Tar { .. }), "{err:?}");
    // A still-compressed layer (gzip magic) handed over as tar.
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend(vec![0x55; 2000]);
    let err = fails(&[gz], &Options::default());
    assert!(matches!(err, Error::Tar { .. }), "{err:?}");
}

#[test]
fn absurd_sizes_are_refused_before_reading() {
    // A header claiming 1 TiB followed by no data.
    let mut t = Tar::new();
    t.raw(EntryType::Regular, b"huge", b"", 1 << 40, b"");
    let err = fails(&one(&mut t), &Options::default());
    let kind = entry_err(err, L1, "huge");
    assert!(
        matches!(kind, EntryError::FileTooLarge { size, .. } if size == 1 << 40),
        "{kind:?}"
    );

    let opts = Options {
        max_total_size: 10_000,
        ..Options::default()
    };
    let mut t = Tar::new();
    t.file("a", &ROOT, &[1; 6000]).file("b", &ROOT, &[2; 6000]);
    let kind = entry_err(fails(&one(&mut t), &opts), L1, "b");
    assert!(
        matches!(kind, EntryError::TotalTooLarge { limit: 10_000 }),
        "{kind:?}"
    );

    let opts = Options {
        max_entries: 3,
        ..Options::default()
    };
    let mut t = Tar::new();
    for i in 0..5 {
        t.file(format!("f{i}"), &ROOT, b"");
    }
    let kind = entry_err(fails(&one(&mut t), &opts), L1, "f3");
    assert!(
        matches!(kind, EntryError::TooManyEntries { limit: 3 }),
        "{kind:?}"
    );
}

/// Directories a path implies cost memory like listed entries: a one-entry layer with a deep
/// path must not build an unbounded tree.
#[test]
fn implied_directories_count_as_entries_and_deep_paths_are_refused() {
    // A one-entry layer whose PAX path is `path`, converted with `opts`.
    let refused = |path: &str, opts: &Options| {
        let mut t = Tar::new();
        t.pax(&[("path", path.as_bytes())]).file("x", &ROOT, b"");
        entry_err(fails(&one(&mut t), opts), L1, path)
    };
    let opts = Options {
        max_entries: 100,
        ..Options::default()
    };
    let kind = refused(&("d/".repeat(200) + "f"), &opts);
    assert!(
        matches!(kind, EntryError::TooManyEntries { limit: 100 }),
        "{kind:?}"
    );
    // An opaque marker implies its directories too.
    let kind = refused(&("w/".repeat(200) + ".wh..wh..opq"), &opts);
    assert!(
        matches!(kind, EntryError::TooManyEntries { limit: 100 }),
        "{kind:?}"
    );

    // Whatever the entry budget, no real tree is this deep or this long.
    let kind = refused(&("a/".repeat(1500) + "f"), &Options::default());
    assert!(
        matches!(kind, EntryError::PathTooDeep { limit: 1024 }),
        "{kind:?}"
    );
    let too_long = format!("{}/f", "n".repeat(250)).repeat(20);
    let kind = refused(&too_long, &Options::default());
    assert!(
        matches!(kind, EntryError::PathTooLong { limit: 4096 }),
        "{kind:?}"
    );
}

#[test]
fn unknown_entry_types_and_bad_names_are_refused() {
    let mut t = Tar::new();
    t.raw(EntryType::new(b'Z'), b"weird", b"", 0, b"");
    let kind = entry_err(fails(&one(&mut t), &Options::default()), L1, "weird");
    assert!(matches!(kind, EntryError::Unsupported(_)), "{kind:?}");

    let long = "n".repeat(256);
    let mut t = Tar::new();
    t.file(&long, &ROOT, b"");
    let kind = entry_err(fails(&one(&mut t), &Options::default()), L1, &long);
    assert!(matches!(kind, EntryError::NameTooLong), "{kind:?}");

    let mut t = Tar::new();
    t.pax(&[("path", b"etc/pass\0wd")]).file("x", &ROOT, b"");
    let kind = entry_err(fails(&one(&mut t), &Options::default()), L1, "etc/pass\0wd");
    assert!(matches!(kind, EntryError::NulInPath), "{kind:?}");
}

#[test]
fn a_failed_conversion_keeps_the_previous_image() {
    let dir = scratch();
    let out = dir.path().join("rootfs.ext4");
    std::fs::write(&out, b"previous").unwrap();
    let bad = one(Tar::new().raw(EntryType::Regular, b"../x", b"", 0, b""));
    try_convert(&bad, &out, &Options::default()).unwrap_err();
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(dir_entries(dir.path()), ["rootfs.ext4"]);
}

#[test]
fn a_fixed_size_too_small_for_the_content_is_refused() {
    let dir = scratch();
    let out = dir.path().join("rootfs.ext4");
    let mut t = Tar::new();
    t.file("big", &ROOT, &vec![1u8; 1 << 20]);
    let opts = Options {
        size: Size::Fixed { bytes: 256 << 10 },
        ..Options::default()
    };
    let err = try_convert(&one(&mut t), &out, &opts).unwrap_err();
    assert!(matches!(err, Error::TooBig { .. }), "{err:?}");
    assert!(dir_entries(dir.path()).is_empty());
    assert!(!Path::new(&out).exists());
}

#[test]
fn a_fixed_size_too_small_for_the_inodes_is_refused() {
    // One 128 MiB block group holds at most 32768 inodes; more need more groups than a fixed
    // size of one group has. Run in a thread: the layout search must end, not spin.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dir = scratch();
        let out = dir.path().join("rootfs.ext4");
        let mut t = Tar::new();
        t.file("f", &ROOT, b"f");
        let opts = Options {
            size: Size::Fixed { bytes: 128 << 20 },
            inodes: Inodes::Fixed { count: 100_000 },
            ..Options::default()
        };
        let err = try_convert(&one(&mut t), &out, &opts).map(|_| ());
        let _ = done.send((err, dir_entries(dir.path())));
    });
    let (err, left) = result
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the conversion must end");
    let err = err.expect_err("100000 inodes do not fit in one block group");
    assert!(
        matches!(
            err,
            Error::TooManyInodes {
                needed: 100_000,
                limit: 32_768
            }
        ),
        "{err:?}"
    );
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn forged_sparse_maps_are_refused() {
    // Overlapping chunks; then a chunk beyond the real size; then a map claiming more data
    // than the entry stores.
    for (map, real) in [
        ("0,10,5,10", "100"),
        ("0,10,200,10", "100"),
        ("0,10,50,10", "100"),
    ] {
        let mut t = Tar::new();
        t.pax(&[
            ("GNU.sparse.map", map.as_bytes()),
            ("GNU.sparse.realsize", real.as_bytes()),
            ("GNU.sparse.name", b"sparse"),
        ])
        .file("GNUSparseFile.0/sparse", &ROOT, &[b'x'; 10]);
        let kind = entry_err(fails(&one(&mut t), &Options::default()), L1, "sparse");
        assert!(matches!(kind, EntryError::BadHeader(_)), "{map}: {kind:?}");
    }
}

#[test]
fn giant_pax_records_fail_before_being_buffered() {
    let mut t = Tar::new();
    t.pax(&[("comment", &vec![b'x'; 4 << 20])])
        .file("f", &ROOT, b"");
    let err = fails(&one(&mut t), &Options::default());
    assert!(
        matches!(err, Error::Tar { ref source, .. } if source.to_string().contains("extension records")),
        "{err:?}"
    );
    // Large file contents are not metadata: 4 MiB of data passes.
    let dir = scratch();
    let mut t = Tar::new();
    t.file("big", &ROOT, &vec![1u8; 4 << 20]);
    try_convert(
        &one(&mut t),
        &dir.path().join("ok.ext4"),
        &Options::default(),
    )
    .unwrap();
}

#[test]
fn more_hard_links_than_ext4_allows_are_refused() {
    let mut t = Tar::new();
    t.file("f", &ROOT, b"f");
    for i in 1..65_000 {
        t.hardlink(format!("l{i}"), "f");
    }
    // 65000 names are fine...
    let ok = t.finish();
    let dir = scratch();
    let (img, _) = convert_checked(std::slice::from_ref(&ok), dir.path());
    assert_eq!(stat(&img, b"/l64999").unwrap().links, 65_000);
    // ...one more is not.
    let mut t = Tar::new();
    t.file("f", &ROOT, b"f");
    for i in 1..=65_000 {
        t.hardlink(format!("l{i}"), "f");
    }
    let kind = entry_err(fails(&one(&mut t), &Options::default()), L1, "l65000");
    assert!(matches!(kind, EntryError::TooManyLinks), "{kind:?}");
}

/// Deterministic fuzzing: headers with random bytes changed (checksums fixed up, so the
/// damage reaches the writer) and random truncations. Every outcome is an error or an image
/// that e2fsck accepts; never a panic.
#[test]
fn mutated_tars_give_errors_or_valid_images() {
    let mut t = Tar::new();
    t.dir("d", &meta_of(0o755))
        .file("d/f", &meta_of(0o644), &[7u8; 5000])
        .symlink("d/l", "f")
        .hardlink("d/h", "d/f")
        .pax(&[("SCHILY.xattr.user.a", b"1"), ("mtime", b"1.5")])
        .file("x", &meta_of(0o4755), b"xattr")
        .device("c", EntryType::Char, &meta_of(0o600), 1, 3)
        .file("d/.wh.gone", &meta_of(0o644), b"")
        .file(".wh..wh..opq", &meta_of(0o644), b"");
    let base = t.finish();
    let mut headers = Vec::new();
    let mut off = 0;
    while off + 512 <= base.len() && base[off..off + 512].iter().any(|&b| b != 0) {
        headers.push(off);
        let size = u64::from_str_radix(
            std::str::from_utf8(&base[off + 124..off + 135])
                .unwrap()
                .trim_matches(|c| c == '\0' || c == ' '),
            8,
        )
        .unwrap();
        off += 512 + (size as usize).next_multiple_of(512);
    }
    assert!(headers.len() >= 9);

    let mut seed = 0x2545_f491_u64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let dir = scratch();
    let (mut ok, mut failed) = (0, 0);
    for round in 0..400 {
        let mut tar = base.clone();
        if round % 4 == 3 {
            tar.truncate(rand(tar.len()));
        } else {
            let h = headers[rand(headers.len())];
            for _ in 0..1 + rand(3) {
                // Anywhere in the header but the checksum field itself.
                let mut at = rand(500);
                if (148..156).contains(&at) {
                    at = 100 + rand(24);
                }
                tar[h + at] = match rand(4) {
                    0 => 0,
                    1 => b'/',
                    2 => b'.',
                    _ => rand(256) as u8,
                };
            }
            let sum: u32 = tar[h..h + 512]
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(b)
                    }
                })
                .sum();
            tar[h + 148..h + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
        let out = dir.path().join("fuzz.ext4");
        match try_convert(&[tar], &out, &hk_image::ext4::Options::default()) {
            Ok(_) => {
                fsck(&out);
                std::fs::remove_file(&out).unwrap();
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("(layer 1/1)"), "{e}");
                failed += 1;
            }
        }
        assert_eq!(
            dir_entries(dir.path()),
            Vec::<String>::new(),
            "round {round}"
        );
    }
    // Both outcomes occur: the mutations reach past the parser.
    assert!(ok > 20 && failed > 20, "{ok} converted, {failed} refused");
}

fn meta_of(mode: u32) -> Meta {
    Meta { mode, ..ROOT }
}
