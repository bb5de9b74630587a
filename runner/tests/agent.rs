//! hk-agent as PID 1 on hk's own VMM: the command from the kernel command line runs in the
//! environment the agent builds, and its exit status (or 128 + the signal that killed it)
//! becomes `hk vm boot`'s exit status through the VMM's control page.
//!
//! The agent must be built static first (`scripts/test` does):
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile agent -p hk-guest-agent
//! --target x86_64-unknown-linux-gnu

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn agent_binary() -> PathBuf {
    // <target>/<profile>/hk → <target>/x86_64-unknown-linux-gnu/agent/hk-agent
    let hk = Path::new(env!("CARGO_BIN_EXE_hk"));
    let target = hk.parent().and_then(Path::parent).expect("target dir");
    let agent = target.join("x86_64-unknown-linux-gnu/agent/hk-agent");
    assert!(
        agent.exists(),
        "{} is missing: build the static agent first (scripts/test does): \
         RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release \
         -p hk-guest-agent --target x86_64-unknown-linux-gnu",
        agent.display()
    );
    agent
}

/// One `hk vm boot` per case, all in one lab run; each case's output is framed by markers.
fn boot_cases(name: &str, cases: &[(&str, &str)]) -> Vec<(String, i32, String)> {
    let dir = scratch_dir(name);
    let initrd = dir.join("initramfs.cpio.gz");
    Initramfs::new()
        .busybox()
        .file("init", std::fs::read(agent_binary()).unwrap(), 0o755)
        // The kernel command line cannot nest quotes, so longer checks live in scripts.
        .file(
            "t/env.sh",
            "cat /proc/1/comm\ncut -d' ' -f3 /proc/mounts\n",
            0o755,
        )
        .file(
            "t/orphans.sh",
            "sh -c 'sleep 0.2 &'\nsleep 1\n\
             echo \"zombies=$(grep -l ') Z' /proc/[0-9]*/stat 2>/dev/null | wc -l)\"\n",
            0o755,
        )
        .write(&initrd)
        .unwrap();
    let mut script = format!(
        "hk={}\nkernel={}\ninitrd={}\n",
        env!("CARGO_BIN_EXE_hk"),
        guest_kernel().display(),
        initrd.display()
    );
    for (i, (flags, command)) in cases.iter().enumerate() {
        script.push_str(&format!(
            "echo '<<case {i}>>'\n\
             \"$hk\" vm boot --kernel \"$kernel\" --initrd \"$initrd\" {flags} \
             --cmdline 'console=ttyS0 quiet -- {command}' 2>&1\n\
             echo \"<<status $?>>\"\n"
        ));
    }
    let script_path = dir.join("cases.sh");
    std::fs::write(&script_path, script).unwrap();
    let out = run_with_kvm(
        Path::new("/bin/sh"),
        &[script_path.as_os_str()],
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the case script failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (0..cases.len())
        .map(|i| {
            let start = stdout
                .find(&format!("<<case {i}>>\n"))
                .unwrap_or_else(|| panic!("case {i} never started:\n{stdout}"));
            let rest = &stdout[start..];
            let end = rest
                .find("<<status ")
                .unwrap_or_else(|| panic!("case {i} never ended:\n{stdout}"));
            let status: i32 = rest[end + 9..]
                .split(">>")
                .next()
                .and_then(|s| s.parse().ok())
                .expect("status number");
            let output = rest[..end].to_string();
            (cases[i].1.to_string(), status, output)
        })
        .collect()
}

#[test]
fn agent_runs_the_command_and_passes_its_status_through() {
    let results = boot_cases(
        "agent",
        &[
            ("", "/bin/sh -c \"echo hello-from-guest; exit 42\""),
            ("", "/bin/sh -c \"kill -TERM $$\""),
            ("", "/no/such/program"),
            ("", "/bin/sh /t/env.sh"),
            ("--cpus 2", "/bin/sh /t/orphans.sh"),
            ("--boot-timer", "/bin/true"),
        ],
    );
    let report = |i: usize| format!("case {i}: {:?}", results[i]);

    assert_eq!(results[0].1, 42, "{}", report(0));
    assert!(results[0].2.contains("hello-from-guest"), "{}", report(0));

    assert_eq!(results[1].1, 128 + 15, "killed by SIGTERM: {}", report(1));

    assert_eq!(results[2].1, 127, "{}", report(2));
    assert!(
        results[2].2.contains("cannot run /no/such/program"),
        "{}",
        report(2)
    );

    assert_eq!(results[3].1, 0, "{}", report(3));
    let env: Vec<&str> = results[3].2.lines().map(str::trim).collect();
    assert!(env.contains(&"init"), "PID 1 is the agent: {}", report(3));
    for fs in ["proc", "devtmpfs", "devpts", "cgroup2"] {
        assert!(env.contains(&fs), "{fs} is mounted: {}", report(3));
    }

    assert_eq!(results[4].1, 0, "{}", report(4));
    assert!(
        results[4].2.contains("zombies=0"),
        "PID 1 reaps orphans: {}",
        report(4)
    );

    assert_eq!(results[5].1, 0, "{}", report(5));
    assert!(
        results[5]
            .2
            .contains("boot-timer: guest init signalled after"),
        "the agent writes the boot marker: {}",
        report(5)
    );
}
