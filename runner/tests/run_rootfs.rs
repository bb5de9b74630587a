//! `hk run --rootfs` and `hk exec` on a real KVM (the host's, or the nested lab's): the
//! guest agent over vsock runs the command in the container's root, and hk passes exit
//! statuses, stdout and stderr, stdin, a terminal, signals and errors through, as docker
//! run does. Every case of this file runs in one lab session (a lab boot costs seconds);
//! each test then checks its own case.

use hk_tests::{guest_kernel, repo_root, run_with_kvm, scratch_dir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// What one case left.
#[derive(Debug)]
struct Case {
    status: i32,
    out: String,
    err: String,
}

struct Lab {
    cases: HashMap<&'static str, Case>,
    dir: PathBuf,
}

/// A busybox root: applets, a user with groups, a file that is not executable.
fn busybox_root(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "home/alice", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(hk_tests::busybox(), root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(hk_tests::busybox())
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/not-a-program"), "data\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    root
}

/// Each case: a name and the shell lines that run it, with `$run` for `hk run --rootfs`.
/// stdout and stderr of the lines go to NAME.out and NAME.err, their status to NAME.status.
const CASES: &[(&str, &str)] = &[
    ("exit-0", "$run -- true"),
    ("exit-1", "$run -- false"),
    ("exit-42", "$run -- sh -c 'exit 42'"),
    ("signal", "$run -- sh -c 'kill -9 $$'"),
    ("streams", "$run -- sh -c 'echo to-out; echo to-err >&2; echo more-out'"),
    (
        "identity",
        "$run -e GREETING=hello -e HOME -w /work -u alice --hostname box -- \
         sh -c 'echo $GREETING; pwd; id -u; id -g; id -G; hostname; cat /etc/hostname; \
         echo PATH=$PATH'",
    ),
    ("user-group", "$run -u alice:wheel -- sh -c 'id -u; id -g; id -G'"),
    ("user-missing", "$run -u mallory -- true"),
    ("not-found", "$run -- no-such-command"),
    ("not-executable", "$run -- /etc/not-a-program"),
    (
        "stdin-100m",
        "head -c 100M /dev/urandom >/tmp/in.bin; sha256sum </tmp/in.bin >&2; \
         $run -i -- cat </tmp/in.bin | sha256sum",
    ),
    (
        "root-is-the-container",
        "$run -- sh -c 'cat /proc/1/comm; grep \" / \" /proc/mounts | cut -d\" \" -f3; \
         echo written >/tmp/file; cat /tmp/file; ls /dev/vda /dev/vdb'",
    ),
    (
        "virtiofs-root",
        "$run --rootfs-mode virtiofs -- sh -c 'grep \" / \" /proc/mounts | cut -d\" \" -f3; \
         grep -l 0x001a /sys/bus/virtio/devices/*/device | wc -l; \
         cat /etc/not-a-program; echo changed >/etc/not-a-program; cat /etc/not-a-program; \
         ls /dev/vda; ls /dev/vdb 2>/dev/null || echo no-second-disk'; \
         echo host: $(cat $rootdir/etc/not-a-program)",
    ),
    (
        "virtiofs-root-ro",
        "$run --rootfs-mode virtiofs --read-only -- sh -c 'cat /etc/passwd | head -1; \
         touch /new-file'",
    ),
    (
        "virtiofs-not-a-dir",
        "$hk run --rootfs $rootdir/etc/passwd --rootfs-mode virtiofs -- true",
    ),
    (
        "tty",
        "python3 $tools/pty-drive.py 24 80 expect:ready resize:50:132 send:go\\\\n \
         expect:'50 132' sleep:0.5 send:\\\\x03 -- sh -c 'stty -g; $run -t -i -- sh -c \
         \"tty; stty size; echo ready; read line; stty size; sleep 60; echo not-interrupted\"; \
         echo hk-exit=$?; stty -g'",
    ),
    (
        "exec-20",
        "($run --name c1 -- sh -c 'echo main-started; sleep 120' >c1.main 2>&1; \
         echo $? >c1.status) & \
         n=0; until $hk exec c1 true 2>/dev/null || [ $n -ge 300 ]; do sleep 0.2; n=$((n+1)); done; \
         for i in $(seq 1 20); do ($hk exec -e N=$i c1 sh -c 'echo exec-$N; exit $N' >exec.$i 2>&1; \
         echo $? >>exec.$i) & done; wait_execs() { for i in $(seq 1 20); do \
         while [ $(wc -l <exec.$i 2>/dev/null || echo 0) -lt 2 ]; do sleep 0.2; done; done; }; \
         wait_execs; cat $(for i in $(seq 1 20); do echo exec.$i; done); \
         $hk exec c1 killall sleep; wait; cat c1.main; echo main-status=$(cat c1.status); \
         $hk exec c1 true; echo exec-after=$?",
    ),
    (
        "sigterm",
        "$run -- sh -c 'trap \"echo got-term; exit 3\" TERM; echo ready; sleep 100 & wait' \
         >sigterm.log 2>&1 & hk=$!; n=0; until grep -q ready sigterm.log || [ $n -ge 600 ]; \
         do sleep 0.2; n=$((n+1)); done; kill -TERM $hk; wait $hk; echo status=$?; cat sigterm.log",
    ),
    (
        "kernel-panic",
        "printf '#!/nonexistent\\n' >/tmp/bad-agent; chmod +x /tmp/bad-agent; \
         HK_AGENT=/tmp/bad-agent $run -- true",
    ),
    (
        "flood",
        "rm -f /tmp/flood.fifo; mkfifo /tmp/flood.fifo; (exec 3</tmp/flood.fifo; sleep 25) & reader=$!; \
         $run --memory 128m -- cat /dev/zero >/tmp/flood.fifo & hk=$!; sleep 15; \
         grep -E 'VmRSS|VmHWM' /proc/$hk/status; kill $reader; wait $hk; echo hk-status=$?",
    ),
];

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("run-rootfs");
        let root = busybox_root(&dir);
        // In the nested lab, an L2 vCPU on the L1's CPU 0 sometimes never starts (QEMU TCG's
        // SVM; see vm_boot.rs): hk is pinned to CPU 1 there.
        let mut script = format!(
            "pin=\nif [ \"$(nproc)\" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi\n\
             export HK_KERNEL={kernel} HK_CACHE_DIR=/tmp/hk-test-cache HK_RUNTIME_DIR=/tmp/hk-test-run HK_DATA_DIR=/tmp/hk-test-data\n\
             hk=\"$pin {hk}\"\nrootdir={root}\nrun=\"$hk run --rootfs $rootdir\"\ntools={tools}\nexport hk run tools rootdir\ncd {dir}\n",
            kernel = guest_kernel().display(),
            hk = env!("CARGO_BIN_EXE_hk"),
            root = root.display(),
            tools = repo_root().join("tests/tools").display(),
            dir = dir.display(),
        );
        for (name, lines) in CASES {
            std::fs::write(dir.join(format!("{name}.sh")), format!("{lines}\n")).unwrap();
            script.push_str(&format!(
                "echo '[case {name}]' >&2\n( . ./{name}.sh ) >{name}.out 2>{name}.err </dev/null\necho $? >{name}.status\n"
            ));
        }
        // Nothing may be left: no container state, no hk process.
        script.push_str(
            "ls -A /tmp/hk-test-run/run >leftover.out 2>/dev/null; \
             pgrep -x hk >>leftover.out; echo done\n",
        );
        let script_path = dir.join("cases.sh");
        std::fs::write(&script_path, script).unwrap();
        let out = run_with_kvm(
            Path::new("/bin/bash"),
            &[script_path.as_os_str()],
            Duration::from_secs(1500),
        );
        assert!(
            out.status.success(),
            "the case script failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |file: String| std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        let cases = CASES
            .iter()
            .map(|(name, _)| {
                let case = Case {
                    status: read(format!("{name}.status")).trim().parse().unwrap_or(-1),
                    out: read(format!("{name}.out")),
                    err: read(format!("{name}.err")),
                };
                (*name, case)
            })
            .collect();
        Lab { cases, dir }
    })
}

fn case(name: &str) -> &'static Case {
    &lab().cases[name]
}

#[test]
fn exit_codes_pass_through_128_plus_n_for_a_signal() {
    for (name, want) in [
        ("exit-0", 0),
        ("exit-1", 1),
        ("exit-42", 42),
        ("signal", 137),
    ] {
        assert_eq!(case(name).status, want, "{name}: {:?}", case(name));
    }
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let c = case("streams");
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(c.out, "to-out\nmore-out\n");
    assert!(c.err.ends_with("to-err\n"), "{c:?}");
    assert!(!c.out.contains("to-err"));
}

#[test]
fn env_workdir_user_by_name_and_hostname_are_honoured() {
    let c = case("identity");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "/work");
    assert_eq!(lines[2..5], ["1000", "1000", "1000 10"]);
    assert_eq!(lines[5..7], ["box", "box"]);
    assert_eq!(
        lines[7],
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let c = case("user-group");
    assert_eq!(c.out, "1000\n10\n10\n", "{c:?}");
    let c = case("user-missing");
    assert_ne!(c.status, 0);
    assert!(
        c.err
            .contains("unable to find user mallory: no matching entries in passwd file"),
        "{c:?}"
    );
}

#[test]
fn a_missing_command_exits_127_and_an_unrunnable_one_126() {
    let c = case("not-found");
    assert_eq!(c.status, 127, "{c:?}");
    assert!(
        c.err
            .contains("hk: exec: \"no-such-command\": executable file not found in $PATH"),
        "{c:?}"
    );
    let c = case("not-executable");
    assert_eq!(c.status, 126, "{c:?}");
    assert!(c.err.contains("permission denied"), "{c:?}");
}

#[test]
fn a_hundred_mib_cross_stdin_to_cat_to_stdout_unchanged() {
    let c = case("stdin-100m");
    assert_eq!(c.status, 0, "{c:?}");
    let want = c
        .err
        .lines()
        .find(|l| l.ends_with("  -"))
        .expect("input checksum");
    assert_eq!(c.out.trim(), want.trim(), "{c:?}");
}

#[test]
fn the_process_runs_in_the_container_root_under_an_overlay() {
    let c = case("root-is-the-container");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines[0], "init", "PID 1 is the agent ({c:?})");
    assert_eq!(lines[1], "overlay", "{c:?}");
    assert_eq!(lines[2], "written");
}

#[test]
fn a_rootfs_directory_over_virtio_fs_is_the_read_only_lower_layer() {
    let c = case("virtiofs-root");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    // An overlay with one virtio-fs device (ID 26) and one disk, the upper: the lower is
    // the share. The container's writes land in the upper, not in the host directory.
    assert_eq!(
        lines,
        [
            "overlay",
            "1",
            "data",
            "changed",
            "/dev/vda",
            "no-second-disk",
            "host: data"
        ],
        "{c:?}"
    );
    let ro = case("virtiofs-root-ro");
    assert_eq!(ro.status, 1, "{ro:?}");
    assert_eq!(ro.out.trim(), "root:x:0:0:root:/root:/bin/sh", "{ro:?}");
    assert!(ro.err.contains("Read-only file system"), "{ro:?}");
    let file = case("virtiofs-not-a-dir");
    assert_eq!(file.status, 125, "{file:?}");
    assert!(
        file.err
            .contains("--rootfs-mode virtiofs shares a directory"),
        "{file:?}"
    );
}

#[test]
fn a_terminal_session_has_a_pty_follows_resizes_and_ctrl_c_interrupts() {
    let c = case("tty");
    let out = c.out.replace('\r', "");
    assert!(c.status == 0, "{c:?}");
    let lines: Vec<&str> = out.lines().collect();
    let before = lines[0];
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "tty names a pts device: {out}"
    );
    assert!(lines.contains(&"24 80"), "{out}");
    assert!(
        lines.contains(&"50 132"),
        "the size followed the resize: {out}"
    );
    assert!(
        !out.contains("not-interrupted"),
        "Ctrl-C interrupted the sleep: {out}"
    );
    assert!(out.contains("hk-exit=130\n"), "128 + SIGINT: {out}");
    assert_eq!(
        lines.last(),
        Some(&before),
        "the terminal's settings are restored"
    );
}

#[test]
fn twenty_concurrent_execs_into_one_vm_each_get_their_own_output_and_status() {
    let c = case("exec-20");
    assert_eq!(c.status, 0, "{c:?}");
    for i in 1..=20 {
        assert!(
            c.out.contains(&format!("exec-{i}\n{i}\n")),
            "exec {i}: {}",
            c.out
        );
    }
    assert!(c.out.contains("main-started"), "{c:?}");
    assert!(
        c.out.contains("main-status=143"),
        "the main process got SIGTERM: {c:?}"
    );
    assert!(
        c.out.contains("exec-after=125"),
        "the container is gone: {c:?}"
    );
}

#[test]
fn sigterm_to_hk_reaches_the_process() {
    let c = case("sigterm");
    assert!(c.out.contains("got-term"), "{c:?}");
    assert!(c.out.contains("status=3"), "{c:?}");
}

#[test]
fn a_kernel_panic_before_the_agent_shows_the_kernels_last_lines() {
    let c = case("kernel-panic");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("the guest kernel panicked"), "{c:?}");
    assert!(
        c.err.contains("Kernel panic"),
        "the console log's tail: {c:?}"
    );
}

#[test]
fn a_flooding_guest_with_a_stalled_reader_keeps_hks_memory_bounded() {
    let c = case("flood");
    let kib = |key: &str| -> u64 {
        c.out
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {c:?}"))
    };
    // Guest memory is at most 128 MiB; the VMM's buffers for the stalled stream are capped
    // at the vsock window (256 KiB) plus the agent's pipe and socket buffers in the guest.
    // A VMM that buffered the flood would be far past this after 15 s.
    let ceiling = 128 * 1024 + 64 * 1024;
    assert!(kib("VmHWM") < ceiling, "{c:?}");
    assert!(kib("VmRSS") < ceiling, "{c:?}");
}

#[test]
fn nothing_is_left_behind() {
    // Every other case has run (they share one lab session).
    let left = std::fs::read_to_string(lab().dir.join("leftover.out")).unwrap_or_default();
    assert_eq!(left.trim(), "", "state or processes left: {left}");
}
