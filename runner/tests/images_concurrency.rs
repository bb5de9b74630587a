//! Store robustness: two `hk pull` processes of one image at once, a pull killed with
//! SIGKILL in the middle of a layer followed by a pull that must simply work, files that
//! cannot be made durable, and records that cannot be read.

mod common;

use common::*;
use hk_image::Digest;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn big_image(layers: usize, size: usize) -> TestImage {
    TestImage::new(
        (0..layers)
            .map(|i| TestLayer {
                tar: TarBuilder::new()
                    .dir("data", 0o755)
                    .file(&format!("data/{i}"), 0o644, &noise(size, i as u64 + 100))
                    .finish(),
                compression: if i % 2 == 0 {
                    Compression::Gzip
                } else {
                    Compression::Zstd
                },
            })
            .collect(),
    )
}

#[test]
fn two_pulls_of_one_image_at_once_leave_one_consistent_image() {
    let reg = Registry::start();
    let image = big_image(3, 4 << 20);
    reg.push_image("big", "v1", &image);
    // Slow enough that both processes are downloading the same layers at the same time.
    let proxy = Throttle::start(&reg.addr, 4 << 20);
    let name = format!("{}/big:v1", proxy.addr);
    let hk = Hk::new();
    let children: Vec<_> = (0..2)
        .map(|_| {
            hk.cmd(&["pull", "-q", &name])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn hk pull")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    hk.assert_store_consistent();
    assert_eq!(hk.store_files("images").len(), 1);
    assert_eq!(hk.store_files("refs").len(), 1);
    let rootfs: Vec<String> = hk
        .store_files("rootfs")
        .into_iter()
        .filter(|f| f.ends_with(".ext4"))
        .collect();
    assert_eq!(rootfs.len(), 1, "{rootfs:?}");
    // 3 layers, config, manifest.
    assert_eq!(hk.store_files("blobs/sha256").len(), 5);
    assert!(
        hk.store_files("tmp").is_empty(),
        "{:?}",
        hk.store_files("tmp")
    );
    let json = hk.ok(&["images", "--format", "json"]);
    assert_eq!(json.lines().count(), 1, "{json}");
}

#[test]
fn pull_killed_mid_layer_leaves_nothing_a_new_pull_trips_over() {
    let reg = Registry::start();
    let image = big_image(1, 16 << 20);
    reg.push_image("slow", "v1", &image);
    let layer = Digest::of(&compress(&image.layers[0].tar, Compression::Gzip));
    let proxy = Throttle::start(&reg.addr, 1 << 20);
    let name = format!("{}/slow:v1", proxy.addr);
    let hk = Hk::new();

    let mut child = hk
        .cmd(&["pull", "-q", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hk pull");
    // Wait until part of the layer is on disk, then kill without warning.
    kill_when_tmp_has(
        &mut child,
        &hk,
        Duration::from_secs(60),
        Duration::from_millis(20),
        "the pull never wrote a partial layer",
        |e| e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false),
    );

    assert!(hk.store_files("refs").is_empty());
    assert!(hk.store_files("images").is_empty());
    assert!(
        !hk.store_files("blobs/sha256")
            .contains(&layer.hex().to_string()),
        "a partial layer must never sit under its digest"
    );
    assert!(
        !hk.store_files("tmp").is_empty(),
        "the killed pull's partial file is in tmp/"
    );
    hk.assert_store_consistent();

    proxy.rate.store(0, Ordering::Relaxed);
    hk.ok(&["pull", "-q", &name]);
    hk.assert_store_consistent();
    assert!(hk
        .store_files("blobs/sha256")
        .contains(&layer.hex().to_string()));
    assert_eq!(hk.store_files("images").len(), 1);

    // Garbage collection sweeps what the killed pull left in tmp/.
    hk.ok(&["image", "prune", "-f"]);
    assert!(
        hk.store_files("tmp").is_empty(),
        "{:?}",
        hk.store_files("tmp")
    );
    assert_eq!(
        hk.store_files("images").len(),
        1,
        "prune keeps tagged images"
    );
}

#[test]
fn pull_killed_while_building_the_root_filesystem() {
    let reg = Registry::start();
    let image = big_image(4, 32 << 20);
    reg.push_image("conv", "v1", &image);
    let name = reg.image_ref("conv", "v1");
    let hk = Hk::new();
    let mut child = hk
        .cmd(&["pull", "-q", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hk pull");
    // The conversion writes its image under tmp/ (hk's and the ext4 writer's temp names both
    // say "rootfs"): kill as soon as one appears.
    kill_when_tmp_has(
        &mut child,
        &hk,
        Duration::from_secs(120),
        Duration::from_millis(1),
        "the pull never started converting",
        |e| e.file_name().to_string_lossy().contains("rootfs"),
    );

    assert!(hk.store_files("refs").is_empty());
    assert!(hk.store_files("images").is_empty());
    assert!(!hk
        .store_files("rootfs")
        .iter()
        .any(|f| f.ends_with(".ext4")));
    hk.assert_store_consistent();

    hk.ok(&["pull", "-q", &name]);
    let ext4 = std::path::PathBuf::from(hk.ok(&["image", "rootfs", &name]).trim());
    assert_e2fsck_clean(&ext4);
    hk.ok(&["image", "prune", "-f"]);
    assert!(
        hk.store_files("tmp").is_empty(),
        "{:?}",
        hk.store_files("tmp")
    );
}

#[test]
fn layers_download_three_at_a_time() {
    let reg = Registry::start();
    reg.push_image("wide", "v1", &big_image(7, 2 << 20));
    // Slow enough (2 MiB/s per connection) that downloads overlap if they run concurrently.
    let proxy = Throttle::start(&reg.addr, 2 << 20);
    let hk = Hk::new();
    hk.ok(&[
        "pull",
        "-q",
        "--no-convert",
        &format!("{}/wide:v1", proxy.addr),
    ]);
    // One connection per download in flight (HTTP/1.1), docker's limit of three, plus at
    // most the two that fetched manifest and config and may still be closing (manifests
    // come through their own client): seven at once would mean no limit.
    let max = proxy.max_open.load(Ordering::SeqCst);
    assert!((3..=5).contains(&max), "{max} connections at once");
    assert_eq!(
        hk.store_files("blobs/sha256").len(),
        9,
        "7 layers, config, manifest"
    );
}

/// Makes `fsync` and `fdatasync` fail with EIO in the process `cmd` starts (a seccomp filter
/// installed between fork and exec), as a failing disk would.
fn failing_fsync(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use nix::libc;
    use std::os::unix::process::CommandExt;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        op(load, 4, 0, 0), // seccomp_data.arch
        op(jeq, AUDIT_ARCH, 1, 0),
        op(ret, libc::SECCOMP_RET_ALLOW, 0, 0),
        op(load, 0, 0, 0), // seccomp_data.nr
        op(jeq, libc::SYS_fsync as u32, 2, 0),
        op(jeq, libc::SYS_fdatasync as u32, 1, 0),
        op(ret, libc::SECCOMP_RET_ALLOW, 0, 0),
        op(ret, libc::SECCOMP_RET_ERRNO | libc::EIO as u32, 0, 0),
    ];
    // SAFETY: the closure only makes two prctl calls on memory it owns (no allocation),
    // which is what may run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Blobs and records are fsynced before they are renamed into place, so that a crash cannot
/// leave a name pointing at a record or blob that comes back empty. A pull whose fsync fails
/// must therefore fail and record nothing: neither a blob it fetched nor a new name.
#[test]
fn a_pull_that_cannot_make_its_files_durable_records_nothing() {
    let reg = Registry::start();
    let image = big_image(1, 64 << 10);
    reg.push_image("durable", "v1", &image);
    reg.push_image("durable", "v2", &image);
    let (v1, v2) = (
        reg.image_ref("durable", "v1"),
        reg.image_ref("durable", "v2"),
    );
    let hk = Hk::new();
    let no_fsync = |name: &str| {
        let out = failing_fsync(&mut hk.cmd(&["pull", "-q", "--no-convert", name]))
            .output()
            .expect("run hk pull");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("Input/output error"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };

    // Fresh store: the first blob cannot be made durable, so it never lands.
    no_fsync(&v1);
    assert!(hk.store_files("blobs/sha256").is_empty());
    assert!(hk.store_files("refs").is_empty());
    assert!(hk.store_files("images").is_empty());

    // Every blob already there: the new name's record cannot be made durable.
    hk.ok(&["pull", "-q", "--no-convert", &v1]);
    no_fsync(&v2);
    assert_eq!(hk.store_files("refs").len(), 1, "only v1 is named");
    hk.ok(&["pull", "-q", "--no-convert", &v2]);
    assert_eq!(hk.store_files("refs").len(), 2);
    hk.assert_store_consistent();
}

/// Puts three bad records in the store: one cut short, one that is not JSON, and one whose
/// content names another image than its file name does.
fn spoil_records(hk: &Hk, seed: u8) {
    let data = hk.data.path();
    let good = std::fs::read_dir(data.join("images"))
        .unwrap()
        .flatten()
        .next()
        .expect("an image record")
        .path();
    let name = |c: u8| format!("{}.json", format!("{c:02x}").repeat(32));
    std::fs::write(data.join("images").join(name(seed)), b"{\"manifest\": ").unwrap();
    std::fs::write(data.join("refs").join(format!("bad{seed}")), b"\0\0\0").unwrap();
    std::fs::copy(good, data.join("images").join(name(seed + 1))).unwrap();
}

/// One unreadable record must not take `images`, `rmi`, `prune` and garbage collection down
/// with it: each bad record is moved to quarantine/ with a one-line warning, and the command
/// goes on with the rest.
#[test]
fn unreadable_records_are_quarantined_with_a_warning() {
    let reg = Registry::start();
    reg.push_image("rec", "v1", &big_image(1, 64 << 10));
    reg.push_image("rec", "v2", &big_image(2, 64 << 10));
    let (v1, v2) = (reg.image_ref("rec", "v1"), reg.image_ref("rec", "v2"));
    let hk = Hk::new();
    hk.ok(&["pull", "-q", "--no-convert", &v1]);
    hk.ok(&["pull", "-q", "--no-convert", &v2]);

    let warned = |args: &[&str], n: usize| {
        let out = hk.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "hk {args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), n, "hk {args:?}: {err}");
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("WARNING: store record ") && l.contains("quarantine")),
            "{err}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    spoil_records(&hk, 0x10);
    let listed = warned(&["images"], 3);
    assert!(listed.contains("v1") && listed.contains("v2"), "{listed}");
    assert_eq!(hk.store_files("quarantine").len(), 3);
    assert_eq!(hk.store_files("images").len(), 2);
    assert_eq!(hk.store_files("refs").len(), 2);
    warned(&["images"], 0);

    spoil_records(&hk, 0x20);
    let removed = warned(&["rmi", &v1], 3);
    assert!(removed.contains("Deleted:"), "{removed}");
    spoil_records(&hk, 0x30);
    warned(&["image", "prune", "-a", "-f"], 3);
    assert!(hk.store_files("images").is_empty());
    assert!(hk.store_files("refs").is_empty());
    assert!(hk.store_files("blobs/sha256").is_empty());
    assert_eq!(hk.store_files("quarantine").len(), 9);
}

/// Garbage collection deletes a root filesystem by taking its exclusive flock, then
/// unlinking it. A caller that opened the file just before and then waits for its shared
/// lock must not come away holding the unlinked file under a path that names nothing: it
/// checks that the file it locked is still the one at the path, and builds it anew if not.
#[test]
fn a_root_filesystem_unlinked_while_its_lock_is_awaited_is_built_again() {
    use std::os::unix::fs::MetadataExt;
    let reg = Registry::start();
    reg.push_image("race", "v1", &big_image(1, 64 << 10));
    let name = reg.image_ref("race", "v1");
    let hk = Hk::new();
    hk.ok(&["pull", "-q", &name]);
    let path = std::path::PathBuf::from(hk.ok(&["image", "rootfs", &name]).trim());

    // Play garbage collection: hold the file's exclusive lock...
    let gc = std::fs::File::open(&path).unwrap();
    gc.lock().unwrap();
    let old_ino = gc.metadata().unwrap().ino();
    let child = hk
        .cmd(&["image", "rootfs", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ...until `hk image rootfs` waits for its shared lock on that very file...
    let waiter = format!(":{old_ino} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.contains(&waiter))
    {
        assert!(Instant::now() < deadline, "hk never waited for the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...then unlink it and let go.
    std::fs::remove_file(&path).unwrap();
    drop(gc);

    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path.to_str().unwrap()
    );
    // (The new build may get the old inode number back: only existence tells.)
    assert!(path.is_file(), "the printed root filesystem exists");
    assert_e2fsck_clean(&path);
}

/// SIGKILLs `child` (an `hk pull`) as soon as an entry of the store's `tmp/` matches `seen`,
/// polling every `poll`; fails if the pull ends first or `limit` passes.
fn kill_when_tmp_has(
    child: &mut std::process::Child,
    hk: &Hk,
    limit: Duration,
    poll: Duration,
    never: &str,
    seen: impl Fn(&std::fs::DirEntry) -> bool,
) {
    let tmp = hk.data.path().join("tmp");
    let deadline = Instant::now() + limit;
    loop {
        let found = std::fs::read_dir(&tmp)
            .map(|rd| rd.flatten().any(|e| seen(&e)))
            .unwrap_or(false);
        if found {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(poll);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}
