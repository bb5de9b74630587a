//! `hk run -v`, `--mount`, `--tmpfs` and `hk volume` on a real KVM (the host's, or the
//! nested lab's), run by an unprivileged user in one session: a read-write bind share
//! whose files belong to that user, a `:ro` one the guest cannot write, a named volume that
//! outlives its containers and is seeded from the image, tmpfs mounts, a 1 GiB file both
//! ways, a tree of 10,000 files, a guest chown kept for the guest only, `hk inspect`'s
//! Mounts and `hk start` mounting again, a host change seen by a running container as its
//! consistency (the share's cache policy) says. Each test then checks its own case.

mod common;

use common::{base_layers, Compression, Hk, Registry, TarBuilder, TestImage, TestLayer};
use hk_tests::{scratch_dir, Case, UnprivilegedSession};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The unprivileged user the cases run as when the test itself is root (as in the lab).
const UID: u32 = 4243;

/// Each case: a name and the shell lines that run it (see `UnprivilegedSession`); `$R` is
/// the registry's repository prefix, `$U` the user's uid, `$X` a directory whose host
/// filesystem keeps user xattrs (the lab's tmpfs, Linux 6.1, does not).
const CASES: &[(&str, &str)] = &[
    (
        "bind-rw",
        r#"mkdir $T/h1; echo from-host >$T/h1/in.txt
$hk run --rm -v $T/h1:/data $R/base sh -c 'cat /data/in.txt; echo from-guest >/data/out.txt; mkdir /data/made; stat -c in-owner=%u /data/in.txt'
echo status=$?; cat $T/h1/out.txt; stat -c host-owner=%u:%g $T/h1/out.txt $T/h1/made
$hk run --rm -v $T/new/deep:/x $R/base true; test -d $T/new/deep && echo created"#,
    ),
    (
        "bind-ro",
        r#"$hk run --rm -v $T/h1:/data:ro --mount type=bind,src=$T/h1,dst=/m,readonly $R/base sh -c 'cat /data/in.txt; echo x >/data/no.txt; echo write=$?; echo y >/m/no.txt; echo write2=$?; grep -E " /(data|m) " /proc/mounts | cut -d" " -f2,4 | cut -d, -f1'
ls $T/h1"#,
    ),
    (
        "errors",
        r#"$hk run --rm -v rel/dir:/x $R/base true; echo s=$?
$hk run --rm --mount type=bind,src=$T/absent,dst=/x $R/base true; echo s=$?; test -e $T/absent || echo absent
$hk run --rm -v $T/h1:/d --tmpfs /d/ $R/base true; echo s=$?"#,
    ),
    (
        "volume",
        r#"$hk run --rm -v vol1:/v $R/base sh -c 'echo kept >/v/f.txt'
$hk volume ls -q; cat $HK_DATA_DIR/volumes/vol1/_data/f.txt
$hk run --rm -v vol1:/v:ro $R/base cat /v/f.txt
$hk run --name holder -v vol1:/v $R/base true; $hk volume rm vol1; echo in-use=$?
$hk rm holder >/dev/null; $hk volume rm vol1; echo rm=$?; $hk volume ls -q | wc -l
test -e $HK_DATA_DIR/volumes/vol1 || echo gone"#,
    ),
    (
        "seed",
        r#"$hk run --rm -v seedvol:/seed $R/seeded sh -c 'stat -c "%n %u:%g %a" /seed /seed/a.txt /seed/sub /seed/sub/b.txt; cat /seed/sub/b.txt; rm /seed/a.txt'
echo host:$(ls $X/volumes/seedvol/_data)
$hk run --rm -v seedvol:/seed $R/seeded sh -c 'echo again:$(ls /seed)'
mkdir $T/empty; $hk run --rm -v $T/empty:/seed $R/seeded sh -c 'echo bind:$(ls /seed)'
$hk run --rm -v nocopyvol:/seed:nocopy $R/seeded sh -c 'echo nocopy:$(ls /seed)'
$hk volume rm seedvol nocopyvol"#,
    ),
    (
        "tmpfs",
        r#"$hk run --rm --tmpfs /scratch:size=8m,mode=1777 --mount type=tmpfs,dst=/t2,tmpfs-size=4m,tmpfs-mode=700 $R/base sh -c 'grep -E " /(scratch|t2) " /proc/mounts; echo x >/scratch/f && cat /scratch/f; stat -c %a /scratch /t2'"#,
    ),
    (
        "inspect-start",
        r#"$hk run --name keep -v $T/h1:/data:ro -v vol3:/v --tmpfs /t $R/base sh -c 'grep -c virtiofs /proc/mounts; ls /data | wc -l'
$hk inspect keep | grep -E '"(Type|Source|Destination|RW)"' | tr -d ' ,'
$hk start -a keep; $hk rm keep >/dev/null; $hk volume rm vol3 >/dev/null"#,
    ),
    (
        "chown",
        r#"$hk run --rm -v $X/own:/x $R/base sh -c 'touch /x/c; chown 1234:5678 /x/c; stat -c %u:%g /x/c'
$hk run --rm -v $X/own:/x $R/base stat -c %u:%g /x/c; stat -c %u:%g $X/own/c"#,
    ),
    (
        "big",
        r#"[ -f $X/big/in.bin ] || { mkdir -p $X/big && cp $BIG $X/big/in.bin; }
$hk run --rm -v $X/big:/b $R/base sh -c 'sha256sum </b/in.bin | cut -d" " -f1; cp /b/in.bin /b/out.bin'
sha256sum <$X/big/out.bin | cut -d" " -f1; stat -c %s $X/big/out.bin; rm -f $X/big/out.bin"#,
    ),
    (
        "tree",
        r#"mkdir $T/tree; cd $T/tree; for d in $(seq 0 99); do mkdir d$d; (cd d$d; seq -f f%g 0 99 | xargs touch); done; echo hello >d7/f42; cd $T/work
$hk run --rm -e U=$U -v $T/tree:/tree $R/base sh -c 'find /tree -type f | wc -l; ls -lnR /tree | awk -v u=$U "/^-/ && \$3==u && \$4==u {n++} END {print n}"; stat -c %s /tree/d7/f42; mkdir /tree/g && cd /tree/g && seq 1 1000 | xargs touch && echo made'
find $T/tree -type f | wc -l"#,
    ),
    // A host change seen from a running container, per docker's consistency (the share's
    // cache policy), and a guest write seen on the host.
    (
        "live",
        r#"for m in default consistent cached; do
  d=$T/live-$m; mkdir $d; echo one >$d/f; head -c 16777216 /dev/zero >$d/big
  o=; [ $m = default ] || o=:$m
  $hk run -d --name live-$m -v $d:/l$o $R/base sleep 1000 >/dev/null
  # The guest's page cache, in MiB, after reading a 16 MiB file and after opening it again.
  pages=$($hk exec live-$m sh -c 'c() { sed -n "s/^Cached: *\([0-9]*\) kB/\1/p" /proc/meminfo; }
    a=$(c); cat /l/big >/dev/null; b=$(c); head -c 1 /l/big >/dev/null; e=$(c)
    echo $(((b - a) / 1024)):$(((e - a) / 1024))')
  first=$($hk exec live-$m cat /l/f)
  echo two >$d/f; echo more >>$d/f
  second=$($hk exec live-$m head -n 1 /l/f)
  size=$($hk exec live-$m stat -c %s /l/f)
  $hk exec live-$m sh -c 'echo from-guest >/l/g'
  echo "$m: $first $second size=$size host-sees=$(cat $d/g)"
  echo "$m-pages: $pages"
  $hk rm -f live-$m >/dev/null
done"#,
    ),
    (
        "prune",
        r#"$hk volume create --label team=a pv1; $hk volume create pv1
$hk volume inspect pv1 | grep -A1 '"Labels"' | tail -1 | tr -d ' '
$hk volume ls --format json | grep -c '"Name":"pv1"'
$hk volume inspect nope >/dev/null; echo missing=$?
$hk volume create | wc -c; $hk run --name pin -v pinned:/p $R/base true
$hk volume prune -f | grep -v '^[0-9a-f]\{64\}$'; $hk volume ls -q
$hk rm pin >/dev/null; $hk volume prune -f >/dev/null; $hk volume ls -q | wc -l"#,
    ),
];

/// Nothing may be left: no container, no volume, no hk process.
const LEFTOVER: (&str, &str) = (
    "leftover",
    "ls -A $HK_DATA_DIR/containers | grep -v '^names$'; ls -A $X/volumes; pgrep -u $(id -u) -x hk; echo end",
);

fn lab() -> &'static HashMap<String, Case> {
    static LAB: OnceLock<HashMap<String, Case>> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("volumes");
        let registry = Registry::start();
        let hk = Hk::new();
        let data = dir.join("data");
        let seed = TarBuilder::new()
            .owned("seed", 0o775, (1000, 10), None)
            .owned("seed/a.txt", 0o640, (1000, 1000), Some(&b"alpha\n"[..]))
            .owned("seed/sub", 0o750, (1000, 1000), None)
            .owned("seed/sub/b.txt", 0o600, (0, 0), Some(&b"beta\n"[..]))
            .finish();
        for (name, extra) in [("base", None), ("seeded", Some(seed))] {
            let mut layers = base_layers();
            layers.extend(extra.map(|tar| TestLayer {
                tar,
                compression: Compression::Gzip,
            }));
            let mut image = TestImage::new(layers);
            image.container_config = json!({
                "Cmd": ["/bin/sh"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            });
            registry.push_image(&format!("t/{name}"), "latest", &image);
            let out = hk
                .cmd(&[
                    "pull",
                    "-q",
                    &registry.image_ref(&format!("t/{name}"), "latest"),
                ])
                .env("HK_DATA_DIR", &data)
                .output()
                .unwrap();
            assert!(out.status.success(), "pull {name}: {out:?}");
        }
        let mut session = UnprivilegedSession::new(dir.clone(), UID);
        // Volumes and the chown case live where user xattrs are kept: the scratch dir (the
        // host's disk, over 9p in the lab), bind-mounted into the private dir so the user
        // needs no access to the checkout's directories.
        // The lab's init leaves the kernel's default limits on open files (1024 soft, 4096
        // hard); a login under systemd has a hard limit of 524288. The hard one is raised
        // as root here; hk must raise the soft one itself for the 10,000-file tree.
        // The 1 GiB file is made here, at the host's speed: random data made and hashed
        // under the lab's emulation took minutes. The guest hashes it and copies it back.
        let big = dir.join("xattrs/big/in.bin");
        write_big_file(&big);
        session.root_setup = format!(
            "ulimit -Hn 524288\n\
             mkdir -p {x} $T/xattrs && chown {UID}:{UID} {x} {x}/big {big} && mount --bind {x} $T/xattrs",
            x = dir.join("xattrs").display(),
            big = big.display(),
        );
        session.prelude = format!(
            "R={}/t U=$(id -u) BIG={}\nif mountpoint -q $T/xattrs; then X=$T/xattrs; else X=$T/data; fi\n\
             mkdir -p $X/own $X/volumes\n\
             [ $X = $T/data ] || ln -s $X/volumes $HK_DATA_DIR/volumes\nexport R U X BIG\n",
            registry.addr,
            big.display(),
        );
        session.run(
            Path::new(env!("CARGO_BIN_EXE_hk")),
            CASES,
            LEFTOVER,
            Duration::from_secs(1800),
        )
    })
}

fn case(name: &str) -> &'static Case {
    &lab()[name]
}

/// The SHA-256 of the 1 GiB file the "big" case copies, as hex.
static BIG_SHA256: OnceLock<String> = OnceLock::new();

/// Writes 1 GiB of xorshift noise (incompressible, every block different) and keeps its
/// SHA-256 in [`BIG_SHA256`].
fn write_big_file(path: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum: {out:?}");
    let sum = String::from_utf8_lossy(&out.stdout)[..64].to_string();
    BIG_SHA256.get_or_init(|| sum);
}

fn lines(c: &Case) -> Vec<&str> {
    c.out.lines().map(str::trim).collect()
}

fn uid_line(prefix: &str) -> String {
    let c = case("bind-rw");
    lines(c)
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line: {c:?}"))
        .to_string()
}

#[test]
fn a_bind_share_is_written_by_the_guest_and_owned_by_the_user_on_the_host() {
    let c = case("bind-rw");
    assert_eq!(c.status, 0, "{c:?}");
    let l = lines(c);
    assert_eq!(l[0], "from-host", "{c:?}");
    assert!(l.contains(&"status=0"), "{c:?}");
    assert!(l.contains(&"from-guest"), "{c:?}");
    // The user running hk (uid != 0 in the lab) owns what guest root made, and the guest
    // sees the host user's files as theirs.
    let host = uid_line("host-owner=");
    assert!(!host.starts_with("0:"), "{c:?}");
    assert_eq!(
        host.split(':').next(),
        Some(uid_line("in-owner=").as_str()),
        "{c:?}"
    );
    assert_eq!(
        l.last(),
        Some(&"created"),
        "-v creates a missing host dir: {c:?}"
    );
}

#[test]
fn a_read_only_share_refuses_writes_in_the_guest() {
    let c = case("bind-ro");
    let l = lines(c);
    assert_eq!(
        l[..5],
        ["from-host", "write=1", "write2=1", "/data ro", "/m ro"],
        "{c:?}"
    );
    assert!(c.err.contains("Read-only file system"), "{c:?}");
    assert!(!c.out.contains("no.txt"), "{c:?}");
}

#[test]
fn docker_rules_refuse_relative_sources_missing_bind_sources_and_duplicates() {
    let c = case("errors");
    assert_eq!(lines(c), ["s=125", "s=125", "absent", "s=125"], "{c:?}");
    assert!(
        c.err
            .contains("If you intended to pass a host directory, use absolute path"),
        "{c:?}"
    );
    assert!(c.err.contains("bind source path does not exist"), "{c:?}");
    assert!(c.err.contains("Duplicate mount point: /d"), "{c:?}");
}

#[test]
fn a_named_volume_outlives_its_containers_and_is_removed_when_unused() {
    let c = case("volume");
    assert_eq!(
        lines(c),
        ["vol1", "kept", "kept", "in-use=1", "vol1", "rm=0", "0", "gone"],
        "{c:?}"
    );
    assert!(c.err.contains("volume is in use"), "{c:?}");
}

#[test]
fn a_new_volume_is_seeded_from_the_image_with_owners_and_modes_once() {
    let c = case("seed");
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(
        lines(c),
        [
            "/seed 1000:10 775",
            "/seed/a.txt 1000:1000 640",
            "/seed/sub 1000:1000 750",
            "/seed/sub/b.txt 0:0 600",
            "beta",
            "host:sub",
            "again:sub",
            "bind:",
            "nocopy:",
            "seedvol",
            "nocopyvol",
        ],
        "{c:?}"
    );
}

#[test]
fn tmpfs_mounts_take_size_and_mode() {
    let c = case("tmpfs");
    assert_eq!(c.status, 0, "{c:?}");
    let l = lines(c);
    let mount = |target: &str| {
        l.iter()
            .find(|m| m.starts_with(&format!("tmpfs {target} tmpfs rw,nosuid,nodev,noexec,")))
            .unwrap_or_else(|| panic!("no tmpfs on {target}: {c:?}"))
            .to_string()
    };
    assert!(mount("/scratch").contains("size=8192k"), "{c:?}");
    let t2 = mount("/t2");
    assert!(
        t2.contains("size=4096k") && t2.contains("mode=700"),
        "{c:?}"
    );
    assert_eq!(l[2..], ["x", "1777", "700"], "{c:?}");
}

#[test]
fn inspect_shows_mounts_and_start_mounts_them_again() {
    let c = case("inspect-start");
    assert_eq!(c.status, 0, "{c:?}");
    let l = lines(c);
    assert_eq!(l[..2], ["2", "3"], "two shares, three files: {c:?}");
    for want in [
        "\"Type\":\"bind\"",
        "\"Destination\":\"/data\"",
        "\"RW\":false",
        "\"Type\":\"volume\"",
        "\"Destination\":\"/v\"",
        "\"RW\":true",
        "\"Type\":\"tmpfs\"",
        "\"Destination\":\"/t\"",
    ] {
        assert!(l.contains(&want), "{want}: {c:?}");
    }
    assert!(
        l.iter().any(|s| s.ends_with("/volumes/vol3/_data\"")),
        "{c:?}"
    );
    assert_eq!(l[l.len() - 2..], ["2", "3"], "hk start: {c:?}");
}

#[test]
fn a_guest_chown_is_shown_to_the_guest_while_the_host_file_stays_the_users() {
    let c = case("chown");
    let l = lines(c);
    assert_eq!(l[..2], ["1234:5678", "1234:5678"], "{c:?}");
    assert_ne!(l[2], "1234:5678", "{c:?}");
    assert!(!l[2].starts_with("0:"), "{c:?}");
}

#[test]
fn a_1_gib_file_crosses_both_ways_with_the_same_sha256() {
    let c = case("big");
    assert_eq!(c.status, 0, "{c:?}");
    let l = lines(c);
    let want = BIG_SHA256.get().expect("the file was made");
    assert_eq!(l.len(), 3, "{c:?}");
    assert_eq!(l[0], want, "host to guest: {c:?}");
    assert_eq!(l[1], want, "guest to host: {c:?}");
    assert_eq!(l[2], "1073741824", "{c:?}");
}

#[test]
fn a_tree_of_10000_files_is_listed_and_statted_and_1000_more_reach_the_host() {
    let c = case("tree");
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(lines(c), ["10000", "10000", "6", "made", "11000"], "{c:?}");
}

#[test]
fn volume_create_is_idempotent_and_prune_keeps_volumes_in_use() {
    let c = case("prune");
    assert_eq!(
        lines(c),
        [
            "pv1",
            "pv1",
            "\"team\":\"a\"",
            "1",
            "missing=1",
            "65",
            "Deleted Volumes:",
            "pv1",
            "",
            "pinned",
            "0"
        ],
        "{c:?}"
    );
}

#[test]
fn nothing_is_left_behind() {
    let _ = case("prune");
    let c = case("leftover");
    assert_eq!(c.out, "end\n", "{c:?}");
}

#[test]
fn a_host_change_reaches_a_running_container_as_its_consistency_says() {
    let c = case("live");
    assert_eq!(c.status, 0, "{c:?}");
    let line = |m: &str| {
        c.out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{m}: ")))
            .unwrap_or_else(|| panic!("no {m} line: {c:?}"))
            .to_string()
    };
    // auto (no consistency): the next open reads the host's new data; the size may be
    // cached for up to a second, so it is not checked.
    let auto = line("default");
    assert!(auto.starts_with("one two size="), "{c:?}");
    assert!(auto.ends_with(" host-sees=from-guest"), "{c:?}");
    // consistent: nothing cached, the new size at once.
    assert_eq!(
        line("consistent"),
        "one two size=9 host-sees=from-guest",
        "{c:?}"
    );
    // cached: the guest may keep what it read (docker: "updates may show late"), so only
    // the first read and the write the host sees are certain: the guest's kernel drops
    // kept pages itself when an attribute reply shows a new size, on its own schedule.
    let cached = line("cached");
    assert!(cached.starts_with("one "), "{c:?}");
    assert!(cached.ends_with(" host-sees=from-guest"), "{c:?}");
    // What tells the policies apart: the guest's page cache after reading a 16 MiB file
    // and after opening it again (MiB). auto caches it and drops it at the next open;
    // always keeps it (KEEP_CACHE); never caches nothing (DIRECT_IO).
    let pages = |m: &str| -> (i64, i64) {
        let l = line(&format!("{m}-pages"));
        let (read, reopened) = l.split_once(':').unwrap_or_else(|| panic!("{c:?}"));
        (read.parse().unwrap(), reopened.parse().unwrap())
    };
    let (read, reopened) = pages("default");
    assert!(read >= 12 && reopened < 4, "auto: {read}:{reopened} {c:?}");
    let (read, reopened) = pages("cached");
    assert!(
        read >= 12 && reopened >= 12,
        "always: {read}:{reopened} {c:?}"
    );
    let (read, reopened) = pages("consistent");
    assert!(read < 4 && reopened < 4, "never: {read}:{reopened} {c:?}");
}
