//! `hk gitlab config|prepare|run|cleanup` on a real KVM (the host's, or the nested lab's), run
//! by an unprivileged user in one session, with the cases playing gitlab-runner's part as its
//! custom executor documentation describes it: the job's variables as `CUSTOM_ENV_*`, the
//! exit-code variables, `config` then `prepare` (retried on a system failure, 3 attempts 3 s
//! apart), `run SCRIPT STAGE` for each stage in the runner's order with its branches after a
//! failure, and `cleanup` always. Each stage's script is shaped like the runner's generated
//! bash: a shebang, `set -eo pipefail`, `set +o noclobber`, the stage's commands through
//! `: | eval $'...'`, `exit 0`.
//!
//! The job image is busybox (the tests' base) plus Debian's real `git` and the shared
//! libraries it links (copied from this host, found by `ldd`), so `get_sources` runs `git init`,
//! `git fetch` and `git checkout` as the runner's script does, against a bare repository that
//! `git daemon` serves on the session's loopback (the guest reaches it as host.hk.internal).
//! gitlab-runner itself is not on this host: the helper shared with the VMs is a stand-in
//! script that archives and extracts the cache as tar files, at the paths the runner uses.

mod common;

use common::{base_layers, Compression, Hk, Registry, TarBuilder, TestImage, TestLayer};
use hk_tests::{scratch_dir, Case, UnprivilegedSession};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const UID: u32 = 4245;
/// The exit codes the "runner" passes: not the defaults, so hk must read them.
const BUILD_FAILURE: &str = "41";
const SYSTEM_FAILURE: &str = "42";
const PROJECT_DIR: &str = "/builds/group/project";

/// The runner's part, in the cases' prelude. `job NAME ID PROJECT SLOT IMAGE` runs one job
/// whose stage scripts are in `jobs/NAME/` (a missing file is a stage the job does not
/// have); each step prints `NAME STEP=STATUS` besides what the stages print (the job log).
const RUNNER: &str = r#"
job() (
    name=$1
    export CUSTOM_ENV_CI_JOB_ID=$2 CUSTOM_ENV_CI_PROJECT_ID=$3 CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID=$4
    export CUSTOM_ENV_CI_JOB_IMAGE=$5 CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=t0k3n
    export CUSTOM_ENV_CI_SERVER_HOST=gitlab.test CUSTOM_ENV_CI_PROJECT_PATH=group/project
    export BUILD_FAILURE_EXIT_CODE=41 SYSTEM_FAILURE_EXIT_CODE=42
    d=$T/work/jobs/$name
    export BUILD_EXIT_CODE_FILE=$d.exit-code
    $hk gitlab config >$d.config; echo "$name config=$?"
    n=0
    while :; do
        n=$((n + 1)); $hk gitlab prepare --helper $T/work/jobs/helper/gitlab-runner; p=$?
        if [ $p != $SYSTEM_FAILURE_EXIT_CODE ] || [ $n = 3 ]; then break; fi
        sleep 3
    done
    echo "$name prepare=$p attempts=$n"
    if [ $p = 0 ]; then
        r=0
        for s in prepare_script get_sources restore_cache download_artifacts step_script; do
            [ -f $d/$s ] || continue
            $hk gitlab run $d/$s $s; r=$?; echo "$name $s=$r"
            [ $r = 0 ] || break
        done
        if [ $r = 0 ]; then after="archive_cache upload_artifacts_on_success"
        else after="archive_cache_on_failure upload_artifacts_on_failure"; fi
        for s in after_script $after cleanup_file_variables; do
            [ -f $d/$s ] || continue
            $hk gitlab run $d/$s $s; echo "$name $s=$?"
        done
    fi
    $hk gitlab cleanup; echo "$name cleanup=$?"
)
# Exports one job's variables in this shell, for cases that drive the stages by hand.
vars() {
    export CUSTOM_ENV_CI_JOB_ID=$1 CUSTOM_ENV_CI_PROJECT_ID=$2 CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID=0
    export CUSTOM_ENV_CI_JOB_IMAGE=$IMG CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=t0k3n
    export CUSTOM_ENV_CI_SERVER_HOST=gitlab.test BUILD_FAILURE_EXIT_CODE=41 SYSTEM_FAILURE_EXIT_CODE=42
}
running() { $hk ps --format json | grep -c "\"Names\":\"gitlab-t0k3n-$1\""; }
"#;

const CASES: &[(&str, &str)] = &[
    ("first", "job first 101 1 0 $IMG; cat jobs/first.config"),
    ("second", "job second 102 1 0 $IMG"),
    (
        "fail",
        "job fail 103 4 0 $IMG; echo code-file=$(cat jobs/fail.exit-code)",
    ),
    ("noimage", "job noimage 104 4 0 127.0.0.1:1/no/such:image"),
    (
        "killed-prepare",
        r#"vars 105 5
$hk gitlab prepare >/dev/null & pid=$!
n=0; until [ -L $HK_DATA_DIR/containers/names/gitlab-t0k3n-p5-c0-j105 ] || [ $n -ge 600 ]; do sleep 0.1; n=$((n + 1)); done
sleep 1; kill -9 $pid; wait $pid; echo prepare-killed=$?
$hk gitlab cleanup; echo cleanup=$?
$hk gitlab cleanup; echo again=$?
$hk ps -a --format json | grep -c j105"#,
    ),
    (
        "term",
        r#"vars 106 6
$hk gitlab prepare >/dev/null; echo prepare=$?
$hk gitlab run jobs/term/step_script step_script >term.log 2>&1 & pid=$!
n=0; until grep -q started term.log || [ $n -ge 600 ]; do sleep 0.1; n=$((n + 1)); done
echo before=$(running p6-c0-j106)
kill -TERM $pid; wait $pid; echo run=$?
cat term.log
echo running=$(running p6-c0-j106)
$hk inspect gitlab-t0k3n-p6-c0-j106 | grep -E '"(Status|Running)"' | tr -d ' ,'
$hk gitlab run jobs/term/after_script after_script; echo after-stop=$?
$hk gitlab cleanup; echo cleanup=$?"#,
    ),
    (
        "concurrent",
        r#"job conc-a 107 2 0 $IMG >conc-a.log 2>&1 &
job conc-b 108 2 1 $IMG >conc-b.log 2>&1 &
wait
cat conc-a.log conc-b.log"#,
    ),
];

/// Nothing may be left: no container, no hk process; the projects' cache volumes stay.
const LEFTOVER: (&str, &str) = (
    "leftover",
    r#"kill $(cat $T/gitd.pid) 2>/dev/null
ls -A $HK_DATA_DIR/containers | grep -v '^names$'; ls -A $HK_DATA_DIR/containers/names
pgrep -u $(id -u) -x hk; $hk volume ls -q; echo end"#,
);

/// One job's stage scripts: (stage, the commands in it).
type Stages = &'static [(&'static str, &'static str)];

const GET_SOURCES: &str = r#"echo "Fetching changes..."
mkdir -p "/builds/group/project.tmp/git-template"
git config -f "/builds/group/project.tmp/git-template/config" fetch.recurseSubmodules false
git init "/builds/group/project" --template "/builds/group/project.tmp/git-template"
cd "/builds/group/project"
git remote add origin "$CI_REPOSITORY_URL"
echo "Created fresh repository."
git fetch origin --prune "+refs/heads/*:refs/remotes/origin/*" --depth 20 --quiet
echo "Checking out ${CI_COMMIT_SHA:0:8} as detached HEAD (ref is main)..."
git checkout -f -q "$CI_COMMIT_SHA"
git clean -ffdx
echo "Skipping Git submodules setup""#;

const RESTORE_CACHE: &str = r#"cd "/builds/group/project"
echo "Checking cache for default..."
gitlab-runner cache-extractor --file /cache/group/project/default/cache.zip --timeout 10"#;

const ARCHIVE_CACHE: &str = r#"cd "/builds/group/project"
echo "Creating cache default..."
gitlab-runner cache-archiver --file /cache/group/project/default/cache.zip --timeout 10 --path vendor/"#;

/// Each job: its name (its scripts' directory), its CI_JOB_ID and its stages.
const JOBS: &[(&str, u32, Stages)] = &[
    (
        "first",
        101,
        &[
            (
                "prepare_script",
                r#"echo "Running on $(hostname) via runner-host...""#,
            ),
            ("get_sources", GET_SOURCES),
            ("restore_cache", RESTORE_CACHE),
            (
                "step_script",
                r#"cd "/builds/group/project"
echo "$ cat README.md"
cat README.md
git log -1 --format=head=%H
mkdir -p vendor && echo "dep made by job $CI_JOB_ID" >vendor/dep.txt
echo left >/builds/left-by-$CI_JOB_ID; echo left >/tmp/left-by-$CI_JOB_ID
echo helper=$(command -v gitlab-runner)
echo shell=$(readlink /proc/$$/exe)"#,
            ),
            ("after_script", "echo after-script-ran"),
            ("archive_cache", ARCHIVE_CACHE),
            (
                "upload_artifacts_on_success",
                r#"echo "Uploading artifacts...""#,
            ),
            (
                "cleanup_file_variables",
                r#"rm -f "/builds/group/project.tmp/CI_SERVER_TLS_CA_FILE""#,
            ),
        ],
    ),
    (
        "second",
        102,
        &[
            ("get_sources", GET_SOURCES),
            ("restore_cache", RESTORE_CACHE),
            (
                "step_script",
                r#"cd "/builds/group/project"
echo "restored: $(cat vendor/dep.txt)"
echo "leftovers=$(ls /builds /tmp | grep -c left-by || true)"
if echo x >/opt/hk-gitlab/bin/gitlab-runner; then echo helper=writable; else echo helper=read-only; fi"#,
            ),
        ],
    ),
    (
        "fail",
        103,
        &[
            ("prepare_script", "echo preparing"),
            (
                "step_script",
                "echo before-fail\nsh -c 'exit 3'\necho not-reached",
            ),
            ("after_script", "echo after-script-ran"),
            ("archive_cache_on_failure", "echo archive-on-failure-ran"),
            ("upload_artifacts_on_failure", "echo upload-on-failure-ran"),
            ("cleanup_file_variables", "echo cleanup-files-ran"),
        ],
    ),
    ("noimage", 104, &[("step_script", "echo not-reached")]),
    (
        "term",
        106,
        &[
            ("step_script", "echo started\nsleep 1000\necho not-reached"),
            ("after_script", "echo after-script-ran"),
        ],
    ),
    ("conc-a", 107, &[("step_script", CONCURRENT)]),
    ("conc-b", 108, &[("step_script", CONCURRENT)]),
];

/// Each of two jobs of one project at once: its own file under /builds and a process of
/// its own; then it waits until the other job is there too (the project's cache volume is
/// the one thing they share, by design), and says what it can see of both.
const CONCURRENT: &str = r#"mkdir -p /builds && echo mine >/builds/mine-$CI_JOB_ID
sleep 9999$CI_JOB_ID >/dev/null 2>&1 &
touch /cache/here-$CI_JOB_ID
n=0
until [ "$(ls /cache | grep -c '^here-')" = 2 ] || [ $n -ge 600 ]; do sleep 0.5; n=$((n + 1)); done
echo "$CI_JOB_ID met: $(ls /cache | grep '^here-' | tr '\n' ' ')"
echo "$CI_JOB_ID builds: $(ls /builds | tr '\n' ' ')"
echo "$CI_JOB_ID sleeps: $(ps | grep -o 'sleep 9999[0-9][0-9]*' | sort -u | tr '\n' ' ')""#;

/// ANSI-C quoting, as the runner quotes the stage's commands for `eval $'...'`.
fn ansi_c(s: &str) -> String {
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A stage's script as GitLab Runner's bash shell generates it: the job's variables
/// exported, then the stage's commands, all through one `eval` whose stdin is empty (so a
/// command reading stdin cannot eat the rest of the script, which drivers feed on stdin).
fn stage_script(job_id: u32, commit: &str, commands: &str) -> String {
    let vars = [
        ("CI_JOB_ID", job_id.to_string()),
        ("CI_PROJECT_DIR", PROJECT_DIR.to_string()),
        ("CI_BUILDS_DIR", "/builds".into()),
        ("CI_SERVER", "yes".into()),
        ("CI_COMMIT_SHA", commit.to_string()),
        (
            "CI_REPOSITORY_URL",
            "git://host.hk.internal/project.git".into(),
        ),
        ("GIT_STRATEGY", "fetch".into()),
    ];
    let mut body = String::new();
    for (k, v) in vars {
        body.push_str(&format!("export {k}={}\n", ansi_c(&v)));
    }
    body.push_str(commands);
    body.push('\n');
    format!(
        "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n: | eval {}\nexit 0\n",
        ansi_c(&body)
    )
}

/// gitlab-runner's cache commands, as far as the jobs use them: a tar file at the runner's
/// path under the cache dir, made whole by a rename.
const HELPER: &str = r#"#!/bin/sh
cmd=$1; shift; file=; paths=
while [ $# -gt 0 ]; do
    case $1 in --file) file=$2; shift ;; --path) paths="$paths $2"; shift ;; esac
    shift
done
case $cmd in
cache-archiver)
    mkdir -p "$(dirname "$file")" && tar -cf "$file.tmp" $paths && mv "$file.tmp" "$file" &&
        echo "Created cache" ;;
cache-extractor)
    if [ -f "$file" ]; then tar -xf "$file" && echo "Successfully extracted cache"
    else echo "WARNING: Cache file does not exist"; echo "Failed to extract cache"; fi ;;
*) echo "gitlab-runner stand-in: $cmd is not played here" >&2; exit 1 ;;
esac
"#;

/// Debian's git and what it links, at their paths, plus git's exec-path copy.
fn git_layer() -> Vec<u8> {
    let git = "/usr/bin/git";
    let out = Command::new("ldd").arg(git).output().expect("run ldd");
    assert!(out.status.success(), "ldd {git}: {out:?}");
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect();
    files.sort();
    files.dedup();
    let mut tar = TarBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in files.iter().map(String::as_str).chain([git]) {
        let rel = f.trim_start_matches('/');
        let mut parent = Path::new(rel).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if dirs.insert(p.to_path_buf()) {
                missing.push(p.to_string_lossy().into_owned());
            }
            parent = p.parent();
        }
        for d in missing.into_iter().rev() {
            tar = tar.dir(&d, 0o755);
        }
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("read {f}: {e}"));
        tar = tar.file(rel, 0o755, &data);
    }
    tar.dir("usr/lib", 0o755)
        .dir("usr/lib/git-core", 0o755)
        .hardlink("usr/lib/git-core/git", "usr/bin/git")
        .finish()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/git")
        .args([
            "-c",
            "user.name=hk",
            "-c",
            "user.email=hk@test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with one commit, as `repos.tar` (`repos/project.git`); its commit.
fn make_repo(dir: &Path) -> String {
    let work = dir.join("repo-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(
        work.join("README.md"),
        "hello from the project's repository\n",
    )
    .unwrap();
    git(&work, &["add", "README.md"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    std::fs::create_dir_all(dir.join("repos")).unwrap();
    git(
        dir,
        &["clone", "-q", "--bare", "repo-work", "repos/project.git"],
    );
    let status = Command::new("tar")
        .args(["-cf", "repos.tar", "repos"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "tar repos");
    commit
}

fn lab() -> &'static HashMap<String, Case> {
    static LAB: OnceLock<HashMap<String, Case>> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("gitlab");
        let commit = make_repo(&dir);
        let mut jobs = TarBuilder::new()
            .dir("jobs", 0o755)
            .dir("jobs/helper", 0o755)
            .file("jobs/helper/gitlab-runner", 0o755, HELPER.as_bytes());
        for (name, id, stages) in JOBS {
            jobs = jobs.dir(&format!("jobs/{name}"), 0o755);
            for (stage, commands) in *stages {
                let script = stage_script(*id, &commit, commands);
                jobs = jobs.file(&format!("jobs/{name}/{stage}"), 0o644, script.as_bytes());
            }
        }
        std::fs::write(dir.join("jobs.tar"), jobs.finish()).unwrap();

        let registry = Registry::start();
        let hk = Hk::new();
        let mut layers = base_layers();
        layers.push(TestLayer {
            tar: git_layer(),
            compression: Compression::Gzip,
        });
        registry.push_image("t/ci", "latest", &TestImage::new(layers));
        let image = registry.image_ref("t/ci", "latest");
        let out = hk
            .cmd(&["pull", "-q", &image])
            .env("HK_DATA_DIR", dir.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pull: {out:?}");

        let mut session = UnprivilegedSession::new(dir.clone(), UID);
        session.prelude = format!(
            "IMG={image}\nexport IMG\ntar -xf jobs.tar && tar -xf repos.tar -C $T\n\
             /usr/bin/git daemon --reuseaddr --listen=127.0.0.1 --base-path=$T/repos \
             --export-all --detach --pid-file=$T/gitd.pid $T/repos\n{RUNNER}"
        );
        let mut cases = session.run(
            Path::new(env!("CARGO_BIN_EXE_hk")),
            CASES,
            LEFTOVER,
            Duration::from_secs(2400),
        );
        cases.insert(
            "commit".into(),
            Case {
                out: commit,
                ..Case::default()
            },
        );
        cases
    })
}

fn case(name: &str) -> &'static Case {
    &lab()[name]
}

fn has(c: &Case, line: &str) -> bool {
    c.out.lines().any(|l| l.trim() == line)
}

/// Every one of `lines` is a line of the case's output (the job log and the runner's notes).
fn assert_has(c: &Case, lines: &[&str]) {
    for line in lines {
        assert!(has(c, line), "missing {line:?}: {c:?}");
    }
}

#[test]
fn config_prints_the_settings_the_runner_reads() {
    let c = case("first");
    assert!(has(c, "first config=0"), "{c:?}");
    let line = c
        .out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("config's JSON");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "builds_dir": "/builds",
            "cache_dir": "/cache",
            "builds_dir_is_shared": false,
            "hostname": "gitlab-t0k3n-p1-c0-j101",
            "driver": {"name": "hk", "version": env!("CARGO_PKG_VERSION")},
            "job_env": {"HK_GITLAB_VM": "gitlab-t0k3n-p1-c0-j101"},
        })
    );
}

#[test]
fn a_passing_job_clones_from_the_host_builds_and_archives_its_cache() {
    let c = case("first");
    let commit = &case("commit").out;
    assert_has(
        c,
        &[
            "first prepare=0 attempts=1",
            "first prepare_script=0",
            "Created fresh repository.",
            "first get_sources=0",
            "first restore_cache=0",
            "hello from the project's repository",
            &format!("head={commit}"),
            "helper=/opt/hk-gitlab/bin/gitlab-runner",
            "first step_script=0",
            "after-script-ran",
            "first after_script=0",
            "Created cache",
            "first archive_cache=0",
            "first upload_artifacts_on_success=0",
            "first cleanup_file_variables=0",
            "first cleanup=0",
        ],
    );
    assert!(
        c.out.contains("Running on gitlab-t0k3n-p1-c0-j101"),
        "{c:?}"
    );
    assert!(
        c.out
            .contains(&format!("Checking out {} as detached HEAD", &commit[..8])),
        "{c:?}"
    );
    // The image has no bash: the runner's script ran under its sh.
    assert!(has(c, "shell=/bin/busybox"), "{c:?}");
}

#[test]
fn the_next_job_of_the_project_sees_the_cache_but_nothing_else_of_the_last() {
    let c = case("second");
    assert_has(
        c,
        &[
            "second prepare=0 attempts=1",
            "second get_sources=0",
            "Successfully extracted cache",
            "restored: dep made by job 101",
            "leftovers=0",
            "helper=read-only",
            "second step_script=0",
            "second cleanup=0",
        ],
    );
    assert!(c.err.contains("Read-only file system"), "{c:?}");
}

#[test]
fn a_failing_script_is_a_build_failure_and_the_failure_branch_runs() {
    let c = case("fail");
    assert_has(
        c,
        &[
            "fail prepare=0 attempts=1",
            "before-fail",
            &format!("fail step_script={BUILD_FAILURE}"),
            "after-script-ran",
            "fail after_script=0",
            "archive-on-failure-ran",
            "fail archive_cache_on_failure=0",
            "fail upload_artifacts_on_failure=0",
            "fail cleanup_file_variables=0",
            "fail cleanup=0",
            "code-file=3",
        ],
    );
    assert!(!c.out.contains("not-reached"), "{c:?}");
}

#[test]
fn a_missing_image_is_a_system_failure_and_cleanup_still_succeeds() {
    let c = case("noimage");
    assert!(
        has(c, &format!("noimage prepare={SYSTEM_FAILURE} attempts=3")),
        "{c:?}"
    );
    assert!(has(c, "noimage cleanup=0"), "{c:?}");
    assert!(!c.out.contains("step_script"), "{c:?}");
    assert!(
        c.err.contains("cannot pull 127.0.0.1:1/no/such:image"),
        "{c:?}"
    );
}

#[test]
fn cleanup_removes_the_vm_of_a_killed_prepare_and_can_run_twice() {
    let c = case("killed-prepare");
    assert_eq!(
        c.out.lines().collect::<Vec<_>>(),
        ["prepare-killed=137", "cleanup=0", "again=0", "0"],
        "{c:?}"
    );
}

#[test]
fn sigterm_stops_the_script_and_the_vm() {
    let c = case("term");
    assert_has(
        c,
        &[
            "prepare=0",
            &format!("run={BUILD_FAILURE}"),
            "started",
            "before=1",
            "running=0",
            "\"Status\":\"exited\"",
            "\"Running\":false",
            &format!("after-stop={SYSTEM_FAILURE}"),
            "cleanup=0",
        ],
    );
    assert!(!c.out.contains("not-reached"), "{c:?}");
}

#[test]
fn two_concurrent_jobs_see_neither_files_nor_processes_of_the_other() {
    let c = case("concurrent");
    assert_has(
        c,
        &[
            "conc-a prepare=0 attempts=1",
            "conc-b prepare=0 attempts=1",
            "107 met: here-107 here-108",
            "108 met: here-107 here-108",
            "107 builds: mine-107",
            "107 sleeps: sleep 9999107",
            "108 builds: mine-108",
            "108 sleeps: sleep 9999108",
            "conc-a step_script=0",
            "conc-b step_script=0",
            "conc-a cleanup=0",
            "conc-b cleanup=0",
        ],
    );
}

#[test]
fn no_vm_or_hk_process_is_left_and_the_cache_volumes_stay() {
    let c = case("leftover");
    assert_eq!(
        c.out.lines().collect::<Vec<_>>(),
        [
            "gitlab-cache-gitlab.test-1",
            "gitlab-cache-gitlab.test-2",
            "gitlab-cache-gitlab.test-4",
            "gitlab-cache-gitlab.test-5",
            "gitlab-cache-gitlab.test-6",
            "end"
        ],
        "{c:?}"
    );
}
