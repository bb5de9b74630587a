//! The nested lab works end to end: a command runs inside the L1 with its streams and exit
//! status passed through, and the L1's /dev/kvm boots hk's guest kernel. QEMU stands in as
//! the L2 VMM here so that this test checks the lab and the kernel, not hk's own VMM.

use hk_tests::{guest_kernel, repo_root, run_with_kvm, scratch_dir, Initramfs};
use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

const MARKER: &str = "hk-smoke-marker";

#[test]
fn guest_kernel_boots_under_kvm() {
    let dir = scratch_dir("lab-smoke");
    let initrd = dir.join("initramfs.cpio.gz");
    Initramfs::new()
        .busybox()
        .init_script(&format!(
            "mount -t proc proc /proc\n\
             echo \"{MARKER} cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$(uname -r)\"\n\
             dmesg | grep -i 'hypervisor detected'\n\
             reboot -f\n"
        ))
        .write(&initrd)
        .unwrap();
    let kernel = guest_kernel();
    let args: Vec<&OsStr> = [
        "-M",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        "2",
        "-m",
        "256",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ]
    .iter()
    .map(OsStr::new)
    .chain([
        kernel.as_os_str(),
        OsStr::new("-initrd"),
        initrd.as_os_str(),
    ])
    .chain(["-append", "console=ttyS0 reboot=t panic=-1 quiet"].map(OsStr::new))
    .collect();

    let out = run_with_kvm(
        "/usr/bin/qemu-system-x86_64".as_ref(),
        &args,
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "QEMU failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains(MARKER))
        .unwrap_or_else(|| panic!("the guest never printed its marker:\n{stdout}"));
    assert!(line.contains("cpus=2"), "{line}");
    assert!(line.contains("kernel=6.1."), "{line}");
    assert!(
        stdout.contains("Hypervisor detected: KVM"),
        "the guest did not run on KVM:\n{stdout}"
    );
}

#[test]
fn lab_passes_streams_and_exit_status_through() {
    let dir = scratch_dir("lab-streams");
    let _turn = hk_tests::lab_lock();
    let out = Command::new(repo_root().join("scripts/lab"))
        .args(["--timeout", "300", "--share"])
        .arg(&dir)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo to-stdout; echo to-stderr >&2; test -c /dev/kvm && echo has-kvm; \
             cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
             echo written > {}/result; exit 7",
            dir.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Without a TSC frequency (calibration fails on a busy host) the L1 falls back to
    // jiffies and its KVM guests hang; scripts/lab passes the frequency in.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["to-stdout", "has-kvm"], "{stdout}");
    assert!(
        matches!(lines[2..], ["tsc" | "tsc-early"]),
        "the L1 must run on its TSC, not jiffies: {stdout}"
    );
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("result")).unwrap(),
        "written\n",
        "a --share directory is writable from inside the lab"
    );
}

#[test]
fn lab_timeout_kills_everything() {
    let _turn = hk_tests::lab_lock();
    let marker = format!("hk-lab-timeout-{}", std::process::id());
    let out = Command::new(repo_root().join("scripts/lab"))
        .args(["--timeout", "20", "--", "sh", "-c"])
        .arg(format!("sleep 1000 # {marker}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = Command::new("pgrep")
        .args(["-f", "qemu-system-x86_64.*hk/lab/run-"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "a lab QEMU outlived its timeout: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// The L1 needs a writable /tmp, yet a checkout or a scratch directory may live under the
/// host's /tmp: both hold at once, and what the L1 writes to /tmp stays in the L1.
#[test]
fn the_hosts_tmp_is_visible_in_the_lab_and_the_labs_writes_stay_there() {
    let host_dir = tempfile::Builder::new()
        .prefix("hk-lab-tmp-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(host_dir.path().join("from-host"), "host\n").unwrap();
    let _turn = hk_tests::lab_lock();
    let out = Command::new(repo_root().join("scripts/lab"))
        .args(["--timeout", "300", "--", "sh", "-c"])
        .arg("cat from-host && echo lab > from-lab && cat from-lab")
        .current_dir(host_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "host\nlab\n");
    assert!(
        !host_dir.path().join("from-lab").exists(),
        "a write to /tmp inside the lab reached the host"
    );
}
