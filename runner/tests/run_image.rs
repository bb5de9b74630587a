//! `hk run IMAGE` and the container lifecycle on a real KVM (the host's, or the nested
//! lab's), run by an unprivileged user: images made by the test and pulled from a real
//! registry on loopback, their configs applied as docker applies them (the ENTRYPOINT/CMD
//! table of the Dockerfile reference, env precedence, user, workdir), detached containers
//! with exec, logs, stop, start, kill, wait and rm, a supervisor killed with -9, ten
//! concurrent `--rm` runs, and nothing left behind. Every case runs in one lab session;
//! each test then checks its own case.

mod common;

use common::{base_layers, Hk, Registry, TestImage};
use hk_tests::{scratch_dir, Case, UnprivilegedSession};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The unprivileged user the cases run as when the test itself is root (as in the lab).
const UID: u32 = 4242;

/// Each case: a name and the shell lines that run it (see `UnprivilegedSession`); `$R` is
/// the registry's repository prefix.
const CASES: &[(&str, &str)] = &[
    ("whoami", "id -u; $hk run --rm $R/base id -u"),
    // The Dockerfile reference's ENTRYPOINT/CMD table, one image per cell.
    ("none-none", "$hk run --rm $R/none-none"),
    ("none-exec", "$hk run --rm $R/none-exec"),
    ("none-shell", "$hk run --rm $R/none-shell"),
    ("shell-none", "$hk run --rm $R/shell-none"),
    ("shell-exec", "$hk run --rm $R/shell-exec"),
    ("shell-shell", "$hk run --rm $R/shell-shell"),
    ("exec-none", "$hk run --rm $R/exec-none"),
    ("exec-exec", "$hk run --rm $R/exec-exec"),
    ("exec-shell", "$hk run --rm $R/exec-shell"),
    ("args-replace-cmd", "$hk run --rm $R/exec-exec a b"),
    ("entrypoint-flag", "$hk run --rm --entrypoint show-cmd $R/exec-exec"),
    ("entrypoint-flag-args", "$hk run --rm --entrypoint show-cmd $R/exec-exec x y"),
    ("entrypoint-empty-args", "$hk run --rm --entrypoint '' $R/exec-exec show-cmd z"),
    ("entrypoint-empty", "$hk run --rm --entrypoint '' $R/exec-exec"),
    // The image's env, workdir and user, and the flags over them.
    (
        "image-config",
        "printf 'B=file\\nC=file\\n' >env.list; \
         $hk run --rm --env-file env.list -e C=flag $R/app sh -c 'echo $A $B $C; pwd; id -un; echo $HOSTNAME'",
    ),
    ("user-by-name", "$hk run --rm -u alice $R/base sh -c 'id -u; id -g'"),
    ("user-by-ids", "$hk run --rm -u 1000:10 $R/base sh -c 'id -u; id -g'"),
    ("workdir-flag", "$hk run --rm -w /made/here $R/app pwd"),
    ("read-only", "$hk run --rm --read-only $R/base sh -c 'touch /x'"),
    (
        "loopback",
        "$hk run --rm $R/base sh -c 'ip -o link show lo | grep -o \"UP,LOWER_UP\"'",
    ),
    ("timings", "$hk run --rm --timings $R/base true"),
    (
        "cidfile",
        "$hk run --rm --cidfile cid.txt $R/base true; wc -c <cid.txt",
    ),
    // docker's one-line errors and exit codes.
    ("not-found", "$hk run --rm $R/base no-such-command"),
    ("not-executable", "$hk run --rm $R/base /etc/passwd"),
    ("no-image", "$hk run --rm --pull never $R/absent true"),
    ("tiny-memory", "$hk run --rm --memory 16m $R/base true"),
    (
        "name-in-use",
        "$hk run --name twice $R/base true; $hk run --name twice $R/base true; \
         echo second=$?; $hk rm twice",
    ),
    // Ten at once.
    (
        "concurrent",
        "for i in $(seq 1 10); do ($hk run --rm -e N=$i $R/base sh -c 'echo run-$N' \
         >conc.$i 2>&1; echo status-$? >>conc.$i) & done; wait; \
         for i in $(seq 1 10); do cat conc.$i; done",
    ),
    // Detached: exec, logs, stop (StopSignal then exit), start with the layer kept, kill,
    // wait, rm.
    (
        "lifecycle",
        "id=$($hk run -d --name web $R/app sh -c 'echo started; trap \"echo bye; exit 7\" USR1; \
         while true; do sleep 0.2; done'); echo id-length=${#id}; \
         $hk ps --format json | grep -c '\"Names\":\"web\"'; \
         $hk exec web id -un; $hk exec -u root web sh -c 'echo kept >/srv/app/state.txt'; \
         $hk stop -t 20 web; $hk ps -a --format json | grep '\"Names\":\"web\"' | grep -o 'Exited ([0-9]*)'; \
         $hk inspect web | grep -E '\"(ExitCode|StopSignal|Status)\"'; \
         $hk start web; $hk exec web cat /srv/app/state.txt; \
         $hk logs web | grep -c started; \
         $hk kill web; $hk wait web; \
         $hk rm web; $hk ps -aq | wc -l; $hk logs web; echo logs-after-rm=$?",
    ),
    (
        "rm-running",
        "$hk run -d --name busy $R/base sleep 1000 >/dev/null; $hk rm busy; echo plain=$?; \
         $hk rm -f busy; echo forced=$?; $hk ps -a -q | wc -l",
    ),
    (
        "supervisor-killed",
        "$hk run -d --name victim $R/base sleep 1000 >/dev/null; \
         pid=$($hk inspect victim | grep '\"Pid\"' | tr -dc 0-9); kill -9 $pid; \
         sleep 1; $hk ps -a --format json | grep '\"Names\":\"victim\"' | grep -o 'Exited ([0-9]*)'; \
         $hk rm victim; echo rm=$?; $hk ps -a -q | wc -l; ls -A $HK_RUNTIME_DIR/run",
    ),
    // Images in without a registry, as the unprivileged user: skopeo's tarballs and the
    // demo image, run, saved and loaded back.
    (
        "load",
        "$hk load -i docker-archive.tar; $hk load -i oci-archive.tar; \
         $hk run --rm skopeo/docker:one show-cmd via-docker-archive; \
         $hk run --rm skopeo/oci:two show-cmd via-oci-archive",
    ),
    (
        "demo-save-load",
        "$hk load -i hk-demo.tar >/dev/null; $hk run --rm hk-demo | head -1 | cut -d: -f1; \
         $hk save -o saved.tar hk-demo; $hk rmi hk-demo >/dev/null; $hk load -i saved.tar; \
         $hk run --rm hk-demo true; echo run=$?",
    ),
    (
        "prune",
        "$hk run --name p1 $R/base true; $hk run --name p2 $R/base true; \
         $hk container prune -f | grep -c '^[0-9a-f]\\{64\\}$'; $hk ps -aq | wc -l",
    ),
];

/// An image config's `config` object with these Entrypoint and Cmd (null: unset).
fn entry_cmd(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> serde_json::Value {
    json!({
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    })
}

fn images() -> Vec<(&'static str, serde_json::Value)> {
    let sh_cmd: &[&str] = &["/bin/sh", "-c", "show-cmd p1_cmd"];
    let exec_cmd: &[&str] = &["show-cmd", "p1_cmd"];
    let sh_entry: &[&str] = &["/bin/sh", "-c", "show-entry p1_entry"];
    let exec_entry: &[&str] = &["show-entry", "p1_entry"];
    vec![
        ("base", entry_cmd(None, Some(&["/bin/sh"]))),
        ("none-none", entry_cmd(None, None)),
        ("none-exec", entry_cmd(None, Some(exec_cmd))),
        ("none-shell", entry_cmd(None, Some(sh_cmd))),
        ("shell-none", entry_cmd(Some(sh_entry), None)),
        ("shell-exec", entry_cmd(Some(sh_entry), Some(exec_cmd))),
        ("shell-shell", entry_cmd(Some(sh_entry), Some(sh_cmd))),
        ("exec-none", entry_cmd(Some(exec_entry), None)),
        ("exec-exec", entry_cmd(Some(exec_entry), Some(exec_cmd))),
        ("exec-shell", entry_cmd(Some(exec_entry), Some(sh_cmd))),
        (
            "app",
            json!({
                "Cmd": ["/bin/sh"],
                "Env": ["PATH=/usr/bin:/bin", "A=image", "B=image", "C=image"],
                "WorkingDir": "/srv/app",
                "User": "alice",
                "StopSignal": "SIGUSR1",
                "Labels": {"org.example.role": "test"},
                "ExposedPorts": {"80/tcp": {}},
            }),
        ),
    ]
}

fn lab() -> &'static HashMap<String, Case> {
    static LAB: OnceLock<HashMap<String, Case>> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("run-image");
        // Images into a store on the host (the lab has no network), from a real registry.
        let registry = Registry::start();
        let hk = Hk::new();
        let data = dir.join("data");
        for (name, config) in images() {
            let mut image = TestImage::new(base_layers());
            image.container_config = config;
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
        // Tarballs as skopeo writes them, and the demo image.
        for (transport, name) in [
            ("docker-archive", "skopeo/docker:one"),
            ("oci-archive", "skopeo/oci:two"),
        ] {
            let out = std::process::Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!(
                    "docker://{}",
                    registry.image_ref("t/exec-exec", "latest")
                ))
                .arg(format!(
                    "{transport}:{}:{name}",
                    dir.join(format!("{transport}.tar")).display()
                ))
                .output()
                .unwrap();
            assert!(out.status.success(), "skopeo {transport}: {out:?}");
        }
        let out = std::process::Command::new(hk_tests::repo_root().join("scripts/demo-image"))
            .arg(dir.join("hk-demo.tar"))
            .output()
            .unwrap();
        assert!(out.status.success(), "demo-image: {out:?}");
        // The cases run as an unprivileged user with access to /dev/kvm and nothing more,
        // hk's state in a private directory in the lab's memory (UnprivilegedSession).
        let mut session = UnprivilegedSession::new(dir, UID);
        session.prelude = format!("R={}/t\nexport R", registry.addr);
        // Nothing may be left: no container, no runtime state, no hk process.
        let leftover = (
            "leftover",
            "ls -A $HK_DATA_DIR/containers; ls -A $HK_DATA_DIR/containers/names; \
             ls -A $HK_RUNTIME_DIR/run 2>/dev/null; pgrep -u $(id -u) -x hk",
        );
        session.run(
            Path::new(env!("CARGO_BIN_EXE_hk")),
            CASES,
            leftover,
            Duration::from_secs(1500),
        )
    })
}

fn case(name: &str) -> &'static Case {
    &lab()[name]
}

#[test]
fn hk_runs_as_an_unprivileged_user() {
    let c = case("whoami");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    // On a host with hardware KVM and a non-root test, the test's own uid; never root.
    assert_ne!(lines[0], "0", "{c:?}");
    assert_eq!(lines[1], "0", "root inside the container: {c:?}");
}

#[test]
fn entrypoint_and_cmd_combine_as_the_dockerfile_reference_table_says() {
    let c = case("none-none");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("no command specified"), "{c:?}");
    for (name, want) in [
        ("none-exec", "cmd: p1_cmd"),
        ("none-shell", "cmd: p1_cmd"),
        ("shell-none", "entry: p1_entry"),
        ("shell-exec", "entry: p1_entry"),
        ("shell-shell", "entry: p1_entry"),
        ("exec-none", "entry: p1_entry"),
        ("exec-exec", "entry: p1_entry show-cmd p1_cmd"),
        ("exec-shell", "entry: p1_entry /bin/sh -c show-cmd p1_cmd"),
        ("args-replace-cmd", "entry: p1_entry a b"),
        ("entrypoint-flag", "cmd:"),
        ("entrypoint-flag-args", "cmd: x y"),
        ("entrypoint-empty-args", "cmd: z"),
    ] {
        let c = case(name);
        assert_eq!((c.status, c.out.trim_end()), (0, want), "{name}: {c:?}");
    }
    let c = case("entrypoint-empty");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("no command specified"), "{c:?}");
}

#[test]
fn env_precedence_is_image_then_env_file_then_flag_with_image_workdir_and_user() {
    let c = case("image-config");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines[0], "image file flag", "{c:?}");
    assert_eq!(lines[1], "/srv/app", "the WorkingDir is created: {c:?}");
    assert_eq!(lines[2], "alice", "{c:?}");
    assert_eq!(lines[3].len(), 12, "HOSTNAME is the short ID: {c:?}");
    let c = case("workdir-flag");
    assert_eq!((c.status, c.out.as_str()), (0, "/made/here\n"), "{c:?}");
}

#[test]
fn user_by_name_and_by_uid_gid() {
    let c = case("user-by-name");
    assert_eq!((c.status, c.out.as_str()), (0, "1000\n1000\n"), "{c:?}");
    let c = case("user-by-ids");
    assert_eq!((c.status, c.out.as_str()), (0, "1000\n10\n"), "{c:?}");
}

#[test]
fn read_only_has_no_writable_layer() {
    let c = case("read-only");
    assert_eq!(c.status, 1, "{c:?}");
    assert!(c.err.contains("Read-only file system"), "{c:?}");
}

#[test]
fn loopback_is_up_without_a_network() {
    let c = case("loopback");
    assert_eq!((c.status, c.out.as_str()), (0, "UP,LOWER_UP\n"), "{c:?}");
}

#[test]
fn timings_and_cidfile() {
    let c = case("timings");
    assert_eq!(c.status, 0, "{c:?}");
    for step in [
        "image lookup",
        "root lookup",
        "VM setup",
        "process start",
        "agent ready",
        "process end",
        "shutdown",
    ] {
        assert!(c.err.contains(step), "{step}: {c:?}");
    }
    let c = case("cidfile");
    assert_eq!((c.status, c.out.trim()), (0, "64"), "{c:?}");
}

#[test]
fn user_mistakes_get_one_line_and_dockers_exit_codes() {
    let c = case("not-found");
    assert_eq!(c.status, 127, "{c:?}");
    assert!(c.err.contains("executable file not found"), "{c:?}");
    let c = case("not-executable");
    assert_eq!(c.status, 126, "{c:?}");
    let c = case("no-image");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("hk pull"), "{c:?}");
    let c = case("tiny-memory");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("too small"), "{c:?}");
    let c = case("name-in-use");
    assert!(c.out.contains("second=125"), "{c:?}");
    assert!(c.err.contains("is already in use"), "{c:?}");
}

#[test]
fn ten_concurrent_runs_all_succeed_with_their_own_output() {
    let c = case("concurrent");
    for i in 1..=10 {
        assert!(
            c.out.contains(&format!("run-{i}\nstatus-0\n")),
            "run {i}: {c:?}"
        );
    }
}

#[test]
fn detached_container_exec_logs_stop_start_keeps_its_layer_kill_wait_rm() {
    let c = case("lifecycle");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    let want = [
        "id-length=64",
        "1",
        "alice",
        "web",
        "Exited (7)",
        "\"StopSignal\": \"SIGUSR1\",",
        "\"ExitCode\": 7,",
        "\"Status\": \"exited\"",
        "web",
        "kept",
        "2",
        "web",
        "137",
        "web",
        "0",
    ];
    let got: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
    assert_eq!(got[..want.len()], want, "{c:?}");
    assert_eq!(got[want.len()], "logs-after-rm=125", "{c:?}");
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    let c = case("rm-running");
    assert!(c.out.contains("plain=1"), "{c:?}");
    assert!(c.err.contains("hk rm -f busy"), "{c:?}");
    assert!(c.out.contains("forced=0"), "{c:?}");
    assert!(c.out.ends_with("0\n"), "{c:?}");
}

#[test]
fn a_supervisor_killed_with_9_shows_as_exited_and_rm_cleans_up() {
    let c = case("supervisor-killed");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines, ["Exited (255)", "victim", "rm=0", "0"], "{c:?}");
}

#[test]
fn skopeo_tarballs_and_the_demo_image_load_run_and_save_as_an_unprivileged_user() {
    let c = case("load");
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(
        c.out,
        "Loaded image: skopeo/docker:one\nLoaded image: skopeo/oci:two\n\
         entry: p1_entry show-cmd via-docker-archive\nentry: p1_entry show-cmd via-oci-archive\n",
        "{c:?}"
    );
    let c = case("demo-save-load");
    assert_eq!(
        c.out, "Hello from a microVM\nLoaded image: hk-demo:latest\nrun=0\n",
        "{c:?}"
    );
}

#[test]
fn prune_removes_stopped_containers() {
    let c = case("prune");
    assert_eq!(c.out.lines().collect::<Vec<_>>(), ["2", "0"], "{c:?}");
}

#[test]
fn nothing_is_left_behind() {
    let _ = case("prune");
    let c = case("leftover");
    // `names` (empty) is all that remains of the containers directory.
    assert_eq!(c.out, "names\n", "{c:?}");
}
