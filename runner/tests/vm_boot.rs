//! `hk vm boot` on a real KVM (the host's, or the nested lab's): the guest kernel with a
//! busybox initramfs boots, sees the CPUs, memory and disks it was given, and the VMM's exit
//! status says how the guest ended.
//!
//! Every boot of this file runs in one lab session (a lab boot costs ~10 s); each test then
//! checks its own boot. The init script picks what to do from its first argument, passed
//! after `--` on the kernel command line.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const INIT: &str = r#"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ctl_exit() { devmem 0xd0000004 32 "$1"; }
case "$1" in
marker)
    devmem 0xd0000000 8 123
    echo "disk:$(head -c 13 /dev/vda)"
    echo "rng:$(cat /sys/class/misc/hw_random/rng_current)"
    echo "rng-bytes:$(head -c 32 /dev/hwrng | wc -c)"
    ctl_exit 0
    ;;
sizes)
    echo "cpus:$(grep -c ^processor /proc/cpuinfo)"
    echo "online:$(cat /sys/devices/system/cpu/online)"
    echo "memtotal-kib:$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
    echo "pat:$(dmesg | grep -o 'x86/PAT: [A-Za-z]*' | head -1)"
    reboot -f
    ;;
write)
    echo "written-by-the-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
    echo "dd:$?"
    ctl_exit 0
    ;;
write-ro)
    if echo "must-not-land" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null; then
        echo "dd:ok"
    else
        echo "dd:failed"
    fi
    ctl_exit 3
    ;;
status)
    ctl_exit 300
    ;;
input)
    # Every read gives up after a minute, so input that never comes fails the test then
    # instead of at the lab's timeout.
    echo "ready-for-input"
    read -r -t 60 first
    read -r -t 60 long
    read -r -t 60 eof || echo "eof:yes"
    read -r -t 60 last
    echo "first:$first"
    echo "long:$long"
    echo "last:$last"
    ctl_exit 0
    ;;
panic)
    echo "init exits: the kernel panics"
    exit 1
    ;;
poweroff)
    echo "powering off"
    poweroff -f
    sleep 60
    echo "still running after poweroff"
    ;;
esac
echo "unknown case $1"
ctl_exit 99
"#;

/// Where a boot's stdin comes from: nothing, a regular file (always readable, not
/// pollable), a pipe (pollable), or a terminal (put in raw mode for the VM's life).
enum Stdin {
    Null,
    File,
    Pipe,
    Terminal,
}

/// What one boot left: exit status and serial console.
struct Boot {
    status: i32,
    console: String,
    stderr: String,
}

impl std::fmt::Debug for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- console ---\n{}\n--- stderr ---\n{}",
            self.status, self.console, self.stderr
        )
    }
}

struct Lab {
    dir: PathBuf,
    boots: HashMap<&'static str, Boot>,
}

const MARKER: &[u8] = b"hk-disk-mark!";

/// Boots every case once, in a single lab run, and keeps the results for the tests.
fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("vm-boot");
        let initrd = dir.join("initramfs.cpio.gz");
        Initramfs::new()
            .busybox()
            .init_script(INIT)
            .write(&initrd)
            .unwrap();
        let mut disk = MARKER.to_vec();
        disk.resize(1 << 20, 0);
        for name in ["marker.img", "rw.img", "ro.img"] {
            std::fs::write(dir.join(name), &disk).unwrap();
        }
        let d = |name: &str| dir.join(name).display().to_string();
        std::fs::write(dir.join("input.txt"), console_input()).unwrap();
        // (name, flags, stdin, init's case)
        let triple = dir.join("triple-fault.elf");
        std::fs::write(&triple, triple_fault_kernel()).unwrap();
        let cases: [(&str, String, Stdin, &str); 12] = [
            (
                "marker",
                format!("--disk {},ro --boot-timer", d("marker.img")),
                Stdin::Null,
                "marker",
            ),
            ("sizes", "--cpus 2 --memory 384m".into(), Stdin::Null, "sizes"),
            // RAM above the 3 GiB hole, and more vCPUs than the lab has CPUs.
            ("big", "--cpus 4 --memory 4g".into(), Stdin::Null, "sizes"),
            ("write", format!("--disk {}", d("rw.img")), Stdin::Null, "write"),
            ("write-ro", format!("--disk {},ro", d("ro.img")), Stdin::Null, "write-ro"),
            ("status", String::new(), Stdin::Null, "status"),
            ("panic", String::new(), Stdin::Null, "panic"),
            ("poweroff", String::new(), Stdin::Null, "poweroff"),
            (
                "triple-fault",
                format!("--kernel {}", triple.display()),
                Stdin::Null,
                "none",
            ),
            ("input-file", "-i".into(), Stdin::File, "input"),
            ("input-pipe", "-i".into(), Stdin::Pipe, "input"),
            ("input-tty", "-i".into(), Stdin::Terminal, "input"),
        ];
        // In the nested lab, an L2 vCPU run on the L1's CPU 0 sometimes never gets past
        // its first instruction (the whole lab session then hangs; QEMU TCG's SVM, not hk:
        // the same binary pinned to CPU 1 boots every time). Pinning is harmless elsewhere.
        let mut script = format!(
            "pin=\nif [ \"$(nproc)\" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi\n\
             export pin hk={} kernel={} initrd={}\ncd {}\n",
            env!("CARGO_BIN_EXE_hk"),
            guest_kernel().display(),
            initrd.display(),
            dir.display()
        );
        for (name, flags, stdin, case) in &cases {
            // Each boot is a script of its own, so that it can run behind a terminal; on
            // one, it records the terminal's settings before and after.
            std::fs::write(
                dir.join(format!("{name}.sh")),
                format!(
                    "if [ -t 0 ]; then stty -g >{name}.tty-before; fi\n\
                     $pin \"$hk\" vm boot {kernel} --initrd \"$initrd\" {flags} \
                     --console {name}.console --cmdline 'console=ttyS0 quiet -- {case}' \
                     2>{name}.stderr\necho $? >{name}.status\n\
                     if [ -t 0 ]; then stty -g >{name}.tty-after; fi\n",
                    kernel = if flags.contains("--kernel") {
                        ""
                    } else {
                        "--kernel \"$kernel\""
                    }
                ),
            )
            .unwrap();
            script.push_str(&match stdin {
                Stdin::Null => format!("sh {name}.sh </dev/null\n"),
                Stdin::File => format!("sh {name}.sh <input.txt\n"),
                Stdin::Pipe => format!("cat input.txt | sh {name}.sh\n"),
                // script(1) runs it on a new pseudo-terminal and copies its stdin there. The
                // input waits for the guest's first line: typed any earlier, the terminal
                // would still be in its usual mode and turn the Ctrl-D into an end of line.
                Stdin::Terminal => format!(
                    "(n=0; until grep -q ready-for-input {name}.console 2>/dev/null || \
                     [ $n -ge 600 ]; do sleep 0.2; n=$((n + 1)); done; cat input.txt) | \
                     script -qec 'sh {name}.sh' /dev/null >/dev/null\n"
                ),
            });
        }
        let script_path = dir.join("boots.sh");
        std::fs::write(&script_path, script).unwrap();
        let out = run_with_kvm(
            Path::new("/bin/sh"),
            &[script_path.as_os_str()],
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "the boot script failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |file: String| std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        let boots = cases
            .iter()
            .map(|(name, ..)| {
                let status = read(format!("{name}.status"));
                let boot = Boot {
                    status: status
                        .trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("boot {name} did not run: {status:?}")),
                    console: read(format!("{name}.console")).replace('\r', ""),
                    stderr: read(format!("{name}.stderr")),
                };
                (*name, boot)
            })
            .collect();
        Lab { dir, boots }
    })
}

fn boot(name: &str) -> &'static Boot {
    &lab().boots[name]
}

/// The value after `key:` on a console line.
fn value<'a>(boot: &'a Boot, key: &str) -> &'a str {
    boot.console
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` line on the console: {boot:?}"))
}

/// Lines for the guest's console: the second is far longer than the UART's 64-byte FIFO,
/// so it only arrives whole if input waits for the guest to read; the Ctrl-D before the
/// last is an end of file for the guest's tty, and reaches it through a host terminal only
/// if hk put that terminal in raw mode (in its usual mode the terminal ends hk's input
/// there instead, and `bye` never arrives).
fn console_input() -> String {
    format!("hello\n{}\n\x04bye\n", long_line())
}

fn long_line() -> String {
    (0..300).map(|i| format!("{:010}", i * 7919)).collect()
}

#[test]
fn guest_reads_a_marker_from_a_virtio_blk_disk() {
    let b = boot("marker");
    assert_eq!(b.status, 0, "{b:?}");
    assert_eq!(value(b, "disk").as_bytes(), MARKER, "{b:?}");
}

#[test]
fn guest_gets_entropy_from_virtio_rng() {
    let b = boot("marker");
    assert!(value(b, "rng").starts_with("virtio_rng"), "{b:?}");
    assert_eq!(value(b, "rng-bytes"), "32", "{b:?}");
}

#[test]
fn boot_timer_reports_the_guest_marker() {
    let b = boot("marker");
    let line = b
        .stderr
        .lines()
        .find(|l| l.contains("boot-timer"))
        .unwrap_or_else(|| panic!("no boot-timer line: {b:?}"));
    let ms: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(ms > 0.0, "{line}");
}

#[test]
fn guest_sees_the_cpus_it_was_given() {
    let b = boot("sizes");
    assert_eq!(value(b, "cpus"), "2", "{b:?}");
    assert_eq!(value(b, "online"), "0-1", "{b:?}");
}

#[test]
fn guest_uses_pat_because_mtrrs_are_enabled_with_write_back() {
    // Linux prints "x86/PAT: Configuration [0-7]: WB WC ..." when it uses PAT, and
    // "x86/PAT: PAT support disabled ..." (or "MTRRs disabled ...") when it does not.
    let b = boot("sizes");
    assert_eq!(value(b, "pat"), "x86/PAT: Configuration", "{b:?}");
}

#[test]
fn guest_sees_the_memory_it_was_given() {
    // MemTotal is RAM minus what the kernel keeps for itself (its image, page tables):
    // a few MiB to a few tens of MiB below what the VM has, and never above it.
    let sized: u64 = value(boot("sizes"), "memtotal-kib").parse().unwrap();
    assert!(
        (330 << 10..384 << 10).contains(&sized),
        "--memory 384m: MemTotal {sized} KiB"
    );
}

#[test]
fn a_guest_with_4_vcpus_and_memory_above_4_gib_sees_all_of_it() {
    let b = boot("big");
    assert_eq!(b.status, 0, "{b:?}");
    assert_eq!(value(b, "cpus"), "4", "{b:?}");
    assert_eq!(value(b, "online"), "0-3", "{b:?}");
    let kib: u64 = value(b, "memtotal-kib").parse().unwrap();
    // 4 GiB less the kernel's own: well above the 3 GiB below the hole.
    assert!(
        (3900 << 10..4096 << 10).contains(&kib),
        "--memory 4g: MemTotal {kib} KiB"
    );
}

#[test]
fn a_clean_reboot_exits_zero() {
    let b = boot("sizes");
    assert_eq!(b.status, 0, "{b:?}");
}

#[test]
fn a_write_to_a_read_write_disk_reaches_the_host_file() {
    let b = boot("write");
    assert_eq!(b.status, 0, "{b:?}");
    assert_eq!(value(b, "dd"), "0", "{b:?}");
    let disk = std::fs::read(lab().dir.join("rw.img")).unwrap();
    assert!(disk[512..].starts_with(b"written-by-the-guest\n"), "{b:?}");
    assert_eq!(&disk[..MARKER.len()], MARKER, "sector 0 must be untouched");
}

#[test]
fn a_write_to_a_read_only_disk_fails_in_the_guest() {
    let b = boot("write-ro");
    assert_eq!(b.status, 3, "{b:?}");
    assert_eq!(value(b, "dd"), "failed", "{b:?}");
    let disk = std::fs::read(lab().dir.join("ro.img")).unwrap();
    assert!(disk[512..1024].iter().all(|&b| b == 0), "the image changed");
}

#[test]
fn the_exit_status_is_what_the_guest_wrote_modulo_256() {
    let b = boot("status");
    assert_eq!(b.status, 300 & 0xff, "{b:?}");
}

#[test]
fn a_guest_panic_is_an_error_exit() {
    let b = boot("panic");
    assert_eq!(b.status, 134, "{b:?}");
    assert!(b.stderr.contains("panicked"), "{b:?}");
    assert!(b.console.contains("Kernel panic"), "{b:?}");
}

#[test]
fn a_guest_power_off_ends_the_vm_cleanly() {
    let b = boot("poweroff");
    assert_eq!(b.status, 0, "{b:?}");
    assert!(b.console.contains("powering off"), "{b:?}");
    assert!(!b.console.contains("still running"), "{b:?}");
}

#[test]
fn a_triple_fault_the_kernel_did_not_ask_for_is_an_error_exit() {
    let b = boot("triple-fault");
    assert_eq!(b.status, 134, "{b:?}");
    assert!(b.stderr.contains("triple-faulted"), "{b:?}");
}

/// The smallest "kernel" that triple-faults at once: an ELF with a PVH entry note whose
/// 32-bit entry code loads an empty IDT and executes int3. The exception cannot be
/// delivered, nor the #GP and #DF after it, and the CPU resets, long before anything could
/// write the BIOS reset flag.
fn triple_fault_kernel() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let mut code = vec![0u8; 0x20];
    // lidt [LOAD + 0x10] (the 6 zero bytes there: limit 0); int3; hlt; jmp back to hlt.
    code[..7].copy_from_slice(&[0x0f, 0x01, 0x1d, 0x10, 0x00, 0x10, 0x00]);
    code[7..11].copy_from_slice(&[0xcc, 0xf4, 0xeb, 0xfd]);
    let mut note = Vec::new();
    for word in [4u32, 4, 18] {
        note.extend_from_slice(&word.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD as u32).to_le_bytes());
    let (note_off, code_off) = (0x200u64, 0x1000u64);
    let mut elf = vec![0u8; code_off as usize];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    let put16 =
        |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |e: &mut Vec<u8>, at: usize, v: u64| e[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut elf, 16, 2); // ET_EXEC
    put16(&mut elf, 18, 62); // EM_X86_64
    put32(&mut elf, 20, 1);
    put64(&mut elf, 24, LOAD); // e_entry
    put64(&mut elf, 32, 64); // e_phoff
    put16(&mut elf, 52, 64); // e_ehsize
    put16(&mut elf, 54, 56); // e_phentsize
    put16(&mut elf, 56, 2); // e_phnum
                            // PT_LOAD: the code at LOAD.
    let ph = 64;
    put32(&mut elf, ph, 1);
    put32(&mut elf, ph + 4, 5); // R+X
    put64(&mut elf, ph + 8, code_off);
    put64(&mut elf, ph + 16, LOAD);
    put64(&mut elf, ph + 24, LOAD);
    put64(&mut elf, ph + 32, code.len() as u64);
    put64(&mut elf, ph + 40, code.len() as u64);
    put64(&mut elf, ph + 48, 0x1000);
    // PT_NOTE: XEN_ELFNOTE_PHYS32_ENTRY = LOAD.
    let ph = 64 + 56;
    put32(&mut elf, ph, 4);
    put32(&mut elf, ph + 4, 4); // R
    put64(&mut elf, ph + 8, note_off);
    put64(&mut elf, ph + 32, note.len() as u64);
    put64(&mut elf, ph + 40, note.len() as u64);
    put64(&mut elf, ph + 48, 4);
    elf[note_off as usize..note_off as usize + note.len()].copy_from_slice(&note);
    elf.extend_from_slice(&code);
    elf
}

fn assert_console_input_arrived_whole(name: &str) {
    let b = boot(name);
    assert_eq!(b.status, 0, "{b:?}");
    assert_eq!(value(b, "first"), "hello", "{b:?}");
    assert_eq!(value(b, "long"), long_line(), "{b:?}");
    assert_eq!(value(b, "eof"), "yes", "{b:?}");
    assert_eq!(value(b, "last"), "bye", "{b:?}");
}

#[test]
fn console_input_from_a_file_reaches_the_guest_whole() {
    assert_console_input_arrived_whole("input-file");
}

#[test]
fn console_input_from_a_pipe_reaches_the_guest_whole() {
    assert_console_input_arrived_whole("input-pipe");
}

#[test]
fn console_input_from_a_terminal_reaches_the_guest_and_the_terminal_is_restored() {
    assert_console_input_arrived_whole("input-tty");
    let dir = &lab().dir;
    let before = std::fs::read_to_string(dir.join("input-tty.tty-before"))
        .expect("the boot did not run on a terminal");
    let after = std::fs::read_to_string(dir.join("input-tty.tty-after")).unwrap();
    assert_eq!(before, after, "hk left the terminal in another mode");
}
