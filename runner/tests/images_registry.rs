//! `hk pull`, `hk images`, `hk image inspect`, `hk rmi`, `hk image prune` against a real
//! registry on 127.0.0.1, with images these tests build and push themselves.

mod common;

use common::*;
use hk_image::Digest;
use serde_json::Value;

fn inspect(hk: &Hk, image: &str) -> Value {
    let out = hk.ok(&["image", "inspect", image]);
    let v: Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

#[test]
fn pull_busybox_list_inspect_and_remove() {
    let reg = Registry::start();
    let tar = busybox_tar();
    let image = TestImage::new(vec![TestLayer {
        tar: tar.clone(),
        compression: Compression::Gzip,
    }]);
    let manifest = reg.push_image("tools/busybox", "1.35", &image);
    let name = reg.image_ref("tools/busybox", "1.35");
    let hk = Hk::new();

    let out = hk.ok(&["pull", &name]);
    let layer = Digest::of(&compress(&tar, Compression::Gzip));
    assert!(
        out.contains(&format!("{}: Pull complete", layer.short())),
        "{out}"
    );
    assert!(out.contains(&format!("Digest: {manifest}")), "{out}");
    assert!(out.trim_end().ends_with(&name), "{out}");
    hk.assert_store_consistent();

    // A second pull finds the layer in the store and downloads nothing.
    let again = hk.ok(&["pull", &name]);
    assert!(
        again.contains(&format!("{}: Already exists", layer.short())),
        "{again}"
    );
    assert!(
        again.contains(&format!("Status: Image is up to date for {name}")),
        "{again}"
    );
    assert!(
        !again.contains("Building root filesystem"),
        "already built: {again}"
    );
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {name}")),
        "{out}"
    );
    assert!(out.contains("Building root filesystem"), "{out}");

    // A blob that came back short (power loss after the rename) is fetched again.
    let blob = hk.data.path().join("blobs/sha256").join(layer.hex());
    let full = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &full[..100]).unwrap();
    let third = hk.ok(&["pull", &name]);
    assert!(
        third.contains(&format!("{}: Pull complete", layer.short())),
        "{third}"
    );
    assert_eq!(std::fs::read(&blob).unwrap(), full);

    let missing = reg.image_ref("tools/busybox", "nope");
    let err = hk.fails(&["pull", &missing], 125);
    assert!(
        err.contains("tools/busybox:nope") && err.contains("manifest unknown"),
        "{err}"
    );

    let config_id = Digest::of(&image.config());
    let table = hk.ok(&["images"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], format!("{}/tools/busybox", reg.addr));
    assert_eq!(row[1], "1.35");
    assert_eq!(row[2], config_id.short());
    assert!(lines.next().is_none(), "{table}");

    let json = hk.ok(&["images", "--format", "json"]);
    let obj: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(obj["ID"], config_id.short());
    assert_eq!(obj["Tag"], "1.35");
    assert_eq!(obj["Digest"], manifest.to_string());
    assert_eq!(obj["CreatedAt"], "2024-05-01 12:00:00 +0000 UTC");

    let info = inspect(&hk, &name);
    assert_eq!(info["Id"], config_id.to_string());
    assert_eq!(info["RootFS"]["Layers"][0], Digest::of(&tar).to_string());
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Config"]["Cmd"][0], "/bin/sh");
    assert_eq!(
        info["RepoDigests"][0],
        format!("{}/tools/busybox@{manifest}", reg.addr)
    );
    // The image is found by ID prefix too.
    assert_eq!(
        inspect(&hk, &config_id.hex()[..8])["Id"],
        config_id.to_string()
    );

    let out = hk.ok(&["rmi", &name]);
    assert!(out.contains(&format!("Untagged: {name}")), "{out}");
    assert!(out.contains(&format!("Deleted: {config_id}")), "{out}");
    assert!(
        hk.store_files("blobs/sha256").is_empty(),
        "rmi left blobs behind"
    );
    assert!(hk.store_files("images").is_empty());
    let err = hk.fails(&["image", "inspect", &name], 1);
    assert!(err.contains("No such image"), "{err}");
    let err = hk.fails(&["rmi", &name], 1);
    assert!(err.contains("No such image"), "{err}");
}

#[test]
fn gzip_zstd_plain_layers_and_docker_schema2() {
    let reg = Registry::start();
    let layers = [Compression::Gzip, Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
        .map(|(i, c)| TestLayer {
            tar: TarBuilder::new()
                .file(
                    &format!("layer{i}.txt"),
                    0o644,
                    format!("layer {i}\n").as_bytes(),
                )
                .finish(),
            compression: c,
        })
        .collect();
    reg.push_image("mixed", "v1", &TestImage::new(layers));
    let mut docker = TestImage::new(vec![TestLayer {
        tar: busybox_tar(),
        compression: Compression::Gzip,
    }]);
    docker.docker = true;
    reg.push_image("docker", "v2", &docker);

    let hk = Hk::new();
    hk.ok(&["pull", "-q", &reg.image_ref("mixed", "v1")]);
    hk.ok(&["pull", "-q", &reg.image_ref("docker", "v2")]);
    let info = inspect(&hk, &reg.image_ref("mixed", "v1"));
    let types: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["MediaType"].as_str().unwrap())
        .collect();
    assert_eq!(types, [TAR_GZIP, TAR_ZSTD, TAR]);
    let info = inspect(&hk, &reg.image_ref("docker", "v2"));
    assert_eq!(info["Layers"][0]["MediaType"], DOCKER_TAR_GZIP);
    assert_eq!(info["Id"], Digest::of(&docker.config()).to_string());
    hk.assert_store_consistent();
}

#[test]
fn index_picks_the_host_platform_unless_told_otherwise() {
    let reg = Registry::start();
    let mut amd = TestImage::new(vec![TestLayer {
        tar: TarBuilder::new().file("arch", 0o644, b"amd64\n").finish(),
        compression: Compression::Gzip,
    }]);
    amd.architecture = "amd64".into();
    let mut arm = TestImage::new(vec![TestLayer {
        tar: TarBuilder::new().file("arch", 0o644, b"arm64\n").finish(),
        compression: Compression::Zstd,
    }]);
    arm.architecture = "arm64".into();
    let (amd_m, amd_t) = amd.manifest(&reg, "multi");
    let (arm_m, arm_t) = arm.manifest(&reg, "multi");
    let amd_d = reg.push_manifest("multi", "amd64-only", &amd_m, amd_t);
    let arm_d = reg.push_manifest("multi", "arm64-only", &arm_m, arm_t);
    let index = reg.push_index(
        "multi",
        "latest",
        &[
            (amd_d.clone(), amd_m.len(), "amd64"),
            (arm_d.clone(), arm_m.len(), "arm64"),
        ],
    );
    let name = reg.image_ref("multi", "latest");

    let hk = Hk::new();
    hk.ok(&["pull", &name]);
    let info = inspect(&hk, &name);
    let host = match std::env::consts::ARCH {
        "aarch64" => ("arm64", &arm_d),
        _ => ("amd64", &amd_d),
    };
    assert_eq!(info["Architecture"], host.0);
    assert_eq!(&info["Manifest"], &host.1.to_string());
    // RepoDigests name the index, which is what the tag resolves to on the registry.
    assert_eq!(
        info["RepoDigests"][0],
        format!("{}/multi@{index}", reg.addr)
    );

    let arm_name = reg.image_ref("multi", "latest");
    let hk_arm = Hk::new();
    hk_arm.ok(&["pull", "--platform", "linux/arm64", &arm_name]);
    let info = inspect(&hk_arm, &arm_name);
    assert_eq!(info["Architecture"], "arm64");
    assert_eq!(info["Manifest"], arm_d.to_string());

    let err = hk.fails(&["pull", "--platform", "linux/s390x", &name], 125);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    assert!(
        !err.contains("unknown"),
        "attestation entries are not offered: {err}"
    );

    // Docker's manifest list over schema2 manifests works the same way.
    let mut lists = Vec::new();
    for (arch, tar) in [("amd64", b"amd64\n"), ("arm64", b"arm64\n")] {
        let mut img = TestImage::new(vec![TestLayer {
            tar: TarBuilder::new().file("arch", 0o644, tar).finish(),
            compression: Compression::Gzip,
        }]);
        img.architecture = arch.into();
        img.docker = true;
        let (m, t) = img.manifest(&reg, "dockerlist");
        lists.push((reg.push_manifest("dockerlist", arch, &m, t), m.len(), arch));
    }
    reg.push_docker_list("dockerlist", "latest", &lists);
    let list_name = reg.image_ref("dockerlist", "latest");
    hk.ok(&["pull", "-q", "--platform", "linux/arm64", &list_name]);
    let info = inspect(&hk, &list_name);
    assert_eq!(info["Manifest"], lists[1].0.to_string());
    assert_eq!(info["Layers"][0]["MediaType"], DOCKER_TAR_GZIP);

    // Pull by digest of the index.
    let by_digest = format!("{}/multi@{index}", reg.addr);
    let hk2 = Hk::new();
    hk2.ok(&["pull", "-q", &by_digest]);
    assert_eq!(inspect(&hk2, &by_digest)["Architecture"], host.0);
    let json = hk2.ok(&["images", "--format", "json"]);
    let row: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["Tag"], "<none>");
    assert_eq!(row["Digest"], index.to_string());
}

#[test]
fn moved_tag_leaves_a_dangling_image_that_prune_removes() {
    let reg = Registry::start();
    let v1 = TestImage::new(vec![TestLayer {
        tar: TarBuilder::new().file("v", 0o644, b"1\n").finish(),
        compression: Compression::Gzip,
    }]);
    let v2 = TestImage::new(vec![TestLayer {
        tar: TarBuilder::new().file("v", 0o644, b"2\n").finish(),
        compression: Compression::Gzip,
    }]);
    let name = reg.image_ref("app", "latest");
    let hk = Hk::new();
    reg.push_image("app", "latest", &v1);
    hk.ok(&["pull", "-q", &name]);
    reg.push_image("app", "latest", &v2);
    hk.ok(&["pull", "-q", &name]);

    let table = hk.ok(&["images"]);
    assert!(
        table.contains("<none>"),
        "old image shows as dangling:\n{table}"
    );
    let old_id = Digest::of(&v1.config());
    assert!(table.contains(old_id.short()), "{table}");

    // Without -f, prune asks; with no answer on stdin it does nothing.
    let out = hk.ok(&["image", "prune"]);
    assert!(out.contains("Are you sure"), "{out}");
    assert!(hk.ok(&["images"]).contains(old_id.short()));

    let out = hk.ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {old_id}")), "{out}");
    let filtered = hk.ok(&["images", "-q", &format!("{}/app", reg.addr)]);
    assert_eq!(filtered.trim(), Digest::of(&v2.config()).short());
    let filtered = hk.ok(&["images", "-q", &format!("{}/app:other", reg.addr)]);
    assert_eq!(filtered.trim(), "");
    assert!(out.contains("Total reclaimed space:"), "{out}");
    let table = hk.ok(&["images"]);
    assert!(!table.contains(old_id.short()), "{table}");
    assert!(table.contains(Digest::of(&v2.config()).short()), "{table}");
    let v1_layer = Digest::of(&compress(&v1.layers[0].tar, Compression::Gzip));
    assert!(!hk
        .store_files("blobs/sha256")
        .contains(&v1_layer.hex().to_string()));
    hk.assert_store_consistent();

    // prune -a removes tagged images too.
    let out = hk.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains(&format!("untagged: {name}")), "{out}");
    assert!(hk.store_files("blobs/sha256").is_empty());
}

#[test]
fn rmi_by_id_of_an_image_in_two_repositories_needs_force() {
    let reg = Registry::start();
    let image = TestImage::new(vec![TestLayer {
        tar: TarBuilder::new().file("f", 0o644, b"x\n").finish(),
        compression: Compression::Gzip,
    }]);
    reg.push_image("one", "t", &image);
    reg.push_image("two", "t", &image);
    let hk = Hk::new();
    hk.ok(&["pull", "-q", &reg.image_ref("one", "t")]);
    hk.ok(&["pull", "-q", &reg.image_ref("two", "t")]);
    let id = Digest::of(&image.config());

    let err = hk.fails(&["rmi", id.short()], 1);
    assert!(err.contains("must be forced"), "{err}");
    assert_eq!(hk.store_files("images").len(), 1);

    // Untagging one name keeps the image for the other.
    let out = hk.ok(&["rmi", &reg.image_ref("one", "t")]);
    assert!(
        out.contains("Untagged:") && !out.contains("Deleted:"),
        "{out}"
    );
    assert_eq!(hk.store_files("images").len(), 1);
    hk.ok(&["pull", "-q", &reg.image_ref("one", "t")]);

    let out = hk.ok(&["rmi", "-f", id.short()]);
    assert_eq!(
        out.matches("Untagged:").count(),
        4,
        "two tags and two digests: {out}"
    );
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert!(hk.store_files("blobs/sha256").is_empty());
    assert!(hk.store_files("refs").is_empty());
}

#[test]
fn plain_http_only_where_the_user_allows_it() {
    let hk = Hk::new();
    let image = "registry.invalid:5000/app:1";
    let err = hk.fails(&["pull", "-q", image], 125);
    assert!(err.contains("https://registry.invalid:5000/v2/"), "{err}");
    let out = hk
        .cmd(&["pull", "-q", image])
        .env("HK_INSECURE_REGISTRIES", "other.invalid, registry.invalid")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http://registry.invalid:5000/v2/"), "{err}");
    let err = hk.fails(&["pull", "-q", "--tls-verify=false", image], 125);
    assert!(err.contains("http://registry.invalid:5000/v2/"), "{err}");
}
