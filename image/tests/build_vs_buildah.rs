//! hk's COPY/ADD against real `buildah bud --isolation chroot` (offline, `FROM scratch`):
//! the same context and instruction must give the same layer entries (names, types, modes,
//! owners, sizes, link targets, contents). Needs root and buildah; each case takes well
//! under a second and removes its image.

use hk_image::build::{copy_to_layer, CopyOp, Ignore, RootView, Source};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

type Entries = BTreeMap<String, (char, u32, (u64, u64), u64, String, String)>;

fn entries(tar_bytes: &[u8]) -> Entries {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(tar_bytes).entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let sha = hk_image::Digest::of(&data).to_string();
        let owner = (h.uid().unwrap(), h.gid().unwrap());
        out.insert(
            path,
            (
                kind,
                h.mode().unwrap() & 0o7777,
                owner,
                data.len() as u64,
                link,
                sha,
            ),
        );
    }
    out
}

fn buildah_layer(ctx: &Path, instruction: &str) -> Entries {
    let tag = format!("localhost/hk-copy-test-{}", std::process::id());
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\n{instruction}\n"),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new("buildah").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "bud",
        "--isolation",
        "chroot",
        "-q",
        "-t",
        &tag,
        ctx.to_str().unwrap(),
    ]);
    let oci = format!("oci:{}", out_dir.path().display());
    let pushed = Command::new("buildah")
        .args(["push", "-q", &tag, &oci])
        .output()
        .unwrap();
    run(&["rmi", &tag]);
    assert!(pushed.status.success());
    let blob = |digest: &str| {
        fs::read(
            out_dir
                .path()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.path().join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut plain = Vec::new();
    if layer.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut plain)
            .unwrap();
    } else {
        plain = layer;
    }
    entries(&plain)
}

fn hk_layer(ctx: &Path, op: &CopyOp) -> Entries {
    let ignore = fs::read_to_string(ctx.join(".dockerignore")).unwrap_or_default();
    let src = Source::context(ctx, Ignore::parse(&ignore).unwrap()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    copy_to_layer(&src, op, &RootView::empty(), &mut b).unwrap();
    entries(&b.into_inner().unwrap())
}

fn write(dir: &Path, rel: &str, content: &str, mode: u32) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn op(sources: &[&str], dest: &str) -> CopyOp {
    CopyOp {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        workdir: "/".into(),
        ..Default::default()
    }
}

#[test]
fn copy_matches_buildah() {
    if Command::new("buildah").arg("--version").output().is_err() {
        eprintln!("buildah is not installed: comparison not run");
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(c, "a.txt", "alpha", 0o640);
    write(c, "b.txt", "bravo", 0o644);
    write(c, "dir/x", "ex", 0o755);
    write(c, "dir/sub/y", "why", 0o600);
    write(c, "dir/skip.log", "no", 0o644);
    symlink("x", c.join("dir/lx")).unwrap();
    write(c, ".dockerignore", "**/*.log\n", 0o644);
    let tar_data = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_500_000_000);
        h.set_size(3);
        b.append_data(&mut h, "in/tar", &b"tar"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_data).unwrap();
    fs::write(c.join("t.tgz"), gz.finish().unwrap()).unwrap();

    let chown = CopyOp {
        chown: Some((1000, 1000)),
        ..op(&["a.txt"], "/own/")
    };
    let chmod = CopyOp {
        chmod: Some(0o751),
        ..op(&["dir"], "/m/")
    };
    let add = CopyOp {
        add: true,
        ..op(&["t.tgz"], "/x/")
    };
    let cases: Vec<(&str, CopyOp)> = vec![
        ("COPY a.txt /app/", op(&["a.txt"], "/app/")),
        ("COPY dir /d", op(&["dir"], "/d")),
        ("COPY *.txt /g/", op(&["*.txt"], "/g/")),
        ("COPY --chown=1000 a.txt /own/", chown),
        ("COPY --chmod=751 dir /m/", chmod),
        ("ADD t.tgz /x/", add),
    ];
    let mut failures = Vec::new();
    for (instruction, op) in cases {
        let theirs = buildah_layer(c, instruction);
        let ours = hk_layer(c, &op);
        assert!(
            !theirs.is_empty(),
            "{instruction}: buildah wrote an empty layer"
        );
        eprintln!(
            "{instruction}: {} entries: {:?}",
            ours.len(),
            ours.keys().collect::<Vec<_>>()
        );
        if theirs != ours {
            failures.push(format!(
                "{instruction}\n  buildah: {theirs:?}\n  hk:      {ours:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
