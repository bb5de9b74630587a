//! Images in and out without a registry, and back into one: `hk load` of what skopeo
//! writes (docker-archive and oci-archive, plain and gzip, from a file and from stdin),
//! `hk save` read back by skopeo and by `hk load` into a fresh store, `hk tag`, `hk push`
//! through a proxy that counts what the registry is sent, hostile tarballs, and
//! `scripts/demo-image`. No VM: images end as ext4 files checked with e2fsck.

mod common;

use common::*;
use hk_image::Digest;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Every member of a tarball, by name.
fn archive_members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut tar = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = std::collections::BTreeMap::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A two-layer image on the registry: busybox (gzip) and a small plain layer.
fn push_test_image(reg: &Registry, repo: &str, tag: &str) -> (TestImage, Digest) {
    let extra = TarBuilder::new()
        .dir("srv", 0o755)
        .file("srv/hello.txt", 0o644, b"hello from a loaded image\n")
        .finish();
    let image = TestImage::new(vec![
        TestLayer {
            tar: busybox_tar(),
            compression: Compression::Gzip,
        },
        TestLayer {
            tar: extra,
            compression: Compression::None,
        },
    ]);
    let manifest = reg.push_image(repo, tag, &image);
    (image, manifest)
}

fn image_id(hk: &Hk, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&hk.ok(&["image", "inspect", name])).expect("inspect json");
    v[0]["Id"].as_str().expect("Id").to_string()
}

fn manifest_digest(hk: &Hk, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&hk.ok(&["image", "inspect", name])).expect("inspect json");
    v[0]["Manifest"].as_str().expect("Manifest").to_string()
}

/// Converts `name` and checks the ext4 against the layers' tar headers.
fn assert_rootfs(hk: &Hk, name: &str, layers: &[&[u8]]) {
    let ext4 = PathBuf::from(hk.ok(&["image", "rootfs", name]).trim());
    assert_e2fsck_clean(&ext4);
    assert_tree_matches(&ext4, &expected_tree(layers));
}

fn assert_no_temp_files(hk: &Hk) {
    assert!(
        hk.store_files("tmp").is_empty(),
        "temp files left: {:?}",
        hk.store_files("tmp")
    );
}

fn load_stdin(hk: &Hk, data: &[u8]) -> std::process::Output {
    let mut child = hk
        .cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hk load");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("hk load");
    writer.join().unwrap();
    out
}

#[test]
fn skopeo_archives_load_and_convert() {
    let reg = Registry::start();
    let (image, _) = push_test_image(&reg, "src/bb", "v1");
    let config_digest = Digest::of(&image.config()).to_string();
    let tars: Vec<&[u8]> = image.layers.iter().map(|l| &l.tar[..]).collect();
    let dir = tempfile::tempdir().unwrap();
    let src = format!("docker://{}", reg.image_ref("src/bb", "v1"));
    for (format, name) in [
        ("docker-archive", "loaded/docker:one"),
        ("oci-archive", "loaded/oci:two"),
    ] {
        let file = dir.path().join(format!("{format}.tar"));
        let dest = format!("{format}:{}:{name}", file.display());
        skopeo(&["copy", "-q", "--src-tls-verify=false", &src, &dest]);
        let hk = Hk::new();
        let out = hk.ok(&["load", "-i", file.to_str().unwrap()]);
        assert_eq!(out, format!("Loaded image: {name}\n"), "{format}");
        let images = hk.ok(&["images"]);
        let (repo, tag) = name.split_once(':').unwrap();
        assert!(
            images
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([repo, tag])),
            "{format}: hk images does not show {name}:\n{images}"
        );
        assert_eq!(image_id(&hk, name), config_digest, "{format}: image ID");
        assert_rootfs(&hk, name, &tars);
        assert_no_temp_files(&hk);
        hk.assert_store_consistent();

        // The same archive gzip- and zstd-compressed, through stdin, into fresh stores.
        for c in [Compression::Gzip, Compression::Zstd] {
            let packed = compress(&std::fs::read(&file).unwrap(), c);
            let hk = Hk::new();
            let out = load_stdin(&hk, &packed);
            assert!(
                out.status.success(),
                "{format} {c:?} from stdin: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("Loaded image: {name}\n")
            );
            assert_eq!(image_id(&hk, name), config_digest);
            assert_rootfs(&hk, name, &tars);
        }
    }

    // An OCI layout without a name loads as an image ID, as docker says it.
    let file = dir.path().join("unnamed.tar");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &src,
        &format!("oci-archive:{}", file.display()),
    ]);
    let hk = Hk::new();
    let out = hk.ok(&["load", "-q", "-i", file.to_str().unwrap()]);
    assert_eq!(out, format!("Loaded image ID: {config_digest}\n"));
    assert!(hk.ok(&["images"]).contains("<none>"));
}

#[test]
fn save_reads_back_with_skopeo_and_round_trips() {
    let reg = Registry::start();
    let (image, manifest) = push_test_image(&reg, "app", "v1");
    let config_digest = Digest::of(&image.config()).to_string();
    let diff_ids: Vec<String> = image
        .layers
        .iter()
        .map(|l| Digest::of(&l.tar).to_string())
        .collect();
    let tars: Vec<&[u8]> = image.layers.iter().map(|l| &l.tar[..]).collect();
    let hk = Hk::new();
    let name = reg.image_ref("app", "v1");
    hk.ok(&["pull", "-q", &name]);
    hk.ok(&["tag", &name, "saved/app"]);
    let dir = tempfile::tempdir().unwrap();

    // docker-archive: skopeo reads the config and the layers' diff_ids.
    let docker = dir.path().join("docker.tar");
    hk.ok(&["save", "-o", docker.to_str().unwrap(), "saved/app"]);
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        &format!("docker-archive:{}", docker.display()),
    ]))
    .unwrap();
    assert_eq!(raw["config"]["digest"], config_digest.as_str());
    let layers: Vec<&str> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers, diff_ids,
        "plain tar layers: their digest is their diff_id"
    );
    let config: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", docker.display()),
    ]))
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    let members = archive_members(&docker);
    let manifest_json: serde_json::Value =
        serde_json::from_slice(&members["manifest.json"]).unwrap();
    assert_eq!(
        manifest_json[0]["RepoTags"],
        serde_json::json!(["saved/app:latest"])
    );
    let repositories: serde_json::Value = serde_json::from_slice(&members["repositories"]).unwrap();
    assert_eq!(
        repositories["saved/app"]["latest"],
        diff_ids.last().unwrap()[7..]
    );

    // oci-archive: the stored manifest byte for byte, so its digest is the registry's.
    let oci = dir.path().join("oci.tar");
    hk.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        oci.to_str().unwrap(),
        "saved/app",
    ]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", oci.display()),
    ]);
    assert_eq!(Digest::of(raw.as_bytes()), manifest);

    // Round trips into fresh stores: same image ID, same names, convertible.
    for file in [&docker, &oci] {
        let fresh = Hk::new();
        let out = fresh.ok(&["load", "-i", file.to_str().unwrap()]);
        assert_eq!(out, "Loaded image: saved/app:latest\n");
        assert_eq!(image_id(&fresh, "saved/app"), config_digest);
        assert_rootfs(&fresh, "saved/app", &tars);
        assert_no_temp_files(&fresh);
    }
    let fresh = Hk::new();
    fresh.ok(&["load", "-i", oci.to_str().unwrap()]);
    assert_eq!(manifest_digest(&fresh, "saved/app"), manifest.to_string());

    // To stdout, several images and names in one archive; by ID, no name.
    let demo = demo_image(dir.path());
    hk.ok(&["load", "-i", demo.to_str().unwrap()]);
    let multi = dir.path().join("multi.tar");
    let status = hk
        .cmd(&["save", "saved/app", &name, "hk-demo", &config_digest[7..19]])
        .stdout(std::fs::File::create(&multi).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = Hk::new();
    let mut lines: Vec<String> = fresh
        .ok(&["load", "-i", multi.to_str().unwrap()])
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("Loaded image: {name}"),
            "Loaded image: hk-demo:latest".to_string(),
            "Loaded image: saved/app:latest".to_string(),
        ]
    );
    assert_eq!(image_id(&fresh, &name), config_digest);

    // A relative -o lands in the current directory.
    let out = hk
        .cmd(&["save", "-o", "relative.tar", "saved/app"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("relative.tar")).unwrap(),
        std::fs::read(&docker).unwrap(),
        "the same images give the same bytes"
    );
    std::fs::remove_file(dir.path().join("relative.tar")).unwrap();

    // A failed save leaves no file behind.
    let missing = dir.path().join("missing.tar");
    let err = hk.fails(&["save", "-o", missing.to_str().unwrap(), "nosuch"], 125);
    assert!(err.contains("No such image: nosuch"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "only the three archives and the demo image"
    );
}

#[test]
fn tag_follows_docker() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_image(dir.path());
    let hk = Hk::new();
    hk.ok(&["load", "-i", demo.to_str().unwrap()]);
    let id = image_id(&hk, "hk-demo");
    hk.ok(&["tag", &id[7..15], "other/name"]);
    hk.ok(&["tag", "hk-demo:latest", "localhost:5000/x:v2"]);
    assert_eq!(image_id(&hk, "other/name:latest"), id);
    assert_eq!(image_id(&hk, "localhost:5000/x:v2"), id);
    let err = hk.fails(&["tag", "nosuch", "a"], 125);
    assert!(err.contains("No such image: nosuch"), "{err}");
    let err = hk.fails(&["tag", "hk-demo", &format!("a@{id}")], 125);
    assert!(err.contains("digest"), "{err}");
    // Removing one name keeps the image for the others.
    hk.ok(&["rmi", "other/name"]);
    assert_eq!(image_id(&hk, "hk-demo"), id);
}

/// A TCP proxy in front of the registry that keeps every byte clients send, so a test can
/// count the requests the registry got.
/// What each connection sent, one log per connection.
type Logs = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

struct Recorder {
    addr: String,
    sent: Logs,
}

impl Recorder {
    fn start(upstream: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent: Logs = Arc::default();
        let all = sent.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let log: Arc<Mutex<Vec<u8>>> = Arc::default();
                all.lock().unwrap().push(log.clone());
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    loop {
                        let n = match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { addr, sent }
    }

    /// Request lines sent so far (`PUT /v2/x/blobs/uploads/…?digest=… HTTP/1.1`); resets.
    fn take(&self) -> Vec<String> {
        let mut out = Vec::new();
        for log in self.sent.lock().unwrap().iter() {
            let mut log = log.lock().unwrap();
            let text = String::from_utf8_lossy(&log);
            for method in ["GET ", "HEAD ", "POST ", "PUT ", "PATCH "] {
                for (i, _) in text.match_indices(&format!("{method}/v2/")) {
                    if i == 0 || text[..i].ends_with('\n') {
                        let line = text[i..].lines().next().unwrap_or("").to_string();
                        out.push(line);
                    }
                }
            }
            log.clear();
        }
        out
    }
}

fn uploads(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with("PUT ") && l.contains("/blobs/uploads/"))
        .count()
}

fn mounts(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with("POST ") && l.contains("mount="))
        .count()
}

#[test]
fn push_sends_each_blob_once_and_pulls_back_the_same_image() {
    let reg = Registry::start();
    let proxy = Recorder::start(&reg.addr);
    let (image, manifest) = push_test_image(&reg, "origin/app", "v1");
    let config_digest = Digest::of(&image.config()).to_string();
    let blobs = image.layers.len() + 1;
    let hk = Hk::new();
    let origin = reg.image_ref("origin/app", "v1");
    hk.ok(&["pull", "-q", &origin]);

    // Another name on the registry (through the proxy): every blob goes up once.
    let target = format!("{}/pushed/app:v1", proxy.addr);
    hk.ok(&["tag", &origin, &target]);
    proxy.take();
    let out = hk.ok(&["push", &target]);
    let lines = proxy.take();
    assert_eq!(uploads(&lines), blobs, "{lines:#?}");
    assert!(
        out.starts_with(&format!(
            "The push refers to repository [{}/pushed/app]\n",
            proxy.addr
        )),
        "{out}"
    );
    // docker shows layers, not the config.
    assert_eq!(out.matches(": Pushed").count(), blobs - 1, "{out}");
    assert!(
        out.ends_with(&format!("v1: digest: {manifest} size: ")[..])
            || out.contains(&format!("v1: digest: {manifest} size: ")),
        "{out}"
    );

    // Again: the registry has every blob, none is sent.
    let out = hk.ok(&["push", &target]);
    let lines = proxy.take();
    assert_eq!(uploads(&lines), 0, "{lines:#?}");
    assert_eq!(mounts(&lines), 0, "{lines:#?}");
    assert_eq!(
        out.matches("Layer already exists").count(),
        blobs - 1,
        "{out}"
    );

    // A third repository of the same registry: mounted from the second, not uploaded.
    let third = format!("{}/third/app:v9", proxy.addr);
    hk.ok(&["tag", &target, &third]);
    hk.ok(&["push", "-q", &third]);
    let lines = proxy.take();
    assert_eq!(uploads(&lines), 0, "{lines:#?}");
    assert_eq!(mounts(&lines), blobs, "{lines:#?}");

    // Pulled back into a fresh store: the same image.
    for name in [&target, &third] {
        let fresh = Hk::new();
        let pulled = name.replace(&proxy.addr, &reg.addr);
        fresh.ok(&["pull", "-q", &pulled]);
        assert_eq!(image_id(&fresh, &pulled), config_digest);
        assert_eq!(manifest_digest(&fresh, &pulled), manifest.to_string());
    }

    // A loaded image (plain tar layer, a manifest hk wrote) pushes and pulls back too.
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_image(dir.path());
    hk.ok(&["load", "-i", demo.to_str().unwrap()]);
    let demo_target = reg.image_ref("demo", "latest");
    hk.ok(&["tag", "hk-demo", &demo_target]);
    hk.ok(&["push", "-q", &demo_target]);
    let fresh = Hk::new();
    fresh.ok(&["pull", "-q", &demo_target]);
    assert_eq!(image_id(&fresh, &demo_target), image_id(&hk, "hk-demo"));
    assert_eq!(
        manifest_digest(&fresh, &demo_target),
        manifest_digest(&hk, "hk-demo")
    );

    // Only names push, and only ones this store has.
    let err = hk.fails(&["push", &reg.image_ref("nosuch", "v1")], 125);
    assert!(err.contains("does not exist locally"), "{err}");
}

/// A tar member with any name, even one the tar crate would refuse to write.
fn raw_member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A symlink member, as docker's old layout links a layer another image already holds.
fn raw_symlink(name: &str, target: &str) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    h.set_mode(0o777);
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A docker-archive of members (name, data), in this order, plus the tar end marker.
fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend(raw_member(name, data));
    }
    out.extend([0u8; 1024]);
    out
}

type Members = Vec<(&'static str, Vec<u8>)>;

/// The members of a valid one-layer docker-archive.
fn valid_members() -> Members {
    let layer = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hi\n")
        .finish();
    let image = TestImage::new(vec![TestLayer {
        tar: layer.clone(),
        compression: Compression::None,
    }]);
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["hostile:latest"],
        "Layers": ["layer/layer.tar"],
    }]);
    vec![
        ("config.json", image.config()),
        ("layer/layer.tar", layer),
        ("manifest.json", manifest.to_string().into_bytes()),
    ]
}

#[test]
fn hostile_tarballs_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hk = Hk::new();
    // The valid archive loads, so each failure below is the one thing changed.
    let valid = dir.path().join("valid.tar");
    std::fs::write(&valid, archive(&valid_members())).unwrap();
    assert_eq!(
        hk.ok(&["load", "-i", valid.to_str().unwrap()]),
        "Loaded image: hostile:latest\n"
    );
    hk.ok(&["rmi", "hostile"]);

    // docker's old layout: a second image whose layer is a symlink to the first's.
    let mut linked = archive(&valid_members());
    linked.truncate(linked.len() - 1024);
    let second = serde_json::json!([
        {"Config": "config.json", "RepoTags": ["hostile:latest"], "Layers": ["layer/layer.tar"]},
        {"Config": "config.json", "RepoTags": ["linked:latest"], "Layers": ["other/layer.tar"]},
    ]);
    linked.extend(raw_symlink("other/layer.tar", "../layer/layer.tar"));
    linked.extend(raw_member("manifest.json", second.to_string().as_bytes()));
    linked.extend([0u8; 1024]);
    let file = dir.path().join("linked.tar");
    std::fs::write(&file, &linked).unwrap();
    assert_eq!(
        hk.ok(&["load", "-i", file.to_str().unwrap()]),
        "Loaded image: hostile:latest\nLoaded image: linked:latest\n"
    );
    assert_eq!(image_id(&hk, "linked"), image_id(&hk, "hostile"));
    hk.ok(&["rmi", "-f", &image_id(&hk, "linked")]);
    assert_eq!(hk.ok(&["images", "-q"]), "");

    let demo = demo_image(dir.path());
    hk.ok(&["load", "-i", demo.to_str().unwrap()]);
    let images_before = hk.ok(&["images", "--no-trunc"]);
    let blobs_before = hk.store_files("blobs/sha256");

    let with = |f: &dyn Fn(&mut Members)| {
        let mut m = valid_members();
        f(&mut m);
        archive(&m)
    };
    let other_layer = TarBuilder::new().file("x", 0o644, b"other").finish();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "dotdot",
            with(&|m| m.insert(0, ("../evil", b"x".to_vec()))),
            vec!["../evil", "climbs out"],
        ),
        (
            "absolute",
            with(&|m| m.insert(0, ("/etc/evil", b"x".to_vec()))),
            vec!["/etc/evil", "absolute path"],
        ),
        (
            "missing-layer",
            with(&|m| m.retain(|(n, _)| *n != "layer/layer.tar")),
            vec!["layer/layer.tar", "missing from the archive"],
        ),
        (
            "wrong-layer",
            with(&|m| m[1].1 = other_layer.clone()),
            vec!["layer/layer.tar", "but the image config says"],
        ),
        (
            "huge-manifest",
            with(&|m| m[2].1 = vec![b' '; 5 << 20]),
            vec!["manifest.json", "more than"],
        ),
        (
            "escaping-link",
            {
                let mut a = archive(&valid_members());
                a.truncate(a.len() - 1024);
                a.extend(raw_symlink("layer/layer.tar", "../../etc/shadow"));
                a.extend([0u8; 1024]);
                a
            },
            vec!["layer/layer.tar", "leaves the archive"],
        ),
        (
            "not-an-image",
            archive(&[("hello.txt", b"hi".to_vec())]),
            vec!["not an image tarball"],
        ),
        ("truncated", with(&|_| {})[..1500].to_vec(), vec!["hostile"]),
    ];
    for (what, data, needles) in cases {
        let file = dir.path().join(format!("{what}.tar"));
        std::fs::write(&file, &data).unwrap();
        let err = hk.fails(&["load", "-i", file.to_str().unwrap()], 125);
        let needles: Vec<&str> = if what == "truncated" {
            vec![file.to_str().unwrap()]
        } else {
            needles
        };
        for n in needles.iter().chain([&file.to_str().unwrap()]) {
            assert!(
                err.contains(n),
                "{what}: error should mention {n:?}:\n{err}"
            );
        }
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line:\n{err}");
        assert_eq!(hk.ok(&["images", "--no-trunc"]), images_before, "{what}");
        assert_eq!(
            hk.store_files("blobs/sha256"),
            blobs_before,
            "{what}: blobs"
        );
        assert_no_temp_files(&hk);
    }

    // An OCI layout whose blob is not what its name says.
    let layer = b"not the layer".to_vec();
    let fake = Digest::of(b"something else");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": fake.to_string(), "size": layer.len(),
    }]});
    let blob_name = format!("blobs/sha256/{}", fake.hex());
    let data = archive(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index.to_string().into_bytes()),
        (&blob_name, layer),
    ]);
    let file = dir.path().join("oci-mismatch.tar");
    std::fs::write(&file, data).unwrap();
    let err = hk.fails(&["load", "-i", file.to_str().unwrap()], 125);
    assert!(
        err.contains("digest mismatch") && err.contains(&blob_name),
        "{err}"
    );
    assert_eq!(hk.ok(&["images", "--no-trunc"]), images_before);
    assert_no_temp_files(&hk);
    hk.assert_store_consistent();
}

/// Builds the demo image into `dir`.
fn demo_image(dir: &Path) -> PathBuf {
    let out = dir.join("hk-demo.tar");
    hk_tests::demo_image(&out);
    out
}

#[test]
fn demo_image_is_deterministic_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    hk_tests::demo_image(&a);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    hk_tests::demo_image(&b);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two builds differ"
    );
    let hk = Hk::new();
    assert_eq!(
        hk.ok(&["load", "-i", a.to_str().unwrap()]),
        "Loaded image: hk-demo:latest\n"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&hk.ok(&["image", "inspect", "hk-demo"])).unwrap();
    let cmd = inspect[0]["Config"]["Cmd"].to_string();
    assert!(cmd.contains("Hello from a microVM"), "{cmd}");
    let ext4 = PathBuf::from(hk.ok(&["image", "rootfs", "hk-demo"]).trim());
    assert_e2fsck_clean(&ext4);
    let cat = |path: &str| {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&ext4)
            .output()
            .unwrap();
        out.stdout
    };
    assert_eq!(cat("/bin/busybox"), std::fs::read("/bin/busybox").unwrap());
    assert!(String::from_utf8_lossy(&cat("/etc/passwd")).contains("user:x:1000:1000"));
    let stat = Command::new("debugfs")
        .args(["-R", "stat /tmp"])
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Mode:  01777"),
        "{}",
        String::from_utf8_lossy(&stat.stdout)
    );
    let sh = Command::new("debugfs")
        .args(["-R", "stat /bin/sh"])
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sh.stdout).contains("Fast link dest: \"busybox\""));
}

#[test]
fn push_uses_the_credentials_pull_uses() {
    const USER: &str = "pusher";
    const PASSWORD: &str = "p4ss";
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_image(dir.path());
    for reg in [
        Registry::start_with_htpasswd(USER, PASSWORD),
        Registry::start_with_token_server(USER, PASSWORD),
    ] {
        let hk = Hk::new();
        hk.ok(&["load", "-i", demo.to_str().unwrap()]);
        let name = reg.image_ref("private/demo", "1");
        hk.ok(&["tag", "hk-demo", &name]);
        let err = hk.fails(&["push", "-q", &name], 125);
        assert!(
            err.contains("private/demo:1")
                && err.contains(&format!("authentication required (hk login {})", reg.addr)),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let mut login = hk
            .cmd(&["login", "-u", USER, "--password-stdin", &reg.addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        login
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        assert!(login.wait().unwrap().success());
        hk.ok(&["push", "-q", &name]);
        let fresh = Hk::new();
        std::fs::create_dir_all(fresh.home.path().join(".docker")).unwrap();
        std::fs::copy(
            hk.home.path().join(".docker/config.json"),
            fresh.home.path().join(".docker/config.json"),
        )
        .unwrap();
        fresh.ok(&["pull", "-q", &name]);
        assert_eq!(image_id(&fresh, &name), image_id(&hk, "hk-demo"));
    }
}

/// `skopeo copy --all` of a two-platform image writes an index inside the OCI layout: the
/// host's platform is taken, as a pull takes it, under the archive's name.
#[test]
fn oci_layout_with_an_index_loads_the_hosts_platform() {
    let reg = Registry::start();
    let mut entries = Vec::new();
    let mut by_arch = std::collections::HashMap::new();
    for arch in ["arm64", "amd64"] {
        let mut img = TestImage::new(vec![TestLayer {
            tar: TarBuilder::new()
                .file("arch", 0o644, arch.as_bytes())
                .finish(),
            compression: Compression::Gzip,
        }]);
        img.architecture = arch.into();
        let (m, t) = img.manifest(&reg, "multi");
        let d = reg.push_manifest("multi", arch, &m, t);
        by_arch.insert(arch, d.clone());
        entries.push((d, m.len(), arch));
    }
    let entries: Vec<(Digest, usize, &str)> = entries;
    reg.push_index("multi", "v1", &entries);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("multi.tar");
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}", reg.image_ref("multi", "v1")),
        &format!("oci-archive:{}:multi/app:v1", file.display()),
    ]);
    let hk = Hk::new();
    assert_eq!(
        hk.ok(&["load", "-i", file.to_str().unwrap()]),
        "Loaded image: multi/app:v1\n"
    );
    let host = hk_image::Platform::host().architecture;
    assert_eq!(
        manifest_digest(&hk, "multi/app:v1"),
        by_arch[host.as_str()].to_string()
    );
    hk.ok(&["image", "rootfs", "multi/app:v1"]);
}
