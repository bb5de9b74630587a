//! A malicious guest against hk's VMM: `tests/villain/villain.c` runs as PID 1, takes every
//! virtio device away from the kernel's drivers and attacks it through /dev/mem (registers
//! of every width at every offset, status bits out of order, broken queue sizes and ring
//! addresses, descriptor loops, huge lengths, buffers outside RAM or in MMIO, broken
//! indirect tables, runaway avail indices, resets mid-request, vsock packets that lie),
//! then checks that each device still serves a well-formed request. docs/security.md
//! describes it and what it found.
//!
//! One lab session boots the villain with every device `hk vm boot` offers (two disks, one
//! read-only, virtio-rng, virtio-vsock with a host listener) and, at the same time, an
//! ordinary VM beside it. The VMM must end the villain's VM alive (the guest's own exit
//! status) or stopped with a clear error, never hang (a timeout inside the lab, told
//! apart), with its peak RSS under a fixed ceiling; the neighbour must not notice.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Guest RAM the kernel leaves alone (memmap=) for the villain's rings and buffers.
const ARENA: u64 = 0x800_0000;
const ARENA_SIZE: u64 = 0x200_0000;
/// The villain's VM memory.
const MEMORY_MIB: u64 = 256;
/// Ceiling on the villain VMM's peak RSS. Guest pages the guest touches are the VMM's too:
/// the kernel, the 32 MiB arena the villain fills, what the devices write there. Measured
/// in the lab: 61 MiB with a release hk, 70 MiB with a debug one (hk's own share is
/// ~20 MiB in an ordinary boot). A device that
/// leaked per request, per reset (a device thread each) or per vsock connection would
/// pass this long before the VM's 256 MiB of RAM.
const RSS_CEILING_KIB: u64 = 160 << 10;
/// Time the villain gets in the lab before it counts as hung.
const VILLAIN_TIMEOUT_SECS: u64 = 900;
/// Host port with a listener (a sink) on the vsock's Unix socket.
const HOST_PORT: u32 = 5000;
/// Exit status of `timeout -s KILL` when it had to kill.
const TIMED_OUT: i32 = 137;

const ORDINARY_INIT: &str = r#"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Runs while the villain attacks its devices next door.
for i in 1 2 3 4 5 6 7 8 9 10; do
    echo "ordinary:round:$i:disk:$(head -c 12 /dev/vda):rng:$(head -c 64 /dev/hwrng | wc -c)"
    sleep 1
done
echo "ordinary:done"
devmem 0xd0000004 32 0
"#;

struct Run {
    dir: PathBuf,
    villain_status: i32,
    villain_console: String,
    villain_stderr: String,
    max_rss_kib: u64,
    ordinary_status: i32,
    ordinary_console: String,
    ordinary_stderr: String,
    lab_stderr: String,
    /// Whether the villain still ran when the neighbour ended.
    overlap: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in {}\nvillain: status {}, peak RSS {} KiB\n--- villain console ---\n{}\n\
             --- villain stderr ---\n{}\nordinary: status {}\n--- ordinary console ---\n{}\n\
             --- ordinary stderr ---\n{}\n--- lab stderr ---\n{}",
            self.dir.display(),
            self.villain_status,
            self.max_rss_kib,
            self.villain_console,
            self.villain_stderr,
            self.ordinary_status,
            self.ordinary_console,
            self.ordinary_stderr,
            self.lab_stderr
        )
    }
}

/// Builds the villain (static, so it runs as init with no libraries).
fn build_villain(dir: &Path) -> PathBuf {
    let src = hk_tests::repo_root().join("tests/villain/villain.c");
    let out = dir.join("villain");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc (apt-get install gcc libc6-dev)");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

fn disk_image() -> Vec<u8> {
    let mut disk = vec![0u8; 1 << 20];
    disk[..12].copy_from_slice(b"villain-disk");
    disk[1024..1040].copy_from_slice(b"villain-sector-2");
    disk
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch_dir("villain");
        let villain = build_villain(&dir);
        Initramfs::new()
            .file("init", std::fs::read(&villain).unwrap(), 0o755)
            .write(&dir.join("villain.cpio.gz"))
            .unwrap();
        Initramfs::new()
            .busybox()
            .init_script(ORDINARY_INIT)
            .write(&dir.join("ordinary.cpio.gz"))
            .unwrap();
        for name in ["rw.img", "ro.img", "ordinary.img"] {
            std::fs::write(dir.join(name), disk_image()).unwrap();
        }
        // Both VMs on the lab's CPU 1, as every lab test pins its VMs (vm_boot.rs says why).
        let script = format!(
            r#"pin=
if [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi
hk={hk}
kernel={kernel}
cd {dir}
# A host listener on vsock port {port} that takes whatever comes (connections fork). Unix
# sockets cannot live on the lab's 9p shares: they go on its own /tmp.
vs=$(mktemp -d /tmp/villain-vsock.XXXXXX)
socat -u UNIX-LISTEN:$vs/v.sock_{port},fork OPEN:/dev/null &
sink=$!
sleep 0.5
(
    /usr/bin/time -f %M -o villain.maxrss timeout -s KILL {timeout} $pin "$hk" vm boot \
        --kernel "$kernel" --initrd villain.cpio.gz --memory {mem}m \
        --disk rw.img --disk ro.img,ro --vsock-uds $vs/v.sock \
        --console villain.console \
        --cmdline 'console=ttyS0 memmap={arena_size:#x}${arena:#x} -- {arena:#x} {arena_size:#x} {port}' \
        2>villain.stderr
    echo $? >villain.status
) &
villain=$!
# The neighbour starts once the villain is under way.
n=0
until grep -q 'villain:.*attacking' villain.console 2>/dev/null || [ -s villain.status ] ||
    [ $n -ge 600 ]; do
    sleep 0.5; n=$((n + 1))
done
timeout -s KILL 600 $pin "$hk" vm boot --kernel "$kernel" --initrd ordinary.cpio.gz \
    --disk ordinary.img,ro --console ordinary.console \
    --cmdline 'console=ttyS0 quiet' 2>ordinary.stderr
echo $? >ordinary.status
if kill -0 $villain 2>/dev/null; then echo yes; else echo no; fi >overlap
wait $villain
kill $sink 2>/dev/null
wait $sink 2>/dev/null
exit 0
"#,
            hk = env!("CARGO_BIN_EXE_hk"),
            kernel = guest_kernel().display(),
            dir = dir.display(),
            port = HOST_PORT,
            timeout = VILLAIN_TIMEOUT_SECS,
            mem = MEMORY_MIB,
            arena = ARENA,
            arena_size = ARENA_SIZE,
        );
        let script_path = dir.join("villain.sh");
        std::fs::write(&script_path, script).unwrap();
        let out = run_with_kvm(
            Path::new("/bin/sh"),
            &[script_path.as_os_str()],
            Duration::from_secs(VILLAIN_TIMEOUT_SECS + 300),
        );
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let status = |name: &str| {
            let text = read(name);
            text.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {text:?}: the boot did not run"))
        };
        let run = Run {
            villain_status: status("villain.status"),
            villain_console: read("villain.console").replace('\r', ""),
            villain_stderr: read("villain.stderr"),
            max_rss_kib: read("villain.maxrss").trim().parse().unwrap_or(0),
            ordinary_status: status("ordinary.status"),
            ordinary_console: read("ordinary.console").replace('\r', ""),
            ordinary_stderr: read("ordinary.stderr"),
            lab_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            overlap: read("overlap").trim().to_string(),
            dir,
        };
        assert!(out.status.success(), "the lab script failed: {run:?}");
        eprintln!("{run:?}");
        run
    })
}

#[test]
fn the_villain_never_hangs_the_vmm() {
    let r = run();
    assert_ne!(
        r.villain_status, TIMED_OUT,
        "the villain's VMM was still running after {VILLAIN_TIMEOUT_SECS} s: {r:?}"
    );
}

#[test]
fn the_vmm_survives_the_villain_or_stops_with_a_clear_error() {
    let r = run();
    if r.villain_status == 125 {
        // Stopped by the VMM: one line saying why.
        assert!(
            r.villain_stderr.lines().any(|l| l.starts_with("hk: ")),
            "exit 125 without a reason: {r:?}"
        );
        return;
    }
    // Alive to the end: the villain ran every attack, every device still served a
    // well-formed request afterwards, no device wrote where it was not told to, and the
    // guest ended the VM itself through the control page.
    assert_eq!(r.villain_status, 0, "{r:?}");
    let summary = r
        .villain_console
        .lines()
        .find(|l| l.contains("SUMMARY"))
        .unwrap_or_else(|| panic!("no SUMMARY line: {r:?}"));
    assert!(summary.contains("failures=0"), "{summary}\n{r:?}");
    let working = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("still-working="))
        .unwrap();
    assert_eq!(working, "4/4", "{summary}\n{r:?}");
    for device in ["blk", "rng", "vsock"] {
        assert!(
            r.villain_console
                .contains(&format!("{device}: register sweep")),
            "{device} was not attacked: {r:?}"
        );
    }
    assert!(!r.villain_console.contains("FAIL"), "{r:?}");
}

#[test]
fn the_villains_vmm_stays_under_its_memory_ceiling() {
    let r = run();
    assert!(r.max_rss_kib > 0, "no peak RSS measured: {r:?}");
    assert!(
        r.max_rss_kib < RSS_CEILING_KIB,
        "peak RSS {} KiB, ceiling {RSS_CEILING_KIB} KiB: {r:?}",
        r.max_rss_kib
    );
}

#[test]
fn a_vm_beside_the_villain_is_unaffected() {
    let r = run();
    assert_eq!(r.ordinary_status, 0, "{r:?}");
    let rounds = r
        .ordinary_console
        .lines()
        .filter(|l| l.starts_with("ordinary:round:") && l.ends_with(":disk:villain-disk:rng:64"))
        .count();
    assert_eq!(rounds, 10, "{r:?}");
    assert!(r.ordinary_console.contains("ordinary:done"), "{r:?}");
}

#[test]
fn the_neighbour_ran_while_the_villain_attacked() {
    // The neighbour starts once the villain is attacking; the villain must still be running
    // when the neighbour ends, or the two did not overlap.
    let r = run();
    assert_eq!(r.overlap, "yes", "{r:?}");
}
