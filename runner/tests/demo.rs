//! The README's first command, run as a newcomer runs it (and as CI runs it): scripts/demo
//! builds what it needs, makes the demo image offline, loads it and `hk run`s it, in the
//! nested lab where the host has no hardware KVM. Its output is the container's, and exit
//! statuses pass through.

use hk_tests::{kvm, lab_lock, repo_root, run_with_timeout, scratch_dir, Kvm};
use std::process::Command;
use std::time::Duration;

fn demo(args: &[&str]) -> std::process::Output {
    let data = scratch_dir("demo");
    // The lab runs one thing at a time; on a host with hardware KVM no lock is needed.
    let _turn = (kvm() == Kvm::Lab).then(lab_lock);
    let mut cmd = Command::new(repo_root().join("scripts/demo"));
    cmd.args(args)
        .env("HK_DATA_DIR", &data)
        .env_remove("HK_IN_LAB");
    run_with_timeout(cmd, Duration::from_secs(900))
}

#[test]
fn the_readme_demo_prints_the_containers_output() {
    let out = demo(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("Hello from a microVM: Linux 6.1"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("uid=0(root)"), "{stdout}\n{stderr}");
}

#[test]
fn the_demo_passes_a_command_and_its_exit_status_through() {
    let out = demo(&["sh", "-c", "echo from-the-container; exit 3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "from-the-container\n");
}
