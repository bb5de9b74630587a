//! Layer tars built here, converted to ext4, checked by `e2fsck -fn` and read back with
//! debugfs against what the tars said.

mod ext4_util;

use ext4_util::*;
use tar::EntryType;

/// Deterministic, incompressible-looking bytes.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn meta(mode: u32, uid: u64, gid: u64, mtime: u64) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime,
    }
}

#[test]
fn every_kind_of_entry_keeps_its_metadata() {
    let big = noise(3 << 20, 1);
    let mut sparse = vec![b'a'; 4096];
    sparse.extend(vec![0u8; 1 << 20]);
    sparse.extend(vec![b'b'; 4096]);
    sparse.extend(vec![0u8; 1 << 20]);
    sparse.extend(vec![b'c'; 100]);
    let long_target = format!("{}end", "d/".repeat(60));
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let long_name = "n".repeat(255);
    let xbig = vec![b'x'; 1000];

    let mut t = Tar::new();
    t.dir("etc", &ROOT)
        .file("etc/hostname", &meta(0o644, 0, 0, 1_600_000_001), b"hk\n")
        .dir("home", &ROOT)
        .dir("home/user", &meta(0o750, 1000, 1000, 1_600_000_000))
        .file("empty", &meta(0o600, 5, 6, 1_600_000_002), b"")
        .dir("bin", &ROOT)
        .file("bin/su", &meta(0o4755, 0, 0, 1_600_000_003), b"su binary")
        .file("bin/wall", &meta(0o2755, 0, 5, 1_600_000_004), b"wall")
        .dir("tmp", &meta(0o1777, 0, 0, 1_600_000_005))
        .file("big", &ROOT, &big)
        .file("sparse", &ROOT, &sparse)
        .symlink("bin/sh", "/bin/busybox")
        .symlink("longlink", &long_target)
        .hardlink("bin/su2", "bin/su")
        .dir("dev", &ROOT)
        .device("dev/null", EntryType::Char, &meta(0o666, 0, 0, 1), 1, 3)
        .device("dev/sda", EntryType::Block, &meta(0o660, 0, 6, 1), 8, 0)
        .device(
            "dev/big",
            EntryType::Char,
            &meta(0o600, 0, 0, 1),
            300,
            70000,
        )
        .dir("run", &ROOT)
        .device("run/fifo", EntryType::Fifo, &meta(0o644, 0, 0, 1), 0, 0)
        .file("owned", &meta(0o644, 100_000, 200_000, 1), b"x")
        .pax(&[
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.user.comment", b"hello"),
        ])
        .file("bin/ping", &meta(0o755, 0, 0, 1), b"ping")
        .pax(&[("SCHILY.xattr.user.big", &xbig)])
        .file("xbig", &ROOT, b"")
        .pax(&[("mtime", b"1700000000.123456789")])
        .file("nanos", &ROOT, b"")
        .dir("names", &ROOT)
        .file(format!("names/{long_name}"), &ROOT, b"long")
        .file(b"names/caf\xe9", &ROOT, b"latin1");
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(stats.files, 12);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.specials, 4);

    let paths: Vec<Vec<u8>> = [
        "/etc/hostname",
        "/home/user",
        "/empty",
        "/bin/su",
        "/bin/wall",
        "/tmp",
        "/big",
        "/sparse",
        "/bin/sh",
        "/longlink",
        "/bin/su2",
        "/dev/null",
        "/dev/sda",
        "/dev/big",
        "/run/fifo",
        "/owned",
        "/bin/ping",
        "/xbig",
        "/nanos",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .chain([
        format!("/names/{long_name}").into_bytes(),
        b"/names/caf\xe9".to_vec(),
    ])
    .collect();
    let refs: Vec<&[u8]> = paths.iter().map(|p| p.as_slice()).collect();
    let s: Vec<Stat> = stat_all(&img, &refs)
        .into_iter()
        .zip(&paths)
        .map(|(s, p)| s.unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(p))))
        .collect();
    let [hostname, user, empty, su, wall, tmp, bigs, sparses, sh, longlink, su2, null, sda, devbig, fifo, owned, ping, xbigs, nanos, longname, latin1] =
        s.try_into().unwrap();

    assert_eq!(
        (hostname.kind.as_str(), hostname.mode, hostname.size),
        ("regular", 0o644, 3)
    );
    assert_eq!(hostname.mtime, 1_600_000_001);
    assert_eq!(
        (user.kind.as_str(), user.mode, user.uid, user.gid),
        ("directory", 0o750, 1000, 1000)
    );
    assert_eq!(user.mtime, 1_600_000_000);
    assert_eq!(
        (
            empty.mode,
            empty.uid,
            empty.gid,
            empty.size,
            empty.blockcount
        ),
        (0o600, 5, 6, 0, 0)
    );
    assert_eq!((su.mode, su.links), (0o4755, 2));
    assert_eq!(su.ino, su2.ino, "hardlink shares the inode");
    assert_eq!((wall.mode, wall.gid), (0o2755, 5));
    assert_eq!(tmp.mode, 0o1777);
    assert_eq!(bigs.size, big.len() as u64);
    assert_eq!(bigs.blockcount, (big.len() as u64 / 4096) * 8);
    assert_eq!(sparses.size, sparse.len() as u64);
    assert_eq!(sparses.blockcount, 3 * 8, "zero blocks are holes");
    assert_eq!(sh.kind, "symlink");
    assert_eq!(sh.fast_link.as_deref(), Some("/bin/busybox"));
    assert_eq!(sh.flags & 0x80000, 0, "fast symlinks have no extents");
    assert_eq!(
        (longlink.kind.as_str(), longlink.size),
        ("symlink", long_target.len() as u64)
    );
    assert_eq!(longlink.blockcount, 8);
    assert_eq!(
        (null.kind.as_str(), null.mode, null.device),
        ("character special", 0o666, Some((1, 3)))
    );
    assert_eq!(
        (sda.kind.as_str(), sda.gid, sda.device),
        ("block special", 6, Some((8, 0)))
    );
    assert_eq!(devbig.device, Some((300, 70000)));
    assert_eq!((fifo.kind.as_str(), fifo.mode), ("FIFO", 0o644));
    assert_eq!((owned.uid, owned.gid), (100_000, 200_000));
    assert!(
        ping.xattrs
            .iter()
            .any(|x| x.starts_with("security.capability (20)")),
        "{:?}",
        ping.xattrs
    );
    assert!(
        ping.xattrs
            .iter()
            .any(|x| x == "user.comment (5) = \"hello\""),
        "{:?}",
        ping.xattrs
    );
    assert!(
        xbigs
            .xattrs
            .iter()
            .any(|x| x.starts_with("user.big (1000)")),
        "{:?}",
        xbigs.xattrs
    );
    assert_eq!(xbigs.blockcount, 8, "a large xattr lives in its own block");
    assert_eq!(
        (nanos.mtime, nanos.mtime_extra),
        (1_700_000_000, 123_456_789 << 2)
    );
    assert_eq!(longname.size, 4);
    assert_eq!(latin1.size, 6);

    assert_eq!(cat(&img, b"/etc/hostname"), b"hk\n");
    assert_eq!(cat(&img, b"/big"), big);
    assert_eq!(cat(&img, b"/sparse"), sparse);
    assert_eq!(cat(&img, b"/longlink"), long_target.as_bytes());
    assert_eq!(cat(&img, b"/names/caf\xe9"), b"latin1");
    let ping_cap = debugfs(&img, &[b"ea_get -x /bin/ping security.capability".to_vec()]);
    let hex: String = cap.iter().map(|b| format!("{b:02x} ")).collect();
    assert!(
        String::from_utf8_lossy(&ping_cap[0]).contains(hex.trim()),
        "{:?}",
        String::from_utf8_lossy(&ping_cap[0])
    );
    assert_eq!(
        ls(&img, b"/names"),
        vec![b"caf\xe9".to_vec(), long_name.into_bytes()]
    );
    let root = ls(&img, b"/");
    assert!(root.contains(&b"lost+found".to_vec()));
}

#[test]
fn whiteouts_and_opaque_directories_apply_across_layers() {
    let mut l1 = Tar::new();
    l1.dir("a", &ROOT)
        .file("a/keep", &ROOT, b"keep")
        .file("a/gone", &ROOT, b"gone")
        .dir("b", &ROOT)
        .file("b/old1", &ROOT, b"1")
        .dir("b/olddir", &ROOT)
        .file("b/olddir/f", &ROOT, b"f")
        .dir("c", &ROOT)
        .file("c/f", &ROOT, b"f")
        .dir("d", &ROOT)
        .dir("d/sub", &ROOT)
        .file("d/sub/f", &ROOT, b"f")
        .file("x", &ROOT, b"x was a file")
        .dir("y", &ROOT)
        .file("y/child", &ROOT, b"child")
        .file("h1", &ROOT, b"old")
        .hardlink("h2", "h1")
        .dir("m", &ROOT)
        .file("m/old", &ROOT, b"old");
    let mut l2 = Tar::new();
    l2.dir("a", &meta(0o700, 0, 0, 5))
        .file("a/.wh.gone", &ROOT, b"")
        .file(".wh.c", &ROOT, b"")
        .dir("b", &ROOT)
        // Listed before the opaque marker: this layer's own entries survive it.
        .file("b/new", &ROOT, b"new")
        .file("b/.wh..wh..opq", &ROOT, b"")
        .dir("x", &ROOT)
        .file("x/inside", &ROOT, b"inside")
        .file("y", &ROOT, b"y is a file now")
        .file("h1", &ROOT, b"new")
        .file("d/sub/.wh.f", &ROOT, b"")
        .file(".wh.never-existed", &ROOT, b"")
        // Re-created before its whiteout in the same tar: a fresh, empty directory.
        .dir("m", &ROOT)
        .file(".wh.m", &ROOT, b"");
    let mut l3 = Tar::new();
    l3.dir("c", &ROOT).file("c/again", &ROOT, b"again");
    let dir = scratch();
    let (img, _) = convert_checked(&[l1.finish(), l2.finish(), l3.finish()], dir.path());

    let names = |p: &[u8]| -> Vec<String> {
        ls(&img, p)
            .into_iter()
            .map(|n| String::from_utf8(n).unwrap())
            .collect()
    };
    assert_eq!(
        names(b"/"),
        ["a", "b", "c", "d", "h1", "h2", "lost+found", "m", "x", "y"]
    );
    assert!(names(b"/m").is_empty());
    assert_eq!(names(b"/a"), ["keep"]);
    assert_eq!(
        stat(&img, b"/a").unwrap().mode,
        0o700,
        "upper dir metadata wins"
    );
    assert_eq!(names(b"/b"), ["new"]);
    assert_eq!(
        names(b"/c"),
        ["again"],
        "a re-created dir does not bring back lower content"
    );
    assert!(names(b"/d/sub").is_empty());
    assert_eq!(names(b"/x"), ["inside"]);
    assert_eq!(stat(&img, b"/y").unwrap().kind, "regular");
    assert_eq!(cat(&img, b"/h1"), b"new");
    assert_eq!(cat(&img, b"/h2"), b"old");
    assert_eq!(stat(&img, b"/h2").unwrap().links, 1);
}

/// Whiteouts and opaque markers only hide lower layers, also below directories this layer
/// passed through without listing them (`p/sub/new` with no `p/` or `p/sub/` entry).
#[test]
fn whiteouts_spare_this_layers_entries_below_directories_it_passed_through() {
    let lower_meta = meta(0o750, 7, 7, 1);
    let mut l1 = Tar::new();
    l1.dir("p", &lower_meta)
        .file("p/old", &ROOT, b"old")
        .dir("p/sub", &lower_meta)
        .file("p/sub/old", &ROOT, b"old")
        .dir("q", &ROOT)
        .file("q/old", &ROOT, b"old")
        .dir("q/sub", &lower_meta)
        .file("q/sub/old", &ROOT, b"old");
    let mut l2 = Tar::new();
    l2.file("p/sub/new", &ROOT, b"new")
        .file(".wh.p", &ROOT, b"")
        .file("q/sub/new", &ROOT, b"new")
        .file("q/.wh..wh..opq", &ROOT, b"");
    let dir = scratch();
    let (img, _) = convert_checked(&[l1.finish(), l2.finish()], dir.path());
    for (path, want) in [
        (&b"/p"[..], &["sub"][..]),
        (b"/p/sub", &["new"]),
        (b"/q", &["sub"]),
        (b"/q/sub", &["new"]),
    ] {
        let want: Vec<Vec<u8>> = want.iter().map(|n| n.as_bytes().to_vec()).collect();
        assert_eq!(ls(&img, path), want, "{path:?}");
    }
    assert_eq!(cat(&img, b"/p/sub/new"), b"new");
    // What stays only because this layer wrote below it is an implied directory: the hidden
    // lower directory's owner and mode went with it.
    for path in [&b"/p"[..], b"/p/sub", b"/q/sub"] {
        let st = stat(&img, path).unwrap();
        assert_eq!((st.mode, st.uid, st.gid), (0o755, 0, 0), "{path:?}");
    }
}

/// Docker strips a leading `/` from names and hardlink targets: they mean the same place in
/// the layer.
#[test]
fn a_leading_slash_is_stripped_as_docker_does() {
    let mut t = Tar::new();
    t.raw(EntryType::Directory, b"/etc/", b"", 0, b"")
        .raw(EntryType::Regular, b"//etc/passwd", b"", 5, b"root\n")
        .raw(EntryType::Link, b"/etc/passwd-", b"/etc/passwd", 0, b"");
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(cat(&img, b"/etc/passwd"), b"root\n");
    assert_eq!(
        stat(&img, b"/etc/passwd-").unwrap().ino,
        stat(&img, b"/etc/passwd").unwrap().ino
    );
    assert_eq!((stats.files, stats.hardlinks), (1, 1));
}

/// A relative symlink target whose `..` climbs above the root resolves at the root in the
/// guest (the kernel stops `..` at `/`), so it is kept as written, as containerd does.
#[test]
fn symlink_targets_climbing_above_the_root_are_kept() {
    let mut t = Tar::new();
    t.dir("a", &ROOT)
        .symlink("a/up", "../../etc/shadow")
        .symlink("top", "../../../bin");
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(stats.symlinks, 2);
    assert_eq!(
        stat(&img, b"/a/up").unwrap().fast_link.as_deref(),
        Some("../../etc/shadow")
    );
    assert_eq!(
        stat(&img, b"/top").unwrap().fast_link.as_deref(),
        Some("../../../bin")
    );
}

/// A second entry for a path in the same layer replaces the first, as extracting the tar
/// would (Docker keeps the last); a hardlink made to the first keeps its content.
#[test]
fn the_last_of_duplicate_entries_wins() {
    let mut t = Tar::new();
    t.file("dup", &ROOT, b"first")
        .hardlink("h", "dup")
        .file("dup", &ROOT, b"second")
        .file("big", &ROOT, &noise(4096, 3))
        .file("big", &ROOT, b"small")
        .file("was-file", &ROOT, b"f")
        .dir("was-file", &ROOT)
        .file("was-file/inside", &ROOT, b"i")
        .dir("was-dir", &ROOT)
        .file("was-dir/inside", &ROOT, b"i")
        .file("was-dir", &ROOT, b"now a file");
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(cat(&img, b"/dup"), b"second");
    assert_eq!(cat(&img, b"/h"), b"first");
    assert_eq!(cat(&img, b"/big"), b"small");
    // The blocks of the first `big`, of `was-file` and of `was-dir/inside` are freed.
    assert_eq!(stats.unused_data_blocks, 3);
    assert_eq!(ls(&img, b"/was-file"), [b"inside".to_vec()]);
    assert_eq!(cat(&img, b"/was-dir"), b"now a file");
}

/// Attributes ext4 cannot hold are left out with a warning, as Docker ignores those its
/// filesystem refuses; the file and its other attributes stay. A PAX record given twice
/// keeps its last value, as PAX has it.
#[test]
fn xattrs_ext4_cannot_hold_are_dropped_with_a_warning() {
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.user.ok", b"1"),
        ("SCHILY.xattr.bogus.name", b"v"),
        ("SCHILY.xattr.user.", b"empty name"),
        ("SCHILY.xattr.system.posix_acl_access", b"not an acl"),
        ("SCHILY.xattr.user.dup", b"first"),
        ("SCHILY.xattr.user.huge", &[b'h'; 5000]),
        ("SCHILY.xattr.user.dup", b"last"),
    ])
    .file("f", &ROOT, b"data");
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(cat(&img, b"/f"), b"data");
    let mut xattrs = stat(&img, b"/f").unwrap().xattrs;
    xattrs.sort();
    assert_eq!(xattrs, ["user.dup (4) = \"last\"", "user.ok (1) = \"1\""]);
    assert_eq!(stats.warnings.len(), 4, "{:#?}", stats.warnings);
    let expected = [
        ("bogus.name", "namespace not supported by ext4"),
        ("user.", "empty name"),
        ("system.posix_acl_access", "malformed POSIX ACL"),
        ("user.huge", "exceed one 4 KiB block"),
    ];
    for (w, (name, reason)) in stats.warnings.iter().zip(expected) {
        assert!(
            w.contains("test (layer 1/1)")
                && w.contains("\"f\"")
                && w.contains(&format!("{name:?}"))
                && w.contains(reason),
            "{w}"
        );
    }

    // A layer dropping thousands lists a screenful and counts the rest.
    let mut t = Tar::new();
    for i in 0..25 {
        t.pax(&[("SCHILY.xattr.bogus.name", b"v")])
            .file(format!("f{i}"), &ROOT, b"");
    }
    let (_, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(stats.warnings.len(), 21);
    assert_eq!(stats.warnings[20], "5 more xattrs dropped");
}

#[test]
fn thousands_of_files_make_a_multi_block_directory() {
    let mut t = Tar::new();
    t.dir("many", &ROOT);
    let names: Vec<String> = (0..6000)
        .map(|i| format!("file-{i:05}-{}", "x".repeat(i % 90)))
        .collect();
    for (i, n) in names.iter().enumerate() {
        t.file(format!("many/{n}"), &ROOT, format!("{i}").as_bytes());
    }
    for i in 0..300 {
        t.dir(format!("many/sub-{i:03}"), &ROOT);
    }
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(stats.files, 6000);
    let listed = ls(&img, b"/many");
    assert_eq!(listed.len(), 6300);
    let many = stat(&img, b"/many").unwrap();
    assert!(
        many.size > 20 * 4096,
        "directory spans many blocks: {}",
        many.size
    );
    assert_eq!(many.links, 2 + 300);
    assert_eq!(
        cat(&img, format!("/many/{}", names[5999]).as_bytes()),
        b"5999"
    );
    assert_eq!(cat(&img, format!("/many/{}", names[0]).as_bytes()), b"0");
}

#[test]
fn a_fragmented_file_gets_a_two_level_extent_tree() {
    // 1500 data blocks separated by holes: 1500 extents, more than four leaf blocks hold
    // (4 x 340), so the tree needs an index level below the inode.
    let mut content = Vec::new();
    for i in 0..1500u32 {
        content.extend(noise(4096, i + 7));
        content.extend(vec![0u8; 4096]);
    }
    let mut t = Tar::new();
    t.file("frag", &ROOT, &content);
    let dir = scratch();
    let (img, _) = convert_checked(&[t.finish()], dir.path());
    let s = stat(&img, b"/frag").unwrap();
    assert_eq!(s.size, content.len() as u64);
    // 1500 data blocks + 5 leaves + 1 index block.
    assert_eq!(s.blockcount, (1500 + 6) * 8);
    assert_eq!(cat(&img, b"/frag"), content);
}

/// `git archive` output starts with a global PAX header: not a file, ignored.
#[test]
fn git_archive_layers_with_a_global_pax_header() {
    let dir = scratch();
    let repo = dir.path().join("repo");
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .expect("git");
        assert!(o.status.success(), "git {args:?}: {o:?}");
        o.stdout
    };
    std::fs::create_dir(&repo).unwrap();
    git(&["init", "-q"]);
    std::fs::write(repo.join("hello"), b"hello\n").unwrap();
    git(&["add", "hello"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "x",
    ]);
    let tar = git(&["archive", "--format=tar", "HEAD"]);
    assert_eq!(&tar[156], &b'g', "git archive starts with a global header");
    let (img, stats) = convert_checked(&[tar], dir.path());
    assert_eq!(stats.files, 1);
    assert_eq!(cat(&img, b"/hello"), b"hello\n");
}

#[test]
fn a_stack_with_no_entries_is_an_empty_filesystem() {
    let dir = scratch();
    let (img, stats) = convert_checked(&[Tar::new().finish()], dir.path());
    assert_eq!((stats.files, stats.dirs), (0, 2));
    assert_eq!(ls(&img, b"/"), vec![b"lost+found".to_vec()]);
}

/// A GNU sparse entry (type 'S'): the map lists the data chunks; the rest is holes, which
/// stay holes in the image.
#[test]
fn gnu_sparse_entries_stay_sparse() {
    let chunks: [(u64, Vec<u8>); 3] = [
        (0, vec![b'a'; 4096]),
        (32 << 20, vec![b'b'; 8192]),
        (64 << 20, vec![b'c'; 5]),
    ];
    let real_size = (64 << 20) + 5;
    let stored: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.clone()).collect();
    let octal =
        |field: &mut [u8; 12], v: u64| field.copy_from_slice(format!("{v:011o}\0").as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path("holes").unwrap();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_size(stored.len() as u64);
    let gnu = h.as_gnu_mut().unwrap();
    for (slot, (offset, data)) in gnu.sparse.iter_mut().zip(&chunks) {
        octal(&mut slot.offset, *offset);
        octal(&mut slot.numbytes, data.len() as u64);
    }
    octal(&mut gnu.realsize, real_size);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, stored.as_slice()).unwrap();
    let tar = b.into_inner().unwrap();

    let dir = scratch();
    let (img, _) = convert_checked(&[tar], dir.path());
    let s = stat(&img, b"/holes").unwrap();
    assert_eq!(s.size, real_size);
    assert_eq!(
        s.blockcount,
        (1 + 2 + 1) * 8,
        "only the data chunks take blocks"
    );
    let content = cat(&img, b"/holes");
    assert_eq!(content.len() as u64, real_size);
    for (offset, data) in &chunks {
        assert_eq!(&content[*offset as usize..][..data.len()], data.as_slice());
    }
    let data_bytes: usize = chunks.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(content.iter().filter(|&&b| b != 0).count(), data_bytes);
}

/// Sparse files as GNU tar writes them, in each of its formats. The PAX ones are never
/// expanded, so a 5 GiB file (beyond 32-bit sizes) costs nothing to convert.
#[test]
fn gnu_tar_sparse_files_in_every_format() {
    use std::os::unix::fs::FileExt;
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let chunks: [(u64, &[u8]); 3] = [(0, b"head"), (1 << 20, &[b'm'; 10000]), (3 << 20, b"tail")];
    let small = std::fs::File::create(src.join("small")).unwrap();
    for (offset, data) in chunks {
        small.write_all_at(data, offset).unwrap();
    }
    let huge_size = (5u64 << 30) + 3;
    let huge = std::fs::File::create(src.join("huge")).unwrap();
    huge.write_all_at(b"start", 0).unwrap();
    huge.write_all_at(b"end", huge_size - 3).unwrap();
    drop((small, huge));

    for (format, files) in [
        (
            &["--format=posix", "--sparse-version=1.0"][..],
            &["small", "huge"][..],
        ),
        (
            &["--format=posix", "--sparse-version=0.1"],
            &["small", "huge"],
        ),
        (
            &["--format=posix", "--sparse-version=0.0"],
            &["small", "huge"],
        ),
        (&["--format=gnu"], &["small"]),
    ] {
        let tarball = dir.path().join("layer.tar");
        let status = std::process::Command::new("tar")
            .args(["--sparse", "--numeric-owner", "-C"])
            .arg(&src)
            .args(format)
            .arg("-cf")
            .arg(&tarball)
            .args(files)
            .status()
            .expect("GNU tar");
        assert!(status.success());
        let out = dir.path().join(format!("{}.ext4", format.join("")));
        let tar = std::fs::read(&tarball).unwrap();
        try_convert(&[tar], &out, &hk_image::ext4::Options::default())
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        fsck(&out);
        let s = stat(&out, b"/small").unwrap();
        assert_eq!(s.size, (3 << 20) + 4, "{format:?}");
        // head, three blocks of m's (10000 bytes from 1 MiB), tail.
        assert_eq!(s.blockcount, 5 * 8, "{format:?}");
        let content = cat(&out, b"/small");
        for (offset, data) in chunks {
            assert_eq!(
                &content[offset as usize..][..data.len()],
                data,
                "{format:?}"
            );
        }
        assert_eq!(
            content.iter().filter(|&&b| b != 0).count(),
            10008,
            "{format:?}"
        );
        if files.contains(&"huge") {
            let s = stat(&out, b"/huge").unwrap();
            assert_eq!((s.size, s.blockcount), (huge_size, 2 * 8), "{format:?}");
            let tail = debugfs(&out, &[b"bd -f /huge 1310720".to_vec()]);
            assert!(
                String::from_utf8_lossy(&tail[0]).starts_with("0000  656e 6400 "),
                "{format:?}: last block holds \"end\": {}",
                String::from_utf8_lossy(&tail[0])
            );
        }
    }
}

#[test]
fn replaced_files_leave_no_data_on_the_host() {
    let mut lower = Tar::new();
    lower
        .file("replaced", &ROOT, &noise(1 << 20, 3))
        .file("deleted", &ROOT, &noise(1 << 20, 4))
        .file("kept", &ROOT, &noise(1 << 20, 5));
    let mut upper = Tar::new();
    upper
        .file("replaced", &ROOT, b"small")
        .file(".wh.deleted", &ROOT, b"");
    let dir = scratch();
    let (img, stats) = convert_checked(&[lower.finish(), upper.finish()], dir.path());
    assert_eq!(stats.unused_data_blocks, 2 * 256);
    assert_eq!(cat(&img, b"/replaced"), b"small");
    assert_eq!(cat(&img, b"/kept"), noise(1 << 20, 5));
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(
        allocated <= stats.used_blocks * 4096,
        "{allocated} bytes allocated on the host for {} used blocks",
        stats.used_blocks
    );
}

#[test]
fn the_same_layers_give_the_same_image() {
    let build = || {
        let mut t = Tar::new();
        t.dir("d", &ROOT)
            .file("d/f", &ROOT, &noise(100_000, 9))
            .symlink("l", "d/f");
        t.finish()
    };
    let dir = scratch();
    let (a, _) = convert_checked(&[build()], dir.path());
    let first = std::fs::read(&a).unwrap();
    let (b, _) = convert_checked(&[build()], dir.path());
    assert!(
        first == std::fs::read(&b).unwrap(),
        "conversion is deterministic"
    );
}

/// Past 65000 subdirectories ext4's dir_nlink reports a link count of 1 (e2fsck agrees).
#[test]
fn a_directory_with_more_than_65000_subdirectories() {
    let mut t = Tar::new();
    for i in 0..65_010 {
        t.dir(format!("wide/{i}"), &ROOT);
    }
    let dir = scratch();
    let (img, stats) = convert_checked(&[t.finish()], dir.path());
    assert_eq!(stats.dirs, 65_010 + 3);
    assert_eq!(stat(&img, b"/wide").unwrap().links, 1);
    assert_eq!(stat(&img, b"/wide/65009").unwrap().links, 2);
}

/// POSIX ACLs arrive as `system.posix_acl_access` in the xattr format and are stored in
/// ext4's own; e2fsprogs converts back, which must give the original bytes.
#[test]
fn posix_acls_round_trip() {
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.system.posix_acl_access", &acl)])
        .file("shared", &meta(0o640, 0, 0, 1), b"x");
    let dir = scratch();
    let (img, _) = convert_checked(&[t.finish()], dir.path());
    let dump = dir.path().join("acl");
    let mut cmd = b"ea_get -f ".to_vec();
    cmd.extend_from_slice(dump.as_os_str().as_encoded_bytes());
    cmd.extend_from_slice(b" /shared system.posix_acl_access");
    debugfs(&img, &[cmd]);
    // Entries without an id (owner, group, mask, other) are stored without one; e2fsprogs
    // reports their id as 0 where the kernel says -1, and both ignore it.
    let mut want = acl.clone();
    for entry in want[4..].chunks_exact_mut(8) {
        if ![0x02, 0x08].contains(&entry[0]) {
            entry[4..].fill(0);
        }
    }
    assert_eq!(std::fs::read(&dump).unwrap(), want);
}

/// Conversions racing to the same output each build their own temporary file; the image
/// left behind is a whole one.
#[test]
fn concurrent_conversions_to_one_output() {
    let dir = scratch();
    let out = dir.path().join("rootfs.ext4");
    let tars: Vec<Vec<Vec<u8>>> = (0..4u32)
        .map(|i| {
            let mut t = Tar::new();
            t.file("f", &ROOT, &noise(300_000, i));
            vec![t.finish()]
        })
        .collect();
    std::thread::scope(|s| {
        for t in &tars {
            let out = &out;
            s.spawn(move || try_convert(t, out, &hk_image::ext4::Options::default()).unwrap());
        }
    });
    fsck(&out);
    let content = cat(&out, b"/f");
    assert!((0..4).any(|i| content == noise(300_000, i)));
    assert_eq!(dir_entries(dir.path()), ["rootfs.ext4"]);
}
