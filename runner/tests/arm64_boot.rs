//! The aarch64 machine's description, checked against a Linux kernel: hk lays an arm64 guest
//! out as its loader does (kernel, initrd and device tree in guest memory,
//! `hk_vmm::aarch64::lay_out`), and QEMU's virt machine (TCG, on the host, no lab) boots the
//! arm64 guest kernel with hk's device tree (`-dtb`) and hk's initrd at the address hk put it
//! (the device tree's /chosen points there; QEMU is given no `-initrd`). The guest's init
//! reports what the kernel found: CPUs, memory, virtio-mmio devices, command line. They must
//! be what hk described.
//!
//! What this proves: the device tree (PSCI CPUs, GICv3 and timer, PL011, virtio-mmio windows,
//! chosen) is one a Linux kernel accepts on QEMU virt's addresses, and hk's initrd placement
//! and command line reach it. What it does not: anything about Hypervisor.framework, which
//! nothing here runs (docs/hvf.md). QEMU replaces the memory node with its own (from `-m`,
//! the same size), and loads the kernel itself (at RAM's base, as hk does).

use hk_tests::{arm64_busybox, arm64_guest_kernel, run_with_timeout, scratch_dir, Initramfs};
use hk_vmm::aarch64::{lay_out, layout, ram, Guest};
use std::process::Command;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

const CPUS: u32 = 2;
const MEMORY_MIB: u64 = 256;
const MARKER: &str = "hk-arm64-init-reached";

const INIT: &str = r#"
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
echo "hk-arm64: cpus $($bb grep -c ^processor /proc/cpuinfo)"
echo "hk-arm64: memtotal-kib $($bb awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
for d in /sys/bus/virtio/devices/*; do
	[ -e "$d/device" ] || continue
	window=$($bb basename "$($bb dirname "$($bb readlink -f "$d")")")
	echo "hk-arm64: virtio $window $($bb cat "$d/device")"
done
echo "hk-arm64: cmdline $($bb cat /proc/cmdline)"
echo hk-arm64-init-reached
$bb poweroff -f
"#;

fn qemu() -> &'static str {
    let qemu = "qemu-system-aarch64";
    let found = Command::new(qemu).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{qemu} is missing: apt-get install qemu-system-arm (scripts/setup)"
    );
    qemu
}

#[test]
fn an_arm64_kernel_boots_on_qemu_virt_with_hks_device_tree_and_initrd() {
    let qemu = qemu();
    let kernel = arm64_guest_kernel();
    let dir = scratch_dir("arm64-boot");
    let initrd = dir.join("initrd.gz");
    Initramfs::new()
        .foreign_busybox(&arm64_busybox())
        .init_script(INIT)
        .write(&initrd)
        .expect("write the initramfs");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();

    // A disk and an entropy device, in that order, as hk's machine would place them.
    let virtio = [
        layout::virtio_slot(0).unwrap(),
        layout::virtio_slot(1).unwrap(),
    ];
    let mem = ram(MEMORY_MIB << 20).unwrap();
    let placed = lay_out(
        &mem,
        &Guest {
            kernel: &kernel,
            initrd: Some(&initrd),
            cpus: CPUS,
            cmdline: "loglevel=4",
            virtio: &virtio,
        },
    )
    .expect("hk lays the guest out");

    // What hk wrote into guest memory, taken back out for QEMU.
    let (fdt_addr, fdt_len) = placed.fdt;
    let mut fdt = vec![0u8; fdt_len as usize];
    mem.read_slice(&mut fdt, GuestAddress(fdt_addr)).unwrap();
    std::fs::write(dir.join("hk.dtb"), &fdt).unwrap();
    let (initrd_start, initrd_end) = placed.initrd.expect("an initrd");
    let mut initrd_bytes = vec![0u8; (initrd_end - initrd_start) as usize];
    mem.read_slice(&mut initrd_bytes, GuestAddress(initrd_start))
        .unwrap();
    assert_eq!(initrd_bytes, std::fs::read(&initrd).unwrap());
    std::fs::write(dir.join("initrd-from-hk"), &initrd_bytes).unwrap();
    assert_eq!(
        placed.entry,
        layout::RAM_BASE,
        "an Image with text_offset 0"
    );

    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "virt,gic-version=3", "-cpu", "max", "-accel", "tcg"])
        .args(["-smp", &CPUS.to_string(), "-m", &MEMORY_MIB.to_string()])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-dtb")
        .arg(dir.join("hk.dtb"))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={initrd_start:#x},force-raw=on",
            dir.join("initrd-from-hk").display()
        ))
        // QEMU's virtio-mmio bus N is the transport at 0x0a000000 + N * 0x200, SPI 16 + N:
        // the windows hk's device tree names.
        .args([
            "-drive",
            &format!(
                "if=none,id=d0,format=raw,readonly=on,file={}",
                disk.display()
            ),
        ])
        .args([
            "-device",
            "virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0",
        ])
        .args(["-device", "virtio-rng-device,bus=virtio-mmio-bus.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(600));
    let console = String::from_utf8_lossy(&out.stdout);
    let report: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("hk-arm64: "))
        .collect();
    let context = format!(
        "status {}\nconsole:\n{console}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains(MARKER), "init never ran\n{context}");

    assert!(report.contains(&"cpus 2"), "{report:?}\n{context}");
    let kib: u64 = report
        .iter()
        .find_map(|l| l.strip_prefix("memtotal-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory line\n{context}"));
    // All of it, less what the kernel keeps for itself.
    assert!(
        (MEMORY_MIB * 1024 * 3 / 4..=MEMORY_MIB * 1024).contains(&kib),
        "MemTotal {kib} KiB for {MEMORY_MIB} MiB\n{context}"
    );
    let mut found: Vec<&str> = report
        .iter()
        .filter_map(|l| l.strip_prefix("virtio "))
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["a000000.virtio_mmio 0x0002", "a000200.virtio_mmio 0x0004"],
        "{context}"
    );
    let cmdline = report
        .iter()
        .find_map(|l| l.strip_prefix("cmdline "))
        .unwrap_or_else(|| panic!("no command line\n{context}"));
    assert_eq!(cmdline.trim(), placed.cmdline, "{context}");
    assert!(cmdline.contains("hk.ctl=0x90c0000") && cmdline.contains("loglevel=4"));
}
