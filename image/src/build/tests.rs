//! COPY/ADD rules against temp directories and images built by hk's own ext4 writer.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// One tar entry, as compared: type, mode, owners, size, link target, content sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct E {
    pub kind: char,
    pub mode: u32,
    pub owner: (u64, u64),
    pub size: u64,
    pub link: String,
    pub sha: String,
}

pub(super) fn entries(tar_bytes: &[u8]) -> BTreeMap<String, E> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned())
            .unwrap()
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Regular => 'f',
            other => panic!("unexpected {other:?}"),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            path,
            E {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                owner: (h.uid().unwrap(), h.gid().unwrap()),
                size: data.len() as u64,
                link: e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default(),
                sha: if kind == 'f' {
                    crate::Digest::of(&data).to_string()
                } else {
                    String::new()
                },
            },
        );
    }
    out
}

pub(super) fn write(dir: &Path, rel: &str, content: &str, mode: u32) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

pub(super) fn op(sources: &[&str], dest: &str) -> CopyOp {
    CopyOp {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        workdir: "/".into(),
        ..Default::default()
    }
}

pub(super) fn run(
    ctx: &Path,
    ignore: &str,
    op: &CopyOp,
    root: &RootView,
) -> Result<BTreeMap<String, E>> {
    let src = Source::context(ctx, Ignore::parse(ignore).unwrap())?;
    let mut b = tar::Builder::new(Vec::new());
    copy_to_layer(&src, op, root, &mut b)?;
    Ok(entries(&b.into_inner().unwrap()))
}

fn names(m: &BTreeMap<String, E>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// An image root built by hk's ext4 writer from one tar of (path, kind, content/target).
fn image(entries: &[(&str, char, &str)]) -> (tempfile::TempDir, RootView) {
    let mut b = tar::Builder::new(Vec::new());
    for &(path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match kind {
            'd' => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            'l' => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            'h' => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("root.ext4");
    crate::ext4::convert(
        [crate::ext4::Layer {
            name: "test".into(),
            tar: &tar[..],
        }],
        &out,
        &Default::default(),
    )
    .unwrap();
    let view = RootView::from_file(fs::File::open(&out).unwrap()).unwrap();
    (dir, view)
}

#[test]
fn file_to_dir_dir_contents_and_dest_forms() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "a.txt", "A", 0o640);
    write(ctx.path(), "src/one", "1", 0o755);
    write(ctx.path(), "src/sub/two", "22", 0o600);
    let empty = RootView::empty();

    // A file to a path without `/` is that file; with `/` it goes inside.
    let m = run(ctx.path(), "", &op(&["a.txt"], "/b.txt"), &empty).unwrap();
    assert_eq!(names(&m), ["b.txt"]);
    assert_eq!(m["b.txt"].mode, 0o640);
    assert_eq!(m["b.txt"].owner, (0, 0));
    let m = run(ctx.path(), "", &op(&["a.txt"], "/app/"), &empty).unwrap();
    assert_eq!(names(&m), ["app", "app/a.txt"]);
    assert_eq!((m["app"].mode, m["app"].owner), (0o755, (0, 0)));

    // A directory copies its contents, not itself; parents are created.
    let m = run(ctx.path(), "", &op(&["src"], "/opt/x"), &empty).unwrap();
    assert_eq!(
        names(&m),
        ["opt", "opt/x", "opt/x/one", "opt/x/sub", "opt/x/sub/two"]
    );
    assert_eq!(m["opt/x/sub/two"].mode, 0o600);

    // Relative to WORKDIR; `..` cannot climb out of the context; absolute sources are
    // context-relative.
    let mut o = op(&["../../a.txt"], "rel/");
    o.workdir = "/work".into();
    let m = run(ctx.path(), "", &o, &empty).unwrap();
    assert_eq!(names(&m), ["work", "work/rel", "work/rel/a.txt"]);
    let m = run(ctx.path(), "", &op(&["/src/one"], "/o"), &empty).unwrap();
    assert_eq!(names(&m), ["o"]);
}

#[test]
fn a_file_into_an_existing_image_directory_and_clashes() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "f", "F", 0o644);
    write(ctx.path(), "d/x", "X", 0o644);
    let (_keep, root) = image(&[
        ("app/", 'd', ""),
        ("etc/", 'd', ""),
        ("etc/file", 'f', "old"),
        ("link", 'l', "app"),
    ]);
    // `/app` is a directory in the image: the file goes inside, the existing directory is
    // written with its own metadata.
    let m = run(ctx.path(), "", &op(&["f"], "/app"), &root).unwrap();
    assert_eq!(names(&m), ["app", "app/f"]);
    // Symlinks in the destination are followed inside the image.
    let m = run(ctx.path(), "", &op(&["f"], "/link/"), &root).unwrap();
    assert_eq!(names(&m), ["app", "app/f"]);
    // A directory over a file, or several sources into a file: refused.
    let e = run(ctx.path(), "", &op(&["d"], "/etc/file"), &root).unwrap_err();
    assert!(
        e.to_string().contains("cannot copy to non-directory"),
        "{e}"
    );
    let e = run(ctx.path(), "", &op(&["f", "d"], "/etc/file"), &root).unwrap_err();
    assert!(e.to_string().contains("more than one source file"), "{e}");
    // A file named after an image directory goes inside it (never replaces it).
    let e = run(ctx.path(), "", &op(&["f"], "/etc"), &root).unwrap();
    assert!(e.contains_key("etc/f"));
    let (_keep2, root2) = image(&[("x/", 'd', ""), ("x/f/", 'd', "")]);
    let e = run(ctx.path(), "", &op(&["d"], "/x/f/x/"), &root2);
    assert!(e.is_ok());
    let e = run(ctx.path(), "", &op(&["d/x"], "/x/f"), &root2).unwrap();
    assert!(
        e.contains_key("x/f/x"),
        "existing dir: the file goes inside"
    );
}

#[test]
fn globs_no_match_and_missing_sources() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "a.txt", "a", 0o644);
    write(ctx.path(), "b.txt", "b", 0o644);
    write(ctx.path(), "c.md", "c", 0o644);
    write(ctx.path(), "dir/d.txt", "d", 0o644);
    let empty = RootView::empty();
    let m = run(ctx.path(), "", &op(&["*.txt"], "/out/"), &empty).unwrap();
    assert_eq!(names(&m), ["out", "out/a.txt", "out/b.txt"]);
    let m = run(ctx.path(), "", &op(&["*/*.txt", "[c]*"], "/o/"), &empty).unwrap();
    assert_eq!(names(&m), ["o", "o/c.md", "o/d.txt"]);
    // A glob matching nothing next to one that matches adds nothing.
    let m = run(ctx.path(), "", &op(&["*.none", "c.md"], "/o/"), &empty).unwrap();
    assert_eq!(names(&m), ["o", "o/c.md"]);
    let e = run(ctx.path(), "", &op(&["*.none"], "/o/"), &empty).unwrap_err();
    assert_eq!(e.to_string(), "COPY failed: no source files were specified");
    let e = run(ctx.path(), "", &op(&["missing"], "/o/"), &empty).unwrap_err();
    assert_eq!(e.to_string(), "\"missing\": not found");
    // Several matches and a destination without `/` that is not a directory.
    let e = run(ctx.path(), "", &op(&["*.txt"], "/o"), &empty).unwrap_err();
    assert!(
        e.to_string()
            .contains("must be a directory and end with a /"),
        "{e}"
    );
}

#[test]
fn dockerignore_is_honoured_with_exceptions() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "keep", "k", 0o644);
    write(ctx.path(), "secret.env", "s", 0o644);
    write(ctx.path(), "docs/a.md", "a", 0o644);
    write(ctx.path(), "docs/sub/README.md", "r", 0o644);
    write(ctx.path(), "Dockerfile", "FROM scratch", 0o644);
    let ignore = "*.env\ndocs\n!docs/sub/README.md\nDockerfile";
    let empty = RootView::empty();
    let m = run(ctx.path(), ignore, &op(&["."], "/c/"), &empty).unwrap();
    assert_eq!(
        names(&m),
        [
            "c",
            "c/docs",
            "c/docs/sub",
            "c/docs/sub/README.md",
            "c/keep"
        ]
    );
    let e = run(ctx.path(), ignore, &op(&["secret.env"], "/c/"), &empty).unwrap_err();
    assert_eq!(e.to_string(), "\"secret.env\": not found");
    // A glob sees the context as sent: `docs` is there only as the parent of what an
    // exception took back, so its contents arrive with just that file.
    let m = run(ctx.path(), ignore, &op(&["*"], "/g/"), &empty).unwrap();
    assert_eq!(names(&m), ["g", "g/keep", "g/sub", "g/sub/README.md"]);
    assert!(!m
        .keys()
        .any(|k| k.contains("secret") || k.contains("Dockerfile") || k.ends_with("a.md")));
}

#[test]
fn symlinks_hardlinks_and_escapes() {
    let ctx = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "passwd", "root:x:0:0", 0o644);
    write(ctx.path(), "dir/real", "data", 0o644);
    symlink("real", ctx.path().join("dir/rel")).unwrap();
    symlink(outside.path().join("passwd"), ctx.path().join("dir/abs")).unwrap();
    fs::hard_link(ctx.path().join("dir/real"), ctx.path().join("dir/hard")).unwrap();
    symlink("dir/real", ctx.path().join("top")).unwrap();
    symlink("../../../..", ctx.path().join("up")).unwrap();
    let empty = RootView::empty();

    // Below a copied directory, symlinks stay symlinks (even pointing outside: they are
    // resolved in the image, not on the host); hardlinks stay hardlinks.
    let m = run(ctx.path(), "", &op(&["dir"], "/d/"), &empty).unwrap();
    assert_eq!(m["d/rel"].kind, 'l');
    assert_eq!(m["d/rel"].link, "real");
    assert_eq!(m["d/abs"].kind, 'l');
    assert_eq!(m["d/hard"].kind, 'f');
    assert_eq!(m["d/real"].kind, 'h');
    assert_eq!(m["d/real"].link, "d/hard");
    // The source itself is followed, inside the context.
    let m = run(ctx.path(), "", &op(&["top"], "/t"), &empty).unwrap();
    assert_eq!((m["t"].kind, m["t"].size), ('f', 4));
    // A source symlink pointing outside the context resolves inside it: `up` is the
    // context root, `dir/abs` names a path that does not exist in the context.
    let m = run(ctx.path(), "", &op(&["up/dir/real"], "/u"), &empty).unwrap();
    assert_eq!(m["u"].size, 4);
    let e = run(ctx.path(), "", &op(&["dir/abs"], "/x"), &empty).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let e = run(ctx.path(), "", &op(&["../../etc/passwd"], "/x"), &empty).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[test]
fn chown_chmod_and_owners() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "d/f", "x", 0o600);
    let empty = RootView::empty();
    let mut o = op(&["d"], "/a/b/");
    o.chown = Some((1000, 1001));
    o.chmod = Some(0o640);
    let m = run(ctx.path(), "", &o, &empty).unwrap();
    // Created parents: 0755 owned by --chown's ids; copied entries: --chmod, --chown.
    assert_eq!((m["a"].mode, m["a"].owner), (0o755, (1000, 1001)));
    assert_eq!((m["a/b"].mode, m["a/b"].owner), (0o755, (1000, 1001)));
    assert_eq!((m["a/b/f"].mode, m["a/b/f"].owner), (0o640, (1000, 1001)));
}

#[test]
fn resolve_chown_follows_buildkit() {
    let (_keep, root) = image(&[
        ("etc/", 'd', ""),
        (
            "etc/passwd",
            'f',
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1500::/home/app:/bin/sh\n",
        ),
        ("etc/group", 'f', "root:x:0:\nstaff:x:50:\n"),
    ]);
    assert_eq!(root.resolve_chown("1000").unwrap(), (1000, 1000));
    assert_eq!(root.resolve_chown("app").unwrap(), (1000, 1500));
    assert_eq!(root.resolve_chown("app:staff").unwrap(), (1000, 50));
    assert_eq!(root.resolve_chown("7:8").unwrap(), (7, 8));
    assert_eq!(root.resolve_chown("app:9").unwrap(), (1000, 9));
    assert!(root
        .resolve_chown("nobody")
        .unwrap_err()
        .to_string()
        .contains("no user"));
    assert!(root
        .resolve_chown("app:wheel")
        .unwrap_err()
        .to_string()
        .contains("no group"));
    assert_eq!(RootView::empty().resolve_chown("5").unwrap(), (5, 5));
    assert!(RootView::empty().resolve_chown("app").is_err());
}

#[test]
fn copy_from_an_image_keeps_owners_and_reads_what_the_ext4_writer_wrote() {
    // Extents of a multi-block file, fast and slow symlinks, a hardlink and a directory
    // big enough to be an htree.
    let big: String = "0123456789abcdef".repeat(70_000);
    let long_target = "t/".repeat(60) + "end";
    let mut files: Vec<(String, char, String)> = vec![
        ("srv/".into(), 'd', String::new()),
        ("srv/big".into(), 'f', big.clone()),
        ("srv/fast".into(), 'l', "big".into()),
        ("srv/slow".into(), 'l', long_target.clone()),
        ("srv/hard".into(), 'h', "srv/big".into()),
        ("srv/many/".into(), 'd', String::new()),
    ];
    for i in 0..400 {
        files.push((
            format!("srv/many/file-with-a-longish-name-{i:04}"),
            'f',
            i.to_string(),
        ));
    }
    let refs: Vec<(&str, char, &str)> = files
        .iter()
        .map(|(a, b, c)| (a.as_str(), *b, c.as_str()))
        .collect();
    let (_keep, root) = image(&refs);
    let src = Source::image(&root);
    let mut b = tar::Builder::new(Vec::new());
    let stats = copy_to_layer(&src, &op(&["/srv"], "/copy/"), &RootView::empty(), &mut b).unwrap();
    let m = entries(&b.into_inner().unwrap());
    assert_eq!(
        m["copy/big"].sha,
        crate::Digest::of(big.as_bytes()).to_string()
    );
    assert_eq!(m["copy/fast"].link, "big");
    assert_eq!(m["copy/slow"].link, long_target);
    // ext4-view shows no inode numbers: the hardlink arrives as a second copy.
    assert_eq!(m["copy/hard"].sha, m["copy/big"].sha);
    assert_eq!(
        m.keys().filter(|k| k.starts_with("copy/many/")).count(),
        400
    );
    assert_eq!(m["copy/many/file-with-a-longish-name-0399"].size, 3);
    assert_eq!(stats.files, 402);
    assert!(root.lookup("/srv/many").unwrap().unwrap().is_dir);
    assert_eq!(root.lookup("/srv/fast").unwrap().unwrap().path, "/srv/big");
    assert!(root.lookup("/nope").unwrap().is_none());
}

fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o640);
        h.set_uid(33);
        h.set_gid(44);
        h.set_mtime(1_500_000_000);
        h.set_size(data.len() as u64);
        // Raw names: the tar crate's own path setter refuses `..`, a hostile tool does not.
        h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn add_extracts_local_archives_and_refuses_urls() {
    let ctx = tempfile::tempdir().unwrap();
    let plain = tar_of(&[("x/one", "1"), ("two", "22")]);
    fs::write(ctx.path().join("a.tar"), &plain).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    fs::write(ctx.path().join("a.tgz"), gz.finish().unwrap()).unwrap();
    fs::write(
        ctx.path().join("a.tar.zst"),
        zstd::encode_all(&plain[..], 3).unwrap(),
    )
    .unwrap();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    std::io::Write::write_all(&mut bz, &plain).unwrap();
    fs::write(ctx.path().join("a.tbz"), bz.finish().unwrap()).unwrap();
    fs::write(ctx.path().join("notar.gz"), {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"just text").unwrap();
        gz.finish().unwrap()
    })
    .unwrap();
    let empty = RootView::empty();
    for name in ["a.tar", "a.tgz", "a.tar.zst", "a.tbz"] {
        let mut o = op(&[name], "/dst");
        o.add = true;
        let m = run(ctx.path(), "", &o, &empty).unwrap();
        assert_eq!(
            names(&m),
            ["dst", "dst/two", "dst/x", "dst/x/one"],
            "{name}"
        );
        assert_eq!((m["dst/two"].mode, m["dst/two"].owner), (0o640, (33, 44)));
        // COPY never extracts.
        let m = run(ctx.path(), "", &op(&[name], "/dst"), &empty).unwrap();
        assert_eq!(names(&m), ["dst"]);
    }
    // A compressed file that is not a tar is copied as it is.
    let mut o = op(&["notar.gz"], "/n");
    o.add = true;
    assert_eq!(names(&run(ctx.path(), "", &o, &empty).unwrap()), ["n"]);

    // Hostile archives.
    for (bad, why) in [
        (tar_of(&[("../escape", "x")]), "leaves the destination"),
        (tar_of(&[("dir/.wh.file", "")]), "whiteout"),
    ] {
        fs::write(ctx.path().join("bad.tar"), bad).unwrap();
        let mut o = op(&["bad.tar"], "/d");
        o.add = true;
        let e = run(ctx.path(), "", &o, &empty).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let mut o = op(&["https://example.com/x.tgz"], "/d");
    o.add = true;
    assert_eq!(
        run(ctx.path(), "", &o, &empty).unwrap_err().to_string(),
        "ADD https://example.com/x.tgz: remote URLs are not supported offline; download the file into the build context and COPY it"
    );
    o.sources = vec!["https://github.com/moby/buildkit.git#v0.12".into()];
    assert!(run(ctx.path(), "", &o, &empty)
        .unwrap_err()
        .to_string()
        .contains("git sources"));
}

#[test]
fn source_digest_tracks_content_not_mtime_or_ignored_files() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "app/main.rs", "fn main() {}", 0o644);
    write(ctx.path(), "app/target/junk", "junk", 0o644);
    let ignore = Ignore::parse("app/target").unwrap();
    let digest = || {
        let src = Source::context(ctx.path(), ignore.clone()).unwrap();
        source_digest(&src, &op(&["app"], "/src/")).unwrap()
    };
    let first = digest();
    // mtime only: same digest.
    let f = fs::File::options()
        .write(true)
        .open(ctx.path().join("app/main.rs"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(digest(), first);
    // An ignored file: same digest.
    write(ctx.path(), "app/target/junk", "other junk", 0o644);
    assert_eq!(digest(), first);
    // Content and mode: different digests.
    write(ctx.path(), "app/main.rs", "fn main() { }", 0o644);
    let second = digest();
    assert_ne!(second, first);
    write(ctx.path(), "app/main.rs", "fn main() { }", 0o755);
    assert_ne!(digest(), second);
}

#[test]
fn layer_from_a_copy_is_deterministic() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "a/b", "bee", 0o644);
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::Store::open(store_dir.path()).unwrap();
    let layer = || {
        let src = Source::context(ctx.path(), Ignore::default()).unwrap();
        let mut b = tar::Builder::new(store.layer_writer().unwrap());
        copy_to_layer(&src, &op(&["a"], "/x/"), &RootView::empty(), &mut b).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let (one, two) = (layer(), layer());
    assert_eq!(one.digest, two.digest);
    assert_eq!(one.diff_id, two.diff_id);
}
