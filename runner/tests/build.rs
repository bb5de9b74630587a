//! `hk build` on a real KVM (the host's, or the nested lab's), run by an unprivileged user
//! in one session, against `buildah bud` (Debian's, `--isolation chroot`, on the host) on
//! the same contexts from the same base image (`scripts/demo-image`, loaded offline into
//! both). For each compared Dockerfile the final root filesystems (paths, types, modes,
//! owners, sizes, content hashes, link targets) and the configs must be equal, except for
//! what buildah adds of its own (its version label, the empty /etc/hosts, /etc/hostname and
//! /etc/resolv.conf and /run it leaves in the image). SHELL comes after CMD in "meta":
//! buildah 1.28 runs a shell-form CMD with `/bin/sh -c` whatever SHELL says, where docker
//! (and hk) use the SHELL in force; its VOLUME names a directory the base has: buildah makes
//! a missing one in the image, BuildKit (and hk) record it in the config only.
//!
//! Then: here-document RUN, a cache mount that persists between builds, a secret that
//! reaches its steps and no layer, a rebuild that is all CACHED with the same image ID, a
//! touched COPY source that rebuilds from that COPY on, a failing RUN, --target.

mod common;

use hk_tests::{scratch_dir, Case, UnprivilegedSession};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const UID: u32 = 4244;

/// Each context: its name and files (path, content; a path ending in `@` is a symlink to
/// the content; a `.tar` path's content is a list of `name=content` lines made into a tar).
const CONTEXTS: &[(&str, &[(&str, &str)])] = &[
    (
        "meta",
        &[(
            "Dockerfile",
            r#"ARG BASE=hk-demo
FROM ${BASE} AS first
ARG GREETING=hello
ENV G1=$GREETING PATHX=/x
ENV G2="${G1} world" G3=${UNSET:-fallback} G4=${G1:+set}
LABEL a=1 "b c"="d e" g=$G1
EXPOSE 80 53/udp
VOLUME /home
USER user
WORKDIR /home/user/w
WORKDIR sub
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD true
ENTRYPOINT ["/bin/sh"]
CMD echo $G1
SHELL ["/bin/sh", "-ec"]

FROM first
ARG GREETING
ARG LOCAL=local-default
RUN echo "greet=${GREETING:-unset} g1=$G1 local=$LOCAL" > /tmp/out && cat /tmp/out
"#,
        )],
    ),
    (
        "runfs",
        &[(
            "Dockerfile",
            r#"FROM hk-demo
RUN mkdir -p /a/b && echo one > /a/b/f && ln /a/b/f /a/hard && ln -s b/f /a/sym && chmod 4755 /a/b/f && rm /etc/group && mkdir /opq && touch /opq/x /opq/z && mkfifo /a/fifo
RUN rm -rf /opq && mkdir /opq && echo y > /opq/y && echo two > /a/two && chown 1000:1000 /a/two && chmod 0640 /a/two
RUN rm /bin/vi && mkdir -p /root/deep/er && echo deep > /root/deep/er/file
"#,
        )],
    ),
    (
        "copy",
        &[
            (
                "Dockerfile",
                r#"FROM hk-demo
COPY a.txt /dst/
COPY dir /dirdst
COPY --chown=user:user a.txt /owned.txt
COPY --chmod=0600 a.txt /mode.txt
COPY *.log /logs/
COPY . /all/
WORKDIR /w
COPY a.txt rel.txt
ADD arch.tar /x/
"#,
            ),
            (".dockerignore", "*.log\n!keep.log\nsecret\n**/*.md\n"),
            ("a.txt", "alpha\n"),
            ("dir/sub/b.txt", "beta\n"),
            ("dir/c.md", "ignored markdown\n"),
            ("dir/d.txt", "delta\n"),
            ("ignored.log", "ignored\n"),
            ("keep.log", "kept\n"),
            ("secret/key", "do not copy\n"),
            ("link@", "a.txt"),
            ("arch.tar", "t/one=1\nt/two/three=3\n"),
        ],
    ),
    (
        "stages",
        &[(
            "Dockerfile",
            r#"FROM hk-demo AS build
RUN mkdir /out && echo built > /out/artifact && ln -s artifact /out/link

FROM hk-demo AS unused
RUN exit 1

FROM hk-demo
COPY --from=build /out /app
COPY --from=build /out/artifact /single
"#,
        )],
    ),
    (
        "heredoc",
        &[(
            "Dockerfile",
            "FROM hk-demo\nRUN <<EOF\nset -e\necho heredoc > /heredoc.txt\nchown 1000:1000 /heredoc.txt\nEOF\nRUN cat <<EOT > /cat.txt\nin cat\nEOT\nCMD cat /heredoc.txt /cat.txt\n",
        )],
    ),
    (
        "cachemount",
        &[(
            "Dockerfile",
            "FROM hk-demo\nARG N\nRUN --mount=type=cache,target=/cache echo run-$N >> /cache/log && cat /cache/log && echo lines=$(wc -l < /cache/log)\n",
        )],
    ),
    (
        "secret",
        &[(
            "Dockerfile",
            "FROM hk-demo\nRUN --mount=type=secret,id=tok echo \"len=$(wc -c < /run/secrets/tok) mode=$(stat -c %a:%u:%g /run/secrets/tok)\"\nRUN --mount=type=secret,id=tok,target=/etc/tokfile,mode=0440,uid=1000,gid=1000 echo \"custom=$(cat /etc/tokfile) mode=$(stat -c %a:%u:%g /etc/tokfile)\"\n",
        )],
    ),
    (
        "fail",
        &[(
            "Dockerfile",
            "FROM hk-demo\nRUN echo before-fail && exit 3\nRUN echo never\n",
        )],
    ),
];

const CASES: &[(&str, &str)] = &[
    (
        "compared",
        r#"mkdir -p keep
for c in meta runfs copy stages; do
  $hk build -t c-$c ctx/$c >$c.build.log 2>&1; echo "$c=$?"
  $hk save -o keep/$c.tar c-$c; echo "save-$c=$?"
done
cat *.build.log >&2"#,
    ),
    (
        "heredoc",
        r#"$hk build -q -t c-heredoc ctx/heredoc >/dev/null; echo build=$?
$hk run --rm c-heredoc; $hk run --rm c-heredoc stat -c %u:%g /heredoc.txt"#,
    ),
    (
        "cachemount",
        r#"$hk build --build-arg N=1 -t c-cm ctx/cachemount 2>&1 | grep -E 'run-|lines='
$hk build --build-arg N=2 -t c-cm ctx/cachemount 2>&1 | grep -E 'run-|lines='"#,
    ),
    (
        "rebuild",
        r#"st() { awk '/^#[0-9]+ \[/ {n[$1]=substr($0, length($1)+2)} /^#[0-9]+ (CACHED|DONE)/ {if ($1 in n) print n[$1] " " $2}' | grep -v '\] FROM '; }
id1=$($hk build -q ctx/copy)
$hk build ctx/copy 2>&1 | st >all.txt
echo "steps=$(wc -l <all.txt) cached=$(grep -c ' CACHED$' all.txt)"
id2=$($hk build -q ctx/copy); [ "$id1" = "$id2" ] && echo same-id
echo changed > ctx/copy/dir/sub/b.txt
$hk build ctx/copy 2>&1 | st
$hk run --rm $($hk build -q ctx/copy) cat /dirdst/sub/b.txt"#,
    ),
    (
        "secret",
        r#"printf s3cr3t > tok.txt
$hk build --secret id=tok,src=tok.txt -t c-secret ctx/secret 2>&1 | grep -E '^#[0-9]+ [0-9.]+ ' | grep -oE '(len|custom)=.*'
$hk run --rm c-secret sh -c 'ls /run/secrets /etc/tokfile 2>/dev/null | wc -l; ls -d /run 2>/dev/null || echo no-run'
$hk save c-secret | grep -c s3cr3t"#,
    ),
    (
        "fail",
        r#"$hk build -t c-fail ctx/fail; echo status=$?
$hk images -q c-fail | wc -l"#,
    ),
    (
        "target",
        r#"$hk build -q --target build -t c-target ctx/stages >/dev/null; echo status=$?
$hk run --rm c-target cat /out/artifact
$hk build --target nosuch ctx/stages; echo nosuch=$?"#,
    ),
];

const LEFTOVER: (&str, &str) = (
    "leftover",
    "ls -A $HK_DATA_DIR/containers 2>/dev/null | grep -v '^names$'; ls -A $HK_DATA_DIR/build/containers 2>/dev/null; pgrep -u $(id -u) -x hk; echo end",
);

struct Results {
    cases: HashMap<String, Case>,
    dir: PathBuf,
}

fn lab() -> &'static Results {
    static LAB: OnceLock<Results> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("build");
        let demo = dir.join("demo.tar");
        hk_tests::demo_image(&demo);
        // The base goes into the store on the host: loading needs no VM.
        let out = Command::new(env!("CARGO_BIN_EXE_hk"))
            .args(["load", "-q", "-i"])
            .arg(&demo)
            .env("HK_DATA_DIR", dir.join("data"))
            .output()
            .expect("run hk load");
        assert!(out.status.success(), "hk load: {out:?}");
        let ctx = dir.join("ctx");
        make_contexts(&ctx);
        let packed = dir.join("contexts.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&packed).unwrap());
        tar.follow_symlinks(false);
        tar.append_dir_all("ctx", &ctx).unwrap();
        tar.finish().unwrap();
        let mut session = UnprivilegedSession::new(dir.clone(), UID);
        session.prelude = "tar xf contexts.tar\n".into();
        let cases = session.run(
            Path::new(env!("CARGO_BIN_EXE_hk")),
            CASES,
            LEFTOVER,
            Duration::from_secs(2400),
        );
        Results { cases, dir }
    })
}

fn case(name: &str) -> &'static Case {
    &lab().cases[name]
}

fn report(c: &Case) -> String {
    format!(
        "status {}\n--- out\n{}\n--- err\n{}",
        c.status, c.out, c.err
    )
}

fn make_contexts(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for (name, files) in CONTEXTS {
        let dir = root.join(name);
        for (path, content) in *files {
            if let Some(link) = path.strip_suffix('@') {
                std::fs::create_dir_all(&dir).unwrap();
                std::os::unix::fs::symlink(content, dir.join(link)).unwrap();
                continue;
            }
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if path.ends_with(".tar") {
                let mut t = common::TarBuilder::new();
                for line in content.lines() {
                    let (n, c) = line.split_once('=').unwrap();
                    t = t.file(n, 0o644, c.as_bytes());
                }
                std::fs::write(&p, t.finish()).unwrap();
            } else {
                std::fs::write(&p, content).unwrap();
            }
        }
    }
}

/// buildah's result for a context, as a docker-archive, built on the host from the same
/// base. Its storage lives in the test's scratch directory.
fn buildah(name: &str) -> PathBuf {
    // One buildah at a time over one storage, contexts made once (the tests run in threads).
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = BASE.get_or_init(|| scratch_dir("build-buildah")).clone();
    let args = |extra: &[&str]| {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(extra);
        c
    };
    if !dir.join("ctx").exists() {
        let demo = dir.join("demo.tar");
        hk_tests::demo_image(&demo);
        let out = args(&["pull", "-q"])
            .arg(format!("docker-archive:{}", demo.display()))
            .output()
            .expect("run buildah");
        assert!(out.status.success(), "buildah pull: {out:?}");
        make_contexts(&dir.join("ctx"));
    }
    let ctx = dir.join("ctx");
    let out = args(&[
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--format",
        "docker",
        "-t",
    ])
    .arg(format!("b-{name}"))
    .arg(ctx.join(name))
    .output()
    .expect("run buildah bud");
    assert!(out.status.success(), "buildah bud {name}: {out:?}");
    let archive = dir.join(format!("{name}.tar"));
    let _ = std::fs::remove_file(&archive);
    let out = args(&["push", "-q"])
        .arg(format!("b-{name}"))
        .arg(format!(
            "docker-archive:{}:b-{name}:latest",
            archive.display()
        ))
        .output()
        .expect("run buildah push");
    assert!(out.status.success(), "buildah push {name}: {out:?}");
    archive
}

/// One path of a flattened root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    /// Content hash of a file, target of a symlink.
    what: String,
}

/// A docker-archive's image: its config and its layers applied in order, whiteouts and
/// all. Hard links become the file they name (which path holds the "first" copy is a
/// writer's choice, not the image's meaning).
fn flatten(archive: &Path) -> (Value, BTreeMap<String, Node>) {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut t = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let m = &manifest[0];
    let config: Value = serde_json::from_slice(&files[m["Config"].as_str().unwrap()]).unwrap();
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for layer in m["Layers"].as_array().unwrap() {
        let raw = &files[layer.as_str().unwrap()];
        let data = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut d = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut d)
                .unwrap();
            d
        } else {
            raw.clone()
        };
        let mut lt = tar::Archive::new(&data[..]);
        for e in lt.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            let (parent, base) = path.rsplit_once('/').unwrap_or(("", &path));
            let under = |p: &str, dir: &str| dir.is_empty() || p.starts_with(&format!("{dir}/"));
            if base == ".wh..wh..opq" {
                tree.retain(|p, _| !under(p, parent) || p == parent);
                continue;
            }
            if let Some(gone) = base.strip_prefix(".wh.") {
                let gone = if parent.is_empty() {
                    gone.to_string()
                } else {
                    format!("{parent}/{gone}")
                };
                tree.retain(|p, _| *p != gone && !under(p, &gone));
                continue;
            }
            let h = e.header().clone();
            let kind = h.entry_type();
            let mut node = Node {
                kind: match kind {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Fifo => 'p',
                    tar::EntryType::Char => 'c',
                    tar::EntryType::Block => 'b',
                    _ => 'f',
                },
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                size: 0,
                what: String::new(),
            };
            if kind == tar::EntryType::Link {
                let target = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let target = target.trim_start_matches("./").to_string();
                let t = tree
                    .get(&target)
                    .unwrap_or_else(|| panic!("{path}: hard link to missing {target}"))
                    .clone();
                node.size = t.size;
                node.what = t.what;
            } else if kind == tar::EntryType::Symlink {
                node.what = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
            } else if node.kind == 'f' {
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                node.size = d.len() as u64;
                node.what = format!("{:x}", Sha256Hex(&d));
            }
            if node.kind != 'd' {
                // A file replacing a directory replaces what was under it.
                tree.retain(|p, _| !under(p, &path));
            }
            tree.insert(path, node);
        }
    }
    // What buildah leaves in every image it builds and BuildKit does not.
    for p in ["etc/hosts", "etc/hostname", "etc/resolv.conf", "run"] {
        tree.remove(p);
    }
    (config, tree)
}

/// A tiny SHA-256 formatter over the tests' own dependency set.
struct Sha256Hex<'a>(&'a [u8]);

impl std::fmt::LowerHex for Sha256Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = ring::digest::digest(&ring::digest::SHA256, self.0);
        for b in d.as_ref() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The config fields a Dockerfile decides, without buildah's own label.
fn config_view(config: &Value) -> Value {
    let c = &config["config"];
    let mut out = serde_json::Map::new();
    for k in [
        "Env",
        "Entrypoint",
        "Cmd",
        "User",
        "WorkingDir",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "OnBuild",
        "Shell",
    ] {
        let v = c.get(k).cloned().unwrap_or(Value::Null);
        let empty = v.is_null()
            || v.as_str() == Some("")
            || v.as_array().is_some_and(|a| a.is_empty())
            || v.as_object().is_some_and(|o| o.is_empty());
        if !empty {
            out.insert(k.into(), v);
        }
    }
    let mut labels = c["Labels"].as_object().cloned().unwrap_or_default();
    labels.retain(|k, _| !k.starts_with("io.buildah."));
    if !labels.is_empty() {
        out.insert("Labels".into(), Value::Object(labels));
    }
    Value::Object(out)
}

fn compare(name: &str) {
    let c = case("compared");
    assert!(
        c.out.contains(&format!("{name}=0")) && c.out.contains(&format!("save-{name}=0")),
        "hk build {name} failed\n{}",
        report(c)
    );
    let (hk_config, hk_tree) = flatten(&lab().dir.join(format!("keep/{name}.tar")));
    let (b_config, b_tree) = flatten(&buildah(name));
    assert_eq!(
        config_view(&hk_config),
        config_view(&b_config),
        "{name}: configs differ (left hk, right buildah)"
    );
    let mut diffs = Vec::new();
    for (p, n) in &hk_tree {
        match b_tree.get(p) {
            None => diffs.push(format!("only in hk: {p} {n:?}")),
            Some(m) if m != n => diffs.push(format!("{p}: hk {n:?}, buildah {m:?}")),
            _ => {}
        }
    }
    for (p, m) in &b_tree {
        if !hk_tree.contains_key(p) {
            diffs.push(format!("only in buildah: {p} {m:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{name}: root filesystems differ:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn metadata_arg_scope_and_env_match_buildah() {
    compare("meta");
    let c = case("compared");
    assert!(
        c.err.contains("greet=unset g1=hello local=local-default"),
        "{}",
        report(c)
    );
}

#[test]
fn run_steps_whiteouts_links_and_owners_match_buildah() {
    compare("runfs");
}

#[test]
fn copy_add_globs_chown_chmod_and_dockerignore_match_buildah() {
    compare("copy");
}

#[test]
fn multi_stage_copy_from_matches_buildah_and_skips_unused_stages() {
    compare("stages");
}

#[test]
fn heredoc_run_runs_the_document() {
    let c = case("heredoc");
    assert_eq!(
        c.out,
        "build=0\nheredoc\nin cat\n1000:1000\n",
        "{}",
        report(c)
    );
}

#[test]
fn a_cache_mount_persists_between_builds() {
    let c = case("cachemount");
    let lines: Vec<&str> = c.out.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with("lines=1"))
            && lines.iter().any(|l| l.ends_with("lines=2")),
        "{}",
        report(c)
    );
    assert!(
        c.out.contains("run-1") && c.out.contains("run-2"),
        "{}",
        report(c)
    );
}

#[test]
fn a_rebuild_is_all_cached_and_a_touched_source_rebuilds_from_its_copy() {
    let c = case("rebuild");
    let out: Vec<&str> = c.out.lines().collect();
    assert_eq!(out.first(), Some(&"steps=9 cached=9"), "{}", report(c));
    assert_eq!(out.get(1), Some(&"same-id"), "{}", report(c));
    let steps: Vec<&&str> = out.iter().filter(|l| l.starts_with('[')).collect();
    assert_eq!(steps.len(), 9, "{}", report(c));
    assert!(
        steps[0].contains("COPY a.txt /dst/") && steps[0].ends_with("CACHED"),
        "{}",
        report(c)
    );
    for s in &steps[1..] {
        assert!(s.ends_with(" DONE"), "{}", report(c));
    }
    assert_eq!(out.last(), Some(&"changed"), "{}", report(c));
}

#[test]
fn a_secret_reaches_its_step_only_and_no_layer() {
    let c = case("secret");
    assert_eq!(
        c.out,
        "len=6 mode=400:0:0\ncustom=s3cr3t mode=440:1000:1000\n0\nno-run\n0\n",
        "{}",
        report(c)
    );
}

#[test]
fn a_failing_run_exits_non_zero_with_its_output_and_tags_nothing() {
    let c = case("fail");
    assert!(c.out.contains("status=1"), "{}", report(c));
    assert!(c.out.ends_with("0\n"), "{}", report(c));
    assert!(c.err.contains("before-fail"), "{}", report(c));
    assert!(c.err.contains("exit code: 3"), "{}", report(c));
    assert!(!c.err.contains("never"), "{}", report(c));
}

#[test]
fn target_builds_only_what_the_stage_needs() {
    let c = case("target");
    assert!(c.out.starts_with("status=0\nbuilt\n"), "{}", report(c));
    assert!(c.out.contains("nosuch=125"), "{}", report(c));
}

#[test]
fn nothing_is_left_behind() {
    let c = &lab().cases["leftover"];
    assert_eq!(c.out, "end\n", "{}", report(c));
}
